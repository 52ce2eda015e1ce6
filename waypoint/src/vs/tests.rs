//! The VirtualService translation's tables: order and Istio's meanings, subsets, rewrites
//! and redirects, and every refusal with its field.

use super::*;
use crate::route::RouteTable;

fn resolve(ns: &str, host: &str) -> Option<ServiceRef> {
    let name = host.split('.').next()?;
    ["reviews", "reviews-v2", "shadow"]
        .contains(&name)
        .then(|| ServiceRef::new(ns, name))
}

fn specs(yaml: &str) -> Vec<VirtualServiceSpec> {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn get(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

const VS: &str = "
- name: reviews
  namespace: demo
  hosts: [reviews]
  http:
    - name: first
      match: [{headers: {x-a: {exact: \"1\"}}}]
      route: [{destination: {host: reviews-v2, port: {number: 80}}}]
    - name: exact
      match: [{uri: {exact: /api/x}}]
      route: [{destination: {host: reviews}}]
      fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}}
      retries: {attempts: 3, perTryTimeout: 200ms, retryOn: \"5xx,refused-stream,unavailable,503\"}
    - name: prefix
      match: [{uri: {prefix: /api}, method: {exact: GET}}]
      route:
        - {destination: {host: reviews}, weight: 90}
        - {destination: {host: reviews-v2}, weight: 10}
      timeout: 2s
      fault: {abort: {httpStatus: 418, percentage: {value: 5}}}
      mirror: {host: shadow}
      mirrorPercentage: {value: 20}
      headers: {request: {set: {x-route: prefix}, remove: [x-secret]}, response: {add: {x-by: vs}}}
    - route: [{destination: {host: reviews}}]
";

#[test]
fn entries_keep_their_order_and_istio_meanings() {
    let routes = to_http_routes(&specs(VS), &resolve, &DestinationRules::default()).unwrap();
    assert_eq!(routes.len(), 1);
    assert!(routes[0].ordered);
    let t = RouteTable::build(&routes).unwrap();
    let svc = ServiceRef::new("demo", "reviews");
    let pick = |path: &str, h: &[(&str, &str)]| {
        t.select(&svc, 80, &get(path, h))
            .unwrap()
            .unwrap()
            .name
            .to_string()
    };
    // First match wins, even over a more specific later entry.
    assert_eq!(pick("/api/x", &[("x-a", "1")]), "first");
    assert_eq!(pick("/api/x", &[]), "exact");
    // Istio's prefix is a string prefix, not a path segment.
    assert_eq!(pick("/apiv2", &[]), "prefix");
    assert_eq!(pick("/other", &[]), "3");
    let rule = t.select(&svc, 80, &get("/apiv2", &[])).unwrap().unwrap();
    assert_eq!(rule.backends.len(), 2);
    assert_eq!(
        rule.request_timeout,
        Some(std::time::Duration::from_secs(2))
    );
    assert!(
        rule.mirror
            .as_ref()
            .is_some_and(|m| (m.fraction - 0.2).abs() < 1e-9)
    );
    assert!(rule.fault.as_ref().is_some_and(|f| f.abort.is_some()));
    assert!(!rule.request_headers.is_empty() && !rule.response_headers.is_empty());
    let retry = t
        .select(&svc, 80, &get("/api/x", &[]))
        .unwrap()
        .unwrap()
        .retry
        .clone()
        .unwrap();
    assert_eq!(retry.attempts, 3);
    assert!(retry.on_5xx && retry.on_refused_stream && !retry.on_reset);
    assert!(!retry.on_connect_failure);
    assert_eq!(retry.grpc_statuses, vec![14], "`unavailable`");
    // A gRPC abort: 200 on the wire, UNAVAILABLE in grpc-status.
    let exact = t.select(&svc, 80, &get("/api/x", &[])).unwrap().unwrap();
    assert_eq!(
        exact.fault.as_ref().and_then(|f| f.abort),
        Some((
            crate::route::Abort {
                status: http::StatusCode::OK,
                grpc_status: Some(14)
            },
            0.5
        ))
    );
    assert_eq!(retry.codes, vec![503]);
    assert_eq!(
        retry.per_try_timeout,
        Some(std::time::Duration::from_millis(200))
    );
}

#[test]
fn subsets_come_from_destination_rules() {
    let drs: Vec<crate::dr::DestinationRuleSpec> = serde_yaml::from_str(
            "[{name: reviews, namespace: demo, host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}]",
        )
        .unwrap();
    let drs = DestinationRules::build(&drs, &resolve).unwrap();
    let yaml = "
- name: reviews
  namespace: demo
  hosts: [reviews]
  http:
    - route:
        - {destination: {host: reviews, subset: v1}, weight: 75}
        - {destination: {host: reviews, subset: v2}, weight: 25}
      mirror: {host: reviews, subset: v2}
";
    let routes = to_http_routes(&specs(yaml), &resolve, &drs).unwrap();
    let t = RouteTable::build(&routes).unwrap();
    let svc = ServiceRef::new("demo", "reviews");
    let rule = t.select(&svc, 80, &get("/", &[])).unwrap().unwrap();
    let subsets: Vec<_> = rule.backends.iter().map(|b| b.subset.as_deref()).collect();
    assert_eq!(subsets, [Some("v1"), Some("v2")]);
    assert_eq!(
        rule.mirror
            .as_ref()
            .and_then(|m| m.backend.subset.as_deref()),
        Some("v2")
    );
    let e = to_http_routes(
            &specs(
                "- {name: v, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v3}}]}]}",
            ),
            &resolve,
            &drs,
        )
        .unwrap_err();
    assert_eq!(
        e.path,
        "virtualServices[demo/v].http[0].route[0].destination.subset"
    );
    assert!(
        e.message.contains("demo/reviews has no subset \"v3\""),
        "{e}"
    );
}

#[test]
fn unsupported_and_unknown_things_are_refused_with_their_field() {
    let cases = [
        (
            "- {name: v, namespace: demo, hosts: [nowhere], http: []}",
            "hosts[0]",
        ),
        (
            "- {name: v, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}}]}]}",
            "destination.subset",
        ),
        (
            "- {name: v, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: elsewhere}}]}]}",
            "destination.host",
        ),
        (
            "- {name: v, namespace: demo, hosts: [reviews], http: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: reviews}}]}]}",
            "match[0].uri",
        ),
        (
            "- {name: v, namespace: demo, hosts: [reviews], http: [{match: [{method: {regex: G.*}}], route: [{destination: {host: reviews}}]}]}",
            "match[0].method",
        ),
        (
            "- {name: v, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {retryOn: \"sometimes\"}}]}",
            "retries.retryOn",
        ),
        (
            "- {name: v, namespace: demo, hosts: [reviews], http: [{route: []}]}",
            "http[0].route",
        ),
        (
            "- {name: v, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirrorPercentage: {value: 5}}]}",
            "mirrorPercentage",
        ),
        ("- {name: v, namespace: demo, hosts: [], http: []}", "hosts"),
    ];
    for (yaml, field) in cases {
        let e = to_http_routes(&specs(yaml), &resolve, &DestinationRules::default()).unwrap_err();
        assert!(e.path.ends_with(field), "{yaml}: {e}");
        assert!(e.path.starts_with("virtualServices[demo/v]"), "{e}");
    }
    // Keys Istio has and this does not take are serde errors, not silent.
    assert!(
        serde_yaml::from_str::<Vec<VirtualServiceSpec>>(
            "- {name: v, namespace: demo, hosts: [reviews], gateways: [mesh]}"
        )
        .is_err()
    );
}

#[test]
fn rewrite_and_redirect_keep_istio_meanings() {
    let yaml = "
- name: v
  namespace: demo
  hosts: [reviews]
  http:
    - name: moved
      match: [{uri: {exact: /old}}]
      redirect: {uri: /new, authority: reviews.example}
    - name: prefixed
      match: [{uri: {prefix: /api}}, {uri: {exact: /health}}]
      rewrite: {uri: /v2, authority: reviews-internal}
      route: [{destination: {host: reviews}}]
    - name: rest
      rewrite: {uri: /base/}
      route: [{destination: {host: reviews}}]
";
    let routes = to_http_routes(&specs(yaml), &resolve, &DestinationRules::default()).unwrap();
    let t = RouteTable::build(&routes).unwrap();
    let svc = ServiceRef::new("demo", "reviews");
    let rule = |path: &str| t.select(&svc, 80, &get(path, &[])).unwrap().unwrap();
    // Redirect: 301 by default, the whole path replaced.
    let r = rule("/old");
    let redirect = r.redirect.as_ref().unwrap();
    assert_eq!(redirect.status.as_u16(), 301);
    let parts = get("/old?x=1", &[("host", "reviews")]);
    assert_eq!(
        redirect.location(&parts, 80),
        "http://reviews.example/new?x=1"
    );
    // Rewrite after a string prefix: only the prefix; after an exact match: the path.
    let path_of = |p: &str| {
        let r = rule(p);
        let rw = r.rewrite.as_ref().unwrap();
        assert_eq!(rw.host.as_ref().unwrap(), "reviews-internal");
        rw.path.as_ref().unwrap().apply(p)
    };
    assert_eq!(path_of("/apiv1/users"), "/v2v1/users");
    assert_eq!(path_of("/health"), "/v2");
    // No uri match: Envoy's `/` prefix is what is replaced.
    let r = rule("/x/y");
    assert_eq!(
        r.rewrite
            .as_ref()
            .unwrap()
            .path
            .as_ref()
            .unwrap()
            .apply("/x/y"),
        "/base/x/y"
    );
    // A redirect with a route, or neither, is refused with the field named.
    for (yaml, field) in [
        (
            "- {name: v, namespace: demo, hosts: [reviews], http: [{redirect: {uri: /a}, route: [{destination: {host: reviews}}]}]}",
            "http[0].route",
        ),
        (
            "- {name: v, namespace: demo, hosts: [reviews], http: [{redirect: {uri: /a, redirectCode: 200}}]}",
            "requestRedirect.statusCode",
        ),
    ] {
        let e = to_http_routes(&specs(yaml), &resolve, &DestinationRules::default())
            .and_then(|r| RouteTable::build(&r).map(|_| ()).map(|_| r))
            .unwrap_err();
        assert!(e.path.ends_with(field), "{yaml}: {e}");
    }
}

#[test]
fn uri_regex_rewrite_replaces_every_match_as_envoy() {
    let yaml = r#"
- name: v
  namespace: demo
  hosts: [reviews]
  http:
    - match: [{uri: {prefix: /service}}]
      rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "\\2/instance/\\1"}}
      route: [{destination: {host: reviews}}]
    - rewrite: {uriRegexRewrite: {match: "o", rewrite: "0$"}}
      route: [{destination: {host: reviews}}]
"#;
    let routes = to_http_routes(&specs(yaml), &resolve, &DestinationRules::default()).unwrap();
    let t = RouteTable::build(&routes).unwrap();
    let svc = ServiceRef::new("demo", "reviews");
    let apply = |p: &str| {
        let r = t.select(&svc, 80, &get(p, &[])).unwrap().unwrap();
        r.rewrite.as_ref().unwrap().path.as_ref().unwrap().apply(p)
    };
    // Envoy's documented example: groups swapped.
    assert_eq!(apply("/service/foo/v1/api"), "/v1/api/instance/foo");
    // Every match, and a `$` is literal.
    assert_eq!(apply("/foo/boo"), "/f0$0$/b0$0$");
    for (rewrite, field) in [
        (
            "{uri: /a, uriRegexRewrite: {match: a, rewrite: b}}",
            "rewrite.uriRegexRewrite",
        ),
        (
            "{uriRegexRewrite: {match: \"(\", rewrite: b}}",
            "rewrite.uriRegexRewrite.match",
        ),
        (
            "{uriRegexRewrite: {match: \"(a)\", rewrite: \"/\\\\2\"}}",
            "rewrite.uriRegexRewrite.rewrite",
        ),
        (
            "{uriRegexRewrite: {match: a, rewrite: \"/x?y\"}}",
            "rewrite.uriRegexRewrite.rewrite",
        ),
    ] {
        let yaml = format!(
            "- {{name: v, namespace: demo, hosts: [reviews], http: [{{rewrite: {rewrite}, route: [{{destination: {{host: reviews}}}}]}}]}}"
        );
        let e = to_http_routes(&specs(&yaml), &resolve, &DestinationRules::default()).unwrap_err();
        assert_eq!(
            e.path,
            format!("virtualServices[demo/v].http[0].{field}"),
            "{e}"
        );
    }
}

#[test]
fn a_destination_keeps_its_own_headers() {
    let vs = "
- name: reviews
  namespace: demo
  hosts: [reviews]
  http:
    - route:
        - destination: {host: reviews}
          weight: 50
          headers: {request: {set: {x-version: v1}}, response: {remove: [x-internal]}}
        - destination: {host: reviews-v2}
          weight: 50
      headers: {request: {set: {x-version: entry}}}
";
    let routes = to_http_routes(&specs(vs), &resolve, &DestinationRules::default()).unwrap();
    let t = RouteTable::build(&routes).unwrap();
    let rule = t
        .select(&ServiceRef::new("demo", "reviews"), 80, &get("/", &[]))
        .unwrap()
        .unwrap();
    let own = rule.backends[0]
        .edits
        .as_ref()
        .expect("the destination's headers");
    let mut h = http::HeaderMap::new();
    own.request.apply(&mut h);
    assert_eq!(h["x-version"], "v1");
    let mut resp = http::HeaderMap::new();
    resp.insert("x-internal", http::HeaderValue::from_static("1"));
    own.response.apply(&mut resp);
    assert!(resp.is_empty());
    assert!(rule.backends[1].edits.is_none());
    // The entry's own edits apply after (and so win).
    rule.request_headers.apply(&mut h);
    assert_eq!(h["x-version"], "entry");
}

#[test]
fn a_cors_policy_is_read_with_istio_meanings_and_checked_by_field() {
    let vs = |cors: &str| {
        format!(
            "
- name: reviews
  namespace: demo
  hosts: [reviews]
  http:
    - route: [{{destination: {{host: reviews}}}}]
      corsPolicy: {cors}
"
        )
    };
    let routes = to_http_routes(
        &specs(&vs(
            "{allowOrigin: [\"https://a.test\"], allowMethods: [GET], maxAge: 90s, unmatchedPreflights: IGNORE}",
        )),
        &resolve,
        &DestinationRules::default(),
    )
    .unwrap();
    assert_eq!(
        routes[0].rules[0].cors,
        Some(crate::route::CorsSpec {
            allow_origins: vec![crate::route::OriginSpec::Exact("https://a.test".into())],
            allow_methods: vec!["GET".into()],
            max_age: Some(90),
            forward_unmatched_preflights: false,
            ..Default::default()
        })
    );
    let t = RouteTable::build(&routes).unwrap();
    let rule = t
        .select(&ServiceRef::new("demo", "reviews"), 80, &get("/", &[]))
        .unwrap()
        .unwrap();
    assert!(rule.cors.is_some());
    for (cors, field) in [
        ("{allowOrigins: [{exact: a, prefix: b}]}", "allowOrigins[0]"),
        (
            "{allowOrigins: [{exact: a}, {prefix: \"\"}]}",
            "allowOrigins[1]",
        ),
        (
            "{allowOrigins: [{exact: a}, {regex: \"(\"}]}",
            "allowOrigins[1].regex",
        ),
        ("{unmatchedPreflights: DROP}", "unmatchedPreflights"),
        ("{maxAge: soon}", "maxAge"),
    ] {
        let e =
            to_http_routes(&specs(&vs(cors)), &resolve, &DestinationRules::default()).unwrap_err();
        assert_eq!(
            e.path,
            format!("virtualServices[demo/reviews].http[0].corsPolicy.{field}"),
            "{cors}: {e}"
        );
    }
}

#[test]
fn one_destination_is_counted_as_istiod_counts_it() {
    let rule_of = |route: &str| {
        let vs = format!(
            "
- name: reviews
  namespace: demo
  hosts: [reviews]
  http:
    - route: {route}
      headers: {{request: {{set: {{x-v: entry}}}}}}
"
        );
        let routes = to_http_routes(&specs(&vs), &resolve, &DestinationRules::default()).unwrap();
        let t = RouteTable::build(&routes).unwrap();
        t.select(&ServiceRef::new("demo", "reviews"), 80, &get("/", &[]))
            .unwrap()
            .unwrap()
    };
    // Two listed, one with no weight: still a weighted split in istiod (the entry's win).
    let r = rule_of(
        "[{destination: {host: reviews}, weight: 100, headers: {request: {set: {x-v: a}}}}, {destination: {host: reviews-v2}, weight: 0}]",
    );
    assert!(!r.backend_edits_last());
    // One listed: its edits come last, and a weight of 0 does not stop it.
    let r = rule_of("[{destination: {host: reviews}, weight: 0}]");
    assert!(r.backend_edits_last());
    assert!(r.pick_for(&ServiceRef::new("demo", "reviews"), 7).is_some());
}

/// A host the registry was not asked about (from the cluster: a ServiceEntry's) stays a
/// hostname: the entries apply to the Service that has it, found when a request comes, and
/// a destination by hostname goes there.
#[test]
fn a_host_that_stays_a_hostname_routes_by_hostname() {
    let resolve = |ns: &str, host: &str| match host {
        "api.example.com" | "mirror.example.com" => Some(ServiceRef::by_host(host)),
        _ => resolve(ns, host),
    };
    let routes = to_http_routes(
        &specs(
            "
- name: egress
  namespace: demo
  hosts: [api.example.com]
  http:
    - route: [{destination: {host: mirror.example.com, port: {number: 443}}}]
",
        ),
        &resolve,
        &DestinationRules::default(),
    )
    .unwrap();
    let t = RouteTable::build(&routes).unwrap();
    // The ServiceEntry's Service, by its name: no route by that name, its hostname has one.
    let se = ServiceRef::new("egress", "api");
    assert!(t.select(&se, 443, &get("/", &[])).unwrap().is_none());
    let rule = t
        .select_for(&se, "api.example.com", 443, &get("/", &[]))
        .unwrap()
        .unwrap();
    let b = rule.pick_for(&se, 0).unwrap();
    assert_eq!(b.service, ServiceRef::by_host("mirror.example.com"));
    assert_eq!(b.port, Some(443));
    // Another host of the mesh is not routed by it.
    assert!(
        t.select_for(&se, "other.example.com", 443, &get("/", &[]))
            .unwrap()
            .is_none()
    );
}

/// A Service with routes by name (an HTTPRoute on a ServiceEntry) and by hostname (a
/// VirtualService on one of its hosts) takes both, ranked as one list: the VirtualService's
/// entries first, then the HTTPRoute's by precedence; a request neither takes is a 404.
#[test]
fn routes_by_name_and_by_hostname_rank_as_one_list() {
    let resolve = |_: &str, host: &str| Some(ServiceRef::by_host(host));
    let mut routes = to_http_routes(
        &specs(
            "
- name: egress
  namespace: demo
  hosts: [api.example.com]
  http:
    - name: vs
      match: [{uri: {prefix: /v}}]
      route: [{destination: {host: api.example.com}}]
",
        ),
        &resolve,
        &DestinationRules::default(),
    )
    .unwrap();
    let http: Vec<crate::route::HttpRouteSpec> = serde_yaml::from_str(
        "
- name: by-name
  namespace: demo
  parentRefs: [{kind: ServiceEntry, group: networking.istio.io, name: api}]
  rules:
    - {name: exact, matches: [{path: {type: Exact, value: /v/exact}}]}
    - {name: other, matches: [{path: {value: /other}}]}
",
    )
    .unwrap();
    routes.extend(http);
    let t = RouteTable::build(&routes).unwrap();
    let se = ServiceRef::new("demo", "api");
    let pick = |path: &str| {
        t.select_for(&se, "api.example.com", 443, &get(path, &[]))
            .map(|r| r.map(|r| r.name.to_string()))
    };
    // The VirtualService's entry first, though the HTTPRoute's exact match is more precise.
    assert_eq!(pick("/v/exact"), Ok(Some("vs".into())));
    assert_eq!(pick("/other"), Ok(Some("other".into())));
    assert_eq!(pick("/none"), Err(()));
    // Another host of the entry: the name's routes only.
    assert_eq!(
        t.select_for(&se, "b.example.com", 443, &get("/v/exact", &[]))
            .map(|r| r.map(|r| r.name.to_string())),
        Ok(Some("exact".into()))
    );
}
