//! A rule's conditions: `to.operation` (methods, paths, hosts, ports), `from.source`
//! (principals, namespaces) and `when` keys.
use super::*;

// ---------------------------------------------------------------------------------------
// Operation.

#[test]
fn operation_methods_and_not_methods() {
    let t = allow_one(r#"{to: [{operation: {methods: [GET, HEAD]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(allows(&t, 80, &client(), parts("HEAD", "/", &[])));
    assert!(!allows(&t, 80, &client(), parts("POST", "/", &[])));
    // Methods are case-sensitive.
    let t = allow_one(r#"{to: [{operation: {methods: [get]}}]}"#);
    assert!(!allows(&t, 80, &client(), get("/")));

    let t = allow_one(r#"{to: [{operation: {notMethods: [DELETE]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(!allows(&t, 80, &client(), parts("DELETE", "/", &[])));
}

#[test]
fn operation_paths() {
    let t = allow_one(r#"{to: [{operation: {paths: ["/exact", "/api/*", "*.png"]}}]}"#);
    for (path, want) in [
        ("/exact", true),
        ("/exact?q=1", true),
        ("/exact/", false),
        ("/exactly", false),
        ("/api/", true),
        ("/api/v1/users", true),
        ("/api", false),
        ("/img/a.png", true),
        ("/img/a.png?x=y", true),
        ("/img/a.jpg", false),
        ("/", false),
    ] {
        assert_eq!(allows(&t, 80, &client(), get(path)), want, "{path}");
    }
}

#[test]
fn operation_paths_presence() {
    let t = allow_one(r#"{to: [{operation: {paths: ["*"]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(allows(&t, 80, &client(), get("/anything")));
}

#[test]
fn operation_not_paths() {
    let t = allow_one(r#"{to: [{operation: {notPaths: ["/private/*", "/secret"]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/public")));
    assert!(allows(&t, 80, &client(), get("/secret/x")));
    assert!(!allows(&t, 80, &client(), get("/secret")));
    assert!(!allows(&t, 80, &client(), get("/private/a")));

    let t = allow_one(r#"{to: [{operation: {paths: ["/api/*"], notPaths: ["/api/admin*"]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/api/users")));
    assert!(!allows(&t, 80, &client(), get("/api/admin/users")));
    assert!(!allows(&t, 80, &client(), get("/other")));
}

#[test]
fn operation_hosts_from_the_host_header_without_port() {
    let t = allow_one(
        r#"{to: [{operation: {hosts: ["web.demo.svc.cluster.local", "*.example.com"]}}]}"#,
    );
    let with_host = |h: &str| parts("GET", "/", &[("host", h)]);
    assert!(allows(&t, 80, &client(), with_host(HOST)));
    assert!(allows(
        &t,
        80,
        &client(),
        with_host("web.demo.svc.cluster.local:8080")
    ));
    assert!(allows(&t, 80, &client(), with_host("a.example.com")));
    assert!(allows(&t, 80, &client(), with_host("a.example.com:443")));
    assert!(!allows(&t, 80, &client(), with_host("example.com")));
    assert!(!allows(&t, 80, &client(), with_host("other")));
    assert!(!allows(&t, 80, &client(), parts("GET", "/", &[])));
    // The URI's authority (HTTP/2 `:authority`, an absolute URI) wins over Host.
    assert!(allows(
        &t,
        80,
        &client(),
        parts("GET", "http://a.example.com:80/x", &[("host", "other")])
    ));

    let t = allow_one(r#"{to: [{operation: {notHosts: ["admin.example.com"]}}]}"#);
    assert!(allows(&t, 80, &client(), with_host("www.example.com")));
    assert!(!allows(
        &t,
        80,
        &client(),
        with_host("admin.example.com:8443")
    ));
}

#[test]
fn operation_ports_and_not_ports() {
    let t = allow_one(r#"{to: [{operation: {ports: ["80", "8080"]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(allows(&t, 8080, &client(), get("/")));
    assert!(!allows(&t, 9090, &client(), get("/")));
    // The port is the Service port given to `check`, not one in the Host header.
    assert!(!allows(
        &t,
        9090,
        &client(),
        parts("GET", "/", &[("host", "web:80")])
    ));

    let t = allow_one(r#"{to: [{operation: {notPorts: ["9090"]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(!allows(&t, 9090, &client(), get("/")));
}

// ---------------------------------------------------------------------------------------
// Source.

#[test]
fn source_principals_with_and_without_spiffe_prefix() {
    for value in [CLIENT, "spiffe://cluster.local/ns/demo/sa/client"] {
        let t = allow_one(&format!(
            r#"{{from: [{{source: {{principals: ["{value}"]}}}}]}}"#
        ));
        assert!(allows(&t, 80, &client(), get("/")), "{value}");
        assert!(
            !allows(
                &t,
                80,
                &peer(Some("cluster.local/ns/demo/sa/other"), Some("demo")),
                get("/")
            ),
            "{value}"
        );
        assert!(!allows(&t, 80, &Peer::default(), get("/")), "{value}");
    }
    let t = allow_one(r#"{from: [{source: {principals: ["spiffe://cluster.local/ns/demo/*"]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(!allows(
        &t,
        80,
        &peer(Some("cluster.local/ns/prod/sa/client"), None),
        get("/")
    ));
}

#[test]
fn source_principals_presence_needs_a_principal() {
    let t = allow_one(r#"{from: [{source: {principals: ["*"]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(!allows(&t, 80, &peer(None, Some("demo")), get("/")));
    assert!(!allows(&t, 80, &Peer::default(), get("/")));
}

#[test]
fn source_not_principals() {
    let t = allow_one(
        r#"{from: [{source: {notPrincipals: ["spiffe://cluster.local/ns/demo/sa/bad"]}}]}"#,
    );
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(!allows(
        &t,
        80,
        &peer(Some("cluster.local/ns/demo/sa/bad"), Some("demo")),
        get("/")
    ));
    // Istio's `not` of a principal matcher: a peer without a principal is not excluded.
    assert!(allows(&t, 80, &Peer::default(), get("/")));

    // A DENY on notPrincipals ["*"] refuses unauthenticated peers only.
    let t = authz(&policy_yaml(
        "DENY",
        r#"[{from: [{source: {notPrincipals: ["*"]}}]}]"#,
    ));
    assert_eq!(check(&t, &mut get("/")), Ok(()));
    assert_eq!(
        t.check(&web(), None, 80, &Peer::default(), &mut get("/")),
        denied("demo/p")
    );
}

#[test]
fn source_namespaces_and_not_namespaces() {
    let t = allow_one(r#"{from: [{source: {namespaces: [demo, "team-*"]}}]}"#);
    assert!(allows(&t, 80, &peer(None, Some("demo")), get("/")));
    assert!(allows(&t, 80, &peer(None, Some("team-a")), get("/")));
    assert!(!allows(&t, 80, &peer(None, Some("prod")), get("/")));
    assert!(!allows(&t, 80, &Peer::default(), get("/")));

    let t = allow_one(r#"{from: [{source: {notNamespaces: [prod]}}]}"#);
    assert!(allows(&t, 80, &peer(None, Some("demo")), get("/")));
    assert!(!allows(&t, 80, &peer(None, Some("prod")), get("/")));
}

#[test]
fn source_fields_of_one_entry_must_all_hold() {
    let t = allow_one(r#"{from: [{source: {principals: ["*"], namespaces: [demo]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(!allows(&t, 80, &peer(Some(CLIENT), Some("prod")), get("/")));
    assert!(!allows(&t, 80, &peer(None, Some("demo")), get("/")));
}

// ---------------------------------------------------------------------------------------
// Conditions.

#[test]
fn when_request_header() {
    let t = allow_one(r#"{when: [{key: "request.headers[X-Foo]", values: ["bar", "baz*"]}]}"#);
    let h = |v: &str| parts("GET", "/", &[("x-foo", v)]);
    assert!(allows(&t, 80, &client(), h("bar")));
    assert!(allows(&t, 80, &client(), h("bazooka")));
    assert!(!allows(&t, 80, &client(), h("qux")));
    assert!(!allows(&t, 80, &client(), get("/")));
    // Any of several values of the header.
    assert!(allows(
        &t,
        80,
        &client(),
        parts("GET", "/", &[("x-foo", "no"), ("x-foo", "bar")])
    ));
}

#[test]
fn when_not_values() {
    let t = allow_one(r#"{when: [{key: "request.headers[x-env]", notValues: ["prod*"]}]}"#);
    let h = |v: &str| parts("GET", "/", &[("x-env", v)]);
    assert!(allows(&t, 80, &client(), h("dev")));
    assert!(!allows(&t, 80, &client(), h("production")));

    let t = allow_one(
        r#"{when: [{key: "request.headers[x-env]", values: ["*"], notValues: ["prod"]}]}"#,
    );
    assert!(allows(&t, 80, &client(), h("dev")));
    assert!(!allows(&t, 80, &client(), h("prod")));
}

#[test]
fn when_on_something_absent_never_holds() {
    for key in [
        "request.headers[x-foo]",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "request.auth.claims[groups]",
        "source.principal",
        "source.namespace",
    ] {
        let t = allow_one(&format!(r#"{{when: [{{key: "{key}", values: ["*"]}}]}}"#));
        assert!(!allows(&t, 80, &Peer::default(), get("/")), "{key}");
    }
}

#[test]
fn when_source_and_destination() {
    let t = allow_one(r#"{when: [{key: source.namespace, values: [demo]}]}"#);
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(!allows(&t, 80, &peer(None, Some("prod")), get("/")));

    let t = allow_one(&format!(
        r#"{{when: [{{key: source.principal, values: ["{CLIENT}"]}}]}}"#
    ));
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(!allows(
        &t,
        80,
        &peer(Some("cluster.local/ns/demo/sa/x"), None),
        get("/")
    ));

    let t = allow_one(r#"{when: [{key: destination.port, values: ["8080"]}]}"#);
    assert!(allows(&t, 8080, &client(), get("/")));
    assert!(!allows(&t, 80, &client(), get("/")));

    let t = allow_one(r#"{when: [{key: destination.port, notValues: ["9090"]}]}"#);
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(!allows(&t, 9090, &client(), get("/")));
}

#[test]
fn when_conditions_must_all_hold() {
    let t = allow_one(
        r#"{when: [{key: source.namespace, values: [demo]},
                   {key: destination.port, values: ["80"]}]}"#,
    );
    assert!(allows(&t, 80, &client(), get("/")));
    assert!(!allows(&t, 81, &client(), get("/")));
    assert!(!allows(&t, 80, &peer(None, Some("x")), get("/")));
}
