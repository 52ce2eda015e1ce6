//! A policy change re-checks live connections (DESIGN.md, "Config"): two tunnels from two
//! identities are open through node-1 → HBONE → node-2 when node-2's config gains a Deny
//! policy naming one of them. That tunnel is closed (its client sees the end of stream) and
//! logged as denied with the bytes it carried; the other keeps carrying bytes, and new connections from the denied
//! identity are refused.
//!
//! The same for plaintext: a connection from outside the mesh, redirected to node-2's
//! plaintext listener, is closed when a new Allow policy on its pod requires a peer
//! identity (needs root for the iptables DNAT; skipped otherwise, CI runs as root).
//!
//! Address plan: 127.236.0.0/16 (HBONE test) and 127.237.0.0/16 (plaintext test); clients on
//! node-1, echo (.2.1) on node-2.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use e2e::{
    Dnat, MeshDir, Node, connect_from, echo_once, ip4, is_root, ping, socks_connect, spawn_echo,
};

const X: u8 = 236;

fn config(deny_client: bool) -> String {
    let wl = |name: &str, ip, node: &str| {
        format!(
            "  - name: {name}\n    namespace: test\n    serviceAccount: {name}\n    workloadIps: [\"{ip}\"]\n    node: {node}\n    protocol: HBONE\n"
        )
    };
    let mut c = format!(
        "workloads:\n{}{}{}",
        wl("client", ip4(X, 1, 1), "node-1"),
        wl("other", ip4(X, 1, 2), "node-1"),
        wl("echo", ip4(X, 2, 1), "node-2"),
    );
    if deny_client {
        c.push_str(
            "policies:\n  - name: no-client\n    action: Deny\n    from:\n      - principals: [\"cluster.local/ns/test/sa/client\"]\n",
        );
    }
    c
}

#[test]
fn a_new_deny_policy_closes_live_tunnels_it_denies_and_only_those() -> Result<()> {
    let (client, other, echo) = (ip4(X, 1, 1), ip4(X, 1, 2), ip4(X, 2, 1));
    let mesh = MeshDir::new(&config(false))?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    let target = SocketAddr::new(echo, 8080);

    let mut denied_later = socks_connect(client, n1.socks(), target)?;
    let mut kept = socks_connect(other, n1.socks(), target)?;
    ping(&mut denied_later, b"allowed now")?;
    ping(&mut kept, b"allowed now")?;

    mesh.write_config(&config(true))?;
    // Revoked (not denied at its start): an error line naming the policy rejection.
    let d = n2.wait_access(Duration::from_secs(10), "the live tunnel's denial", |l| {
        l.outcome() == "revoked"
    })?;
    ensure!(
        d.get("src.identity") == "spiffe://cluster.local/ns/test/sa/client"
            && d.level == "error"
            && d.get("error")
                .starts_with("connection closed due to policy rejection"),
        "{}",
        d.line
    );
    // The revoked relay still reports what it carried: one ping each way.
    let carried = b"allowed now".len().to_string();
    ensure!(
        d.get("bytes_sent") == carried && d.get("bytes_recv") == carried,
        "byte counts of the revoked tunnel: {}",
        d.line
    );
    // Istio counts it closed with DENY; the other tunnel is still open.
    let m = n2.metrics()?;
    let denied = e2e::metric_sum(
        &m,
        "istio_tcp_connections_closed_total",
        &["response_flags=\"DENY\""],
    );
    let active = e2e::metric_sum(
        &m,
        "ringmesh_connections_active",
        &["reporter=\"destination\"", "protocol=\"hbone\""],
    );
    ensure!(
        denied == 1.0 && active == 1.0,
        "DENY closes {denied}, active {active}:\n{m}"
    );

    // The denied client's stream ends (node-1 passes the reset tunnel on as end of stream).
    expect_closed(&mut denied_later, "the denied tunnel")?;
    // The other identity's tunnel is untouched.
    ping(&mut kept, b"still allowed")?;
    // And the denied identity cannot open a new one.
    let again = socks_connect(client, n1.socks(), target).and_then(|s| echo_once(s, b"again"));
    ensure!(
        again.as_ref().map_or(true, |b| b.is_empty()),
        "a new connection from the denied identity got {again:?}"
    );
    Ok(())
}

#[test]
fn a_new_policy_closes_a_live_plaintext_connection_it_denies() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root for iptables (CI runs as root)");
        return Ok(());
    }
    const Y: u8 = 237;
    let (outsider, echo) = (ip4(Y, 9, 9), ip4(Y, 2, 1));
    let workloads = format!(
        "workloads:\n  - {{name: echo, namespace: test, serviceAccount: echo, workloadIps: [\"{echo}\"], node: node-2, protocol: HBONE}}\n"
    );
    let identity_required = format!(
        "{workloads}policies:\n  - name: echo-from-mesh-only\n    action: Allow\n    destination: {{workloads: [\"test/echo\"]}}\n    from:\n      - namespaces: [\"test\"]\n"
    );
    let mesh = MeshDir::new(&workloads)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    let n2 = Node::start(&mesh, "node-2", ip4(Y, 0, 2), &[])?;
    let _in = Dnat::add(
        outsider,
        SocketAddr::new(echo, 8080),
        SocketAddr::new(echo, 15006),
    )?;
    let mut conn = connect_from(outsider, SocketAddr::new(echo, 8080))?;
    ping(&mut conn, b"plain and allowed")?;

    mesh.write_config(&identity_required)?;
    let d = n2.wait_access(Duration::from_secs(10), "the plaintext denial", |l| {
        l.outcome() == "revoked"
    })?;
    let carried = b"plain and allowed".len().to_string();
    ensure!(
        d.carrier() == "tcp"
            && d.get("src.identity").is_empty()
            && d.get("bytes_sent") == carried
            && d.get("bytes_recv") == carried,
        "{}",
        d.line
    );
    expect_closed(&mut conn, "the denied plaintext connection")
}

/// The peer closed `conn` (end of stream or reset) within 10 s.
fn expect_closed(conn: &mut std::net::TcpStream, what: &str) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 64];
    let end = conn.read(&mut buf);
    ensure!(
        matches!(end, Ok(0))
            || end
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut),
        "{what} is still open: read gave {end:?}"
    );
    Ok(())
}
