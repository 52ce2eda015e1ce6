//! Reading routes: a full spec, unknown keys, and errors that name their field; with the
//! table helpers of the route tests.
use super::*;

// ---------------------------------------------------------------------------------------
// Parsing.

#[test]
fn full_spec_parses_and_builds() {
    let t = table(
        r#"
- name: echo-routes
  namespace: demo
  parentRefs:
  - name: echo
    kind: Service
    group: ""
    port: 80
  - name: other
    namespace: prod
  hostnames: ["echo.demo.svc.cluster.local", "*.example.com"]
  rules:
  - name: api
    matches:
    - path: {type: PathPrefix, value: /api}
      method: POST
      headers:
      - {name: x-env, value: canary}
      - {type: RegularExpression, name: x-user, value: "[a-z]+"}
      queryParams:
      - {name: debug, value: "1"}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-a, value: "1"}]
        add: [{name: x-b, value: "2"}]
        remove: [x-c]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-resp, value: "yes"}]
    - type: RequestMirror
      requestMirror:
        backendRef: {name: shadow, port: 8080}
        percent: 25
    backendRefs:
    - {name: echo-v1, weight: 90}
    - {name: echo-v2, namespace: canary, port: 8080, weight: 10}
    timeouts: {request: 10s, backendRequest: 2s}
    retry:
      attempts: 3
      codes: [503]
      backoff: 50ms
      retryOn: [connect-failure, 5xx]
      budgetPercent: 50
      minRetryConcurrency: 5
    fault:
      delay: {fixedDelay: 1s, percentage: 10}
      abort: {httpStatus: 503, percentage: 1}
  - {}
"#,
    );
    assert_eq!(t.len(), 1);
    assert!(!t.is_empty());
    assert!(t.has_routes(&echo()));
    assert!(t.has_routes(&ServiceRef::new("prod", "other")));
    assert!(!t.has_routes(&ServiceRef::new("demo", "other")));

    let parts = req(
        "POST",
        "/api/x?debug=1",
        &[
            ("host", "www.example.com"),
            ("x-env", "canary"),
            ("x-user", "alice"),
        ],
    );
    let rule = t.select(&echo(), 80, &parts).unwrap().unwrap();
    assert_eq!(&*rule.route, "demo/echo-routes");
    assert_eq!(&*rule.name, "api");
    assert_eq!(
        rule.backends,
        vec![
            Backend {
                service: ServiceRef::new("demo", "echo-v1"),
                subset: None,
                port: None,
                weight: 90,
                edits: None,
            },
            Backend {
                service: ServiceRef::new("canary", "echo-v2"),
                subset: None,
                port: Some(8080),
                weight: 10,
                edits: None,
            },
        ]
    );
    assert_eq!(rule.request_timeout, Some(secs(10)));
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.codes, vec![503]);
    assert_eq!(retry.backoff, ms(50));
    assert_eq!(retry.per_try_timeout, Some(secs(2)));
    assert!(retry.on_connect_failure && retry.on_5xx);
    assert!(!retry.on_reset && !retry.on_gateway_error);
    assert_eq!(retry.budget_percent, 0.5);
    assert_eq!(retry.min_retry_concurrency, 5);
    assert_eq!(
        rule.fault,
        Some(Fault {
            delay: Some((secs(1), 0.1)),
            abort: Some((http_abort(http::StatusCode::SERVICE_UNAVAILABLE), 0.01)),
        })
    );
    assert_eq!(
        rule.mirror,
        Some(Mirror {
            backend: Backend {
                service: ServiceRef::new("demo", "shadow"),
                subset: None,
                port: Some(8080),
                weight: 1,
                edits: None,
            },
            fraction: 0.25,
        })
    );
    assert!(!rule.request_headers.is_empty());
    assert!(!rule.response_headers.is_empty());

    // The second rule (no matches) takes the rest, named by its index.
    let rest = t
        .select(&echo(), 80, &req("GET", "/", &[("host", "a.example.com")]))
        .unwrap()
        .unwrap();
    assert_eq!(&*rest.name, "1");
    assert!(rest.backends.is_empty());
    assert_eq!(rest.pick_for(&echo(), 7).unwrap().service, echo());
    assert_eq!(rest.retry, Some(istio_default_retry(None)));
    assert!(rest.fault.is_none() && rest.mirror.is_none());
    assert!(rest.request_headers.is_empty() && rest.response_headers.is_empty());
}

#[test]
fn unknown_keys_are_rejected_by_serde() {
    // A typo at the top level, in a match, in a filter body and in the retry block.
    for yaml in [
        "[{name: r, namespace: demo, parentRefs: [{name: echo}], hostname: [a]}]",
        "[{name: r, namespace: demo, parentRefs: [{name: echo, prot: 80}]}]",
        "[{name: r, namespace: demo, parentRefs: [{name: echo}], rules: [{matches: [{paths: {value: /}}]}]}]",
        "[{name: r, namespace: demo, parentRefs: [{name: echo}], rules: [{retry: {attempt: 3}}]}]",
        "[{name: r, namespace: demo, parentRefs: [{name: echo}], rules: [{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {sett: []}}]}]}]",
        "[{name: r, namespace: demo, parentRefs: [{name: echo}], rules: [{fault: {delay: {fixedDelay: 1s, percent: 5}}}]}]",
    ] {
        assert!(
            serde_yaml::from_str::<Vec<HttpRouteSpec>>(yaml).is_err(),
            "accepted: {yaml}"
        );
    }
    // Missing required keys too.
    for yaml in [
        "[{name: r, namespace: demo}]",
        "[{name: r, parentRefs: [{name: echo}]}]",
        "[{name: r, namespace: demo, parentRefs: [{port: 80}]}]",
    ] {
        assert!(
            serde_yaml::from_str::<Vec<HttpRouteSpec>>(yaml).is_err(),
            "accepted: {yaml}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Errors name the field.

#[test]
fn bad_path_regex_names_the_value() {
    let e = one_rule_err("{matches: [{path: {type: RegularExpression, value: '/(unclosed'}}]}");
    assert!(e.path.ends_with(".matches[0].path.value"), "{e}");
    assert_rule_err(&e, ".matches[0].path.value");
    assert!(e.message.contains("regular expression"), "{e}");

    // In the second match of the second rule.
    let e = build_err(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - {}
  - matches:
    - {path: {value: /ok}}
    - {path: {type: RegularExpression, value: '['}}
",
    );
    assert_eq!(e.path, "httpRoutes[demo/r].rules[1].matches[1].path.value");
}

#[test]
fn bad_match_fields_are_named() {
    let cases = [
        (
            "{matches: [{path: {type: Prefix, value: /a}}]}",
            ".matches[0].path.type",
        ),
        ("{matches: [{path: {value: a}}]}", ".matches[0].path.value"),
        (
            "{matches: [{path: {type: Exact, value: a}}]}",
            ".matches[0].path.value",
        ),
        (
            "{matches: [{headers: [{name: x, value: '(', type: RegularExpression}]}]}",
            ".matches[0].headers[0].value",
        ),
        (
            "{matches: [{headers: [{name: x, value: y, type: Prefix}]}]}",
            ".matches[0].headers[0].type",
        ),
        (
            "{matches: [{headers: [{name: 'bad name', value: y}]}]}",
            ".matches[0].headers[0].name",
        ),
        (
            "{matches: [{queryParams: [{name: '', value: y}]}]}",
            ".matches[0].queryParams[0].name",
        ),
        (
            "{matches: [{queryParams: [{name: q, value: '*', type: RegularExpression}]}]}",
            ".matches[0].queryParams[0].value",
        ),
        (
            "{matches: [{}, {queryParams: [{name: q, value: v, type: Glob}]}]}",
            ".matches[1].queryParams[0].type",
        ),
    ];
    for (rule, suffix) in cases {
        assert_rule_err(&one_rule_err(rule), suffix);
    }
    // A regular expression path need not start with `/`.
    let t = table(&one_rule_yaml(
        "{name: re, matches: [{path: {type: RegularExpression, value: '.*'}}]}",
    ));
    assert_eq!(pick_name(&t, &get("/x")), some("re"));
}

#[test]
fn filter_errors_are_named() {
    let cases = [
        ("{filters: [{type: URLRewrite}]}", ".filters[0].urlRewrite"),
        (
            "{filters: [{type: requestHeaderModifier}]}",
            ".filters[0].type",
        ),
        (
            "{filters: [{type: RequestHeaderModifier}]}",
            ".filters[0].requestHeaderModifier",
        ),
        (
            "{filters: [{type: ResponseHeaderModifier}]}",
            ".filters[0].responseHeaderModifier",
        ),
        (
            "{filters: [{type: RequestMirror}]}",
            ".filters[0].requestMirror",
        ),
        // The body of another type does not stand in for the right one.
        (
            "{filters: [{type: RequestMirror, requestHeaderModifier: {}}]}",
            ".filters[0].requestMirror",
        ),
        (
            "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: Nope}]}",
            ".filters[1].type",
        ),
        (
            "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'a b', value: x}]}}]}",
            ".filters[0].requestHeaderModifier.set[0].name",
        ),
        (
            "{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: ok, value: x}, {name: ok, value: \"a\\nb\"}]}}]}",
            ".filters[0].responseHeaderModifier.add[1].value",
        ),
        (
            "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [ok, 'no:']}}]}",
            ".filters[0].requestHeaderModifier.remove[1]",
        ),
        (
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m}, percent: 150}}]}",
            ".filters[0].requestMirror.percent",
        ),
        (
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m}, percent: -1}}]}",
            ".filters[0].requestMirror.percent",
        ),
        (
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, kind: Pod}}}]}",
            ".filters[0].requestMirror.backendRef.kind",
        ),
    ];
    for (rule, suffix) in cases {
        assert_rule_err(&one_rule_err(rule), suffix);
    }
}

#[test]
fn percentage_out_of_range_is_refused() {
    let cases = [
        (
            "{fault: {delay: {fixedDelay: 1s, percentage: 150}}}",
            ".fault.delay.percentage",
        ),
        (
            "{fault: {delay: {fixedDelay: 1s, percentage: -0.5}}}",
            ".fault.delay.percentage",
        ),
        (
            "{fault: {abort: {httpStatus: 503, percentage: 100.5}}}",
            ".fault.abort.percentage",
        ),
        (
            "{fault: {abort: {httpStatus: 503, percentage: .nan}}}",
            ".fault.abort.percentage",
        ),
        ("{retry: {budgetPercent: 150}}", ".retry.budgetPercent"),
    ];
    for (rule, suffix) in cases {
        assert_rule_err(&one_rule_err(rule), suffix);
    }
}

#[test]
fn retry_errors_are_named() {
    let cases = [
        ("{retry: {attempts: 11}}", ".retry.attempts"),
        ("{retry: {retryOn: [5xx, 4xx]}}", ".retry.retryOn[1]"),
        ("{retry: {retryOn: [Reset]}}", ".retry.retryOn[0]"),
        ("{retry: {codes: [503, 99]}}", ".retry.codes[1]"),
        ("{retry: {codes: [600]}}", ".retry.codes[0]"),
        ("{retry: {backoff: 5x}}", ".retry.backoff"),
        ("{retry: {perTryTimeout: 0s}}", ".retry.perTryTimeout"),
    ];
    for (rule, suffix) in cases {
        assert_rule_err(&one_rule_err(rule), suffix);
    }
    // MAX_ATTEMPTS itself is fine.
    let rule = one_rule(&format!("{{retry: {{attempts: {MAX_ATTEMPTS}}}}}"));
    assert_eq!(rule.retry.as_ref().unwrap().attempts, 10);
    assert_eq!(MAX_ATTEMPTS, 10);
}

#[test]
fn timeout_errors_are_named() {
    let cases = [
        (
            "{timeouts: {request: 1s, backendRequest: 2s}}",
            ".timeouts.backendRequest",
        ),
        (
            "{timeouts: {request: 999ms, backendRequest: 1s}}",
            ".timeouts.backendRequest",
        ),
        ("{timeouts: {request: '10'}}", ".timeouts.request"),
        (
            "{timeouts: {backendRequest: 1.5s}}",
            ".timeouts.backendRequest",
        ),
        (
            "{fault: {delay: {fixedDelay: 0s}}}",
            ".fault.delay.fixedDelay",
        ),
    ];
    for (rule, suffix) in cases {
        assert_rule_err(&one_rule_err(rule), suffix);
    }
    // Equal is fine.
    let rule = one_rule("{timeouts: {request: 2s, backendRequest: 2000ms}}");
    assert_eq!(rule.request_timeout, Some(secs(2)));
    assert_eq!(rule.retry.as_ref().unwrap().per_try_timeout, Some(secs(2)));
}

#[test]
fn route_level_errors() {
    // Duplicate namespace/name.
    let e = build_err(
        "
- {name: r, namespace: demo, parentRefs: [{name: echo}]}
- {name: other, namespace: demo, parentRefs: [{name: echo}]}
- {name: r, namespace: demo, parentRefs: [{name: echo2}]}
",
    );
    assert_eq!(e.path, "httpRoutes[demo/r]", "{e}");
    // The same name in another namespace is another route.
    let t = table(
        "
- {name: r, namespace: demo, parentRefs: [{name: echo}], rules: [{}]}
- {name: r, namespace: prod, parentRefs: [{name: echo}], rules: [{}]}
",
    );
    assert_eq!(t.len(), 2);

    let e = build_err("[{name: r, namespace: demo, parentRefs: [], rules: [{}]}]");
    assert_eq!(e.path, "httpRoutes[demo/r].parentRefs", "{e}");

    let e = build_err("[{name: r, namespace: demo, parentRefs: [{name: gw, kind: Gateway}]}]");
    assert_eq!(e.path, "httpRoutes[demo/r].parentRefs[0].kind", "{e}");
    assert!(e.message.contains("Gateway"), "{e}");

    let e = build_err(
        "[{name: r, namespace: demo, parentRefs: [{name: echo}, {name: gw, group: gateway.networking.k8s.io}]}]",
    );
    assert_eq!(e.path, "httpRoutes[demo/r].parentRefs[1].group", "{e}");

    let e = build_err("[{name: r, namespace: demo, parentRefs: [{name: echo, port: 0}]}]");
    assert_eq!(e.path, "httpRoutes[demo/r].parentRefs[0].port", "{e}");

    let e = build_err("[{name: '', namespace: demo, parentRefs: [{name: echo}]}]");
    assert!(e.path.starts_with("httpRoutes["), "{e}");
    let e = build_err("[{name: r, namespace: '', parentRefs: [{name: echo}]}]");
    assert!(e.path.starts_with("httpRoutes["), "{e}");

    // The message is in the Display form, after the path.
    let e = build_err("[{name: r, namespace: demo, parentRefs: []}]");
    assert!(
        e.to_string().starts_with("httpRoutes[demo/r].parentRefs: "),
        "{e}"
    );
}

#[test]
fn first_error_wins_and_later_routes_are_not_needed() {
    // A bad second route fails the whole table.
    let e = build_err(
        "
- {name: good, namespace: demo, parentRefs: [{name: echo}], rules: [{}]}
- {name: bad, namespace: demo, parentRefs: [{name: echo}], rules: [{}, {retry: {attempts: 99}}]}
",
    );
    assert_eq!(e.path, "httpRoutes[demo/bad].rules[1].retry.attempts");
}
