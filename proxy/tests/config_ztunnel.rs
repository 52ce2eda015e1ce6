//! ztunnel's local config format (its `LOCAL_XDS_PATH` YAML) loads as it is, with the full
//! authorization model: scopes, dry-run, rules → clauses → matches, tagged string matches,
//! service accounts, CIDRs and ports; errors name the field's path.

use std::net::{IpAddr, SocketAddr};

use proxy::config::{Decision, DenyReason, LoadOptions, Request, Snapshot, parse};
use proxy::identity::Identity;

/// Written in ztunnel's shape: map-form `services` with integer port keys, `/IP` VIPs,
/// node-less and named workloads, and policies with tagged string matches.
const ZTUNNEL: &str = r#"
workloads:
- uid: c1//v1/Pod/shop/cart-0
  name: cart-0
  namespace: shop
  serviceAccount: cart
  workloadIps: ["127.44.0.1"]
  protocol: HBONE
  node: n1
  network: ""
  authorizationPolicies: ["shop/cart-only-from-web"]
  services:
    "shop/cart.shop.svc.cluster.local":
      80: 8080
- uid: c1//v1/Pod/shop/cart-1
  name: cart-1
  namespace: shop
  serviceAccount: cart
  workloadIps: ["127.44.0.2"]
  protocol: TCP
  node: n2
  services:
    "shop/cart.shop.svc.cluster.local":
      80: 0
- uid: c1//v1/Pod/ops/db-0
  name: db-0
  namespace: ops
  workloadIps: ["127.44.1.1"]
  protocol: HBONE
  node: n1
  services: {}
policies:
- name: deny-9999
  namespace: shop
  scope: Namespace
  action: Allow
  dryRun: false
  rules:
  - - - notDestinationPorts: [9999]
- name: cart-only-from-web
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact "cluster.local/ns/shop/sa/web"]
      - serviceAccounts: [{namespace: shop, serviceAccount: checkout}]
    - - destinationPorts: [8080]
- name: no-legacy-nets
  namespace: istio-system
  scope: Global
  action: Deny
  dryRun: false
  rules:
  - - - sourceIps: ["10.9.0.0/16"]
        notPrincipals: [!Presence []]
- name: audit-prefix
  namespace: ops
  scope: Namespace
  action: Deny
  dryRun: true
  rules:
  - - - namespaces: [!Prefix "sh"]
        principals: [!Suffix "/sa/web"]
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: ["/127.44.100.1"]
  ports:
    80: 8081
  subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/cart"]
  canonical: true
"#;

fn snap() -> Snapshot {
    parse(
        ZTUNNEL,
        &LoadOptions {
            node: Some("n1".into()),
            ..LoadOptions::default()
        },
    )
    .expect("a ztunnel local file loads")
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn decide(snap: &Snapshot, src: Option<&Identity>, src_ip: &str, dst: &str) -> Decision {
    let dst: SocketAddr = dst.parse().unwrap();
    let w = snap.workload_by_ip(dst.ip()).expect("a workload");
    let req = Request {
        source: src,
        source_ip: src_ip.parse::<IpAddr>().unwrap(),
        destination: dst,
    };
    snap.decide(&req, w)
}

#[test]
fn loads_with_ztunnel_spellings() {
    let s = snap();
    assert_eq!(s.workloads().len(), 3);
    assert_eq!(s.local_workloads().len(), 2);
    let port = s.service_port("127.44.100.1:80".parse().unwrap()).unwrap();
    // cart-0 overrides the target port; cart-1's 0 means the service's.
    let addrs: Vec<String> = port.endpoints.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(addrs, ["127.44.0.1:8080", "127.44.0.2:8081"]);
    let svc = s.service("shop", "cart.shop.svc.cluster.local").unwrap();
    assert_eq!(
        &*svc.subject_alt_names[0],
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    // Identity defaults where ztunnel's file leaves them out.
    let db = s.workload_by_ip("127.44.1.1".parse().unwrap()).unwrap();
    assert_eq!(
        db.identity.as_str(),
        "spiffe://cluster.local/ns/ops/sa/default"
    );
    assert_eq!(s.policies().len(), 4);
    assert!(s.policy("shop/cart-only-from-web").is_some());
}

#[test]
fn scopes_rules_and_matches_decide_as_ztunnel() {
    let s = snap();
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let checkout = id("spiffe://cluster.local/ns/shop/sa/checkout");
    let other = id("spiffe://cluster.local/ns/shop/sa/other");

    // cart-0: namespace allow (not 9999) + its selector allow (web or checkout, on 8080).
    assert_eq!(
        decide(&s, Some(&web), "127.0.0.1", "127.44.0.1:8080"),
        Decision::Allow
    );
    assert_eq!(
        decide(&s, Some(&checkout), "127.0.0.1", "127.44.0.1:8080"),
        Decision::Allow
    );
    // Two allow policies apply; either admits (the namespace one admits `other` on 8080).
    assert_eq!(
        decide(&s, Some(&other), "127.0.0.1", "127.44.0.1:8080"),
        Decision::Allow
    );
    // Port 9999 fails the namespace policy; the selector policy needs 8080: denied.
    assert_eq!(
        decide(&s, Some(&web), "127.0.0.1", "127.44.0.1:9999"),
        Decision::Deny(DenyReason::NotAllowed)
    );
    // cart-1 has only the namespace policy.
    assert_eq!(
        decide(&s, None, "127.0.0.1", "127.44.0.2:80"),
        Decision::Allow
    );
    assert_eq!(
        decide(&s, None, "127.0.0.1", "127.44.0.2:9999"),
        Decision::Deny(DenyReason::NotAllowed)
    );
    // The global deny: plaintext from 10.9/16, anywhere in the mesh.
    assert_eq!(
        decide(&s, None, "10.9.3.4", "127.44.1.1:5432"),
        Decision::Deny(DenyReason::DeniedBy("istio-system/no-legacy-nets".into()))
    );
    assert_eq!(
        decide(&s, Some(&web), "10.9.3.4", "127.44.1.1:5432"),
        Decision::Allow
    );
    // The dry-run deny in ops matches web but is not enforced.
    assert_eq!(
        decide(&s, Some(&web), "127.0.0.1", "127.44.1.1:5432"),
        Decision::Allow
    );
}

fn reject(from: &str, to: &str) -> String {
    assert!(ZTUNNEL.contains(from), "edit {from:?} does not apply");
    let yaml = ZTUNNEL.replacen(from, to, 1);
    match parse(&yaml, &LoadOptions::default()) {
        Ok(_) => panic!("accepted after replacing {from:?} with {to:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn policy_errors_name_the_field() {
    let cases = [
        (
            "sourceIps: [\"10.9.0.0/16\"]",
            "sourceIps: [\"10.9.0.0/40\"]",
            "policies[2].rules[0][0][0].sourceIps[0]: prefix length 40 is longer than 32",
        ),
        (
            "  scope: Global\n",
            "",
            "policies[2].scope: a policy with `rules` needs a scope",
        ),
        (
            "  scope: Namespace\n  action: Allow",
            "  scope: Namespace\n  action: Allow\n  ports: [1]",
            "policies[0].ports: cannot be combined with `rules`",
        ),
        (
            "authorizationPolicies: [\"shop/cart-only-from-web\"]",
            "authorizationPolicies: [\"shop/nope\"]",
            "workloads[0].authorizationPolicies[0]: unknown policy \"shop/nope\"",
        ),
        (
            "principals: [!Exact \"cluster.local/ns/shop/sa/web\"]",
            "principals: [\"cluster.local/ns/shop/sa/web\"]",
            "policies[1].rules[0][0][0].principals[0]",
        ),
        (
            "- name: deny-9999\n  namespace: shop",
            "- name: deny-9999\n  namespace: \"\"",
            "policies[0].namespace: a Namespace policy needs its namespace",
        ),
    ];
    for (from, to, want) in cases {
        let err = reject(from, to);
        assert!(err.contains(want), "{from:?} -> {to:?}: {err}");
    }
}
