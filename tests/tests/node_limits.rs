//! The bounds a node keeps on what a connection may hold or wait for, against a real node
//! process: the HTTP/2 handshake and idle deadlines, the drain deadline, the idle timeout of
//! a relayed connection, and the memory limit past which new connections are shed. (The
//! hostile-peer suite, `node_hostile.rs`, covers attacks; this one the limits themselves,
//! which `proxy::node::limits` owns.)
//!
//! Address plan: 127.240.0.0/16, 127.245–246.0.0/16 and 127.250.0.0/16, one per test;
//! node-1 on .0.1, workloads on .1.* and .2.*.

mod hostile_util;

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use e2e::{Node, echo_once, ip4, socks_connect, spiffe};
use hostile_util::*;

#[test]
fn mtls_without_a_preface_is_closed_at_the_http2_deadline() -> Result<()> {
    const X: u8 = 245;
    let mesh = one_node(X)?;
    let mut n = Node::start(
        &mesh,
        "node-1",
        ip4(X, 0, 1),
        &["--h2-handshake-timeout", "1s", "--h2-idle-timeout", "2s"],
    )?;
    let hbone = SocketAddr::new(ip4(X, 2, 1), 15008);
    let (client, server) = (spiffe("test", "client"), spiffe("test", "echo"));
    let started = Instant::now();
    let mut silent = Raw::tls(&mesh.ca, &client, &server, hbone)?;
    silent.until_closed(Duration::from_secs(8))?;
    let took = started.elapsed();
    ensure!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // A connection that never opens a stream gets GOAWAY at the idle timeout.
    let started = Instant::now();
    let mut idle = Raw::h2(&mesh.ca, &client, &server, hbone)?;
    let goaway = idle.until_closed(Duration::from_secs(10))?;
    ensure!(goaway.is_some(), "closed without GOAWAY");
    ensure!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let timeouts = metric(
        &n,
        "ringmesh_connections_refused_total",
        &["reason=\"handshake_timeout\""],
    )?;
    ensure!(timeouts >= 1.0, "handshake timeouts counted: {timeouts}");
    still_serving(&mut n, &mesh, X)
}

#[test]
fn the_drain_deadline_resets_open_connections_and_logs_each() -> Result<()> {
    const X: u8 = 246;
    let mesh = one_node(X)?;
    let mut n = Node::start(&mesh, "node-1", ip4(X, 0, 1), &["--drain-timeout", "1s"])?;
    let echo = SocketAddr::new(ip4(X, 2, 1), 8080);
    let mut held = socks_connect(ip4(X, 1, 1), n.socks(), echo)?;
    e2e::ping(&mut held, b"before the drain")?;
    n.proc.signal("TERM")?;
    held.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 16];
    let end = held.read(&mut buf);
    ensure!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client saw {end:?} at the drain deadline, not a reset"
    );
    n.proc.wait_exit(Duration::from_secs(10))?;
    let drained: Vec<_> = n
        .access_logs()
        .into_iter()
        .filter(|l| l.outcome() == "drained")
        .collect();
    // The outbound half and the inbound half (both on this node).
    ensure!(
        drained.len() >= 2,
        "drained lines: {drained:?}\n{}",
        n.proc.stderr()
    );
    for l in &drained {
        ensure!(
            l.get("error") == "connection closed due to connection drain" && l.level == "error",
            "{}",
            l.line
        );
        ensure!(l.num("bytes_sent") > 0, "bytes kept: {}", l.line);
    }
    Ok(())
}

#[test]
fn a_silent_tunnel_is_cut_at_the_idle_timeout_on_both_halves() -> Result<()> {
    const X: u8 = 250;
    let idle = Duration::from_secs(1);
    let mesh = one_node(X)?;
    let mut n = Node::start(&mesh, "node-1", ip4(X, 0, 1), &["--idle-timeout", "1s"])?;
    let echo = SocketAddr::new(ip4(X, 2, 1), 8080);
    let mut held = socks_connect(ip4(X, 1, 1), n.socks(), echo)?;
    // Bytes keep it open past the limit...
    e2e::ping(&mut held, b"still here")?;
    let mut last = Instant::now();
    for _ in 0..3 {
        std::thread::sleep(idle / 2);
        // The node's last byte is after this instant (the echo of this ping) and before the
        // client reads it, so the cut can come no sooner than the limit after this.
        last = Instant::now();
        e2e::ping(&mut held, b"still here")?;
    }
    // ...and silence ends it, no sooner than the limit after the last byte.
    held.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 16];
    let end = held.read(&mut buf);
    let quiet = last.elapsed();
    ensure!(
        matches!(&end, Ok(0))
            || matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client saw {end:?} after {quiet:?} of silence, not an end"
    );
    ensure!(
        quiet >= idle,
        "cut after {quiet:?} of silence, limit {idle:?}"
    );
    // The half whose last byte is older (inbound: the reply leaves it first) is cut as idle
    // and resets the tunnel, so the other half ends too; both are logged.
    let cut = n.wait_access(Duration::from_secs(5), "an idle line", |l| {
        l.outcome() == "idle"
    })?;
    ensure!(cut.num("bytes_sent") > 0, "bytes kept: {}", cut.line);
    for direction in ["outbound", "inbound"] {
        n.wait_access(Duration::from_secs(5), direction, |l| {
            l.complete() && l.get("direction") == direction
        })?;
    }
    still_serving(&mut n, &mesh, X)
}

#[test]
fn above_its_memory_limit_a_node_sheds_new_connections_and_recovers() -> Result<()> {
    const X: u8 = 240;
    let mesh = one_node(X)?;
    let mut n = Node::start(
        &mesh,
        "node-1",
        ip4(X, 0, 1),
        &["--cores", "1", "--memory-limit", "48MiB"],
    )?;
    let pid = n.proc.pid();
    let baseline = rss(pid)?;
    ensure!(
        baseline < 40 << 20,
        "the idle node already holds {} MiB",
        baseline >> 20
    );
    let (client, sink_id) = (spiffe("test", "client"), spiffe("test", "sink"));
    let hbone = SocketAddr::new(ip4(X, 2, 2), 15008);
    let sink = SocketAddr::new(ip4(X, 2, 2), 8080);
    // Streams into a backend that never reads: each holds an upstream socket, a task and its
    // relay in the node. Open them until the node says it is over its limit.
    let mut conns = Vec::new();
    let chunk = {
        let mut b = Vec::new();
        frame(&mut b, DATA, 0, 1, &[0x5a; 16 * 1024]);
        b
    };
    let over = e2e::wait_for(
        Duration::from_secs(30),
        "the node to go over its limit",
        || {
            if n.proc.stderr().contains("memory above --memory-limit") {
                return true;
            }
            let Ok(mut raw) = Raw::h2(&mesh.ca, &client, &sink_id, hbone) else {
                return false;
            };
            for s in 0..50u32 {
                let id = 1 + 2 * s;
                if raw.connect(id, sink).is_err() {
                    return false;
                }
                // One frame each, so every stream's relay is under way. (More bytes would not
                // hold more: the kernel's socket buffers toward the sink take megabytes
                // before the node keeps anything.)
                let mut f = chunk.clone();
                f[5..9].copy_from_slice(&id.to_be_bytes());
                if raw.send(&f).is_err() {
                    return false;
                }
            }
            conns.push(raw);
            false
        },
    );
    over.with_context(|| format!("RSS now {} MiB", rss(pid).unwrap_or(0) >> 20))?;
    // New connections are refused while over: SOCKS5 clients are reset, HBONE tunnels 503.
    let echo = SocketAddr::new(ip4(X, 2, 1), 8080);
    e2e::wait_for(Duration::from_secs(5), "a refused connection", || {
        socks_connect(ip4(X, 1, 1), n.socks(), echo)
            .and_then(|s| echo_once(s, b"x"))
            .is_err()
    })?;
    let shed = metric(&n, "ringmesh_load_shed_total", &[])?;
    ensure!(shed >= 1.0, "shed counted: {shed}");
    // Let go: memory falls back, and the node serves again.
    drop(conns);
    e2e::wait_for(Duration::from_secs(20), "the node to accept again", || {
        n.proc.stderr().contains("memory back under --memory-limit")
    })
    .with_context(|| format!("RSS now {} MiB", rss(pid).unwrap_or(0) >> 20))?;
    still_serving(&mut n, &mesh, X)
}
