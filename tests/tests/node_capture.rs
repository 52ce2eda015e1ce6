//! Redirected traffic, as ambient mode captures it — needs root (iptables); skipped when not
//! root (CI runs as root, so it always runs there).
//!
//! - Outbound capture (15001): a client's plain connection to a service VIP is DNATed to
//!   node-1's capture listener, which reads the original destination (SO_ORIGINAL_DST) and
//!   tunnels it over HBONE to the endpoint on node-2.
//! - Inbound plaintext (15006): a client outside the mesh connecting to a workload IP is
//!   DNATed to node-2's plaintext listener on that IP, which relays it to the pod.
//!
//! The iptables rules match only this test's addresses (127.235.0.0/16) and are deleted when
//! the test ends, also on failure.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use e2e::{Dnat, MeshDir, Node, bulk_echo, connect_from, echo_once, ip4, is_root, spawn_echo};

const X: u8 = 235;

#[test]
fn captured_outbound_and_inbound_plaintext_are_relayed() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root for iptables (CI runs as root)");
        return Ok(());
    }
    let (client, outsider, echo, vip) = (
        ip4(X, 1, 1),
        ip4(X, 9, 9),
        ip4(X, 2, 1),
        SocketAddr::new(ip4(X, 100, 1), 80),
    );
    let guarded = ip4(X, 2, 2);
    let config = format!(
        r#"workloads:
  - {{name: client, namespace: test, serviceAccount: client, workloadIps: ["{client}"], node: node-1, protocol: HBONE}}
  - {{name: echo, namespace: test, serviceAccount: echo, workloadIps: ["{echo}"], node: node-2, protocol: HBONE, services: ["test/echo.test.svc.cluster.local"]}}
  - {{name: guarded, namespace: test, serviceAccount: guarded, workloadIps: ["{guarded}"], node: node-2, protocol: HBONE}}
services:
  - {{name: echo, namespace: test, hostname: echo.test.svc.cluster.local, vips: ["{vip_ip}"], ports: {{80: 8080}}}}
policies:
  - name: guarded-from-test-only
    action: Allow
    destination: {{workloads: ["test/guarded"]}}
    from:
      - namespaces: ["test"]
"#,
        vip_ip = vip.ip()
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    let guarded_backend = spawn_echo(SocketAddr::new(guarded, 8080))?;
    let capture = SocketAddr::new(ip4(X, 0, 1), 15001);
    let n1 = Node::start(
        &mesh,
        "node-1",
        ip4(X, 0, 1),
        &["--capture", &capture.to_string()],
    )?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    let _out = Dnat::add(client, vip, capture)?;
    let _in = Dnat::add(
        outsider,
        SocketAddr::new(echo, 8080),
        SocketAddr::new(echo, 15006),
    )?;
    let _in_guarded = Dnat::add(
        outsider,
        SocketAddr::new(guarded, 8080),
        SocketAddr::new(guarded, 15006),
    )?;

    // Outbound: the client dials the VIP itself; node-1 sees the VIP as the original destination.
    const TOTAL: usize = 2 << 20;
    let (sent, got, n) = bulk_echo(connect_from(client, vip)?, TOTAL)?;
    ensure!(
        n == TOTAL && sent == got,
        "captured: {n} of {TOTAL} bytes back, intact: {}",
        sent == got
    );
    let out = n1.wait_access(
        Duration::from_secs(5),
        "node-1's log of the captured connection",
        |l| {
            l.get("direction") == "outbound"
                && l.get("dst.service") == "echo.test.svc.cluster.local"
        },
    )?;
    ensure!(
        out.carrier() == "hbone"
            && out.get("dst.addr") == format!("{echo}:15008")
            && out.get("dst.hbone_addr") == format!("{echo}:8080"),
        "{}",
        out.line
    );
    ensure!(
        out.get("src.identity") == "spiffe://cluster.local/ns/test/sa/client"
            && out.num("bytes_sent") == TOTAL as u64
            && out.num("bytes_recv") == TOTAL as u64,
        "{}",
        out.line
    );

    // Inbound plaintext: a source outside the mesh, redirected to node-2's 15006 on echo's IP.
    let back = echo_once(
        connect_from(outsider, SocketAddr::new(echo, 8080))?,
        b"plain in",
    )?;
    ensure!(back == b"plain in", "plaintext inbound: got {back:?}");
    let inb = n2.wait_access(Duration::from_secs(5), "node-2's plaintext log", |l| {
        l.get("direction") == "inbound" && l.carrier() == "tcp"
    })?;
    ensure!(
        inb.get("dst.addr") == format!("{echo}:8080")
            && inb.outcome() == "complete"
            && inb.get("src.identity").is_empty(),
        "{}",
        inb.line
    );
    ensure!(
        inb.get("src.addr").starts_with(&format!("{outsider}:")),
        "{}",
        inb.line
    );

    // Plaintext has no identity, so an Allow policy naming a namespace keeps it out.
    // The node may reset the connection before connect() has even returned: that is a
    // refusal too.
    let refused = connect_from(outsider, SocketAddr::new(guarded, 8080))
        .and_then(|s| echo_once(s, b"let me in"));
    ensure!(
        refused.as_ref().map_or(true, |b| b.is_empty()),
        "a denied plaintext connection got {refused:?}; the pod accepted {} connections; node-2:\n{}",
        guarded_backend.load(std::sync::atomic::Ordering::SeqCst),
        n2.proc.stderr()
    );
    let denied = n2.wait_access(Duration::from_secs(5), "node-2's denial", |l| {
        l.get("dst.addr") == format!("{guarded}:8080")
    })?;
    ensure!(
        denied.outcome() == "denied" && denied.carrier() == "tcp" && denied.level == "error",
        "{}",
        denied.line
    );
    ensure!(
        guarded_backend.load(std::sync::atomic::Ordering::SeqCst) == 0,
        "the denied connection reached the pod"
    );
    Ok(())
}
