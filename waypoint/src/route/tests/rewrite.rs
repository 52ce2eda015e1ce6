//! `URLRewrite` and `RequestRedirect`: the Gateway API tables, the VirtualService forms, and
//! the config errors.

use super::*;

fn rewrite_of(rule: &str, path: &str) -> String {
    let t = table(&one_rule_yaml(rule));
    let r = t.select(&echo(), 80, &get(path)).unwrap().unwrap();
    let p = r.rewrite.as_ref().unwrap().path.as_ref().unwrap();
    p.apply(path)
}

#[test]
fn replace_prefix_match_follows_the_gateway_api_table() {
    // (request path, prefix match, replacement, result): the table in Gateway API's
    // HTTPPathModifier documentation.
    let table = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "/", "/bar"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
    ];
    for (path, prefix, with, want) in table {
        let rule = format!(
            "{{matches: [{{path: {{type: PathPrefix, value: '{prefix}'}}}}], filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: '{with}'}}}}}}]}}"
        );
        assert_eq!(rewrite_of(&rule, path), want, "{path} {prefix} {with}");
    }
}

#[test]
fn each_match_replaces_its_own_prefix() {
    let rule = "{matches: [{path: {value: /v1}}, {path: {value: /legacy/api}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}}]}";
    assert_eq!(rewrite_of(rule, "/v1/users"), "/api/users");
    assert_eq!(rewrite_of(rule, "/legacy/api/users"), "/api/users");
    // No match given: Gateway API's default is `PathPrefix /`.
    let rule = "{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /base}}}]}";
    assert_eq!(rewrite_of(rule, "/x/y"), "/base/x/y");
    assert_eq!(rewrite_of(rule, "/"), "/base/");
}

#[test]
fn full_path_and_hostname_rewrites() {
    let rule = "{filters: [{type: URLRewrite, urlRewrite: {hostname: internal.example, path: {type: ReplaceFullPath, replaceFullPath: /health}}}]}";
    let r = one_rule(rule);
    let rw = r.rewrite.as_ref().unwrap();
    assert_eq!(rw.host.as_ref().unwrap(), "internal.example");
    assert_eq!(rw.path.as_ref().unwrap().apply("/anything/else"), "/health");
    assert!(r.redirect.is_none());
}

#[test]
fn istio_rewrite_replaces_the_string_prefix() {
    let p = PathRewrite::Literal {
        matched: "/api".into(),
        with: "/new".into(),
    };
    assert_eq!(p.apply("/apiv2/x"), "/newv2/x");
    assert_eq!(p.apply("/api"), "/new");
    let root = PathRewrite::Literal {
        matched: "/".into(),
        with: "/svc/".into(),
    };
    assert_eq!(root.apply("/a"), "/svc/a");
}

fn location(rule: &str, port: u16, uri: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let t = table(&one_rule_yaml(rule));
    let parts = req("GET", uri, headers);
    let r = t.select(&echo(), port, &parts).unwrap().unwrap();
    let redirect = r.redirect.as_ref().unwrap();
    (redirect.status.as_u16(), redirect.location(&parts, port))
}

#[test]
fn redirect_locations_follow_gateway_api() {
    let host = [("host", "echo.demo:8080")];
    // Defaults: 302, the request's scheme, host, listener port and path, query kept.
    assert_eq!(
        location(
            "{filters: [{type: RequestRedirect, requestRedirect: {}}]}",
            8080,
            "/a?b=1",
            &host
        ),
        (302, "http://echo.demo:8080/a?b=1".into())
    );
    // A scheme brings its well-known port, which is left out.
    assert_eq!(
        location(
            "{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]}",
            8080,
            "/a",
            &host
        ),
        (301, "https://echo.demo/a".into())
    );
    // Port 80 over http is left out too; a port given is kept.
    assert_eq!(
        location(
            "{filters: [{type: RequestRedirect, requestRedirect: {}}]}",
            80,
            "/",
            &[("host", "echo")]
        ),
        (302, "http://echo/".into())
    );
    assert_eq!(
        location(
            "{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443, hostname: new.example}}]}",
            80,
            "/x",
            &host
        ),
        (302, "https://new.example:8443/x".into())
    );
    // Path modifiers, the prefix from the match.
    assert_eq!(
        location(
            "{matches: [{path: {value: /old}}], filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 308}}]}",
            80,
            "/old/page?q",
            &host
        ),
        (308, "http://echo.demo/new/page?q".into())
    );
    assert_eq!(
        location(
            "{filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /moved}}}]}",
            80,
            "/x/y",
            &host
        ),
        (302, "http://echo.demo/moved".into())
    );
}

#[test]
fn rewrite_and_redirect_errors_are_named() {
    let cases = [
        (
            "{filters: [{type: URLRewrite, urlRewrite: {}}]}",
            ".filters[0].urlRewrite",
        ),
        (
            "{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}]}",
            ".filters[0].urlRewrite.path.replaceFullPath",
        ),
        (
            "{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /a, replacePrefixMatch: /b}}}]}",
            ".filters[0].urlRewrite.path.replacePrefixMatch",
        ),
        (
            "{filters: [{type: URLRewrite, urlRewrite: {path: {type: Replace, replaceFullPath: /a}}}]}",
            ".filters[0].urlRewrite.path.type",
        ),
        (
            "{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: 'a b'}}}]}",
            ".filters[0].urlRewrite.path.replaceFullPath",
        ),
        (
            "{filters: [{type: URLRewrite, urlRewrite: {hostname: 'a:80'}}]}",
            ".filters[0].urlRewrite.hostname",
        ),
        (
            "{filters: [{type: URLRewrite, requestRedirect: {}}]}",
            ".filters[0].urlRewrite",
        ),
        (
            "{filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]}",
            ".filters[0].requestRedirect.scheme",
        ),
        (
            "{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]}",
            ".filters[0].requestRedirect.statusCode",
        ),
        (
            "{filters: [{type: RequestRedirect, requestRedirect: {port: 0}}]}",
            ".filters[0].requestRedirect.port",
        ),
        (
            "{filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {hostname: a}}]}",
            ".filters",
        ),
        (
            "{backendRefs: [{name: echo}], filters: [{type: RequestRedirect, requestRedirect: {}}]}",
            ".backendRefs",
        ),
        (
            "{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}",
            ".matches[0].path.type",
        ),
    ];
    for (rule, suffix) in cases {
        assert_rule_err(&one_rule_err(rule), suffix);
    }
}

/// Gateway API's `CORS` filter: the rule's policy, as istiod translates it.
#[test]
fn a_cors_filter_is_the_rules_policy() {
    let r = one_rule(
        "{filters: [{type: CORS, cors: {allowOrigins: ['https://*.example'], allowMethods: [PUT]}}]}",
    );
    let c = r.cors.as_ref().expect("a policy");
    let preflight = |origin: &str| {
        let mut p = get("/");
        p.method = http::Method::OPTIONS;
        p.headers.insert("origin", origin.parse().unwrap());
        p.headers
            .insert("access-control-request-method", "PUT".parse().unwrap());
        c.step(&p)
    };
    let crate::route::CorsStep::Answer(h, Some(_)) = preflight("https://a.example") else {
        panic!("answered with the origin");
    };
    assert_eq!(h["access-control-allow-methods"], "PUT");
    assert_eq!(h["access-control-max-age"], "5");
    // Another origin: answered bare (istiod's IGNORE), not sent on.
    assert!(matches!(
        preflight("https://a.other"),
        crate::route::CorsStep::Answer(_, None)
    ));
    for (rule, suffix) in [
        ("{filters: [{type: CORS}]}", ".filters[0].cors"),
        (
            "{filters: [{type: CORS, cors: {}, urlRewrite: {}}]}",
            ".filters[0].urlRewrite",
        ),
        (
            "{filters: [{type: CORS, cors: {maxAge: -1}}]}",
            ".filters[0].cors.maxAge",
        ),
    ] {
        assert_rule_err(&one_rule_err(rule), suffix);
    }
}
