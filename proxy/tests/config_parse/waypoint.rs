//! What the waypoint reads from a mesh config: workload labels, DestinationRules, and files
//! that hold only the waypoint's kinds.

use super::*;

/// Workload labels and DestinationRules: checked with the field named; a VirtualService
/// subset must be in the rule of its host.
#[test]
fn labels_and_destination_rules() {
    let with = |extra: &str| {
        format!(
            "{}destinationRules:\n  - {{name: s, namespace: ns, host: s.ns, subsets: [{{name: v1, labels: {{version: v1}}}}]}}\n{extra}",
            BASE.replacen(
                "    services: [\"ns/s.ns\"]\n",
                "    services: [\"ns/s.ns\"]\n    labels: {version: v1, app.kubernetes.io/name: a}\n",
                1
            )
        )
    };
    let snap = parse(&with(""), &LoadOptions::default()).unwrap();
    let a = snap.workloads().iter().find(|w| &*w.name == "a").unwrap();
    assert_eq!(a.label("version"), Some("v1"));
    assert_eq!(a.label("app.kubernetes.io/name"), Some("a"));
    // Labels of its own: the canonical names do not stand in.
    assert_eq!(a.label("app"), None);
    let b = snap.workloads().iter().find(|w| &*w.name == "b").unwrap();
    assert_eq!(b.label("app"), Some("b"));
    assert_eq!(b.label("version"), Some("latest"));
    assert_eq!(snap.destination_rules().len(), 1);
    assert!(snap.summary().to_string().contains("1 destination rules"));

    let vs = |subset: &str| {
        with(&format!(
            "virtualServices:\n  - {{name: v, namespace: ns, hosts: [s.ns], http: [{{route: [{{destination: {{host: s.ns, subset: {subset}}}}}]}}]}}\n"
        ))
    };
    assert!(parse(&vs("v1"), &LoadOptions::default()).is_ok());
    let cases = [
        (
            vs("v9"),
            "virtualServices[ns/v].http[0].route[0].destination.subset",
            "DestinationRule ns/s of ns/s has no subset \"v9\"",
        ),
        (
            BASE.replacen(
                "    services: [\"ns/s.ns\"]\n",
                "    services: [\"ns/s.ns\"]\n    labels: {version: \"v 1\"}\n",
                1,
            ),
            "workloads[0].labels.version",
            "a label value is at most 63 characters",
        ),
        (
            format!("{BASE}destinationRules:\n  - {{name: d, namespace: ns, host: t.ns}}\n"),
            "destinationRules[ns/d].host",
            "\"t.ns\" is no Service of the mesh",
        ),
        (
            format!(
                "{BASE}destinationRules:\n  - {{name: d, namespace: ns, host: s, trafficPolicy: {{loadBalancer: {{simple: PASSTHROUGH}}}}}}\n"
            ),
            "destinationRules[ns/d].trafficPolicy.loadBalancer.simple",
            "PASSTHROUGH: use LEAST_REQUEST (the default), ROUND_ROBIN, RANDOM",
        ),
    ];
    for (yaml, path, reason) in cases {
        let e = parse(&yaml, &LoadOptions::default()).expect_err(path);
        assert_eq!(e.field_path(), path, "{}", e.reason());
        assert!(e.reason().contains(reason), "{path}: {}", e.reason());
    }
}

/// A waypoint whose mesh comes from istiod reads only its own kinds, and names Services by
/// Kubernetes' rules instead of looking them up.
#[test]
fn l7_only_files_name_services_by_kubernetes_rules() {
    let opts = LoadOptions {
        l7_only: true,
        ..LoadOptions::default()
    };
    let snap = parse(
        r#"
virtualServices:
  - name: reviews
    namespace: demo
    hosts: [reviews.demo.svc.cluster.local]
    http: [{route: [{destination: {host: reviews.demo.svc.cluster.local, subset: v1}}, {destination: {host: ratings.other}}]}]
destinationRules:
  - {name: reviews, namespace: demo, host: reviews, subsets: [{name: v1, labels: {version: v1}}]}
httpRoutes:
  - {name: echo, namespace: demo, parentRefs: [{name: echo}], rules: [{backendRefs: [{name: echo-v2, port: 80}]}]}
requestAuthentications:
  - {name: jwt, namespace: demo, targetRefs: [{name: reviews}], jwtRules: [{issuer: "https://issuer.example", jwksUri: "https://issuer.example/keys"}]}
"#,
        &opts,
    )
    .expect("Services need not be in the file");
    assert!(snap.workloads().is_empty() && snap.services().is_empty());
    assert_eq!(snap.summary().routes, 2);
    assert_eq!(snap.destination_rules().len(), 1);
    for (yaml, path, reason) in [
        (
            "workloads: [{name: a, namespace: ns, workloadIps: [\"10.0.0.1\"]}]",
            "workloads",
            "the mesh comes from istiod",
        ),
        (
            "services: []\npolicies: [{name: p, namespace: ns, action: Allow}]",
            "policies",
            "the mesh comes from istiod",
        ),
        (
            "virtualServices: [{name: v, namespace: demo, hosts: ['*.example.com'], http: []}]",
            "virtualServices[demo/v].hosts[0]",
            "no Service of the mesh",
        ),
    ] {
        let e = parse(yaml, &opts).expect_err(yaml);
        assert_eq!(e.field_path(), path, "{}", e.reason());
        assert!(e.reason().contains(reason), "{path}: {}", e.reason());
    }
}

/// By Istio's rules a host with a dot that is not `name.namespace.svc.<domain>` is a
/// hostname as it stands (a ServiceEntry's host): its VirtualService applies to the Service
/// that has it, and a DestinationRule for it is kept by that hostname.
#[test]
fn l7_only_hosts_outside_the_cluster_domain_are_hostnames() {
    use ::waypoint::route::ServiceRef;
    let opts = LoadOptions {
        l7_only: true,
        ..LoadOptions::default()
    };
    let snap = parse(
        r#"
virtualServices:
  - name: egress
    namespace: demo
    hosts: [api.example.com]
    http: [{route: [{destination: {host: api.example.com, subset: v2}}]}]
destinationRules:
  - {name: api, namespace: demo, host: api.example.com, subsets: [{name: v2, labels: {version: v2}}]}
"#,
        &opts,
    )
    .expect("a hostname VirtualService");
    let get = http::Request::get("/").body(()).unwrap().into_parts().0;
    // The ServiceEntry's Service, named by its entry: found by its hostname.
    let se = ServiceRef::new("demo", "api-entry");
    let rule = snap
        .routes()
        .select_for(&se, "api.example.com", 443, &get)
        .unwrap()
        .expect("the hostname's route");
    let b = rule.pick_for(&se, 0).unwrap();
    assert_eq!(b.service, ServiceRef::by_host("api.example.com"));
    assert!(snap.destination_rules().subset(&b.service, "v2").is_some());
}
