//! The veth topology: two network namespaces joined by a veth, each scenario's client-side
//! proxy (and the client) in one, server-side proxy (and the backend) in the other. Each
//! scenario carries echo traffic with zero errors across the veth, its processes live in the
//! namespace of their side, and dropping the topology deletes both namespaces. Needs root,
//! iproute2, taskset and two CPUs; skipped with a message when one is missing and CI is
//! unset.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bench::procs::Supervisor;
use bench::scenario::{self, Kind, Options};
use bench::topology::{self, Topology};
use bench::workload::Protocol;
use common::*;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn prerequisites() -> Option<std::path::PathBuf> {
    let missing = match (
        bench::ringmesh::locate(None),
        topology::check_prerequisites(cores()),
        bench::ringmesh::check_prerequisites(),
    ) {
        (Ok(bin), Ok(()), Ok(())) => return Some(bin),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => e.to_string(),
    };
    if ci() {
        panic!("CI is set but the veth topology cannot run: {missing}");
    }
    eprintln!("SKIPPED veth topology test: {missing}");
    None
}

/// The (device, inode) identity of a network namespace file.
fn ns_id(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

fn namespaces() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_scenario_crosses_the_veth_from_its_own_namespaces_and_cleans_up() {
    let Some(binary) = prerequisites() else {
        return;
    };
    let sup = Supervisor::new();
    let topo = Topology::veth(&sup, cores()).expect("veth topology");
    let a = topo.proxy1.netns.clone().unwrap();
    let b = topo.proxy2.netns.clone().unwrap();
    assert_eq!(topo.client.netns.as_ref(), Some(&a), "client beside node 1");
    assert_eq!(
        topo.backend.netns.as_ref(),
        Some(&b),
        "backend beside node 2"
    );
    assert_ne!(ns_id(&a), ns_id(&b));
    assert_ne!(
        topo.proxy1.launcher, topo.proxy2.launcher,
        "sides on their own CPUs"
    );
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    assert!(namespaces().contains(&name(&a)));

    let mut kinds = vec![Kind::Direct, Kind::TcpRelay, Kind::Ringmesh];
    if envoy_or_skip("veth topology: envoy-sidecar-tcp").is_some() {
        kinds.push(Kind::EnvoySidecarTcp);
    }
    let opts = Options {
        ringmesh: Some(binary),
        envoy_concurrency: 1,
        topology: topo.clone(),
        ..Options::default()
    };
    for kind in kinds {
        let ip = scenario::backend_ip(kind, &topo);
        assert_eq!(ip, std::net::IpAddr::V4(topology::VETH_B));
        let backend = topo.backend.run(|| Ok(echo_backend_on(ip))).unwrap();
        let sut = scenario::start(kind, &opts, &sup, backend, Protocol::Tcp)
            .unwrap_or_else(|e| panic!("{kind} starts on the veth: {e}"));
        let failures = topo
            .client
            .run(|| Ok(echo_load(sut.entry, 4, 20, 64 * 1024)))
            .unwrap();
        assert_eq!(failures, 0, "{kind}: echo errors across the veth");
        if let [p1, p2] = sut.proxy_pids[..] {
            let ns = |pid: u32| ns_id(Path::new(&format!("/proc/{pid}/ns/net")));
            assert_eq!(ns(p1), ns_id(&a), "{kind}: client-side proxy in side a");
            assert_eq!(ns(p2), ns_id(&b), "{kind}: server-side proxy in side b");
        }
        let pids = sut.proxy_pids.clone();
        drop(sut);
        for pid in pids {
            assert!(!alive(pid), "{kind}: proxy {pid} still running");
        }
    }
    drop(opts);
    drop(topo);
    let left = namespaces();
    assert!(
        !left.contains(&name(&a)) && !left.contains(&name(&b)),
        "namespaces left behind: {left}"
    );
    assert_eq!(sup.live_children(), 0);
}
