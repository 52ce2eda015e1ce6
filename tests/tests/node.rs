//! `ringmesh run` end to end: real node processes on loopback, clients entering node 1
//! through SOCKS5 with a workload's source IP, echo backends on the destination workloads'
//! IPs. Covers the HBONE path (identities on both sides, data intact, metrics), load
//! balancing over endpoints on two nodes, and the plain-TCP path for TCP workloads.
//!
//! Address plan: each test owns 127.X.0.0/16 (X = 200, 201, 202); node N on 127.X.0.N,
//! workloads on 127.X.{1,2,3}.*, service VIPs on 127.X.100.*.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, ensure};
use e2e::{MeshDir, Node, bulk_echo, echo_once, ip4, metric_sum, socks_connect, spawn_echo};

const LOG_WAIT: Duration = Duration::from_secs(5);

fn workload(
    name: &str,
    sa: &str,
    ip: std::net::IpAddr,
    node: &str,
    protocol: &str,
    service: Option<&str>,
) -> String {
    let services = service
        .map(|s| format!("\n    services: [\"test/{s}.test.svc.cluster.local\"]"))
        .unwrap_or_default();
    format!(
        r#"
  - name: {name}
    namespace: test
    serviceAccount: {sa}
    workloadIps: ["{ip}"]
    node: {node}
    protocol: {protocol}{services}"#
    )
}

fn service(name: &str, vip: std::net::IpAddr, port: u16, target: u16) -> String {
    format!(
        r#"
  - name: {name}
    namespace: test
    hostname: {name}.test.svc.cluster.local
    vips: ["{vip}"]
    ports: {{{port}: {target}}}"#
    )
}

#[test]
fn hbone_service_traffic_is_intact_and_identities_are_logged_on_both_nodes() -> Result<()> {
    const X: u8 = 200;
    let (client, echo, vip) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 100, 1));
    let config = format!(
        "workloads:{}{}\nservices:{}\n",
        workload("client", "client", client, "node-1", "HBONE", None),
        workload("echo", "echo", echo, "node-2", "HBONE", Some("echo")),
        service("echo", vip, 80, 8080),
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &["--cores", "2"])?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &["--cores", "2"])?;

    const TOTAL: usize = 8 << 20;
    let conn = socks_connect(client, n1.socks(), SocketAddr::new(vip, 80))?;
    let (sent, got, n) = bulk_echo(conn, TOTAL)?;
    ensure!(n == TOTAL, "echoed {n} bytes, sent {TOTAL}");
    ensure!(sent == got, "echoed bytes differ from the sent ones");

    let client_id = "spiffe://cluster.local/ns/test/sa/client";
    let echo_id = "spiffe://cluster.local/ns/test/sa/echo";
    let hostname = "echo.test.svc.cluster.local";
    // Outbound: `bytes_sent` is what the client sent, `bytes_recv` what came back.
    let out = n1.wait_access(
        LOG_WAIT,
        "node-1 outbound log of the bulk connection",
        |l| l.get("direction") == "outbound" && l.num("bytes_sent") == TOTAL as u64,
    )?;
    ensure!(out.carrier() == "hbone", "outbound: {}", out.line);
    ensure!(
        out.get("src.identity") == client_id,
        "outbound: {}",
        out.line
    );
    ensure!(out.get("dst.identity") == echo_id, "outbound: {}", out.line);
    ensure!(
        out.get("dst.addr") == format!("{echo}:15008"),
        "outbound: {}",
        out.line
    );
    // The VIP is not logged: the service's hostname says what the client asked for, the
    // CONNECT authority which endpoint (ip:targetPort) served it.
    ensure!(
        out.get("dst.service") == hostname
            && out.get("dst.hbone_addr") == format!("{echo}:8080")
            && !out.line.contains(&vip.to_string()),
        "outbound: {}",
        out.line
    );
    ensure!(
        out.outcome() == "complete" && out.level == "info" && out.num("bytes_recv") == TOTAL as u64,
        "outbound: {}",
        out.line
    );

    // Inbound: `bytes_recv` is what the client sent, `bytes_sent` what the pod answered.
    let inb = n2.wait_access(LOG_WAIT, "node-2 inbound log of the bulk connection", |l| {
        l.get("direction") == "inbound" && l.num("bytes_recv") == TOTAL as u64
    })?;
    ensure!(inb.carrier() == "hbone", "inbound: {}", inb.line);
    ensure!(
        inb.get("src.identity") == client_id,
        "inbound: {}",
        inb.line
    );
    ensure!(
        inb.get("dst.hbone_addr") == format!("{echo}:8080")
            && inb.get("dst.addr") == format!("{echo}:15008"),
        "inbound: {}",
        inb.line
    );
    ensure!(
        inb.get("src.addr").starts_with(&format!("{client}:")),
        "inbound source: {}",
        inb.line
    );
    ensure!(
        inb.outcome() == "complete" && inb.num("bytes_sent") == TOTAL as u64,
        "inbound: {}",
        inb.line
    );

    // A workload IP as the destination (no service): still HBONE to that workload.
    let direct_msg = b"direct to the pod";
    let back = echo_once(
        socks_connect(client, n1.socks(), SocketAddr::new(echo, 8080))?,
        direct_msg,
    )?;
    ensure!(back == direct_msg, "direct: got {back:?}");
    let direct = n1.wait_access(LOG_WAIT, "node-1 log of the direct connection", |l| {
        l.get("dst.hbone_addr") == format!("{echo}:8080") && l.get("dst.service").is_empty()
    })?;
    ensure!(
        direct.carrier() == "hbone"
            && direct.get("dst.identity") == echo_id
            && direct.get("dst.workload") == "echo",
        "direct: {}",
        direct.line
    );
    // Node-2 counts a connection when its inbound half closes, which can trail node-1's log.
    e2e::wait_for(LOG_WAIT, "node-2's log of both connections", || {
        n2.access_logs().len() >= 2
    })?;

    // Both nodes count the same two connections, request bytes as received and response
    // bytes as sent (an echo: the same amount both ways).
    let bytes = (TOTAL + direct_msg.len()) as f64;
    for (node, reporter) in [
        (&n1, "reporter=\"source\""),
        (&n2, "reporter=\"destination\""),
    ] {
        let m = node.metrics()?;
        let mtls = "connection_security_policy=\"mutual_tls\"";
        let opened = metric_sum(&m, "istio_tcp_connections_opened_total", &[reporter, mtls]);
        let closed = metric_sum(
            &m,
            "istio_tcp_connections_closed_total",
            &[reporter, mtls, "response_flags=\"-\""],
        );
        let hbone_closed = metric_sum(
            &m,
            "ringmesh_connections_closed_total",
            &[reporter, "protocol=\"hbone\""],
        );
        let sent = metric_sum(&m, "istio_tcp_sent_bytes_total", &[reporter, mtls]);
        let received = metric_sum(&m, "istio_tcp_received_bytes_total", &[reporter, mtls]);
        ensure!(
            opened == 2.0 && closed == 2.0 && hbone_closed == 2.0,
            "{}: opened {opened} closed {closed} (ringmesh: {hbone_closed})\n{m}",
            node.name
        );
        ensure!(
            sent == bytes && received == bytes,
            "{}: sent {sent} received {received}, expected {bytes} each\n{m}",
            node.name
        );
    }
    Ok(())
}

#[test]
fn service_connections_spread_over_endpoints_on_two_nodes() -> Result<()> {
    const X: u8 = 201;
    let (client, e2, e3, vip) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 3, 1), ip4(X, 100, 1));
    let config = format!(
        "workloads:{}{}{}\nservices:{}\n",
        workload("client", "client", client, "node-1", "HBONE", None),
        workload("echo-a", "echo", e2, "node-2", "HBONE", Some("echo")),
        workload("echo-b", "echo", e3, "node-3", "HBONE", Some("echo")),
        service("echo", vip, 80, 8080),
    );
    let mesh = MeshDir::new(&config)?;
    let on2 = spawn_echo(SocketAddr::new(e2, 8080))?;
    let on3 = spawn_echo(SocketAddr::new(e3, 8080))?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &["--cores", "2"])?;
    let _n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    let _n3 = Node::start(&mesh, "node-3", ip4(X, 0, 3), &[])?;

    const CONNS: usize = 40;
    for i in 0..CONNS {
        let msg = format!("request {i}");
        let back = echo_once(
            socks_connect(client, n1.socks(), SocketAddr::new(vip, 80))?,
            msg.as_bytes(),
        )?;
        ensure!(back == msg.as_bytes(), "connection {i}: got {back:?}");
    }
    let (a, b) = (on2.load(Ordering::SeqCst), on3.load(Ordering::SeqCst));
    ensure!(
        a + b == CONNS,
        "backends accepted {a} + {b} connections, expected {CONNS}"
    );
    ensure!(
        a >= 5 && b >= 5,
        "uneven spread: node-2's endpoint got {a}, node-3's got {b}"
    );
    e2e::wait_for(LOG_WAIT, "40 outbound log lines", || {
        n1.access_logs().len() >= CONNS
    })?;
    let upstreams: Vec<String> = n1
        .access_logs()
        .iter()
        .map(|l| l.get("dst.addr").to_string())
        .collect();
    ensure!(
        upstreams.iter().any(|u| *u == format!("{e2}:15008"))
            && upstreams.iter().any(|u| *u == format!("{e3}:15008")),
        "node-1 logged upstreams {upstreams:?}"
    );
    Ok(())
}

#[test]
fn tcp_workload_traffic_goes_plain_without_hbone() -> Result<()> {
    const X: u8 = 202;
    let (client, db, vip) = (ip4(X, 1, 1), ip4(X, 2, 2), ip4(X, 100, 2));
    let config = format!(
        "workloads:{}{}\nservices:{}\n",
        workload("client", "client", client, "node-1", "HBONE", None),
        workload("db", "db", db, "node-2", "TCP", Some("db")),
        service("db", vip, 5432, 15432),
    );
    let mesh = MeshDir::new(&config)?;
    let accepted = spawn_echo(SocketAddr::new(db, 15432))?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;

    const TOTAL: usize = 2 << 20;
    let (sent, got, n) = bulk_echo(
        socks_connect(client, n1.socks(), SocketAddr::new(vip, 5432))?,
        TOTAL,
    )?;
    ensure!(
        n == TOTAL && sent == got,
        "echoed {n} of {TOTAL} bytes, checksums equal: {}",
        sent == got
    );
    // The workload IP directly, too.
    let back = echo_once(
        socks_connect(client, n1.socks(), SocketAddr::new(db, 15432))?,
        b"plain",
    )?;
    ensure!(back == b"plain", "direct: got {back:?}");
    ensure!(
        accepted.load(Ordering::SeqCst) == 2,
        "the db backend accepted {} connections",
        accepted.load(Ordering::SeqCst)
    );

    let out = n1.wait_access(LOG_WAIT, "node-1 log of the bulk connection", |l| {
        l.num("bytes_sent") == TOTAL as u64
    })?;
    ensure!(out.carrier() == "tcp", "outbound: {}", out.line);
    ensure!(
        out.get("dst.addr") == format!("{db}:15432"),
        "outbound: {}",
        out.line
    );
    // Plain TCP: the destination workload is named, but no identity is claimed (no mTLS).
    ensure!(
        out.get("dst.workload") == "db"
            && out.get("dst.namespace") == "test"
            && out.get("dst.service") == "db.test.svc.cluster.local"
            && out.get("dst.identity").is_empty()
            && out.get("src.identity").is_empty(),
        "outbound: {}",
        out.line
    );
    ensure!(
        out.outcome() == "complete" && out.num("bytes_recv") == TOTAL as u64,
        "outbound: {}",
        out.line
    );
    let direct = n1.wait_access(LOG_WAIT, "node-1 log of the direct connection", |l| {
        l.get("dst.addr") == format!("{db}:15432") && l.get("dst.service").is_empty()
    })?;
    ensure!(
        direct.carrier() == "tcp" && direct.get("dst.hbone_addr").is_empty(),
        "direct: {}",
        direct.line
    );

    // Node 2 saw none of it: no inbound entries, no destination-side connections in its
    // metrics.
    let inbound = n2.access_logs();
    ensure!(inbound.is_empty(), "node-2 logged {inbound:?}");
    let m = n2.metrics()?;
    let hbone_in = metric_sum(
        &m,
        "istio_tcp_connections_opened_total",
        &["reporter=\"destination\""],
    ) + metric_sum(
        &m,
        "ringmesh_connections_closed_total",
        &["reporter=\"destination\""],
    );
    ensure!(
        hbone_in == 0.0,
        "node-2 counted {hbone_in} inbound connections\n{m}"
    );
    // Node 1 counted both as plain TCP, none as mutual TLS.
    let m = n1.metrics()?;
    let plain = metric_sum(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"source\"",
            "connection_security_policy=\"unknown\"",
        ],
    );
    let tcp_closed = metric_sum(
        &m,
        "ringmesh_connections_closed_total",
        &["reporter=\"source\"", "protocol=\"tcp\""],
    );
    let hbone_out = metric_sum(
        &m,
        "istio_tcp_connections_opened_total",
        &["connection_security_policy=\"mutual_tls\""],
    ) + metric_sum(
        &m,
        "ringmesh_connections_closed_total",
        &["protocol=\"hbone\""],
    );
    ensure!(
        plain == 2.0 && tcp_closed == 2.0 && hbone_out == 0.0,
        "node-1: {plain} plain connections opened, {tcp_closed} TCP closed, {hbone_out} HBONE\n{m}"
    );
    Ok(())
}

#[test]
fn hbone_pool_metrics_count_dials_and_reuses() -> Result<()> {
    const X: u8 = 203;
    let (client, echo) = (ip4(X, 1, 1), ip4(X, 2, 1));
    let config = format!(
        "workloads:{}{}\n",
        workload("client", "client", client, "node-1", "HBONE", None),
        workload("echo", "echo", echo, "node-2", "HBONE", None),
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    // One core: every connection goes through the same pool.
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &["--cores", "1"])?;
    let _n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    for i in 0..3 {
        let back = echo_once(
            socks_connect(client, n1.socks(), SocketAddr::new(echo, 8080))?,
            b"pooled",
        )?;
        ensure!(back == b"pooled", "connection {i}: got {back:?}");
    }
    e2e::wait_for(LOG_WAIT, "3 outbound log lines", || {
        n1.access_logs().len() >= 3
    })?;
    // The pool's counters reach /metrics periodically, not per connection: wait for them.
    let counts = || -> (f64, f64) {
        let m = n1.metrics().unwrap_or_default();
        (
            metric_sum(&m, "ringmesh_hbone_pool_dials_total", &[]),
            metric_sum(&m, "ringmesh_hbone_pool_reuses_total", &[]),
        )
    };
    let ok = e2e::wait_for(LOG_WAIT, "pool counters in /metrics", || {
        let (dials, reuses) = counts();
        dials >= 1.0 && reuses >= 1.0 && dials + reuses >= 3.0
    });
    let (dials, reuses) = counts();
    ensure!(
        ok.is_ok(),
        "3 HBONE connections through one core's pool: /metrics says dials {dials}, reuses {reuses}"
    );
    Ok(())
}

/// `--hbone-spread 4`: four tunnels open at once to one peer get a connection each (the pool
/// dials four times), where the default multiplexes them on one.
#[test]
fn hbone_spread_gives_concurrent_tunnels_their_own_connections() -> Result<()> {
    const X: u8 = 252;
    let (client, echo) = (ip4(X, 1, 1), ip4(X, 2, 1));
    let config = format!(
        "workloads:{}{}\n",
        workload("client", "client", client, "node-1", "HBONE", None),
        workload("echo", "echo", echo, "node-2", "HBONE", None),
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    let n1 = Node::start(
        &mesh,
        "node-1",
        ip4(X, 0, 1),
        &["--cores", "1", "--hbone-spread", "4"],
    )?;
    let _n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    // Four held open at once, then each echoes.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(socks_connect(
            client,
            n1.socks(),
            SocketAddr::new(echo, 8080),
        )?);
    }
    for (i, s) in held.into_iter().enumerate() {
        let back = echo_once(s, b"spread")?;
        ensure!(back == b"spread", "tunnel {i}: got {back:?}");
    }
    let dials = || {
        metric_sum(
            &n1.metrics().unwrap_or_default(),
            "ringmesh_hbone_pool_dials_total",
            &[],
        )
    };
    let ok = e2e::wait_for(LOG_WAIT, "four pool dials in /metrics", || dials() >= 4.0);
    ensure!(ok.is_ok() && dials() == 4.0, "pool dials: {}", dials());
    Ok(())
}

#[test]
fn endpoint_on_the_same_node_goes_through_its_own_hbone_listener() -> Result<()> {
    const X: u8 = 207;
    let (client, echo, vip) = (ip4(X, 1, 1), ip4(X, 1, 2), ip4(X, 100, 1));
    let config = format!(
        "workloads:{}{}\nservices:{}\n",
        workload("client", "client", client, "node-1", "HBONE", None),
        workload("echo", "echo", echo, "node-1", "HBONE", Some("echo")),
        service("echo", vip, 80, 8080),
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    const TOTAL: usize = 1 << 20;
    let (sent, got, n) = bulk_echo(
        socks_connect(client, n1.socks(), SocketAddr::new(vip, 80))?,
        TOTAL,
    )?;
    ensure!(
        n == TOTAL && sent == got,
        "echoed {n} of {TOTAL} bytes, intact: {}",
        sent == got
    );
    let out = n1.wait_access(LOG_WAIT, "the outbound half", |l| {
        l.get("direction") == "outbound"
    })?;
    ensure!(
        out.carrier() == "hbone" && out.get("dst.addr") == format!("{echo}:15008"),
        "{}",
        out.line
    );
    let inb = n1.wait_access(LOG_WAIT, "the inbound half", |l| {
        l.get("direction") == "inbound"
    })?;
    ensure!(
        inb.get("src.identity") == "spiffe://cluster.local/ns/test/sa/client",
        "{}",
        inb.line
    );
    ensure!(
        inb.num("bytes_recv") == TOTAL as u64 && inb.num("bytes_sent") == TOTAL as u64,
        "{}",
        inb.line
    );
    Ok(())
}

#[test]
fn per_workload_target_ports_multi_port_services_and_random_balancing() -> Result<()> {
    const X: u8 = 208;
    let (client, a, b, vip) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 2, 2), ip4(X, 100, 1));
    let config = format!(
        r#"workloads:{client_wl}
  - name: web-a
    namespace: test
    serviceAccount: web
    workloadIps: ["{a}"]
    node: node-2
    protocol: HBONE
    services: ["test/web.test.svc.cluster.local"]
  - name: web-b
    namespace: test
    serviceAccount: web
    workloadIps: ["{b}"]
    node: node-2
    protocol: HBONE
    services: {{"test/web.test.svc.cluster.local": {{80: 9080, 443: 9443}}}}
services:
  - name: web
    namespace: test
    hostname: web.test.svc.cluster.local
    vips: ["{vip}"]
    ports: {{80: 8080, 443: 8443}}
    loadBalancing: random
"#,
        client_wl = workload("client", "client", client, "node-1", "HBONE", None),
    );
    let mesh = MeshDir::new(&config)?;
    // web-a listens on the service's target ports, web-b on its own override.
    let counters = [(a, 8080), (a, 8443), (b, 9080), (b, 9443)]
        .map(|(ip, port)| spawn_echo(SocketAddr::new(ip, port)));
    let [a80, a443, b80, b443] = counters;
    let (a80, a443, b80, b443) = (a80?, a443?, b80?, b443?);
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    let _n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    const CONNS: usize = 40;
    for port in [80, 443] {
        for i in 0..CONNS {
            let msg = format!("port {port} request {i}");
            let back = echo_once(
                socks_connect(client, n1.socks(), SocketAddr::new(vip, port))?,
                msg.as_bytes(),
            )?;
            ensure!(
                back == msg.as_bytes(),
                "port {port} connection {i}: got {back:?}"
            );
        }
    }
    let got = [&a80, &a443, &b80, &b443].map(|c| c.load(Ordering::SeqCst));
    ensure!(
        got.iter().sum::<usize>() == 2 * CONNS,
        "backends accepted {got:?}"
    );
    // Random over two endpoints: fewer than 5 of 40 on one side has probability ~2e-7.
    ensure!(
        got.iter().all(|&n| n >= 5),
        "a:8080, a:8443, b:9080, b:9443 accepted {got:?}"
    );
    Ok(())
}
