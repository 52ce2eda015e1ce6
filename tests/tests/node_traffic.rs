//! Traffic shapes through a two-node mesh that a byte relay can get wrong: a server that
//! speaks first, many concurrent tunnels multiplexed on one pooled connection, and a client
//! that aborts mid-transfer (every connection's both ends are closed; nothing leaks).
//!
//! Address plan: 127.204/16, 127.205/16, 127.206/16.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use e2e::{MeshDir, Node, bulk_echo, ip4, metric_sum, socks_connect, spawn_echo, wait_for};

const LOG_WAIT: Duration = Duration::from_secs(5);

/// client on node-1; `echo` (HBONE) and `db` (TCP) on node-2, both reached by workload IP.
fn two_nodes(x: u8, node1_args: &[&str]) -> Result<(MeshDir, Node, Node)> {
    let config = format!(
        "workloads:\n  - {{name: client, namespace: test, serviceAccount: client, workloadIps: [\"{}\"], node: node-1, protocol: HBONE}}\n  - {{name: echo, namespace: test, serviceAccount: echo, workloadIps: [\"{}\"], node: node-2, protocol: HBONE}}\n  - {{name: db, namespace: test, workloadIps: [\"{}\"], node: node-2, protocol: TCP}}\n",
        ip4(x, 1, 1),
        ip4(x, 2, 1),
        ip4(x, 2, 2),
    );
    let mesh = MeshDir::new(&config)?;
    let n1 = Node::start(&mesh, "node-1", ip4(x, 0, 1), node1_args)?;
    let n2 = Node::start(&mesh, "node-2", ip4(x, 0, 2), &[])?;
    Ok((mesh, n1, n2))
}

/// A backend that writes `banner` as soon as it accepts, then echoes.
fn spawn_banner(addr: SocketAddr, banner: &'static [u8]) -> Result<()> {
    let l = TcpListener::bind(addr)?;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                if s.write_all(banner).is_err() {
                    return;
                }
                let Ok(mut w) = s.try_clone() else { return };
                let _ = std::io::copy(&mut s, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    Ok(())
}

#[test]
fn server_first_protocols_work_over_hbone_and_plain_tcp() -> Result<()> {
    const X: u8 = 204;
    let (client, echo, db) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 2, 2));
    const BANNER: &[u8] = b"220 ready, speak when spoken to\r\n";
    spawn_banner(SocketAddr::new(echo, 25), BANNER)?;
    spawn_banner(SocketAddr::new(db, 3306), BANNER)?;
    let (_mesh, n1, _n2) = two_nodes(X, &[])?;
    for target in [SocketAddr::new(echo, 25), SocketAddr::new(db, 3306)] {
        let mut s = socks_connect(client, n1.socks(), target)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut got = vec![0u8; BANNER.len()];
        s.read_exact(&mut got)
            .map_err(|e| anyhow::anyhow!("{target}: no banner before the client spoke: {e}"))?;
        ensure!(got == BANNER, "{target}: banner {got:?}");
        s.write_all(b"QUIT\r\n")?;
        s.shutdown(Shutdown::Write)?;
        let rest = e2e::read_all(&s)?;
        ensure!(rest == b"QUIT\r\n", "{target}: after the banner {rest:?}");
    }
    Ok(())
}

#[test]
fn hundred_concurrent_tunnels_share_the_pool_intact() -> Result<()> {
    const X: u8 = 205;
    const CONNS: usize = 100;
    const EACH: usize = 256 << 10;
    let (client, echo) = (ip4(X, 1, 1), ip4(X, 2, 1));
    let accepted = spawn_echo(SocketAddr::new(echo, 8080))?;
    let (_mesh, n1, n2) = two_nodes(X, &["--cores", "2"])?;
    let socks = n1.socks();
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CONNS)
        .map(|i| {
            let done = done.clone();
            std::thread::spawn(move || -> Result<()> {
                let s = socks_connect(client, socks, SocketAddr::new(echo, 8080))?;
                let (sent, got, n) = bulk_echo(s, EACH)?;
                ensure!(
                    n == EACH && sent == got,
                    "connection {i}: {n} bytes back, intact: {}",
                    sent == got
                );
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    ensure!(done.load(Ordering::SeqCst) == CONNS);
    ensure!(
        accepted.load(Ordering::SeqCst) == CONNS,
        "backend accepted {}",
        accepted.load(Ordering::SeqCst)
    );
    wait_for(LOG_WAIT, "100 inbound log lines on node-2", || {
        n2.access_logs().len() >= CONNS
    })
    .map_err(|e| e.context(n2.proc.stderr()))?;
    let bad: Vec<_> = n2
        .access_logs()
        .into_iter()
        .filter(|l| {
            l.outcome() != "complete"
                || l.num("bytes_sent") != EACH as u64
                || l.num("bytes_recv") != EACH as u64
        })
        .collect();
    ensure!(bad.is_empty(), "node-2 logged {bad:?}");
    Ok(())
}

/// `ringmesh_connections_active` summed over labels matching `labels`.
fn active(node: &Node, labels: &[&str]) -> f64 {
    node.metrics()
        .map(|m| metric_sum(&m, "ringmesh_connections_active", labels))
        .unwrap_or(-1.0)
}

/// Opens a connection, starts a transfer, and aborts it with a TCP reset.
fn abort_midway(client: IpAddr, socks: SocketAddr, target: SocketAddr) -> Result<()> {
    let mut s = socks_connect(client, socks, target)?;
    let chunk = vec![7u8; 64 << 10];
    s.write_all(&chunk)?;
    let mut back = vec![0u8; 1024];
    s.read_exact(&mut back)?;
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
    drop(s);
    Ok(())
}

#[test]
fn client_reset_mid_transfer_closes_both_ends_and_leaks_nothing() -> Result<()> {
    const X: u8 = 206;
    let (client, echo, db) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 2, 2));
    let open_backends = Arc::new(AtomicUsize::new(0));
    for addr in [SocketAddr::new(echo, 8080), SocketAddr::new(db, 5432)] {
        // An echo that counts connections open right now.
        let l = TcpListener::bind(addr)?;
        let open = open_backends.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                open.fetch_add(1, Ordering::SeqCst);
                let open = open.clone();
                std::thread::spawn(move || {
                    if let Ok(mut w) = s.try_clone() {
                        let _ = std::io::copy(&mut s, &mut w);
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    let (_mesh, n1, n2) = two_nodes(X, &[])?;
    for _ in 0..5 {
        abort_midway(client, n1.socks(), SocketAddr::new(echo, 8080))?;
        abort_midway(client, n1.socks(), SocketAddr::new(db, 5432))?;
    }
    wait_for(
        LOG_WAIT,
        "the backends to see every aborted connection closed",
        || open_backends.load(Ordering::SeqCst) == 0,
    )
    .map_err(|e| {
        e.context(format!(
            "{} backend connections still open",
            open_backends.load(Ordering::SeqCst)
        ))
    })?;
    wait_for(LOG_WAIT, "no active connections on either node", || {
        active(&n1, &[]) == 0.0 && active(&n2, &[]) == 0.0
    })
    .map_err(|e| {
        e.context(format!(
            "node-1:\n{}\nnode-2:\n{}",
            n1.metrics().unwrap_or_default(),
            n2.metrics().unwrap_or_default()
        ))
    })?;
    wait_for(LOG_WAIT, "10 outbound log lines", || {
        n1.access_logs().len() >= 10
    })?;
    let logs = n1.access_logs();
    ensure!(
        logs.iter().all(|l| l.complete() && l.outcome() == "reset"),
        "an aborted connection was not logged as reset: {logs:?}"
    );
    Ok(())
}

#[test]
fn both_paths_work_on_the_epoll_driver() -> Result<()> {
    const X: u8 = 209;
    let (client, echo, db) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 2, 2));
    spawn_echo(SocketAddr::new(echo, 8080))?;
    spawn_echo(SocketAddr::new(db, 5432))?;
    let config = format!(
        "workloads:\n  - {{name: client, namespace: test, serviceAccount: client, workloadIps: [\"{client}\"], node: node-1, protocol: HBONE}}\n  - {{name: echo, namespace: test, serviceAccount: echo, workloadIps: [\"{echo}\"], node: node-2, protocol: HBONE}}\n  - {{name: db, namespace: test, workloadIps: [\"{db}\"], node: node-2, protocol: TCP}}\n"
    );
    let mesh = MeshDir::new(&config)?;
    let args = ["--driver", "epoll", "--cores", "2"];
    // node-1 hashes new connections over its workers, node-2 keeps each on its core.
    let n1 = Node::start(
        &mesh,
        "node-1",
        ip4(X, 0, 1),
        &[&args[..], &["--incoming-cpu", "off"]].concat(),
    )?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &args)?;
    for (node, steering) in [(&n1, "off"), (&n2, "all")] {
        let config = node.config_dump()?["config"].clone();
        ensure!(
            config["driver"] == "epoll",
            "{} runs on {config}",
            node.name
        );
        ensure!(
            config["incomingCpu"] == steering
                && config["workers"] == 2
                && config["cores"].as_array().map(Vec::len) == Some(2),
            "{}: {config}",
            node.name
        );
    }
    const TOTAL: usize = 4 << 20;
    for target in [SocketAddr::new(echo, 8080), SocketAddr::new(db, 5432)] {
        let (sent, got, n) = bulk_echo(socks_connect(client, n1.socks(), target)?, TOTAL)?;
        ensure!(
            n == TOTAL && sent == got,
            "{target}: {n} of {TOTAL} bytes back, intact: {}",
            sent == got
        );
    }
    let inb = n2.wait_access(LOG_WAIT, "node-2's HBONE log", |l| {
        l.num("bytes_recv") == TOTAL as u64
    })?;
    ensure!(
        inb.get("src.identity") == "spiffe://cluster.local/ns/test/sa/client"
            && inb.carrier() == "hbone",
        "{}",
        inb.line
    );
    // Each worker's accepted connections are listed, and they add up to the node's.
    for node in [&n1, &n2] {
        let m = node.metrics()?;
        let total = metric_sum(&m, "istio_tcp_connections_opened_total", &[]);
        let by_worker = metric_sum(&m, "ringmesh_worker_connections_opened_total", &[]);
        ensure!(
            total >= 1.0 && by_worker == total && m.contains("_opened_total{worker=\"1\"}"),
            "{}: {by_worker} by worker, {total} in all:\n{m}",
            node.name
        );
    }
    Ok(())
}

#[test]
fn more_concurrent_tunnels_than_one_connection_allows_open_a_second_connection() -> Result<()> {
    // node-2 advertises 200 concurrent streams per HBONE connection (hbone's
    // SERVER_MAX_CONCURRENT_STREAMS); 250 tunnels open at once from one core's pool need two.
    const X: u8 = 234;
    const CONNS: usize = 250;
    let (client, echo) = (ip4(X, 1, 1), ip4(X, 2, 1));
    spawn_echo(SocketAddr::new(echo, 8080))?;
    let (_mesh, n1, n2) = two_nodes(X, &["--cores", "1"])?;
    let socks = n1.socks();
    let barrier = Arc::new(std::sync::Barrier::new(CONNS + 1));
    let threads: Vec<_> = (0..CONNS)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<()> {
                let opened = (|| -> Result<std::net::TcpStream> {
                    let mut s = socks_connect(client, socks, SocketAddr::new(echo, 8080))?;
                    let msg = (i as u32).to_le_bytes();
                    s.write_all(&msg)?;
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b)?;
                    ensure!(b == msg, "connection {i}: echoed {b:?}");
                    Ok(s)
                })();
                // Everyone waits until all are open (or failed), so the tunnels overlap.
                barrier.wait();
                let mut s = opened?;
                s.write_all(b"bye")?;
                s.shutdown(Shutdown::Write)?;
                let rest = e2e::read_all(&s)?;
                ensure!(rest == b"bye", "connection {i}: {rest:?}");
                Ok(())
            })
        })
        .collect();
    // All 250 are open (or failed) here; then they finish.
    barrier.wait();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| {
            t.join()
                .map_err(|_| anyhow::anyhow!("thread panicked"))
                .and_then(|r| r)
                .err()
        })
        .map(|e| format!("{e:#}"))
        .collect();
    ensure!(
        failures.is_empty(),
        "{} of {CONNS} tunnels failed, e.g. {:?}\nnode-1:\n{}",
        failures.len(),
        &failures[..failures.len().min(3)],
        n1.proc
            .stderr()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    wait_for(LOG_WAIT, "250 inbound log lines", || {
        n2.access_logs().len() >= CONNS
    })?;
    let dials = || {
        metric_sum(
            &n1.metrics().unwrap_or_default(),
            "ringmesh_hbone_pool_dials_total",
            &[],
        )
    };
    wait_for(LOG_WAIT, "two pool dials in /metrics", || dials() >= 2.0)
        .map_err(|e| e.context(format!("dials {}", dials())))?;
    Ok(())
}
