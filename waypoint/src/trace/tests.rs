use super::*;

fn cfg(endpoint: &str) -> TraceConfig {
    TraceConfig {
        sampling: 1.0,
        service_name: "t".into(),
        ..TraceConfig::new(endpoint)
    }
}

fn grpc(endpoint: &str) -> TraceConfig {
    TraceConfig {
        protocol: OtlpProtocol::Grpc,
        ..cfg(endpoint)
    }
}

#[test]
fn endpoints_and_roots_are_checked_before_anything_is_sent() {
    let with_roots = |endpoint: &str, roots: &str| TraceConfig {
        roots: Some(roots.into()),
        ..cfg(endpoint)
    };
    let e = Tracing::start(&cfg("ftp://x")).unwrap_err();
    assert!(e.contains("http:// or https://"), "{e}");
    let e = Tracing::start(&with_roots("https://x", "/nonexistent/ca.pem")).unwrap_err();
    assert!(
        e.contains("reading the OTLP roots /nonexistent/ca.pem"),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("otlp-roots-{}", std::process::id()));
    std::fs::write(&dir, "not a certificate\n").unwrap();
    let e = Tracing::start(&with_roots("https://x", dir.to_str().unwrap())).unwrap_err();
    // The same check for gRPC, before any runtime starts.
    let g = Tracing::start(&TraceConfig {
        protocol: OtlpProtocol::Grpc,
        ..with_roots("https://x", dir.to_str().unwrap())
    })
    .unwrap_err();
    let _ = std::fs::remove_file(&dir);
    assert!(e.contains("no certificate"), "{e}");
    assert!(g.contains("no certificate"), "{g}");
}

#[test]
fn grpc_endpoints_are_scheme_host_and_port() {
    for (endpoint, want) in [
        ("ftp://collector:4317", "http:// or https://"),
        ("collector:4317", "http:// or https://"),
        ("grpc://collector:4317", "http:// or https://"),
        ("http://collector:4317/v1/traces", "with no path"),
        ("http://", "not a URL"),
        ("http://bad host:4317", "not a URL"),
    ] {
        let e = Tracing::start(&grpc(endpoint)).unwrap_err();
        assert!(e.contains(want), "{endpoint}: {e}");
        assert!(e.contains(endpoint), "the error names the endpoint: {e}");
    }
    // A trailing slash is no path; nothing is dialled until a span ends.
    let t = Tracing::start(&grpc("http://127.0.0.1:4317/")).unwrap();
    assert!(format!("{t:?}").contains("grpc: true"), "{t:?}");
}

#[test]
fn bad_headers_are_errors_naming_them() {
    let with = |protocol: OtlpProtocol, name: &str, value: &str| {
        Tracing::start(&TraceConfig {
            protocol,
            headers: vec![("x-ok".into(), "fine".into()), (name.into(), value.into())],
            ..cfg("http://127.0.0.1:4318")
        })
    };
    let http = OtlpProtocol::default;
    for (protocol, name, value, want) in [
        (
            http(),
            "bad name",
            "v",
            "\"bad name\": not a valid header name",
        ),
        (http(), "", "v", "\"\": not a valid header name"),
        (http(), "x-token", "line\nbreak", "\"x-token\": its value"),
        (http(), "x-token", "caf\u{e9}", "'\u{e9}' at byte 3"),
        (http(), "Content-Type", "text/plain", "set by the exporter"),
        (http(), "host", "x", "set by the exporter"),
        (
            OtlpProtocol::Grpc,
            "grpc-timeout",
            "1S",
            "reserved for gRPC",
        ),
        (OtlpProtocol::Grpc, "x-key-bin", "AAEC", "binary (-bin)"),
    ] {
        let e = with(protocol, name, value).unwrap_err();
        assert!(e.contains(want), "{name}: {e}");
        // A value is described, never repeated (it may be a credential).
        if !value.is_empty() && value != "v" && value != "x" {
            assert!(!e.contains(value), "{e}");
        }
    }
    // Over HTTP, `-bin` and `grpc-` are just names.
    assert!(check_header("x-key-bin", "AAEC", &http()).is_ok());
    // Names are case-insensitive.
    let (name, _) = check_header("X-Tenant", "acme", &OtlpProtocol::Grpc).unwrap();
    assert_eq!(name.as_str(), "x-tenant");
}

#[test]
fn protocols_parse_from_the_opentelemetry_names() {
    for (text, want) in [
        ("grpc", OtlpProtocol::Grpc),
        ("GRPC", OtlpProtocol::Grpc),
        ("http/protobuf", OtlpProtocol::Http { path: None }),
        ("http", OtlpProtocol::Http { path: None }),
        (" http/protobuf ", OtlpProtocol::Http { path: None }),
    ] {
        assert_eq!(text.parse::<OtlpProtocol>().unwrap(), want, "{text}");
    }
    let e = "http/json".parse::<OtlpProtocol>().unwrap_err();
    assert!(
        e.contains("\"http/json\"") && e.contains("not supported"),
        "{e}"
    );
    for bad in ["", "grpcs", "h2", "http/proto"] {
        let e = bad.parse::<OtlpProtocol>().unwrap_err();
        assert!(e.contains(&format!("{bad:?}: not an OTLP protocol")), "{e}");
    }
}

#[test]
fn header_lists_follow_the_environment_form() {
    let got =
        parse_header_list("api-key=k1, x-scope = a%2Cb ,authorization=Bearer%20t0k,").unwrap();
    assert_eq!(
        got,
        vec![
            ("api-key".to_string(), "k1".to_string()),
            ("x-scope".to_string(), "a,b".to_string()),
            ("authorization".to_string(), "Bearer t0k".to_string()),
        ]
    );
    assert_eq!(parse_header_list("").unwrap(), vec![]);
    // `=` inside a value stays (base64 padding).
    assert_eq!(
        parse_header_list("k=YWI=").unwrap(),
        vec![("k".to_string(), "YWI=".to_string())]
    );
    let e = parse_header_list("a=1,novalue").unwrap_err();
    assert!(e.contains("\"novalue\": not NAME=VALUE"), "{e}");
    let e = parse_header_list("=v").unwrap_err();
    assert!(e.contains("not NAME=VALUE"), "{e}");
    let e = parse_header_list("k=%zz").unwrap_err();
    assert!(e.contains("\"k\": the value is not percent-encoded"), "{e}");
}

#[test]
fn other_settings_are_checked_too() {
    let e = Tracing::start(&TraceConfig {
        timeout: Duration::ZERO,
        ..grpc("http://127.0.0.1:4317")
    })
    .unwrap_err();
    assert!(e.contains("timeout is zero"), "{e}");
    let e = Tracing::start(&TraceConfig {
        sampling: 1.5,
        ..cfg("http://127.0.0.1:4318")
    })
    .unwrap_err();
    assert!(e.contains("sampling 1.5"), "{e}");
    let e = Tracing::start(&TraceConfig {
        protocol: OtlpProtocol::Http {
            path: Some("/bad path".into()),
        },
        ..cfg("http://127.0.0.1:4318")
    })
    .unwrap_err();
    assert!(e.contains("/bad path: not a URL"), "{e}");
}

#[test]
fn header_values_stay_out_of_debug_output() {
    let c = TraceConfig {
        headers: vec![("authorization".into(), "Bearer s3cret".into())],
        ..cfg("http://x")
    };
    let shown = format!("{c:?}");
    assert!(shown.contains("authorization=<redacted>"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
fn traceparent_parsing_follows_the_w3c_grammar() {
    let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (t, s, sampled) = parse_traceparent(ok).unwrap();
    assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s.to_string(), "00f067aa0ba902b7");
    assert!(sampled);
    assert!(
        !parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
            .unwrap()
            .2
    );
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-xbf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert!(parse_traceparent(bad).is_none(), "{bad}");
    }
    // A later version may carry more fields.
    assert!(
        parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some()
    );
}
