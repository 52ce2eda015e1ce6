//! Config parsing: the shipped example, every rejection path (exact path and reason), and
//! the lookups the data path makes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use proxy::config::{
    Decision, DenyReason, Destination, LoadBalancing, LoadOptions, Protocol, Snapshot, check_file,
    load_file, parse, pick,
};
use proxy::identity::Identity;

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh.yaml")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// A small valid config the error cases mutate.
const BASE: &str = r#"
node: n1
workloads:
  - name: a
    namespace: ns
    serviceAccount: sa-a
    workloadIps: ["10.0.0.1"]
    node: n1
    protocol: HBONE
    services: ["ns/s.ns"]
  - name: b
    namespace: ns
    workloadIps: ["10.0.0.2"]
    node: n2
    protocol: HBONE
    services: ["ns/s.ns"]
services:
  - name: s
    namespace: ns
    hostname: s.ns
    vips: ["10.1.0.1"]
    ports:
      80: 8080
policies:
  - name: p
    action: Allow
    destination:
      workloads: ["ns/a"]
    from:
      - namespaces: ["ns"]
"#;

fn base() -> Snapshot {
    parse(BASE, &LoadOptions::default()).expect("BASE is valid")
}

/// Applies one textual edit to BASE (asserting it applies) and returns the error.
fn reject(from: &str, to: &str) -> (String, String) {
    assert!(BASE.contains(from), "edit {from:?} does not apply");
    let yaml = BASE.replacen(from, to, 1);
    match parse(&yaml, &LoadOptions::default()) {
        Ok(_) => panic!("accepted after replacing {from:?} with {to:?}"),
        Err(e) => (e.field_path().to_string(), e.reason()),
    }
}

#[test]
fn example_parses_with_expected_contents() {
    let snap = load_file(&example_path(), &LoadOptions::default()).unwrap();
    assert_eq!(snap.node(), Some("node-1"));
    assert_eq!(snap.workloads().len(), 4);
    assert_eq!(snap.services().len(), 2);
    assert_eq!(snap.policies().len(), 2);
    let local: Vec<&str> = snap.local_workloads().iter().map(|w| &*w.name).collect();
    assert_eq!(local, ["client-0", "echo-0"]);

    let client = snap.workload_by_ip(ip("127.10.1.1")).unwrap();
    assert_eq!(client.uid.as_ref(), "demo/client-0");
    assert_eq!(
        client.identity,
        id("spiffe://cluster.local/ns/demo/sa/client")
    );
    assert_eq!(client.protocol, Protocol::Hbone);

    let echo = snap.service_port(sa("127.10.100.1:80")).unwrap();
    assert_eq!(echo.target_port, 8080);
    let eps: Vec<SocketAddr> = echo.endpoints.iter().map(|e| e.addr).collect();
    assert_eq!(eps, [sa("127.10.1.2:8080"), sa("127.10.2.1:8080")]);

    let db = snap.service_port(sa("127.10.100.2:5432")).unwrap();
    assert_eq!(db.endpoints.len(), 1);
    assert_eq!(db.endpoints[0].addr, sa("127.10.2.2:15432"));
    assert_eq!(db.endpoints[0].workload.protocol, Protocol::Tcp);
    assert_eq!(db.endpoints[0].workload.service_account.as_ref(), "db");

    let summary = check_file(&example_path()).unwrap();
    assert_eq!(
        (
            summary.workloads,
            summary.services,
            summary.service_ports,
            summary.policies
        ),
        (4, 2, 2, 2)
    );
    assert_eq!(summary.local_workloads, 2);
}

/// A connection from `src` (None: plaintext, from 127.0.0.1) to `dst`'s first IP on `port`.
fn decide(
    snap: &Snapshot,
    src: Option<&proxy::identity::Identity>,
    dst: &proxy::config::Workload,
    port: u16,
) -> Decision {
    let req = proxy::config::Request {
        source: src,
        source_ip: ip("127.0.0.1"),
        destination: std::net::SocketAddr::new(dst.ips[0], port),
    };
    snap.decide(&req, dst)
}

#[test]
fn example_policies_decide() {
    let snap = load_file(&example_path(), &LoadOptions::default()).unwrap();
    let echo0 = snap.workload_by_ip(ip("127.10.1.2")).unwrap();
    let db = snap.workload_by_ip(ip("127.10.2.2")).unwrap();
    let client = id("spiffe://cluster.local/ns/demo/sa/client");
    let other_ns = id("spiffe://cluster.local/ns/prod/sa/web");
    let legacy = id("spiffe://cluster.local/ns/legacy/sa/app");

    assert_eq!(decide(&snap, Some(&client), echo0, 8080), Decision::Allow);
    assert_eq!(
        decide(&snap, Some(&client), echo0, 9000),
        Decision::Deny(DenyReason::NotAllowed)
    );
    assert_eq!(
        decide(&snap, Some(&other_ns), echo0, 8080),
        Decision::Deny(DenyReason::NotAllowed)
    );
    assert_eq!(
        decide(&snap, None, echo0, 8080),
        Decision::Deny(DenyReason::NotAllowed)
    );
    // db has no Allow policy: open, except to what a Deny policy names.
    assert_eq!(decide(&snap, Some(&other_ns), db, 15432), Decision::Allow);
    assert_eq!(decide(&snap, None, db, 15432), Decision::Allow);
    assert_eq!(
        decide(&snap, Some(&legacy), db, 15432),
        Decision::Deny(DenyReason::DeniedBy("no-legacy".into()))
    );
}

#[test]
fn node_override_changes_local_workloads() {
    let opts = LoadOptions {
        node: Some("node-2".into()),
        ..LoadOptions::default()
    };
    let snap = load_file(&example_path(), &opts).unwrap();
    assert_eq!(snap.node(), Some("node-2"));
    let local: Vec<&str> = snap.local_workloads().iter().map(|w| &*w.name).collect();
    assert_eq!(local, ["echo-1", "db-0"]);
    assert!(snap.local_workload_by_ip(ip("127.10.2.1")).is_some());
    assert!(
        snap.local_workload_by_ip(ip("127.10.1.2")).is_none(),
        "a node-1 workload is not local"
    );
}

#[test]
fn rejects_with_path_and_reason() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "80: 8080",
            "http: 8080",
            "services[0].ports",
            "\"http\" is not a port number",
        ),
        (
            "80: 8080",
            "0: 8080",
            "services[0].ports",
            "port 0 is not allowed (ports are 1-65535)",
        ),
        (
            "80: 8080",
            "0: 8080",
            "services[0].ports",
            "port 0 is not allowed (ports are 1-65535)",
        ),
        (
            "80: 8080",
            "70000: 8080",
            "services[0].ports",
            "70000 is out of range (ports are 1-65535)",
        ),
        (
            "80: 8080",
            "80: 8080\n      \"80\": 9090",
            "services[0].ports",
            "service port 80 is listed twice",
        ),
        (
            "80: 8080",
            "{}",
            "services[0].ports",
            "must map at least one port",
        ),
        (
            "10.0.0.1\"]",
            "10.0.0.300\"]",
            "workloads[0].workloadIps[0]",
            "\"10.0.0.300\" is not an IP address",
        ),
        (
            "10.0.0.2\"]",
            "10.0.0.1\"]",
            "workloads[1].workloadIps[0]",
            "10.0.0.1 is already used by workloads[0]",
        ),
        (
            "workloadIps: [\"10.0.0.2\"]",
            "workloadIps: []",
            "workloads[1].workloadIps",
            "must list at least one IP (or give a hostname)",
        ),
        (
            "protocol: HBONE",
            "protocol: HTTP",
            "workloads[0].protocol",
            "unknown variant `HTTP`, expected `HBONE` or `TCP`",
        ),
        (
            "vips: [\"10.1.0.1\"]",
            "vips: [\"10.0.0.2\"]",
            "services[0].vips[0]",
            "10.0.0.2 is also an IP of workloads[1] (ns/b)",
        ),
        (
            "vips: [\"10.1.0.1\"]",
            "vips: [\"10.1.0.1\", \"10.1.0.1\"]",
            "services[0].vips[1]",
            "VIP 10.1.0.1 is already used by this service",
        ),
        (
            "vips: [\"10.1.0.1\"]",
            "vips: [\"net/\"]",
            "services[0].vips[0]",
            "\"net/\" is not an IP address or \"network/IP\"",
        ),
        (
            "services: [\"ns/s.ns\"]\n  - name: b",
            "services: [\"ns/nope\"]\n  - name: b",
            "workloads[0].services[0]",
            "unknown service \"ns/nope\" (no service has this namespace/hostname)",
        ),
        (
            "services: [\"ns/s.ns\"]\n  - name: b",
            "services: [\"s.ns\"]\n  - name: b",
            "workloads[0].services[0]",
            "\"s.ns\" is not of the form \"namespace/hostname\"",
        ),
        (
            "serviceAccount: sa-a",
            "serviceAccount: \"sa a\"",
            "workloads[0].serviceAccount",
            "\"sa a\" is not a valid SPIFFE path segment (letters, digits, '.', '-', '_'; not empty, '.' or '..')",
        ),
        (
            "serviceAccount: sa-a",
            "serviceAccount: sa-a\n    trustDomain: Cluster.Local",
            "workloads[0].trustDomain",
            "\"Cluster.Local\" is not a valid SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')",
        ),
        (
            "  - name: b\n    namespace: ns",
            "  - name: b\n    uid: ns/a\n    namespace: ns",
            "workloads[1].uid",
            "uid \"ns/a\" is already used by workloads[0] (an absent uid defaults to namespace/name)",
        ),
        (
            "    node: n2\n",
            "    node: \"\"\n",
            "workloads[1].node",
            "must not be empty",
        ),
        (
            "serviceAccount: sa-a",
            "serviceAccount: sa-a\n    port: 80",
            "workloads[0]",
            "unknown field `port`, expected one of `uid`, `name`, `namespace`, `serviceAccount`, `workloadIps`, `hostname`, `network`, `node`, `protocol`, `networkMode`, `trustDomain`, `services`, `authorizationPolicies`, `status`, `workloadName`, `workloadType`, `canonicalName`, `canonicalRevision`, `clusterId`, `locality`, `nativeTunnel`, `applicationTunnel`, `waypoint`, `networkGateway`, `capacity`, `labels`",
        ),
        (
            "      80: 8080\n",
            "      80: 8080\n    loadBalancing: least-conn\n",
            "services[0].loadBalancing",
            "unknown variant `least-conn`, expected `round-robin` or `random`",
        ),
        (
            "      80: 8080\n",
            "      80: 8080\n  - name: s2\n    namespace: ns\n    hostname: s.ns\n    vips: [\"10.1.0.2\"]\n    ports: {1: 1}\n",
            "services[1].hostname",
            "ns/s.ns is already defined by services[0]",
        ),
        (
            "workloads: [\"ns/a\"]",
            "workloads: [\"ns/zz\"]",
            "policies[0].destination.workloads[0]",
            "unknown workload uid \"ns/zz\"",
        ),
        (
            "    destination:\n      workloads: [\"ns/a\"]\n",
            "    destination: {}\n",
            "policies[0].destination",
            "names no workloads, services or namespaces (omit `destination` to protect every workload)",
        ),
        (
            "action: Allow",
            "action: Permit",
            "policies[0].action",
            "unknown variant `Permit`, expected `Allow` or `Deny`",
        ),
        (
            "- namespaces: [\"ns\"]",
            "- principals: [\"a*b\"]",
            "policies[0].from[0].principals[0]",
            "\"a*b\" is not a principal (an identity like cluster.local/ns/NS/sa/SA, optionally with one '*' at the start or end, or '*')",
        ),
        (
            "node: n1\nworkloads",
            "node: \"\"\nworkloads",
            "node",
            "must not be empty",
        ),
    ];
    for (from, to, want_path, want_reason) in cases {
        let (path, reason) = reject(from, to);
        assert_eq!(
            (path.as_str(), reason.as_str()),
            (*want_path, *want_reason),
            "edit {from:?} -> {to:?}"
        );
    }
    assert!(cases.len() >= 10);
}

#[test]
fn error_display_has_file_line_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, BASE.replace("80: 8080", "http: 8080")).unwrap();
    let err = check_file(&file).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}:", file.display())), "{text}");
    assert!(
        text.ends_with(": services[0].ports: \"http\" is not a port number"),
        "{text}"
    );
    let ConfigError::Invalid { location, .. } = &err else {
        panic!("{err:?}")
    };
    let line = BASE.lines().position(|l| l.contains("80: 8080")).unwrap() + 1;
    assert_eq!(location.map(|l| l.0), Some(line));

    let missing = check_file(&dir.path().join("nope.yaml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing:?}");
}

use proxy::config::ConfigError;

#[test]
fn rejects_documents_that_are_not_configs() {
    let empty = parse("# nothing here\n\n", &LoadOptions::default()).unwrap_err();
    assert_eq!(empty.field_path(), "");
    assert!(
        empty.reason().starts_with("the file holds no config"),
        "{empty}"
    );

    let syntax = parse("workloads: [\n", &LoadOptions::default()).unwrap_err();
    assert_eq!(syntax.field_path(), "workloads");
    assert!(
        syntax
            .reason()
            .contains("did not find expected node content"),
        "{syntax}"
    );

    let list = parse("- name: a\n", &LoadOptions::default()).unwrap_err();
    assert_eq!(list.field_path(), "");
    assert!(list.reason().contains("expected a mesh config"), "{list}");

    assert!(
        parse("workloads: []\n", &LoadOptions::default()).is_ok(),
        "an explicit empty mesh is fine"
    );
}

#[test]
fn resolve_and_pick() {
    let snap = base();
    let Destination::Service { port, endpoint } = snap.resolve(sa("10.1.0.1:80"), 0) else {
        panic!()
    };
    assert_eq!(port.service.hostname.as_ref(), "s.ns");
    assert_eq!(endpoint.addr, sa("10.0.0.1:8080"));
    let Destination::Service { endpoint, .. } = snap.resolve(sa("10.1.0.1:80"), 1) else {
        panic!()
    };
    assert_eq!(endpoint.addr, sa("10.0.0.2:8080"));
    assert!(matches!(
        snap.resolve(sa("10.1.0.1:81"), 0),
        Destination::UnknownServicePort { .. }
    ));
    let Destination::Workload { workload, addr } = snap.resolve(sa("10.0.0.2:9000"), 0) else {
        panic!()
    };
    assert_eq!((workload.name.as_ref(), addr), ("b", sa("10.0.0.2:9000")));
    assert!(matches!(
        snap.resolve(sa("192.0.2.1:80"), 0),
        Destination::Unknown
    ));

    // Round-robin cycles in order.
    let eps = &snap.service_port(sa("10.1.0.1:80")).unwrap().endpoints;
    let order: Vec<u16> = (0..4)
        .map(|c| pick(LoadBalancing::RoundRobin, eps, c).unwrap().addr.port())
        .collect();
    assert_eq!(order, [8080; 4]);
    let names: Vec<&str> = (0..4)
        .map(|c| {
            &*pick(LoadBalancing::RoundRobin, eps, c)
                .unwrap()
                .workload
                .name
        })
        .collect();
    assert_eq!(names, ["a", "b", "a", "b"]);
    // Random: deterministic per counter, and both endpoints get a fair share.
    let picks: Vec<&str> = (0..1000)
        .map(|c| &*pick(LoadBalancing::Random, eps, c).unwrap().workload.name)
        .collect();
    let a = picks.iter().filter(|n| **n == "a").count();
    assert!(
        (400..=600).contains(&a),
        "random pick is lopsided: {a}/1000"
    );
    let rr: Vec<&str> = (0..20)
        .map(|c| if c % 2 == 0 { "a" } else { "b" })
        .collect();
    assert_ne!(picks[..20], rr[..], "random picks follow round-robin order");
    assert_eq!(
        pick(LoadBalancing::Random, eps, 7).unwrap().addr,
        pick(LoadBalancing::Random, eps, 7).unwrap().addr
    );
    assert!(pick(LoadBalancing::RoundRobin, &[], 3).is_none());
}

#[test]
fn unhealthy_workloads_are_not_endpoints() {
    let yaml = BASE.replacen("    node: n2\n", "    node: n2\n    status: Unhealthy\n", 1);
    let snap = parse(&yaml, &LoadOptions::default()).unwrap();
    let port = snap.service_port(sa("10.1.0.1:80")).unwrap();
    assert_eq!(port.endpoints.len(), 1);
    assert_eq!(port.service.members.len(), 2);
    let yaml = yaml.replacen(
        "    node: n1\n    protocol",
        "    node: n1\n    status: Unhealthy\n    protocol",
        1,
    );
    let snap = parse(&yaml, &LoadOptions::default()).unwrap();
    assert!(matches!(
        snap.resolve(sa("10.1.0.1:80"), 0),
        Destination::NoEndpoint { .. }
    ));
}

#[test]
fn network_vips_and_dual_stack_endpoints() {
    let yaml = BASE
        .replace(
            "vips: [\"10.1.0.1\"]",
            "vips: [\"10.1.0.1\", \"west/fd00::100\"]",
        )
        .replace(
            "workloadIps: [\"10.0.0.1\"]",
            "workloadIps: [\"10.0.0.1\", \"fd00::1\"]",
        );
    let snap = parse(&yaml, &LoadOptions::default()).unwrap();
    let svc = snap.service_by_vip(ip("fd00::100")).unwrap();
    assert_eq!(svc.vips[1].network, "west");
    assert_eq!(svc.vips[1].to_string(), "west/fd00::100");
    let v6 = snap.service_port(sa("[fd00::100]:80")).unwrap();
    // Workload a has an IPv6 address and gets it; b has only IPv4.
    let addrs: Vec<SocketAddr> = v6.endpoints.iter().map(|e| e.addr).collect();
    assert_eq!(addrs, [sa("[fd00::1]:8080"), sa("10.0.0.2:8080")]);
    assert_eq!(
        snap.workload_by_ip(ip("fd00::1")).unwrap().name.as_ref(),
        "a"
    );
}

#[test]
fn defaults_follow_ztunnel_and_kubernetes() {
    let snap = base();
    let b = snap.workload_by_uid("ns/b").unwrap();
    assert_eq!(b.service_account.as_ref(), "default");
    assert_eq!(b.identity, id("spiffe://cluster.local/ns/ns/sa/default"));
    let yaml = BASE.replacen("    protocol: HBONE\n", "", 1);
    let snap = parse(&yaml, &LoadOptions::default()).unwrap();
    assert_eq!(
        snap.workload_by_uid("ns/a").unwrap().protocol,
        Protocol::Tcp
    );
    assert_eq!(snap.services()[0].load_balancing, LoadBalancing::RoundRobin);
}

#[test]
fn policy_scoping_by_service_and_namespace() {
    // BASE's policy protects workload a only: b is open to anyone.
    let snap = base();
    let a = snap.workload_by_uid("ns/a").unwrap();
    let b = snap.workload_by_uid("ns/b").unwrap();
    let outsider = id("spiffe://cluster.local/ns/other/sa/x");
    assert!(!decide(&snap, Some(&outsider), a, 8080).is_allow());
    assert!(decide(&snap, Some(&outsider), b, 8080).is_allow());

    let by_service = BASE.replace("workloads: [\"ns/a\"]", "services: [\"ns/s.ns\"]");
    let snap = parse(&by_service, &LoadOptions::default()).unwrap();
    for w in snap.workloads() {
        assert!(
            !decide(&snap, Some(&outsider), w, 8080).is_allow(),
            "{}",
            w.name
        );
    }
    let by_ns = BASE.replace("workloads: [\"ns/a\"]", "namespaces: [\"elsewhere\"]");
    let snap = parse(&by_ns, &LoadOptions::default()).unwrap();
    for w in snap.workloads() {
        assert!(
            decide(&snap, Some(&outsider), w, 8080).is_allow(),
            "{}",
            w.name
        );
    }
}

/// Snapshots go from the control thread to every core.
#[test]
fn snapshot_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Snapshot>();
    check::<ConfigError>();
}

/// Cheap deterministic fuzzing: thousands of mutations of the example must each parse or be
/// rejected with a path and reason, never panic. (Bounded: 3,000 cases, well under a second.)
#[test]
fn mutated_configs_never_panic() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    let bytes = text.as_bytes();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: usize| {
        // xorshift64*: a fixed sequence, so a failure reproduces.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    };
    const NOISE: &[u8] = b":-[]{}\"' \n#&*!|>0123456789/.,?%@`\t";
    let mut rejected = 0;
    for _ in 0..3000 {
        let mut m = bytes.to_vec();
        for _ in 0..1 + next(4) {
            let at = next(m.len());
            match next(4) {
                0 => {
                    let end = (at + next(40)).min(m.len());
                    m.drain(at..end);
                }
                1 => m[at] = NOISE[next(NOISE.len())],
                2 => m.insert(at, NOISE[next(NOISE.len())]),
                _ => {
                    let end = (at + next(80)).min(m.len());
                    let chunk = m[at..end].to_vec();
                    let to = next(m.len());
                    m.splice(to..to, chunk);
                }
            }
        }
        let Ok(s) = std::str::from_utf8(&m) else {
            continue;
        };
        if let Err(e) = parse(s, &LoadOptions::default()) {
            assert!(!e.reason().is_empty());
            rejected += 1;
        }
    }
    assert!(
        rejected > 1000,
        "mutations were mostly accepted ({rejected} rejected): the parser is too lax"
    );
}

/// ztunnel's local config writes a workload's services as a map whose ports override the
/// service's target ports for that workload; both forms are accepted.
#[test]
fn ztunnel_map_form_of_workload_services() {
    let yaml = BASE.replacen(
        "services: [\"ns/s.ns\"]\n  - name: b",
        "services:\n      ns/s.ns: {80: 9090}\n  - name: b",
        1,
    );
    let snap = parse(&yaml, &LoadOptions::default()).unwrap();
    let port = snap.service_port(sa("10.1.0.1:80")).unwrap();
    let addrs: Vec<SocketAddr> = port.endpoints.iter().map(|e| e.addr).collect();
    assert_eq!(
        addrs,
        [sa("10.0.0.1:9090"), sa("10.0.0.2:8080")],
        "a overrides, b does not"
    );
    assert_eq!(port.target_port, 8080);

    let empty = BASE.replacen(
        "services: [\"ns/s.ns\"]\n  - name: b",
        "services:\n      ns/s.ns: {}\n  - name: b",
        1,
    );
    let snap = parse(&empty, &LoadOptions::default()).unwrap();
    assert_eq!(
        snap.service_port(sa("10.1.0.1:80")).unwrap().endpoints[0].addr,
        sa("10.0.0.1:8080")
    );

    let bad_port = BASE.replacen(
        "services: [\"ns/s.ns\"]\n  - name: b",
        "services:\n      ns/s.ns: {81: 9090}\n  - name: b",
        1,
    );
    let err = parse(&bad_port, &LoadOptions::default()).unwrap_err();
    assert_eq!(
        (err.field_path(), err.reason().as_str()),
        (
            "workloads[0].services.ns/s.ns",
            "81 is not a port of service \"ns/s.ns\""
        )
    );
    let bad_value = BASE.replacen(
        "services: [\"ns/s.ns\"]\n  - name: b",
        "services:\n      ns/s.ns: {80: http}\n  - name: b",
        1,
    );
    let err = parse(&bad_value, &LoadOptions::default()).unwrap_err();
    assert_eq!(err.reason(), "\"http\" is not a port number");
    assert!(
        err.field_path().starts_with("workloads[0].services"),
        "{}",
        err.field_path()
    );
}

#[test]
fn local_identities_are_distinct() {
    let yaml = BASE.replacen(
        "    node: n2\n",
        "    node: n1\n    serviceAccount: sa-a\n",
        1,
    );
    let snap = parse(&yaml, &LoadOptions::default()).unwrap();
    assert_eq!(snap.local_workloads().len(), 2);
    assert_eq!(
        snap.local_identities(),
        [id("spiffe://cluster.local/ns/ns/sa/sa-a")]
    );
}

// The waypoint's kinds (labels, DestinationRules, L7-only files): a module of this binary.
#[path = "config_parse/waypoint.rs"]
mod waypoint;
