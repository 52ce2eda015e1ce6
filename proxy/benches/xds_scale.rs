//! How long istiod's state takes to apply, and what it costs in memory, at cluster scale.
//!
//! Run: `cargo bench -p ringmesh-proxy --bench xds_scale` (`-- --workloads N --services M
//! --rounds R` to change the scale; defaults 10,000 workloads, 1,000 services, 7 rounds).
//! The workloads are spread over 50 nodes (200 local to the measured node), each an
//! endpoint of one service, with one namespace policy per 100 workloads; every resource is
//! the encoded protobuf istiod would send, decoded and validated as the node does.
//!
//! Figures, medians over the rounds, printed as text and as one JSON line:
//! - `initial_ms`: the first response (everything) decoded, validated, applied and turned
//!   into the snapshot the cores read;
//! - `update_ms`: one workload changed afterwards (a pod restart), with the full state;
//! - `rss_per_workload_bytes`: resident memory the state and one snapshot add, per workload
//!   (RSS before and after, allocator caches returned first).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::pb::security as ps;
use control::pb::workload as pw;
use control::xds::{Resource, Update};
use prost::Message;
use proxy::config::Snapshot;
use proxy::config::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, XdsState};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODES: usize = 50;

struct Args {
    workloads: usize,
    services: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        workloads: 10_000,
        services: 1_000,
        rounds: 7,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), next) {
            ("--workloads", Some(n)) => a.workloads = n,
            ("--services", Some(n)) => a.services = n,
            ("--rounds", Some(n)) => a.rounds = n,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn ip(i: usize, base: u8) -> Vec<u8> {
    vec![base, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

fn workload(i: usize, services: usize) -> (String, Vec<u8>) {
    let ns = format!("ns-{}", i % 100);
    let svc = i % services;
    let uid = format!("Kubernetes//Pod/{ns}/app-{i}");
    let w = pw::Workload {
        uid: uid.clone(),
        name: format!("app-{i}"),
        namespace: ns.clone(),
        service_account: format!("sa-{svc}"),
        addresses: vec![ip(i, 10)],
        node: format!("node-{}", i % NODES),
        tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
        workload_name: format!("app-{svc}"),
        canonical_name: format!("app-{svc}"),
        canonical_revision: "v1".into(),
        cluster_id: "Kubernetes".into(),
        services: HashMap::from([(
            format!(
                "ns-{}/svc-{svc}.ns-{}.svc.cluster.local",
                svc % 100,
                svc % 100
            ),
            pw::PortList {
                ports: vec![pw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]),
        ..pw::Workload::default()
    };
    let a = pw::Address {
        r#type: Some(pw::address::Type::Workload(w)),
    };
    (uid, a.encode_to_vec())
}

fn service(s: usize) -> (String, Vec<u8>) {
    let ns = format!("ns-{}", s % 100);
    let host = format!("svc-{s}.{ns}.svc.cluster.local");
    let svc = pw::Service {
        name: format!("svc-{s}"),
        namespace: ns.clone(),
        hostname: host.clone(),
        addresses: vec![pw::NetworkAddress {
            network: String::new(),
            address: ip(s, 172),
            length: None,
        }],
        ports: vec![pw::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..pw::Service::default()
    };
    let a = pw::Address {
        r#type: Some(pw::address::Type::Service(svc)),
    };
    (format!("{ns}/{host}"), a.encode_to_vec())
}

fn policy(p: usize) -> Update {
    let a = ps::Authorization {
        name: format!("allow-{p}"),
        namespace: format!("ns-{p}"),
        scope: ps::Scope::Namespace as i32,
        action: ps::Action::Allow as i32,
        rules: vec![ps::Rule {
            clauses: vec![ps::Clause {
                matches: vec![ps::Match {
                    namespaces: vec![ps::StringMatch {
                        match_type: Some(ps::string_match::MatchType::Prefix("ns-".into())),
                    }],
                    ..ps::Match::default()
                }],
            }],
        }],
        ..ps::Authorization::default()
    };
    Update {
        name: format!("ns-{p}/allow-{p}"),
        version: String::new(),
        resource: Resource::Authorization(a),
    }
}

/// Decodes as the client does (the Any's bytes into an Address).
fn decode(name: &str, body: &[u8]) -> Update {
    Update {
        name: name.to_string(),
        version: "1".into(),
        resource: Resource::Address(pw::Address::decode(body).expect("valid")),
    }
}

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let a = args();
    eprintln!(
        "xds_scale: {} workloads on {NODES} nodes, {} services, {} policies, {} rounds",
        a.workloads,
        a.services,
        a.workloads / 100,
        a.rounds
    );
    let wire_workloads: Vec<(String, Vec<u8>)> =
        (0..a.workloads).map(|i| workload(i, a.services)).collect();
    let wire_services: Vec<(String, Vec<u8>)> = (0..a.services).map(service).collect();
    let wire_bytes: usize = wire_workloads.iter().map(|(_, b)| b.len()).sum::<usize>()
        + wire_services.iter().map(|(_, b)| b.len()).sum::<usize>();

    let mut initial = Vec::new();
    let mut update = Vec::new();
    let mut rss_per = Vec::new();
    for round in 0..a.rounds {
        runtime::alloc::collect();
        let before = rss();
        let published: Arc<Mutex<Option<Arc<Snapshot>>>> = Arc::default();
        let sink = published.clone();
        let mut state = XdsState::new(Some("node-0".into()), move |s| {
            *sink.lock().unwrap() = Some(s);
        });
        let t = Instant::now();
        let updates: Vec<Update> = wire_workloads
            .iter()
            .chain(&wire_services)
            .map(|(n, b)| decode(n, b))
            .collect();
        let rejected = state.apply(ADDRESS_TYPE, updates, vec![]);
        assert!(
            rejected.is_empty(),
            "{:?}",
            rejected.first().map(|r| &r.reason)
        );
        let policies: Vec<Update> = (0..a.workloads / 100).map(policy).collect();
        state.apply(AUTHORIZATION_TYPE, policies, vec![]);
        initial.push(t.elapsed());
        let snap = published.lock().unwrap().clone().expect("published");
        assert_eq!(snap.workloads().len(), a.workloads);
        assert_eq!(snap.local_workloads().len(), a.workloads / NODES);

        // One pod restarts: a new version of one workload with a new IP.
        let (name, _) = &wire_workloads[round % a.workloads];
        let (_, body) = workload(round % a.workloads, a.services);
        let mut moved = decode(name, &body);
        if let Resource::Address(pw::Address {
            r#type: Some(pw::address::Type::Workload(w)),
        }) = &mut moved.resource
        {
            w.addresses = vec![vec![11, 0, 0, round as u8]];
        }
        let t = Instant::now();
        state.apply(ADDRESS_TYPE, vec![moved], vec![]);
        update.push(t.elapsed());

        runtime::alloc::collect();
        let after = rss();
        rss_per.push(after.saturating_sub(before) as f64 / a.workloads as f64);
        drop(snap);
        drop(state);
    }
    let init = median(initial);
    let upd = median(update);
    rss_per.sort_by(|x, y| x.total_cmp(y));
    let rss_w = rss_per[rss_per.len() / 2];
    println!(
        "initial apply {:.1} ms ({:.2} µs per workload), one-workload update {:.2} ms, \
         {:.0} bytes resident per workload; {} KiB of protobuf on the wire",
        init.as_secs_f64() * 1e3,
        init.as_secs_f64() * 1e6 / a.workloads as f64,
        upd.as_secs_f64() * 1e3,
        rss_w,
        wire_bytes / 1024
    );
    println!(
        "{{\"workloads\":{},\"services\":{},\"initial_ms\":{:.3},\"initial_us_per_workload\":{:.3},\"update_ms\":{:.3},\"rss_per_workload_bytes\":{:.0},\"wire_bytes\":{}}}",
        a.workloads,
        a.services,
        init.as_secs_f64() * 1e3,
        init.as_secs_f64() * 1e6 / a.workloads as f64,
        upd.as_secs_f64() * 1e3,
        rss_w,
        wire_bytes
    );
}
