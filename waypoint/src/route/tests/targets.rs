//! Which routes apply to a request: parents and ports, hostnames; with the table helpers
//! of the route tests.
use super::*;

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

/// A ServiceEntry parent (an egress waypoint's), by its name; what istiod takes and does
/// not apply (a parent's `sectionName`, a rule's `sessionPersistence`) leaves the route as
/// it would be without it.
#[test]
fn a_service_entry_parent_and_what_istiod_ignores() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs:
    - {kind: ServiceEntry, group: networking.istio.io, name: api-ext, sectionName: https}
    - {name: echo, sectionName: http}
  rules:
    - name: api
      matches: [{path: {value: /api}}]
      sessionPersistence: {sessionName: s, type: Cookie}
",
    );
    let ext = ServiceRef::new("demo", "api-ext");
    let picked = t.select(&ext, 443, &get("/api")).unwrap().unwrap();
    assert_eq!(&*picked.name, "api");
    assert_eq!(pick_name_on(&t, 80, &get("/api")), some("api"));
    for (parent, field) in [
        ("{kind: ServiceEntry, name: x}", "group"),
        ("{kind: ServiceEntry, group: '', name: x}", "group"),
        (
            "{kind: Gateway, group: gateway.networking.k8s.io, name: x}",
            "kind",
        ),
    ] {
        let e = build_err(&format!(
            "
- name: r
  namespace: demo
  parentRefs: [{parent}]
"
        ));
        assert_eq!(
            e.path,
            format!("httpRoutes[demo/r].parentRefs[0].{field}"),
            "{e}"
        );
    }
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
                edits: None,
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

/// A backendRef of istiod's `Hostname` kind names a Service by hostname (a ServiceEntry's
/// host): no namespace, one host, Istio's group; a parent cannot be one.
#[test]
fn a_hostname_backend_names_a_service_by_its_host() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
    - backendRefs:
        - {kind: Hostname, group: networking.istio.io, name: api.example.com, port: 443}
",
    );
    let rule = t.select(&echo(), 80, &get("/")).unwrap().unwrap();
    let b = rule.pick_for(&echo(), 0).unwrap();
    assert_eq!(b.service, ServiceRef::by_host("api.example.com"));
    assert_eq!(b.service.host(), Some("api.example.com"));
    assert_eq!(b.port, Some(443));
    for (backend, field, says) in [
        (
            "{kind: Hostname, group: networking.istio.io, name: api.example.com, namespace: demo}",
            "namespace",
            "no namespace",
        ),
        (
            "{kind: Hostname, name: api.example.com}",
            "group",
            "networking.istio.io",
        ),
        (
            "{kind: Hostname, group: networking.istio.io, name: '*example.com'}",
            "name",
            "a wildcard is `*.` followed by a domain",
        ),
        (
            "{kind: Hostname, group: networking.istio.io, name: 'a/b'}",
            "name",
            "not a hostname",
        ),
        (
            "{kind: ServiceEntry, group: networking.istio.io, name: x}",
            "kind",
            "Hostname",
        ),
    ] {
        let e = build_err(&format!(
            "
- name: r
  namespace: demo
  parentRefs: [{{name: echo}}]
  rules: [{{backendRefs: [{backend}]}}]
"
        ));
        assert_eq!(
            e.path,
            format!("httpRoutes[demo/r].rules[0].backendRefs[0].{field}"),
            "{e}"
        );
        assert!(e.message.contains(says), "{e}");
    }
    // A hostname parent is the VirtualService translation's, not an HTTPRoute's.
    let e = build_err(
        "
- name: r
  namespace: demo
  parentRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com}]
",
    );
    assert_eq!(e.path, "httpRoutes[demo/r].parentRefs[0].kind", "{e}");
}
