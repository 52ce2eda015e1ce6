use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

fn wl(uid: &str, ip: [u8; 4], node: &str) -> pw::Workload {
    pw::Workload {
        uid: uid.into(),
        name: uid.rsplit('/').next().unwrap().into(),
        namespace: "shop".into(),
        addresses: vec![ip.to_vec()],
        node: node.into(),
        tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
        services: HashMap::from([(
            "shop/cart.shop.svc.cluster.local".to_string(),
            pw::PortList {
                ports: vec![pw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]),
        ..pw::Workload::default()
    }
}

fn svc() -> pw::Service {
    pw::Service {
        name: "cart".into(),
        namespace: "shop".into(),
        hostname: "cart.shop.svc.cluster.local".into(),
        addresses: vec![pw::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 10],
            length: None,
        }],
        ports: vec![pw::Port {
            service_port: 80,
            target_port: 0,
            app_protocol: 0,
        }],
        ..pw::Service::default()
    }
}

fn addr_update(name: &str, t: pw::address::Type) -> Update {
    Update {
        name: name.into(),
        version: "1".into(),
        resource: Resource::Address(pw::Address { r#type: Some(t) }),
    }
}

fn exact(s: &str) -> ps::StringMatch {
    ps::StringMatch {
        match_type: Some(ps::string_match::MatchType::Exact(s.into())),
    }
}

#[test]
fn workload_defaults_follow_ztunnel() {
    let w = workload(&wl("c1//Pod/shop/cart-0", [10, 0, 0, 1], "n1")).unwrap();
    assert_eq!(
        w.identity.as_str(),
        "spiffe://cluster.local/ns/shop/sa/default"
    );
    assert_eq!(&*w.meta.cluster_id, "Kubernetes");
    assert_eq!(w.capacity, 1);
    assert_eq!(w.protocol, Protocol::Hbone);
    assert_eq!(w.ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(w.services[0].ports, [(80, 8080)]);
}

#[test]
fn bad_workloads_name_the_field() {
    let mut cases: Vec<(pw::Workload, &str)> = Vec::new();
    let mut w = wl("u", [10, 0, 0, 1], "n1");
    w.addresses = vec![vec![1, 2, 3, 4, 5]];
    cases.push((w, "addresses[0]: 5 bytes"));
    let mut w = wl("u", [10, 0, 0, 1], "n1");
    w.tunnel_protocol = pw::TunnelProtocol::LegacyIstioMtls as i32;
    cases.push((w, "LEGACY_ISTIO_MTLS"));
    let mut w = wl("u", [10, 0, 0, 1], "n1");
    w.tunnel_protocol = 42;
    cases.push((w, "tunnel_protocol: unknown value 42"));
    let mut w = wl("u", [10, 0, 0, 1], "n1");
    w.services
        .insert("no-slash".into(), pw::PortList::default());
    cases.push((w, "services[\"no-slash\"]"));
    let mut w = wl("u", [10, 0, 0, 1], "n1");
    w.services.values_mut().next().unwrap().ports[0].target_port = 70000;
    cases.push((w, "target_port: 70000 is not a port"));
    let mut w = wl("u", [10, 0, 0, 1], "n1");
    w.namespace = "a/b".into();
    cases.push((w, "namespace"));
    let mut w = wl("", [10, 0, 0, 1], "n1");
    w.uid.clear();
    cases.push((w, "uid: empty"));
    let mut w = wl("u", [10, 0, 0, 1], "n1");
    w.waypoint = Some(pw::GatewayAddress {
        destination: None,
        hbone_mtls_port: 15008,
    });
    cases.push((w, "waypoint: no destination"));
    for (w, want) in cases {
        let err = workload(&w).unwrap_err();
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn services_skip_cidr_vips_and_refuse_bad_ones() {
    let mut s = svc();
    s.addresses.push(pw::NetworkAddress {
        network: String::new(),
        address: vec![10, 97, 0, 0],
        length: Some(16),
    });
    let got = service(&s).unwrap();
    assert_eq!(got.vips.len(), 1, "the CIDR VIP is left out");
    let mut s = svc();
    s.addresses[0].length = Some(33);
    assert!(service(&s).unwrap_err().contains("addresses[0].length"));
    let mut s = svc();
    s.ports.push(s.ports[0]);
    assert!(service(&s).unwrap_err().contains("listed twice"));
    let mut s = svc();
    s.load_balancing = Some(pw::LoadBalancing {
        routing_preference: vec![0],
        mode: 2,
        health_policy: 0,
    });
    assert!(service(&s).unwrap_err().contains("routing_preference[0]"));
}

#[test]
fn authorizations_convert_and_refuse_what_would_widen_them() {
    let a = ps::Authorization {
        name: "allow-web".into(),
        namespace: "shop".into(),
        scope: ps::Scope::Namespace as i32,
        action: ps::Action::Allow as i32,
        rules: vec![ps::Rule {
            clauses: vec![ps::Clause {
                matches: vec![ps::Match {
                    principals: vec![exact("cluster.local/ns/shop/sa/web")],
                    source_ips: vec![ps::Address {
                        address: vec![10, 0, 0, 0],
                        length: 8,
                    }],
                    destination_ports: vec![8080],
                    ..ps::Match::default()
                }],
            }],
        }],
        ..ps::Authorization::default()
    };
    let p = authorization(&a).unwrap();
    assert_eq!(&*p.key(), "shop/allow-web");
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(m.source_ips[0].to_string(), "10.0.0.0/8");
    assert_eq!(m.destination_ports, [8080]);

    let mut bad = a.clone();
    bad.rules[0].clauses[0].matches[0].source_ips[0].length = 40;
    assert!(
        authorization(&bad)
            .unwrap_err()
            .contains("source_ips[0].length")
    );
    let mut bad = a.clone();
    bad.rules[0].clauses[0].matches[0].principals[0].match_type = None;
    assert!(
        authorization(&bad)
            .unwrap_err()
            .contains("principals[0]: a string match with no kind")
    );
    let mut bad = a.clone();
    bad.scope = 7;
    assert!(
        authorization(&bad)
            .unwrap_err()
            .contains("scope: unknown value 7")
    );
    let mut bad = a;
    bad.rules[0].clauses[0].matches[0].destination_ports = vec![65536];
    assert!(
        authorization(&bad)
            .unwrap_err()
            .contains("destination_ports[0]")
    );
}

#[test]
fn a_response_applies_its_good_resources_and_rejects_the_bad() {
    let published: Arc<Mutex<Vec<Arc<Snapshot>>>> = Arc::default();
    let sink = published.clone();
    let mut x = XdsState::new(Some("n1".into()), move |s| sink.lock().unwrap().push(s));
    let mut bad = wl("c1//Pod/shop/bad", [10, 0, 0, 9], "n1");
    bad.addresses = vec![vec![0; 3]];
    let rejected = x.apply(
        ADDRESS_TYPE,
        vec![
            addr_update(
                "c1//Pod/shop/cart-0",
                pw::address::Type::Workload(wl("c1//Pod/shop/cart-0", [10, 0, 0, 1], "n1")),
            ),
            addr_update("c1//Pod/shop/bad", pw::address::Type::Workload(bad)),
            addr_update(
                "shop/cart.shop.svc.cluster.local",
                pw::address::Type::Service(svc()),
            ),
        ],
        vec![],
    );
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].name, "c1//Pod/shop/bad");
    assert!(
        rejected[0].reason.contains("addresses[0]"),
        "{}",
        rejected[0].reason
    );
    let snap = published.lock().unwrap().last().unwrap().clone();
    assert_eq!(snap.workloads().len(), 1);
    assert_eq!(snap.local_workloads().len(), 1);
    let port = snap.service_port("10.96.0.10:80".parse().unwrap()).unwrap();
    assert_eq!(port.endpoints[0].addr.to_string(), "10.0.0.1:8080");

    // A second version of the same workload replaces it; removals by uid and by
    // namespace/hostname; an unknown removal changes nothing.
    x.apply(
        ADDRESS_TYPE,
        vec![addr_update(
            "c1//Pod/shop/cart-0",
            pw::address::Type::Workload(wl("c1//Pod/shop/cart-0", [10, 0, 0, 2], "n1")),
        )],
        vec![],
    );
    let snap = published.lock().unwrap().last().unwrap().clone();
    assert!(snap.workload_by_ip("10.0.0.1".parse().unwrap()).is_none());
    assert!(snap.workload_by_ip("10.0.0.2".parse().unwrap()).is_some());
    let before = published.lock().unwrap().len();
    x.apply(ADDRESS_TYPE, vec![], vec!["nobody".into()]);
    assert_eq!(
        published.lock().unwrap().len(),
        before,
        "nothing changed, nothing published"
    );
    x.apply(
        ADDRESS_TYPE,
        vec![],
        vec![
            "c1//Pod/shop/cart-0".into(),
            "shop/cart.shop.svc.cluster.local".into(),
        ],
    );
    let snap = published.lock().unwrap().last().unwrap().clone();
    assert_eq!(snap.workloads().len(), 0);
    assert_eq!(snap.services().len(), 0);

    // Policies: by namespace/name, removable.
    let p = ps::Authorization {
        name: "deny-all".into(),
        namespace: "shop".into(),
        scope: ps::Scope::Namespace as i32,
        action: ps::Action::Deny as i32,
        rules: vec![ps::Rule::default()],
        ..ps::Authorization::default()
    };
    x.apply(
        AUTHORIZATION_TYPE,
        vec![Update {
            name: "shop/deny-all".into(),
            version: String::new(),
            resource: Resource::Authorization(p),
        }],
        vec![],
    );
    assert!(
        published
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .policy("shop/deny-all")
            .is_some()
    );
    x.apply(AUTHORIZATION_TYPE, vec![], vec!["shop/deny-all".into()]);
    assert!(
        published
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .policies()
            .is_empty()
    );
}
