//! End-to-end test support: find the workspace's binaries, run them as real child
//! processes that are always killed (by PID) when the test ends, pick loopback ports, and
//! wait on conditions with deadlines instead of sleeping. Mesh nodes on loopback (config
//! directories, node processes, echo backends, SOCKS5 clients) are in `mesh`, re-exported
//! here.
//!
//! Invariant: every process started through [`Proc`] is killed and reaped when its guard
//! drops, including when the test panics.
#![forbid(unsafe_code)]

pub mod ext_authz;
pub mod inpod;
pub mod istioctl;
pub mod istiod;
pub mod kube;
pub mod l7;
mod mesh;
pub mod otlp_grpc;
mod prom;
pub mod web;

pub use mesh::*;
pub use prom::{Sample, metric_samples, metric_value};

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The directory cargo puts this profile's binaries in (`target/debug` for tests).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf()
}

/// Path of a workspace binary, building it first when this test run did not.
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    if !path.exists() {
        let package = match name {
            "ringmesh" => "ringmesh-proxy",
            "loadgen" => "ringmesh-loadgen",
            "ringmesh-bench" => "ringmesh-bench",
            other => panic!("unknown workspace binary {other}"),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
    }
    path
}

/// A loopback port that was free a moment ago. Needed where every core binds the same
/// port with SO_REUSEPORT (binding port 0 would give each core a different one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `cond` until it is true or `timeout` passes.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> Result<()> {
    wait_for(timeout, &format!("a listener on {addr}"), || {
        // A self-connect (source port == the unbound destination port) is not a listener.
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100))
            .is_ok_and(|s| s.local_addr().is_ok_and(|local| local != addr))
    })
}

/// ztunnel's environment variables a node reads (see `proxy::node::cluster`).
const ZTUNNEL_ENV: &[&str] = &[
    "XDS_ADDRESS",
    "CA_ADDRESS",
    "XDS_ROOT_CA",
    "CA_ROOT_CA",
    "AUTH_TOKEN",
    "CLUSTER_ID",
    "ISTIO_META_CLUSTER_ID",
    "NODE_NAME",
    "POD_NAME",
    "POD_NAMESPACE",
    "INSTANCE_IP",
    "PROXY_MODE",
    "SECRET_TTL",
    "LOCAL_XDS_PATH",
    "KUBERNETES_SERVICE_HOST",
    "ZTUNNEL_WORKER_THREADS",
    "CONNECTION_TERMINATION_DEADLINE",
    "TERMINATION_GRACE_PERIOD_SECONDS",
];

/// A child process killed and reaped on drop; its stderr is captured for assertions.
pub struct Proc {
    child: Option<Child>,
    name: String,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

/// Appends each line `pipe` gives to `sink`, on a thread of its own, until the pipe ends.
fn collect_lines(pipe: impl std::io::Read + Send + 'static, sink: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
}

impl Proc {
    /// Spawns `path args...` with stdout and stderr captured.
    pub fn spawn(path: &PathBuf, args: &[&str]) -> Result<Proc> {
        Proc::spawn_env(path, args, &[])
    }

    /// [`Proc::spawn`] with `env` set. Variables that would turn a node into cluster mode
    /// (ztunnel's) are never inherited from the test's environment.
    pub fn spawn_env(path: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> Result<Proc> {
        let mut cmd = Command::new(path);
        for var in ZTUNNEL_ENV {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .args(args)
            // The process dies with the test thread that started it, even when the test
            // binary is killed and cannot run its guards.
            .env("RINGMESH_EXIT_WITH_PARENT", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", path.display()))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        collect_lines(child.stderr.take().unwrap(), stderr.clone());
        collect_lines(child.stdout.take().unwrap(), stdout.clone());
        Ok(Proc {
            child: Some(child),
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            stderr,
            stdout,
        })
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends a signal by PID with kill(1) (this crate has no unsafe code).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{sig} {} failed", self.pid());
        }
        Ok(())
    }

    /// Waits for the process to exit; returns its exit code (None when killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not exit within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads until end of stream into a vector (test helper for blocking sockets).
pub fn read_all(mut r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)?;
    Ok(v)
}

/// A cheap, order-sensitive checksum (FNV-1a 64) for comparing large transfers.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
