//! The waypoint with HTTP/2 clients, large bodies, hostile HTTP, gRPC and WebSockets.

use super::*;

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

/// One gRPC message: the uncompressed flag, the length, the payload.
pub(super) fn grpc_message(payload: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// A gRPC call's answer: its head, body and trailers.
pub(super) struct GrpcAnswer {
    pub(super) head: http::response::Parts,
    pub(super) body: Vec<u8>,
    pub(super) trailers: http::HeaderMap,
}

/// A unary-shaped gRPC call on `client`: `body` sent whole, the answer read to its end.
async fn grpc_call(
    client: &h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    body: Vec<u8>,
) -> Result<GrpcAnswer> {
    grpc_call_with(client, path, &[], body).await
}

/// [`grpc_call`] with more request headers (metadata).
pub(super) async fn grpc_call_with(
    client: &h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<GrpcAnswer> {
    let mut client = client.clone().ready().await?;
    let mut req = http::Request::post(format!("http://echo.demo.svc.cluster.local{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(())?;
    let (resp, mut send) = client.send_request(req, false)?;
    send.send_data(bytes::Bytes::from(body), true)?;
    let (head, mut recv) = resp.await?.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await?.unwrap_or_default();
    Ok(GrpcAnswer {
        head,
        body,
        trailers,
    })
}

/// A client pod's h2c connection to Service `echo` over node-1.
pub(super) fn grpc_client(
    rt: &tokio::runtime::Runtime,
    n1: &Node,
    x: u8,
) -> Result<h2::client::SendRequest<bytes::Bytes>> {
    let s = socks_connect(
        ip4(x, 1, 1),
        n1.socks(),
        SocketAddr::new(ip4(x, 100, 1), 80),
    )?;
    s.set_nonblocking(true)?;
    rt.block_on(async move {
        let io = tokio::net::TcpStream::from_std(s)?;
        let (client, conn) = h2::client::handshake(io).await?;
        tokio::spawn(conn);
        Ok(client)
    })
}

#[test]
fn grpc_goes_over_http2_with_its_trailers() -> Result<()> {
    let x = 197;
    // Both endpoints of echo-all speak gRPC (HTTP/2 only); the rest of the mesh as usual.
    let grpc = e2e::l7::spawn_grpc_backend(SocketAddr::new(ip4(x, 2, 1), 8080), "grpc")?;
    let grpc2 = e2e::l7::spawn_grpc_backend(SocketAddr::new(ip4(x, 2, 2), 8080), "grpc")?;
    let _mirror = spawn_backend(SocketAddr::new(ip4(x, 2, 3), 8080), "mirror")?;
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - backendRefs: [{name: echo-all, port: 80}]
";
    let mesh = MeshDir::new(&mesh_config(x, routes))?;
    let n1 = Node::start(&mesh, "node-1", ip4(x, 0, 1), &[])?;
    let _n2 = Node::start(&mesh, "node-2", ip4(x, 0, 2), &[])?;
    let wp = Waypoint::start(&mesh, "demo/waypoint", ip4(x, 3, 1))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = grpc_client(&rt, &n1, x)?;
    let results: Vec<GrpcAnswer> = rt
        .block_on(async move {
            let mut out = Vec::new();
            for i in 0..20 {
                let path = format!("/pkg.Echo/Say{i}");
                out.push(grpc_call(&client, &path, grpc_message(b"hello")).await?);
            }
            Ok::<_, anyhow::Error>(out)
        })
        .with_context(|| format!("waypoint log:\n{}", wp.proc.stderr()))?;
    for (i, a) in results.iter().enumerate() {
        // The backend got HTTP/2 with te: trailers, and its messages and trailers came back.
        let h = &a.head.headers;
        ensure!(
            h.get("x-path")
                .is_some_and(|v| v == &*format!("/pkg.Echo/Say{i}"))
                && h.get("x-te").is_some_and(|v| v == "trailers"),
            "{h:?}"
        );
        ensure!(a.body == grpc_message(b"hello"), "{:?}", a.body);
        ensure!(
            a.trailers.get("grpc-status").is_some_and(|v| v == "0"),
            "{:?}",
            a.trailers
        );
        ensure!(
            a.trailers.get("x-request-bytes").is_some_and(|v| v == "10"),
            "{:?}",
            a.trailers
        );
    }
    // One client connection's streams are balanced per request over both endpoints (a
    // multiplexed connection per endpoint), not pinned to whichever the first one reached.
    let (a, b) = (
        grpc.load(std::sync::atomic::Ordering::SeqCst),
        grpc2.load(std::sync::atomic::Ordering::SeqCst),
    );
    ensure!(a + b == 20 && a > 0 && b > 0, "{a} and {b} streams");
    let metrics = wp.metrics()?;
    ensure!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[
                "request_protocol=\"grpc\"",
                "response_code=\"200\",grpc_response_status=\"0\""
            ]
        ) == 20.0,
        "{metrics}"
    );
    for name in [
        "istio_request_messages_total",
        "istio_response_messages_total",
    ] {
        ensure!(
            metric_sum(&metrics, name, &["reporter=\"waypoint\""]) == 20.0,
            "{name}: {metrics}"
        );
    }
    Ok(())
}

/// gRPC's side of Istio's telemetry and Envoy's local answers: message counters that count
/// while a stream is open, `grpc_response_status` from trailers or a trailers-only head,
/// and the waypoint's own denials and faults in gRPC's form, with the HTTP code they stand
/// for in `response_code`.
#[test]
fn grpc_statuses_messages_and_local_answers() -> Result<()> {
    let x = 173;
    let _g1 = e2e::l7::spawn_grpc_backend(SocketAddr::new(ip4(x, 2, 1), 8080), "grpc")?;
    let _g2 = e2e::l7::spawn_grpc_backend(SocketAddr::new(ip4(x, 2, 2), 8080), "grpc")?;
    // The mirror speaks gRPC too: a copy goes in the protocol of the call.
    let mirror =
        e2e::l7::spawn_recording_grpc_backend(SocketAddr::new(ip4(x, 2, 3), 8080), "mirror")?;
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - matches: [{path: {value: /pkg.Echo/Busy}}]
        backendRefs: [{name: echo-all, port: 80}]
        fault: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: 100}}
      - matches: [{path: {value: /pkg.Echo/FlakyOnce}}]
        backendRefs: [{name: echo-all, port: 80}]
        retry: {attempts: 2, retryOn: [unavailable], backoff: 1ms}
      - matches: [{path: {value: /pkg.Echo/Mirrored}}]
        backendRefs: [{name: echo-all, port: 80}]
        filters: [{type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 80}, percent: 100}}]
      - backendRefs: [{name: echo-all, port: 80}]
authorizationPolicies:
  - name: no-admin
    namespace: demo
    targetRefs: [{name: echo}]
    action: DENY
    rules: [{to: [{operation: {paths: [/pkg.Admin/*]}}]}]
";
    let mesh = MeshDir::new(&mesh_config(x, routes))?;
    let n1 = Node::start(&mesh, "node-1", ip4(x, 0, 1), &[])?;
    let _n2 = Node::start(&mesh, "node-2", ip4(x, 0, 2), &[])?;
    let collector = e2e::l7::spawn_collector(SocketAddr::new(ip4(x, 9, 1), 4318))?;
    let endpoint = format!("http://{}", collector.addr);
    let wp = Waypoint::start_with(
        &mesh,
        "demo/waypoint",
        ip4(x, 3, 1),
        &["--otlp-endpoint", &endpoint, "--trace-sampling", "100"],
    )?;
    let context = || format!("waypoint log:\n{}", wp.proc.stderr());
    let messages = |metrics: &str, name: &str| {
        metric_sum(
            metrics,
            name,
            &[
                "reporter=\"waypoint\"",
                "source_workload=\"client\"",
                "destination_service=\"echo.demo.svc.cluster.local\"",
            ],
        )
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = grpc_client(&rt, &n1, x)?;

    // A stream: three messages, the second split over two DATA frames; each comes back.
    let (mut send, mut recv, sent) = rt
        .block_on(async {
            let mut c = client.clone().ready().await?;
            let req = http::Request::post("http://echo.demo.svc.cluster.local/pkg.Echo/Chat")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())?;
            let (resp, mut send) = c.send_request(req, false)?;
            let mut first = grpc_message(b"one");
            let two = grpc_message(b"two, a longer one");
            first.extend_from_slice(&two[..7]);
            let mut rest = two[7..].to_vec();
            rest.extend(grpc_message(b"three"));
            let sent = first.len() + rest.len();
            send.send_data(bytes::Bytes::from(first), false)?;
            send.send_data(bytes::Bytes::from(rest), false)?;
            let resp = resp.await?;
            anyhow::ensure!(resp.status() == 200, "{resp:?}");
            let mut recv = resp.into_body();
            let mut got = 0;
            while got < sent {
                let chunk = recv.data().await.context("the stream ended early")??;
                let _ = recv.flow_control().release_capacity(chunk.len());
                got += chunk.len();
            }
            Ok::<_, anyhow::Error>((send, recv, sent))
        })
        .with_context(context)?;
    // Open, it already counts.
    let metrics = wp.metrics()?;
    ensure!(
        messages(&metrics, "istio_request_messages_total") == 3.0
            && messages(&metrics, "istio_response_messages_total") == 3.0,
        "three each way while the stream is open:\n{metrics}"
    );
    ensure!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &["request_protocol=\"grpc\""]
        ) == 0.0,
        "the call has not ended:\n{metrics}"
    );
    let trailers = rt
        .block_on(async {
            let mut more = grpc_message(b"four");
            more.extend(grpc_message(b""));
            let (sent, more_len) = (sent + more.len(), more.len());
            send.send_data(bytes::Bytes::from(more), true)?;
            let mut got = 0;
            while let Some(chunk) = recv.data().await {
                let chunk = chunk?;
                let _ = recv.flow_control().release_capacity(chunk.len());
                got += chunk.len();
            }
            anyhow::ensure!(
                got == more_len,
                "{got} of {more_len} more bytes came back ({sent} in all)"
            );
            Ok::<_, anyhow::Error>(recv.trailers().await?.unwrap_or_default())
        })
        .with_context(context)?;
    ensure!(
        trailers.get("grpc-status").is_some_and(|v| v == "0"),
        "{trailers:?}"
    );
    let metrics = wp.metrics()?;
    ensure!(
        messages(&metrics, "istio_request_messages_total") == 5.0
            && messages(&metrics, "istio_response_messages_total") == 5.0,
        "five each way once it ended:\n{metrics}"
    );
    // Envoy's message counters carry no outcome labels.
    ensure!(
        !metrics
            .lines()
            .any(|l| l.starts_with("istio_request_messages_total{")
                && (l.contains("response_code") || l.contains("request_protocol"))),
        "{metrics}"
    );

    // Statuses: from the trailers, from a trailers-only head, and the waypoint's own.
    let answers = rt
        .block_on(async {
            let mut out = Vec::new();
            for path in [
                "/pkg.Echo/Fail",
                "/pkg.Echo/TrailersOnly",
                "/pkg.Admin/Drop",
                "/pkg.Echo/Busy",
                "/pkg.Echo/FlakyOnce",
            ] {
                out.push(grpc_call(&client, path, grpc_message(b"x")).await?);
            }
            Ok::<_, anyhow::Error>(out)
        })
        .with_context(context)?;
    let status = |a: &GrpcAnswer| {
        let h = a
            .trailers
            .get("grpc-status")
            .or(a.head.headers.get("grpc-status"));
        h.and_then(|v| v.to_str().ok()).map(str::to_string)
    };
    ensure!(
        status(&answers[0]).as_deref() == Some("14"),
        "{:?}",
        answers[0].trailers
    );
    ensure!(
        status(&answers[1]).as_deref() == Some("5"),
        "{:?}",
        answers[1].head
    );
    // The denial: trailers-only, :status 200, PERMISSION_DENIED and Envoy's words.
    let denied = &answers[2];
    ensure!(
        denied.head.status == 200
            && denied
                .head
                .headers
                .get("content-type")
                .is_some_and(|v| v == "application/grpc")
            && status(denied).as_deref() == Some("7")
            && denied
                .head
                .headers
                .get("grpc-message")
                .is_some_and(|v| v == "RBAC: access denied")
            && denied.body.is_empty(),
        "{:?} {:?}",
        denied.head,
        denied.body
    );
    // The fault's own gRPC status.
    let busy = &answers[3];
    ensure!(
        busy.head.status == 200 && status(busy).as_deref() == Some("8"),
        "{:?}",
        busy.head
    );
    // A trailers-only UNAVAILABLE is retried under `retryOn: [unavailable]`.
    let flaky = &answers[4];
    ensure!(
        status(flaky).as_deref() == Some("0") && flaky.body == grpc_message(b"x"),
        "{:?} {:?}",
        flaky.head,
        flaky.trailers
    );
    // A gRPC call has no content-length: its message reaches the mirror as the call
    // streams, whole (the mirror records a body that ended, not one reset).
    let message = grpc_message(b"a call worth a copy");
    let mirrored = rt
        .block_on(grpc_call(&client, "/pkg.Echo/Mirrored", message.clone()))
        .with_context(context)?;
    ensure!(
        status(&mirrored).as_deref() == Some("0") && mirrored.body == message,
        "{:?} {:?}",
        mirrored.head,
        mirrored.trailers
    );
    e2e::wait_for(
        Duration::from_secs(5),
        "the mirror's copy of the call",
        || mirror.bodies.lock().unwrap().get("/pkg.Echo/Mirrored") == Some(&(message.len() as u64)),
    )
    .with_context(|| format!("{:?}\n{}", mirror.bodies.lock().unwrap(), context()))?;
    let metrics = wp.metrics()?;
    let requests = |labels: &[&str]| {
        let mut all = vec!["request_protocol=\"grpc\""];
        all.extend_from_slice(labels);
        metric_sum(&metrics, "istio_requests_total", &all)
    };
    for (labels, want) in [
        (
            &["response_code=\"200\",grpc_response_status=\"0\",response_flags=\"-\""][..],
            3.0,
        ),
        (
            &["response_code=\"200\",grpc_response_status=\"14\""][..],
            1.0,
        ),
        (
            &["response_code=\"200\",grpc_response_status=\"5\""][..],
            1.0,
        ),
        (
            &["response_code=\"403\",grpc_response_status=\"7\",response_flags=\"RBAC\""][..],
            1.0,
        ),
        (
            &["response_code=\"200\",grpc_response_status=\"8\",response_flags=\"FI\""][..],
            1.0,
        ),
    ] {
        ensure!(requests(labels) == want, "{labels:?}:\n{metrics}");
    }
    ensure!(
        metric_sum(&metrics, "ringmesh_waypoint_retries_total", &[]) == 1.0,
        "one retry:\n{metrics}"
    );
    // Each call's span carries its gRPC status, as Envoy tags it.
    e2e::wait_for(Duration::from_secs(20), "six spans", || {
        collector.spans.lock().unwrap().len() >= 6
    })
    .with_context(context)?;
    let spans = collector.spans.lock().unwrap().clone();
    for (path, status) in [
        ("/pkg.Echo/Chat", "0"),
        ("/pkg.Echo/Fail", "14"),
        ("/pkg.Echo/TrailersOnly", "5"),
        ("/pkg.Admin/Drop", "7"),
        ("/pkg.Echo/Busy", "8"),
        ("/pkg.Echo/FlakyOnce", "0"),
    ] {
        let s = spans
            .iter()
            .find(|s| s.attributes.get("http.url").map(String::as_str) == Some(path))
            .with_context(|| format!("no span for {path}: {spans:?}"))?;
        ensure!(
            s.attributes.get("grpc.status_code").map(String::as_str) == Some(status),
            "{path}: {s:?}"
        );
    }
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
