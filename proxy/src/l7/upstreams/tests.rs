//! The pick's tables: subsets, balancing, hashing, locality, warm-up, ejections, and
//! Services named by hostname.

use super::*;

/// `reviews` has three endpoints: r1 and r2 labelled v1 (r2 unhealthy), r3 with no labels
/// of its own and canonical revision v2 (as a workload from istiod would be).
const MESH: &str = r#"
workloads:
  - {name: r1, namespace: demo, workloadIps: ["10.0.0.1"], protocol: HBONE, labels: {version: v1, app: reviews}, services: [demo/reviews.demo.svc.cluster.local]}
  - {name: r2, namespace: demo, workloadIps: ["10.0.0.2"], protocol: HBONE, labels: {version: v1}, status: Unhealthy, services: [demo/reviews.demo.svc.cluster.local]}
  - {name: r3, namespace: demo, workloadIps: ["10.0.0.3"], protocol: HBONE, canonicalRevision: v2, services: [demo/reviews.demo.svc.cluster.local]}
  - {name: r4, namespace: demo, workloadIps: ["10.0.0.4"], protocol: HBONE, labels: {version: v1, app: reviews}, services: [demo/reviews.demo.svc.cluster.local]}
services:
  - {name: reviews, namespace: demo, hostname: reviews.demo.svc.cluster.local, vips: ["/10.1.0.1"], ports: {80: 9080}}
destinationRules:
  - name: reviews
    namespace: demo
    host: reviews
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
      - {name: v3, labels: {version: v3}}
      - {name: random, labels: {app: reviews}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
      - {name: least, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}
      - {name: guarded, labels: {version: v1}, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 2}}}
      - {name: panicky, labels: {version: v1}, trafficPolicy: {outlierDetection: {minHealthPercent: 60}}}
      - {name: slow-rr, labels: {app: reviews}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 100s}}}
      - {name: slow-lr, labels: {app: reviews}, trafficPolicy: {loadBalancer: {warmup: {duration: 100s, minimumPercent: 10}}}}
      - {name: sticky, labels: {app: reviews}, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}, outlierDetection: {consecutive5xxErrors: 2}}}
"#;

fn picks(snapshot: &Snapshot, subset: Option<&str>, n: u64) -> Result<Vec<String>, String> {
    picks_loaded(snapshot, subset, n, &|_| 0)
}

fn picks_loaded(
    snapshot: &Snapshot,
    subset: Option<&str>,
    n: u64,
    load: &dyn Fn(SocketAddr) -> u32,
) -> Result<Vec<String>, String> {
    picks_with(snapshot, subset, n, &|a| Host {
        load: load(a),
        ejected: false,
        ..Host::default()
    })
}

fn picks_with(
    snapshot: &Snapshot,
    subset: Option<&str>,
    n: u64,
    host: &dyn Fn(SocketAddr) -> Host,
) -> Result<Vec<String>, String> {
    let sp = snapshot
        .service_port(SocketAddr::from(([10, 1, 0, 1], 80)))
        .expect("service port");
    let to = Upstream {
        service: ServiceRef::new("demo", "reviews"),
        subset: subset.map(Arc::from),
        port: 80,
        hash: None,
    };
    (0..n)
        .map(|i| {
            pick_endpoint(snapshot.destination_rules(), sp, &to, i, None, host).map(|p| {
                let w = snapshot
                    .workload_by_uid(&p.endpoint.uid)
                    .expect("a workload");
                w.name.to_string()
            })
        })
        .collect()
}

#[test]
fn subsets_pick_only_their_healthy_endpoints() {
    let snap = config::parse(MESH, &LoadOptions::default()).unwrap();
    // Round robin over the whole Service's healthy endpoints.
    assert_eq!(picks(&snap, None, 3).unwrap(), ["r1", "r3", "r4"]);
    // v1: r1 and r4 (r2 is unhealthy), in turn.
    assert_eq!(
        picks(&snap, Some("v1"), 4).unwrap(),
        ["r1", "r4", "r1", "r4"]
    );
    // v2: r3 has no labels; its canonical revision answers for `version`.
    assert_eq!(picks(&snap, Some("v2"), 2).unwrap(), ["r3", "r3"]);
    // A subset no endpoint belongs to is an error, never another subset's endpoint.
    let e = picks(&snap, Some("v3"), 1).unwrap_err();
    assert!(e.contains("no healthy endpoint in subset \"v3\""), "{e}");
    let e = picks(&snap, Some("gone"), 1).unwrap_err();
    assert!(e.contains("no subset \"gone\""), "{e}");
    // The subset's own balancing (random) still keeps to its members.
    let random = picks(&snap, Some("random"), 64).unwrap();
    assert!(random.iter().all(|w| w == "r1" || w == "r4"), "{random:?}");
    assert!(random.iter().any(|w| w == "r1") && random.iter().any(|w| w == "r4"));
    assert_ne!(random, picks(&snap, Some("v1"), 64).unwrap());
    // Least-request: r1 busy, so its subset's other member takes every request.
    let busy = |a: SocketAddr| u32::from(a.ip() == IpAddr::from([10, 0, 0, 1])) * 3;
    let least = picks_loaded(&snap, Some("least"), 32, &busy).unwrap();
    assert!(least.iter().all(|w| w == "r4"), "{least:?}");
    let idle = picks(&snap, Some("least"), 64).unwrap();
    assert!(idle.iter().any(|w| w == "r1") && idle.iter().any(|w| w == "r4"));
}

#[test]
fn a_hash_keeps_to_one_endpoint_until_it_is_ejected() {
    let snap = config::parse(MESH, &LoadOptions::default()).unwrap();
    let sp = snap
        .service_port(SocketAddr::from(([10, 1, 0, 1], 80)))
        .unwrap();
    let pick = |hash: Option<u64>, n: u64, host: &dyn Fn(SocketAddr) -> Host| {
        let to = Upstream {
            service: ServiceRef::new("demo", "reviews"),
            subset: Some(Arc::from("sticky")),
            port: 80,
            hash,
        };
        pick_endpoint(snap.destination_rules(), sp, &to, n, None, host)
            .unwrap()
            .endpoint
            .addr
    };
    let healthy = |_| Host::default();
    // Whatever the counter (the core's turn), one key goes to one endpoint; keys
    // spread over both members of the subset (r1 and r4).
    let mut seen = std::collections::HashSet::new();
    for key in 0..64u64 {
        let first = pick(Some(key), 0, &healthy);
        assert!((1..8).all(|n| pick(Some(key), n, &healthy) == first));
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The endpoint a key prefers is ejected: the key goes to the other, and back after.
    let key = 7;
    let home = pick(Some(key), 0, &healthy);
    let out = |a: SocketAddr| Host {
        load: 0,
        ejected: a == home,
        ..Host::default()
    };
    assert_ne!(pick(Some(key), 0, &out), home);
    assert_eq!(pick(Some(key), 0, &healthy), home);
    // No key: spread at random over the subset.
    let keyless: std::collections::HashSet<_> = (0..64).map(|n| pick(None, n, &healthy)).collect();
    assert_eq!(keyless.len(), 2);
}

/// `near` has three endpoints: one in the waypoint's zone, one in another zone of its
/// region, one in the failover region.
const NEAR: &str = r#"
workloads:
  - {name: wp, namespace: demo, workloadIps: ["10.0.9.9"], protocol: HBONE, locality: {region: us-east, zone: a, subzone: "1"}}
  - {name: l1, namespace: demo, workloadIps: ["10.0.0.1"], protocol: HBONE, locality: {region: us-east, zone: a, subzone: "1"}, services: [demo/near.demo.svc.cluster.local]}
  - {name: l2, namespace: demo, workloadIps: ["10.0.0.2"], protocol: HBONE, locality: {region: us-east, zone: b, subzone: "1"}, services: [demo/near.demo.svc.cluster.local]}
  - {name: l3, namespace: demo, workloadIps: ["10.0.0.3"], protocol: HBONE, locality: {region: us-west, zone: a, subzone: "1"}, services: [demo/near.demo.svc.cluster.local]}
services:
  - {name: near, namespace: demo, hostname: near.demo.svc.cluster.local, vips: ["/10.1.0.2"], ports: {80: 9080}}
destinationRules:
  - name: near
    namespace: demo
    host: near
    trafficPolicy:
      outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100}
      loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {failover: [{from: us-east, to: us-west}]}}
    subsets:
      - name: none
        trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: false}}}
      - name: prio
        trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {failoverPriority: [topology.kubernetes.io/zone]}}}
      - name: split
        trafficPolicy:
          loadBalancer:
            simple: ROUND_ROBIN
            localityLbSetting: {distribute: [{from: us-east/a/*, to: {us-east/a/*: 80, us-west/*: 20}}]}
"#;

#[test]
fn locality_keeps_traffic_near_and_fails_over_in_rank_order() {
    let snap = config::parse(NEAR, &LoadOptions::default()).unwrap();
    let sp = snap
        .service_port(SocketAddr::from(([10, 1, 0, 2], 80)))
        .unwrap();
    let wp = snap
        .workload_by_uid("demo/wp")
        .expect("the waypoint's workload");
    let me = Some(&**wp);
    let counts = |subset: Option<&str>, out: &[u8]| {
        let mut n = std::collections::BTreeMap::<String, u32>::new();
        let to = Upstream {
            service: ServiceRef::new("demo", "near"),
            subset: subset.map(Arc::from),
            port: 80,
            hash: None,
        };
        let host = |a: SocketAddr| Host {
            load: 0,
            ejected: matches!(a.ip(), IpAddr::V4(ip) if out.contains(&ip.octets()[3])),
            ..Host::default()
        };
        for i in 0..1000 {
            let p = pick_endpoint(snap.destination_rules(), sp, &to, i, me, &host).unwrap();
            let w = snap.workload_by_uid(&p.endpoint.uid).unwrap();
            *n.entry(w.name.to_string()).or_default() += 1;
        }
        n
    };
    let only = |name: &str| std::collections::BTreeMap::from([(name.to_string(), 1000)]);
    // All healthy: the waypoint's own zone takes everything.
    assert_eq!(counts(None, &[]), only("l1"));
    // l1 out: its region's other zone; then the failover region.
    assert_eq!(counts(None, &[1]), only("l2"));
    assert_eq!(counts(None, &[1, 2]), only("l3"));
    // Turned off: round robin over all three.
    let off = counts(Some("none"), &[]);
    assert_eq!(off.values().copied().collect::<Vec<_>>(), [334, 333, 333]);
    // Distribute: 80 % to the waypoint's zone, 20 % to us-west (l2 matches neither).
    let split = counts(Some("split"), &[]);
    let (l1, l3) = (split["l1"], split["l3"]);
    assert!(!split.contains_key("l2"), "{split:?}");
    assert!((740..=860).contains(&l1) && l1 + l3 == 1000, "{split:?}");
    // A locality with nothing healthy takes nothing: us-west gets all.
    assert_eq!(counts(Some("split"), &[1]), only("l3"));
    // failoverPriority by zone: l1 and l3 share the waypoint's zone name, whatever the
    // region; l2 only when both are out.
    let prio = counts(Some("prio"), &[]);
    assert_eq!(
        (prio.get("l1"), prio.get("l2"), prio.get("l3")),
        (Some(&500), None, Some(&500))
    );
    assert_eq!(counts(Some("prio"), &[1, 3]), only("l2"));
}

#[test]
fn a_new_endpoint_starts_slow_and_takes_its_full_share_after_the_window() {
    let snap = config::parse(MESH, &LoadOptions::default()).unwrap();
    let r4 = IpAddr::from([10, 0, 0, 4]);
    // r4 joined 10 s ago (weight 0.1 of 100 s), or 60 s ago (0.6), or long ago.
    let aged = |secs: Option<u64>, r1_load: u32| {
        move |a: SocketAddr| Host {
            load: if a.ip() == r4 { 0 } else { r1_load },
            age: secs.filter(|_| a.ip() == r4).map(Duration::from_secs),
            ..Host::default()
        }
    };
    let share = |subset: &str, host: &dyn Fn(SocketAddr) -> Host| {
        let v = picks_with(&snap, Some(subset), 2000, host).unwrap();
        v.iter().filter(|w| *w == "r4").count()
    };
    // Round robin: in proportion to weight, 0.1/1.1 and 0.6/1.6 of 2,000.
    let young = share("slow-rr", &aged(Some(10), 0));
    assert!((120..=250).contains(&young), "{young}");
    let older = share("slow-rr", &aged(Some(60), 0));
    assert!((650..=850).contains(&older), "{older}");
    assert_eq!(share("slow-rr", &aged(Some(100), 0)), 1000);
    assert_eq!(share("slow-rr", &aged(None, 0)), 1000);
    // Least-request: weight over requests in flight; r1 idle wins every draw, r1 with
    // 12 in flight (1/13 < 0.1) loses them all.
    assert_eq!(share("slow-lr", &aged(Some(10), 0)), 0);
    assert_eq!(share("slow-lr", &aged(Some(10), 12)), 2000);
}

#[test]
fn ejected_endpoints_are_left_out_while_enough_remain() {
    let snap = config::parse(MESH, &LoadOptions::default()).unwrap();
    let r1 = IpAddr::from([10, 0, 0, 1]);
    let r1_out = |a: SocketAddr| Host {
        load: 0,
        ejected: a.ip() == r1,
        ..Host::default()
    };
    let all_out = |_| Host {
        load: 0,
        ejected: true,
        ..Host::default()
    };
    let both = |v: &[String]| v.iter().any(|w| w == "r1") && v.iter().any(|w| w == "r4");
    // With outlier detection, an ejected endpoint takes nothing.
    let v = picks_with(&snap, Some("guarded"), 32, &r1_out).unwrap();
    assert!(v.iter().all(|w| w == "r4"), "{v:?}");
    // What the waypoint is told, to judge the answer: the policy and the pool.
    let sp = snap
        .service_port(SocketAddr::from(([10, 1, 0, 1], 80)))
        .unwrap();
    let to = Upstream {
        service: ServiceRef::new("demo", "reviews"),
        subset: Some(Arc::from("guarded")),
        port: 80,
        hash: None,
    };
    let p = pick_endpoint(snap.destination_rules(), sp, &to, 0, None, &r1_out).unwrap();
    assert_eq!((p.pool, p.ejected), (2, 1));
    assert_eq!(p.outlier.map(|o| o.consecutive_5xx), Some(2));
    // Everyone ejected: no healthy upstream (Istio's default panic threshold, 0).
    let e = picks_with(&snap, Some("guarded"), 1, &all_out).unwrap_err();
    assert!(e.contains("no healthy endpoint"), "{e}");
    // minHealthPercent 60: one of two left is too few, so ejections are ignored.
    assert!(both(
        &picks_with(&snap, Some("panicky"), 64, &r1_out).unwrap()
    ));
    // No outlier detection for the subset: the flag means nothing.
    assert!(both(&picks_with(&snap, Some("v1"), 64, &r1_out).unwrap()));
}

/// A ServiceEntry with two hosts is two Services of one namespace and name: a request to
/// either goes on by its hostname (the name alone would pick the first host's endpoints),
/// and a DestinationRule of a host applies whichever way the route named the Service.
#[test]
fn a_service_entrys_hosts_are_told_apart_by_hostname() {
    let snap = config::parse(
        r#"
workloads:
  - {name: a1, namespace: egress, workloadIps: ["10.0.1.1"], protocol: TCP, labels: {version: v1}, services: [egress/a.example.com]}
  - {name: b1, namespace: egress, workloadIps: ["10.0.2.1"], protocol: TCP, labels: {version: v1}, services: [egress/b.example.com]}
  - {name: b2, namespace: egress, workloadIps: ["10.0.2.2"], protocol: TCP, labels: {version: v2}, services: [egress/b.example.com]}
services:
  - {name: ext, namespace: egress, hostname: a.example.com, vips: ["/10.9.0.1"], ports: {443: 443}}
  - {name: ext, namespace: egress, hostname: b.example.com, vips: ["/10.9.0.2"], ports: {443: 443}}
  - {name: solo, namespace: egress, hostname: solo.example.com, vips: ["/10.9.0.3"], ports: {443: 443}}
destinationRules:
  - {name: b, namespace: egress, host: b.example.com, subsets: [{name: v2, labels: {version: v2}}]}
"#,
        &LoadOptions::default(),
    )
    .unwrap();
    let b = snap.service_by_hostname("b.example.com").unwrap();
    assert_eq!(&*b.name, "ext");
    // Shared name: the hostname names it; a name of its own is enough.
    let exact = snap.exact_ref(b).unwrap();
    assert_eq!(exact, ServiceRef::by_host("b.example.com"));
    let solo = snap.service_by_hostname("solo.example.com").unwrap();
    assert_eq!(snap.exact_ref(solo), None);
    assert!(Arc::ptr_eq(snap.service_for(&exact).unwrap(), b));
    // The rule was kept by hostname (the file's name is shared); a route that names the
    // Service by hostname reaches it at once, and its subset keeps to v2.
    let sp = snap
        .service_port(SocketAddr::from(([10, 9, 0, 2], 443)))
        .unwrap();
    let pick = |service: ServiceRef, subset: Option<&str>| {
        let to = Upstream {
            service,
            subset: subset.map(Arc::from),
            port: 443,
            hash: None,
        };
        let svc = snap.service_for(&to.service).unwrap();
        let to = keyed(snap.destination_rules(), &to, svc, &snap).into_owned();
        (0..4)
            .map(|i| {
                let p = pick_endpoint(snap.destination_rules(), sp, &to, i, None, &|_| {
                    Host::default()
                })
                .unwrap();
                snap.workload_by_uid(&p.endpoint.uid)
                    .unwrap()
                    .name
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(pick(exact.clone(), Some("v2")), ["b2"; 4]);
    let all = pick(exact, None);
    assert!(all.contains(&"b1".to_string()) && all.contains(&"b2".to_string()));
}

/// A ServiceEntry's `addresses` are every one of its hosts': one VIP, several Services (as
/// istiod sends them; a config file refuses a VIP twice, so the state is built here as the
/// xDS client builds it). Each host's port keeps its own endpoints (the VIP's table holds
/// the last host; the others' ports are kept aside).
#[test]
fn hosts_that_share_a_vip_keep_their_own_endpoints() {
    let file = config::parse(
        r#"
workloads:
  - {name: a1, namespace: egress, workloadIps: ["10.0.1.1"], protocol: TCP, services: [egress/a.example.com]}
  - {name: b1, namespace: egress, workloadIps: ["10.0.2.1"], protocol: TCP, services: [egress/b.example.com]}
services:
  - {name: ext, namespace: egress, hostname: a.example.com, vips: ["/10.9.0.1"], ports: {443: 443, 80: 80}}
  - {name: ext, namespace: egress, hostname: b.example.com, vips: ["/10.9.0.2"], ports: {443: 443}}
"#,
        &LoadOptions::default(),
    )
    .unwrap();
    let mut state = config::MeshState::new();
    for w in file.workloads() {
        state.insert_workload(config::snapshot::Workload::clone(w));
    }
    let shared = file.services()[0].vips.clone();
    for s in file.services() {
        let mut s = config::snapshot::Service::clone(s);
        s.vips = shared.clone();
        s.members.clear();
        state.insert_service(s);
    }
    let snap = state.snapshot(None, 0);
    let names = |host: &str, port: u16| -> Vec<String> {
        let svc = snap.service_by_hostname(host).unwrap();
        let sp = snap.service_port_of(svc, port).expect("its port");
        assert!(Arc::ptr_eq(&sp.service, svc));
        sp.endpoints
            .iter()
            .map(|e| e.workload.name.to_string())
            .collect()
    };
    assert_eq!(names("a.example.com", 443), ["a1"]);
    assert_eq!(names("b.example.com", 443), ["b1"]);
    assert_eq!(names("a.example.com", 80), ["a1"]);
    let b = snap.service_by_hostname("b.example.com").unwrap();
    assert!(snap.service_port_of(b, 80).is_none());
}
