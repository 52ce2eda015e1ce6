//! The formatter's tables: Istio's default lines, JSON types, refusals by name.
use super::*;

fn entry<'a>(
    req: &'a [(HeaderName, HeaderValue)],
    resp: &'a [(HeaderName, HeaderValue)],
) -> Entry<'a> {
    Entry {
        start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        method: "GET",
        path: "/api/items?x=1",
        authority: "echo.demo.svc.cluster.local",
        protocol: "HTTP/1.1",
        request_headers: req,
        response_headers: resp,
        code: 200,
        flags: "-",
        details: "via_upstream",
        bytes_received: 0,
        bytes_sent: 11,
        duration: Duration::from_micros(3_900),
        upstream_host: Some("10.0.0.2:8080".parse().unwrap()),
        upstream_local: Some("10.0.0.9:41000".parse().unwrap()),
        upstream_cluster: Some("inbound-vip|80|http|echo.demo.svc.cluster.local"),
        downstream_local: Some("10.96.0.1:80".parse().unwrap()),
        downstream_remote: Some("10.0.0.1:40000".parse().unwrap()),
        peer_uri_san: Some("spiffe://cluster.local/ns/demo/sa/client"),
        route: "demo/echo",
        grpc_status: None,
        transport_failure: None,
    }
}

#[test]
fn istios_default_text_line() {
    let f = LogFormat::text(ISTIO_TEXT).unwrap();
    assert_eq!(f.request_headers().len(), 4, "{:?}", f.request_headers());
    let req = [
        (
            HeaderName::from_static("user-agent"),
            HeaderValue::from_static("curl/8"),
        ),
        (
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("abc"),
        ),
    ];
    let line = f.line(&entry(&req, &[]));
    assert_eq!(
        line,
        "[2023-11-14T22:13:20.123Z] \"GET /api/items?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 11 3 - \"-\" \"curl/8\" \"abc\" \"echo.demo.svc.cluster.local\" \"10.0.0.2:8080\" inbound-vip|80|http|echo.demo.svc.cluster.local 10.0.0.9:41000 10.96.0.1:80 10.0.0.1:40000 - demo/echo\n"
    );
}

#[test]
fn json_keeps_types_and_writes_null_for_what_is_missing() {
    let labels: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"code": "%RESPONSE_CODE%", "ua": "%REQ(USER-AGENT)%", "mixed": "%REQ(:METHOD)% to %UPSTREAM_HOST%",
           "short": "%REQ(:PATH):4%", "grpc": "%GRPC_STATUS%", "fixed": 7, "nested": {"who": "%DOWNSTREAM_PEER_URI_SAN%"}}"#,
    )
    .unwrap();
    let f = LogFormat::json(&labels).unwrap();
    let mut e = entry(&[], &[]);
    e.grpc_status = Some(14);
    let v: serde_json::Value = serde_json::from_str(&f.line(&e)).unwrap();
    assert_eq!(v["code"], 200);
    assert_eq!(v["ua"], serde_json::Value::Null);
    assert_eq!(v["mixed"], "GET to 10.0.0.2:8080");
    assert_eq!(v["short"], "/api");
    assert_eq!(v["grpc"], "Unavailable");
    assert_eq!(v["fixed"], 7);
    assert_eq!(
        v["nested"]["who"],
        "spiffe://cluster.local/ns/demo/sa/client"
    );
    let istio: serde_json::Value = serde_json::from_str(&LogFormat::istio_json().line(&e)).unwrap();
    assert_eq!(istio["response_code"], 200);
    assert_eq!(istio["path"], "/api/items?x=1");
    assert_eq!(istio["start_time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(istio["upstream_local_address"], "10.0.0.9:41000");
    assert_eq!(istio["requested_server_name"], serde_json::Value::Null);
}

#[test]
fn start_time_takes_a_format_in_text_and_json() {
    let f = LogFormat::text(
        "%START_TIME(%s.%3f)% [%START_TIME(%F %T%z)%] %START_TIME% %START_TIME()%\n",
    )
    .unwrap();
    assert_eq!(
        f.line(&entry(&[], &[])),
        "1700000000.123 [2023-11-14 22:13:20+0000] 2023-11-14T22:13:20.123Z 2023-11-14T22:13:20.123Z\n"
    );
    let labels: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"epoch": "%START_TIME(%s)%", "day": "%START_TIME(%d/%b/%Y)%"}"#)
            .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&LogFormat::json(&labels).unwrap().line(&entry(&[], &[]))).unwrap();
    // A time is text, as Envoy writes it, even when it is all digits.
    assert_eq!(v["epoch"], "1700000000");
    assert_eq!(v["day"], "14/Nov/2023");
}

#[test]
fn the_cluster_raw_and_by_its_observability_name() {
    let f = LogFormat::text("%UPSTREAM_CLUSTER_RAW% %UPSTREAM_CLUSTER%").unwrap();
    let mut e = entry(&[], &[]);
    assert_eq!(
        f.line(&e),
        "inbound-vip|80|http|echo.demo.svc.cluster.local inbound-vip|80|http|echo.demo.svc.cluster.local;\n"
    );
    // Answered before a route chose a backend (a denial, no route): no cluster.
    e.upstream_cluster = None;
    assert_eq!(f.line(&e), "- -\n");
}

#[test]
fn a_transport_failure_reason_is_written_with_underscores() {
    let f = LogFormat::text("%RESPONSE_FLAGS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\"").unwrap();
    let mut e = entry(&[], &[]);
    assert_eq!(f.line(&e), "- \"-\"\n");
    e.flags = "UF";
    e.transport_failure = Some("dialing 10.0.0.3:15008:\nConnection refused (os error 111)");
    assert_eq!(
        f.line(&e),
        "UF \"dialing_10.0.0.3:15008:_Connection_refused_(os_error_111)\"\n"
    );
}

#[test]
fn operators_the_waypoint_cannot_fill_are_refused_by_name() {
    for (text, names) in [
        ("%DYNAMIC_METADATA(istio)%", "%DYNAMIC_METADATA%"),
        ("%START_TIME(%s %Q)%", "%Q"),
        ("100% sure", "'%'"),
        ("%REQ(X-A", "not closed"),
        ("%RESPONSE_CODE", "not closed"),
        ("%REQ%", "header name"),
        ("%REQ(bad header)%", "not a header name"),
    ] {
        let e = Format::parse(text).unwrap_err();
        assert!(e.contains(names), "{text}: {e}");
    }
    let e =
        LogFormat::json(&serde_json::from_str(r#"{"a": {"b": "%NOPE%"}}"#).unwrap()).unwrap_err();
    assert!(e.starts_with("a.b: "), "{e}");
}

#[test]
fn an_otel_record_has_a_body_and_typed_attributes() {
    use opentelemetry::logs::AnyValue;
    let labels: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"code": "%RESPONSE_CODE%", "ua": "%REQ(USER-AGENT)%", "route": "%ROUTE_NAME%"}"#,
    )
    .unwrap();
    let f = LogFormat::otel(None, Some(&labels)).unwrap();
    let (body, attrs) = f.record(&entry(&[], &[])).unwrap();
    assert!(body.starts_with("[2023-11-14T22:13:20.123Z] \"GET /api/items?x=1 HTTP/1.1\" 200"));
    assert!(!body.ends_with('\n'), "{body:?}");
    assert_eq!(
        attrs,
        vec![
            ("code".to_string(), AnyValue::Int(200)),
            ("route".to_string(), AnyValue::String("demo/echo".into())),
        ],
        "a missing value is left out"
    );
    // The body's headers and the attributes', once each.
    assert_eq!(
        f.request_headers(),
        vec![
            "x-envoy-original-path",
            "x-forwarded-for",
            "user-agent",
            "x-request-id"
        ]
    );
    let e = LogFormat::otel(Some("%NOPE%"), None).unwrap_err();
    assert!(e.starts_with("text: "), "{e}");
    assert!(
        LogFormat::text("x")
            .unwrap()
            .record(&entry(&[], &[]))
            .is_none()
    );
}

#[test]
fn environment_is_read_with_the_format() {
    // PATH is set in any test environment; the other is nobody's.
    let f = Format::parse("%ENVIRONMENT(PATH)%|%ENVIRONMENT(RINGMESH_TEST_SURELY_UNSET)%").unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let want = format!("{}|-", if path.is_empty() { "-" } else { &path });
    assert_eq!(f.text(&entry(&[], &[])), want);
    assert!(
        Format::parse("%ENVIRONMENT%")
            .unwrap_err()
            .contains("variable")
    );
}

#[test]
fn a_text_format_ends_its_line() {
    let f = LogFormat::text("%RESPONSE_CODE% %ROUTE_NAME%").unwrap();
    let mut e = entry(&[], &[]);
    e.route = "-";
    assert_eq!(f.line(&e), "200 -\n");
}
