//! The waypoint end to end: a client pod on node-1 calls Service `echo`, which names the
//! waypoint; node-1 tunnels to the waypoint (HBONE), the waypoint routes each HTTP request
//! and tunnels to the chosen endpoint's node (node-2), which hands it to the backend. Every
//! hop is a real process on real sockets.
//!
//! Address plan: one 127.x/16 block per mesh, x in 165..=199 and 251..=254, each test
//! naming its own (`let x = …`); other test binaries keep their own plans (cargo runs
//! test binaries one at a time).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use e2e::l7::{Backend, Client, Waypoint, spawn_backend, spawn_slow_backend};
use e2e::{MeshDir, Node, ip4, metric_sum, socks_connect};

/// The mesh: client on node-1; backends v1, v2 and mirror on node-2 (each the endpoint of
/// its own Service; v1 and v2 are also both endpoints of `echo-all`, v1 labelled
/// `version: v1` and v2 with no labels but canonical revision v2); Service `echo` (VIP
/// .100.1:80) has no endpoint of its own and names the waypoint (.3.1), whose routes are
/// `routes` (a YAML list, indented for `httpRoutes:`).
fn mesh_config(x: u8, routes: &str) -> String {
    let ip = |c, d| ip4(x, c, d);
    format!(
        "workloads:
  - {{name: client, namespace: demo, serviceAccount: client, workloadIps: [\"{client}\"], node: node-1, protocol: HBONE}}
  - {{name: waypoint, namespace: demo, serviceAccount: waypoint, workloadIps: [\"{wp}\"], node: waypoints, protocol: HBONE}}
  - {{name: v1, namespace: demo, serviceAccount: echo, workloadIps: [\"{v1}\"], node: node-2, protocol: HBONE, labels: {{version: v1}}, services: [demo/echo-v1.demo.svc.cluster.local, demo/echo-all.demo.svc.cluster.local]}}
  - {{name: v2, namespace: demo, serviceAccount: echo, workloadIps: [\"{v2}\"], node: node-2, protocol: HBONE, canonicalRevision: v2, services: [demo/echo-v2.demo.svc.cluster.local, demo/echo-all.demo.svc.cluster.local]}}
  - {{name: mirror, namespace: demo, serviceAccount: mirror, workloadIps: [\"{m}\"], node: node-2, protocol: HBONE, services: [demo/mirror.demo.svc.cluster.local]}}
services:
  - {{name: echo, namespace: demo, hostname: echo.demo.svc.cluster.local, vips: [\"{vip}\"], ports: {{80: 8080}}, waypoint: {{destination: \"/{wp}\", hboneMtlsPort: 15008}}}}
  - {{name: echo-v1, namespace: demo, hostname: echo-v1.demo.svc.cluster.local, vips: [\"{vip1}\"], ports: {{80: 8080}}}}
  - {{name: echo-v2, namespace: demo, hostname: echo-v2.demo.svc.cluster.local, vips: [\"{vip2}\"], ports: {{80: 8080}}}}
  - {{name: mirror, namespace: demo, hostname: mirror.demo.svc.cluster.local, vips: [\"{vipm}\"], ports: {{80: 8080}}}}
  - {{name: echo-all, namespace: demo, hostname: echo-all.demo.svc.cluster.local, vips: [\"{vipa}\"], ports: {{80: 8080}}}}
httpRoutes:
{routes}",
        client = ip(1, 1),
        wp = ip(3, 1),
        v1 = ip(2, 1),
        v2 = ip(2, 2),
        m = ip(2, 3),
        vip = ip(100, 1),
        vip1 = ip(100, 2),
        vip2 = ip(100, 3),
        vipm = ip(100, 4),
        vipa = ip(100, 5),
    )
}

struct Mesh {
    _mesh: MeshDir,
    n1: Node,
    _n2: Node,
    wp: Waypoint,
    v1: Backend,
    v2: Backend,
    mirror: Backend,
    x: u8,
}

impl Mesh {
    fn start(x: u8, routes: &str) -> Result<Mesh> {
        Mesh::start_with(x, routes, &[])
    }

    /// [`Mesh::start`] with extra `ringmesh waypoint` arguments.
    fn start_with(x: u8, routes: &str, waypoint_args: &[&str]) -> Result<Mesh> {
        Mesh::start_env(x, routes, waypoint_args, &[])
    }

    /// [`Mesh::start_with`] with environment variables for the waypoint.
    fn start_env(
        x: u8,
        routes: &str,
        waypoint_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Mesh> {
        Mesh::start_config(x, &mesh_config(x, routes), waypoint_args, env)
    }

    /// [`Mesh::start_env`] with the whole mesh config given (a [`mesh_config`], edited).
    fn start_config(
        x: u8,
        config: &str,
        waypoint_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Mesh> {
        let backend = |d, name| spawn_backend(SocketAddr::new(ip4(x, 2, d), 8080), name);
        let (v1, v2) = (backend(1, "v1")?, backend(2, "v2")?);
        // The mirror is slow: the client must never wait for it.
        let mirror = spawn_slow_backend(
            SocketAddr::new(ip4(x, 2, 3), 8080),
            "mirror",
            Duration::from_secs(2),
        )?;
        let mesh = MeshDir::new(config)?;
        let n1 = Node::start(&mesh, "node-1", ip4(x, 0, 1), &[])?;
        let n2 = Node::start(&mesh, "node-2", ip4(x, 0, 2), &[])?;
        let ca = mesh.ca.to_string_lossy().into_owned();
        let mut args = vec!["--ca-dir", &*ca];
        args.extend_from_slice(waypoint_args);
        let wp = Waypoint::start_env(&mesh.config, "demo/waypoint", ip4(x, 3, 1), &args, env)?;
        Ok(Mesh {
            _mesh: mesh,
            n1,
            _n2: n2,
            wp,
            v1,
            v2,
            mirror,
            x,
        })
    }

    fn client_ip(&self) -> IpAddr {
        ip4(self.x, 1, 1)
    }

    fn vip(&self) -> SocketAddr {
        SocketAddr::new(ip4(self.x, 100, 1), 80)
    }

    /// A keep-alive HTTP/1.1 connection from the client pod to Service `echo`.
    fn client(&self) -> Result<Client> {
        Client::new(socks_connect(
            self.client_ip(),
            self.n1.socks(),
            self.vip(),
        )?)
    }

    fn context(&self) -> String {
        format!("waypoint log:\n{}", self.wp.proc.stderr())
    }
}

#[test]
fn weighted_split_header_match_and_rewrites_over_http1() -> Result<()> {
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo, port: 80}]
    rules:
      - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: \"yes\"}]}]
        backendRefs:
          - name: echo-v2
            port: 80
            filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: backend}, {name: x-backend, value: two}]}}]
        filters:
          - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: canary}], remove: [x-secret]}}
          - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served-by, value: waypoint}]}}
      - backendRefs:
          - name: echo-v1
            port: 80
            weight: 90
            filters:
              - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: one}]}}
              - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-via, value: v1}]}}
          - name: echo-v2
            port: 80
            weight: 10
            filters:
              - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: two}]}}
              - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-via, value: v2}]}}
";
    let m = Mesh::start(190, routes)?;
    let mut c = m.client()?;

    // The header match wins over the weighted rule; the rewrites apply both ways.
    let r = c.request(
        "GET",
        "/api/items",
        &[("x-canary", "yes"), ("x-secret", "s3")],
        b"",
    )?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    ensure!(r.body.starts_with("v2 GET /api/items"), "{r:?}");
    // A rule's one backendRef: its own edits come after the rule's (istiod appends the
    // destination's headers to the route's), so its value stays.
    ensure!(
        r.body.contains("x-route: backend")
            && r.body.contains("x-backend: two")
            && !r.body.contains("x-secret"),
        "{r:?}"
    );
    ensure!(r.header("x-served-by") == Some("waypoint"), "{r:?}");
    // Without the header: the weighted rule, untouched headers.
    let r = c.request("GET", "/api/items", &[("x-secret", "s3")], b"")?;
    ensure!(
        r.body.contains("x-secret: s3") && r.header("x-served-by").is_none(),
        "{r:?}"
    );

    // 90/10 over 10,000 requests on one keep-alive connection: within 5 standard deviations
    // (σ = √(n·p·(1−p)) = 30).
    let n = 10_000;
    let (v1_before, v2_before) = (
        m.v1.requests.load(std::sync::atomic::Ordering::SeqCst),
        m.v2.requests.load(std::sync::atomic::Ordering::SeqCst),
    );
    let mut v1 = 0;
    for i in 0..n {
        let r = c.request("GET", &format!("/split?{i}"), &[], b"")?;
        ensure!(r.status == 200, "request {i}: {r:?}");
        // Each backend's own edits, on its requests and responses only.
        let (tag, via) = if r.body.starts_with("v1 ") {
            v1 += 1;
            ("x-backend: one\n", "v1")
        } else {
            ("x-backend: two\n", "v2")
        };
        ensure!(
            r.body.contains(tag) && r.header("x-via") == Some(via),
            "request {i}: {r:?}"
        );
    }
    ensure!(
        (v1 as i64 - 9000).abs() <= 150,
        "v1 got {v1} of {n}, expected 9000 ± 150"
    );
    // The backends saw exactly those requests (nothing retried or duplicated).
    let seen1 = m.v1.requests.load(std::sync::atomic::Ordering::SeqCst) - v1_before;
    let seen2 = m.v2.requests.load(std::sync::atomic::Ordering::SeqCst) - v2_before;
    ensure!(
        seen1 == v1 && seen2 == n - v1,
        "backends saw {seen1}/{seen2}"
    );

    let metrics = m.wp.metrics()?;
    let ok = metric_sum(
        &metrics,
        "ringmesh_waypoint_requests_total",
        &["destination_service=\"demo/echo\"", "response_code=\"200\""],
    );
    ensure!(ok >= f64::from(n as u32), "{metrics}");
    // Istio's series, as a waypoint reports them: who called, which Service, which
    // endpoint answered; one request per backend request.
    let istio = |dst: &str| {
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[
                "reporter=\"waypoint\"",
                "source_workload=\"client\"",
                "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
                "destination_service=\"echo.demo.svc.cluster.local\"",
                &format!("destination_workload=\"{dst}\""),
                "request_protocol=\"http\"",
                // Plain HTTP has no gRPC status (Envoy writes the label empty).
                "response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\"",
            ],
        )
    };
    let total = |b: &Backend| b.requests.load(std::sync::atomic::Ordering::SeqCst) as f64;
    ensure!(
        istio("v1") == total(&m.v1),
        "v1 {}:\n{metrics}",
        total(&m.v1)
    );
    ensure!(
        istio("v2") == total(&m.v2),
        "v2 {}:\n{metrics}",
        total(&m.v2)
    );
    let count = |name: &str, extra: &[&str]| {
        let mut labels = vec!["destination_workload=\"v1\""];
        labels.extend_from_slice(extra);
        metric_sum(&metrics, name, &labels)
    };
    ensure!(
        count("istio_request_duration_milliseconds_count", &[]) == total(&m.v1),
        "{metrics}"
    );
    ensure!(
        count("istio_response_bytes_bucket", &["le=\"+Inf\""]) == total(&m.v1),
        "{metrics}"
    );
    ensure!(
        count("istio_request_bytes_bucket", &["le=\"1\""]) == total(&m.v1),
        "no request had a body:\n{metrics}"
    );
    // The access log has a line per request.
    let log = m.wp.proc.stderr();
    ensure!(
        log.lines().any(|l| l.contains("request complete")
            && l.contains("http.path=/api/items")
            && l.contains("http.status=200")
            && l.contains("complete=true")
            && l.contains("src.workload=\"demo/client\"")),
        "no access line:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
    Ok(())
}

#[test]
fn retries_timeouts_faults_and_mirror() -> Result<()> {
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - name: retried
        matches: [{path: {value: /flaky}}, {path: {value: /reset}}]
        backendRefs: [{name: echo-v1, port: 80}]
        retry: {attempts: 2, codes: [503], backoff: 1ms, retryOn: [reset, connect-failure]}
      - name: timed
        matches: [{path: {value: /slow}}]
        backendRefs: [{name: echo-v1, port: 80}]
        timeouts: {request: 300ms}
      - name: aborted
        matches: [{path: {value: /abort}}]
        backendRefs: [{name: echo-v1, port: 80}]
        fault: {abort: {httpStatus: 418, percentage: 30}}
      - name: delayed
        matches: [{path: {value: /delay}}]
        backendRefs: [{name: echo-v1, port: 80}]
        fault: {delay: {fixedDelay: 200ms, percentage: 100}}
      - name: mirrored
        matches: [{path: {value: /mirrored}}]
        backendRefs: [{name: echo-v1, port: 80}]
        filters: [{type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 80}, percent: 100}}]
      - backendRefs: [{name: echo-v1, port: 80}]
";
    let m = Mesh::start(191, routes)?;
    let mut c = m.client()?;

    // One 503, then 200: the retry hides it. Without a retry rule the 503 shows.
    let r = c.request("GET", "/flaky/1/a", &[], b"")?;
    ensure!(r.status == 200, "retried 503: {r:?}\n{}", m.context());
    let r = c.request("GET", "/other/flaky/1/b", &[], b"")?;
    ensure!(r.status == 200, "{r:?}");
    // A reset before any response byte, then success.
    let r = c.request("GET", "/reset/1/a", &[], b"")?;
    ensure!(r.status == 200, "retried reset: {r:?}\n{}", m.context());
    // More failures than attempts: the last answer reaches the client.
    let r = c.request("GET", "/flaky/5/c", &[], b"")?;
    ensure!(r.status == 503, "{r:?}");
    let r = c.request("GET", "/reset/5/c", &[], b"")?;
    ensure!(r.status == 503 && r.body.contains("reset"), "{r:?}");

    // The route's timeout fires: 504 long before the backend's 3 s.
    let t = Instant::now();
    let r = c.request("GET", "/slow/3000/x", &[], b"")?;
    ensure!(
        r.status == 504 && r.body.contains("upstream request timeout"),
        "{r:?}"
    );
    ensure!(
        t.elapsed() < Duration::from_millis(2000),
        "timeout took {:?}",
        t.elapsed()
    );
    let mut c = m.client()?;

    // Aborts at 30 % over 1,000 requests: σ = √(1000·0.3·0.7) ≈ 14.5; 5σ ≈ 73.
    let mut aborted = 0;
    for i in 0..1000 {
        let r = c.request("GET", &format!("/abort?{i}"), &[], b"")?;
        match r.status {
            418 => aborted += 1,
            200 => {}
            s => anyhow::bail!("abort route answered {s}: {r:?}"),
        }
    }
    ensure!(
        (aborted as i64 - 300).abs() <= 73,
        "{aborted} of 1000 aborted, expected 300 ± 73"
    );
    // A delay at 100 %.
    let t = Instant::now();
    let r = c.request("GET", "/delay", &[], b"")?;
    ensure!(
        r.status == 200 && t.elapsed() >= Duration::from_millis(200),
        "{r:?} after {:?}",
        t.elapsed()
    );

    // The mirror gets its copy (Host with -shadow); the client does not wait for it, even
    // when the mirror is slow.
    let before = m.mirror.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = c.request("POST", "/mirrored", &[], b"hello")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v1 POST /mirrored") && r.body.contains("len=5"),
        "{r:?}"
    );
    e2e::wait_for(Duration::from_secs(5), "the mirror's copy", || {
        m.mirror.requests.load(std::sync::atomic::Ordering::SeqCst) > before
    })?;
    // A body that streams (chunked, with trailers, and over the 64 KiB a request holds for
    // a copy) reaches the mirror whole, as the request reads it: 256 KiB, what a copy may
    // fall behind (a mirror still connecting has read none of it).
    let chunk = vec![b'c'; 16 * 1024];
    let mut raw =
        b"POST /mirrored/stream HTTP/1.1\r\nhost: echo.test\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..16 {
        raw.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend(&chunk);
        raw.extend(b"\r\n");
    }
    // Trailers end it: nothing reads a body past them.
    raw.extend(b"0\r\nx-checksum: c16\r\n\r\n");
    c.send_raw(&raw)?;
    let r = c.read_response()?;
    ensure!(
        r.status == 200 && r.body.contains("len=262144"),
        "{r:?}\n{}",
        m.context()
    );
    e2e::wait_for(Duration::from_secs(5), "the streamed body's copy", || {
        m.mirror.bodies.lock().unwrap().get("/mirrored/stream") == Some(&262_144)
    })
    .with_context(|| format!("{:?}\n{}", m.mirror.bodies.lock().unwrap(), m.context()))?;
    let t = Instant::now();
    for i in 0..5 {
        let r = c.request("GET", &format!("/mirrored?{i}"), &[], b"")?;
        ensure!(r.status == 200, "{r:?}");
    }
    // Five copies to a mirror that takes 2 s each did not hold the client up.
    ensure!(
        t.elapsed() < Duration::from_millis(1500),
        "mirrored requests took {:?}",
        t.elapsed()
    );
    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(&metrics, "ringmesh_waypoint_retries_total", &[]) >= 4.0,
        "{metrics}"
    );
    ensure!(
        metric_sum(&metrics, "ringmesh_waypoint_fault_aborts_total", &[]) == f64::from(aborted),
        "{metrics}"
    );
    ensure!(
        metric_sum(
            &metrics,
            "ringmesh_waypoint_requests_total",
            &["response_flags=\"UT\""]
        ) >= 1.0,
        "{metrics}"
    );
    Ok(())
}

#[test]
fn a_bad_route_is_an_error_naming_its_field() -> Result<()> {
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]
";
    let mesh = MeshDir::new("workloads: []\n")?;
    // A good one: the check counts what the waypoint will apply.
    let good = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
authorizationPolicies:
  - {name: p, namespace: demo, targetRefs: [{name: echo}], rules: [{}]}
";
    std::fs::write(&mesh.config, mesh_config(193, good))?;
    let out = std::process::Command::new(e2e::bin("ringmesh"))
        .args(["config", "check"])
        .arg(&mesh.config)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && stdout.contains(
                "for waypoints: 1 routes, 1 authorization policies, 0 request authentications"
            ),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&mesh.config, mesh_config(193, routes))?;
    let out = std::process::Command::new(e2e::bin("ringmesh"))
        .args(["config", "check"])
        .arg(&mesh.config)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "accepted: {stderr}");
    ensure!(
        stderr.contains("httpRoutes[demo/echo].rules[0].matches[0].path.value"),
        "{stderr}"
    );
    // A backend that names no Service.
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - backendRefs: [{name: nowhere, port: 80}]
";
    std::fs::write(&mesh.config, mesh_config(193, routes))?;
    let out = std::process::Command::new(e2e::bin("ringmesh"))
        .args(["config", "check"])
        .arg(&mesh.config)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("rules[0].backendRefs[0]")
            && stderr.contains("demo/nowhere"),
        "{stderr}"
    );
    // A GRPCRoute's errors name its own list and fields: a method match with an HTTPRoute's
    // path syntax, and a mirror to no Service.
    for (grpc, field) in [
        (
            "[{matches: [{method: {service: /pkg.Echo}}]}]",
            "grpcRoutes[demo/echo].rules[0].matches[0].method.service",
        ),
        (
            "[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: nowhere}}}]}]",
            "grpcRoutes[demo/echo].rules[0].filters[0].requestMirror.backendRef",
        ),
    ] {
        let routes = format!(
            "  []\ngrpcRoutes:\n  - {{name: echo, namespace: demo, parentRefs: [{{name: echo}}], rules: {grpc}}}\n"
        );
        std::fs::write(&mesh.config, mesh_config(193, &routes))?;
        let out = std::process::Command::new(e2e::bin("ringmesh"))
            .args(["config", "check"])
            .arg(&mesh.config)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && stderr.contains(field), "{stderr}");
    }
    Ok(())
}

#[test]
fn url_rewrites_and_redirects() -> Result<()> {
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - matches: [{path: {type: PathPrefix, value: /old}}]
        filters:
          - {type: RequestRedirect, requestRedirect: {hostname: echo.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}
      - matches: [{path: {type: PathPrefix, value: /v1}}]
        backendRefs: [{name: echo-v1, port: 80}]
        filters:
          - {type: URLRewrite, urlRewrite: {hostname: echo-internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}}
      - matches: [{path: {type: Exact, value: /ping}}]
        backendRefs: [{name: echo-v2, port: 80}]
        filters:
          - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /healthz}}}
      - matches: [{path: {type: PathPrefix, value: /cors}}]
        backendRefs: [{name: echo-v1, port: 80}]
        filters:
          - {type: CORS, cors: {allowOrigins: ['https://*.example'], allowMethods: [PUT], exposeHeaders: [x-trace]}}
";
    let m = Mesh::start(199, routes)?;
    let mut c = m.client()?;
    // A redirect is answered by the waypoint: no backend sees it.
    let r = c.request("GET", "/old/page?x=1", &[], b"")?;
    ensure!(r.status == 301, "{r:?}\n{}", m.context());
    let location = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"));
    ensure!(
        location.map(|(_, v)| v.as_str()) == Some("http://echo.example/new/page?x=1"),
        "{r:?}"
    );
    // The backend gets the rewritten path (query kept) and Host.
    let r = c.request("GET", "/v1/users?id=7", &[], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v1 GET /api/users?id=7\n"),
        "{r:?}\n{}",
        m.context()
    );
    ensure!(r.body.contains("host: echo-internal\n"), "{r:?}");
    let r = c.request("GET", "/ping", &[], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v2 GET /healthz\n"),
        "{r:?}"
    );
    // Host untouched where the rule does not rewrite it.
    ensure!(r.body.contains("host: echo.test\n"), "{r:?}");
    // Gateway API's CORS filter: a preflight from an allowed origin is answered by the
    // waypoint, one from another origin answered bare (istiod's IGNORE); the request
    // itself goes on and its answer carries the origin's headers.
    let preflight = |c: &mut Client, origin: &str| {
        c.request(
            "OPTIONS",
            "/cors/a",
            &[("origin", origin), ("access-control-request-method", "PUT")],
            b"",
        )
    };
    let r = preflight(&mut c, "https://app.example")?;
    ensure!(
        r.status == 200
            && r.header("access-control-allow-origin") == Some("https://app.example")
            && r.header("access-control-allow-methods") == Some("PUT")
            && r.header("access-control-max-age") == Some("5"),
        "{r:?}\n{}",
        m.context()
    );
    let r = preflight(&mut c, "https://app.other")?;
    ensure!(
        r.status == 200 && r.header("access-control-allow-origin").is_none(),
        "{r:?}"
    );
    let r = c.request("GET", "/cors/b", &[("origin", "https://app.example")], b"")?;
    ensure!(
        r.status == 200
            && r.body.starts_with("v1 GET /cors/b\n")
            && r.header("access-control-allow-origin") == Some("https://app.example")
            && r.header("access-control-expose-headers") == Some("x-trace"),
        "{r:?}"
    );
    ensure!(
        m.v1.requests.load(std::sync::atomic::Ordering::SeqCst) == 2
            && m.v2.requests.load(std::sync::atomic::Ordering::SeqCst) == 1,
        "backends saw redirects or preflights"
    );
    let metrics = m.wp.metrics()?;
    let redirects = metric_sum(
        &metrics,
        "istio_requests_total",
        &[
            "reporter=\"waypoint\"",
            "response_code=\"301\"",
            "response_flags=\"-\"",
        ],
    );
    ensure!(redirects == 1.0, "{metrics}");
    Ok(())
}

/// A route without a retry block gets Istio's default policy: an endpoint that cannot be
/// reached is retried, on another endpoint, and the client never sees it.
#[test]
fn the_default_retry_policy_hides_an_unreachable_endpoint() -> Result<()> {
    let x = 178;
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - backendRefs: [{name: echo-all, port: 80}]
";
    // A third endpoint of echo-all where nothing listens.
    let dead = format!(
        "\n  - {{name: dead, namespace: demo, serviceAccount: echo, workloadIps: [\"{}\"], node: node-2, protocol: HBONE, services: [demo/echo-all.demo.svc.cluster.local]}}\nservices:",
        ip4(x, 2, 9)
    );
    let config = mesh_config(x, routes).replacen("\nservices:", &dead, 1);
    let m = Mesh::start_config(x, &config, &[], &[])?;
    let mut c = m.client()?;
    for i in 0..30 {
        let r = c.request("GET", &format!("/default-retry/{i}"), &[], b"")?;
        ensure!(r.status == 200, "request {i}: {r:?}\n{}", m.context());
    }
    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(&metrics, "ringmesh_waypoint_retries_total", &[]) >= 1.0,
        "the dead endpoint was picked and retried:\n{metrics}"
    );
    let served = m.v1.requests.load(std::sync::atomic::Ordering::SeqCst)
        + m.v2.requests.load(std::sync::atomic::Ordering::SeqCst);
    ensure!(served == 30, "{served} requests reached v1 and v2");
    Ok(())
}

// The rest, by feature (one test binary: each file here is a module of it).
#[path = "waypoint/ext_authz.rs"]
mod ext_authz;
#[path = "waypoint/grpc_route.rs"]
mod grpc_route;
#[path = "waypoint/istio.rs"]
mod istio;
#[path = "waypoint/kube.rs"]
mod kube;
#[path = "waypoint/protocols.rs"]
mod protocols;
#[path = "waypoint/security.rs"]
mod security;
#[path = "waypoint/telemetry.rs"]
mod telemetry;
#[path = "waypoint/telemetry_api.rs"]
mod telemetry_api;
