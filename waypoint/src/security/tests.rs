//! Unit tests for compiling `AuthorizationPolicy` / `RequestAuthentication` and for
//! checking requests against them.

use super::*;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

mod conditions;
mod custom;
mod ip;
mod jwt;
mod jwt_config;
mod targets;

// ---------------------------------------------------------------------------------------
// Helpers: specs, tables, requests, peers.

const ISS: &str = "https://issuer.example";
const HOST: &str = "web.demo.svc.cluster.local";
const CLIENT: &str = "cluster.local/ns/demo/sa/client";

fn web() -> ServiceRef {
    ServiceRef::new("demo", "web")
}

/// Through the waypoint of Gateway `gw`, in a mesh whose root namespace is Istio's default.
fn via(gw: &ServiceRef) -> Option<Through<'_>> {
    Some(Through {
        gateway: gw,
        root: "istio-system",
    })
}

fn policies(yaml: &str) -> Vec<AuthorizationPolicySpec> {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{yaml}"))
}

/// A `read` for `jwksFile` that finds no file.
fn no_file(path: &str) -> std::io::Result<String> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{path} does not exist"),
    ))
}

fn build(
    p: &[AuthorizationPolicySpec],
    a: &[RequestAuthenticationSpec],
) -> Result<SecurityTable, RouteError> {
    SecurityTable::build(p, a, &no_file, &JwksRegistry::default())
}

fn authz(yaml: &str) -> SecurityTable {
    build(&policies(yaml), &[]).unwrap_or_else(|e| panic!("build failed: {e}\n{yaml}"))
}

#[track_caller]
fn authz_err(yaml: &str) -> RouteError {
    match build(&policies(yaml), &[]) {
        Ok(_) => panic!("build succeeded but should not have:\n{yaml}"),
        Err(e) => e,
    }
}

/// One policy `demo/p` on Service `demo/web` with `action` and `rules` (YAML flow text).
fn policy_yaml(action: &str, rules: &str) -> String {
    format!(
        "
- name: p
  namespace: demo
  targetRefs: [{{name: web}}]
  action: {action}
  rules: {rules}
"
    )
}

/// An ALLOW policy with the single rule `rule` (a YAML flow mapping).
fn allow_one(rule: &str) -> SecurityTable {
    authz(&policy_yaml("ALLOW", &format!("[{rule}]")))
}

#[track_caller]
fn one_rule_err(rule: &str) -> RouteError {
    authz_err(&policy_yaml("ALLOW", &format!("[{rule}]")))
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn get(uri: &str) -> Parts {
    parts("GET", uri, &[("host", HOST)])
}

fn peer(principal: Option<&str>, namespace: Option<&str>) -> Peer {
    Peer {
        principal: principal.map(Into::into),
        namespace: namespace.map(Into::into),
        ..Peer::default()
    }
}

fn client() -> Peer {
    peer(Some(CLIENT), Some("demo"))
}

/// `t.check` for Service `demo/web`, port 80, from [`client`].
fn check(t: &SecurityTable, p: &mut Parts) -> Result<(), Refusal> {
    t.check(&web(), None, 80, &client(), p)
}

/// Whether the single-rule ALLOW table `t` lets `p` through from `peer` on `port`.
fn allows(t: &SecurityTable, port: u16, peer: &Peer, mut p: Parts) -> bool {
    match t.check(&web(), None, port, peer, &mut p) {
        Ok(()) => true,
        Err(Refusal::Denied(k)) => {
            assert_eq!(&*k, "demo/p");
            false
        }
        Err(other) => panic!("unexpected refusal {other:?}"),
    }
}

fn denied(key: &str) -> Result<(), Refusal> {
    Err(Refusal::Denied(key.into()))
}

fn unauthenticated(why: &'static str) -> Result<(), Refusal> {
    Err(Refusal::Unauthenticated(why))
}

// ---------------------------------------------------------------------------------------
// Helpers: keys and tokens.

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An ES256 signing key and its public JWK.
struct Signer {
    key: EncodingKey,
    jwk: Jwk,
}

impl Signer {
    fn es256() -> Signer {
        let kp = rcgen::KeyPair::generate().unwrap();
        let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        Signer { key, jwk }
    }

    fn with_kid(mut self, kid: &str) -> Signer {
        self.jwk.common.key_id = Some(kid.to_string());
        self
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_kid(None, claims)
    }

    fn sign_kid(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

fn jwks(signers: &[&Signer]) -> String {
    let keys: Vec<&Jwk> = signers.iter().map(|s| &s.jwk).collect();
    json!({ "keys": keys }).to_string()
}

/// Valid claims of [`ISS`] for `sub`, expiring in 10 minutes.
fn claims(sub: &str) -> Value {
    json!({ "iss": ISS, "sub": sub, "exp": now() + 600 })
}

/// A JWT rule of [`ISS`] trusting `s`.
fn jwt_rule(s: &Signer) -> Value {
    json!({ "issuer": ISS, "jwks": jwks(&[s]) })
}

/// A `RequestAuthentication` `demo/<name>` on Service `demo/web` with `rules`.
fn authn_named(name: &str, rules: Vec<Value>) -> RequestAuthenticationSpec {
    serde_json::from_value(json!({
        "name": name,
        "namespace": "demo",
        "targetRefs": [{ "name": "web" }],
        "jwtRules": rules,
    }))
    .unwrap()
}

fn authn(rule: Value) -> RequestAuthenticationSpec {
    authn_named("a", vec![rule])
}

/// A table with the JWT rule `rule` on `demo/web` and the policies of `policy_yaml`
/// (empty: none).
fn jwt_table(rule: Value, policy_yaml: &str) -> SecurityTable {
    let p = if policy_yaml.is_empty() {
        Vec::new()
    } else {
        policies(policy_yaml)
    };
    build(&p, &[authn(rule)]).unwrap_or_else(|e| panic!("build failed: {e}"))
}

#[track_caller]
fn authn_err(rules: Vec<Value>) -> RouteError {
    match build(&[], &[authn_named("a", rules)]) {
        Ok(_) => panic!("build succeeded but should not have"),
        Err(e) => e,
    }
}

/// `GET /` with `Authorization: Bearer <token>`.
fn bearer(token: &str) -> Parts {
    parts(
        "GET",
        "/",
        &[
            ("host", HOST),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
}

// ---------------------------------------------------------------------------------------
// StrMatch and Field.

#[test]
fn str_match_forms() {
    assert_eq!(StrMatch::new("*"), StrMatch::Presence);
    assert_eq!(StrMatch::new("/api/*"), StrMatch::Prefix("/api/".into()));
    assert_eq!(StrMatch::new("*.png"), StrMatch::Suffix(".png".into()));
    assert_eq!(StrMatch::new("/x"), StrMatch::Exact("/x".into()));
    assert_eq!(StrMatch::new(""), StrMatch::Exact(String::new()));

    assert!(StrMatch::Presence.matches("a"));
    assert!(!StrMatch::Presence.matches(""));
    assert!(StrMatch::new("/api/*").matches("/api/"));
    assert!(StrMatch::new("/api/*").matches("/api/v1/x"));
    assert!(!StrMatch::new("/api/*").matches("/api"));
    assert!(StrMatch::new("*.png").matches("/a/b.png"));
    assert!(!StrMatch::new("*.png").matches("/a/b.png.txt"));
    assert!(StrMatch::new("/x").matches("/x"));
    assert!(!StrMatch::new("/x").matches("/x/"));
    assert!(!StrMatch::new("/x").matches("/X"));
}

#[test]
fn field_semantics() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // An empty field holds, whatever the request has.
    let empty = Field::default();
    assert!(empty.holds(&[]));
    assert!(empty.holds(&["a"]));

    // Values: any candidate matching any value; nothing to match: does not hold.
    let f = Field::new(&s(&["a", "b*"]), &[]);
    assert!(f.holds(&["a"]));
    assert!(f.holds(&["x", "bc"]));
    assert!(!f.holds(&["c"]));
    assert!(!f.holds(&[]));

    // Not values: no candidate may match; nothing to match: holds.
    let f = Field::new(&[], &s(&["a"]));
    assert!(f.holds(&["b"]));
    assert!(!f.holds(&["a"]));
    assert!(!f.holds(&["b", "a"]));
    assert!(f.holds(&[]));

    // Both: a value must match and no not value.
    let f = Field::new(&s(&["/api/*"]), &s(&["/api/admin*"]));
    assert!(f.holds(&["/api/users"]));
    assert!(!f.holds(&["/api/admin/x"]));
    assert!(!f.holds(&["/other"]));
}

// ---------------------------------------------------------------------------------------
// ALLOW / DENY semantics.

#[test]
fn no_policies_allow_everything() {
    let t = build(&[], &[]).unwrap();
    assert_eq!(t.counts(), (0, 0));
    assert_eq!(check(&t, &mut get("/")), Ok(()));
    assert_eq!(
        t.check(
            &web(),
            None,
            8080,
            &Peer::default(),
            &mut parts("DELETE", "/x", &[])
        ),
        Ok(())
    );
}

#[test]
fn deny_match_refuses_with_the_policy_key() {
    let t = authz(&policy_yaml(
        "DENY",
        r#"[{to: [{operation: {paths: ["/admin"]}}]}]"#,
    ));
    assert_eq!(t.counts(), (1, 0));
    assert_eq!(check(&t, &mut get("/admin")), denied("demo/p"));
    assert_eq!(check(&t, &mut get("/public")), Ok(()));
}

#[test]
fn deny_beats_allow() {
    let t = authz(
        r#"
- name: allow-all
  namespace: demo
  targetRefs: [{name: web}]
  rules: [{}]
- name: deny-admin
  namespace: demo
  targetRefs: [{name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#,
    );
    assert_eq!(check(&t, &mut get("/admin/x")), denied("demo/deny-admin"));
    assert_eq!(check(&t, &mut get("/x")), Ok(()));
}

#[test]
fn the_first_matching_deny_policy_is_named() {
    let t = authz(
        r#"
- name: d1
  namespace: demo
  targetRefs: [{name: web}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
- name: d2
  namespace: demo
  targetRefs: [{name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/a"]}}]}]
"#,
    );
    assert_eq!(check(&t, &mut get("/a")), denied("demo/d2"));
    assert_eq!(
        check(&t, &mut parts("DELETE", "/a", &[])),
        denied("demo/d1")
    );
}

#[test]
fn allow_policies_without_a_match_deny() {
    let t = authz(
        r#"
- name: a1
  namespace: demo
  targetRefs: [{name: web}]
  rules: [{to: [{operation: {paths: ["/one"]}}]}]
- name: a2
  namespace: demo
  targetRefs: [{name: web}]
  action: ALLOW
  rules: [{to: [{operation: {paths: ["/two"]}}]}]
"#,
    );
    // Any ALLOW policy is enough.
    assert_eq!(check(&t, &mut get("/one")), Ok(()));
    assert_eq!(check(&t, &mut get("/two")), Ok(()));
    // None: refused, naming the first ALLOW policy.
    assert_eq!(check(&t, &mut get("/three")), denied("demo/a1"));
}

#[test]
fn allow_with_no_rules_allows_nothing() {
    let t = authz(&policy_yaml("ALLOW", "[]"));
    assert_eq!(check(&t, &mut get("/")), denied("demo/p"));
    // Nor with the rules key left out.
    let t = authz(
        "
- name: p
  namespace: demo
  targetRefs: [{name: web}]
",
    );
    assert_eq!(check(&t, &mut get("/")), denied("demo/p"));
    assert_eq!(
        t.check(
            &web(),
            None,
            1,
            &Peer::default(),
            &mut parts("POST", "/x", &[])
        ),
        denied("demo/p")
    );
}

#[test]
fn allow_with_an_empty_rule_allows_all() {
    let t = authz(&policy_yaml("ALLOW", "[{}]"));
    assert_eq!(check(&t, &mut get("/")), Ok(()));
    assert_eq!(
        t.check(
            &web(),
            None,
            1,
            &Peer::default(),
            &mut parts("POST", "/x", &[])
        ),
        Ok(())
    );
}

#[test]
fn deny_with_no_rules_denies_nothing() {
    let t = authz(&policy_yaml("DENY", "[]"));
    assert_eq!(check(&t, &mut get("/")), Ok(()));
}

#[test]
fn deny_with_an_empty_rule_denies_everything() {
    let t = authz(&policy_yaml("DENY", "[{}]"));
    assert_eq!(check(&t, &mut get("/")), denied("demo/p"));
}

#[test]
fn policies_apply_only_to_their_target_services() {
    let t = authz(&policy_yaml("DENY", "[{}]"));
    assert_eq!(check(&t, &mut get("/")), denied("demo/p"));
    for other in [
        ServiceRef::new("demo", "other"),
        ServiceRef::new("prod", "web"),
    ] {
        assert_eq!(
            t.check(&other, None, 80, &client(), &mut get("/")),
            Ok(()),
            "{other}"
        );
    }
}

#[test]
fn target_refs_namespace_defaults_to_the_policys() {
    let t = authz(
        r#"
- name: p
  namespace: demo
  action: DENY
  targetRefs:
  - {name: web}
  - {name: api, namespace: prod, kind: Service, group: ""}
  - {name: db, group: core}
  rules: [{}]
"#,
    );
    let deny = |ns: &str, name: &str| {
        t.check(
            &ServiceRef::new(ns, name),
            None,
            80,
            &client(),
            &mut get("/"),
        )
    };
    assert_eq!(deny("demo", "web"), denied("demo/p"));
    // A target in another namespace never matches (istiod's attachment): one team's
    // policy does not reach another team's Service; the policy's other targets keep it.
    assert_eq!(deny("prod", "api"), Ok(()));
    assert_eq!(deny("demo", "db"), denied("demo/p"));
    assert_eq!(deny("demo", "api"), Ok(()));
    assert_eq!(deny("prod", "web"), Ok(()));
}

#[test]
fn a_rule_needs_from_to_and_when_to_all_hold() {
    let t = allow_one(
        r#"{from: [{source: {namespaces: [demo]}}],
            to: [{operation: {methods: [GET]}}],
            when: [{key: "request.headers[x-ok]", values: ["1"]}]}"#,
    );
    let ok = || parts("GET", "/", &[("x-ok", "1")]);
    assert!(allows(&t, 80, &client(), ok()));
    assert!(!allows(&t, 80, &peer(Some(CLIENT), Some("prod")), ok()));
    assert!(!allows(
        &t,
        80,
        &client(),
        parts("PUT", "/", &[("x-ok", "1")])
    ));
    assert!(!allows(
        &t,
        80,
        &client(),
        parts("GET", "/", &[("x-ok", "2")])
    ));
}

#[test]
fn entries_of_from_and_to_are_alternatives() {
    let t = allow_one(
        r#"{from: [{source: {namespaces: [a]}}, {source: {namespaces: [b]}}],
            to: [{operation: {paths: ["/x"]}}, {operation: {methods: [POST]}}]}"#,
    );
    let a = peer(None, Some("a"));
    let b = peer(None, Some("b"));
    let c = peer(None, Some("c"));
    assert!(allows(&t, 80, &a, get("/x")));
    assert!(allows(&t, 80, &b, parts("POST", "/y", &[])));
    assert!(!allows(&t, 80, &c, get("/x")));
    assert!(!allows(&t, 80, &a, get("/y")));
}

#[test]
fn rules_of_a_policy_are_alternatives() {
    let t = authz(&policy_yaml(
        "ALLOW",
        r#"[{to: [{operation: {paths: ["/x"]}}]}, {to: [{operation: {paths: ["/y"]}}]}]"#,
    ));
    assert_eq!(check(&t, &mut get("/x")), Ok(()));
    assert_eq!(check(&t, &mut get("/y")), Ok(()));
    assert_eq!(check(&t, &mut get("/z")), denied("demo/p"));
}

#[test]
fn fields_within_an_entry_must_all_hold() {
    let t = allow_one(r#"{to: [{operation: {methods: [GET], paths: ["/x"]}}]}"#);
    assert!(allows(&t, 80, &client(), get("/x")));
    assert!(!allows(&t, 80, &client(), get("/y")));
    assert!(!allows(&t, 80, &client(), parts("POST", "/x", &[])));
}

// ---------------------------------------------------------------------------------------
// Build errors of policies.

#[test]
fn build_error_action_and_provider() {
    // CUSTOM needs its provider; only CUSTOM has one.
    let e = authz_err(&policy_yaml("CUSTOM", "[{}]"));
    assert_eq!(e.path, "authorizationPolicies[demo/p].provider", "{e}");
    let e = authz_err(&policy_yaml("DENY", "[{}]\n  provider: {name: authz}"));
    assert_eq!(e.path, "authorizationPolicies[demo/p].provider", "{e}");
    let e = authz_err(&policy_yaml("allow", "[{}]"));
    assert_eq!(e.path, "authorizationPolicies[demo/p].action", "{e}");
    assert!(e.message.contains("CUSTOM"), "{e}");
}

#[test]
fn build_error_target_refs() {
    let e = authz_err(
        "
- name: p
  namespace: demo
  targetRefs: []
",
    );
    assert_eq!(e.path, "authorizationPolicies[demo/p].targetRefs", "{e}");

    let e = authz_err(
        "
- name: p
  namespace: demo
  targetRefs: [{kind: Pod, name: web-0}]
",
    );
    assert_eq!(
        e.path, "authorizationPolicies[demo/p].targetRefs[0].kind",
        "{e}"
    );
    assert!(e.message.contains("a Service or its Gateway"), "{e}");

    let e = authz_err(
        "
- name: p
  namespace: demo
  targetRefs: [{name: web}, {name: x, group: apps}]
",
    );
    assert_eq!(
        e.path, "authorizationPolicies[demo/p].targetRefs[1].group",
        "{e}"
    );
}

#[test]
fn build_error_target_refs_missing_is_a_parse_error() {
    let r: Result<Vec<AuthorizationPolicySpec>, _> =
        serde_yaml::from_str("[{name: p, namespace: demo}]");
    assert!(r.is_err());
}

#[test]
fn build_error_bad_ports() {
    for port in ["abc", "0", "70000", "-1", ""] {
        let e = one_rule_err(&format!(
            r#"{{to: [{{operation: {{ports: ["{port}"]}}}}]}}"#
        ));
        assert_eq!(
            e.path, "authorizationPolicies[demo/p].rules[0].to[0].operation.ports[0]",
            "{port}: {e}"
        );
    }
    let e = authz_err(&policy_yaml(
        "ALLOW",
        r#"[{}, {to: [{operation: {}}, {operation: {ports: ["80", "x"]}}]}]"#,
    ));
    assert_eq!(
        e.path, "authorizationPolicies[demo/p].rules[1].to[1].operation.ports[1]",
        "{e}"
    );
    // Bad notPorts are refused too (see `not_ports_errors_name_not_ports` for the path).
    let e = one_rule_err(r#"{to: [{operation: {notPorts: ["http"]}}]}"#);
    assert!(
        e.path
            .starts_with("authorizationPolicies[demo/p].rules[0].to[0].operation."),
        "{e}"
    );
}

#[test]
fn not_ports_errors_name_not_ports() {
    let e = one_rule_err(r#"{to: [{operation: {ports: ["80"], notPorts: ["x"]}}]}"#);
    assert_eq!(
        e.path,
        "authorizationPolicies[demo/p].rules[0].to[0].operation.notPorts[0]"
    );
}

#[test]
fn build_error_duplicate_policy_names() {
    let e = authz_err(
        "
- {name: p, namespace: demo, targetRefs: [{name: web}]}
- {name: q, namespace: demo, targetRefs: [{name: web}]}
- {name: p, namespace: demo, targetRefs: [{name: other}]}
",
    );
    assert_eq!(e.path, "authorizationPolicies[demo/p]", "{e}");
    // The same name in another namespace is another policy.
    let t = authz(
        "
- {name: p, namespace: demo, targetRefs: [{name: web}]}
- {name: p, namespace: prod, targetRefs: [{name: web}]}
",
    );
    assert_eq!(t.counts(), (2, 0));
}

#[test]
fn build_error_when_keys() {
    let e = one_rule_err(r#"{when: [{key: request.ip, values: ["1.2.3.4"]}]}"#);
    assert_eq!(
        e.path, "authorizationPolicies[demo/p].rules[0].when[0].key",
        "{e}"
    );
    assert!(e.message.contains("request.ip"), "{e}");

    let e = authz_err(&policy_yaml(
        "ALLOW",
        r#"[{}, {when: [{key: source.namespace, values: [a]}, {key: "destination.name", values: [x]}]}]"#,
    ));
    assert_eq!(
        e.path, "authorizationPolicies[demo/p].rules[1].when[1].key",
        "{e}"
    );

    for key in [
        "request.headers[]",
        "request.headers[a b]",
        "request.auth.claims[]",
        "request.auth.claims[a][]",
        "request.headers",
        "request.auth.claims",
    ] {
        let e = one_rule_err(&format!(r#"{{when: [{{key: "{key}", values: [x]}}]}}"#));
        assert_eq!(
            e.path, "authorizationPolicies[demo/p].rules[0].when[0].key",
            "{key}: {e}"
        );
    }

    let e = one_rule_err(r#"{when: [{key: source.namespace}]}"#);
    assert_eq!(
        e.path, "authorizationPolicies[demo/p].rules[0].when[0].values",
        "{e}"
    );
}

#[test]
fn unsupported_fields_are_refused_when_parsing() {
    // An ignored field could widen an ALLOW or narrow a DENY: refused instead.
    for yaml in [
        "[{name: p, namespace: demo, targetRefs: [{name: web}], selector: {}}]",
        "[{name: p, namespace: demo, targetRefs: [{name: web}], rules: [{from: [{source: {ipBlock: [1.2.3.4]}}]}]}]",
        "[{name: p, namespace: demo, targetRefs: [{name: web}], rules: [{to: [{operation: {x: 1}}]}]}]",
    ] {
        let r: Result<Vec<AuthorizationPolicySpec>, _> = serde_yaml::from_str(yaml);
        assert!(r.is_err(), "{yaml}");
    }
}

// ---------------------------------------------------------------------------------------
// Known divergences from Istio/Envoy (ignored until fixed; see the reasons).

#[test]
fn hosts_match_case_insensitively() {
    let t = authz(&policy_yaml(
        "DENY",
        r#"[{to: [{operation: {hosts: ["admin.example.com"]}}]}]"#,
    ));
    let mut p = parts("GET", "/", &[("host", "Admin.Example.COM")]);
    assert_eq!(check(&t, &mut p), denied("demo/p"));
}

#[test]
fn deny_paths_see_normalized_paths() {
    let t = authz(&policy_yaml(
        "DENY",
        r#"[{to: [{operation: {paths: ["/admin*"]}}]}]"#,
    ));
    for path in ["/public/../admin", "/./admin"] {
        assert_eq!(check(&t, &mut get(path)), denied("demo/p"), "{path}");
    }
}

#[test]
fn a_token_is_only_accepted_from_its_issuers_locations() {
    let a = Signer::es256();
    let b = Signer::es256();
    let rules = vec![
        json!({
            "issuer": "https://a.example",
            "jwks": jwks(&[&a]),
            "fromHeaders": [{ "name": "x-a-token" }],
        }),
        json!({ "issuer": "https://b.example", "jwks": jwks(&[&b]) }),
    ];
    let t = build(&[], &[authn_named("a", rules)]).unwrap();
    // An `a` token in the Authorization header, which only `b`'s rule reads.
    let token = a.sign(&json!({ "iss": "https://a.example", "sub": "x", "exp": now() + 600 }));
    assert_eq!(
        check(&t, &mut bearer(&token)),
        unauthenticated("Jwt issuer is not configured")
    );
}

#[test]
fn request_principal_presence_needs_a_subject() {
    let s = Signer::es256();
    let t = jwt_table(
        jwt_rule(&s),
        r#"
- name: p
  namespace: demo
  targetRefs: [{name: web}]
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
"#,
    );
    let c = json!({ "iss": ISS, "exp": now() + 600 });
    assert_eq!(check(&t, &mut bearer(&s.sign(&c))), denied("demo/p"));
}
