//! GRPCRoutes: the path each method match stands for, their rank (istiod's, shared with
//! HTTPRoutes), the fields a GRPCRoute refuses (named as its own), and GRPCRoutes beside
//! HTTPRoutes.
use super::*;

fn grpc_specs(yaml: &str) -> Vec<GrpcRouteSpec> {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{yaml}"))
}

fn grpc_table(yaml: &str) -> RouteTable {
    let specs = grpc_to_http_routes(&grpc_specs(yaml)).unwrap_or_else(|e| panic!("{e}"));
    RouteTable::build(&specs).unwrap_or_else(|e| panic!("build failed: {e}\n{yaml}"))
}

/// The error of a one-rule GRPCRoute `demo/g` whose rule is `rule` (a YAML flow mapping),
/// from the translation or the build.
fn grpc_rule_err(rule: &str) -> RouteError {
    let yaml =
        format!("- {{name: g, namespace: demo, parentRefs: [{{name: echo}}], rules: [{rule}]}}");
    match grpc_to_http_routes(&grpc_specs(&yaml)).and_then(|s| RouteTable::build(&s)) {
        Ok(_) => panic!("accepted: {rule}"),
        Err(e) => e,
    }
}

/// A call's path and metadata, and the rule that should take it.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

fn call(path: &str, headers: &[(&str, &str)]) -> Parts {
    let mut h = vec![("content-type", "application/grpc")];
    h.extend_from_slice(headers);
    req("POST", path, &h)
}

#[test]
fn method_matches_stand_for_paths_as_istiod_translates_them() {
    let specs = grpc_specs(
        r#"
- name: g
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - matches:
    - method: {service: pkg.Echo, method: Say}
    - method: {service: pkg.Echo}
    - method: {method: Say}
    - method: {type: RegularExpression, service: "pkg\\..*", method: "Get.*"}
    - method: {type: RegularExpression, service: "a|b"}
    - method: {type: RegularExpression, method: "Get|Put"}
    - headers: [{name: x-env, value: canary}]
"#,
    );
    let http = grpc_to_http_routes(&specs).unwrap();
    let paths: Vec<Option<(String, String)>> = http[0].rules[0]
        .matches
        .iter()
        .map(|m| {
            m.path
                .as_ref()
                .map(|p| (p.kind.clone().unwrap(), p.value.clone()))
        })
        .collect();
    let p = |k: &str, v: &str| Some((k.to_string(), v.to_string()));
    assert_eq!(
        paths,
        [
            p("Exact", "/pkg.Echo/Say"),
            p("PathPrefix", "/pkg.Echo/"),
            p("RegularExpression", "/[^/]+/Say"),
            p("RegularExpression", "/(?:pkg\\..*)/(?:Get.*)"),
            p("RegularExpression", "/(?:a|b)/.+"),
            p("RegularExpression", "/[^/]+/(?:Get|Put)"),
            None,
        ]
    );
    assert!(http[0].grpc && !http[0].ordered);
    assert_eq!(http[0].rules[0].matches[6].headers.len(), 1);
    assert!(http[0].rules[0].matches[6].no_path && !http[0].rules[0].matches[0].no_path);
}

#[test]
fn grpc_matches_rank_exact_then_service_then_regex_then_metadata() {
    // Written from the least specific to the most: the file's order must not decide.
    let t = grpc_table(
        r#"
- name: g
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: any
  - name: canary
    matches: [{headers: [{name: x-canary, value: "yes"}]}]
  - name: ping
    matches: [{method: {method: Ping}}]
  - name: ping-canary
    matches: [{method: {method: Ping}, headers: [{name: x-canary, value: "yes"}]}]
  - name: service
    matches: [{method: {service: pkg.Echo}}]
  - name: say
    matches: [{method: {service: pkg.Echo, method: Say}}]
  - name: regex
    matches: [{method: {type: RegularExpression, service: "pkg\\.(Admin|Ops)", method: "Get.*"}}]
"#,
    );
    let cases: [Case<'_>; 9] = [
        ("/pkg.Echo/Say", &[], "say"),
        ("/pkg.Echo/Other", &[], "service"),
        ("/pkg.Echo/Ping", &[("x-canary", "yes")], "service"),
        ("/pkg.Health/Ping", &[], "ping"),
        ("/pkg.Health/Ping", &[("x-canary", "yes")], "ping-canary"),
        ("/pkg.Health/Check", &[("x-canary", "yes")], "canary"),
        ("/pkg.Ops/GetAll", &[], "regex"),
        // Whole names only: `pkg.Opsx` is not `pkg.Ops`.
        ("/pkg.Opsx/GetAll", &[], "any"),
        ("/pkg.Health/Check", &[], "any"),
    ];
    for (path, headers, want) in cases {
        assert_eq!(
            pick_name(&t, &call(path, headers)),
            some(want),
            "{path} {headers:?}"
        );
    }
}

#[test]
fn a_call_no_rule_takes_is_not_found() {
    let t = grpc_table(
        "- {name: g, namespace: demo, parentRefs: [{name: echo}], rules: [{matches: [{method: {service: pkg.Echo}}]}]}",
    );
    assert_eq!(pick_name(&t, &call("/pkg.Other/Say", &[])), some("404"));
    // The service match is `/pkg.Echo/`: `pkg.EchoV2` is another service.
    assert_eq!(pick_name(&t, &call("/pkg.EchoV2/Say", &[])), some("404"));
    assert_eq!(pick_name(&t, &call("/pkg.Echo/Say", &[])), some("0"));
}

#[test]
fn errors_name_the_grpc_routes_own_fields() {
    let cases = [
        ("{matches: [{method: {}}]}", ".matches[0].method"),
        (
            "{matches: [{method: {service: \"\", method: Say}}]}",
            ".matches[0].method.service",
        ),
        // A value that would close the anchoring group: refused, not matching everything.
        (
            "{matches: [{method: {type: RegularExpression, service: \"a)|(?:/b\", method: c}}]}",
            ".matches[0].method.service",
        ),
        (
            "{matches: [{headers: [{type: RegularExpression, name: x, value: \"canary)|(?:.*\"}]}]}",
            ".matches[0].headers[0].value",
        ),
        // Each part compiles, the joined path does not (one group name twice).
        (
            "{matches: [{method: {type: RegularExpression, service: \"(?P<n>a)\", method: \"(?P<n>b)\"}}]}",
            ".matches[0].method",
        ),
        (
            "{matches: [{method: {service: \"pkg/Echo\"}}]}",
            ".matches[0].method.service",
        ),
        (
            "{matches: [{method: {service: \"1pkg.Echo\"}}]}",
            ".matches[0].method.service",
        ),
        (
            "{matches: [{method: {method: \"Say.It\"}}]}",
            ".matches[0].method.method",
        ),
        (
            "{matches: [{method: {type: RegularExpression, method: \"(\"}}]}",
            ".matches[0].method.method",
        ),
        (
            "{matches: [{method: {type: Prefix, service: pkg.Echo}}]}",
            ".matches[0].method.type",
        ),
        (
            "{filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]}",
            ".filters[0].type",
        ),
        (
            "{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]}",
            ".filters[0].type",
        ),
        // Checked by the HTTPRoute build, named as the GRPCRoute's.
        (
            "{matches: [{headers: [{name: \"bad name\", value: x}]}]}",
            ".matches[0].headers[0].name",
        ),
        (
            "{backendRefs: [{name: b, weight: 0}, {name: c, port: 0}]}",
            ".backendRefs[1].port",
        ),
    ];
    for (rule, suffix) in cases {
        let e = grpc_rule_err(rule);
        assert_eq!(
            e.path,
            format!("grpcRoutes[demo/g].rules[0]{suffix}"),
            "{rule}: {e}"
        );
        assert!(!e.message.is_empty(), "{e}");
    }
    // Fields a GRPCRoute does not have are refused when read, by name.
    for rule in [
        "{timeouts: {request: 1s}}",
        "{retry: {attempts: 1}}",
        "{matches: [{path: {value: /x}}]}",
    ] {
        let yaml = format!(
            "- {{name: g, namespace: demo, parentRefs: [{{name: echo}}], rules: [{rule}]}}"
        );
        let e = serde_yaml::from_str::<Vec<GrpcRouteSpec>>(&yaml).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{rule}: {e}");
    }
}

#[test]
fn a_grpc_route_may_share_an_http_routes_name() {
    let mut specs = specs(
        "- {name: r, namespace: demo, parentRefs: [{name: echo}], rules: [{matches: [{path: {value: /web}}]}]}",
    );
    specs.extend(
        grpc_to_http_routes(&grpc_specs(
            "- {name: r, namespace: demo, parentRefs: [{name: echo}], rules: [{name: rpc, matches: [{method: {service: pkg.Echo}}]}]}",
        ))
        .unwrap(),
    );
    let t = RouteTable::build(&specs).unwrap();
    assert_eq!(pick_name(&t, &get("/web/x")), some("0"));
    assert_eq!(pick_name(&t, &call("/pkg.Echo/Say", &[])), some("rpc"));
    // Two GRPCRoutes of one name are still one too many.
    let twice = grpc_to_http_routes(&grpc_specs(
        "- {name: r, namespace: demo, parentRefs: [{name: echo}]}\n- {name: r, namespace: demo, parentRefs: [{name: echo}]}",
    ))
    .unwrap();
    let e = RouteTable::build(&twice).unwrap_err();
    assert_eq!(e.path, "grpcRoutes[demo/r]", "{e}");
}

#[test]
fn grpc_and_http_routes_on_one_service_rank_together() {
    let mut specs = specs(
        "- {name: web, namespace: demo, parentRefs: [{name: echo}], rules: [
             {name: http-prefix, matches: [{path: {value: /pkg.Echo}}]},
             {name: http-regex, matches: [{path: {type: RegularExpression, value: /api/.*}}]}]}",
    );
    specs.extend(
        grpc_to_http_routes(&grpc_specs(
            r#"
- name: rpc
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: say
    matches: [{method: {service: pkg.Echo, method: Say}}]
  - name: any-echo
    matches: [{method: {type: RegularExpression, service: "pkg\\.Echo", method: ".*"}}]
  - name: catch-all
"#,
        ))
        .unwrap(),
    );
    let t = RouteTable::build(&specs).unwrap();
    // An exact method beats an HTTPRoute's prefix, which beats a regular expression.
    assert_eq!(pick_name(&t, &call("/pkg.Echo/Say", &[])), some("say"));
    assert_eq!(
        pick_name(&t, &call("/pkg.Echo/Other", &[])),
        some("http-prefix")
    );
    // An HTTPRoute's regex beats a GRPCRoute rule without matches (no path: last).
    assert_eq!(pick_name(&t, &get("/api/x")), some("http-regex"));
    assert_eq!(pick_name(&t, &get("/elsewhere")), some("catch-all"));
}

#[test]
fn a_grpc_backend_ref_carries_its_own_header_edits() {
    let t = grpc_table(
        "- name: g
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - backendRefs:
    - name: v2
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: v2}]}}]",
    );
    let rule = t
        .select(&echo(), 80, &call("/pkg.Echo/Say", &[]))
        .unwrap()
        .unwrap();
    let own = rule.backends[0]
        .edits
        .as_ref()
        .expect("the backendRef's edits");
    let mut h = http::HeaderMap::new();
    own.request.apply(&mut h);
    assert_eq!(h["x-backend"], "v2");
    // As istiod: header modifiers only.
    let e = grpc_rule_err(
        "{backendRefs: [{name: v2, filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m}}}]}]}",
    );
    assert!(e.path.ends_with(".backendRefs[0].filters[0].type"), "{e}");
}

/// A GRPCRoute's `sessionPersistence` is taken and not applied, as istiod takes it.
#[test]
fn session_persistence_is_taken_and_not_applied() {
    let t = grpc_table(
        "- {name: g, namespace: demo, parentRefs: [{name: echo}], rules: [{matches: [{method: {service: shop.Orders}}], sessionPersistence: {type: Header, sessionName: x-session}}]}",
    );
    let picked = t.select(&echo(), 80, &call("/shop.Orders/Create", &[]));
    assert!(picked.unwrap().is_some());
}
