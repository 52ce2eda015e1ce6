//! CUSTOM policies: which provider a request is handed to, one set over the Gateway's and
//! the Service's policies, and the refusal when they name two providers.
use super::*;

/// Two CUSTOM policies on `demo/web` (`paths`, provider) each, and a DENY for `/blocked`.
fn custom_table(first: (&str, &str), second: (&str, &str)) -> SecurityTable {
    authz(&format!(
        "
- {{name: c1, namespace: demo, targetRefs: [{{name: web}}], action: CUSTOM, provider: {{name: {p1}}},
   rules: [{{to: [{{operation: {{paths: [\"{r1}\"]}}}}]}}]}}
- {{name: c2, namespace: demo, targetRefs: [{{name: web}}], action: CUSTOM, provider: {{name: {p2}}},
   rules: [{{to: [{{operation: {{paths: [\"{r2}\"]}}}}]}}]}}
- {{name: d, namespace: demo, targetRefs: [{{name: web}}], action: DENY,
   rules: [{{to: [{{operation: {{paths: [/blocked]}}}}]}}]}}
",
        r1 = first.0,
        p1 = first.1,
        r2 = second.0,
        p2 = second.1,
    ))
}

#[test]
fn custom_policies_name_the_provider_to_ask() {
    let t = custom_table(("/admin*", "authz"), ("/ops*", "authz"));
    let custom = |path: &str| t.custom(&web(), None, 80, &client(), &get(path));
    // A CUSTOM rule matched: ask its provider (the first matching policy names it).
    assert_eq!(
        custom("/admin/users"),
        Ok(Some(("authz".into(), "demo/c1".into())))
    );
    assert_eq!(custom("/ops"), Ok(Some(("authz".into(), "demo/c2".into()))));
    // None matched: nothing to ask; DENY and ALLOW are `check`'s, after it.
    assert_eq!(custom("/public"), Ok(None));
    assert_eq!(custom("/blocked"), Ok(None));
    assert_eq!(check(&t, &mut get("/blocked")), denied("demo/d"));
    // Another Service is not these policies' business.
    let other = ServiceRef::new("demo", "other");
    assert_eq!(
        t.custom(&other, None, 80, &client(), &get("/admin")),
        Ok(None)
    );
}

#[test]
fn custom_policies_naming_two_providers_refuse_what_they_match() {
    let t = custom_table(("/admin*", "authz"), ("/ops*", "other"));
    for path in ["/admin", "/ops"] {
        assert_eq!(
            t.custom(&web(), None, 80, &client(), &get(path)),
            denied(BAD_CUSTOM).map(|()| None),
            "{path}"
        );
    }
    // What no CUSTOM rule matches goes on.
    assert_eq!(
        t.custom(&web(), None, 80, &client(), &get("/public")),
        Ok(None)
    );
}

#[test]
fn the_gateways_and_the_services_custom_policies_are_one_set() {
    let gw = ServiceRef::new("demo", "waypoint");
    let t = authz(
        "
- {name: g, namespace: demo, targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}],
   action: CUSTOM, provider: {name: authz}, rules: [{to: [{operation: {paths: [/admin*]}}]}]}
- {name: s, namespace: demo, targetRefs: [{name: web}], action: CUSTOM, provider: {name: other},
   rules: [{to: [{operation: {paths: [/ops*]}}]}]}
",
    );
    // Two providers over both levels: what either matches is refused, once.
    for path in ["/admin", "/ops"] {
        assert_eq!(
            t.custom(&web(), via(&gw), 80, &client(), &get(path)),
            denied(BAD_CUSTOM).map(|()| None),
            "{path}"
        );
    }
    assert_eq!(
        t.custom(&web(), via(&gw), 80, &client(), &get("/x")),
        Ok(None)
    );
    // Without the Gateway's, the Service's alone: one provider.
    assert_eq!(
        t.custom(&web(), None, 80, &client(), &get("/ops")),
        Ok(Some(("other".into(), "demo/s".into())))
    );
}
