//! The external scenario with plain processes: a one-proxy and a two-proxy chain of a small
//! Python TCP forwarder (standing in for ztunnel or Linkerd), carrying bytes intact and
//! stopped without leftovers; bad templates are refused before anything starts.

mod common;

use bench::procs::Supervisor;
use bench::scenario::{self, Kind, Options};
use bench::workload::Protocol;
use common::*;

/// A thread-per-connection TCP forwarder: `python3 FILE LISTEN_HOST LISTEN_PORT UP_HOST UP_PORT`.
const FORWARDER: &str = r#"
import socket, sys, threading
lh, lp, uh, up = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            b.sendall(d)
    except OSError: pass
    try: b.shutdown(socket.SHUT_WR)
    except OSError: pass
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((lh, lp)); s.listen(128)
while True:
    c, _ = s.accept()
    try: u = socket.create_connection((uh, up))
    except OSError as e:
        print("upstream", uh, up, e, file=sys.stderr, flush=True); c.close(); continue
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"#;

/// The two tests start processes on ports picked free a moment before they bind them; run
/// side by side, one test's pick can be the other's listener or probe, so they take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn python() -> String {
    bench::net::on_path("python3")
        .expect("python3 on PATH")
        .display()
        .to_string()
}

#[test]
fn one_and_two_proxy_chains_carry_traffic_and_stop() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fwd.py");
    std::fs::write(&script, FORWARDER).unwrap();
    let template = format!(
        "{} {} {{listen_host}} {{listen_port}} {{upstream_host}} {{upstream_port}}",
        python(),
        script.display()
    );
    let sup = Supervisor::new();
    for n in [1, 2] {
        let opts = Options {
            external_cmds: vec![template.clone(); n],
            ..Options::default()
        };
        let echo = echo_backend();
        let sut = scenario::start(Kind::External, &opts, &sup, echo, Protocol::Tcp).unwrap();
        assert_eq!(sut.proxy_pids.len(), n);
        assert_eq!(sut.configs.len(), n);
        assert!(sut.configs[0].1.contains(&sut.entry.port().to_string()));
        let lost = echo_load(sut.entry, 4, 50, 4096);
        if lost != 0 {
            // What the forwarders said, for a failure that does not reproduce at will.
            let g = sut
                .group
                .as_ref()
                .expect("the external scenario has a group");
            let logs: Vec<String> = g
                .procs()
                .iter()
                .map(|p| format!("{}: {}", p.what, g.log_tail(p)))
                .collect();
            panic!(
                "{n}-proxy chain lost {lost} of 200 rounds (entry {}, backend {echo}); logs:\n{}",
                sut.entry,
                logs.join("\n")
            );
        }
        let pids = sut.proxy_pids.clone();
        drop(sut);
        assert!(pids.iter().all(|&p| !alive(p)));
        assert_eq!(sup.live_children(), 0);
    }
}

#[test]
fn templates_are_checked_before_anything_starts() {
    let _serial = serial();
    let sup = Supervisor::new();
    let run = |cmds: Vec<&str>| {
        let opts = Options {
            external_cmds: cmds.into_iter().map(String::from).collect(),
            ..Options::default()
        };
        scenario::start(Kind::External, &opts, &sup, echo_backend(), Protocol::Tcp)
            .unwrap_err()
            .to_string()
    };
    assert!(run(vec![]).contains("one or two"));
    assert!(run(vec!["p {listen}"]).contains("{upstream}"));
    assert!(run(vec!["p {listen} {upstream} {bogus}"]).contains("{bogus}"));
    let e = run(vec!["sh -c 'exit 3' {listen} {upstream}"]);
    assert!(e.contains("exited"), "{e}");
    assert_eq!(sup.live_children(), 0);
}
