//! `ringmesh demo`: a two-node mesh on loopback, real traffic through it, and a report.
//!
//! Needs no root: every address is in 127.0.0.0/8 (a /16 picked per run so that two demos
//! or a demo and the tests do not collide), client traffic enters node 1 through its SOCKS5
//! entry with the client workload's IP as source, and goes node 1 → HBONE (mTLS, HTTP/2
//! CONNECT) → node 2 → backend. A second service is plain TCP (no HBONE) to show both paths.
//!
//! Everything it starts (two node processes, backend threads, a temporary directory) is
//! stopped and removed when it ends, also on error; `--keep` leaves it running until Ctrl-C.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Flags of `ringmesh demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Leave the mesh running (until Ctrl-C) and print how to send traffic to it by hand.
    #[arg(long)]
    keep: bool,
    /// Round trips for the latency measurement.
    #[arg(long, default_value_t = 2000)]
    requests: u32,
    /// MiB to send (and receive back) for the throughput measurement.
    #[arg(long, default_value_t = 64)]
    bulk_mib: u32,
    /// Cores per node.
    #[arg(long, default_value = "1")]
    cores: String,
    /// Work directory (default: a new temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The demo's addresses, all inside one 127.X.0.0/16.
struct Plan {
    node1: IpAddr,
    node2: IpAddr,
    client: IpAddr,
    echo: IpAddr,
    db: IpAddr,
    echo_vip: SocketAddr,
    db_vip: SocketAddr,
}

impl Plan {
    fn new() -> Plan {
        let x = 64 + (std::process::id() % 128) as u8;
        let ip = |c: u8, d: u8| IpAddr::V4(Ipv4Addr::new(127, x, c, d));
        Plan {
            node1: ip(0, 1),
            node2: ip(0, 2),
            client: ip(1, 1),
            echo: ip(2, 1),
            db: ip(2, 2),
            echo_vip: SocketAddr::new(ip(100, 1), 80),
            db_vip: SocketAddr::new(ip(100, 2), 5432),
        }
    }

    fn config(&self) -> String {
        format!(
            r#"# Written by `ringmesh demo`.
workloads:
  - uid: demo/client
    name: client
    namespace: demo
    serviceAccount: client
    workloadIps: ["{client}"]
    node: node-1
    protocol: HBONE
  - uid: demo/echo
    name: echo
    namespace: demo
    serviceAccount: echo
    workloadIps: ["{echo}"]
    node: node-2
    protocol: HBONE
    services: ["demo/echo.demo.svc.cluster.local"]
  - uid: demo/db
    name: db
    namespace: demo
    serviceAccount: db
    workloadIps: ["{db}"]
    node: node-2
    protocol: TCP
    services: ["demo/db.demo.svc.cluster.local"]
services:
  - name: echo
    namespace: demo
    hostname: echo.demo.svc.cluster.local
    vips: ["{echo_vip}"]
    ports: {{80: 8080}}
  - name: db
    namespace: demo
    hostname: db.demo.svc.cluster.local
    vips: ["{db_vip}"]
    ports: {{5432: 5432}}
"#,
            client = self.client,
            echo = self.echo,
            db = self.db,
            echo_vip = self.echo_vip.ip(),
            db_vip = self.db_vip.ip(),
        )
    }
}

/// Child processes and a directory, cleaned up on drop.
struct Mesh {
    children: Vec<(String, Child)>,
    dir: PathBuf,
    remove_dir: bool,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            // SIGTERM by PID (graceful drain), then SIGKILL if it lingers.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.remove_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn step(msg: &str) {
    println!("==> {msg}");
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<()> {
    let plan = Plan::new();
    let (dir, remove_dir) = match &args.dir {
        Some(d) => {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), false)
        }
        None => (
            tempfile::Builder::new()
                .prefix("ringmesh-demo-")
                .tempdir()?
                .keep(),
            !args.keep,
        ),
    };
    let mut mesh = Mesh {
        children: Vec::new(),
        dir: dir.clone(),
        remove_dir,
    };
    step(&format!("work directory {}", dir.display()));

    let ca_dir = dir.join("ca");
    crate::identity::ca::init(&ca_dir, true)?;
    step(
        "created a root CA (ECDSA P-256); each node signs its local workloads' SPIFFE certificates",
    );
    let config = dir.join("mesh.yaml");
    fs::write(&config, plan.config())?;
    step(&format!(
        "mesh config: client on node-1 ({}), echo (HBONE) and db (plain TCP) on node-2",
        plan.client
    ));

    // Backends: the pods behind the services.
    let echo_addr = SocketAddr::new(plan.echo, 8080);
    let db_addr = SocketAddr::new(plan.db, 5432);
    spawn_echo(echo_addr)?;
    spawn_echo(db_addr)?;

    let exe = std::env::current_exe()?;
    for (name, ip) in [("node-1", plan.node1), ("node-2", plan.node2)] {
        let child = start_node(&exe, &dir, &config, &ca_dir, name, ip, &args.cores)?;
        mesh.children.push((name.to_string(), child));
    }
    for (name, ip) in [("node-1", plan.node1), ("node-2", plan.node2)] {
        wait_ready(
            SocketAddr::new(ip, 15021),
            Duration::from_secs(30),
            &dir.join(format!("{name}.log")),
        )
        .with_context(|| format!("{name} did not become ready"))?;
    }
    step("both node proxies are ready");

    let socks = SocketAddr::new(plan.node1, 15080);
    if args.keep {
        print_keep(&plan, socks, &dir, &mesh);
        wait_for_ctrl_c();
        return Ok(());
    }

    // 1. Latency: small round trips over one tunnelled connection.
    step(&format!(
        "{} round trips of 64 bytes: client → node-1 → HBONE → node-2 → echo ({})",
        args.requests, plan.echo_vip
    ));
    let mut conn = socks_connect(plan.client, socks, plan.echo_vip)?;
    let mut lat = Vec::with_capacity(args.requests as usize);
    let msg = [0x5au8; 64];
    let mut back = [0u8; 64];
    for _ in 0..args.requests {
        let t = Instant::now();
        conn.write_all(&msg)?;
        conn.read_exact(&mut back)?;
        lat.push(t.elapsed());
    }
    drop(conn);
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];

    // 2. Throughput: bulk both ways through a fresh tunnel stream.
    step(&format!(
        "{} MiB each way through the tunnel",
        args.bulk_mib
    ));
    let bulk = u64::from(args.bulk_mib) << 20;
    let (secs, ok) = bulk_echo(plan.client, socks, plan.echo_vip, bulk)?;
    if !ok {
        bail!("bulk transfer came back corrupted");
    }

    // 3. The plain-TCP service.
    step(&format!(
        "100 round trips to the plain-TCP db service ({})",
        plan.db_vip
    ));
    let mut db = socks_connect(plan.client, socks, plan.db_vip)?;
    for i in 0..100u32 {
        db.write_all(&i.to_le_bytes())?;
        let mut b = [0u8; 4];
        db.read_exact(&mut b)?;
        if u32::from_le_bytes(b) != i {
            bail!("db service answered the wrong bytes");
        }
    }
    db.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    db.read_to_end(&mut rest)?;
    drop(db);

    // Access logs are written when connections close; give the nodes a moment to log the
    // last ones, then read both.
    let logs = wait_access_logs(&dir, 5, Duration::from_secs(5));
    println!();
    println!("ringmesh demo: results");
    println!(
        "  latency (64 B round trip, tunnelled): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        micros(pct(0.50)),
        micros(pct(0.99)),
        micros(*lat.last().unwrap())
    );
    println!(
        "  throughput (one stream, echoed both ways): {:.2} Gbit/s each way ({} MiB in {:.2} s)",
        bulk as f64 * 8.0 / secs / 1e9,
        args.bulk_mib,
        secs
    );
    println!();
    for (node, entries) in &logs {
        println!("  {node}:");
        for e in entries {
            println!("    {e}");
        }
    }
    for (name, ip) in [("node-1", plan.node1), ("node-2", plan.node2)] {
        if let Ok(m) = http_get(SocketAddr::new(ip, 15020), "/metrics") {
            let opened: f64 = metric_sum(&m, "istio_tcp_connections_opened_total");
            let sent: f64 = metric_sum(&m, "istio_tcp_sent_bytes_total");
            let received: f64 = metric_sum(&m, "istio_tcp_received_bytes_total");
            println!(
                "  {name} /metrics: {opened} connections opened, {sent} bytes sent, {received} bytes received"
            );
        }
    }
    println!();
    println!("Stopping the nodes and removing {}.", dir.display());
    drop(mesh);
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn start_node(
    exe: &Path,
    dir: &Path,
    config: &Path,
    ca: &Path,
    name: &str,
    ip: IpAddr,
    cores: &str,
) -> Result<Child> {
    let log = fs::File::create(dir.join(format!("{name}.log")))?;
    let addr = |port: u16| SocketAddr::new(ip, port).to_string();
    Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .args(["--ca-dir"])
        .arg(ca)
        .args(["--node", name, "--cores", cores, "--capture", "none"])
        .args([
            "--socks5",
            &addr(15080),
            "--admin",
            &addr(15000),
            "--metrics",
            &addr(15020),
            "--ready",
            &addr(15021),
        ])
        .env("RINGMESH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

fn wait_ready(addr: SocketAddr, timeout: Duration, log: &Path) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(body) = http_get(addr, "/healthz/ready")
            && body.starts_with("ready")
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let tail = fs::read_to_string(log).unwrap_or_default();
            bail!("not ready after {timeout:?}; its log:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 GET (the node's own admin endpoints); returns the body of a 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn spawn_echo(addr: SocketAddr) -> Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding backend {addr}"))?;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let _ = std::io::copy(&mut s, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    Ok(())
}

/// Connects from `source` through the SOCKS5 entry at `socks` to `target`.
pub fn socks_connect(source: IpAddr, socks: SocketAddr, target: SocketAddr) -> Result<TcpStream> {
    let (s, code) = socks_handshake(source, socks, target)?;
    if code != 0 {
        bail!("SOCKS5 CONNECT to {target} failed with reply code {code}");
    }
    Ok(s)
}

/// Runs a SOCKS5 CONNECT from `source` through `socks` to `target`; returns the stream and
/// the reply code (0 = succeeded; RFC 1928 §6).
pub fn socks_handshake(
    source: IpAddr,
    socks: SocketAddr,
    target: SocketAddr,
) -> Result<(TcpStream, u8)> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(source, 0).into())
        .with_context(|| format!("binding the client to its workload IP {source}"))?;
    sock.connect_timeout(&socks.into(), Duration::from_secs(5))
        .with_context(|| format!("connecting to the SOCKS5 entry {socks}"))?;
    let mut s: TcpStream = sock.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&[5, 1, 0])?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r)?;
    if r != [5, 0] {
        bail!("SOCKS5 entry refused the greeting: {r:?}");
    }
    let IpAddr::V4(ip) = target.ip() else {
        bail!("IPv4 targets only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req)?;
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).context("reading the SOCKS5 reply")?;
    Ok((s, rep[1]))
}

/// Sends `total` bytes through an echo and checks what comes back; returns seconds taken.
fn bulk_echo(
    source: IpAddr,
    socks: SocketAddr,
    target: SocketAddr,
    total: u64,
) -> Result<(f64, bool)> {
    let s = socks_connect(source, socks, target)?;
    let mut w = s.try_clone()?;
    let started = Instant::now();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = ((sent + i as u64) % 251) as u8;
            }
            w.write_all(&buf[..n])?;
            sent += n as u64;
        }
        w.shutdown(Shutdown::Write)
    });
    let mut r = BufReader::with_capacity(256 * 1024, s);
    let mut got = 0u64;
    let mut ok = true;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        for (i, b) in buf.iter().enumerate() {
            if *b != ((got + i as u64) % 251) as u8 {
                ok = false;
            }
        }
        got += buf.len() as u64;
        let n = buf.len();
        r.consume(n);
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    Ok((started.elapsed().as_secs_f64(), ok && got == total))
}

/// Reads the nodes' access logs until at least `min` closed connections show, or timeout.
fn wait_access_logs(dir: &Path, min: usize, timeout: Duration) -> Vec<(String, Vec<String>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let logs: Vec<(String, Vec<String>)> = ["node-1", "node-2"]
            .iter()
            .map(|n| {
                let text = fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
                (
                    n.to_string(),
                    text.lines().filter_map(summarize_access).collect(),
                )
            })
            .collect();
        let n: usize = logs.iter().map(|(_, v)| v.len()).sum();
        if n >= min || Instant::now() >= deadline {
            return logs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line of the report from one access-log line.
fn summarize_access(line: &str) -> Option<String> {
    let line = crate::telemetry::format::parse_text_line(line)?;
    if line.target != "access" || line.message != "connection complete" {
        return None;
    }
    let f = |k: &str| line.field(k).unwrap_or("-").to_string();
    let end = match (line.field("error"), line.field("reset")) {
        (Some(e), _) => format!("error: {e}"),
        (None, Some(side)) => format!("reset by {side}"),
        (None, None) => "complete".into(),
    };
    let text = if f("direction") == "outbound" {
        format!(
            "outbound {} → {} (hbone {}) {} → {}: sent {} B, received {} B in {}, {end}",
            f("src.addr"),
            f("dst.addr"),
            f("dst.hbone_addr"),
            f("src.identity"),
            f("dst.identity"),
            f("bytes_sent"),
            f("bytes_recv"),
            f("duration"),
        )
    } else {
        format!(
            "inbound  {} → {} ({}) peer identity {} (verified by mTLS): sent {} B, received {} B in {}, {end}",
            f("src.addr"),
            f("dst.hbone_addr"),
            f("dst.workload"),
            f("src.identity"),
            f("bytes_sent"),
            f("bytes_recv"),
            f("duration"),
        )
    };
    Some(text)
}

fn print_keep(plan: &Plan, socks: SocketAddr, dir: &Path, mesh: &Mesh) {
    println!();
    println!(
        "The mesh is running. Send traffic by hand (the client workload's IP is {}):",
        plan.client
    );
    println!("  curl is not needed; any SOCKS5 client works, e.g. with ncat:");
    println!(
        "    ncat --proxy {socks} --proxy-type socks5 -s {} {} {}",
        plan.client,
        plan.echo_vip.ip(),
        plan.echo_vip.port()
    );
    println!(
        "  echo service (HBONE): {}   db service (plain TCP): {}",
        plan.echo_vip, plan.db_vip
    );
    println!(
        "  node-1: admin http://{}:15000/config_dump  metrics http://{}:15020/metrics",
        plan.node1, plan.node1
    );
    println!(
        "  node-2: admin http://{}:15000/config_dump  metrics http://{}:15020/metrics",
        plan.node2, plan.node2
    );
    println!("  logs and config: {}", dir.display());
    for (name, child) in &mesh.children {
        println!("  {name}: pid {}", child.id());
    }
    println!("Press Ctrl-C to stop everything.");
}

fn wait_for_ctrl_c() {
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = runtime::signal::on_terminate(move |_| {
        let _ = tx.send(());
    });
    let _ = rx.recv();
}
