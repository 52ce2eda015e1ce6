use std::time::Duration;

use super::*;
use crate::trace::TraceConfig;

/// Starts OTLP/HTTP exporters to a closed port (nothing is exported in these tests), and
/// counts how many it started.
#[derive(Default)]
struct Fake {
    started: Vec<Exporter>,
    cache: HashMap<Exporter, Arc<Tracing>>,
}

impl Exporters for Fake {
    fn exporter(&mut self, e: &Exporter) -> Result<Arc<Tracing>, String> {
        if let Some(t) = self.cache.get(e) {
            return Ok(t.clone());
        }
        self.started.push(e.clone());
        let t = Tracing::start(&TraceConfig::new("http://127.0.0.1:9"))?;
        self.cache.insert(e.clone(), t.clone());
        Ok(t)
    }

    fn log_exporter(
        &mut self,
        e: &Exporter,
        log_name: &str,
    ) -> Result<Arc<crate::trace::logs::LogExport>, String> {
        self.started.push(e.clone());
        let cfg = TraceConfig {
            protocol: crate::trace::OtlpProtocol::Grpc,
            ..TraceConfig::new("http://127.0.0.1:9")
        };
        crate::trace::logs::LogExport::start(&cfg, log_name)
    }
}

fn telemetries(yaml: &str) -> Vec<TelemetrySpec> {
    let v: Vec<TelemetrySpec> = serde_yaml::from_str(yaml).expect("test YAML");
    for t in &v {
        check(t).expect("checks");
    }
    v
}

fn mesh(yaml: &str) -> Mesh {
    let spec: MeshSpec = serde_yaml::from_str(yaml).expect("mesh YAML");
    Mesh::build(&spec, "waypoint.demo").expect("mesh")
}

const MESH: &str = r#"
defaultProviders:
  metrics: [prometheus]
extensionProviders:
- name: otel
  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}
- name: otel-http
  opentelemetry:
    service: observability/otel.example.com
    port: 4318
    http: {path: /v1/traces, timeout: 3s, headers: [{name: x-tenant, value: a}]}
- name: zipkin
  zipkin: {service: zipkin.istio-system, port: 9411}
- name: log
  envoyFileAccessLog: {path: /dev/stdout}
- name: filelog
  envoyFileAccessLog: {path: /var/log/access.log}
"#;

fn scope() -> Scope {
    Scope {
        gateway: ServiceRef::new("demo", "waypoint"),
        fallback: None,
    }
}

fn build(ts: &str, mesh_yaml: &str) -> (TelemetryTable, Warnings, Fake) {
    let mut fake = Fake::default();
    let (t, w) = TelemetryTable::build(&telemetries(ts), &mesh(mesh_yaml), &scope(), &mut fake)
        .expect("builds");
    (t, w, fake)
}

fn svc(name: &str) -> ServiceRef {
    ServiceRef::new("demo", name)
}

#[test]
fn providers_from_the_mesh_config() {
    let m = mesh(MESH);
    let Some((_, Provider::OpenTelemetry(e))) = m.providers.get("otel") else {
        panic!("otel is an OpenTelemetry provider");
    };
    assert_eq!(
        e.endpoint,
        "http://otel.observability.svc.cluster.local:4317"
    );
    assert_eq!(e.http_path, None, "no `http`: gRPC");
    let Some((_, Provider::OpenTelemetry(h))) = m.providers.get("otel-http") else {
        panic!("otel-http");
    };
    assert_eq!(
        h.endpoint, "http://otel.example.com:4318",
        "the namespace part is dropped"
    );
    assert_eq!(h.http_path.as_deref(), Some("/v1/traces"));
    assert_eq!(h.timeout, Duration::from_secs(3));
    assert_eq!(h.headers, vec![("x-tenant".to_string(), "a".to_string())]);
    assert!(matches!(
        m.providers.get("zipkin"),
        Some((_, Provider::Unusable(_)))
    ));
    assert!(matches!(
        m.providers.get("filelog"),
        Some((_, Provider::Unusable(_)))
    ));
    assert!(
        matches!(
            m.providers.get("envoy"),
            Some((_, Provider::StdoutLog(None)))
        ),
        "built in"
    );
    assert!(matches!(
        m.providers.get("prometheus"),
        Some((_, Provider::Prometheus))
    ));
    assert_eq!(m.root_namespace, "istio-system");

    for (yaml, at) in [
        (
            "extensionProviders: [{name: a, opentelemetry: {service: x, port: 0}}]",
            "port",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: 'a b', port: 1}}]",
            "service",
        ),
        (
            "extensionProviders: [{name: a, prometheus: {}}, {name: A, prometheus: {}}]",
            "name",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: x, port: 1, http: {path: v1}}}]",
            "http.path",
        ),
        (
            "extensionProviders: [{name: a, opentelemetry: {service: x, port: 1, http: {headers: [{name: 'a b', value: x}]}}}]",
            "headers[0].name",
        ),
    ] {
        let spec: MeshSpec = serde_yaml::from_str(yaml).unwrap();
        let e = Mesh::build(&spec, "w.demo").unwrap_err();
        assert!(e.path.ends_with(at), "{yaml}: {e}");
    }
}

#[test]
fn checks_name_the_field() {
    for (yaml, at) in [
        (
            "tracing: [{randomSamplingPercentage: 101}]",
            "tracing[0].randomSamplingPercentage",
        ),
        ("tracing: [{match: {mode: BOTH}}]", "tracing[0].match.mode"),
        (
            "tracing: [{customTags: {a: {formatter: {value: '%DYNAMIC_METADATA(x)%'}}}}]",
            "tracing[0].customTags.a.formatter.value",
        ),
        (
            "tracing: [{customTags: {a: {}}}]",
            "tracing[0].customTags.a",
        ),
        (
            "accessLogging: [{filter: {expression: 'response.code >='}}]",
            "accessLogging[0].filter.expression",
        ),
        (
            "metrics: [{overrides: [{match: {metric: REQUESTS}}]}]",
            "metrics[0].overrides[0].match.metric",
        ),
        (
            "metrics: [{overrides: [{tagOverrides: {x: {operation: UPSERT}}}]}]",
            "metrics[0].overrides[0].tagOverrides.x.value",
        ),
        (
            "metrics: [{overrides: [{tagOverrides: {'a-b': {operation: REMOVE}}}]}]",
            "metrics[0].overrides[0].tagOverrides.a-b",
        ),
        ("targetRefs: [{kind: Pod, name: a}]", "targetRefs[0].kind"),
        (
            "targetRefs: [{kind: Gateway, name: a}]",
            "targetRefs[0].group",
        ),
        (
            "targetRefs: [{kind: Service, name: a, namespace: other}]",
            "targetRefs[0].namespace",
        ),
    ] {
        let doc = format!("name: t\nnamespace: demo\n{yaml}");
        let t: TelemetrySpec = serde_yaml::from_str(&doc).unwrap();
        let e = check(&t).unwrap_err();
        assert_eq!(e.path, format!("telemetries[demo/t].{at}"), "{yaml}: {e}");
    }
    let deep = format!("{}1{}", "(".repeat(40), ")".repeat(40));
    assert!(Expr::compile(&deep).unwrap_err().contains("nested"));
    assert!(
        Expr::compile(&"1+".repeat(600))
            .unwrap_err()
            .contains("at most")
    );
}

#[test]
fn tracing_merges_root_namespace_gateway_and_service() {
    let (t, w, fake) = build(
        r#"
- {name: mesh, namespace: istio-system, tracing: [{providers: [{name: otel}], randomSamplingPercentage: 10}]}
- {name: ns, namespace: demo, tracing: [{randomSamplingPercentage: 50, customTags: {team: {literal: {value: pay}}}}]}
- name: gw
  namespace: demo
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  tracing: [{customTags: {user: {header: {name: x-user, defaultValue: anon}}}}]
- {name: quiet, namespace: demo, targetRefs: [{kind: Service, name: quiet}], tracing: [{disableSpanReporting: true}]}
- {name: http, namespace: demo, targetRefs: [{kind: Service, name: viahttp}], tracing: [{providers: [{name: otel-http}], enableIstioTags: false}]}
- {name: client, namespace: demo, targetRefs: [{kind: Service, name: client}], tracing: [{match: {mode: CLIENT}, randomSamplingPercentage: 100}]}
- {name: other-ns, namespace: other, tracing: [{randomSamplingPercentage: 100}]}
- {name: sel, namespace: demo, selector: {matchLabels: {app: a}}, tracing: [{randomSamplingPercentage: 100}]}
"#,
        MESH,
    );
    assert!(w.is_empty(), "{w:?}");
    let p = t.plan(&svc("echo")).tracing.clone().expect("spans");
    assert_eq!(p.sampling, 0.5, "the namespace's overrides the root's");
    assert_eq!(
        p.custom_tags,
        vec![(
            "user".to_string(),
            TagValue::Header {
                name: http::HeaderName::from_static("x-user"),
                default: "anon".into()
            }
        )],
        "custom tags are replaced whole by the Gateway's"
    );
    assert!(p.istio_tags);
    assert!(
        t.plan(&svc("quiet")).tracing.is_none(),
        "span reporting off"
    );
    let h = t.plan(&svc("viahttp")).tracing.clone().expect("spans");
    assert!(!h.istio_tags);
    assert_eq!(h.sampling, 0.5);
    assert!(
        !Arc::ptr_eq(&h.tracer, &p.tracer),
        "another provider, another exporter"
    );
    assert_eq!(
        t.plan(&svc("client")).tracing.as_ref().unwrap().sampling,
        0.5,
        "CLIENT mode is not the waypoint's"
    );
    assert_eq!(
        fake.started.len(),
        2,
        "one exporter per provider: {:?}",
        fake.started
    );
}

#[test]
fn tracing_needs_a_provider_and_falls_back_to_the_flag() {
    let (t, w, _) = build(
        "- {name: ns, namespace: demo, tracing: [{randomSamplingPercentage: 100}]}",
        MESH,
    );
    assert!(
        t.plan(&svc("echo")).tracing.is_none(),
        "no provider anywhere"
    );
    assert!(w.is_empty());
    let (t, w, _) = build(
        "- {name: ns, namespace: demo, tracing: [{providers: [{name: zipkin}]}]}",
        MESH,
    );
    assert!(t.plan(&svc("echo")).tracing.is_none());
    assert!(w[0].contains("zipkin"), "{w:?}");

    let flag = Tracing::start(&TraceConfig::new("http://127.0.0.1:9")).unwrap();
    let scope = Scope {
        gateway: ServiceRef::new("demo", "waypoint"),
        fallback: Some((flag.clone(), 0.02)),
    };
    let mut fake = Fake::default();
    let none = TelemetryTable::build(&[], &mesh(MESH), &scope, &mut fake)
        .unwrap()
        .0;
    let p = none.plan(&svc("echo")).tracing.clone().unwrap();
    assert!(Arc::ptr_eq(&p.tracer, &flag) && p.sampling == 0.02);
    let ts =
        telemetries("- {name: ns, namespace: demo, tracing: [{randomSamplingPercentage: 30}]}");
    let set = TelemetryTable::build(&ts, &mesh(MESH), &scope, &mut fake)
        .unwrap()
        .0;
    let p = set.plan(&svc("echo")).tracing.clone().unwrap();
    assert!(
        Arc::ptr_eq(&p.tracer, &flag) && p.sampling == 0.3,
        "the flag's exporter, the Telemetry's rate"
    );
}

#[test]
fn access_logging_follows_istio() {
    // No Telemetry logging, no default provider: accessLogFile decides.
    let (t, ..) = build("[]", MESH);
    assert!(t.plan(&svc("echo")).access_log.is_none());
    let (t, ..) = build("[]", &format!("accessLogFile: /dev/stdout\n{MESH}"));
    assert_eq!(
        t.plan(&svc("echo")).access_log,
        Some(LogPlan { filter: None })
    );
    // The waypoint's own default (no --mesh-config): on, and a Telemetry turns it off.
    let mut fake = Fake::default();
    let m = Mesh::default();
    let on = TelemetryTable::build(&[], &m, &scope(), &mut fake)
        .unwrap()
        .0;
    assert!(on.plan(&svc("echo")).access_log.is_some());
    let ts = telemetries(
        r#"
- {name: off, namespace: demo, targetRefs: [{kind: Service, name: quiet}], accessLogging: [{disabled: true}]}
- {name: client, namespace: demo, targetRefs: [{kind: Service, name: client}], accessLogging: [{match: {mode: CLIENT}, disabled: true}]}
"#,
    );
    let t = TelemetryTable::build(&ts, &m, &scope(), &mut fake)
        .unwrap()
        .0;
    assert!(t.plan(&svc("quiet")).access_log.is_none());
    assert!(
        t.plan(&svc("client")).access_log.is_some(),
        "CLIENT mode is not the waypoint's"
    );
    assert!(t.plan(&svc("echo")).access_log.is_some());
    // A filter applies to the providers it names.
    let (t, w, _) = build(
        r#"
- name: errors
  namespace: demo
  accessLogging: [{providers: [{name: log}], filter: {expression: "response.code >= 400"}}]
- {name: file, namespace: demo, targetRefs: [{kind: Service, name: file}], accessLogging: [{providers: [{name: filelog}]}]}
"#,
        MESH,
    );
    let f = t
        .plan(&svc("echo"))
        .access_log
        .clone()
        .unwrap()
        .filter
        .unwrap();
    assert_eq!(f.source(), "response.code >= 400");
    assert!(t.plan(&svc("file")).access_log.is_none());
    assert!(w.iter().any(|w| w.contains("filelog")), "{w:?}");
}

#[test]
fn metrics_overrides_merge_per_metric() {
    let (t, ..) = build(
        r#"
- name: mesh
  namespace: istio-system
  metrics:
  - overrides:
    - {match: {metric: REQUEST_SIZE}, disabled: true}
    - {match: {metric: ALL_METRICS}, tagOverrides: {destination_canonical_revision: {operation: REMOVE}}}
- name: svc
  namespace: demo
  targetRefs: [{kind: Service, name: echo}]
  metrics:
  - overrides:
    - {match: {metric: REQUEST_COUNT, mode: SERVER}, tagOverrides: {request_host: {value: request.host}}}
    - {match: {metric: RESPONSE_SIZE, mode: CLIENT}, disabled: true}
    - {match: {metric: TCP_SENT_BYTES}, disabled: true}
    - {match: {metric: GRPC_RESPONSE_MESSAGES}, disabled: true}
    - {match: {customMetric: request_messages_total}, tagOverrides: {source_cluster: {operation: REMOVE}}}
- {name: none, namespace: demo, targetRefs: [{kind: Service, name: dark}], metrics: [{providers: [{name: otel}]}]}
"#,
        MESH,
    );
    let p = &t.plan(&svc("echo")).metrics;
    let count = p.get(Metric::RequestCount).unwrap();
    assert_eq!(
        count.removed,
        vec!["destination_canonical_revision".to_string()]
    );
    assert_eq!(count.upserted, vec!["request_host".to_string()]);
    assert!(p.get(Metric::RequestSize).is_none(), "disabled mesh-wide");
    assert!(
        p.get(Metric::ResponseSize).is_some(),
        "a CLIENT override is not the waypoint's"
    );
    assert!(p.get(Metric::RequestDuration).unwrap().upserted.is_empty());
    // gRPC's message counters, by Istio's metric name and by the Prometheus name.
    assert!(p.get(Metric::GrpcResponseMessages).is_none());
    assert_eq!(
        p.get(Metric::GrpcRequestMessages).unwrap().removed,
        vec![
            "destination_canonical_revision".to_string(),
            "source_cluster".to_string()
        ]
    );
    assert!(
        t.plan(&svc("other"))
            .metrics
            .get(Metric::GrpcResponseMessages)
            .is_some()
    );
    assert_eq!(t.upserts()["request_host"].source(), "request.host");
    let other = &t.plan(&svc("other")).metrics;
    assert!(other.get(Metric::RequestCount).unwrap().upserted.is_empty());
    assert!(
        !t.plan(&svc("dark")).metrics.reports_any(),
        "no Prometheus provider in scope"
    );
}

#[test]
fn expressions_read_the_request() {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", "alice".parse().unwrap());
    headers.append("x-multi", "a".parse().unwrap());
    headers.append("x-multi", "b".parse().unwrap());
    let a = Attributes {
        method: "GET",
        path: "/api/items?id=3",
        host: "echo.demo.svc.cluster.local",
        headers: &headers,
        protocol: "HTTP/1.1",
        code: 503,
        flags: "UO",
        request_size: 10,
        response_size: 20,
        duration: Duration::from_millis(1500),
        source: Some("10.0.0.1:5000".parse().unwrap()),
        source_principal: Some("spiffe://cluster.local/ns/demo/sa/a"),
        port: 80,
        upstream: None,
    };
    for (e, want) in [
        ("response.code >= 400", true),
        ("response.code == 200", false),
        ("request.headers['x-user'] == 'alice'", true),
        ("request.headers['x-multi'] == 'a,b'", true),
        ("request.url_path.startsWith('/api')", true),
        (
            "request.path == '/api/items?id=3' && request.method == 'GET'",
            true,
        ),
        ("response.flags == 'UO' && connection.mtls", true),
        ("request.duration > 1.0", true),
        (
            "source.address == '10.0.0.1' && destination.port == 80",
            true,
        ),
    ] {
        assert_eq!(Expr::compile(e).unwrap().matches(&a), Some(want), "{e}");
    }
    assert_eq!(
        Expr::compile("request.host").unwrap().label(&a).as_deref(),
        Some("echo.demo.svc.cluster.local")
    );
    assert_eq!(
        Expr::compile("response.code").unwrap().label(&a).as_deref(),
        Some("503")
    );
    // Headers read any other way than by a literal name: all of them are there.
    let e = Expr::compile("'x-user' in request.headers && size(request.headers) == 2").unwrap();
    assert_eq!(e.matches(&a), Some(true));
    assert_eq!(
        Expr::compile(r#"request.headers["x-user"] + request.headers [ 'x-multi' ]"#)
            .unwrap()
            .label(&a)
            .as_deref(),
        Some("alicea,b")
    );
    // Errors and non-booleans are not a match.
    assert_eq!(
        Expr::compile("request.headers['absent'] == 'x'")
            .unwrap()
            .matches(&a),
        None
    );
    assert_eq!(Expr::compile("request.host").unwrap().matches(&a), None);
    assert_eq!(Expr::compile("upstream.address").unwrap().label(&a), None);
}

#[test]
fn envoy_log_formats_come_from_providers_and_the_mesh_config() {
    // A provider with a text format and one with labels: each writes its own lines, the
    // filter applying to the provider it names; the waypoint's own line is not written.
    let with_formats = format!(
        r#"{MESH}
- name: envoy-text
  envoyFileAccessLog: {{path: /dev/stdout, logFormat: {{text: "%RESPONSE_CODE% %REQ(X-USER)%"}}}}
- name: envoy-json
  envoyFileAccessLog: {{path: /dev/stdout, logFormat: {{labels: {{code: "%RESPONSE_CODE%", ua: "%REQ(USER-AGENT)%"}}}}}}
"#
    );
    let (t, w, _) = build(
        r#"
- name: both
  namespace: demo
  accessLogging:
  - providers: [{name: envoy-text}]
    filter: {expression: "response.code >= 400"}
  - providers: [{name: envoy-json}]
"#,
        &with_formats,
    );
    assert!(w.is_empty(), "{w:?}");
    let p = t.plan(&svc("echo"));
    assert!(p.access_log.is_none());
    assert_eq!(p.formatted_logs.len(), 2);
    let text = p
        .formatted_logs
        .iter()
        .find(|l| matches!(&*l.format, LogFormat::Text(_)))
        .unwrap();
    assert_eq!(
        text.filter.as_ref().unwrap().source(),
        "response.code >= 400"
    );
    assert_eq!(text.format.request_headers(), vec!["x-user"]);

    // A format the waypoint cannot write is an error naming the field.
    for (bad, field) in [
        (
            "envoyFileAccessLog: {path: /dev/stdout, logFormat: {text: \"%DYNAMIC_METADATA(x)%\"}}",
            "extensionProviders[0].envoyFileAccessLog.logFormat.text",
        ),
        (
            "envoyFileAccessLog: {path: /dev/stdout, logFormat: {labels: {a: \"%NOPE%\"}}}",
            "extensionProviders[0].envoyFileAccessLog.logFormat.labels",
        ),
        (
            "envoyFileAccessLog: {path: /dev/stdout, logFormat: {text: a, labels: {a: b}}}",
            "extensionProviders[0].envoyFileAccessLog.logFormat",
        ),
    ] {
        let spec: MeshSpec =
            serde_yaml::from_str(&format!("extensionProviders:\n- name: x\n  {bad}\n")).unwrap();
        let e = Mesh::build(&spec, "waypoint.demo").unwrap_err().to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }

    // An envoyOtelAls provider: records to its collector, Istio's text as the body.
    let (t, w, _) = build(
        "[{name: als, namespace: demo, accessLogging: [{providers: [{name: als}]}]}]",
        &format!(
            "{MESH}- name: als\n  envoyOtelAls: {{service: otel.obs.svc.cluster.local, port: 4317}}\n"
        ),
    );
    assert!(w.is_empty(), "{w:?}");
    let als = &t.plan(&svc("echo")).formatted_logs;
    assert_eq!(als.len(), 1);
    assert!(matches!(als[0].sink, LogSink::Otel(_)));
    assert!(matches!(&*als[0].format, LogFormat::Otel { attributes, .. } if attributes.is_empty()));
    for (bad, field) in [
        (
            "envoyOtelAls: {service: otel, port: 0}",
            "extensionProviders[0].envoyOtelAls.port",
        ),
        (
            "envoyOtelAls: {service: \"a b\", port: 4317}",
            "extensionProviders[0].envoyOtelAls.service",
        ),
        (
            "envoyOtelAls: {service: otel, port: 4317, logFormat: {labels: {a: \"%NOPE%\"}}}",
            "extensionProviders[0].envoyOtelAls.logFormat",
        ),
    ] {
        let spec: MeshSpec =
            serde_yaml::from_str(&format!("extensionProviders:\n- name: x\n  {bad}\n")).unwrap();
        let e = Mesh::build(&spec, "waypoint.demo").unwrap_err().to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }

    // The MeshConfig's encoding and format: for accessLogFile and the built-in `envoy`.
    let (t, ..) = build(
        "[]",
        &format!("accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n{MESH}"),
    );
    let p = t.plan(&svc("echo"));
    assert!(p.access_log.is_none());
    assert!(matches!(&*p.formatted_logs[0].format, LogFormat::Json(m) if m.len() == 24));
    let (t, ..) = build(
        "[{name: default, namespace: istio-system, accessLogging: [{providers: [{name: envoy}]}]}]",
        &format!("accessLogFormat: \"%RESPONSE_CODE%\"\n{MESH}"),
    );
    assert_eq!(t.plan(&svc("echo")).formatted_logs.len(), 1);
    for (bad, field) in [
        ("accessLogEncoding: YAML", "accessLogEncoding"),
        ("accessLogFormat: \"%NOPE%\"", "accessLogFormat"),
        (
            "accessLogEncoding: JSON\naccessLogFormat: \"not json\"",
            "accessLogFormat",
        ),
    ] {
        let spec: MeshSpec = serde_yaml::from_str(bad).unwrap();
        let e = Mesh::build(&spec, "waypoint.demo").unwrap_err().to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
}

#[test]
fn authorization_providers_ride_with_the_table() {
    let mesh_yaml = r#"
extensionProviders:
- name: Ext-Authz
  envoyExtAuthzHttp: {service: ext-authz.foo.svc.cluster.local, port: 8000}
- name: broken
  envoyExtAuthzHttp: {service: auth.example.com, port: 8000}
- name: grpc
  envoyExtAuthzGrpc: {service: opa.foo.svc.cluster.local, port: 9191}
- name: grpc-bad
  envoyExtAuthzGrpc: {service: opa.foo.svc.cluster.local, port: 0}
"#;
    let (t, w, _) = build(
        "- {name: t, namespace: istio-system, tracing: [{providers: [{name: ext-authz}]}]}",
        mesh_yaml,
    );
    // By its exact name, as a CUSTOM policy names it.
    let Some(Ok(p)) = t.authz_provider("Ext-Authz") else {
        panic!("the provider is usable");
    };
    assert_eq!(p.service, ServiceRef::new("foo", "ext-authz"));
    assert!(t.authz_provider("ext-authz").is_none());
    // One it cannot use is kept with why (its policies then refuse).
    let Some(Err(why)) = t.authz_provider("broken") else {
        panic!("the broken provider is kept");
    };
    assert!(why.contains("envoyExtAuthzHttp.service"), "{why}");
    let Some(Ok(g)) = t.authz_provider("grpc") else {
        panic!("the gRPC provider is usable");
    };
    assert!(g.grpc && g.port == 9191);
    let Some(Err(why)) = t.authz_provider("grpc-bad") else {
        panic!("the bad gRPC provider is kept");
    };
    assert!(why.contains("envoyExtAuthzGrpc.port"), "{why}");
    // It does not trace.
    assert!(w.iter().any(|w| w.contains("does not do tracing")), "{w:?}");
    // A table without a MeshConfig has none.
    assert!(
        TelemetryTable::simple(None, 0.0)
            .authz_provider("Ext-Authz")
            .is_none()
    );
}
