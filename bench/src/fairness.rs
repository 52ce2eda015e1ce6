//! `ringmesh-bench fairness`: how long a normal client's handshake takes while one peer
//! floods the same worker (issue 12: a SETTINGS or PING flood on one connection delayed new
//! handshakes on its core to p50 1.4–2.4 s, max 4.9 s, against 3 ms normally).
//!
//! One `ringmesh run` node (one worker by default, so the flooder and the probes share its
//! core) serves a workload with HBONE on loopback. For each attack the harness runs the
//! attacker on its own threads (an mTLS peer holding a certificate of the mesh's CA, as a
//! compromised peer node would) and, meanwhile, a prober that opens fresh connections and
//! times TCP connect + TLS handshake + the node's HTTP/2 SETTINGS. It reports each attack's
//! handshake latency percentiles next to the quiet baseline, how often the node cut the
//! attacker off, and the node's CPU and memory, as JSON and a Markdown table.
//!
//! Attacks: `ping` and `settings` (control-frame floods), `overrun` (a stream into an echo
//! sending 16 KiB DATA frames as fast as it can, past the flow-control windows, so the node
//! reads at full speed until it ends the connection), `tiny-data` (one-byte DATA frames on a
//! stream whose backend never reads), `handshakes` (new TLS connections as fast as one thread
//! can make them).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hbone::certs::{CertificateAuthority, LeafOptions};
use hbone::identity::Identity;
use hbone::wire::frame::{
    ACK, DATA, END_HEADERS, HEADERS, PING, PREFACE, SETTINGS, connect_block, encode as frame,
};
use serde::Serialize;

use crate::net::wait_for;
use crate::{Error, Result};

/// The attacks, in report order.
pub const ATTACKS: [&str; 6] = [
    "none",
    "ping",
    "settings",
    "overrun",
    "tiny-data",
    "handshakes",
];

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub ringmesh: PathBuf,
    /// `--cores` for the node (one: the attacker and the probes share a worker).
    pub cores: String,
    pub attacks: Vec<String>,
    /// Handshakes timed per attack.
    pub probes: usize,
    pub out: PathBuf,
}

/// One attack's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub attack: String,
    pub probes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Connections the attacker opened, and how many of them the node ended.
    pub attacker_connections: u64,
    pub attacker_cut_off: u64,
    /// The node's CPU time during the attack, per probe handshake.
    pub node_cpu_s: f64,
    pub node_rss_mib: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cores: String,
    pub rows: Vec<Row>,
}

/// This process's 127.X.0.0/16: X in 250..=253, a block no other harness or test uses (the
/// comparison scenarios take 192..=247, the demo 64..=191, the e2e tests 200..=249).
fn block() -> u8 {
    250 + (std::process::id() % 4) as u8
}

fn node_ip() -> Ipv4Addr {
    Ipv4Addr::new(127, block(), 0, 1)
}

fn server_ip() -> Ipv4Addr {
    Ipv4Addr::new(127, block(), 2, 1)
}

fn sink_ip() -> Ipv4Addr {
    Ipv4Addr::new(127, block(), 2, 2)
}

const ECHO_PORT: u16 = 8080;

fn mesh_config() -> String {
    let w = |name: &str, ip: Ipv4Addr| {
        format!(
            "  - {{name: {name}, namespace: bench, serviceAccount: {name}, workloadIps: [\"{ip}\"], node: node-1, protocol: HBONE}}\n"
        )
    };
    format!(
        "# Written by ringmesh-bench fairness.\nworkloads:\n{}{}{}",
        w("client", Ipv4Addr::new(127, block(), 1, 1)),
        w("server", server_ip()),
        w("sink", sink_ip())
    )
}

/// TLS material of the harness's peers.
struct Peers {
    client: Arc<rustls::ClientConfig>,
    to_sink: Arc<rustls::ClientConfig>,
}

fn id(sa: &str) -> Result<Identity> {
    Ok(Identity::new("cluster.local", "bench", sa)?)
}

impl Peers {
    fn new(ca_dir: &Path) -> Result<Peers> {
        let read = |f: &str| {
            std::fs::read_to_string(ca_dir.join(f)).map_err(|e| Error::io(ca_dir.join(f), e))
        };
        let ca = CertificateAuthority::from_pem(&read("root-cert.pem")?, &read("root-key.pem")?)?;
        let leaf = ca.issue(&id("client")?, &LeafOptions::default())?;
        let config = |server: &str| -> Result<Arc<rustls::ClientConfig>> {
            Ok(hbone::tls::client_config(
                leaf.chain(),
                leaf.key(),
                std::slice::from_ref(ca.root_der()),
                vec![id(server)?],
            )?)
        };
        Ok(Peers {
            client: config("server")?,
            to_sink: config("sink")?,
        })
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// TCP + TLS + the HTTP/2 preface, SETTINGS exchanged.
fn h2_connect(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ClientConnection::new(cfg.clone(), hbone::tls::server_name())
        .map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    tls.write_all(&out)?;
    // The server's first frame is its SETTINGS (RFC 9113 §3.4).
    let mut head = [0u8; 9];
    tls.read_exact(&mut head)?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload)?;
    if head[3] != SETTINGS {
        return Err(std::io::Error::other(
            "the node's first frame is not SETTINGS",
        ));
    }
    let mut ack = Vec::new();
    frame(&mut ack, SETTINGS, ACK, 0, &[]);
    tls.write_all(&ack)?;
    Ok(tls)
}

/// Counters the attacker keeps.
#[derive(Default)]
struct Attacker {
    connections: AtomicU64,
    cut_off: AtomicU64,
}

/// Runs `attack` until `stop`, reconnecting whenever the node cuts it off.
fn attack(kind: &str, peers: &Peers, stop: &AtomicBool, stats: &Attacker) {
    let hbone = SocketAddr::new(IpAddr::V4(server_ip()), 15008);
    let sink_hbone = SocketAddr::new(IpAddr::V4(sink_ip()), 15008);
    while !stop.load(Ordering::Relaxed) {
        if kind == "handshakes" {
            if h2_connect(&peers.client, hbone).is_ok() {
                stats.connections.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let (cfg, addr) = match kind {
            "tiny-data" => (&peers.to_sink, sink_hbone),
            _ => (&peers.client, hbone),
        };
        let Ok(mut tls) = h2_connect(cfg, addr) else {
            continue;
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let mut burst = Vec::new();
        match kind {
            "ping" => (0..4096).for_each(|_| frame(&mut burst, PING, 0, 0, &[7; 8])),
            "settings" => (0..4096).for_each(|_| frame(&mut burst, SETTINGS, 0, 0, &[])),
            "overrun" | "tiny-data" => {
                let target = match kind {
                    "overrun" => SocketAddr::new(IpAddr::V4(server_ip()), ECHO_PORT),
                    _ => SocketAddr::new(IpAddr::V4(sink_ip()), ECHO_PORT),
                };
                let mut open = Vec::new();
                frame(
                    &mut open,
                    HEADERS,
                    END_HEADERS,
                    1,
                    &connect_block(&target.to_string()),
                );
                if tls.write_all(&open).is_err() {
                    continue;
                }
                if kind == "overrun" {
                    (0..64).for_each(|_| frame(&mut burst, DATA, 0, 1, &[0x42; 16 * 1024]));
                } else {
                    (0..65_536).for_each(|_| frame(&mut burst, DATA, 0, 1, b"a"));
                }
            }
            _ => return,
        }
        let mut sink = vec![0u8; 256 * 1024];
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if tls.write_all(&burst).is_err() {
                stats.cut_off.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if kind == "overrun" {
                // Take what the echo sends back, so the node's writes never block on us.
                let _ = tls.sock.set_nonblocking(true);
                let _ = tls.read(&mut sink);
                let _ = tls.sock.set_nonblocking(false);
            }
        }
    }
}

/// The node's CPU seconds (utime + stime) and resident MiB.
fn node_usage(pid: u32) -> (f64, f64) {
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(t / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0;
    (cpu, rss)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// Echo and sink backends on the workloads' IPs (threads; they live as long as the process).
fn backends() -> Result<()> {
    let echo = TcpListener::bind((server_ip(), ECHO_PORT)).map_err(|e| {
        Error::os(
            format!("binding the echo on {}:{ECHO_PORT}", server_ip()),
            e,
        )
    })?;
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let mut r = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let sink = TcpListener::bind((sink_ip(), ECHO_PORT))
        .map_err(|e| Error::os(format!("binding the sink on {}:{ECHO_PORT}", sink_ip()), e))?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in sink.incoming().flatten() {
            held.push(s);
        }
    });
    Ok(())
}

/// Runs every attack of `opts` against a fresh node.
pub fn run(opts: &Options) -> Result<Report> {
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let dir = tempfile::tempdir().map_err(|e| Error::os("a temporary directory", e))?;
    let ca_dir = dir.path().join("ca");
    let status = Command::new(&opts.ringmesh)
        .args(["ca", "init", "--dir"])
        .arg(&ca_dir)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| Error::os(format!("running {} ca init", opts.ringmesh.display()), e))?;
    if !status.success() {
        return Err(Error::NotReady {
            what: "ringmesh ca init".into(),
            reason: format!("exit status {status}"),
            log: String::new(),
        });
    }
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, mesh_config()).map_err(|e| Error::io(&config, e))?;
    backends()?;
    let ready = SocketAddr::new(IpAddr::V4(node_ip()), 15021);
    let log = std::fs::File::create(dir.path().join("node.log"))
        .map_err(|e| Error::io(dir.path().join("node.log"), e))?;
    let mut node = Command::new(&opts.ringmesh)
        .args(["run", "--node", "node-1", "--log", "warn"])
        .arg("--config")
        .arg(&config)
        .arg("--ca-dir")
        .arg(&ca_dir)
        .args(["--capture", "none", "--socks5", "none", "--admin", "none"])
        .args([
            "--metrics",
            &SocketAddr::new(IpAddr::V4(node_ip()), 15020).to_string(),
        ])
        .args(["--ready", &ready.to_string(), "--cores", &opts.cores])
        .env("RINGMESH_EXIT_WITH_PARENT", "1")
        .stderr(log)
        .spawn()
        .map_err(|e| Error::os(format!("starting {}", opts.ringmesh.display()), e))?;
    let pid = node.id();
    let started = wait_for(Instant::now() + Duration::from_secs(30), || {
        Ok(crate::net::http_get(ready, "/healthz/ready")
            .ok()
            .filter(|(status, _)| *status == 200))
    });
    let result = match started {
        Ok(Some(_)) => run_attacks(opts, dir.path(), pid),
        _ => Err(Error::NotReady {
            what: "the ringmesh node".into(),
            reason: "no /healthz/ready after 30 s".into(),
            log: crate::procs::tail(&dir.path().join("node.log"), 2000),
        }),
    };
    let _ = node.kill();
    let _ = node.wait();
    let report = result?;
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    let path = opts.out.join("fairness.json");
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
    let path = opts.out.join("fairness.md");
    std::fs::write(&path, markdown(&report)).map_err(|e| Error::io(&path, e))?;
    Ok(report)
}

fn run_attacks(opts: &Options, dir: &Path, pid: u32) -> Result<Report> {
    let peers = Arc::new(Peers::new(&dir.join("ca"))?);
    let hbone = SocketAddr::new(IpAddr::V4(server_ip()), 15008);
    let mut rows = Vec::new();
    for kind in &opts.attacks {
        eprintln!("fairness: {kind} ({} probe handshakes)…", opts.probes);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Attacker::default());
        let attacker = (kind != "none").then(|| {
            let (kind, peers, stop, stats) =
                (kind.clone(), peers.clone(), stop.clone(), stats.clone());
            std::thread::spawn(move || attack(&kind, &peers, &stop, &stats))
        });
        // Let the attack reach full speed before timing anything.
        std::thread::sleep(Duration::from_millis(300));
        let (cpu0, _) = node_usage(pid);
        let mut times = Vec::with_capacity(opts.probes);
        let mut rss = 0.0f64;
        for _ in 0..opts.probes {
            let t = Instant::now();
            h2_connect(&peers.client, hbone)
                .map_err(|e| Error::os(format!("probe handshake during {kind}"), e))?;
            times.push(t.elapsed());
            rss = rss.max(node_usage(pid).1);
        }
        let (cpu1, _) = node_usage(pid);
        stop.store(true, Ordering::Relaxed);
        if let Some(a) = attacker {
            let _ = a.join();
        }
        times.sort();
        rows.push(Row {
            attack: kind.clone(),
            probes: times.len(),
            p50_ms: percentile(&times, 0.50),
            p99_ms: percentile(&times, 0.99),
            max_ms: times.last().map_or(0.0, |t| t.as_secs_f64() * 1e3),
            attacker_connections: stats.connections.load(Ordering::Relaxed),
            attacker_cut_off: stats.cut_off.load(Ordering::Relaxed),
            node_cpu_s: cpu1 - cpu0,
            node_rss_mib: rss,
        });
    }
    Ok(Report {
        cores: opts.cores.clone(),
        rows,
    })
}

/// The report as a Markdown table.
pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "# Worker fairness under a flooding peer\n\nOne node, `--cores {}`: the attacker and the probes share its workers. Each probe is TCP connect + mTLS + the node's HTTP/2 SETTINGS.\n\n| attack | probes | p50 ms | p99 ms | max ms | attacker connections | cut off by the node | node CPU s | node RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n",
        r.cores
    );
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {:.1} |\n",
            row.attack,
            row.probes,
            row.p50_ms,
            row.p99_ms,
            row.max_ms,
            row.attacker_connections,
            row.attacker_cut_off,
            row.node_cpu_s,
            row.node_rss_mib
        ));
    }
    s
}
