//! Istio's own shapes at the waypoint: VirtualService, DestinationRule subsets, and the
//! Istio CA as the waypoint's certificate source.

use super::*;

#[test]
fn a_virtual_service_routes_in_order_with_istio_meanings() -> Result<()> {
    // No HTTPRoute: Istio's VirtualService shape instead (`httpRoutes: []` then the list).
    let routes = "  []
virtualServices:
  - name: echo
    namespace: demo
    hosts: [echo.demo.svc.cluster.local]
    http:
      - name: canary
        match: [{headers: {x-canary: {exact: \"yes\"}}}]
        route: [{destination: {host: echo-v2, port: {number: 80}}}]
      - name: api
        match: [{uri: {prefix: /api}}]
        route: [{destination: {host: echo-v2.demo, port: {number: 80}}}]
        headers: {request: {set: {x-route: api}}}
        corsPolicy:
          allowOrigins: [{exact: \"https://app.test\"}, {regex: \"https://[a-z]+\\\\.corp\"}]
          allowMethods: [GET, POST]
          allowHeaders: [x-token]
          exposeHeaders: [x-trace]
          maxAge: 24h
          allowCredentials: true
      - name: regex
        match: [{uri: {prefix: /svc/}}]
        rewrite: {uriRegexRewrite: {match: \"^/svc/([^/]+)(/.*)$\", rewrite: \"\\\\2/instance/\\\\1\"}}
        route: [{destination: {host: echo-v1, port: {number: 80}}}]
      - name: rest
        route: [{destination: {host: echo-v1, port: {number: 80}}}]
        retries: {attempts: 2, retryOn: \"5xx\"}
        fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
        corsPolicy: {allowOrigins: [{exact: \"https://app.test\"}]}
";
    // The rest rule aborts everything: only the first two entries reach a backend.
    let m = Mesh::start(196, routes)?;
    let mut c = m.client()?;
    // First match wins: the header entry comes before the path entry.
    let r = c.request("GET", "/api/x", &[("x-canary", "yes")], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v2 ") && !r.body.contains("x-route"),
        "{r:?}\n{}",
        m.context()
    );
    // Istio's prefix is a string prefix: /apiv2 matches /api.
    let r = c.request("GET", "/apiv2", &[], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v2 ") && r.body.contains("x-route: api"),
        "{r:?}"
    );
    // uriRegexRewrite: groups swapped, the query kept.
    let r = c.request("GET", "/svc/foo/v1/api?q=1", &[], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v1 GET /v1/api/instance/foo?q=1\n"),
        "{r:?}\n{}",
        m.context()
    );
    let r = c.request("GET", "/other", &[], b"")?;
    ensure!(r.status == 418, "{r:?}");
    // Faults come before CORS (Envoy's order): the abort answers a preflight, bare.
    let r = c.request(
        "OPTIONS",
        "/other",
        &[
            ("origin", "https://app.test"),
            ("access-control-request-method", "GET"),
        ],
        b"",
    )?;
    ensure!(
        r.status == 418 && r.header("access-control-allow-origin").is_none(),
        "{r:?}"
    );
    // corsPolicy: a preflight from an allowed origin is answered by the waypoint.
    let served = m.v2.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = c.request(
        "OPTIONS",
        "/api/x",
        &[
            ("origin", "https://app.test"),
            ("access-control-request-method", "POST"),
        ],
        b"",
    )?;
    ensure!(
        r.status == 200
            && r.body.is_empty()
            && r.header("access-control-allow-origin") == Some("https://app.test")
            && r.header("access-control-allow-methods") == Some("GET,POST")
            && r.header("access-control-allow-headers") == Some("x-token")
            && r.header("access-control-max-age") == Some("86400")
            && r.header("access-control-allow-credentials") == Some("true"),
        "{r:?}\n{}",
        m.context()
    );
    ensure!(m.v2.requests.load(std::sync::atomic::Ordering::SeqCst) == served);
    // The backend's answer to an allowed origin carries the CORS headers; another
    // origin's does not, and its preflight goes to the backend.
    let r = c.request("GET", "/api/x", &[("origin", "https://eng.corp")], b"")?;
    ensure!(
        r.status == 200
            && r.body.starts_with("v2 ")
            && r.header("access-control-allow-origin") == Some("https://eng.corp")
            && r.header("access-control-expose-headers") == Some("x-trace"),
        "{r:?}"
    );
    let r = c.request("GET", "/api/x", &[("origin", "https://eng.corp.evil")], b"")?;
    ensure!(
        r.status == 200 && r.header("access-control-allow-origin").is_none(),
        "{r:?}"
    );
    let r = c.request(
        "OPTIONS",
        "/api/x",
        &[
            ("origin", "https://evil.test"),
            ("access-control-request-method", "POST"),
        ],
        b"",
    )?;
    ensure!(
        r.body.starts_with("v2 OPTIONS /api/x")
            && r.header("access-control-allow-origin").is_none(),
        "{r:?}"
    );
    Ok(())
}

#[test]
fn destination_rule_subsets_choose_endpoints_by_labels() -> Result<()> {
    // `echo-all` has both backends as endpoints. v1 carries `version: v1`; v2 has no labels,
    // and its canonical revision answers for `version` (as for a workload from istiod).
    let routes = "  []
virtualServices:
  - name: echo
    namespace: demo
    hosts: [echo.demo.svc.cluster.local]
    http:
      - name: pinned
        match: [{headers: {x-version: {regex: \"v[0-9]\"}}}]
        route: [{destination: {host: echo-all, subset: v2, port: {number: 80}}}]
      - name: any
        match: [{headers: {x-any: {exact: \"1\"}}}]
        route: [{destination: {host: echo-all, port: {number: 80}}}]
      - name: nobody
        match: [{uri: {prefix: /v3}}]
        route: [{destination: {host: echo-all, subset: v3, port: {number: 80}}}]
      - name: split
        route:
          - {destination: {host: echo-all, subset: v1, port: {number: 80}}, weight: 80}
          - {destination: {host: echo-all, subset: v2, port: {number: 80}}, weight: 20}
destinationRules:
  - name: echo-all
    namespace: demo
    host: echo-all
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, tls: {mode: ISTIO_MUTUAL}}
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
      - {name: v3, labels: {version: v3}}
";
    let m = Mesh::start(188, routes)?;
    let mut c = m.client()?;
    // Requests for two subsets, alternating on one client connection: each goes to its
    // subset's endpoint, never to a pooled connection of the other subset.
    let (mut v1, mut v2) = (0, 0);
    for i in 0..200 {
        let pinned = i % 4 == 0;
        let headers: &[(&str, &str)] = if pinned { &[("x-version", "v2")] } else { &[] };
        let r = c.request("GET", &format!("/r{i}"), headers, b"")?;
        ensure!(r.status == 200, "{r:?}\n{}", m.context());
        match &r.body[..3] {
            "v1 " => {
                ensure!(!pinned, "a request pinned to subset v2 reached v1: {r:?}");
                v1 += 1;
            }
            "v2 " if pinned => {}
            "v2 " => v2 += 1,
            _ => anyhow::bail!("{r:?}"),
        }
    }
    // 150 unpinned requests split 80/20 over the subsets: v1 expects 120, standard
    // deviation 4.9; ±5σ.
    ensure!((96..=144).contains(&v1), "v1 {v1}, v2 {v2}");
    ensure!(v1 + v2 == 150, "v1 {v1}, v2 {v2}");
    // No subset: the rule's round robin, per request, on one keep-alive connection (the
    // waypoint keeps a connection per endpoint and picks one for each request).
    let mut last = String::new();
    for i in 0..10 {
        let r = c.request("GET", &format!("/any{i}"), &[("x-any", "1")], b"")?;
        ensure!(r.status == 200, "{r:?}");
        let who = r.body[..3].to_string();
        ensure!(
            who != last,
            "request {i} went to {who} again: not round robin"
        );
        last = who;
    }
    // A subset no endpoint belongs to: Envoy's 503 (no healthy upstream, flag UH), and no
    // endpoint of another subset answers.
    let r = c.request("GET", "/v3/x", &[], b"")?;
    ensure!(
        r.status == 503 && r.body == "no healthy upstream\n",
        "{r:?}\n{}",
        m.context()
    );
    let logged = "http.path=/v3/x http.status=503 response_flags=\"UH\"";
    e2e::wait_for(Duration::from_secs(5), "the UH access log line", || {
        m.wp.proc.stderr().contains(logged)
    })
    .with_context(|| m.context())?;
    Ok(())
}

/// A fake istiod whose CA signs the waypoint's token for `ns/demo/sa/waypoint` (a dedicated
/// proxy) and impersonates for the nodes, with its root and that token in files.
struct Istio {
    istiod: e2e::istiod::FakeIstiod,
    files: tempfile::TempDir,
    address: String,
    root: String,
    token: String,
}

impl Istio {
    fn start() -> Result<Istio> {
        let ca = hbone::certs::CertificateAuthority::new_root(&hbone::certs::CaOptions::new(
            "fake istiod root",
        ))?;
        let istiod = e2e::istiod::FakeIstiod::start(ca)?;
        istiod.require_token("waypoint-token");
        istiod.token_identity(
            "waypoint-token",
            "spiffe://cluster.local/ns/demo/sa/waypoint",
        );
        let files = tempfile::tempdir()?;
        let (root, token) = (
            files.path().join("root-cert.pem"),
            files.path().join("token"),
        );
        std::fs::write(&root, istiod.root_pem())?;
        std::fs::write(&token, "waypoint-token")?;
        Ok(Istio {
            address: istiod.address(),
            root: root.to_string_lossy().into_owned(),
            token: token.to_string_lossy().into_owned(),
            istiod,
            files,
        })
    }

    /// The Istio CA's variables, for nodes and the waypoint.
    fn ca_env(&self) -> [(&str, &str); 3] {
        [
            ("CA_ADDRESS", self.address.as_str()),
            ("CA_ROOT_CA", self.root.as_str()),
            ("AUTH_TOKEN", self.token.as_str()),
        ]
    }
}

#[test]
fn a_waypoint_can_take_its_certificate_from_the_istio_ca() -> Result<()> {
    let x = 198;
    let istio = Istio::start()?;
    let _v1 = spawn_backend(SocketAddr::new(ip4(x, 2, 1), 8080), "v1")?;
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
";
    let mesh = MeshDir::new(&mesh_config(x, routes))?;
    let env = istio.ca_env();
    // Nodes and waypoint all sign with istiod's CA (config from the file, no xDS).
    let config = mesh.config.to_string_lossy().into_owned();
    let n1 = Node::start_cluster("node-1", ip4(x, 0, 1), &env, &["--config", &config])?;
    let _n2 = Node::start_cluster("node-2", ip4(x, 0, 2), &env, &["--config", &config])?;
    let wp = Waypoint::start_env(&mesh.config, "demo/waypoint", ip4(x, 3, 1), &[], &env)?;
    let mut c = Client::new(socks_connect(
        ip4(x, 1, 1),
        n1.socks(),
        SocketAddr::new(ip4(x, 100, 1), 80),
    )?)?;
    let r = c.request("GET", "/via-istio-ca", &[], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v1 GET /via-istio-ca"),
        "{r:?}\nwaypoint log:\n{}",
        wp.proc.stderr()
    );
    ensure!(
        istio
            .istiod
            .signed()
            .iter()
            .any(|id| id.contains("/ns/demo/sa/waypoint")),
        "istiod signed {:?}",
        istio.istiod.signed()
    );
    Ok(())
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint() -> Result<()> {
    let routes = "  []
virtualServices:
  - name: echo
    namespace: demo
    hosts: [echo.demo.svc.cluster.local]
    http:
      - route: [{destination: {host: echo-all, port: {number: 80}}}]
destinationRules:
  - name: echo-all
    namespace: demo
    host: echo-all
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 30s, maxEjectionPercent: 50}
";
    let m = Mesh::start(186, routes)?;
    let mut c = m.client()?;
    // v2 fails every request, v1 none. Round robin sends v2 its share until two failures
    // in a row eject it; from then on every request is v1's.
    let mut failures = 0;
    let mut last = Vec::new();
    for i in 0..40 {
        let r = c.request("GET", &format!("/fail-on/v2/{i}"), &[], b"")?;
        if r.status == 503 {
            failures += 1;
        }
        if i >= 20 {
            last.push((r.status, r.body[..2].to_string()));
        }
    }
    ensure!(failures == 2, "{failures} failures\n{}", m.context());
    ensure!(
        last.iter().all(|(s, who)| *s == 200 && who == "v1"),
        "{last:?}"
    );
    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(&metrics, "ringmesh_waypoint_outlier_ejections_total", &[]) == 1.0,
        "{metrics}"
    );
    ensure!(
        m.wp.proc
            .stderr()
            .contains("outlier detection ejected an endpoint"),
        "{}",
        m.context()
    );
    Ok(())
}

#[test]
fn consistent_hashing_keeps_a_key_on_one_endpoint() -> Result<()> {
    let routes = "  []
virtualServices:
  - name: echo
    namespace: demo
    hosts: [echo.demo.svc.cluster.local]
    http:
      - name: by-cookie
        match: [{headers: {x-cookie: {exact: \"1\"}}}]
        route: [{destination: {host: echo-all, subset: any, port: {number: 80}}}]
      - route: [{destination: {host: echo-all, port: {number: 80}}}]
destinationRules:
  - name: echo-all
    namespace: demo
    host: echo-all
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
    subsets:
      - name: any
        trafficPolicy:
          loadBalancer: {consistentHash: {httpCookie: {name: affinity, path: /, ttl: 60s}}}
";
    let m = Mesh::start(184, routes)?;
    let mut c = m.client()?;
    // Twenty users, five requests each, interleaved on one connection: a user's requests
    // all reach one endpoint, and the users spread over both.
    let mut home: std::collections::HashMap<usize, String> = Default::default();
    for round in 0..5 {
        for user in 0..20 {
            let name = format!("user-{user}");
            let r = c.request("GET", &format!("/u/{round}"), &[("x-user", &name)], b"")?;
            ensure!(r.status == 200, "{r:?}\n{}", m.context());
            let who = r.body[..2].to_string();
            let first = home.entry(user).or_insert_with(|| who.clone());
            ensure!(*first == who, "{name} went to {first}, then to {who}");
        }
    }
    let homes: std::collections::HashSet<_> = home.values().collect();
    ensure!(homes.len() == 2, "every user on one endpoint: {home:?}");
    // By cookie: the first answer sets one (Envoy's shape), and with it every later
    // request reaches the endpoint that first answered.
    let r = c.request("GET", "/c/0", &[("x-cookie", "1")], b"")?;
    ensure!(r.status == 200, "{r:?}");
    let set = r.header("set-cookie").context("no Set-Cookie")?.to_string();
    ensure!(
        set.starts_with("affinity=\"") && set.ends_with("; Max-Age=60; Path=/; HttpOnly"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    let first = r.body[..2].to_string();
    for i in 1..12 {
        let r = c.request(
            "GET",
            &format!("/c/{i}"),
            &[("x-cookie", "1"), ("cookie", &cookie)],
            b"",
        )?;
        ensure!(
            r.status == 200 && r.body[..2] == first,
            "{r:?} (first {first})"
        );
        ensure!(r.header("set-cookie").is_none(), "{r:?}");
    }
    Ok(())
}

#[test]
fn connection_pools_limit_connections_and_requests_as_circuit_breakers() -> Result<()> {
    // echo-v1: Istio's circuit-breaking task (one connection, one pending request, one
    // request per connection). echo-v2: two requests in flight at most.
    let routes = "  []
virtualServices:
  - name: echo
    namespace: demo
    hosts: [echo.demo.svc.cluster.local]
    http:
      - match: [{headers: {x-to: {exact: v2}}}]
        route: [{destination: {host: echo-v2, port: {number: 80}}}]
      - route: [{destination: {host: echo-v1, port: {number: 80}}}]
destinationRules:
  - name: echo-v1
    namespace: demo
    host: echo-v1
    trafficPolicy:
      connectionPool:
        tcp: {maxConnections: 1, connectTimeout: 2s}
        http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
  - name: echo-v2
    namespace: demo
    host: echo-v2
    trafficPolicy:
      connectionPool: {http: {http2MaxRequests: 2}}
";
    let m = Mesh::start(183, routes)?;
    // One request per connection: five requests in turn open five upstream connections.
    let mut c = m.client()?;
    let before = m.v1.connections.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..5 {
        let r = c.request("GET", &format!("/seq/{i}"), &[], b"")?;
        ensure!(r.status == 200, "{r:?}\n{}", m.context());
    }
    let opened = m.v1.connections.load(std::sync::atomic::Ordering::SeqCst) - before;
    ensure!(opened == 5, "{opened} upstream connections for 5 requests");
    // Six slow requests at once, each on its own client connection.
    let burst = |headers: &'static [(&'static str, &'static str)],
                 n: usize|
     -> Result<Vec<e2e::l7::Response>> {
        let clients = (0..n).map(|_| m.client()).collect::<Result<Vec<_>>>()?;
        let threads: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                std::thread::spawn(move || {
                    c.request("GET", &format!("/slow/1500/{i}"), headers, b"")
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect()
    };
    let check = |answers: &[e2e::l7::Response], most: usize, what: &str| -> Result<()> {
        let ok = answers.iter().filter(|r| r.status == 200).count();
        let overflow: Vec<_> = answers.iter().filter(|r| r.status != 200).collect();
        ensure!(
            ok >= 1 && ok <= most && overflow.len() == answers.len() - ok,
            "{what}: {ok} answered of {}: {answers:?}",
            answers.len()
        );
        for r in overflow {
            ensure!(
                r.status == 503
                    && r.header("x-envoy-overloaded") == Some("true")
                    && r.body.contains("reset reason: overflow"),
                "{what}: {r:?}"
            );
        }
        Ok(())
    };
    // echo-v1: one connection per core at most (a core with none may open one, as in
    // Envoy) and one request waiting: at most three of six get through.
    check(&burst(&[], 6)?, 3, "echo-v1")?;
    // echo-v2: two in flight, whatever the connections.
    check(&burst(&[("x-to", "v2")], 5)?, 2, "echo-v2")?;
    // Overflows are Envoy's flag UO, in the metrics and the access log.
    e2e::wait_for(Duration::from_secs(5), "the UO access log line", || {
        m.wp.proc.stderr().contains("response_flags=\"UO\"")
    })
    .with_context(|| m.context())?;
    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(&metrics, "istio_requests_total", &["response_flags=\"UO\""]) >= 2.0,
        "{metrics}"
    );
    // The limits free up: a request after the burst gets through.
    let r = m.client()?.request("GET", "/after", &[], b"")?;
    ensure!(r.status == 200, "{r:?}");
    Ok(())
}

#[test]
fn locality_failover_prefers_the_waypoints_zone() -> Result<()> {
    let x = 182;
    let routes = "  []
virtualServices:
  - name: echo
    namespace: demo
    hosts: [echo.demo.svc.cluster.local]
    http:
      - route: [{destination: {host: echo-all, port: {number: 80}}}]
destinationRules:
  - name: echo-all
    namespace: demo
    host: echo-all
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 30s}
";
    // The waypoint and v1 in us-east/a, v2 in us-west/a.
    let east = "locality: {region: us-east, zone: a}, ";
    let config = mesh_config(x, routes)
        .replace("{name: waypoint, ", &format!("{{name: waypoint, {east}"))
        .replace("{name: v1, ", &format!("{{name: v1, {east}"))
        .replace(
            "{name: v2, ",
            "{name: v2, locality: {region: us-west, zone: a}, ",
        );
    let m = Mesh::start_config(x, &config, &[], &[])?;
    let mut c = m.client()?;
    // Round robin, but over the waypoint's zone only: v1 takes everything.
    for i in 0..20 {
        let r = c.request("GET", &format!("/near/{i}"), &[], b"")?;
        ensure!(
            r.status == 200 && r.body.starts_with("v1 "),
            "{r:?}\n{}",
            m.context()
        );
    }
    // v1 fails once and is ejected: the traffic fails over to the other region.
    let r = c.request("GET", "/fail-on/v1/x", &[], b"")?;
    ensure!(r.status == 503, "{r:?}");
    for i in 0..10 {
        let r = c.request("GET", &format!("/far/{i}"), &[], b"")?;
        ensure!(
            r.status == 200 && r.body.starts_with("v2 "),
            "{r:?}\n{}",
            m.context()
        );
    }
    Ok(())
}

#[test]
fn a_waypoint_in_a_cluster_takes_its_mesh_from_istiod() -> Result<()> {
    use control::pb::workload as pw;
    let x = 185;
    let istio = Istio::start()?;
    let istiod = &istio.istiod;
    // istiod's view of the mesh: the waypoint's own pod, v1 (an endpoint of echo-v1, no
    // labels, canonical revision v1) and the two Services. Nothing of it is in the
    // waypoint's file.
    let ip = |c, d| match ip4(x, c, d) {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let workload = |uid: &str, sa: &str, addr: Vec<u8>, services: &[&str]| pw::Address {
        r#type: Some(pw::address::Type::Workload(pw::Workload {
            uid: uid.into(),
            name: uid.rsplit('/').next().unwrap_or(uid).into(),
            namespace: "demo".into(),
            service_account: sa.into(),
            addresses: vec![addr],
            tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
            canonical_name: sa.into(),
            canonical_revision: "v1".into(),
            services: services
                .iter()
                .map(|s| {
                    let port = pw::Port {
                        service_port: 80,
                        target_port: 8080,
                        app_protocol: 0,
                    };
                    (s.to_string(), pw::PortList { ports: vec![port] })
                })
                .collect(),
            ..pw::Workload::default()
        })),
    };
    let service = |name: &str, vip: Vec<u8>| pw::Address {
        r#type: Some(pw::address::Type::Service(pw::Service {
            name: name.into(),
            namespace: "demo".into(),
            hostname: format!("{name}.demo.svc.cluster.local"),
            addresses: vec![pw::NetworkAddress {
                network: String::new(),
                address: vip,
                length: None,
            }],
            ports: vec![pw::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
            ..pw::Service::default()
        })),
    };
    const WAYPOINT_UID: &str = "Kubernetes//Pod/demo/waypoint-0";
    istiod.put_address(
        WAYPOINT_UID,
        &workload(WAYPOINT_UID, "waypoint", ip(3, 1), &[]),
    );
    let v1_uid = "Kubernetes//Pod/demo/v1-0";
    istiod.put_address(
        v1_uid,
        &workload(
            v1_uid,
            "echo",
            ip(2, 1),
            &["demo/echo-v1.demo.svc.cluster.local"],
        ),
    );
    istiod.put_address(
        "demo/echo.demo.svc.cluster.local",
        &service("echo", ip(100, 1)),
    );
    istiod.put_address(
        "demo/echo-v1.demo.svc.cluster.local",
        &service("echo-v1", ip(100, 2)),
    );

    let l7_file = istio.files.path().join("waypoint.yaml");
    // The waypoint's file: its own kinds only, Services named as Kubernetes names them.
    std::fs::write(
        &l7_file,
        "virtualServices:
  - name: echo
    namespace: demo
    hosts: [echo.demo.svc.cluster.local]
    http: [{route: [{destination: {host: echo-v1.demo.svc.cluster.local, subset: v1}}]}]
destinationRules:
  - {name: echo-v1, namespace: demo, host: echo-v1, subsets: [{name: v1, labels: {version: v1}}]}
",
    )?;
    let _v1 = spawn_backend(SocketAddr::new(ip4(x, 2, 1), 8080), "v1")?;
    // The nodes keep the file (CA from istiod): what is under test is the waypoint.
    let mesh = MeshDir::new(&mesh_config(x, "  []\n"))?;
    let ca_env = istio.ca_env();
    let config = mesh.config.to_string_lossy().into_owned();
    let n1 = Node::start_cluster("node-1", ip4(x, 0, 1), &ca_env, &["--config", &config])?;
    let _n2 = Node::start_cluster("node-2", ip4(x, 0, 2), &ca_env, &["--config", &config])?;
    let mut env = ca_env.to_vec();
    env.extend([
        ("XDS_ADDRESS", istio.address.as_str()),
        ("XDS_ROOT_CA", istio.root.as_str()),
    ]);
    let wp = Waypoint::start_env(&l7_file, WAYPOINT_UID, ip4(x, 3, 1), &[], &env)?;
    let mut c = Client::new(socks_connect(
        ip4(x, 1, 1),
        n1.socks(),
        SocketAddr::new(ip4(x, 100, 1), 80),
    )?)?;
    let r = c.request("GET", "/from-istiod", &[], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v1 GET /from-istiod"),
        "{r:?}\nwaypoint log:\n{}",
        wp.proc.stderr()
    );
    // The ready line says where the mesh came from (string fields are quoted in this log).
    ensure!(
        wp.proc.stderr().contains("mesh=\"istiod\""),
        "{}",
        wp.proc.stderr()
    );
    // istiod takes v1 away: the subset has no endpoint left, and the waypoint says so.
    istiod.remove(e2e::istiod::ADDRESS_TYPE, v1_uid);
    let mut last = None;
    e2e::wait_for(Duration::from_secs(10), "istiod's removal applied", || {
        let r = c.request("GET", "/after", &[], b"");
        let done = r.as_ref().is_ok_and(|r| r.status == 503);
        last = Some(r.map(|r| (r.status, r.body)));
        done
    })
    .with_context(|| format!("{last:?}\n{}", wp.proc.stderr()))?;
    Ok(())
}
