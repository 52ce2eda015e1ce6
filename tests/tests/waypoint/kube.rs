//! The waypoint's kinds from a Kubernetes API server (`--kube-api`): listed and watched,
//! applied as they change, an object that cannot apply left out and the rest kept;
//! Telemetries among them.

use super::*;
use e2e::kube::FakeKube;
use serde_json::json;

const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const TELEMETRIES: &str = "/apis/telemetry.istio.io/v1/telemetries";

fn route(default_backend: &str) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": "demo", "name": "echo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
            "rules": [
                {"matches": [{"headers": [{"name": "x-to", "value": "v2"}]}],
                 "backendRefs": [{"name": "echo-v2", "port": 80}]},
                {"backendRefs": [{"name": default_backend, "port": 80}]}
            ]
        },
        "status": {"parents": []}
    })
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
    let (token, ca) = (dir.path().join("token"), dir.path().join("ca.pem"));
    std::fs::write(&token, "s3cret\n")?;
    std::fs::write(&ca, &api.ca_pem)?;
    let (token, ca) = (token.display().to_string(), ca.display().to_string());
    let args = [
        "--kube-api",
        &api.base,
        "--kube-token",
        &token,
        "--kube-ca",
        &ca,
    ];
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
    Ok(())
}
