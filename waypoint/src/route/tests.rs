//! Unit tests for route parsing, compiling and selection.

use super::*;
use compile::istio_default_retry;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------
// Helpers.

fn specs(yaml: &str) -> Vec<HttpRouteSpec> {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{yaml}"))
}

fn table(yaml: &str) -> RouteTable {
    RouteTable::build(&specs(yaml)).unwrap_or_else(|e| panic!("build failed: {e}\n{yaml}"))
}

fn build_err(yaml: &str) -> RouteError {
    match RouteTable::build(&specs(yaml)) {
        Ok(_) => panic!("build succeeded but should not have:\n{yaml}"),
        Err(e) => e,
    }
}

/// One route `demo/r` on Service `demo/echo` with the given rule, written as a YAML flow
/// mapping (`{retry: {attempts: 3}}`).
fn one_rule_yaml(rule: &str) -> String {
    format!(
        "
- name: r
  namespace: demo
  parentRefs: [{{name: echo}}]
  rules: [{rule}]
"
    )
}

/// The compiled rule of [`one_rule_yaml`] (its rule must match `GET /`).
fn one_rule(rule: &str) -> Arc<Rule> {
    let t = table(&one_rule_yaml(rule));
    t.select(&echo(), 80, &get("/"))
        .expect("a rule matched")
        .expect("the Service has routes")
}

fn one_rule_err(rule: &str) -> RouteError {
    build_err(&one_rule_yaml(rule))
}

/// Asserts `e` names the field `httpRoutes[demo/r].rules[0]<suffix>`.
#[track_caller]
fn assert_rule_err(e: &RouteError, suffix: &str) {
    assert_eq!(
        e.path,
        format!("httpRoutes[demo/r].rules[0]{suffix}"),
        "{e}"
    );
    assert!(!e.message.is_empty(), "{e}");
}

fn echo() -> ServiceRef {
    ServiceRef::new("demo", "echo")
}

fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn get(uri: &str) -> Parts {
    req("GET", uri, &[])
}

/// The name of the rule `t` picks for `parts` on `demo/echo:80`; `None` for `Ok(None)`,
/// `"404"` for `Err(())`.
fn pick_name(t: &RouteTable, parts: &Parts) -> Option<String> {
    pick_name_on(t, 80, parts)
}

fn pick_name_on(t: &RouteTable, port: u16, parts: &Parts) -> Option<String> {
    match t.select(&echo(), port, parts) {
        Ok(Some(rule)) => Some(rule.name.to_string()),
        Ok(None) => None,
        Err(()) => Some("404".to_string()),
    }
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// A rule with the given backend weights, to `demo/b0`, `demo/b1`, ...
fn weighted(weights: &[u32]) -> Arc<Rule> {
    let refs: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{{name: b{i}, weight: {w}}}"))
        .collect();
    one_rule(&format!("{{backendRefs: [{}]}}", refs.join(", ")))
}

/// How many of `n` evenly spread `r` values each backend gets.
fn spread(rule: &Rule, n: u64) -> (Vec<u64>, u64) {
    let mut counts = vec![0; rule.backends.len()];
    let mut none = 0;
    let step = u64::MAX / n;
    for i in 0..n {
        match rule.pick(i * step) {
            Some(b) => {
                let at = rule
                    .backends
                    .iter()
                    .position(|x| std::ptr::eq(x, b))
                    .unwrap();
                counts[at] += 1;
            }
            None => none += 1,
        }
    }
    (counts, none)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

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
            },
            Backend {
                service: ServiceRef::new("canary", "echo-v2"),
                subset: None,
                port: Some(8080),
                weight: 10,
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
// Precedence.

#[test]
fn exact_beats_prefix() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - {name: prefix, matches: [{path: {type: PathPrefix, value: /foo}}]}
  - {name: exact, matches: [{path: {type: Exact, value: /foo}}]}
",
    );
    assert_eq!(pick_name(&t, &get("/foo")), some("exact"));
    assert_eq!(pick_name(&t, &get("/foo/bar")), some("prefix"));
    // Exact is exact: no trailing slash, no query influence.
    assert_eq!(pick_name(&t, &get("/foo/")), some("prefix"));
    assert_eq!(pick_name(&t, &get("/foo?x=1")), some("exact"));
}

#[test]
fn exact_beats_a_longer_prefix() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - {name: prefix, matches: [{path: {value: /a/very/long/prefix}}]}
  - {name: exact, matches: [{path: {type: Exact, value: /a/very/long/prefix}}]}
",
    );
    assert_eq!(pick_name(&t, &get("/a/very/long/prefix")), some("exact"));
}

#[test]
fn longer_prefix_beats_shorter() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - {name: root, matches: [{path: {value: /}}]}
  - {name: api, matches: [{path: {value: /api}}]}
  - {name: v1, matches: [{path: {value: /api/v1}}]}
",
    );
    assert_eq!(pick_name(&t, &get("/")), some("root"));
    assert_eq!(pick_name(&t, &get("/other")), some("root"));
    assert_eq!(pick_name(&t, &get("/api")), some("api"));
    assert_eq!(pick_name(&t, &get("/api/v2")), some("api"));
    assert_eq!(pick_name(&t, &get("/api/v1")), some("v1"));
    assert_eq!(pick_name(&t, &get("/api/v1/users")), some("v1"));
    assert_eq!(pick_name(&t, &get("/api/v10")), some("api"));
}

#[test]
fn longer_prefix_wins_across_routes() {
    // The longer prefix is in the later route: precedence is global, not per route.
    let t = table(
        "
- name: first
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: short, matches: [{path: {value: /api}}]}]
- name: second
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: long, matches: [{path: {value: /api/v1}}]}]
",
    );
    assert_eq!(pick_name(&t, &get("/api/v1/x")), some("long"));
    assert_eq!(pick_name(&t, &get("/api/v2")), some("short"));
}

#[test]
fn prefix_beats_regex() {
    let t = table(
        r#"
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - {name: regex, matches: [{path: {type: RegularExpression, value: "/.*"}}]}
  - {name: prefix, matches: [{path: {type: PathPrefix, value: /api}}]}
"#,
    );
    assert_eq!(pick_name(&t, &get("/api/x")), some("prefix"));
    assert_eq!(pick_name(&t, &get("/api")), some("prefix"));
    assert_eq!(pick_name(&t, &get("/other")), some("regex"));
}

#[test]
fn method_match_beats_none() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - {name: any, matches: [{path: {value: /api}}]}
  - {name: post, matches: [{path: {value: /api}, method: POST}]}
",
    );
    assert_eq!(pick_name(&t, &req("POST", "/api", &[])), some("post"));
    assert_eq!(pick_name(&t, &req("GET", "/api", &[])), some("any"));
    assert_eq!(pick_name(&t, &req("DELETE", "/api/x", &[])), some("any"));
}

#[test]
fn path_outranks_method() {
    // A longer prefix without a method beats a shorter one with a method.
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - {name: post, matches: [{path: {value: /api}, method: POST}]}
  - {name: long, matches: [{path: {value: /api/v1}}]}
",
    );
    assert_eq!(pick_name(&t, &req("POST", "/api/v1", &[])), some("long"));
    assert_eq!(pick_name(&t, &req("POST", "/api/v2", &[])), some("post"));
}

#[test]
fn more_header_matches_beat_fewer() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: one
    matches: [{headers: [{name: x-a, value: '1'}]}]
  - name: two
    matches: [{headers: [{name: x-a, value: '1'}, {name: x-b, value: '2'}]}]
",
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-a", "1"), ("x-b", "2")])),
        some("two")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-a", "1")])),
        some("one")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-a", "1"), ("x-b", "3")])),
        some("one")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-b", "2")])),
        some("404")
    );
}

#[test]
fn method_outranks_headers_and_headers_outrank_query() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: query
    matches: [{queryParams: [{name: q, value: '1'}, {name: p, value: '2'}]}]
  - name: headers
    matches: [{headers: [{name: x-a, value: '1'}]}]
  - name: method
    matches: [{method: GET}]
",
    );
    let all = req("GET", "/?q=1&p=2", &[("x-a", "1")]);
    assert_eq!(pick_name(&t, &all), some("method"));
    let no_get = req("PUT", "/?q=1&p=2", &[("x-a", "1")]);
    assert_eq!(pick_name(&t, &no_get), some("headers"));
    assert_eq!(pick_name(&t, &req("PUT", "/?q=1&p=2", &[])), some("query"));
}

#[test]
fn more_query_matches_beat_fewer() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: one
    matches: [{queryParams: [{name: a, value: '1'}]}]
  - name: two
    matches: [{queryParams: [{name: a, value: '1'}, {name: b, value: '2'}]}]
",
    );
    assert_eq!(pick_name(&t, &get("/?a=1&b=2")), some("two"));
    assert_eq!(pick_name(&t, &get("/?b=2&a=1")), some("two"));
    assert_eq!(pick_name(&t, &get("/?a=1")), some("one"));
}

#[test]
fn ties_keep_file_order() {
    let route = |name: &str, rule: &str| {
        format!(
            "
- name: {name}
  namespace: demo
  parentRefs: [{{name: echo}}]
  rules: [{{name: {rule}, matches: [{{path: {{value: /api}}}}]}}]
"
        )
    };
    let ab = table(&(route("a", "from-a") + &route("b", "from-b")));
    assert_eq!(pick_name(&ab, &get("/api")), some("from-a"));
    let ba = table(&(route("b", "from-b") + &route("a", "from-a")));
    assert_eq!(pick_name(&ba, &get("/api")), some("from-b"));

    // Within a route: rules, then matches, in order.
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - {name: first, matches: [{method: GET}, {method: POST}]}
  - {name: second, matches: [{method: POST}, {method: GET}]}
",
    );
    assert_eq!(pick_name(&t, &req("GET", "/", &[])), some("first"));
    assert_eq!(pick_name(&t, &req("POST", "/", &[])), some("first"));
    assert_eq!(pick_name(&t, &req("PUT", "/", &[])), some("404"));
}

#[test]
fn trailing_slash_does_not_change_prefix_length() {
    // `/api/` and `/api` are the same prefix, so the tie goes to file order.
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - {name: slash, matches: [{path: {value: /api/}}]}
  - {name: bare, matches: [{path: {value: /api}}]}
",
    );
    assert_eq!(pick_name(&t, &get("/api")), some("slash"));
    assert_eq!(pick_name(&t, &get("/api/x")), some("slash"));
}

#[test]
fn prefix_matches_whole_segments() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: foo, matches: [{path: {value: /foo}}]}]
",
    );
    assert_eq!(pick_name(&t, &get("/foo")), some("foo"));
    assert_eq!(pick_name(&t, &get("/foo/")), some("foo"));
    assert_eq!(pick_name(&t, &get("/foo/bar")), some("foo"));
    assert_eq!(pick_name(&t, &get("/foo?x=y")), some("foo"));
    assert_eq!(pick_name(&t, &get("/foobar")), some("404"));
    assert_eq!(pick_name(&t, &get("/fo")), some("404"));
    assert_eq!(pick_name(&t, &get("/")), some("404"));
    assert_eq!(pick_name(&t, &get("/bar/foo")), some("404"));

    // A prefix written with a trailing slash matches the same paths.
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: foo, matches: [{path: {value: /foo/}}]}]
",
    );
    assert_eq!(pick_name(&t, &get("/foo")), some("foo"));
    assert_eq!(pick_name(&t, &get("/foo/bar")), some("foo"));
    assert_eq!(pick_name(&t, &get("/foobar")), some("404"));
}

#[test]
fn root_prefix_and_no_match_take_everything() {
    for rule in [
        "{name: all, matches: [{path: {value: /}}]}",
        "{name: all, matches: [{}]}",
        "{name: all}",
    ] {
        let t = table(&one_rule_yaml(rule));
        for path in ["/", "/a", "/a/b/c", "/a?b=c"] {
            assert_eq!(pick_name(&t, &get(path)), some("all"), "{rule} {path}");
        }
        assert_eq!(
            pick_name(&t, &req("DELETE", "/x", &[("x-any", "1")])),
            some("all")
        );
    }
}

#[test]
fn path_regex_is_anchored() {
    let t = table(
        r#"
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: v, matches: [{path: {type: RegularExpression, value: "/v[0-9]+"}}]}]
"#,
    );
    assert_eq!(pick_name(&t, &get("/v1")), some("v"));
    assert_eq!(pick_name(&t, &get("/v123")), some("v"));
    assert_eq!(pick_name(&t, &get("/v1/x")), some("404"));
    assert_eq!(pick_name(&t, &get("/api/v1")), some("404"));
    assert_eq!(pick_name(&t, &get("/vx")), some("404"));

    // An alternation is anchored as a whole, not just its first and last branch.
    let t = table(
        r#"
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: alt, matches: [{path: {type: RegularExpression, value: "/a|/b"}}]}]
"#,
    );
    assert_eq!(pick_name(&t, &get("/a")), some("alt"));
    assert_eq!(pick_name(&t, &get("/b")), some("alt"));
    assert_eq!(pick_name(&t, &get("/ab")), some("404"));
    assert_eq!(pick_name(&t, &get("/a/x")), some("404"));
    assert_eq!(pick_name(&t, &get("/x/b")), some("404"));
}

// ---------------------------------------------------------------------------------------
// Headers, query parameters, methods.

#[test]
fn header_exact_match() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: h, matches: [{headers: [{name: X-Env, value: canary}]}]}]
",
    );
    // Header names are case-insensitive, values are not.
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-env", "canary")])),
        some("h")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("X-ENV", "canary")])),
        some("h")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-env", "Canary")])),
        some("404")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-env", "canary2")])),
        some("404")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-env", "")])),
        some("404")
    );
    // Missing header fails.
    assert_eq!(pick_name(&t, &get("/")), some("404"));
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-other", "canary")])),
        some("404")
    );
}

#[test]
fn header_empty_exact_value_needs_the_header() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: h, matches: [{headers: [{name: x-flag, value: ''}]}]}]
",
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-flag", "")])),
        some("h")
    );
    assert_eq!(pick_name(&t, &get("/")), some("404"));
}

#[test]
fn header_regex_match_is_anchored() {
    let t = table(
        r#"
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: h
    matches: [{headers: [{type: RegularExpression, name: x-user, value: "[a-z]+"}]}]
"#,
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-user", "alice")])),
        some("h")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-user", "alice1")])),
        some("404")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-user", "1alice")])),
        some("404")
    );
    assert_eq!(pick_name(&t, &get("/")), some("404"));
}

#[test]
fn multi_valued_header_is_joined_with_commas() {
    let t = table(
        r#"
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: joined
    matches: [{headers: [{name: x-tag, value: "a,b"}]}]
  - name: regex
    matches: [{headers: [{type: RegularExpression, name: x-re, value: "a,.*"}]}]
"#,
    );
    let two = req("GET", "/", &[("x-tag", "a"), ("x-tag", "b")]);
    assert_eq!(pick_name(&t, &two), some("joined"));
    let one = req("GET", "/", &[("x-tag", "a,b")]);
    assert_eq!(pick_name(&t, &one), some("joined"));
    let first_only = req("GET", "/", &[("x-tag", "a")]);
    assert_eq!(pick_name(&t, &first_only), some("404"));
    let reversed = req("GET", "/", &[("x-tag", "b"), ("x-tag", "a")]);
    assert_eq!(pick_name(&t, &reversed), some("404"));
    let three = req(
        "GET",
        "/",
        &[("x-tag", "a"), ("x-tag", "b"), ("x-tag", "c")],
    );
    assert_eq!(pick_name(&t, &three), some("404"));

    // A regex sees the joined value too.
    let re = req("GET", "/", &[("x-re", "a"), ("x-re", "zzz")]);
    assert_eq!(pick_name(&t, &re), some("regex"));
    let re_one = req("GET", "/", &[("x-re", "a")]);
    assert_eq!(pick_name(&t, &re_one), some("404"));
}

#[test]
fn all_header_matches_must_hold() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: h
    matches: [{headers: [{name: x-a, value: '1'}, {name: x-b, value: '2'}]}]
",
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-a", "1"), ("x-b", "2")])),
        some("h")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-a", "1")])),
        some("404")
    );
    assert_eq!(
        pick_name(&t, &req("GET", "/", &[("x-b", "2")])),
        some("404")
    );
}

#[test]
fn any_of_several_matches_selects_the_rule() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: either
    matches:
    - {path: {type: Exact, value: /a}}
    - {headers: [{name: x-a, value: '1'}]}
",
    );
    assert_eq!(pick_name(&t, &get("/a")), some("either"));
    assert_eq!(
        pick_name(&t, &req("GET", "/b", &[("x-a", "1")])),
        some("either")
    );
    assert_eq!(pick_name(&t, &get("/b")), some("404"));
}

#[test]
fn query_param_matching() {
    let t = table(
        r#"
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: exact
    matches: [{queryParams: [{name: version, value: v2}]}]
  - name: regex
    matches: [{queryParams: [{type: RegularExpression, name: id, value: "[0-9]+"}]}]
  - name: flag
    matches: [{queryParams: [{name: debug, value: ""}]}]
"#,
    );
    assert_eq!(pick_name(&t, &get("/?version=v2")), some("exact"));
    assert_eq!(pick_name(&t, &get("/x?a=b&version=v2&c=d")), some("exact"));
    assert_eq!(pick_name(&t, &get("/?version=v3")), some("404"));
    assert_eq!(pick_name(&t, &get("/?version=v2x")), some("404"));
    assert_eq!(pick_name(&t, &get("/?Version=v2")), some("404"));
    assert_eq!(pick_name(&t, &get("/?xversion=v2")), some("404"));
    // The first occurrence counts.
    assert_eq!(
        pick_name(&t, &get("/?version=v2&version=v3")),
        some("exact")
    );
    assert_eq!(pick_name(&t, &get("/?version=v3&version=v2")), some("404"));

    assert_eq!(pick_name(&t, &get("/?id=123")), some("regex"));
    assert_eq!(pick_name(&t, &get("/?id=12a")), some("404"));

    // A parameter without `=` has the empty value.
    assert_eq!(pick_name(&t, &get("/?debug")), some("flag"));
    assert_eq!(pick_name(&t, &get("/?debug=")), some("flag"));
    assert_eq!(pick_name(&t, &get("/?debug=1")), some("404"));

    // Missing: no query at all, or not among the parameters.
    assert_eq!(pick_name(&t, &get("/")), some("404"));
    assert_eq!(pick_name(&t, &get("/?other=1")), some("404"));
}

#[test]
fn method_matching() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - {name: get, matches: [{method: GET}]}
  - {name: custom, matches: [{method: PURGE}]}
",
    );
    assert_eq!(pick_name(&t, &req("GET", "/x", &[])), some("get"));
    assert_eq!(pick_name(&t, &req("PURGE", "/x", &[])), some("custom"));
    assert_eq!(pick_name(&t, &req("POST", "/x", &[])), some("404"));
    assert_eq!(pick_name(&t, &req("HEAD", "/x", &[])), some("404"));
}

#[test]
fn method_must_be_upper_case() {
    for m in ["get", "Get", "GE T", "\"\""] {
        let e = one_rule_err(&format!("{{matches: [{{method: {m}}}]}}"));
        assert_rule_err(&e, ".matches[0].method");
    }
}

// ---------------------------------------------------------------------------------------
// Parents and ports.

#[test]
fn parent_port_restricts_the_route() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo, port: 80}]
  rules: [{name: api, matches: [{path: {value: /api}}]}]
",
    );
    assert_eq!(pick_name_on(&t, 80, &get("/api")), some("api"));
    // Entries attached to port 80, none matched: 404.
    assert_eq!(pick_name_on(&t, 80, &get("/other")), some("404"));
    assert!(t.select(&echo(), 80, &get("/other")).is_err());
    // Nothing attached to 8080: pass through.
    assert!(t.select(&echo(), 8080, &get("/api")).unwrap().is_none());
    assert!(t.select(&echo(), 8080, &get("/other")).unwrap().is_none());
}

#[test]
fn parent_without_port_takes_every_port() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: api, matches: [{path: {value: /api}}]}]
",
    );
    for port in [80, 443, 8080, 65535] {
        assert_eq!(pick_name_on(&t, port, &get("/api")), some("api"));
        assert_eq!(pick_name_on(&t, port, &get("/x")), some("404"));
    }
}

#[test]
fn routes_for_different_ports_of_one_service() {
    let t = table(
        "
- name: web
  namespace: demo
  parentRefs: [{name: echo, port: 80}]
  rules: [{name: on-80}]
- name: admin
  namespace: demo
  parentRefs: [{name: echo, port: 9090}]
  rules: [{name: on-9090}]
",
    );
    assert_eq!(pick_name_on(&t, 80, &get("/")), some("on-80"));
    assert_eq!(pick_name_on(&t, 9090, &get("/")), some("on-9090"));
    assert_eq!(pick_name_on(&t, 8080, &get("/")), None);
}

#[test]
fn service_without_routes_passes_through() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: api, matches: [{path: {value: /api}}]}]
",
    );
    let other = ServiceRef::new("demo", "other");
    assert!(!t.has_routes(&other));
    assert!(t.select(&other, 80, &get("/api")).unwrap().is_none());
    // Same name, other namespace: another Service.
    let elsewhere = ServiceRef::new("prod", "echo");
    assert!(t.select(&elsewhere, 80, &get("/api")).unwrap().is_none());

    let empty = RouteTable::build(&[]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert!(empty.select(&echo(), 80, &get("/")).unwrap().is_none());
}

#[test]
fn route_without_rules_adds_nothing() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
",
    );
    assert_eq!(t.len(), 1);
    assert!(!t.has_routes(&echo()));
    assert!(t.select(&echo(), 80, &get("/")).unwrap().is_none());
}

#[test]
fn parent_namespace_defaults_to_the_routes() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}, {name: echo, namespace: prod}]
  rules: [{name: all}]
",
    );
    assert!(t.has_routes(&ServiceRef::new("demo", "echo")));
    assert!(t.has_routes(&ServiceRef::new("prod", "echo")));
    for parent in [
        ServiceRef::new("demo", "echo"),
        ServiceRef::new("prod", "echo"),
    ] {
        let rule = t.select(&parent, 80, &get("/")).unwrap().unwrap();
        assert_eq!(&*rule.name, "all");
    }
}

#[test]
fn passthrough_rule_sends_to_the_service() {
    let rule = Rule::passthrough();
    assert!(rule.backends.is_empty());
    for r in [0, 1, u64::MAX / 2, u64::MAX] {
        assert_eq!(
            rule.pick_for(&echo(), r),
            Some(Backend {
                service: echo(),
                subset: None,
                port: None,
                weight: 1,
            })
        );
    }
    assert_eq!(rule.retry, Some(istio_default_retry(None)));
    assert!(rule.fault.is_none() && rule.mirror.is_none());
    assert!(rule.request_timeout.is_none());
}

// ---------------------------------------------------------------------------------------
// Hostnames.

#[test]
fn exact_hostname_is_case_insensitive_and_ignores_the_port() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  hostnames: [echo.example.com]
  rules: [{name: h}]
",
    );
    for host in [
        "echo.example.com",
        "ECHO.Example.COM",
        "echo.example.com:8080",
        "Echo.Example.Com:80",
    ] {
        assert_eq!(
            pick_name(&t, &req("GET", "/", &[("host", host)])),
            some("h"),
            "{host}"
        );
    }
    for host in [
        "other.example.com",
        "example.com",
        "echo.example.com.evil",
        "x.echo.example.com",
    ] {
        assert_eq!(
            pick_name(&t, &req("GET", "/", &[("host", host)])),
            some("404"),
            "{host}"
        );
    }
    // No Host at all: no hostname to match.
    assert_eq!(pick_name(&t, &get("/")), some("404"));
    // An absolute URI's authority counts (HTTP/2 :authority).
    assert_eq!(
        pick_name(&t, &get("http://Echo.Example.com:8080/x")),
        some("h")
    );
}

#[test]
fn wildcard_hostname() {
    let t = table(
        r#"
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  hostnames: ["*.example.com"]
  rules: [{name: w}]
"#,
    );
    for host in [
        "a.example.com",
        "A.EXAMPLE.COM",
        "a.b.example.com",
        "www.example.com:443",
    ] {
        assert_eq!(
            pick_name(&t, &req("GET", "/", &[("host", host)])),
            some("w"),
            "{host}"
        );
    }
    for host in [
        "example.com",
        ".example.com",
        "aexample.com",
        "a.example.org",
        "example.com:80",
    ] {
        assert_eq!(
            pick_name(&t, &req("GET", "/", &[("host", host)])),
            some("404"),
            "{host}"
        );
    }
}

#[test]
fn several_hostnames_any_matches() {
    let t = table(
        r#"
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  hostnames: [a.test, "*.b.test"]
  rules: [{name: h}]
"#,
    );
    for (host, want) in [
        ("a.test", "h"),
        ("x.b.test", "h"),
        ("b.test", "404"),
        ("c.test", "404"),
    ] {
        assert_eq!(
            pick_name(&t, &req("GET", "/", &[("host", host)])),
            some(want),
            "{host}"
        );
    }
}

#[test]
fn hostnames_pick_between_routes() {
    let t = table(
        "
- name: a
  namespace: demo
  parentRefs: [{name: echo}]
  hostnames: [a.test]
  rules: [{name: for-a}]
- name: b
  namespace: demo
  parentRefs: [{name: echo}]
  hostnames: [b.test]
  rules: [{name: for-b}]
- name: any
  namespace: demo
  parentRefs: [{name: echo}]
  rules: [{name: for-any, matches: [{path: {value: /any}}]}]
",
    );
    let host = |h: &str, path: &str| req("GET", path, &[("host", h)]);
    assert_eq!(pick_name(&t, &host("a.test", "/")), some("for-a"));
    assert_eq!(pick_name(&t, &host("b.test:80", "/")), some("for-b"));
    assert_eq!(pick_name(&t, &host("c.test", "/")), some("404"));
    // The longer prefix of the route without hostnames wins for every host.
    assert_eq!(pick_name(&t, &host("a.test", "/any")), some("for-any"));
    assert_eq!(pick_name(&t, &host("c.test", "/any")), some("for-any"));
}

#[test]
fn bad_hostnames_are_refused() {
    for (i, bad) in [
        "\"*\"",
        "\"*example.com\"",
        "\"*.\"",
        "\"a.test:80\"",
        "\"a/b\"",
        "\"\"",
        "\"a b\"",
    ]
    .iter()
    .enumerate()
    {
        let yaml = format!(
            "
- name: r
  namespace: demo
  parentRefs: [{{name: echo}}]
  hostnames: [ok.test, {bad}]
  rules: [{{}}]
"
        );
        let e = build_err(&yaml);
        assert_eq!(e.path, "httpRoutes[demo/r].hostnames[1]", "case {i}: {e}");
    }
}

#[test]
fn request_host_strips_ports() {
    let host = |h: &str| {
        let parts = req("GET", "/", &[("host", h)]);
        request_host(&parts).to_string()
    };
    assert_eq!(host("a.test"), "a.test");
    assert_eq!(host("a.test:8080"), "a.test");
    assert_eq!(host("10.0.0.1:80"), "10.0.0.1");
    assert_eq!(host("[::1]:8080"), "::1");
    assert_eq!(host("[::1]"), "::1");
    assert_eq!(request_host(&get("/")), "");
    // The URI's authority comes before Host.
    let parts = req("GET", "http://uri.test:81/", &[("host", "header.test")]);
    assert_eq!(request_host(&parts), "uri.test");
}

// ---------------------------------------------------------------------------------------
// Weighted backends.

#[test]
fn pick_spreads_by_weight_exactly() {
    let rule = weighted(&[90, 10]);
    let (counts, none) = spread(&rule, 10_000);
    assert_eq!(none, 0);
    assert!(counts[0].abs_diff(9000) <= 1, "{counts:?}");
    assert!(counts[1].abs_diff(1000) <= 1, "{counts:?}");
    assert_eq!(counts[0] + counts[1], 10_000);

    let rule = weighted(&[1, 2, 3, 4]);
    let (counts, none) = spread(&rule, 10_000);
    assert_eq!(none, 0);
    for (c, want) in counts.iter().zip([1000, 2000, 3000, 4000]) {
        assert!(c.abs_diff(want) <= 1, "{counts:?}");
    }
}

#[test]
fn pick_ends_of_the_range() {
    let rule = weighted(&[90, 10]);
    assert_eq!(&*rule.pick(0).unwrap().service.name, "b0");
    assert_eq!(&*rule.pick(u64::MAX).unwrap().service.name, "b1");
    // The boundary: r / 2^64 just below and at 0.9.
    let cut = ((u128::from(u64::MAX) + 1) * 9 / 10) as u64;
    assert_eq!(&*rule.pick(cut - 1).unwrap().service.name, "b0");
    assert_eq!(&*rule.pick(cut + 1).unwrap().service.name, "b1");
}

#[test]
fn default_weight_is_one() {
    let rule = one_rule("{backendRefs: [{name: a}, {name: b}]}");
    assert!(rule.backends.iter().all(|b| b.weight == 1));
    let (counts, none) = spread(&rule, 10_000);
    assert_eq!(none, 0);
    assert!(counts[0].abs_diff(5000) <= 1, "{counts:?}");
    assert!(counts[1].abs_diff(5000) <= 1, "{counts:?}");
}

#[test]
fn weight_zero_gets_nothing() {
    let rule = weighted(&[1, 0, 1]);
    let (counts, none) = spread(&rule, 10_000);
    assert_eq!(none, 0);
    assert_eq!(counts[1], 0, "{counts:?}");
    assert!(counts[0].abs_diff(5000) <= 1, "{counts:?}");
    assert!(counts[2].abs_diff(5000) <= 1, "{counts:?}");
    for r in [0, u64::MAX / 2, u64::MAX / 2 + 1, u64::MAX] {
        assert_ne!(&*rule.pick(r).unwrap().service.name, "b1");
    }

    let rule = weighted(&[0, 5]);
    let (counts, _) = spread(&rule, 1000);
    assert_eq!(counts, vec![0, 1000]);
}

#[test]
fn all_zero_weights_pick_nothing() {
    let rule = weighted(&[0, 0]);
    for r in [0, 1, u64::MAX / 3, u64::MAX] {
        assert!(rule.pick(r).is_none());
    }
    let (counts, none) = spread(&rule, 1000);
    assert_eq!(counts, vec![0, 0]);
    assert_eq!(none, 1000);
}

#[test]
fn pick_with_a_random_source() {
    let rule = weighted(&[90, 10]);
    let mut rng = SmallRng::seed_from_u64(0x5eed_cafe);
    let n = 10_000u64;
    let mut first = 0u64;
    for _ in 0..n {
        let b = rule.pick(rng.random::<u64>()).unwrap();
        if &*b.service.name == "b0" {
            first += 1;
        }
    }
    // Binomial(n, 0.9): mean 9000, standard deviation 30.
    let mean = n as f64 * 0.9;
    let sd = (n as f64 * 0.9 * 0.1).sqrt();
    let off = (first as f64 - mean).abs();
    assert!(off <= 5.0 * sd, "{first} of {n} (mean {mean}, sd {sd})");
}

#[test]
fn large_weights_do_not_overflow() {
    let rule = weighted(&[u32::MAX, u32::MAX]);
    let (counts, none) = spread(&rule, 1000);
    assert_eq!(none, 0);
    assert!(counts[0].abs_diff(500) <= 1, "{counts:?}");
}

// ---------------------------------------------------------------------------------------
// Backends.

#[test]
fn default_backend_is_the_parent_service() {
    let rule = one_rule("{}");
    assert!(rule.backends.is_empty());
    assert_eq!(
        rule.pick_for(&echo(), 12345),
        Some(Backend {
            service: echo(),
            subset: None,
            port: None,
            weight: 1,
        })
    );

    // A parent in another namespace is the default backend there.
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo, namespace: prod, port: 80}]
  rules: [{}]
",
    );
    let rule = t
        .select(&ServiceRef::new("prod", "echo"), 80, &get("/"))
        .unwrap()
        .unwrap();
    let prod = ServiceRef::new("prod", "echo");
    let b = rule.pick_for(&prod, 1).unwrap();
    assert_eq!(b.service, prod);
    // The backend port is the port asked, not the parentRef's.
    assert_eq!(b.port, None);
}

#[test]
fn each_parent_is_its_own_default_backend() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: a}, {name: b}]
  rules: [{}]
",
    );
    for name in ["a", "b"] {
        let parent = ServiceRef::new("demo", name);
        let rule = t.select(&parent, 80, &get("/")).unwrap().unwrap();
        assert_eq!(rule.pick_for(&parent, 3).unwrap().service, parent);
    }
}

#[test]
fn filter_bodies_must_match_their_type_and_appear_once() {
    let e = one_rule_err(
        "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}, requestMirror: {backendRef: {name: m}}}]}",
    );
    assert!(e.path.ends_with(".filters[0].requestMirror"), "{e}");
    let e = one_rule_err(
        "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]}",
    );
    assert!(e.path.ends_with(".filters[1].type"), "{e}");
}

#[test]
fn abort_status_above_599_and_long_per_try_timeouts_are_refused() {
    let e = one_rule_err("{fault: {abort: {httpStatus: 700}}}");
    assert!(e.path.ends_with(".fault.abort.httpStatus"), "{e}");
    let e = one_rule_err("{timeouts: {request: 1s}, retry: {perTryTimeout: 2s}}");
    assert!(e.path.ends_with(".retry.perTryTimeout"), "{e}");
}

#[test]
fn a_wildcard_inside_a_hostname_is_refused() {
    let e = RouteTable::build(&specs(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  hostnames: [\"foo.*.com\"]
  rules: [{}]
",
    ))
    .unwrap_err();
    assert!(e.path.ends_with(".hostnames[0]"), "{e}");
}

#[test]
fn backend_ref_namespace_and_port() {
    let rule = one_rule(
        "{backendRefs: [{name: a}, {name: b, namespace: other, port: 8080}, {name: c, kind: Service, group: core}]}",
    );
    assert_eq!(rule.backends[0].service, ServiceRef::new("demo", "a"));
    assert_eq!(rule.backends[0].port, None);
    assert_eq!(rule.backends[1].service, ServiceRef::new("other", "b"));
    assert_eq!(rule.backends[1].port, Some(8080));
    assert_eq!(rule.backends[2].service, ServiceRef::new("demo", "c"));
    assert_eq!(&*rule.route, "demo/r");
    assert_eq!(&*rule.name, "0");
}

#[test]
fn bad_backend_refs_are_refused() {
    let cases = [
        (
            "{backendRefs: [{name: a, kind: Deployment}]}",
            ".backendRefs[0].kind",
        ),
        (
            "{backendRefs: [{name: a, group: apps}]}",
            ".backendRefs[0].group",
        ),
        (
            "{backendRefs: [{name: a}, {name: ''}]}",
            ".backendRefs[1].name",
        ),
        (
            "{backendRefs: [{name: a, port: 0}]}",
            ".backendRefs[0].port",
        ),
    ];
    for (rule, suffix) in cases {
        assert_rule_err(&one_rule_err(rule), suffix);
    }
}

#[test]
fn service_display() {
    assert_eq!(echo().to_string(), "demo/echo");
}

// ---------------------------------------------------------------------------------------
// Durations.

#[test]
fn durations_parse() {
    let d = |s: &str| duration(s, "x").unwrap();
    assert_eq!(d("1m30s"), secs(90));
    assert_eq!(d("500ms"), ms(500));
    assert_eq!(d("1h"), secs(3600));
    assert_eq!(d("10s"), secs(10));
    assert_eq!(d("1m"), secs(60));
    assert_eq!(d("1ms"), ms(1));
    assert_eq!(d("1h2m3s4ms"), secs(3723) + ms(4));
    assert_eq!(d("0s1ms"), ms(1));
    assert_eq!(d("99999s"), secs(99999));
    assert_eq!(d("99999h"), secs(99999 * 3600));
}

#[test]
fn bad_durations_are_refused() {
    for s in [
        "", "10", "5x", "0s", "0ms", "0h0m0s", "-1s", "1.5s", "s", "ms", "1 s", " 1s", "1s ", "1S",
        "1sec", "100000ms", "1m30", "+1s", "1d",
    ] {
        let e = duration(s, "a.b").expect_err(s);
        assert_eq!(e.path, "a.b", "{s:?}");
        assert!(!e.message.is_empty());
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

// ---------------------------------------------------------------------------------------
// Retries and timeouts.

#[test]
fn retry_defaults() {
    let rule = one_rule("{retry: {}}");
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.attempts, 2);
    assert!(r.codes.is_empty());
    assert!(r.on_reset);
    assert!(r.on_connect_failure);
    assert!(!r.on_5xx);
    assert!(!r.on_gateway_error);
    assert_eq!(r.backoff, ms(25));
    assert_eq!(r.per_try_timeout, None);
    assert_eq!(r.budget_percent, 0.2);
    assert_eq!(r.min_retry_concurrency, 3);
    // No condition on statuses by default.
    for s in [500, 502, 503, 504, 429] {
        assert!(!r.retries_status(s), "{s}");
    }
}

#[test]
fn retry_on_replaces_the_defaults() {
    let rule = one_rule("{retry: {retryOn: [5xx]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(r.on_5xx);
    assert!(!r.on_reset);
    assert!(!r.on_connect_failure);
    assert!(!r.on_gateway_error);

    let rule = one_rule("{retry: {retryOn: [reset, gateway-error]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(r.on_reset && r.on_gateway_error);
    assert!(!r.on_connect_failure && !r.on_5xx);

    let rule = one_rule("{retry: {retryOn: [connect-failure]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(r.on_connect_failure);
    assert!(!r.on_reset && !r.on_5xx && !r.on_gateway_error);

    // An empty list: nothing but the codes.
    let rule = one_rule("{retry: {retryOn: [], codes: [503]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(!r.on_reset && !r.on_connect_failure && !r.on_5xx && !r.on_gateway_error);
    assert!(r.retries_status(503));

    // `retriable-status-codes` is accepted and adds nothing by itself.
    let rule = one_rule("{retry: {retryOn: [retriable-status-codes], codes: [429]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(!r.on_reset && !r.on_connect_failure && !r.on_5xx && !r.on_gateway_error);
    assert!(r.retries_status(429));
    assert!(!r.retries_status(503));
}

#[test]
fn retries_status_for_codes_5xx_and_gateway_errors() {
    let rule = one_rule("{retry: {codes: [429, 503]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(r.retries_status(429));
    assert!(r.retries_status(503));
    assert!(!r.retries_status(500));
    assert!(!r.retries_status(502));
    assert!(!r.retries_status(200));

    let rule = one_rule("{retry: {retryOn: [5xx]}}");
    let r = rule.retry.as_ref().unwrap();
    for s in [500, 501, 502, 503, 504, 599] {
        assert!(r.retries_status(s), "{s}");
    }
    for s in [200, 404, 429, 499] {
        assert!(!r.retries_status(s), "{s}");
    }

    let rule = one_rule("{retry: {retryOn: [gateway-error]}}");
    let r = rule.retry.as_ref().unwrap();
    for s in [502, 503, 504] {
        assert!(r.retries_status(s), "{s}");
    }
    for s in [500, 501, 505, 429, 200] {
        assert!(!r.retries_status(s), "{s}");
    }

    let rule = one_rule("{retry: {retryOn: [gateway-error], codes: [500]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(r.retries_status(500) && r.retries_status(502));
    assert!(!r.retries_status(501));
}

#[test]
fn grpc_conditions_retry_a_trailers_only_status() {
    let grpc = |status: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", status.parse().unwrap());
        h
    };
    // Istio's default conditions: unavailable and cancelled.
    let rule = one_rule("{retry: {}}");
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.grpc_statuses, vec![1, 14]);
    assert!(r.retries_response(200, &grpc("14")));
    assert!(r.retries_response(200, &grpc("1")));
    assert!(!r.retries_response(200, &grpc("13")));
    assert!(!r.retries_response(200, &http::HeaderMap::new()));

    let rule = one_rule("{retry: {retryOn: [internal, resource-exhausted, internal]}}");
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.grpc_statuses, vec![13, 8]);
    assert!(r.retries_response(200, &grpc("13")) && r.retries_response(200, &grpc("8")));
    assert!(
        !r.retries_response(200, &grpc("14")),
        "the list replaces the defaults"
    );
    assert!(!r.retries_response(200, &grpc("0")));

    let rule = one_rule("{retry: {retryOn: [5xx]}}");
    assert!(rule.retry.as_ref().unwrap().grpc_statuses.is_empty());
}

#[test]
fn retry_fields_override_defaults() {
    let rule = one_rule(
        "{retry: {attempts: 0, backoff: 100ms, perTryTimeout: 3s, budgetPercent: 50, minRetryConcurrency: 7}}",
    );
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.attempts, 0);
    assert_eq!(r.backoff, ms(100));
    assert_eq!(r.per_try_timeout, Some(secs(3)));
    assert_eq!(r.budget_percent, 0.5);
    assert_eq!(r.min_retry_concurrency, 7);
    // Not touched: the default conditions.
    assert!(r.on_reset && r.on_connect_failure);

    let rule = one_rule("{retry: {budgetPercent: 0}}");
    assert_eq!(rule.retry.as_ref().unwrap().budget_percent, 0.0);
    let rule = one_rule("{retry: {budgetPercent: 100}}");
    assert_eq!(rule.retry.as_ref().unwrap().budget_percent, 1.0);
}

#[test]
fn backend_request_timeout_without_retry() {
    // Istio's default policy, each attempt under the backend timeout.
    let rule = one_rule("{timeouts: {backendRequest: 750ms}}");
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.attempts, 2);
    assert_eq!(r.per_try_timeout, Some(ms(750)));
    assert_eq!(rule.request_timeout, None);
}

#[test]
fn per_try_timeout_sources() {
    // From timeouts.backendRequest when the retry block does not say.
    let rule = one_rule("{timeouts: {request: 10s, backendRequest: 2s}, retry: {attempts: 3}}");
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.attempts, 3);
    assert_eq!(r.per_try_timeout, Some(secs(2)));
    assert_eq!(rule.request_timeout, Some(secs(10)));

    // retry.perTryTimeout wins over it.
    let rule = one_rule("{timeouts: {backendRequest: 2s}, retry: {perTryTimeout: 500ms}}");
    assert_eq!(rule.retry.as_ref().unwrap().per_try_timeout, Some(ms(500)));
}

#[test]
fn a_rule_without_retry_gets_istios_default_policy() {
    let rule = one_rule("{}");
    let r = rule.retry.as_ref().unwrap();
    // Istio's DefaultPolicy: connect-failure, refused-stream, unavailable, cancelled; no
    // condition that repeats a request the backend may have processed.
    assert_eq!(r.attempts, 2);
    assert!(r.on_connect_failure && r.on_refused_stream);
    assert!(!r.on_reset && !r.on_5xx && !r.on_gateway_error && r.codes.is_empty());
    assert_eq!(r.grpc_statuses, vec![1, 14]);
    assert_eq!(r.per_try_timeout, None);
    assert!(rule.request_timeout.is_none());
    let rule = one_rule("{timeouts: {request: 1m30s}}");
    assert_eq!(rule.retry, Some(istio_default_retry(None)));
    assert_eq!(rule.request_timeout, Some(secs(90)));
    // `attempts: 0` turns retries off.
    assert_eq!(
        one_rule("{retry: {attempts: 0}}")
            .retry
            .clone()
            .unwrap()
            .attempts,
        0
    );
    // `refused-stream` by name; `reset` is the wider condition.
    let r = one_rule("{retry: {retryOn: [refused-stream]}}")
        .retry
        .clone()
        .unwrap();
    assert!(r.on_refused_stream && !r.on_reset && !r.on_connect_failure);
}

// ---------------------------------------------------------------------------------------
// Faults.

#[test]
fn fault_percentages_become_fractions() {
    let rule = one_rule(
        "{fault: {delay: {fixedDelay: 5s, percentage: 10}, abort: {httpStatus: 503, percentage: 50}}}",
    );
    assert_eq!(
        rule.fault,
        Some(Fault {
            delay: Some((secs(5), 0.1)),
            abort: Some((http_abort(http::StatusCode::SERVICE_UNAVAILABLE), 0.5)),
        })
    );

    // Default: every request.
    let rule = one_rule("{fault: {delay: {fixedDelay: 250ms}}}");
    assert_eq!(
        rule.fault,
        Some(Fault {
            delay: Some((ms(250), 1.0)),
            abort: None,
        })
    );
    let rule = one_rule("{fault: {abort: {httpStatus: 429, percentage: 0}}}");
    assert_eq!(
        rule.fault,
        Some(Fault {
            delay: None,
            abort: Some((http_abort(http::StatusCode::TOO_MANY_REQUESTS), 0.0)),
        })
    );
    let rule = one_rule("{fault: {abort: {httpStatus: 200, percentage: 0.5}}}");
    assert_eq!(
        rule.fault.as_ref().unwrap().abort,
        Some((http_abort(http::StatusCode::OK), 0.005))
    );

    // An empty fault block is no fault.
    assert!(one_rule("{fault: {}}").fault.is_none());
}

#[test]
fn abort_status_must_be_a_response_status() {
    for status in [0, 99, 100, 101, 199, 1000, 65535] {
        let e = one_rule_err(&format!("{{fault: {{abort: {{httpStatus: {status}}}}}}}"));
        assert_rule_err(&e, ".fault.abort.httpStatus");
    }
    for status in [200, 404, 500, 599] {
        let rule = one_rule(&format!("{{fault: {{abort: {{httpStatus: {status}}}}}}}"));
        assert_eq!(
            rule.fault
                .as_ref()
                .unwrap()
                .abort
                .unwrap()
                .0
                .status
                .as_u16(),
            status
        );
    }
}

fn http_abort(status: http::StatusCode) -> Abort {
    Abort {
        status,
        grpc_status: None,
    }
}

#[test]
fn a_grpc_abort_gives_its_status_by_name() {
    let rule = one_rule("{fault: {abort: {grpcStatus: UNAVAILABLE, percentage: 20}}}");
    assert_eq!(
        rule.fault.as_ref().unwrap().abort,
        Some((
            Abort {
                status: http::StatusCode::OK,
                grpc_status: Some(14),
            },
            0.2
        ))
    );
    let rule = one_rule("{fault: {abort: {grpcStatus: \"7\"}}}");
    assert_eq!(
        rule.fault.as_ref().unwrap().abort.unwrap().0.grpc_status,
        Some(7)
    );
    for bad in ["TEAPOT", "17", "\"\""] {
        let e = one_rule_err(&format!("{{fault: {{abort: {{grpcStatus: {bad}}}}}}}"));
        assert_rule_err(&e, ".fault.abort.grpcStatus");
    }
    let e = one_rule_err("{fault: {abort: {httpStatus: 503, grpcStatus: UNAVAILABLE}}}");
    assert_rule_err(&e, ".fault.abort");
    let e = one_rule_err("{fault: {abort: {percentage: 5}}}");
    assert_rule_err(&e, ".fault.abort");
}

// ---------------------------------------------------------------------------------------
// Header edits.

fn edits_of(rule: &str) -> HeaderEdits {
    let rule = one_rule(&format!(
        "{{filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {rule}}}]}}"
    ));
    rule.request_headers.clone()
}

fn values(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[test]
fn header_edits_set_then_add_then_remove() {
    let e = edits_of(
        "{set: [{name: x-set, value: new}, {name: x-both, value: s}, {name: x-gone, value: s}],
          add: [{name: x-add, value: a2}, {name: x-both, value: a}, {name: x-gone, value: a}],
          remove: [x-gone, x-old]}",
    );
    assert!(!e.is_empty());
    let mut h = http::HeaderMap::new();
    h.append("x-set", HeaderValue::from_static("old1"));
    h.append("x-set", HeaderValue::from_static("old2"));
    h.append("x-add", HeaderValue::from_static("a1"));
    h.append("x-both", HeaderValue::from_static("orig"));
    h.append("x-old", HeaderValue::from_static("o"));
    h.append("x-keep", HeaderValue::from_static("k"));
    e.apply(&mut h);

    // set replaces every value.
    assert_eq!(values(&h, "x-set"), vec!["new"]);
    // add appends to what is there.
    assert_eq!(values(&h, "x-add"), vec!["a1", "a2"]);
    // set, then add: the set value and the added one.
    assert_eq!(values(&h, "x-both"), vec!["s", "a"]);
    // remove runs last: it takes what set and add put there too.
    assert!(values(&h, "x-gone").is_empty());
    assert!(values(&h, "x-old").is_empty());
    assert_eq!(values(&h, "x-keep"), vec!["k"]);
}

#[test]
fn header_edits_names_are_case_insensitive() {
    let e = edits_of("{set: [{name: X-Up, value: v}], remove: [X-DOWN]}");
    let mut h = http::HeaderMap::new();
    h.insert("x-up", HeaderValue::from_static("old"));
    h.insert("x-down", HeaderValue::from_static("d"));
    e.apply(&mut h);
    assert_eq!(values(&h, "x-up"), vec!["v"]);
    assert!(h.get("x-down").is_none());
}

#[test]
fn header_edits_on_an_empty_map_and_empty_edits() {
    let e = edits_of("{add: [{name: x-a, value: '1'}, {name: x-a, value: '2'}]}");
    let mut h = http::HeaderMap::new();
    e.apply(&mut h);
    assert_eq!(values(&h, "x-a"), vec!["1", "2"]);

    let empty = HeaderEdits::default();
    assert!(empty.is_empty());
    let mut h = http::HeaderMap::new();
    h.insert("x-a", HeaderValue::from_static("1"));
    empty.apply(&mut h);
    assert_eq!(values(&h, "x-a"), vec!["1"]);

    assert!(edits_of("{}").is_empty());
}

#[test]
fn response_header_modifier_is_separate() {
    let rule = one_rule(
        "{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-r, value: '1'}]}}]}",
    );
    assert!(rule.request_headers.is_empty());
    assert!(!rule.response_headers.is_empty());
    let mut h = http::HeaderMap::new();
    rule.response_headers.apply(&mut h);
    assert_eq!(values(&h, "x-r"), vec!["1"]);
}

#[test]
fn mirror_defaults() {
    let rule =
        one_rule("{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}]}");
    assert_eq!(
        rule.mirror,
        Some(Mirror {
            backend: Backend {
                service: ServiceRef::new("demo", "shadow"),
                subset: None,
                port: None,
                weight: 1,
            },
            fraction: 1.0,
        })
    );
}

#[test]
fn dot_segments_are_removed() {
    for (path, want) in [
        ("/a/b", "/a/b"),
        ("/public/../admin", "/admin"),
        ("/./admin", "/admin"),
        ("/a/./b/../c", "/a/c"),
        ("/../../etc", "/etc"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/..", "/"),
        ("/a..b/.c", "/a..b/.c"),
    ] {
        assert_eq!(normalize_path(path), want, "{path}");
    }
}

mod rewrite;
