//! The tcp-relay floor: two real `ringmesh forward` processes carry HTTP and TCP echo intact
//! with zero errors, and stopping them leaves no process and no directory. Needs the
//! `ringmesh` binary (built by `cargo test --workspace`); no root.

mod common;

use bench::procs::Supervisor;
use bench::scenario::{self, Kind, Options};
use bench::workload::Protocol;
use common::*;

fn ringmesh() -> Option<std::path::PathBuf> {
    match bench::ringmesh::locate(None) {
        Ok(p) => Some(p),
        Err(e) if ci() => panic!("CI is set but the tcp-relay scenario cannot run: {e}"),
        Err(e) => {
            eprintln!("SKIPPED tcp-relay scenario test: {e}");
            None
        }
    }
}

#[test]
fn two_forwarders_carry_http_and_echo_then_stop_cleanly() {
    let Some(binary) = ringmesh() else {
        return;
    };
    let sup = Supervisor::new();
    let opts = Options {
        ringmesh: Some(binary),
        ..Options::default()
    };
    for protocol in [Protocol::Http, Protocol::Tcp] {
        let backend = match protocol {
            Protocol::Http => http_backend(),
            Protocol::Tcp => echo_backend(),
        };
        let sut = scenario::start(Kind::TcpRelay, &opts, &sup, backend, protocol)
            .expect("tcp-relay starts");
        assert_eq!(sut.proxy_pids.len(), 2);
        assert_ne!(
            sut.entry, backend,
            "the client must enter through a forwarder"
        );
        // The generated command lines are shown by --show-config, client side first.
        assert_eq!(sut.configs[0].0, "forwarder-1.cmd");
        // A chain of two: the entry forwards to the second, which forwards to the backend.
        let flag = |cmd: &str, name: &str| {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let at = words.iter().position(|w| *w == name).unwrap();
            words[at + 1].to_string()
        };
        let (first, second) = (&sut.configs[0].1, &sut.configs[1].1);
        assert_eq!(flag(first, "--listen"), sut.entry.to_string());
        assert_eq!(flag(first, "--to"), flag(second, "--listen"));
        assert_eq!(flag(second, "--to"), backend.to_string());
        // Placed like a node: steered listeners, user-space copies.
        assert!(
            sut.configs[0].1.contains("--incoming-cpu all"),
            "{:?}",
            sut.configs
        );
        assert!(
            sut.configs[0].1.contains("--copy buffered"),
            "{:?}",
            sut.configs
        );
        let failures = match protocol {
            Protocol::Http => http_load(sut.entry, 8, 50),
            // Larger than a socket buffer: the relay must keep both directions moving.
            Protocol::Tcp => echo_load(sut.entry, 4, 20, 512 * 1024),
        };
        assert_eq!(failures, 0, "{protocol:?} errors through tcp-relay");
        let pids = sut.proxy_pids.clone();
        let dir = sut.group.as_ref().unwrap().dir().to_path_buf();
        drop(sut);
        for pid in pids {
            assert!(!alive(pid), "forwarder {pid} still running");
        }
        assert!(!dir.exists());
        assert_eq!(sup.live_children(), 0);
    }
}

#[test]
fn a_missing_ringmesh_binary_is_named() {
    let sup = Supervisor::new();
    let opts = Options {
        ringmesh: Some("/nonexistent/ringmesh".into()),
        ..Options::default()
    };
    let err = scenario::start(Kind::TcpRelay, &opts, &sup, echo_backend(), Protocol::Tcp)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/ringmesh"), "{err}");
    assert_eq!(sup.live_children(), 0);
}
