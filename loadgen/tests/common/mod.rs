//! Test helpers: `loadgen serve` as a child process (killed by PID when the guard drops,
//! also on panic), running the `loadgen` binary with a deadline, reading its JSON.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

/// Timing-sensitive tests on a shared 2-core machine run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running `loadgen serve`.
pub struct Backend {
    child: Child,
    pub addr: String,
}

impl Backend {
    pub fn start(args: &[&str]) -> Backend {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn loadgen serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut backend = Backend {
            child,
            addr: String::new(),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve printed its address within 20 s");
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        backend.addr = addr;
        backend
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Result of one `loadgen` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<serde_json::Value>,
}

/// Runs `loadgen args… --json <tmp>` with a deadline; kills it if the deadline passes.
pub fn loadgen(args: &[&str], deadline: Duration) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("out.json");
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    let wants_json = args
        .first()
        .is_some_and(|a| !["sweep", "serve", "dev-certs", "plot"].contains(a));
    if wants_json {
        cmd.arg("--json").arg(&json_path).arg("--quiet");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen {args:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let json = std::fs::read_to_string(&json_path)
        .ok()
        .map(|t| serde_json::from_str(&t).expect("valid JSON"));
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    }
}

/// A loopback port with nothing listening on it.
pub fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn u(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing or not an integer in {v}"))
}

/// Deadline for one loadgen run in these tests.
pub const DL: Duration = Duration::from_secs(60);

/// requests == responses + errors, and nothing failed.
pub fn assert_clean(v: &serde_json::Value, requests: u64) {
    assert_eq!(u(v, "requests"), requests, "{v}");
    assert_eq!(
        u(v, "requests"),
        u(v, "responses") + u(v, "errors_total"),
        "{v}"
    );
    assert_eq!(u(v, "errors_total"), 0, "{v}");
    assert_eq!(v["latency_us"]["samples"].as_u64(), Some(requests));
}
