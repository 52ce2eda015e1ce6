//! The waypoint's traces: W3C `traceparent` propagation and spans exported over OTLP/HTTP
//! and OTLP/gRPC (h2c and TLS; a collector that stalls).

use std::sync::atomic::Ordering;

use super::*;

/// The routes of the export tests: every request to `echo` goes to v1.
const ROUTES: &str = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - backendRefs: [{name: echo-v1, port: 80}]
";

/// The sampled trace the export tests send, and its parent span.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Sends the export tests' requests (the waypoint samples 100 %): `/traced` in a sampled
/// trace, `/unsampled` in an unsampled one, `/fresh` with none. Checks what the backend saw
/// and returns the span id it saw as its parent.
fn send_traced_requests(m: &Mesh) -> Result<String> {
    let mut c = m.client()?;
    // A request that carries a sampled trace: the waypoint's span is its child, and the
    // backend sees the waypoint's span as its parent.
    let r = c.request(
        "GET",
        "/traced",
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
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
        fields.len() == 4 && fields[1] == TRACE && fields[2] != PARENT && fields[3] == "01",
        "{seen}"
    );
    // An unsampled trace passes through untouched and makes no span.
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let r = c.request("GET", "/unsampled", &[("traceparent", &unsampled)], b"")?;
    ensure!(
        r.body.contains(&format!("traceparent: {unsampled}")),
        "{r:?}"
    );
    // No traceparent at 100 % sampling: a new trace.
    let r = c.request("GET", "/fresh", &[], b"")?;
    ensure!(r.body.contains("traceparent: 00-"), "{r:?}");
    Ok(fields[2].to_string())
}

/// Checks the spans a collector got for [`send_traced_requests`] (`span_id`: what the
/// backend saw as its parent): ids, name, resource and attributes.
fn check_exported_spans(spans: &[e2e::l7::Span], span_id: &str) -> Result<()> {
    let s = spans
        .iter()
        .find(|s| s.trace_id == TRACE)
        .with_context(|| format!("no span of the trace: {spans:?}"))?;
    ensure!(s.span_id == span_id && s.parent_span_id == PARENT, "{s:?}");
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

/// Starts the mesh exporting every span to the TLS collector at `endpoint`, verified
/// against `ca` (written to a file for `--otlp-ca`), with `env` for the waypoint; sends
/// `GET /over-tls` and waits for its span among `spans`. The mesh and the roots' directory
/// live as long as the caller keeps them.
fn span_over_tls(
    x: u8,
    endpoint: &str,
    ca: &str,
    env: &[(&str, &str)],
    spans: &std::sync::Mutex<Vec<e2e::l7::Span>>,
) -> Result<(Mesh, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let roots = dir.path().join("otlp-ca.pem");
    std::fs::write(&roots, ca)?;
    let roots = roots.display().to_string();
    let m = Mesh::start_env(
        x,
        ROUTES,
        &[
            "--otlp-endpoint",
            endpoint,
            "--otlp-ca",
            &roots,
            "--trace-sampling",
            "100",
        ],
        env,
    )?;
    let mut c = m.client()?;
    let r = c.request("GET", "/over-tls", &[], b"")?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    e2e::wait_for(Duration::from_secs(20), "a span over TLS", || {
        spans.lock().unwrap().iter().any(|s| {
            s.attributes
                .get("http.url")
                .is_some_and(|u| u.contains("/over-tls"))
        })
    })
    .with_context(|| m.context())?;
    Ok((m, dir))
}

#[test]
fn traces_propagate_and_export_over_otlp() -> Result<()> {
    let x = 195;
    let collector = e2e::l7::spawn_collector(SocketAddr::new(ip4(x, 9, 1), 4318))?;
    let endpoint = format!("http://{}", collector.addr);
    let m = Mesh::start_with(
        x,
        ROUTES,
        &["--otlp-endpoint", &endpoint, "--trace-sampling", "100"],
    )?;
    let span_id = send_traced_requests(&m)?;
    e2e::wait_for(
        Duration::from_secs(20),
        "two spans at the collector",
        || collector.spans.lock().unwrap().len() >= 2,
    )
    .with_context(|| m.context())?;
    let spans = collector.spans.lock().unwrap().clone();
    check_exported_spans(&spans, &span_id)
}

#[test]
fn spans_go_to_an_https_collector_verified_against_the_given_roots() -> Result<()> {
    let x = 180;
    let (collector, ca) = e2e::l7::spawn_https_collector(SocketAddr::new(ip4(x, 9, 1), 4318))?;
    let endpoint = format!("https://{}", collector.addr);
    let _mesh = span_over_tls(x, &endpoint, &ca, &[], &collector.spans)?;
    Ok(())
}

#[test]
fn spans_go_to_a_grpc_collector_with_the_given_metadata() -> Result<()> {
    let x = 170;
    let collector = e2e::otlp_grpc::spawn_grpc_collector(SocketAddr::new(ip4(x, 9, 1), 4317))?;
    let endpoint = format!("http://{}", collector.addr);
    let m = Mesh::start_with(
        x,
        ROUTES,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--otlp-header",
            "x-tenant=acme",
            "--otlp-header",
            "Authorization=Bearer t0k=",
            "--trace-sampling",
            "100",
        ],
    )?;
    let span_id = send_traced_requests(&m)?;
    e2e::wait_for(
        Duration::from_secs(20),
        "two spans at the gRPC collector",
        || collector.spans.lock().unwrap().len() >= 2,
    )
    .with_context(|| m.context())?;
    let spans = collector.spans.lock().unwrap().clone();
    check_exported_spans(&spans, &span_id)?;
    // Every export carried the metadata, names lower-cased, values as given.
    let exports = collector.exports.lock().unwrap().clone();
    ensure!(!exports.is_empty());
    for md in &exports {
        ensure!(
            md.get("x-tenant").map(String::as_str) == Some("acme")
                && md.get("authorization").map(String::as_str) == Some("Bearer t0k="),
            "{md:?}"
        );
        ensure!(
            md.get("content-type").map(String::as_str) == Some("application/grpc"),
            "{md:?}"
        );
    }
    Ok(())
}

#[test]
fn spans_go_to_a_grpc_collector_over_tls_verified_against_the_given_roots() -> Result<()> {
    let x = 171;
    let (collector, ca) =
        e2e::otlp_grpc::spawn_grpc_tls_collector(SocketAddr::new(ip4(x, 9, 1), 4317))?;
    let endpoint = format!("https://{}", collector.addr);
    // The protocol and the headers in OpenTelemetry's environment variables, as a
    // Deployment would set them.
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=acme%2Cco, x-scope=traces",
        ),
    ];
    let _mesh = span_over_tls(x, &endpoint, &ca, &env, &collector.spans)?;
    ensure!(
        collector.metadata("x-tenant").first().map(String::as_str) == Some("acme,co"),
        "{:?}",
        collector.exports.lock().unwrap()
    );
    ensure!(
        collector.metadata("x-scope").first().map(String::as_str) == Some("traces"),
        "{:?}",
        collector.exports.lock().unwrap()
    );
    Ok(())
}

/// A collector that accepts and never answers is the worst case: each export waits for its
/// deadline (10 s). Requests keep flowing at full speed meanwhile, every one sampled.
#[test]
fn a_stalled_grpc_collector_neither_slows_nor_fails_requests() -> Result<()> {
    let x = 172;
    let collector = e2e::otlp_grpc::spawn_silent_collector(SocketAddr::new(ip4(x, 9, 1), 4317))?;
    let endpoint = format!("http://{}", collector.addr);
    let m = Mesh::start_with(
        x,
        ROUTES,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--trace-sampling",
            "100",
        ],
    )?;
    let mut c = m.client()?;
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut sent, mut slowest) = (0u32, Duration::ZERO);
    let mut stalled_since: Option<Instant> = None;
    // Until an export has been stuck on the collector for 4 s (the first goes out when 512
    // spans are queued, or after 5 s).
    while stalled_since.is_none_or(|t| t.elapsed() < Duration::from_secs(4)) {
        ensure!(
            Instant::now() < deadline,
            "no export reached the collector after {sent} requests\n{}",
            m.context()
        );
        let start = Instant::now();
        let r = c.request("GET", &format!("/r/{sent}"), &[], b"")?;
        slowest = slowest.max(start.elapsed());
        ensure!(r.status == 200, "{r:?}\n{}", m.context());
        sent += 1;
        if stalled_since.is_none() && collector.connections.load(Ordering::SeqCst) > 0 {
            stalled_since = Some(Instant::now());
        }
    }
    // Generous for a loaded machine running debug builds; a core that waited on the
    // exporter would take the whole 10 s.
    ensure!(
        slowest < Duration::from_secs(2),
        "the slowest of {sent} requests took {slowest:?}\n{}",
        m.context()
    );
    Ok(())
}
