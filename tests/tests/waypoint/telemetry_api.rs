//! Istio's Telemetry API on the waypoint: Telemetry objects in the config, the providers of
//! a MeshConfig (`--mesh-config`), spans to a gRPC OpenTelemetry provider with custom tags,
//! access logs filtered by a CEL expression, metrics turned off and relabelled; changes
//! apply without a restart.

use super::*;

/// Every request to `echo` goes to v1.
const ROUTES: &str = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - backendRefs: [{name: echo-v1, port: 80}]
";

/// Writes `mesh` as the MeshConfig file and starts the mesh with `telemetries` (a YAML
/// list, indented for `telemetries:`) in the config.
fn start(
    x: u8,
    mesh: &str,
    telemetries: &str,
    env: &[(&str, &str)],
) -> Result<(Mesh, tempfile::TempDir)> {
    start_env(x, mesh, &mesh_config(x, ROUTES), telemetries, env)
}

/// [`start`], with a config of the test's own (`mesh_config`'s, changed).
fn start_with(
    x: u8,
    mesh: &str,
    config: &str,
    telemetries: &str,
) -> Result<(Mesh, tempfile::TempDir)> {
    start_env(x, mesh, config, telemetries, &[])
}

fn start_env(
    x: u8,
    mesh: &str,
    config: &str,
    telemetries: &str,
    env: &[(&str, &str)],
) -> Result<(Mesh, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mesh_path = dir.path().join("mesh");
    std::fs::write(&mesh_path, mesh)?;
    let config = format!("{config}telemetries:\n{telemetries}");
    let path = mesh_path.display().to_string();
    let m = Mesh::start_config(
        x,
        &config,
        &["--mesh-config", &path, "--watch-interval", "100ms"],
        env,
    )?;
    Ok((m, dir))
}

fn span_for<'a>(spans: &'a [e2e::l7::Span], path: &str) -> Option<&'a e2e::l7::Span> {
    spans
        .iter()
        .find(|s| s.attributes.get("http.url").map(String::as_str) == Some(path))
}

#[test]
fn telemetry_sends_sampled_spans_with_custom_tags_to_a_grpc_provider() -> Result<()> {
    let x = 175;
    let collector = e2e::otlp_grpc::spawn_grpc_collector(SocketAddr::new(ip4(x, 9, 1), 4317))?;
    // Istio's shape: a provider by service and port, gRPC since it has no `http`.
    let mesh = format!(
        "defaultProviders: {{metrics: [prometheus]}}
extensionProviders:
- name: otel
  opentelemetry:
    service: {}
    port: 4317
    grpc:
      initialMetadata: [{{name: x-tenant, value: acme}}]
",
        ip4(x, 9, 1)
    );
    let telemetry = |team: &str| {
        format!(
            "  - name: mesh-default
    namespace: istio-system
    tracing: [{{providers: [{{name: otel}}], randomSamplingPercentage: 100}}]
  - name: tags
    namespace: demo
    targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
    tracing:
      - customTags:
          team: {{literal: {{value: {team}}}}}
          user: {{header: {{name: x-user, defaultValue: anon}}}}
          zone: {{environment: {{name: RINGMESH_TEST_ZONE, defaultValue: nowhere}}}}
          outcome: {{formatter: {{value: \"%ROUTE_NAME% %RESPONSE_CODE% %REQ(X-USER)% %ENVIRONMENT(RINGMESH_TEST_ZONE)%\"}}}}
"
        )
    };
    let (m, _dir) = start(x, &mesh, &telemetry("pay"), &[("RINGMESH_TEST_ZONE", "z1")])?;
    let mut c = m.client()?;
    let r = c.request("GET", "/first", &[("x-user", "alice")], b"")?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    ensure!(
        r.body.contains("traceparent: 00-"),
        "sampled at 100 %: {r:?}"
    );
    let r = c.request("GET", "/anonymous", &[], b"")?;
    ensure!(r.status == 200, "{r:?}");
    e2e::wait_for(Duration::from_secs(20), "two spans over gRPC", || {
        collector.spans.lock().unwrap().len() >= 2
    })
    .with_context(|| m.context())?;
    {
        let spans = collector.spans.lock().unwrap().clone();
        let s = span_for(&spans, "/first").with_context(|| format!("{spans:?}"))?;
        ensure!(
            s.service_name == "waypoint.demo",
            "Istio's name for the waypoint: {s:?}"
        );
        for (k, v) in [
            ("team", "pay"),
            ("user", "alice"),
            ("zone", "z1"),
            ("http.method", "GET"),
            ("component", "proxy"),
            // Envoy's operators, filled when the span ended.
            ("outcome", "demo/echo 200 alice z1"),
        ] {
            ensure!(
                s.attributes.get(k).map(String::as_str) == Some(v),
                "{k}: {s:?}"
            );
        }
        ensure!(
            s.attributes
                .get("guid:x-request-id")
                .is_some_and(|id| id.len() == 36),
            "Envoy's request id tag: {s:?}"
        );
        let a = span_for(&spans, "/anonymous").with_context(|| format!("{spans:?}"))?;
        ensure!(
            a.attributes.get("user").map(String::as_str) == Some("anon")
                && a.attributes.get("outcome").map(String::as_str) == Some("demo/echo 200 - z1"),
            "{a:?}"
        );
        let exports = collector.exports.lock().unwrap();
        ensure!(
            exports
                .iter()
                .all(|md| md.get("x-tenant").map(String::as_str) == Some("acme")),
            "the provider's initialMetadata: {exports:?}"
        );
    }

    // A changed Telemetry applies to the next request, without a restart.
    let config = format!(
        "{}telemetries:\n{}",
        mesh_config(x, ROUTES),
        telemetry("ops")
    );
    std::fs::write(&m._mesh.config, config)?;
    e2e::wait_for(Duration::from_secs(20), "the new tag on a span", || {
        let Ok(mut c) = m.client() else { return false };
        let _ = c.request("GET", "/after", &[], b"");
        collector.spans.lock().unwrap().iter().any(|s| {
            s.attributes.get("http.url").map(String::as_str) == Some("/after")
                && s.attributes.get("team").map(String::as_str) == Some("ops")
        })
    })
    .with_context(|| m.context())?;

    // Span reporting off for the Service: the context passes untouched, no span.
    let quiet = format!(
        "{}  - name: quiet\n    namespace: demo\n    targetRefs: [{{kind: Service, name: echo}}]\n    tracing: [{{disableSpanReporting: true}}]\n",
        telemetry("ops")
    );
    let config = format!("{}telemetries:\n{quiet}", mesh_config(x, ROUTES));
    std::fs::write(&m._mesh.config, config)?;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    e2e::wait_for(Duration::from_secs(20), "the traceparent untouched", || {
        let Ok(mut c) = m.client() else { return false };
        c.request("GET", "/quiet", &[("traceparent", parent)], b"")
            .is_ok_and(|r| r.body.contains(&format!("traceparent: {parent}")))
    })
    .with_context(|| m.context())?;
    Ok(())
}

#[test]
fn telemetry_filters_access_logs_and_shapes_metrics() -> Result<()> {
    let x = 176;
    // No accessLogFile and no default access log provider: logs only where a Telemetry
    // turns them on.
    let mesh = "defaultProviders: {metrics: [prometheus]}\n";
    let telemetries = "  - name: errors-only
    namespace: demo
    accessLogging:
      - providers: [{name: envoy}]
        filter: {expression: \"response.code >= 400 || request.headers['x-debug'] == 'on'\"}
    metrics:
      - overrides:
          - match: {metric: REQUEST_SIZE}
            disabled: true
          - match: {metric: REQUEST_COUNT}
            tagOverrides:
              source_principal: {operation: REMOVE}
              team: {value: \"request.headers['x-team']\"}
";
    let (m, _dir) = start(x, mesh, telemetries, &[])?;
    let mut c = m.client()?;
    let mut bodies = Vec::new();
    for (path, headers) in [
        ("/quiet-ok", vec![("x-team", "blue")]),
        ("/status/404", vec![("x-team", "red")]),
        (
            "/debug-ok",
            vec![("x-debug", "on"), ("x-request-id", "req-123")],
        ),
    ] {
        let r = c.request("GET", path, &headers, b"")?;
        ensure!(r.status < 500, "{r:?}\n{}", m.context());
        bodies.push(r.body);
    }
    // Envoy's x-request-id: a new UUID (v4) where the client sent none, the client's kept.
    let made = bodies[0]
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .with_context(|| format!("no x-request-id at the backend: {}", bodies[0]))?;
    ensure!(
        made.len() == 36 && made.as_bytes()[14] == b'4' && made.matches('-').count() == 4,
        "{made}"
    );
    ensure!(
        bodies[2].contains("x-request-id: req-123\n"),
        "{}",
        bodies[2]
    );
    e2e::wait_for(
        Duration::from_secs(10),
        "the filtered access log lines",
        || {
            let log = m.wp.proc.stderr();
            log.contains("/status/404") && log.contains("/debug-ok")
        },
    )
    .with_context(|| m.context())?;
    let log = m.wp.proc.stderr();
    ensure!(
        log.lines()
            .any(|l| l.contains("/debug-ok") && l.contains("request_id=req-123")),
        "the request id in the access log:\n{log}"
    );
    ensure!(
        !log.lines()
            .any(|l| l.contains("request complete") && l.contains("/quiet-ok")),
        "a 200 without x-debug is not logged:\n{log}"
    );

    let metrics = m.wp.metrics()?;
    let count: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    ensure!(
        count.len() == 3,
        "one series per team (blue, red, unknown): {metrics}"
    );
    for team in ["blue", "red", "unknown"] {
        ensure!(
            count
                .iter()
                .any(|l| l.contains(&format!("team=\"{team}\""))),
            "{team}: {metrics}"
        );
    }
    ensure!(
        count.iter().all(|l| !l.contains("source_principal=")),
        "source_principal removed: {metrics}"
    );
    ensure!(
        metrics.lines().any(
            |l| l.starts_with("istio_request_duration_milliseconds_count{")
                && l.contains("source_principal=")
                && !l.contains("team=")
        ),
        "the duration keeps the standard labels: {metrics}"
    );
    ensure!(
        !metrics.contains("istio_request_bytes_count{"),
        "REQUEST_SIZE is off: {metrics}"
    );

    // A MeshConfig without a metrics provider: no Istio series, without a restart.
    std::fs::write(
        _dir.path().join("mesh"),
        "defaultProviders: {metrics: []}\n",
    )?;
    e2e::wait_for(Duration::from_secs(20), "the Istio series gone", || {
        m.wp.metrics()
            .is_ok_and(|t| !t.contains("istio_requests_total{"))
    })
    .with_context(|| m.context())?;
    // A broken MeshConfig changes nothing.
    std::fs::write(
        _dir.path().join("mesh"),
        "extensionProviders: [{name: x, opentelemetry: {service: a, port: 0}}]\n",
    )?;
    e2e::wait_for(Duration::from_secs(20), "the rejection logged", || {
        m.wp.proc.stderr().contains("--mesh-config rejected")
    })
    .with_context(|| m.context())?;
    let r = m
        .client()?
        .request("GET", "/still-filtered", &[("x-debug", "on")], b"")?;
    ensure!(r.status == 200, "{r:?}");
    e2e::wait_for(Duration::from_secs(10), "the filter still in force", || {
        m.wp.proc.stderr().contains("/still-filtered")
    })
    .with_context(|| m.context())?;
    ensure!(
        !m.wp.metrics()?.contains("istio_requests_total{"),
        "still no metrics provider"
    );
    Ok(())
}

#[test]
fn config_check_names_a_bad_telemetry() -> Result<()> {
    let check = |telemetries: &str| -> Result<(bool, String)> {
        let mesh = MeshDir::new(&format!(
            "{}telemetries:\n{telemetries}",
            mesh_config(177, ROUTES)
        ))?;
        let out = std::process::Command::new(e2e::bin("ringmesh"))
            .args(["config", "check"])
            .arg(&mesh.config)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    };
    let (ok, text) =
        check("  - {name: t, namespace: demo, tracing: [{randomSamplingPercentage: 5}]}\n")?;
    ensure!(ok && text.contains("1 telemetries"), "{text}");
    for (telemetry, at) in [
        (
            "  - {name: t, namespace: demo, tracing: [{randomSamplingPercentage: 500}]}\n",
            "telemetries[demo/t].tracing[0].randomSamplingPercentage",
        ),
        (
            "  - {name: t, namespace: demo, targetRefs: [{kind: Service, name: nowhere}]}\n",
            "telemetries[demo/t].targetRefs[0]",
        ),
        (
            "  - {name: t, namespace: demo, accessLogging: [{filter: {expression: 'response.code =='}}]}\n",
            "telemetries[demo/t].accessLogging[0].filter.expression",
        ),
        (
            "  - {name: t, namespace: demo, tracing: [{sampling: 5}]}\n",
            "sampling",
        ),
    ] {
        let (ok, text) = check(telemetry)?;
        ensure!(!ok && text.contains(at), "{at}: {text}");
    }
    Ok(())
}

/// Envoy's access log formats: the MeshConfig's `accessLogEncoding: JSON` for the built-in
/// `envoy` provider (Istio's default JSON line), a provider's `logFormat.text` with its own
/// filter, each line on standard output; and an `envoyOtelAls` provider's records, over
/// OTLP/gRPC to a collector.
#[test]
fn access_logs_in_envoy_formats_with_their_own_filters() -> Result<()> {
    let x = 174;
    let collector = e2e::otlp_grpc::spawn_grpc_log_collector(SocketAddr::new(ip4(x, 9, 1), 4317))?;
    let mesh = format!(
        "defaultProviders: {{metrics: [prometheus]}}
accessLogEncoding: JSON
extensionProviders:
- name: bobs
  envoyFileAccessLog:
    path: /dev/stdout
    logFormat:
      text: \"%START_TIME(%s)% %RESPONSE_CODE% %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %UPSTREAM_CLUSTER% %DOWNSTREAM_PEER_URI_SAN% %REQ(X-USER)% %RESP(X-MISSING)%\"
- name: otel-als
  envoyOtelAls:
    service: {}
    port: 4317
    logName: waypoint-access
    logFormat:
      labels: {{code: \"%RESPONSE_CODE%\", user: \"%REQ(X-USER)%\", flags: \"%RESPONSE_FLAGS%\", missing: \"%REQ(X-NONE)%\"}}
",
        ip4(x, 9, 1)
    );
    let telemetry = "  - name: logs
    namespace: demo
    accessLogging:
      - providers: [{name: envoy}]
      - providers: [{name: bobs}]
        filter: {expression: \"request.headers['x-user'] == 'bob'\"}
      - providers: [{name: otel-als}]
";
    // `/dead` goes to a Service whose one endpoint has nothing listening: the waypoint
    // answers 503 `UF`, and the line says why.
    let routes = format!(
        "  - name: echo
    namespace: demo
    parentRefs: [{{name: echo}}]
    rules:
      - matches: [{{path: {{type: PathPrefix, value: /dead}}}}]
        backendRefs: [{{name: dead, port: 80}}]
{}",
        ROUTES.split_once("    rules:\n").unwrap().1
    );
    let config = mesh_config(x, &routes)
        .replacen(
            "\nservices:",
            &format!(
                "\n  - {{name: dead, namespace: demo, serviceAccount: echo, workloadIps: [\"{}\"], node: node-2, protocol: HBONE, services: [demo/dead.demo.svc.cluster.local]}}\nservices:",
                ip4(x, 2, 9)
            ),
            1,
        )
        .replacen(
            "\nhttpRoutes:",
            &format!(
                "\n  - {{name: dead, namespace: demo, hostname: dead.demo.svc.cluster.local, vips: [\"{}\"], ports: {{80: 8080}}, waypoint: {{destination: \"/{}\", hboneMtlsPort: 15008}}}}\nhttpRoutes:",
                ip4(x, 100, 6),
                ip4(x, 3, 1)
            ),
            1,
        );
    let (m, _dir) = start_with(x, &mesh, &config, telemetry)?;
    let mut c = m.client()?;
    let began = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    for (path, user) in [("/a?q=1", "alice"), ("/b", "bob")] {
        let r = c.request("GET", path, &[("x-user", user)], b"")?;
        ensure!(r.status == 200, "{r:?}\n{}", m.context());
    }
    let r = c.request("GET", "/dead", &[("x-user", "carol")], b"")?;
    ensure!(r.status == 503, "{r:?}\n{}", m.context());
    e2e::wait_for(Duration::from_secs(10), "four access lines", || {
        m.wp.proc.stdout().lines().count() >= 4
    })
    .with_context(|| format!("stdout:\n{}\n{}", m.wp.proc.stdout(), m.context()))?;
    let out = m.wp.proc.stdout();
    let json: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| out.clone())?;
    ensure!(json.len() == 3, "one JSON line per request:\n{out}");
    let a = &json[0];
    for (k, want) in [
        ("path", serde_json::json!("/a?q=1")),
        ("method", serde_json::json!("GET")),
        ("response_code", serde_json::json!(200)),
        ("response_flags", serde_json::json!("-")),
        ("response_code_details", serde_json::json!("via_upstream")),
        (
            "upstream_cluster",
            serde_json::json!("outbound|80||echo-v1.demo.svc.cluster.local"),
        ),
        (
            "downstream_local_address",
            serde_json::json!(format!("{}:80", ip4(x, 100, 1))),
        ),
        ("route_name", serde_json::json!("demo/echo")),
        ("requested_server_name", serde_json::Value::Null),
    ] {
        ensure!(a[k] == want, "{k}: {a}");
    }
    ensure!(
        a["upstream_host"]
            .as_str()
            .is_some_and(|h| h.starts_with(&ip4(x, 2, 1).to_string())),
        "{a}"
    );
    ensure!(
        a["request_id"].as_str().is_some_and(|id| id.len() == 36),
        "{a}"
    );
    // The waypoint's end of the HBONE connection that carried the request to the
    // endpoint's node: a socket address of its own, not the endpoint's.
    let upstream_local: SocketAddr = a["upstream_local_address"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("upstream_local_address: {a}"))?;
    ensure!(upstream_local.port() != 0, "{a}");
    // The pooled connection is still open: the socket with that address is connected to
    // the HBONE port for `echo-v1`'s address.
    let ss = std::process::Command::new("ss")
        .args(["-Htn", "state", "established", "src"])
        .arg(upstream_local.to_string())
        .output()
        .context("running ss")?;
    let ss = String::from_utf8_lossy(&ss.stdout);
    ensure!(
        ss.contains(&format!("{}:15008", ip4(x, 2, 1))),
        "no connection from {upstream_local} to echo-v1's HBONE port: {ss:?}\n{a}"
    );
    // The endpoint that could not be reached, and why, with the spaces as underscores.
    let dead = &json[2];
    // `dead` uses this waypoint too: istiod's `inbound-vip` cluster, not the sidecar's
    // `outbound` one that `echo-v1` (no waypoint) gets.
    ensure!(
        dead["response_code"] == 503
            && dead["response_flags"] == "UF"
            && dead["upstream_cluster"] == "inbound-vip|80|http|dead.demo.svc.cluster.local",
        "{dead}"
    );
    ensure!(
        dead["upstream_transport_failure_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty() && !r.contains(' ')),
        "{dead}"
    );
    ensure!(a["upstream_transport_failure_reason"].is_null(), "{a}");
    // Only bob's request passed the text provider's filter; it starts with the request's
    // start in seconds since the epoch (`%START_TIME(%s)%`), and `%UPSTREAM_CLUSTER%` is
    // the cluster's observability name (istiod's: the name and `;`).
    let text: Vec<&str> = out.lines().filter(|l| !l.starts_with('{')).collect();
    let [bob] = text[..] else {
        anyhow::bail!("one text line:\n{out}");
    };
    let (epoch, rest) = bob.split_once(' ').with_context(|| out.clone())?;
    let epoch: u64 = epoch.parse().with_context(|| out.clone())?;
    ensure!(
        (began..began + 60).contains(&epoch),
        "start {epoch}, the test began at {began}: {bob}"
    );
    ensure!(
        rest == "200 GET /b outbound|80||echo-v1.demo.svc.cluster.local; spiffe://cluster.local/ns/demo/sa/client bob -",
        "{out}"
    );
    // The waypoint's own line is not written for these providers.
    ensure!(
        !m.wp.proc.stderr().contains("request complete"),
        "{}",
        m.context()
    );
    // The OTLP records: Istio's text line as the body, the labels as attributes (one the
    // request has no value for left out), the log name as the scope.
    e2e::wait_for(Duration::from_secs(20), "two OTLP log records", || {
        collector.logs.lock().unwrap().len() >= 2
    })
    .with_context(|| m.context())?;
    let records = collector.logs.lock().unwrap().clone();
    let alice = records
        .iter()
        .find(|r| r.attributes.get("user").map(String::as_str) == Some("alice"))
        .with_context(|| format!("{records:?}"))?;
    ensure!(
        alice.body.starts_with('[')
            && alice
                .body
                .contains("\"GET /a?q=1 HTTP/1.1\" 200 - via_upstream"),
        "{alice:?}"
    );
    ensure!(
        alice.attributes.get("code").map(String::as_str) == Some("200")
            && alice.attributes.get("flags").map(String::as_str) == Some("-")
            && !alice.attributes.contains_key("missing"),
        "{alice:?}"
    );
    ensure!(
        alice.scope == "waypoint-access" && alice.service_name == "waypoint.demo",
        "{alice:?}"
    );
    Ok(())
}
