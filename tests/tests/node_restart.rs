//! A destination node that dies and comes back: the client's live tunnelled connection is
//! closed promptly (not left hanging), and node-1's pool does not hand out its dead HBONE
//! connection — the first connection after node-2 is back succeeds.
//!
//! Address plan: 127.229.0.0/16.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use e2e::{MeshDir, Node, echo_once, ip4, socks_connect, spawn_echo};

const X: u8 = 229;

#[test]
fn killed_destination_node_closes_live_connections_and_its_restart_is_used_at_once() -> Result<()> {
    let (client, echo) = (ip4(X, 1, 1), ip4(X, 2, 1));
    let config = format!(
        "workloads:\n  - {{name: client, namespace: test, serviceAccount: client, workloadIps: [\"{client}\"], node: node-1, protocol: HBONE}}\n  - {{name: echo, namespace: test, serviceAccount: echo, workloadIps: [\"{echo}\"], node: node-2, protocol: HBONE}}\n"
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    let target = SocketAddr::new(echo, 8080);
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;

    let mut live = socks_connect(client, n1.socks(), target)?;
    live.write_all(b"hello")?;
    let mut b = [0u8; 5];
    live.read_exact(&mut b)?;
    ensure!(&b == b"hello");

    // SIGKILL: no drain, no GOAWAY; node-1 only sees its TCP connection end.
    drop(n2);
    live.set_read_timeout(Some(Duration::from_secs(10)))?;
    let started = Instant::now();
    let mut rest = [0u8; 16];
    let ended = match live.read(&mut rest) {
        Ok(0) | Err(_) => true,
        Ok(_) => false,
    };
    ensure!(ended, "the client's connection got bytes from a dead node");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "the client's connection stayed open {:?} after its destination node died",
        started.elapsed()
    );

    let _n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    let back =
        echo_once(socks_connect(client, n1.socks(), target)?, b"after restart").map_err(|e| {
            e.context(format!(
                "first connection after node-2's restart; node-1:\n{}",
                n1.proc.stderr()
            ))
        })?;
    ensure!(back == b"after restart", "got {back:?}");
    Ok(())
}

#[test]
fn killed_source_node_closes_the_pod_connections_on_the_destination() -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const Y: u8 = 230;
    let (client, echo) = (ip4(Y, 1, 1), ip4(Y, 2, 1));
    let config = format!(
        "workloads:\n  - {{name: client, namespace: test, serviceAccount: client, workloadIps: [\"{client}\"], node: node-1, protocol: HBONE}}\n  - {{name: echo, namespace: test, serviceAccount: echo, workloadIps: [\"{echo}\"], node: node-2, protocol: HBONE}}\n"
    );
    let mesh = MeshDir::new(&config)?;
    // An echo that counts the connections open right now.
    let open = Arc::new(AtomicUsize::new(0));
    let l = std::net::TcpListener::bind(SocketAddr::new(echo, 8080))?;
    let counter = open.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            counter.fetch_add(1, Ordering::SeqCst);
            let counter = counter.clone();
            std::thread::spawn(move || {
                if let Ok(mut w) = s.try_clone() {
                    let _ = std::io::copy(&mut s, &mut w);
                }
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let n1 = Node::start(&mesh, "node-1", ip4(Y, 0, 1), &[])?;
    let n2 = Node::start(&mesh, "node-2", ip4(Y, 0, 2), &[])?;
    let mut conns = Vec::new();
    for i in 0..3u8 {
        let mut c = socks_connect(client, n1.socks(), SocketAddr::new(echo, 8080))?;
        c.write_all(&[i])?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)?;
        conns.push(c);
    }
    ensure!(
        open.load(Ordering::SeqCst) == 3,
        "{} pod connections open",
        open.load(Ordering::SeqCst)
    );
    drop(n1);
    e2e::wait_for(
        Duration::from_secs(5),
        "node-2 to close the pod connections of a dead peer",
        || open.load(Ordering::SeqCst) == 0,
    )
    .map_err(|e| {
        e.context(format!(
            "{} still open; node-2:\n{}",
            open.load(Ordering::SeqCst),
            n2.proc.stderr()
        ))
    })?;
    drop(conns);
    Ok(())
}
