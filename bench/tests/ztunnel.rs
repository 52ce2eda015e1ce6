//! The optional ztunnel scenario (`bench::ztunnel`): two real ztunnels on the veth topology
//! carry echo traffic with zero errors, each in its side's namespace, and nothing is left
//! after. Runs only when `RINGMESH_BENCH_ZTUNNEL` names a ztunnel binary built with
//! `--features testing` (never in CI: building ztunnel is the user's step); without one it
//! says so and passes. The scenario's refusals (no binary, loopback) always run.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bench::procs::Supervisor;
use bench::scenario::{self, Kind, Options};
use bench::topology::{self, Topology};
use bench::workload::Protocol;
use common::*;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn ztunnel_binary() -> Option<PathBuf> {
    let Some(path) = std::env::var_os("RINGMESH_BENCH_ZTUNNEL").map(PathBuf::from) else {
        eprintln!("SKIPPED ztunnel scenario: set RINGMESH_BENCH_ZTUNNEL to a ztunnel binary");
        return None;
    };
    if let Err(e) = topology::check_prerequisites(cores()) {
        eprintln!("SKIPPED ztunnel scenario: {e}");
        return None;
    }
    Some(path)
}

#[test]
fn without_a_binary_or_off_the_veth_the_scenario_says_what_it_needs() {
    let sup = Supervisor::new();
    let backend = "127.0.0.1:9".parse().unwrap();
    let err = scenario::start(
        Kind::Ztunnel,
        &Options::default(),
        &sup,
        backend,
        Protocol::Tcp,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--ztunnel") || err.contains("ztunnel binary"),
        "{err}"
    );
    let opts = Options {
        ztunnel: Some(PathBuf::from("/bin/true")),
        ..Options::default()
    };
    let err = scenario::start(Kind::Ztunnel, &opts, &sup, backend, Protocol::Tcp)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--topology veth"), "{err}");
}

#[test]
fn two_ztunnels_carry_echoes_across_the_veth_and_clean_up() {
    let Some(binary) = ztunnel_binary() else {
        return;
    };
    let sup = Supervisor::new();
    let topo = Topology::veth(&sup, cores()).expect("veth topology");
    let ns_id = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    };
    let (a, b) = (
        topo.proxy1.netns.clone().unwrap(),
        topo.proxy2.netns.clone().unwrap(),
    );
    let opts = Options {
        ztunnel: Some(binary),
        topology: topo.clone(),
        ..Options::default()
    };
    let ip = scenario::backend_ip(Kind::Ztunnel, &topo);
    let backend = topo.backend.run(|| Ok(echo_backend_on(ip))).unwrap();
    let sut = scenario::start(Kind::Ztunnel, &opts, &sup, backend, Protocol::Tcp)
        .unwrap_or_else(|e| panic!("ztunnel starts on the veth: {e}"));
    let failures = topo
        .client
        .run(|| Ok(echo_load(sut.entry, 4, 20, 64 * 1024)))
        .unwrap();
    assert_eq!(failures, 0, "echo errors through the ztunnels");
    // The server-side ztunnel took them over mTLS (HBONE), not as plain TCP.
    let metrics = topo
        .proxy2
        .run(|| {
            Ok(bench::net::http_get(
                std::net::SocketAddr::new(ip, 15020),
                "/metrics",
            ))
        })
        .unwrap()
        .expect("ztunnel 2's /metrics");
    let mtls = metrics.1.lines().any(|l| {
        l.starts_with("istio_tcp_connections_opened_total")
            && l.contains("reporter=\"destination\"")
            && l.contains("connection_security_policy=\"mutual_tls\"")
    });
    assert!(
        mtls,
        "no mTLS connection in ztunnel 2's metrics:\n{}",
        metrics.1
    );
    let ns = |pid: u32| ns_id(Path::new(&format!("/proc/{pid}/ns/net")));
    assert_eq!(
        ns(sut.proxy_pids[0]),
        ns_id(&a),
        "client-side ztunnel in side a"
    );
    assert_eq!(
        ns(sut.proxy_pids[1]),
        ns_id(&b),
        "server-side ztunnel in side b"
    );
    let pids = sut.proxy_pids.clone();
    drop(sut);
    for pid in pids {
        assert!(!alive(pid), "ztunnel {pid} still running");
    }
    drop(opts);
    drop(topo);
    assert_eq!(sup.live_children(), 0);
}
