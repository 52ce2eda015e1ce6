//! The provider's checks, the check request made from a client request, and what each
//! answer means.
use super::*;

fn spec(yaml: &str) -> ExtAuthzHttpSpec {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{yaml}"))
}

fn provider(yaml: &str) -> ExtAuthzHttp {
    ExtAuthzHttp::build("authz", &spec(yaml), "extensionProviders[0]")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_err(yaml: &str) -> RouteError {
    ExtAuthzHttp::build("authz", &spec(yaml), "extensionProviders[0]").unwrap_err()
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in list {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn a_provider_is_checked_field_by_field() {
    let p = provider("{service: ext-authz.foo.svc.cluster.local, port: 8000}");
    assert_eq!(p.service, ServiceRef::new("foo", "ext-authz"));
    assert_eq!(p.host, "ext-authz.foo.svc.cluster.local");
    assert_eq!((p.port, p.timeout), (8000, DEFAULT_TIMEOUT));
    assert_eq!(p.status_on_error, StatusCode::FORBIDDEN);
    assert!(!p.fail_open);
    // Istio's `namespace/hostname` form, a short name and another cluster domain.
    for s in [
        "foo/ext-authz.foo.svc.cluster.local",
        "ext-authz.foo",
        "ext-authz.foo.svc",
        "ext-authz.foo.svc.corp.example",
    ] {
        let p = provider(&format!("{{service: {s}, port: 1}}"));
        assert_eq!(p.service, ServiceRef::new("foo", "ext-authz"), "{s}");
    }
    let p = provider(
        "{service: a.b, port: 9, timeout: 250ms, statusOnError: '500', failOpen: true, pathPrefix: /check}",
    );
    assert_eq!(p.timeout, Duration::from_millis(250));
    assert_eq!(p.status_on_error, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(p.fail_open);
    let at = "extensionProviders[0].envoyExtAuthzHttp";
    for (yaml, field) in [
        ("{service: ext-authz, port: 1}", "service"),
        ("{service: auth.example.com, port: 1}", "service"),
        ("{service: 10.0.0.1, port: 1}", "service"),
        ("{service: a.b, port: 0}", "port"),
        ("{service: a.b, port: 70000}", "port"),
        ("{service: a.b, port: 1, timeout: soon}", "timeout"),
        (
            "{service: a.b, port: 1, statusOnError: nope}",
            "statusOnError",
        ),
        (
            "{service: a.b, port: 1, statusOnError: '99'}",
            "statusOnError",
        ),
        ("{service: a.b, port: 1, pathPrefix: check}", "pathPrefix"),
        (
            "{service: a.b, port: 1, includeRequestHeadersInCheck: ['*']}",
            "includeRequestHeadersInCheck[0]",
        ),
        (
            "{service: a.b, port: 1, headersToDownstreamOnDeny: [x, '']}",
            "headersToDownstreamOnDeny[1]",
        ),
        (
            "{service: a.b, port: 1, includeAdditionalHeadersInCheck: {'a b': x}}",
            "includeAdditionalHeadersInCheck.a b",
        ),
        (
            "{service: a.b, port: 1, includeRequestBodyInCheck: {maxRequestBytes: 10}}",
            "includeRequestBodyInCheck",
        ),
    ] {
        let e = build_err(yaml);
        assert_eq!(e.path, format!("{at}.{field}"), "{yaml}: {e}");
    }
    // Unknown keys are refused when read.
    assert!(serde_yaml::from_str::<ExtAuthzHttpSpec>("{service: a.b, port: 1, bogus: 1}").is_err());
}

#[test]
fn the_check_request_carries_what_the_provider_asks_for() {
    let p = provider(
        "{service: a.b, port: 1, pathPrefix: /check, includeRequestHeadersInCheck: [x-ext-authz, 'x-user-*', '*-tenant'],
          includeAdditionalHeadersInCheck: {x-from: waypoint}}",
    );
    let req = p.check_request(&parts(
        "POST",
        "http://echo.demo:80/api/items?id=7",
        &[
            ("authorization", "Bearer t"),
            ("X-Ext-Authz", "allow"),
            ("x-user-id", "7"),
            ("acme-tenant", "blue"),
            ("x-other", "no"),
            ("content-length", "12"),
            ("x-from", "client"),
        ],
    ));
    assert_eq!(req.method(), "POST");
    assert_eq!(req.uri(), "/check/api/items?id=7");
    let h = req.headers();
    assert_eq!(h["host"], "echo.demo:80");
    assert_eq!(h["authorization"], "Bearer t");
    assert_eq!(h["x-ext-authz"], "allow");
    assert_eq!(h["x-user-id"], "7");
    assert_eq!(h["acme-tenant"], "blue");
    assert!(h.get("x-other").is_none());
    // No body goes: the length is 0 whatever the client's was; the fixed header wins.
    assert_eq!(h["content-length"], "0");
    assert_eq!(h.get_all("x-from").iter().collect::<Vec<_>>(), ["waypoint"]);
    // Without a list: the method, path, authority and Authorization only.
    let bare = provider("{service: a.b, port: 1}");
    let req = bare.check_request(&parts(
        "GET",
        "/x",
        &[("host", "h"), ("x-ext-authz", "allow")],
    ));
    assert_eq!(req.uri(), "/x");
    assert_eq!(req.headers()["host"], "h");
    assert!(req.headers().get("x-ext-authz").is_none());
}

#[test]
fn answers_allow_deny_or_fail() {
    let p = provider(
        "{service: a.b, port: 1, headersToUpstreamOnAllow: [x-ext-authz-check-result, 'x-auth-*'],
          headersToDownstreamOnAllow: [set-cookie], headersToDownstreamOnDeny: [x-ext-authz-check-result]}",
    );
    let answer = headers(&[
        ("x-ext-authz-check-result", "allowed"),
        ("x-auth-user", "alice"),
        ("set-cookie", "s=1"),
        ("x-private", "no"),
        ("x-envoy-auth-headers-to-remove", "authorization, x-secret"),
    ]);
    match p.decide(StatusCode::OK, &answer, Bytes::new()) {
        Decision::Allow {
            upstream,
            remove,
            downstream,
        } => {
            let names: Vec<&str> = upstream.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["x-ext-authz-check-result", "x-auth-user"]);
            assert_eq!(
                remove,
                [header::AUTHORIZATION, HeaderName::from_static("x-secret")]
            );
            assert_eq!(downstream.len(), 1);
            assert_eq!(downstream[0].0, header::SET_COOKIE);
        }
        other => panic!("{other:?}"),
    }
    let denial = headers(&[
        ("x-ext-authz-check-result", "denied"),
        ("x-private", "no"),
        ("www-authenticate", "Bearer"),
        ("content-type", "text/plain"),
        ("content-length", "6"),
    ]);
    match p.decide(
        StatusCode::UNAUTHORIZED,
        &denial,
        Bytes::from_static(b"denied"),
    ) {
        Decision::Deny {
            status,
            headers,
            body,
        } => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(&body[..], b"denied");
            let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
            names.sort();
            assert_eq!(
                names,
                [
                    "content-type",
                    "www-authenticate",
                    "x-ext-authz-check-result"
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    // Without `headersToDownstreamOnDeny`, every header but the framing ones.
    let all = provider("{service: a.b, port: 1}");
    match all.decide(StatusCode::FORBIDDEN, &denial, Bytes::new()) {
        Decision::Deny { headers, .. } => {
            assert!(headers.contains_key("x-private") && !headers.contains_key("content-length"));
        }
        other => panic!("{other:?}"),
    }
    // A 5xx is no answer: the provider failed.
    assert!(matches!(
        p.decide(StatusCode::SERVICE_UNAVAILABLE, &denial, Bytes::new()),
        Decision::Error(_)
    ));
    // Anything else but 200 denies, a redirect too (with its Location).
    match all.decide(
        StatusCode::FOUND,
        &headers(&[("location", "/login")]),
        Bytes::new(),
    ) {
        Decision::Deny {
            status, headers, ..
        } => {
            assert_eq!(status, StatusCode::FOUND);
            assert_eq!(headers["location"], "/login");
        }
        other => panic!("{other:?}"),
    }
}
