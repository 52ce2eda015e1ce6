//! What a policy attaches to: a Service, the waypoint's Gateway (its own level, checked
//! first), the waypoint class from the root namespace; targets that attach nowhere here.
use super::*;

#[test]
fn gateway_policies_apply_to_every_service_in_one_set_with_its_own() {
    let t = authz(
        "
- name: gw-allow
  namespace: demo
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{to: [{operation: {methods: [GET, POST]}}]}]
- name: gw-deny
  namespace: demo
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
- name: web-allow
  namespace: demo
  targetRefs: [{name: web}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
",
    );
    let gw = ServiceRef::new("demo", "waypoint");
    let other = ServiceRef::new("demo", "other");
    let run = |svc: &ServiceRef, gateway: Option<&ServiceRef>, method: &str, path: &str| {
        t.check(
            svc,
            gateway.and_then(via),
            80,
            &client(),
            &mut parts(method, path, &[("host", HOST)]),
        )
    };
    // Through this Gateway: its policies hold for a Service with none of its own...
    assert_eq!(run(&other, Some(&gw), "POST", "/x"), Ok(()));
    assert_eq!(run(&other, Some(&gw), "PUT", "/x"), denied("demo/gw-allow"));
    assert_eq!(
        run(&other, Some(&gw), "GET", "/admin/x"),
        denied("demo/gw-deny")
    );
    // ...and with the Service's, one set (istiod's one RBAC filter per Service in a
    // waypoint): an ALLOW of either lets a request in (POST by the Gateway's, GET by web's),
    // none of them refuses it, and a DENY of either refuses.
    assert_eq!(run(&web(), Some(&gw), "GET", "/x"), Ok(()));
    assert_eq!(run(&web(), Some(&gw), "POST", "/x"), Ok(()));
    assert_eq!(run(&web(), Some(&gw), "PUT", "/x"), denied("demo/gw-allow"));
    assert_eq!(
        run(&web(), Some(&gw), "GET", "/admin/x"),
        denied("demo/gw-deny")
    );
    // Not through the Gateway: web's alone.
    assert_eq!(run(&web(), None, "POST", "/x"), denied("demo/web-allow"));
    // Another waypoint's Gateway, or none: the Gateway's policies do not apply.
    let elsewhere = ServiceRef::new("prod", "waypoint");
    assert_eq!(run(&other, Some(&elsewhere), "PUT", "/admin"), Ok(()));
    assert_eq!(run(&other, None, "PUT", "/admin"), Ok(()));
}

#[test]
fn targets_are_a_service_or_a_gateway() {
    let bad = |refs: &str| {
        authz_err(&format!(
            "[{{name: p, namespace: demo, targetRefs: [{refs}], rules: [{{}}]}}]"
        ))
        .path
    };
    assert_eq!(
        bad("{kind: Gateway, name: waypoint}"),
        "authorizationPolicies[demo/p].targetRefs[0].group"
    );
    assert_eq!(
        bad("{kind: Service, group: apps, name: web}"),
        "authorizationPolicies[demo/p].targetRefs[0].group"
    );
}

#[test]
fn targets_that_attach_nowhere_do_not_void_the_others() {
    // A GatewayClass not from the root namespace beside the Service: the DENY still holds
    // on the Service (the whole policy dropped would open it).
    let t = authz(
        "
- name: p
  namespace: demo
  action: DENY
  targetRefs:
  - {kind: Service, group: '', name: web}
  - {kind: ServiceEntry, group: networking.istio.io, name: ext}
  - {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}
  rules: [{}]
",
    );
    assert_eq!(check(&t, &mut get("/")), denied("demo/p"));
    // A ServiceEntry reaches the waypoint as a Service of the mesh: attached by name.
    let mut p = get("/");
    assert_eq!(
        t.check(&ServiceRef::new("demo", "ext"), None, 80, &client(), &mut p),
        denied("demo/p")
    );
    // Not from the root namespace: a class-wide policy applies nowhere.
    let gw = ServiceRef::new("demo", "waypoint");
    let mut p = get("/");
    assert_eq!(
        t.check(
            &ServiceRef::new("demo", "other"),
            via(&gw),
            80,
            &client(),
            &mut p
        ),
        Ok(())
    );
}

#[test]
fn a_root_namespace_policy_on_the_waypoint_class_applies_to_every_waypoint() {
    let t = authz(
        "
- name: no-trace
  namespace: istio-system
  action: DENY
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  rules: [{to: [{operation: {methods: [TRACE]}}]}]
- name: gw-admin
  namespace: demo
  action: DENY
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{to: [{operation: {paths: [/admin]}}]}]
",
    );
    let run = |gw: &ServiceRef, method: &str, path: &str| {
        let mut p = parts(method, path, &[("host", HOST)]);
        t.check(&web(), via(gw), 80, &client(), &mut p)
    };
    // A waypoint with Gateway policies of its own gets the class's too; one without gets
    // the class's alone.
    let own = ServiceRef::new("demo", "waypoint");
    let bare = ServiceRef::new("prod", "waypoint");
    assert_eq!(run(&own, "TRACE", "/"), denied("istio-system/no-trace"));
    assert_eq!(run(&own, "GET", "/admin"), denied("demo/gw-admin"));
    assert_eq!(run(&bare, "TRACE", "/"), denied("istio-system/no-trace"));
    assert_eq!(run(&bare, "GET", "/admin"), Ok(()));
    assert_eq!(run(&own, "GET", "/"), Ok(()));
}

#[test]
fn the_class_wide_policies_are_the_mesh_configs_root_namespaces() {
    let t = authz(
        "
- name: no-trace
  namespace: istio-system
  action: DENY
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  rules: [{to: [{operation: {methods: [TRACE]}}]}]
- name: only-get
  namespace: mesh-root
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
- name: gw-head
  namespace: demo
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{to: [{operation: {methods: [HEAD]}}]}]
",
    );
    let own = ServiceRef::new("demo", "waypoint");
    let bare = ServiceRef::new("prod", "waypoint");
    let run = |gw: &ServiceRef, root: &str, method: &str| {
        let mut p = parts(method, "/", &[("host", HOST)]);
        let through = Through { gateway: gw, root };
        t.check(&web(), Some(through), 80, &client(), &mut p)
    };
    // Root `istio-system`: its DENY on every waypoint; `mesh-root`'s ALLOW nowhere.
    assert_eq!(
        run(&bare, "istio-system", "TRACE"),
        denied("istio-system/no-trace")
    );
    assert_eq!(run(&bare, "istio-system", "POST"), Ok(()));
    assert_eq!(run(&own, "istio-system", "GET"), denied("demo/gw-head"));
    // Root `mesh-root`: its ALLOW on every waypoint, in one set with a Gateway's own ALLOW
    // (either lets a request in); `istio-system`'s DENY no longer applies.
    assert_eq!(
        run(&bare, "mesh-root", "TRACE"),
        denied("mesh-root/only-get")
    );
    assert_eq!(run(&bare, "mesh-root", "GET"), Ok(()));
    assert_eq!(run(&own, "mesh-root", "GET"), Ok(()));
    assert_eq!(run(&own, "mesh-root", "HEAD"), Ok(()));
    assert_eq!(run(&own, "mesh-root", "POST"), denied("demo/gw-head"));
    // A root with no class-wide policy: a Gateway's own alone, or nothing.
    assert_eq!(run(&own, "elsewhere", "GET"), denied("demo/gw-head"));
    assert_eq!(run(&bare, "elsewhere", "TRACE"), Ok(()));
}
