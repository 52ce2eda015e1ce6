//! The ringmesh scenario: two real `ringmesh run` nodes with an iptables DNAT entry carry
//! HTTP and TCP echo with zero errors, and stopping them leaves no process, no directory
//! and no iptables rule. Needs the `ringmesh` binary (built by `cargo test --workspace`),
//! root and iptables; skipped with a message when one is missing and CI is unset.

mod common;

use bench::procs::Supervisor;
use bench::scenario::{self, Kind, Options};
use bench::workload::Protocol;
use common::*;

fn nat_rules() -> String {
    let out = std::process::Command::new("iptables")
        .args(["-w", "5", "-t", "nat", "-S", "OUTPUT"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn prerequisites() -> Option<std::path::PathBuf> {
    let missing = match (
        bench::ringmesh::locate(None),
        bench::ringmesh::check_prerequisites(),
    ) {
        (Ok(bin), Ok(())) => return Some(bin),
        (Err(e), _) | (_, Err(e)) => e.to_string(),
    };
    if ci() {
        panic!("CI is set but the ringmesh scenario cannot run: {missing}");
    }
    eprintln!("SKIPPED ringmesh scenario test: {missing}");
    None
}

#[test]
fn ringmesh_two_nodes_carry_http_and_echo_then_stop_cleanly() {
    let Some(binary) = prerequisites() else {
        return;
    };
    let sup = Supervisor::new();
    let opts = Options {
        ringmesh: Some(binary),
        ..Options::default()
    };
    let vip = bench::ringmesh::Net::for_process().vip();
    // Both loads in one test: the scenario's addresses are per process, so two ringmesh
    // scenarios in parallel tests of this binary would collide.
    for protocol in [Protocol::Http, Protocol::Tcp] {
        let backend = match protocol {
            Protocol::Http => {
                http_backend_on(scenario::backend_ip(Kind::Ringmesh, &Default::default()))
            }
            Protocol::Tcp => {
                echo_backend_on(scenario::backend_ip(Kind::Ringmesh, &Default::default()))
            }
        };
        let sut = scenario::start(Kind::Ringmesh, &opts, &sup, backend, protocol)
            .expect("ringmesh starts");
        assert_eq!(sut.entry, vip);
        assert_eq!(sut.proxy_pids.len(), 2);
        assert!(
            nat_rules().contains(&vip.ip().to_string()),
            "no DNAT rule while running"
        );
        let failures = match protocol {
            Protocol::Http => http_load(sut.entry, 8, 50),
            Protocol::Tcp => echo_load(sut.entry, 4, 50, 16 * 1024),
        };
        assert_eq!(failures, 0, "{protocol:?} errors through ringmesh");
        let pids = sut.proxy_pids.clone();
        let dir = sut.group.as_ref().unwrap().dir().to_path_buf();
        drop(sut);
        for pid in pids {
            assert!(!alive(pid), "node {pid} still running");
        }
        assert!(!dir.exists());
        assert!(
            !nat_rules().contains(&vip.ip().to_string()),
            "DNAT rule left behind"
        );
        assert_eq!(sup.live_children(), 0);
    }

    // `--ringmesh-arg` reaches both nodes: a valid node flag still carries load, and a bad
    // one stops the scenario with the node's own complaint, leaving nothing behind.
    let steered = Options {
        ringmesh_args: vec!["--incoming-cpu".into(), "capture".into()],
        ..opts.clone()
    };
    let backend = http_backend_on(scenario::backend_ip(Kind::Ringmesh, &Default::default()));
    let sut = scenario::start(Kind::Ringmesh, &steered, &sup, backend, Protocol::Http)
        .expect("ringmesh starts with --incoming-cpu capture");
    assert_eq!(
        http_load(sut.entry, 8, 50),
        0,
        "errors with --incoming-cpu capture"
    );
    drop(sut);
    let bad = Options {
        ringmesh_args: vec!["--incoming-cpu".into(), "sideways".into()],
        ..opts
    };
    let backend = http_backend_on(scenario::backend_ip(Kind::Ringmesh, &Default::default()));
    let err = match scenario::start(Kind::Ringmesh, &bad, &sup, backend, Protocol::Http) {
        Ok(_) => panic!("a node flag the node refuses must fail the scenario"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("sideways"), "{err}");
    assert!(
        !nat_rules().contains(&vip.ip().to_string()),
        "DNAT rule left behind after a failed start"
    );
    assert_eq!(sup.live_children(), 0);
}
