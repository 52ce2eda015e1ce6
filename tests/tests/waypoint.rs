//! The waypoint end to end: a client pod on node-1 calls Service `echo`, which names the
//! waypoint; node-1 tunnels to the waypoint (HBONE), the waypoint routes each HTTP request
//! and tunnels to the chosen endpoint's node (node-2), which hands it to the backend. Every
//! hop is a real process on real sockets.
//!
//! Address plan: 127.190/16 .. 127.194/16.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use e2e::l7::{Backend, Client, Waypoint, spawn_backend, spawn_slow_backend};
use e2e::{MeshDir, Node, ip4, metric_sum, socks_connect};

/// The mesh: client on node-1; backends v1, v2 and mirror on node-2 (each the endpoint of
/// its own Service); Service `echo` (VIP .100.1:80) has no endpoint of its own and names the
/// waypoint (.3.1), whose routes are `routes` (a YAML list, indented for `httpRoutes:`).
fn mesh_config(x: u8, routes: &str) -> String {
    let ip = |c, d| ip4(x, c, d);
    format!(
        "workloads:
  - {{name: client, namespace: demo, serviceAccount: client, workloadIps: [\"{client}\"], node: node-1, protocol: HBONE}}
  - {{name: waypoint, namespace: demo, serviceAccount: waypoint, workloadIps: [\"{wp}\"], node: waypoints, protocol: HBONE}}
  - {{name: v1, namespace: demo, serviceAccount: echo, workloadIps: [\"{v1}\"], node: node-2, protocol: HBONE, services: [demo/echo-v1.demo.svc.cluster.local]}}
  - {{name: v2, namespace: demo, serviceAccount: echo, workloadIps: [\"{v2}\"], node: node-2, protocol: HBONE, services: [demo/echo-v2.demo.svc.cluster.local]}}
  - {{name: mirror, namespace: demo, serviceAccount: mirror, workloadIps: [\"{m}\"], node: node-2, protocol: HBONE, services: [demo/mirror.demo.svc.cluster.local]}}
services:
  - {{name: echo, namespace: demo, hostname: echo.demo.svc.cluster.local, vips: [\"{vip}\"], ports: {{80: 8080}}, waypoint: {{destination: \"/{wp}\", hboneMtlsPort: 15008}}}}
  - {{name: echo-v1, namespace: demo, hostname: echo-v1.demo.svc.cluster.local, vips: [\"{vip1}\"], ports: {{80: 8080}}}}
  - {{name: echo-v2, namespace: demo, hostname: echo-v2.demo.svc.cluster.local, vips: [\"{vip2}\"], ports: {{80: 8080}}}}
  - {{name: mirror, namespace: demo, hostname: mirror.demo.svc.cluster.local, vips: [\"{vipm}\"], ports: {{80: 8080}}}}
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
        let backend = |d, name| spawn_backend(SocketAddr::new(ip4(x, 2, d), 8080), name);
        let (v1, v2) = (backend(1, "v1")?, backend(2, "v2")?);
        // The mirror is slow: the client must never wait for it.
        let mirror = spawn_slow_backend(
            SocketAddr::new(ip4(x, 2, 3), 8080),
            "mirror",
            Duration::from_secs(2),
        )?;
        let mesh = MeshDir::new(&mesh_config(x, routes))?;
        let n1 = Node::start(&mesh, "node-1", ip4(x, 0, 1), &[])?;
        let n2 = Node::start(&mesh, "node-2", ip4(x, 0, 2), &[])?;
        let wp = Waypoint::start_with(&mesh, "demo/waypoint", ip4(x, 3, 1), waypoint_args)?;
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
        backendRefs: [{name: echo-v2, port: 80}]
        filters:
          - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: canary}], remove: [x-secret]}}
          - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served-by, value: waypoint}]}}
      - backendRefs: [{name: echo-v1, port: 80, weight: 90}, {name: echo-v2, port: 80, weight: 10}]
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
    ensure!(
        r.body.contains("x-route: canary") && !r.body.contains("x-secret"),
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
        if r.body.starts_with("v1 ") {
            v1 += 1;
        }
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
                "response_code=\"200\"",
                "response_flags=\"-\"",
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
fn http2_large_bodies_and_hostile_http() -> Result<()> {
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - backendRefs: [{name: echo-v1, port: 80, weight: 1}, {name: echo-v2, port: 80, weight: 1}]
";
    let m = Mesh::start_with(
        192,
        routes,
        &["--request-head-timeout", "1s", "--idle-timeout", "3s"],
    )?;

    // HTTP/2 with prior knowledge: 200 concurrent streams on one connection, each answered
    // by one of the two backends.
    let s = socks_connect(m.client_ip(), m.n1.socks(), m.vip())?;
    s.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bodies: Vec<String> = rt
        .block_on(async move {
            let io = tokio::net::TcpStream::from_std(s)?;
            let (client, conn) = h2::client::handshake(io).await?;
            tokio::spawn(conn);
            let mut tasks = Vec::new();
            for i in 0..200 {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    let mut client = client.ready().await?;
                    let req =
                        http::Request::get(format!("http://echo.demo.svc.cluster.local/h2/{i}"))
                            .body(())?;
                    let (resp, _) = client.send_request(req, true)?;
                    let resp = resp.await?;
                    anyhow::ensure!(resp.status() == 200, "stream {i}: {resp:?}");
                    let mut body = resp.into_body();
                    let mut text = Vec::new();
                    while let Some(chunk) = body.data().await {
                        let chunk = chunk?;
                        let _ = body.flow_control().release_capacity(chunk.len());
                        text.extend_from_slice(&chunk);
                    }
                    Ok::<_, anyhow::Error>(String::from_utf8_lossy(&text).into_owned())
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await??);
            }
            Ok::<_, anyhow::Error>(out)
        })
        .with_context(|| m.context())?;
    let v1 = bodies
        .iter()
        .filter(|b| b.starts_with("v1 GET /h2/"))
        .count();
    let v2 = bodies
        .iter()
        .filter(|b| b.starts_with("v2 GET /h2/"))
        .count();
    ensure!(v1 + v2 == 200 && v1 > 40 && v2 > 40, "v1 {v1}, v2 {v2}");
    // HTTP/2's :authority became HTTP/1.1's Host.
    ensure!(
        bodies[0].contains("host: echo.demo.svc.cluster.local"),
        "{}",
        bodies[0]
    );

    // A 128 MiB upload streams: the backend counts every byte, and the waypoint's peak
    // memory stays far below the body's size.
    let mut c = m.client()?;
    let big = vec![b'x'; 128 << 20];
    let r = c.request("POST", "/upload", &[], &big)?;
    ensure!(
        r.status == 200 && r.body.contains(&format!("len={}", big.len())),
        "{r:?}"
    );
    let peak = peak_rss_kib(m.wp.proc.pid())?;
    ensure!(
        peak < 64 * 1024,
        "waypoint peak RSS {peak} KiB after a 128 MiB upload"
    );

    // Hostile HTTP/1.1: each refused with a 4xx and its connection closed; the waypoint
    // serves the next client.
    let cases: [(&str, String, u16); 3] = [
        (
            "two Content-Lengths",
            "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".into(),
            400,
        ),
        (
            "a bad chunk size",
            "POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "a 100 KiB header",
            format!("GET /x HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n", "a".repeat(100 << 10)),
            431,
        ),
    ];
    for (what, raw, want) in cases {
        let mut c = m.client()?;
        c.send_raw(raw.as_bytes())?;
        let r = c.read_response().with_context(|| what.to_string())?;
        ensure!(r.status == want, "{what}: {r:?}");
        ensure!(
            c.closed_within(Duration::from_secs(5)),
            "{what}: connection left open"
        );
        ensure!(!r.body.contains("smuggled"), "{what}: {r:?}");
    }
    // Content-Length with Transfer-Encoding (the classic smuggling frame): RFC 9112 §6.3
    // lets the chunked framing win and requires the connection closed after the answer,
    // which is what happens; the request hidden behind the chunked body never reaches a
    // backend.
    let mut c = m.client()?;
    c.send_raw(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n")?;
    let r = c.read_response()?;
    ensure!(r.status == 200 && r.body.contains("len=0"), "{r:?}");
    ensure!(
        c.closed_within(Duration::from_secs(5)),
        "CL+TE: connection left open"
    );
    std::thread::sleep(Duration::from_millis(200));
    for b in [&m.v1, &m.v2] {
        ensure!(
            !b.paths.lock().unwrap().contains_key("/smuggled"),
            "a smuggled request reached a backend"
        );
    }
    // Slowloris: a head dripped a byte at a time is cut off after --request-head-timeout
    // (1 s here), although bytes keep coming.
    let mut c = m.client()?;
    let t = std::time::Instant::now();
    c.send_raw(b"GET /slow HTTP/1.1\r\nhost: a\r\nx-drip: ")?;
    let mut cut = false;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        if c.send_raw(b"a").is_err() {
            cut = true;
            break;
        }
        if t.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    ensure!(
        cut || c.closed_within(Duration::from_secs(2)),
        "a dripped head kept its connection"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(5),
        "cut after {:?}",
        t.elapsed()
    );
    // A connection that never sends a request is closed after --idle-timeout (3 s).
    let mut idle = m.client()?;
    let t = std::time::Instant::now();
    ensure!(
        idle.closed_within(Duration::from_secs(8)),
        "an idle connection stayed open"
    );
    ensure!(
        t.elapsed() >= Duration::from_secs(2),
        "closed after only {:?}",
        t.elapsed()
    );
    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(
            &metrics,
            "ringmesh_waypoint_connections_timed_out_total",
            &[]
        ) >= 2.0,
        "{metrics}"
    );

    let r = m.client()?.request("GET", "/after", &[], b"")?;
    ensure!(
        r.status == 200,
        "after the hostile requests: {r:?}\n{}",
        m.context()
    );
    Ok(())
}

/// The process's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmHWM in /proc/<pid>/status")
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
    Ok(())
}

/// A signing key and its public JWKS.
struct Signer {
    key: jsonwebtoken::EncodingKey,
    jwks: String,
}

fn signer(kid: &str) -> Result<Signer> {
    let pair = rcgen::KeyPair::generate()?;
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)?;
    jwk.common.key_id = Some(kid.to_string());
    let jwks = serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] })?;
    Ok(Signer { key, jwks })
}

impl Signer {
    fn token(&self, kid: &str, claims: serde_json::Value) -> Result<String> {
        let mut head = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        head.kid = Some(kid.to_string());
        Ok(jsonwebtoken::encode(&head, &claims, &self.key)?)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn jwt_and_l7_authorization() -> Result<()> {
    let x = 194;
    let good = signer("k1")?;
    let other = signer("k1")?;
    let dir = tempfile::tempdir()?;
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &good.jwks)?;
    let routes = format!(
        "  - name: echo
    namespace: demo
    parentRefs: [{{name: echo}}]
    rules:
      - backendRefs: [{{name: echo-v1, port: 80}}]
requestAuthentications:
  - name: jwt
    namespace: demo
    targetRefs: [{{name: echo}}]
    jwtRules:
      - issuer: https://issuer.test
        audiences: [echo]
        jwksFile: {jwks}
        outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
authorizationPolicies:
  - name: deny-admin
    namespace: demo
    targetRefs: [{{name: echo}}]
    action: DENY
    rules:
      - to: [{{operation: {{paths: [\"/admin/*\"]}}}}]
      - to: [{{operation: {{methods: [DELETE]}}}}]
  - name: secure-needs-admins
    namespace: demo
    targetRefs: [{{name: echo}}]
    rules:
      - to: [{{operation: {{notPaths: [\"/secure/*\"]}}}}]
      - from: [{{source: {{requestPrincipals: [\"https://issuer.test/*\"], principals: [cluster.local/ns/demo/sa/client]}}}}]
        to: [{{operation: {{paths: [\"/secure/*\"]}}}}]
        when: [{{key: \"request.auth.claims[groups]\", values: [admins]}}]
",
        jwks = jwks.display()
    );
    let m = Mesh::start(x, &routes)?;
    let mut c = m.client()?;
    let claims = |iss: &str, aud: &str, exp: u64, groups: &[&str]| serde_json::json!({"iss": iss, "aud": aud, "sub": "alice", "exp": exp, "groups": groups});
    let bearer = |t: &str| format!("Bearer {t}");
    let valid = good.token(
        "k1",
        claims("https://issuer.test", "echo", now() + 600, &["admins"]),
    )?;

    // L7 deny by path and by method, before any routing.
    let r = c.request("GET", "/public", &[], b"")?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    let r = c.request("GET", "/admin/users", &[], b"")?;
    ensure!(
        r.status == 403 && r.body.contains("RBAC: access denied"),
        "{r:?}"
    );
    let r = c.request("DELETE", "/public", &[], b"")?;
    ensure!(r.status == 403, "{r:?}");

    // A valid token from the right source with the right claim: allowed; the token is not
    // forwarded and its subject is.
    let r = c.request(
        "GET",
        "/secure/doc",
        &[("authorization", &bearer(&valid))],
        b"",
    )?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    ensure!(
        r.body.contains("x-jwt-sub: alice") && !r.body.contains("authorization"),
        "{r:?}"
    );

    // Each way a token can fail, with Envoy's status and words.
    let expired = good.token(
        "k1",
        claims("https://issuer.test", "echo", now() - 600, &["admins"]),
    )?;
    let wrong_iss = good.token(
        "k1",
        claims("https://other.test", "echo", now() + 600, &["admins"]),
    )?;
    let wrong_aud = good.token(
        "k1",
        claims("https://issuer.test", "other", now() + 600, &["admins"]),
    )?;
    let bad_sig = other.token(
        "k1",
        claims("https://issuer.test", "echo", now() + 600, &["admins"]),
    )?;
    let users = good.token(
        "k1",
        claims("https://issuer.test", "echo", now() + 600, &["users"]),
    )?;
    let cases = [
        ("expired", Some(expired), 401, "Jwt is expired"),
        (
            "wrong issuer",
            Some(wrong_iss),
            401,
            "Jwt issuer is not configured",
        ),
        (
            "wrong audience",
            Some(wrong_aud),
            401,
            "Audiences in Jwt are not allowed",
        ),
        (
            "bad signature",
            Some(bad_sig),
            401,
            "Jwt verification fails",
        ),
        (
            "not a JWT",
            Some("abc.def".to_string()),
            401,
            "Jwt is not in the form",
        ),
        ("missing", None, 403, "RBAC: access denied"),
        (
            "claim not matching",
            Some(users),
            403,
            "RBAC: access denied",
        ),
    ];
    for (what, token, status, words) in cases {
        let auth = token.map(|t| bearer(&t));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = c.request("GET", "/secure/doc", &headers, b"")?;
        ensure!(
            r.status == status && r.body.contains(words),
            "{what}: {r:?}"
        );
    }
    // A bad token is refused on any path, not only where a policy asks for one.
    let r = c.request(
        "GET",
        "/public",
        &[("authorization", "Bearer abc.def.ghi")],
        b"",
    )?;
    ensure!(r.status == 401, "{r:?}");

    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(
            &metrics,
            "ringmesh_waypoint_requests_total",
            &["response_code=\"403\"", "response_flags=\"RBAC\""]
        ) >= 4.0,
        "{metrics}"
    );
    ensure!(
        metric_sum(
            &metrics,
            "ringmesh_waypoint_requests_total",
            &["response_code=\"401\""]
        ) >= 6.0,
        "{metrics}"
    );
    Ok(())
}

#[test]
fn traces_propagate_and_export_over_otlp() -> Result<()> {
    let x = 195;
    let collector = e2e::l7::spawn_collector(SocketAddr::new(ip4(x, 9, 1), 4318))?;
    let endpoint = format!("http://{}", collector.addr);
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - backendRefs: [{name: echo-v1, port: 80}]
";
    let m = Mesh::start_with(
        x,
        routes,
        &["--otlp-endpoint", &endpoint, "--trace-sampling", "100"],
    )?;
    let mut c = m.client()?;

    // A request that carries a sampled trace: the waypoint's span is its child, and the
    // backend sees the waypoint's span as its parent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = c.request(
        "GET",
        "/traced",
        &[("traceparent", &format!("00-{trace}-{parent}-01"))],
        b"",
    )?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    let seen = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .with_context(|| format!("the backend saw no traceparent: {r:?}"))?
        .to_string();
    let fields: Vec<&str> = seen.split('-').collect();
    ensure!(
        fields.len() == 4 && fields[1] == trace && fields[2] != parent && fields[3] == "01",
        "{seen}"
    );
    let span_id = fields[2].to_string();

    // An unsampled trace passes through untouched and makes no span.
    let unsampled = format!("00-{trace}-{parent}-00");
    let r = c.request("GET", "/unsampled", &[("traceparent", &unsampled)], b"")?;
    ensure!(
        r.body.contains(&format!("traceparent: {unsampled}")),
        "{r:?}"
    );
    // No traceparent at 100 % sampling: a new trace.
    let r = c.request("GET", "/fresh", &[], b"")?;
    ensure!(r.body.contains("traceparent: 00-"), "{r:?}");

    e2e::wait_for(
        Duration::from_secs(20),
        "two spans at the collector",
        || collector.spans.lock().unwrap().len() >= 2,
    )
    .with_context(|| m.context())?;
    let spans = collector.spans.lock().unwrap().clone();
    let s = spans
        .iter()
        .find(|s| s.trace_id == trace)
        .with_context(|| format!("no span of the trace: {spans:?}"))?;
    ensure!(s.span_id == span_id && s.parent_span_id == parent, "{s:?}");
    ensure!(s.name == "echo.demo.svc.cluster.local:80/*", "{s:?}");
    ensure!(s.service_name == "ringmesh-waypoint", "{s:?}");
    for (k, v) in [
        ("http.method", "GET"),
        ("http.url", "/traced"),
        ("http.status_code", "200"),
        ("component", "proxy"),
    ] {
        ensure!(
            s.attributes.get(k).map(String::as_str) == Some(v),
            "{k}: {s:?}"
        );
    }
    ensure!(
        s.attributes
            .get("upstream_address")
            .is_some_and(|a| a.ends_with(":8080")),
        "{s:?}"
    );
    ensure!(
        !spans
            .iter()
            .any(|s| s.attributes.get("http.url").map(String::as_str) == Some("/unsampled")),
        "{spans:?}"
    );
    ensure!(
        spans.iter().any(
            |s| s.attributes.get("http.url").map(String::as_str) == Some("/fresh")
                && s.parent_span_id.is_empty()
        ),
        "{spans:?}"
    );
    Ok(())
}

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
      - name: rest
        route: [{destination: {host: echo-v1, port: {number: 80}}}]
        retries: {attempts: 2, retryOn: \"5xx\"}
        fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
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
    let r = c.request("GET", "/other", &[], b"")?;
    ensure!(r.status == 418, "{r:?}");
    Ok(())
}

#[test]
fn grpc_goes_over_http2_with_its_trailers() -> Result<()> {
    let x = 197;
    // echo-v1's endpoint speaks gRPC (HTTP/2 only); the rest of the mesh as usual.
    let grpc = e2e::l7::spawn_grpc_backend(SocketAddr::new(ip4(x, 2, 1), 8080), "grpc")?;
    let _v2 = spawn_backend(SocketAddr::new(ip4(x, 2, 2), 8080), "v2")?;
    let _mirror = spawn_backend(SocketAddr::new(ip4(x, 2, 3), 8080), "mirror")?;
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - backendRefs: [{name: echo-v1, port: 80}]
";
    let mesh = MeshDir::new(&mesh_config(x, routes))?;
    let n1 = Node::start(&mesh, "node-1", ip4(x, 0, 1), &[])?;
    let _n2 = Node::start(&mesh, "node-2", ip4(x, 0, 2), &[])?;
    let wp = Waypoint::start(&mesh, "demo/waypoint", ip4(x, 3, 1))?;

    let s = socks_connect(
        ip4(x, 1, 1),
        n1.socks(),
        SocketAddr::new(ip4(x, 100, 1), 80),
    )?;
    s.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results: Vec<(String, http::HeaderMap)> = rt
        .block_on(async move {
            let io = tokio::net::TcpStream::from_std(s)?;
            let (client, conn) = h2::client::handshake(io).await?;
            tokio::spawn(conn);
            let mut out = Vec::new();
            for i in 0..20 {
                let mut client = client.clone().ready().await?;
                let req = http::Request::post(format!(
                    "http://echo.demo.svc.cluster.local/pkg.Echo/Say{i}"
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())?;
                let (resp, mut send) = client.send_request(req, false)?;
                send.send_data(bytes::Bytes::from_static(b"\0\0\0\0\x05hello"), true)?;
                let resp = resp.await?;
                anyhow::ensure!(resp.status() == 200, "{resp:?}");
                let mut body = resp.into_body();
                let mut text = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    text.extend_from_slice(&chunk);
                }
                let trailers = body.trailers().await?.unwrap_or_default();
                out.push((String::from_utf8_lossy(&text).into_owned(), trailers));
            }
            Ok::<_, anyhow::Error>(out)
        })
        .with_context(|| format!("waypoint log:\n{}", wp.proc.stderr()))?;
    for (i, (body, trailers)) in results.iter().enumerate() {
        // The backend got HTTP/2 with te: trailers, and its trailers came back.
        ensure!(
            body == &format!("grpc /pkg.Echo/Say{i} te=trailers"),
            "{body}"
        );
        ensure!(
            trailers.get("grpc-status").is_some_and(|v| v == "0"),
            "{trailers:?}"
        );
        ensure!(
            trailers.get("x-request-bytes").is_some_and(|v| v == "10"),
            "{trailers:?}"
        );
    }
    ensure!(grpc.load(std::sync::atomic::Ordering::SeqCst) == 20);
    let metrics = wp.metrics()?;
    ensure!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &["request_protocol=\"grpc\"", "response_code=\"200\""]
        ) == 20.0,
        "{metrics}"
    );
    Ok(())
}

#[test]
fn a_waypoint_can_take_its_certificate_from_the_istio_ca() -> Result<()> {
    let x = 198;
    let root = hbone::certs::CertificateAuthority::new_root(&hbone::certs::CaOptions::new(
        "fake istiod root",
    ))?;
    let istiod = e2e::istiod::FakeIstiod::start(root)?;
    // The nodes impersonate (shared mode); the waypoint is a dedicated proxy, signed for
    // its token's service account.
    istiod.require_token("waypoint-token");
    istiod.token_identity(
        "waypoint-token",
        "spiffe://cluster.local/ns/demo/sa/waypoint",
    );
    let files = tempfile::tempdir()?;
    let (root_file, token_file) = (
        files.path().join("root-cert.pem"),
        files.path().join("token"),
    );
    std::fs::write(&root_file, istiod.root_pem())?;
    std::fs::write(&token_file, "waypoint-token")?;
    let _v1 = spawn_backend(SocketAddr::new(ip4(x, 2, 1), 8080), "v1")?;
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
";
    let mesh = MeshDir::new(&mesh_config(x, routes))?;
    let address = istiod.address();
    let (root_s, token_s) = (
        root_file.to_string_lossy().into_owned(),
        token_file.to_string_lossy().into_owned(),
    );
    let env = [
        ("CA_ADDRESS", address.as_str()),
        ("CA_ROOT_CA", root_s.as_str()),
        ("AUTH_TOKEN", token_s.as_str()),
    ];
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
        istiod
            .signed()
            .iter()
            .any(|id| id.contains("/ns/demo/sa/waypoint")),
        "istiod signed {:?}",
        istiod.signed()
    );
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
    ensure!(
        m.v1.requests.load(std::sync::atomic::Ordering::SeqCst) == 1
            && m.v2.requests.load(std::sync::atomic::Ordering::SeqCst) == 1,
        "backends saw redirects"
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

#[test]
fn websockets_pass_through_the_waypoint() -> Result<()> {
    use std::io::{BufRead, Write};
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - matches: [{path: {type: PathPrefix, value: /chat}}]
        backendRefs: [{name: echo-v1, port: 80}]
        filters:
          - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /ws}}}
      - backendRefs: [{name: echo-v2, port: 80}]
";
    let m = Mesh::start_with(189, routes, &["--request-head-timeout", "1s"])?;
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];
    // A backend that refuses the handshake answers as usual, and the connection stays
    // an HTTP one.
    let mut c = m.client()?;
    let r = c.request("GET", "/status/403", &upgrade, b"")?;
    ensure!(r.status == 403, "{r:?}\n{}", m.context());
    let r = c.request("GET", "/after", &[], b"")?;
    ensure!(
        r.status == 200 && r.body.starts_with("v2 GET /after"),
        "{r:?}"
    );

    // Routed and rewritten like any request, then bytes both ways.
    let mut c = m.client()?;
    let (reader, writer) = c.raw();
    let mut head = String::from("GET /chat/room HTTP/1.1\r\nhost: echo.test\r\n");
    for (k, v) in upgrade {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    let mut status = String::new();
    reader.read_line(&mut status)?;
    ensure!(
        status.starts_with("HTTP/1.1 101"),
        "{status:?}\n{}",
        m.context()
    );
    let mut saw_upgrade = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        saw_upgrade |= line.to_ascii_lowercase().starts_with("upgrade: websocket");
    }
    ensure!(saw_upgrade, "the 101 lost its Upgrade header");
    let mut line = String::new();
    reader.read_line(&mut line)?;
    ensure!(line == "hello from v1\n", "{line:?}");
    for i in 0..100 {
        let msg = format!("message {i} {}\n", "x".repeat(i * 50));
        writer.write_all(msg.as_bytes())?;
        let mut back = String::new();
        reader.read_line(&mut back)?;
        ensure!(back == msg, "echo {i}: {back:?}");
    }
    // Past the head deadline (1 s here), an open WebSocket is not a slow request.
    std::thread::sleep(Duration::from_millis(1500));
    writer.write_all(b"still there\n")?;
    let mut back = String::new();
    reader.read_line(&mut back)?;
    ensure!(back == "still there\n", "{back:?}\n{}", m.context());
    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(&metrics, "ringmesh_waypoint_websockets_total", &[]) == 1.0,
        "{metrics}"
    );
    ensure!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &["response_code=\"101\"", "destination_workload=\"v1\""]
        ) == 1.0,
        "{metrics}"
    );
    Ok(())
}
