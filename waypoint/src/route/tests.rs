//! Unit tests for routes: the shared helpers and how a rule is selected (precedence; headers,
//! query parameters, methods; path normalization). The rest by concept: `config`,
//! `targets`, `backends`, `policy`, `rewrite`, `grpc` (GRPCRoutes).

use super::*;
use compile::istio_default_retry;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod backends;
mod config;
mod grpc;
mod policy;
mod rewrite;
mod targets;

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

/// An abort with an HTTP status and no gRPC one.
fn http_abort(status: http::StatusCode) -> Abort {
    Abort {
        status,
        grpc_status: None,
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
