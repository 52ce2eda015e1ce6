//! The waypoint's traces: W3C `traceparent` propagation and spans exported over OTLP.

use super::*;

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
fn spans_go_to_an_https_collector_verified_against_the_given_roots() -> Result<()> {
    let x = 180;
    let (collector, ca) = e2e::l7::spawn_https_collector(SocketAddr::new(ip4(x, 9, 1), 4318))?;
    let dir = tempfile::tempdir()?;
    let roots = dir.path().join("otlp-ca.pem");
    std::fs::write(&roots, ca)?;
    let endpoint = format!("https://{}", collector.addr);
    let roots = roots.display().to_string();
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - backendRefs: [{name: echo-v1, port: 80}]
";
    let m = Mesh::start_with(
        x,
        routes,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-ca",
            &roots,
            "--trace-sampling",
            "100",
        ],
    )?;
    let mut c = m.client()?;
    let r = c.request("GET", "/over-tls", &[], b"")?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    e2e::wait_for(Duration::from_secs(20), "a span over HTTPS", || {
        collector.spans.lock().unwrap().iter().any(|s| {
            s.attributes
                .get("http.url")
                .is_some_and(|u| u.contains("/over-tls"))
        })
    })
    .with_context(|| m.context())?;
    Ok(())
}
