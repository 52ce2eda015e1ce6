//! The waypoint's kinds from a Kubernetes API server (`--kube-api`): listed and watched,
//! applied as they change, an object that cannot apply left out and the rest kept;
//! Telemetries and GRPCRoutes among them, and a kind the server does not serve.

use super::*;
use e2e::kube::FakeKube;
use serde_json::json;

const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
const POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const TELEMETRIES: &str = "/apis/telemetry.istio.io/v1/telemetries";

fn route(default_backend: &str) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": "demo", "name": "echo"},
        "spec": {
            // What istiod takes and does not apply: a route with it still routes.
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80, "sectionName": "http"}],
            "rules": [
                {"matches": [{"headers": [{"name": "x-to", "value": "v2"}]}],
                 "sessionPersistence": {"sessionName": "s", "type": "Cookie"},
                 "backendRefs": [{"name": "echo-v2", "port": 80}]},
                {"backendRefs": [{"name": default_backend, "port": 80}]}
            ]
        },
        "status": {"parents": []}
    })
}

/// The waypoint's flags for `api`: its address, and its token and CA written to `dir`.
fn kube_args(api: &FakeKube, dir: &std::path::Path) -> Result<Vec<String>> {
    let (token, ca) = (dir.join("token"), dir.join("ca.pem"));
    std::fs::write(&token, "s3cret\n")?;
    std::fs::write(&ca, &api.ca_pem)?;
    Ok(vec![
        "--kube-api".into(),
        api.base.clone(),
        "--kube-token".into(),
        token.display().to_string(),
        "--kube-ca".into(),
        ca.display().to_string(),
    ])
}

#[test]
fn routes_and_policies_come_from_the_kubernetes_api_as_they_change() -> Result<()> {
    let x = 181;
    let api = FakeKube::start(SocketAddr::new(ip4(x, 50, 1), 0), "s3cret")?;
    api.apply(ROUTES, route("echo-v1"));
    // An ingress route (a Gateway parent) is not the waypoint's: it would send all to v2.
    api.apply(
        ROUTES,
        json!({"metadata": {"namespace": "demo", "name": "ingress"},
               "spec": {"parentRefs": [{"name": "public-gw"}], "hostnames": ["echo.demo.svc.cluster.local"],
                        "rules": [{"backendRefs": [{"name": "echo-v2", "port": 80}]}]}}),
    );
    api.apply(
        POLICIES,
        json!({"metadata": {"namespace": "demo", "name": "no-delete"},
               "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "echo"}], "action": "DENY",
                        "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}}),
    );
    // A GRPCRoute of the same name (another kind): one method goes to v2. Its parent
    // named as a ServiceEntry (an egress waypoint's kind) reaches the Service of that name.
    api.apply(
        GRPC_ROUTES,
        json!({"metadata": {"namespace": "demo", "name": "echo"},
               "spec": {"parentRefs": [{"group": "networking.istio.io", "kind": "ServiceEntry", "name": "echo", "port": 80}],
                        "rules": [{"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}],
                                   "backendRefs": [{"name": "echo-v2", "port": 80}]}]}}),
    );
    // One the waypoint cannot apply: left out by name, the rest apply.
    api.apply(
        POLICIES,
        json!({"metadata": {"namespace": "demo", "name": "audit"},
               "spec": {"targetRefs": [{"kind": "Service", "name": "echo"}], "action": "AUDIT", "rules": [{}]}}),
    );
    // Mesh-wide: no access log, and a `team` label from a header on the request count.
    api.apply(
        TELEMETRIES,
        json!({"metadata": {"namespace": "istio-system", "name": "mesh-default"},
               "spec": {"accessLogging": [{"disabled": true}],
                        "metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT"},
                                                    "tagOverrides": {"team": {"value": "request.headers['x-team']"}}}]}]}}),
    );
    // A sidecar's (a workload selector): not the waypoint's, or it would turn metrics off.
    api.apply(
        TELEMETRIES,
        json!({"metadata": {"namespace": "demo", "name": "sidecars"},
               "spec": {"selector": {"matchLabels": {"app": "echo"}},
                        "metrics": [{"overrides": [{"disabled": true}]}]}}),
    );
    let dir = tempfile::tempdir()?;
    let args = kube_args(&api, dir.path())?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = Mesh::start_with(x, "  []", &args)?;
    let mut c = m.client()?;
    let who = |c: &mut Client, method: &str, headers: &[(&str, &str)]| -> Result<(u16, String)> {
        let r = c.request(method, "/k", headers, b"")?;
        Ok((r.status, r.body.chars().take(2).collect()))
    };
    ensure!(
        who(&mut c, "GET", &[])? == (200, "v1".into()),
        "{}",
        m.context()
    );
    ensure!(who(&mut c, "GET", &[("x-to", "v2")])? == (200, "v2".into()));
    let r = c.request("POST", "/pkg.Echo/Say", &[], b"")?;
    ensure!(r.status == 200 && r.body.starts_with("v2"), "{r:?}");
    ensure!(who(&mut c, "DELETE", &[])?.0 == 403, "{}", m.context());
    ensure!(
        m.wp.proc
            .stderr()
            .contains("left out of the waypoint's config")
            && m.wp.proc.stderr().contains("demo/audit"),
        "{}",
        m.context()
    );
    // The Telemetry applies: the label, and no access log line.
    ensure!(c.request("GET", "/k", &[("x-team", "blue")], b"")?.status == 200);
    let metrics = m.wp.metrics()?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{") && l.contains("team=\"blue\"")),
        "{metrics}"
    );
    ensure!(
        !m.wp.proc.stderr().contains("request complete"),
        "{}",
        m.context()
    );
    // Deleted, it stops applying: access logs are on again.
    api.delete(TELEMETRIES, "istio-system", "mesh-default");
    e2e::wait_for(Duration::from_secs(10), "the access log back", || {
        let _ = c.request("GET", "/logged", &[], b"");
        m.wp.proc.stderr().contains("request complete")
    })
    .with_context(|| m.context())?;
    // A change to the route applies without a restart.
    api.apply(ROUTES, route("echo-v2"));
    e2e::wait_for(Duration::from_secs(10), "the changed route", || {
        who(&mut c, "GET", &[]).is_ok_and(|r| r == (200, "v2".into()))
    })
    .with_context(|| m.context())?;
    // A deleted policy stops applying.
    api.delete(POLICIES, "demo", "no-delete");
    e2e::wait_for(Duration::from_secs(10), "the policy gone", || {
        who(&mut c, "DELETE", &[]).is_ok_and(|r| r.0 == 200)
    })
    .with_context(|| m.context())?;
    // Each kind was listed, then watched.
    ensure!(api.requests(ROUTES) >= 2, "{}", api.requests(ROUTES));
    // The AUDIT policy left out, counted.
    let metrics = m.wp.metrics()?;
    ensure!(
        metrics.contains("\nringmesh_waypoint_config_left_out 1\n"),
        "{metrics}"
    );
    Ok(())
}

/// A cluster whose Gateway API has no GRPCRoute (its CRD not installed: the list 404s),
/// or whose ClusterRole predates it (403): the waypoint does not wait for the kind, says
/// so once, and serves the other kinds.
#[test]
fn a_route_kind_the_waypoint_cannot_list_has_no_objects() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Each mesh on its own block: a test backend keeps its address for the test's life.
    for (x, code, said) in [
        (254, 404, "does not serve this kind"),
        (251, 403, "needs list and watch on this kind"),
    ] {
        let api = FakeKube::start(SocketAddr::new(ip4(x, 50, 1), 0), "s3cret")?;
        api.refuse(GRPC_ROUTES, code);
        api.apply(ROUTES, route("echo-v2"));
        let args = kube_args(&api, dir.path())?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let m = Mesh::start_with(x, "  []", &args)?;
        let mut c = m.client()?;
        let r = c.request("GET", "/k", &[], b"")?;
        ensure!(
            r.status == 200 && r.body.starts_with("v2"),
            "{code}: {r:?}\n{}",
            m.context()
        );
        // Well inside the first sync's minute: the kind was not waited for.
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        let n = m.wp.proc.stderr().matches(said).count();
        ensure!(n == 1, "{code}: said {n} times:\n{}", m.context());
        if code == 404 {
            // The CRD installed later: the next list (every 30 s) finds its GRPCRoutes.
            api.serve(GRPC_ROUTES);
            api.apply(
                GRPC_ROUTES,
                json!({"metadata": {"namespace": "demo", "name": "echo"},
                       "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
                                "rules": [{"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}],
                                           "backendRefs": [{"name": "echo-v1", "port": 80}]}]}}),
            );
            e2e::wait_for(Duration::from_secs(45), "the GRPCRoute picked up", || {
                c.request("POST", "/pkg.Echo/Say", &[], b"")
                    .is_ok_and(|r| r.status == 200 && r.body.starts_with("v1"))
            })
            .with_context(|| m.context())?;
        }
    }
    Ok(())
}

/// A policy kind the API server does not serve (404) or the token may not read (403) is
/// not a kind with no objects: the waypoint does not serve until it can list it (it never
/// serves without its AuthorizationPolicies), and serves with them once it can.
#[test]
fn a_policy_kind_the_waypoint_cannot_list_is_waited_for() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (x, code) in [(169, 404), (168, 403)] {
        let api = FakeKube::start(SocketAddr::new(ip4(x, 50, 1), 0), "s3cret")?;
        api.refuse(POLICIES, code);
        api.apply(ROUTES, route("echo-v1"));
        api.apply(
            POLICIES,
            json!({"metadata": {"namespace": "demo", "name": "no-delete"},
                   "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "echo"}], "action": "DENY",
                            "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}}),
        );
        let args = kube_args(&api, dir.path())?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let refused_for = Duration::from_secs(4);
        let started = Instant::now();
        let m = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(refused_for);
                api.serve(POLICIES);
            });
            Mesh::start_with(x, "  []", &args)
        })?;
        ensure!(
            started.elapsed() >= refused_for,
            "{code}: ready after {:?}, while the policies were refused\n{}",
            started.elapsed(),
            m.context()
        );
        let mut c = m.client()?;
        ensure!(
            c.request("DELETE", "/k", &[], b"")?.status == 403,
            "{code}: served without the policy\n{}",
            m.context()
        );
        ensure!(c.request("GET", "/k", &[], b"")?.status == 200);
        ensure!(
            m.wp.proc.stderr().contains("authorizationpolicies"),
            "{code}: the refusal is not in the log\n{}",
            m.context()
        );
    }
    Ok(())
}

/// An AuthorizationPolicy the waypoint cannot apply as written is not left out (an ALLOW
/// policy left out would open its Service to all): it allows nothing until it is fixed.
#[test]
fn a_policy_that_cannot_apply_fails_closed() -> Result<()> {
    let x = 167;
    let api = FakeKube::start(SocketAddr::new(ip4(x, 50, 1), 0), "s3cret")?;
    api.apply(ROUTES, route("echo-v1"));
    let policy = |source: serde_json::Value| {
        json!({"metadata": {"namespace": "demo", "name": "only-client"},
               "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "echo"}], "action": "ALLOW",
                        "rules": [{"from": [{"source": source}]}]}})
    };
    api.apply(
        POLICIES,
        policy(json!({"principals": ["cluster.local/ns/demo/sa/client"], "bogusField": ["x"]})),
    );
    let dir = tempfile::tempdir()?;
    let args = kube_args(&api, dir.path())?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = Mesh::start_with(x, "  []", &args)?;
    let mut c = m.client()?;
    let r = c.request("GET", "/k", &[], b"")?;
    ensure!(
        r.status == 403 && r.body.starts_with("RBAC: access denied"),
        "{r:?}\n{}",
        m.context()
    );
    ensure!(
        m.wp.proc.stderr().contains("applied in its safe form"),
        "{}",
        m.context()
    );
    let metrics = m.wp.metrics()?;
    ensure!(
        metrics.contains("\nringmesh_waypoint_config_policies_fail_closed 1\n"),
        "{metrics}"
    );
    // Fixed: it applies as written (the client is the principal it allows).
    api.apply(
        POLICIES,
        policy(json!({"principals": ["cluster.local/ns/demo/sa/client"]})),
    );
    e2e::wait_for(Duration::from_secs(10), "the fixed policy", || {
        c.request("GET", "/k", &[], b"")
            .is_ok_and(|r| r.status == 200 && r.body.starts_with("v1"))
    })
    .with_context(|| m.context())?;
    let metrics = m.wp.metrics()?;
    ensure!(
        metrics.contains("\nringmesh_waypoint_config_policies_fail_closed 0\n"),
        "{metrics}"
    );
    Ok(())
}

const VIRTUAL_SERVICES: &str = "/apis/networking.istio.io/v1/virtualservices";
const DESTINATION_RULES: &str = "/apis/networking.istio.io/v1/destinationrules";

/// A ServiceEntry's hosts from the cluster (an egress waypoint's case): entry `ext` has two,
/// `api.example.com` (endpoint v1) and `other.example.com` (endpoint v2), two Services of
/// one namespace and name, both bound to the waypoint. A VirtualService on one host, a
/// DestinationRule on the other and an HTTPRoute backend of kind `Hostname` each name a
/// host as it stands, by Istio's rules (were: refused as no Service); a request to the
/// other host goes to its own endpoints and is counted as itself (were: the entry's first
/// host's, by name).
#[test]
fn service_entry_hosts_are_routed_by_hostname() -> Result<()> {
    let x = 165;
    let ip = |c, d| ip4(x, c, d);
    let (api_vip, other_vip) = (ip(100, 6), ip(100, 7));
    let entry = format!(
        "\n  - {{name: ext, namespace: demo, hostname: api.example.com, vips: [\"{api_vip}\"], ports: {{80: 8080}}, waypoint: {{destination: \"/{wp}\", hboneMtlsPort: 15008}}}}\
         \n  - {{name: ext, namespace: demo, hostname: other.example.com, vips: [\"{other_vip}\"], ports: {{80: 8080}}, waypoint: {{destination: \"/{wp}\", hboneMtlsPort: 15008}}}}\nhttpRoutes:",
        wp = ip(3, 1),
    );
    let config = mesh_config(x, "  []")
        .replacen(
            "services: [demo/echo-v1.demo.svc.cluster.local,",
            "services: [demo/api.example.com, demo/echo-v1.demo.svc.cluster.local,",
            1,
        )
        .replacen(
            "services: [demo/echo-v2.demo.svc.cluster.local,",
            "services: [demo/other.example.com, demo/echo-v2.demo.svc.cluster.local,",
            1,
        )
        .replacen("\nhttpRoutes:", &entry, 1);
    let api = FakeKube::start(SocketAddr::new(ip(50, 1), 0), "s3cret")?;
    api.apply(
        VIRTUAL_SERVICES,
        json!({"metadata": {"namespace": "demo", "name": "egress"},
               "spec": {"hosts": ["api.example.com"],
                        "http": [
                            {"match": [{"headers": {"x-to": {"exact": "other"}}}],
                             "route": [{"destination": {"host": "other.example.com"}}]},
                            {"match": [{"headers": {"x-to": {"exact": "subset"}}}],
                             "route": [{"destination": {"host": "other.example.com", "subset": "v2"}}]},
                            {"route": [{"destination": {"host": "api.example.com"}}],
                             "headers": {"request": {"set": {"x-via": "egress-vs"}}}}]}}),
    );
    api.apply(
        DESTINATION_RULES,
        json!({"metadata": {"namespace": "demo", "name": "other"},
               "spec": {"host": "other.example.com", "subsets": [{"name": "v2", "labels": {"version": "v2"}}]}}),
    );
    api.apply(
        ROUTES,
        json!({"metadata": {"namespace": "demo", "name": "echo"},
               "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": "echo"}],
                        "rules": [
                            {"matches": [{"headers": [{"name": "x-to", "value": "hostname"}]}],
                             "backendRefs": [{"group": "networking.istio.io", "kind": "Hostname", "name": "other.example.com", "port": 80}]},
                            {"backendRefs": [{"name": "echo-v1", "port": 80}]}]}}),
    );
    let dir = tempfile::tempdir()?;
    let args = kube_args(&api, dir.path())?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = Mesh::start_config(x, &config, &args, &[])?;
    let to = |vip| -> Result<Client> {
        Client::new(socks_connect(
            m.client_ip(),
            m.n1.socks(),
            SocketAddr::new(vip, 80),
        )?)
    };
    let mut c = to(api_vip)?;
    let r = c.request("GET", "/e", &[], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v1 ") && r.body.contains("x-via: egress-vs"),
        "{r:?}\n{}",
        m.context()
    );
    for how in ["other", "subset"] {
        let r = c.request("GET", "/e", &[("x-to", how)], b"")?;
        ensure!(
            r.status == 200 && r.body.starts_with("v2 "),
            "{how}: {r:?}\n{}",
            m.context()
        );
    }
    ensure!(
        !m.wp
            .proc
            .stderr()
            .contains("left out of the waypoint's config"),
        "{}",
        m.context()
    );
    let mut c = m.client()?;
    let r = c.request("GET", "/h", &[("x-to", "hostname")], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v2 "),
        "{r:?}\n{}",
        m.context()
    );
    let r = c.request("GET", "/h", &[], b"")?;
    ensure!(r.status == 200 && r.body.starts_with("v1 "), "{r:?}");
    // The other host, called: no route of its own (the first's VirtualService is not its),
    // so on to its own endpoints, and counted under its own hostname.
    let mut c = to(other_vip)?;
    let r = c.request("GET", "/o", &[], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v2 ") && !r.body.contains("x-via"),
        "{r:?}\n{}",
        m.context()
    );
    let metrics = m.wp.metrics()?;
    let requests_to = |host: &str| {
        metrics.lines().any(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains(&format!("destination_service=\"{host}\""))
        })
    };
    ensure!(
        requests_to("other.example.com") && requests_to("api.example.com"),
        "{metrics}"
    );
    Ok(())
}
