//! The provider's checks, the check request made from a client request, and what each
//! answer means.
use super::*;

fn spec(yaml: &str) -> ExtAuthzHttpSpec {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{yaml}"))
}

fn provider(yaml: &str) -> ExtAuthz {
    ExtAuthz::build("authz", &spec(yaml), "extensionProviders[0]").unwrap_or_else(|e| panic!("{e}"))
}

fn build_err(yaml: &str) -> RouteError {
    ExtAuthz::build("authz", &spec(yaml), "extensionProviders[0]").unwrap_err()
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
            "{service: a.b, port: 1, includeRequestBodyInCheck: {allowPartialMessage: true}}",
            "includeRequestBodyInCheck.maxRequestBytes",
        ),
    ] {
        let e = build_err(yaml);
        assert_eq!(e.path, format!("{at}.{field}"), "{yaml}: {e}");
    }
    // Unknown keys are refused when read.
    assert!(serde_yaml::from_str::<ExtAuthzHttpSpec>("{service: a.b, port: 1, bogus: 1}").is_err());
    assert!(
        serde_yaml::from_str::<ExtAuthzHttpSpec>(
            "{service: a.b, port: 1, includeRequestBodyInCheck: {maxBytes: 1}}"
        )
        .is_err()
    );
}

#[test]
fn the_body_in_a_check_is_read_from_the_spec() {
    let p = provider("{service: a.b, port: 1}");
    assert_eq!(p.body, None);
    let p = provider(
        "{service: a.b, port: 1, includeRequestBodyInCheck: {maxRequestBytes: 8192, allowPartialMessage: true, packAsBytes: true}}",
    );
    assert_eq!(
        p.body,
        Some(BodyInCheck {
            max: 8192,
            allow_partial: true,
            raw: true
        })
    );
    // More than the waypoint holds: held to its limit, not refused (refusing would make
    // every policy naming the provider deny all).
    let p =
        provider("{service: a.b, port: 1, includeRequestBodyInCheck: {maxRequestBytes: 8388608}}");
    assert_eq!(p.body.map(|b| b.max), Some(MAX_BODY_IN_CHECK as usize));
}

#[test]
fn an_http_check_carries_the_body_and_says_whether_it_is_partial_when_asked() {
    let body = CheckBody {
        bytes: Bytes::from_static(b"{\"amount\": 10}"),
        partial: true,
    };
    let client = parts(
        "POST",
        "/pay",
        &[
            ("host", "h"),
            ("content-length", "300"),
            // A client's own never reaches the provider.
            ("x-envoy-auth-partial-body", "false"),
        ],
    );
    let listed = provider(
        "{service: a.b, port: 1, includeRequestHeadersInCheck: [x-envoy-auth-partial-body], includeRequestBodyInCheck: {maxRequestBytes: 15, allowPartialMessage: true}}",
    );
    let req = listed.check_request(&client, Some(&body));
    assert_eq!(&req.body()[..], b"{\"amount\": 10}");
    assert_eq!(req.headers()["content-length"], "14");
    assert_eq!(
        req.headers()
            .get_all("x-envoy-auth-partial-body")
            .iter()
            .collect::<Vec<_>>(),
        ["true"]
    );
    // Not listed: the body goes, the header does not (Envoy's HTTP client sends only the
    // headers its patterns pick); nor does the client's.
    let unlisted = provider(
        "{service: a.b, port: 1, includeRequestBodyInCheck: {maxRequestBytes: 15, allowPartialMessage: true}}",
    );
    let req = unlisted.check_request(&client, Some(&body));
    assert_eq!(req.headers()["content-length"], "14");
    assert!(req.headers().get("x-envoy-auth-partial-body").is_none());
    let req = listed.check_request(&client, None);
    assert!(req.body().is_empty());
    assert_eq!(req.headers()["content-length"], "0");
    assert!(req.headers().get("x-envoy-auth-partial-body").is_none());
}

#[test]
fn a_grpc_check_carries_the_body_as_a_string_or_as_raw_bytes() {
    use prost::Message as _;
    let decode = |p: &ExtAuthz, req: &Parts, body: Option<&CheckBody>| {
        let check = p.check(req, &CheckContext::default(), body);
        let m = pb::CheckRequest::decode(&check.body()[5..]).unwrap();
        m.attributes.unwrap().request.unwrap().http.unwrap()
    };
    let req = parts(
        "POST",
        "/upload",
        &[("host", "h"), ("x-envoy-auth-partial-body", "false")],
    );
    // Not UTF-8: it goes as the client sent it either way.
    let body = CheckBody {
        bytes: Bytes::from_static(b"\xff\x00ab"),
        partial: false,
    };
    let grpc = |extra: &str| {
        let s: ExtAuthzGrpcSpec = serde_yaml::from_str(&format!(
            "{{service: opa.policy.svc.cluster.local, port: 9191{extra}}}"
        ))
        .unwrap();
        ExtAuthz::build_grpc("opa", &s, "extensionProviders[0]").unwrap()
    };
    let text = grpc(", includeRequestBodyInCheck: {maxRequestBytes: 8}");
    let http = decode(&text, &req, Some(&body));
    assert_eq!(
        (&http.body[..], http.raw_body.len()),
        (&b"\xff\x00ab"[..], 0)
    );
    assert_eq!(http.headers["x-envoy-auth-partial-body"], "false");
    let raw = grpc(", includeRequestBodyInCheck: {maxRequestBytes: 8, packAsBytes: true}");
    let http = decode(
        &raw,
        &req,
        Some(&CheckBody {
            partial: true,
            ..body
        }),
    );
    assert_eq!(
        (http.body.len(), &http.raw_body[..]),
        (0, &b"\xff\x00ab"[..])
    );
    assert_eq!(http.headers["x-envoy-auth-partial-body"], "true");
    // No body read (none sent): neither field, and not the client's header either.
    let http = decode(&raw, &req, None);
    assert!(http.body.is_empty() && http.raw_body.is_empty());
    assert!(!http.headers.contains_key("x-envoy-auth-partial-body"));
}

#[test]
fn the_check_request_carries_what_the_provider_asks_for() {
    let p = provider(
        "{service: a.b, port: 1, pathPrefix: /check, includeRequestHeadersInCheck: [x-ext-authz, 'x-user-*', '*-tenant'],
          includeAdditionalHeadersInCheck: {x-from: waypoint}}",
    );
    let req = p.check_request(
        &parts(
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
        ),
        None,
    );
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
    let req = bare.check_request(
        &parts("GET", "/x", &[("host", "h"), ("x-ext-authz", "allow")]),
        None,
    );
    assert_eq!(req.uri(), "/x");
    assert_eq!(req.headers()["host"], "h");
    assert!(req.headers().get("x-ext-authz").is_none());
}

#[test]
fn answers_allow_deny_or_fail() {
    let p = provider(
        "{service: a.b, port: 1, headersToUpstreamOnAllow: [x-ext-authz-check-result, 'x-auth-*', 'content-*'],
          headersToDownstreamOnAllow: [set-cookie], headersToDownstreamOnDeny: [x-ext-authz-check-result]}",
    );
    let answer = headers(&[
        ("x-ext-authz-check-result", "allowed"),
        ("x-auth-user", "alice"),
        ("set-cookie", "s=1"),
        ("x-private", "no"),
        (
            "x-envoy-auth-headers-to-remove",
            "authorization, x-secret, content-length",
        ),
        // Framing a provider never sets, however the lists read.
        ("content-length", "5"),
    ]);
    match p.decide(StatusCode::OK, &answer, Bytes::new()) {
        Decision::Allow(a) => {
            assert!(a.edits.iter().all(|(e, _, _)| *e == Edit::Set));
            let names: Vec<&str> = a.edits.iter().map(|(_, n, _)| n.as_str()).collect();
            assert_eq!(names, ["x-ext-authz-check-result", "x-auth-user"]);
            assert_eq!(
                a.remove,
                [header::AUTHORIZATION, HeaderName::from_static("x-secret")]
            );
            assert_eq!(a.downstream.len(), 1);
            assert_eq!(a.downstream[0].0, header::SET_COOKIE);
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
            assert_eq!(names, ["www-authenticate", "x-ext-authz-check-result"]);
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

fn grpc_provider() -> ExtAuthz {
    let s: ExtAuthzGrpcSpec = serde_yaml::from_str(
        "{service: opa.policy.svc.cluster.local, port: 9191, timeout: 1s, failOpen: true}",
    )
    .unwrap();
    ExtAuthz::build_grpc("opa", &s, "extensionProviders[1]").unwrap()
}

/// One gRPC message, framed.
fn framed(m: &impl prost::Message) -> Bytes {
    let mut b = vec![0];
    b.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
    m.encode(&mut b).unwrap();
    Bytes::from(b)
}

fn grpc_ok() -> HeaderMap {
    headers(&[("grpc-status", "0")])
}

/// A header option with the deprecated `append` (`Some`) or an append action.
fn option(key: &str, value: &str, append: Option<bool>, action: i32) -> pb::HeaderValueOption {
    pb::HeaderValueOption {
        header: Some(pb::HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: append.map(|value| pb::BoolValue { value }),
        append_action: action,
    }
}

#[test]
fn a_grpc_check_carries_the_request_and_its_peers() {
    use prost::Message as _;
    let p = grpc_provider();
    assert!(p.grpc && p.fail_open);
    assert_eq!((p.port, p.timeout), (9191, Duration::from_secs(1)));
    let bad: ExtAuthzGrpcSpec = serde_yaml::from_str("{service: opa, port: 9191}").unwrap();
    let e = ExtAuthz::build_grpc("opa", &bad, "extensionProviders[1]").unwrap_err();
    assert_eq!(e.path, "extensionProviders[1].envoyExtAuthzGrpc.service");
    let mut req = parts(
        "POST",
        "/api/items?id=7",
        &[
            ("host", "echo.demo:80"),
            ("x-request-id", "r-1"),
            ("x-tag", "a"),
            ("x-tag", "b"),
            ("content-length", "12"),
        ],
    );
    req.version = http::Version::HTTP_2;
    let ctx = CheckContext {
        principal: Some("cluster.local/ns/demo/sa/client"),
        source: Some("10.0.0.1:40000".parse().unwrap()),
        destination: Some("10.96.0.1:80".parse().unwrap()),
    };
    let check = p.check(&req, &ctx, None);
    assert_eq!(
        check.uri(),
        "http://opa.policy.svc.cluster.local:9191/envoy.service.auth.v3.Authorization/Check"
    );
    assert_eq!(check.version(), http::Version::HTTP_2);
    assert_eq!(check.headers()["content-type"], "application/grpc");
    assert_eq!(check.headers()["te"], "trailers");
    let body = check.body();
    assert_eq!(body[0], 0, "not compressed");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    assert_eq!(len, body.len() - 5);
    let decoded = pb::CheckRequest::decode(&body[5..]).unwrap();
    let a = decoded.attributes.unwrap();
    let source = a.source.unwrap();
    assert_eq!(source.principal, "spiffe://cluster.local/ns/demo/sa/client");
    let sa = source.address.unwrap().socket_address.unwrap();
    assert_eq!((sa.address.as_str(), sa.port_value), ("10.0.0.1", 40000));
    let da = a
        .destination
        .unwrap()
        .address
        .unwrap()
        .socket_address
        .unwrap();
    assert_eq!((da.address.as_str(), da.port_value), ("10.96.0.1", 80));
    let http = a.request.unwrap().http.unwrap();
    assert_eq!(http.method, "POST");
    assert_eq!(http.path, "/api/items?id=7");
    assert_eq!(http.host, "echo.demo:80");
    assert_eq!(http.id, "r-1");
    assert_eq!((http.size, http.protocol.as_str()), (12, "HTTP/2"));
    assert_eq!(http.headers["x-tag"], "a,b");
    assert_eq!(http.headers[":method"], "POST");
    assert_eq!(http.headers[":path"], "/api/items?id=7");
    assert_eq!(http.headers[":authority"], "echo.demo:80");
}

#[test]
fn grpc_answers_allow_deny_or_fail() {
    let p = grpc_provider();
    let ok = pb::CheckResponse {
        status: Some(pb::RpcStatus::default()),
        ok_response: Some(pb::OkHttpResponse {
            headers: vec![
                option("x-user", "alice", Some(false), 0),
                option("x-tag", "c", Some(true), 0),
                option("x-new", "1", None, 0),
                option("x-keep", "2", None, 1),
                option("x-over", "3", None, 3),
                option("x-set", "4", None, 2),
                option("content-length", "9", None, 2),
            ],
            headers_to_remove: vec!["authorization".into(), "host".into()],
            response_headers_to_add: vec![option("x-checked", "yes", Some(false), 0)],
            ..Default::default()
        }),
        ..Default::default()
    };
    match p.answer(
        StatusCode::OK,
        &HeaderMap::new(),
        framed(&ok),
        Some(&grpc_ok()),
    ) {
        Decision::Allow(a) => {
            let edits: Vec<(Edit, &str)> =
                a.edits.iter().map(|(e, n, _)| (*e, n.as_str())).collect();
            assert_eq!(
                edits,
                [
                    (Edit::Set, "x-user"),
                    (Edit::Add, "x-tag"),
                    (Edit::Add, "x-new"),
                    (Edit::AddIfAbsent, "x-keep"),
                    (Edit::OverwriteIfExists, "x-over"),
                    (Edit::Set, "x-set"),
                ],
                "framing is never set"
            );
            assert_eq!(a.remove, [header::AUTHORIZATION], "nor Host removed");
            assert_eq!(a.downstream[0].0.as_str(), "x-checked");
            // Applied as Envoy applies them.
            let mut h = headers(&[
                ("x-user", "mallory"),
                ("x-tag", "a"),
                ("x-keep", "mine"),
                ("authorization", "Bearer t"),
            ]);
            a.apply(&mut h);
            assert_eq!(h["x-user"], "alice");
            assert_eq!(h.get_all("x-tag").iter().count(), 2);
            assert_eq!(h["x-keep"], "mine");
            assert!(h.get("x-over").is_none(), "overwrite only if it exists");
            assert_eq!(
                (&h["x-new"], &h["x-set"]),
                (
                    &"1".parse::<HeaderValue>().unwrap(),
                    &"4".parse::<HeaderValue>().unwrap()
                )
            );
            assert!(h.get("authorization").is_none());
        }
        other => panic!("{other:?}"),
    }
    // A status without an ok_response allows as is.
    let bare = pb::CheckResponse::default();
    assert!(matches!(
        p.answer(
            StatusCode::OK,
            &HeaderMap::new(),
            framed(&bare),
            Some(&grpc_ok())
        ),
        Decision::Allow { .. }
    ));
    let denied = pb::CheckResponse {
        status: Some(pb::RpcStatus {
            code: 7,
            message: "no".into(),
        }),
        denied_response: Some(pb::DeniedHttpResponse {
            status: Some(pb::HttpStatus { code: 401 }),
            headers: vec![option("www-authenticate", "Bearer", None, 0)],
            body: "who are you".into(),
        }),
        ..Default::default()
    };
    match p.answer(
        StatusCode::OK,
        &HeaderMap::new(),
        framed(&denied),
        Some(&grpc_ok()),
    ) {
        Decision::Deny {
            status,
            headers,
            body,
        } => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(headers["www-authenticate"], "Bearer");
            assert_eq!(&body[..], b"who are you");
        }
        other => panic!("{other:?}"),
    }
    // Denied without a denied_response: 403.
    let plain = pb::CheckResponse {
        status: Some(pb::RpcStatus {
            code: 7,
            message: String::new(),
        }),
        ..Default::default()
    };
    match p.answer(
        StatusCode::OK,
        &HeaderMap::new(),
        framed(&plain),
        Some(&grpc_ok()),
    ) {
        Decision::Deny { status, .. } => assert_eq!(status, StatusCode::FORBIDDEN),
        other => panic!("{other:?}"),
    }
    // Failed calls: a gRPC error (trailers or trailers-only), an HTTP error, a compressed
    // or cut message, bytes that do not decode.
    let unavailable = headers(&[("grpc-status", "14")]);
    for (status, head, body, trailers) in [
        (
            StatusCode::OK,
            HeaderMap::new(),
            framed(&ok),
            Some(&unavailable),
        ),
        (StatusCode::OK, unavailable.clone(), Bytes::new(), None),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            HeaderMap::new(),
            Bytes::new(),
            None,
        ),
        (
            StatusCode::OK,
            HeaderMap::new(),
            framed(&ok).slice(..7),
            Some(&grpc_ok()),
        ),
        (
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(&[1, 0, 0, 0, 1, 0]),
            Some(&grpc_ok()),
        ),
        (
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(&[0, 0, 0, 0, 2, 0xff, 0xff]),
            Some(&grpc_ok()),
        ),
    ] {
        assert!(
            matches!(
                p.answer(status, &head, body.clone(), trailers),
                Decision::Error(_)
            ),
            "{status} {head:?} {body:?}"
        );
    }
}

#[test]
fn query_edits_keep_what_they_do_not_name() {
    let set = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let rm = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    for (pq, s, r, want) in [
        ("/a", set(&[("user", "bob")]), rm(&[]), "/a?user=bob"),
        (
            "/a?x=1&user=eve&y=%2F&user=mallory",
            set(&[("user", "bob")]),
            rm(&[]),
            "/a?x=1&user=bob&y=%2F",
        ),
        ("/a?token=t&x=1", set(&[]), rm(&["token"]), "/a?x=1"),
        ("/a?token=t", set(&[]), rm(&["token"]), "/a"),
        // Names are compared decoded on both sides; what a query cannot hold is escaped,
        // what the provider encoded stays as it sent it.
        (
            "/a?us%65r=eve",
            set(&[("user", "a b&c=d")]),
            rm(&[]),
            "/a?user=a%20b%26c=d",
        ),
        (
            "/a?x=1",
            set(&[("next", "https%3A%2F%2Fx.test%2F?a=1")]),
            rm(&["to%6Ben"]),
            "/a?x=1&next=https%3A%2F%2Fx.test%2F?a=1",
        ),
        ("/a?to%6Ben=t&x=1", set(&[]), rm(&["token"]), "/a?x=1"),
        ("/a", set(&[("k=v", "1#2")]), rm(&[]), "/a?k%3Dv=1%232"),
        // Removed wins over set; an empty parameter is dropped; case matters.
        ("/a?&X=1", set(&[("x", "2")]), rm(&["x"]), "/a?X=1"),
        ("/a?bad=%zz", set(&[]), rm(&["nothing"]), "/a?bad=%zz"),
    ] {
        assert_eq!(edit_query(pq, &s, &r), want, "{pq}");
    }
    let mut req = parts("GET", "http://echo.demo/items?secret=1&page=2", &[]);
    let allowed = Allowed {
        query_set: set(&[("authz", "ok")]),
        query_remove: rm(&["secret"]),
        ..Allowed::default()
    };
    assert!(allowed.edits_request());
    allowed.apply_to(&mut req);
    assert_eq!(req.uri, "http://echo.demo/items?page=2&authz=ok");
}

#[test]
fn a_grpc_error_response_is_an_error_with_the_providers_answer() {
    let p = grpc_provider();
    let answer = |m: pb::CheckResponse| {
        p.answer(
            StatusCode::OK,
            &HeaderMap::new(),
            framed(&m),
            Some(&grpc_ok()),
        )
    };
    let failed = pb::CheckResponse {
        status: Some(pb::RpcStatus {
            code: 14,
            message: "warming up".into(),
        }),
        error_response: Some(pb::DeniedHttpResponse {
            status: Some(pb::HttpStatus { code: 503 }),
            headers: vec![option("retry-after", "5", None, 0)],
            body: "warming up".into(),
        }),
        ..Default::default()
    };
    match answer(failed.clone()) {
        Decision::Failed {
            status,
            headers,
            body,
        } => {
            assert_eq!(status, Some(StatusCode::SERVICE_UNAVAILABLE));
            assert_eq!(headers["retry-after"], "5");
            assert_eq!(&body[..], b"warming up");
        }
        other => panic!("{other:?}"),
    }
    // Without a status: the provider's `statusOnError` applies (`None` here).
    let mut no_status = failed;
    no_status.error_response.as_mut().unwrap().status = None;
    assert!(matches!(
        answer(no_status),
        Decision::Failed { status: None, .. }
    ));
    // OK with query edits.
    let ok = pb::CheckResponse {
        status: Some(pb::RpcStatus::default()),
        ok_response: Some(pb::OkHttpResponse {
            query_parameters_to_set: vec![pb::QueryParameter {
                key: "authz".into(),
                value: "ok".into(),
            }],
            query_parameters_to_remove: vec!["secret".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    match answer(ok) {
        Decision::Allow(a) => {
            assert_eq!(a.query_set, [("authz".to_string(), "ok".to_string())]);
            assert_eq!(a.query_remove, ["secret"]);
        }
        other => panic!("{other:?}"),
    }
}
