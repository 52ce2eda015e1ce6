//! The node proxy's refusals and shutdown, end to end: every way an outbound connection
//! can fail is answered on the SOCKS5 entry with a failure reply (never a success followed
//! by a reset) and logged with its outcome; traffic from an IP that is no local workload
//! is rejected when configured so; SIGTERM drains — readiness goes down, live connections
//! keep working, the process exits 0 when they are done or when the drain deadline passes.
//!
//! Address plan: 127.212/16 (refusals), 127.213/16 (unknown source), 127.214/16 and
//! 127.215/16 (drain).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use e2e::{MeshDir, Node, ip4, ping, socks_connect, socks_reply_code, spawn_echo, wait_for};

const LOG_WAIT: Duration = Duration::from_secs(5);
/// RFC 1928 §6 reply codes.
const SUCCEEDED: u8 = 0;
const NOT_ALLOWED: u8 = 2;
const HOST_UNREACHABLE: u8 = 4;

#[test]
fn outbound_refusals_get_a_socks_failure_and_an_access_log() -> Result<()> {
    const X: u8 = 212;
    let ip = |c, d| ip4(X, c, d);
    let config = format!(
        r#"workloads:
  - {{name: client, namespace: test, serviceAccount: client, workloadIps: ["{client}"], node: node-1, protocol: HBONE}}
  - {{name: echo, namespace: test, serviceAccount: echo, workloadIps: ["{echo}"], node: node-2, protocol: HBONE, services: ["test/echo.test.svc.cluster.local"]}}
  - {{name: locked, namespace: test, serviceAccount: locked, workloadIps: ["{locked}"], node: node-2, protocol: HBONE}}
  - {{name: sick, namespace: test, workloadIps: ["{sick}"], node: node-2, protocol: HBONE, status: Unhealthy, services: ["test/sick.test.svc.cluster.local"]}}
  - {{name: down, namespace: test, workloadIps: ["{down}"], node: node-3, protocol: HBONE, services: ["test/down.test.svc.cluster.local"]}}
  - {{name: db, namespace: test, workloadIps: ["{db}"], node: node-2, protocol: TCP}}
services:
  - {{name: echo, namespace: test, hostname: echo.test.svc.cluster.local, vips: ["{echo_vip}"], ports: {{80: 8080}}}}
  - {{name: sick, namespace: test, hostname: sick.test.svc.cluster.local, vips: ["{sick_vip}"], ports: {{80: 8080}}}}
  - {{name: down, namespace: test, hostname: down.test.svc.cluster.local, vips: ["{down_vip}"], ports: {{80: 8080}}}}
policies:
  - name: lock
    action: Deny
    destination: {{workloads: ["test/locked"]}}
    from:
      - principals: ["cluster.local/ns/test/sa/client"]
"#,
        client = ip(1, 1),
        echo = ip(2, 1),
        locked = ip(2, 2),
        sick = ip(2, 3),
        db = ip(2, 4),
        down = ip(3, 1),
        echo_vip = ip(100, 1),
        sick_vip = ip(100, 2),
        down_vip = ip(100, 3),
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(ip(2, 1), 8080))?;
    let locked_backend = spawn_echo(SocketAddr::new(ip(2, 2), 8080))?;
    spawn_echo(SocketAddr::new(ip(2, 3), 8080))?;
    let n1 = Node::start(&mesh, "node-1", ip(0, 1), &[])?;
    let n2 = Node::start(&mesh, "node-2", ip(0, 2), &[])?;
    // node-3 is never started: its workload's HBONE port is closed.

    let client = ip(1, 1);
    let code = |target: SocketAddr| socks_reply_code(client, n1.socks(), target);
    // Which line is whose: a refusal logs the address the client asked for (`dst.addr`); an
    // opened connection the hop it took (the peer's 15008 for HBONE, with the CONNECT
    // authority in `dst.hbone_addr`), or the service hostname when the client named a VIP.
    let outbound = |key: &str, value: &str| {
        n1.wait_access(LOG_WAIT, &format!("node-1 log with {key}={value}"), |l| {
            l.get(key) == value
        })
    };

    let ok = SocketAddr::new(ip(100, 1), 80);
    ensure!(code(ok)? == SUCCEEDED, "the healthy service refused");

    let vip = |d, port| SocketAddr::new(ip(100, d), port);
    let hbone_addr = |d, port| SocketAddr::new(ip(2, d), port).to_string();
    // (what, target, SOCKS5 replies, outcome, the field and value that find its line, and
    // whether it was refused before it was opened: a `connection failed` line, no bytes).
    type Case<'a> = (
        &'a str,
        SocketAddr,
        &'a [u8],
        &'a str,
        (&'a str, String),
        bool,
    );
    let cases: [Case<'_>; 6] = [
        (
            "a port the service does not expose",
            vip(1, 81),
            &[HOST_UNREACHABLE],
            "no_endpoint",
            ("dst.addr", vip(1, 81).to_string()),
            true,
        ),
        (
            "a service whose only endpoint is unhealthy",
            vip(2, 80),
            &[HOST_UNREACHABLE],
            "no_endpoint",
            ("dst.addr", vip(2, 80).to_string()),
            true,
        ),
        (
            "an endpoint whose node is down",
            vip(3, 80),
            &[HOST_UNREACHABLE],
            "unreachable",
            ("dst.service", "down.test.svc.cluster.local".into()),
            false,
        ),
        (
            "a closed port of an HBONE pod (node-2 answers 503)",
            SocketAddr::new(ip(2, 1), 9999),
            &[HOST_UNREACHABLE],
            "unreachable",
            ("dst.hbone_addr", hbone_addr(1, 9999)),
            false,
        ),
        (
            "a workload a Deny policy protects (node-2 answers 401)",
            SocketAddr::new(ip(2, 2), 8080),
            &[NOT_ALLOWED],
            "denied",
            ("dst.hbone_addr", hbone_addr(2, 8080)),
            false,
        ),
        (
            "a closed port of a plain-TCP pod",
            SocketAddr::new(ip(2, 4), 5432),
            &[HOST_UNREACHABLE, 5],
            "unreachable",
            ("dst.addr", SocketAddr::new(ip(2, 4), 5432).to_string()),
            false,
        ),
    ];
    for (what, target, want, outcome, (key, value), refused) in cases {
        let started = Instant::now();
        let got = code(target)
            .map_err(|e| e.context(format!("{what} ({target}) after {:?}", started.elapsed())))?;
        ensure!(
            want.contains(&got),
            "{what} ({target}): SOCKS5 reply {got}, expected one of {want:?}"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: the refusal took {:?}",
            started.elapsed()
        );
        let log = outbound(key, &value)?;
        ensure!(log.outcome() == outcome, "{what}: {}", log.line);
        ensure!(
            log.get("direction") == "outbound" && !log.get("error").is_empty(),
            "{what}: {}",
            log.line
        );
        if refused {
            ensure!(
                !log.complete() && log.level == "warn" && !log.fields.contains_key("bytes_sent"),
                "{what}: not a `connection failed` line: {}",
                log.line
            );
        } else {
            ensure!(
                log.complete()
                    && log.level == "error"
                    && log.num("bytes_sent") == 0
                    && log.num("bytes_recv") == 0
                    && log.fields.contains_key("bytes_sent"),
                "{what}: {}",
                log.line
            );
        }
    }
    // The endpoint behind the VIP of the down node was picked and dialled on its 15008.
    let down = outbound("dst.service", "down.test.svc.cluster.local")?;
    ensure!(
        down.get("dst.addr") == format!("{}:15008", ip(3, 1))
            && down.get("dst.hbone_addr") == format!("{}:8080", ip(3, 1)),
        "{}",
        down.line
    );
    ensure!(
        locked_backend.load(std::sync::atomic::Ordering::SeqCst) == 0,
        "the denied connection reached the pod"
    );
    // Node 2's side of the two it refused.
    n2.wait_access(LOG_WAIT, "node-2's 503", |l| {
        l.get("direction") == "inbound"
            && l.get("dst.hbone_addr") == hbone_addr(1, 9999)
            && l.outcome() == "unreachable"
    })?;
    n2.wait_access(LOG_WAIT, "node-2's 401", |l| {
        l.get("direction") == "inbound"
            && l.get("dst.hbone_addr") == hbone_addr(2, 8080)
            && l.outcome() == "denied"
            && l.get("src.identity") == "spiffe://cluster.local/ns/test/sa/client"
    })?;
    // SOCKS5 requests the entry does not serve: a domain name (the mesh routes by IP), BIND.
    let hostname = b"echo.test.svc.cluster.local";
    let mut by_name = vec![5, 1, 0, 3, hostname.len() as u8];
    by_name.extend_from_slice(hostname);
    by_name.extend_from_slice(&80u16.to_be_bytes());
    ensure!(
        raw_socks(n1.socks(), &by_name).map_err(|e| e.context("domain-name CONNECT"))? == 8,
        "domain-name CONNECT not refused with 8"
    );
    let mut bind = vec![5, 2, 0, 1];
    bind.extend_from_slice(&[127, X, 100, 1, 0, 80]);
    ensure!(
        raw_socks(n1.socks(), &bind).map_err(|e| e.context("BIND"))? == 7,
        "BIND not refused with 7"
    );
    // And the healthy path still works after all that.
    let mut s = socks_connect(client, n1.socks(), ok)
        .map_err(|e| e.context("the healthy path at the end"))?;
    s.write_all(b"still fine")?;
    let mut b = [0u8; 10];
    s.read_exact(&mut b)?;
    ensure!(&b == b"still fine");
    Ok(())
}

/// Sends a raw SOCKS5 request after the greeting; returns the reply code.
fn raw_socks(socks: SocketAddr, request: &[u8]) -> Result<u8> {
    let mut s = TcpStream::connect_timeout(&socks, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&[5, 1, 0])?;
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting)?;
    ensure!(greeting == [5, 0], "greeting answered {greeting:?}");
    s.write_all(request)?;
    let mut rep = [0u8; 4];
    s.read_exact(&mut rep)?;
    ensure!(rep[0] == 5, "reply version {}", rep[0]);
    Ok(rep[1])
}

#[test]
fn unknown_source_is_rejected_when_configured() -> Result<()> {
    const X: u8 = 213;
    let client = ip4(X, 1, 1);
    let config = format!(
        "workloads:\n  - {{name: client, namespace: test, workloadIps: [\"{client}\"], node: node-1, protocol: HBONE}}\n"
    );
    let mesh = MeshDir::new(&config)?;
    let outside = TcpListener::bind(SocketAddr::new(ip4(X, 9, 9), 0))?;
    let target = outside.local_addr()?;
    let n1 = Node::start(
        &mesh,
        "node-1",
        ip4(X, 0, 1),
        &["--unknown-source", "reject"],
    )?;
    let stranger = ip4(X, 1, 99);
    let got = socks_reply_code(stranger, n1.socks(), target)?;
    ensure!(
        got == NOT_ALLOWED,
        "SOCKS5 reply {got} for a source that is no workload"
    );
    let log = n1.wait_access(LOG_WAIT, "node-1 log of the rejection", |l| {
        l.get("src.addr").starts_with(&format!("{stranger}:"))
    })?;
    ensure!(
        !log.complete()
            && log.outcome() == "unknown_source"
            && log.get("dst.addr") == target.to_string(),
        "{}",
        log.line
    );
    // Refused before it was opened: no Istio metric, one refusal by reason.
    let m = n1.metrics()?;
    ensure!(
        e2e::metric_sum(&m, "istio_tcp_connections_opened_total", &[]) == 0.0
            && e2e::metric_sum(
                &m,
                "ringmesh_connections_refused_total",
                &["reason=\"unknown_source\""]
            ) == 1.0,
        "{m}"
    );
    // The local workload itself may still go out (passthrough to a non-mesh address).
    ensure!(
        socks_reply_code(client, n1.socks(), target)? == SUCCEEDED,
        "the local workload was refused"
    );
    Ok(())
}

/// A two-node mesh in 127.x/16 with one live tunnelled connection; returns it with node-1.
fn mesh_with_live_connection(
    x: u8,
    drain_timeout: &str,
) -> Result<(MeshDir, Node, Node, TcpStream)> {
    let (client, echo) = (ip4(x, 1, 1), ip4(x, 2, 1));
    let config = format!(
        "workloads:\n  - {{name: client, namespace: test, workloadIps: [\"{client}\"], node: node-1, protocol: HBONE}}\n  - {{name: echo, namespace: test, workloadIps: [\"{echo}\"], node: node-2, protocol: HBONE}}\n"
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    let n1 = Node::start(
        &mesh,
        "node-1",
        ip4(x, 0, 1),
        &["--drain-timeout", drain_timeout],
    )?;
    let n2 = Node::start(&mesh, "node-2", ip4(x, 0, 2), &[])?;
    let mut live = socks_connect(client, n1.socks(), SocketAddr::new(echo, 8080))?;
    ping(&mut live, b"before")?;
    Ok((mesh, n1, n2, live))
}

fn is_ready(node: &Node) -> bool {
    proxy::demo::http_get(SocketAddr::new(node.ip, 15021), "/healthz/ready")
        .is_ok_and(|b| b.starts_with("ready"))
}

#[test]
fn sigterm_drains_live_connections_then_exits_zero() -> Result<()> {
    let (_mesh, mut n1, _n2, mut live) = mesh_with_live_connection(214, "20s")?;
    n1.proc.signal("TERM")?;
    wait_for(
        LOG_WAIT,
        "node-1 to report not ready while draining",
        || !is_ready(&n1),
    )?;
    // Not ready is a 500 naming what is pending, as ztunnel answers.
    let (status, body) = e2e::http_request(SocketAddr::new(n1.ip, 15021), "GET", "/healthz/ready")?;
    ensure!(
        status == 500 && body.starts_with("not ready, pending: "),
        "readiness while draining: {status} {body:?}"
    );
    ping(&mut live, b"during the drain")?;
    ensure!(
        n1.proc.wait_exit(Duration::from_millis(300)).is_err(),
        "node-1 exited with a live connection"
    );
    live.shutdown(std::net::Shutdown::Write)?;
    let rest = e2e::read_all(&live)?;
    ensure!(rest.is_empty(), "unexpected bytes {rest:?}");
    drop(live);
    let code = n1.proc.wait_exit(Duration::from_secs(10))?;
    ensure!(
        code == Some(0),
        "node-1 exited with {code:?}:\n{}",
        n1.proc.stderr()
    );
    Ok(())
}

#[test]
fn sigterm_closes_connections_still_open_at_the_drain_deadline() -> Result<()> {
    let (_mesh, mut n1, _n2, mut live) = mesh_with_live_connection(215, "1s")?;
    let signalled = Instant::now();
    n1.proc.signal("TERM")?;
    let code = n1.proc.wait_exit(Duration::from_secs(10))?;
    ensure!(
        code == Some(0),
        "node-1 exited with {code:?}:\n{}",
        n1.proc.stderr()
    );
    ensure!(
        signalled.elapsed() >= Duration::from_millis(900),
        "node-1 exited before the drain deadline"
    );
    // The client's connection is gone with the node.
    live.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [0u8; 1];
    let gone = matches!(
        live.write_all(b"x").and_then(|_| live.read(&mut b)),
        Ok(0) | Err(_)
    );
    ensure!(gone, "the client's connection outlived the node");
    Ok(())
}

/// A POST to the node's admin endpoint; returns the status line and body.
fn admin_post(node: &Node, target: &str) -> Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&node.admin(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

#[test]
fn admin_api_changes_the_log_level_and_drains_a_running_node() -> Result<()> {
    let (mesh, mut n1, _n2, mut live) = mesh_with_live_connection(231, "20s")?;
    // debug lines appear only after the level change (the level is the second TAB field).
    let debug_lines = |n: &Node| {
        n.proc
            .stderr()
            .lines()
            .filter(|l| l.split('\t').nth(1) == Some("debug"))
            .count()
    };
    ensure!(debug_lines(&n1) == 0, "debug lines at level info");
    // A POST without a level changes nothing and says what is in force, as ztunnel's does.
    let (status, before) = admin_post(&n1, "/logging")?;
    ensure!(
        status.contains("200") && before == "current log level is info\n",
        "POST /logging: {status} {before:?}"
    );
    let (status, body) = admin_post(&n1, "/logging?level=debug")?;
    ensure!(
        status.contains("200") && body == "current log level is info,debug\n",
        "POST /logging?level=debug: {status} {body:?}"
    );
    let body = proxy::demo::http_get(n1.admin(), "/logging")?;
    ensure!(
        body == "current log level is info,debug\n",
        "GET /logging after the change: {body:?}"
    );
    let (status, _) = admin_post(&n1, "/logging?level=no-such-level[")?;
    ensure!(
        status.contains("400"),
        "a bad filter was accepted: {status}"
    );
    let body = proxy::demo::http_get(n1.admin(), "/logging")?;
    ensure!(
        body == "current log level is info,debug\n",
        "a rejected level changed the filter: {body:?}"
    );
    // Some traffic at debug level: an HBONE tunnel to node-1's own workload, whose end the
    // HBONE server logs at debug (the CONNECT's answer does not matter).
    let client = ip4(231, 1, 1);
    e2e::hbone_request(
        &mesh.ca,
        &e2e::spiffe("test", "peer"),
        &e2e::spiffe("test", "default"),
        SocketAddr::new(client, 15008),
        SocketAddr::new(client, 8080),
        b"x",
    )?
    .ok();
    wait_for(LOG_WAIT, "debug lines after the level change", || {
        debug_lines(&n1) > 0
    })
    .map_err(|e| e.context(n1.proc.stderr()))?;

    // POST /quitquitquit (ztunnel's drain): not ready at once, live connections finish,
    // then the process exits 0.
    let (status, body) = admin_post(&n1, "/quitquitquit")?;
    ensure!(
        status.contains("200") && body == "shutdown now\n",
        "POST /quitquitquit: {status} {body:?}"
    );
    wait_for(LOG_WAIT, "node-1 not ready after /quitquitquit", || {
        !is_ready(&n1)
    })?;
    ping(&mut live, b"during the drain")?;
    drop(live);
    let code = n1.proc.wait_exit(Duration::from_secs(15))?;
    ensure!(
        code == Some(0),
        "node-1 exited with {code:?} after /quitquitquit:\n{}",
        n1.proc.stderr()
    );
    Ok(())
}

#[test]
fn admin_drain_honours_the_configured_drain_timeout() -> Result<()> {
    // --drain-timeout 1s: a drain asked through the admin API must not keep a live
    // connection (and the process) for longer than the operator configured.
    let (_mesh, mut n1, _n2, _live) = mesh_with_live_connection(232, "1s")?;
    let asked = Instant::now();
    let (status, _) = admin_post(&n1, "/drain")?;
    ensure!(status.contains("200"), "POST /drain: {status}");
    let code = n1.proc.wait_exit(Duration::from_secs(15))?;
    ensure!(code == Some(0), "node-1 exited with {code:?}");
    let took = asked.elapsed();
    ensure!(
        took < Duration::from_secs(5),
        "node-1 exited {took:?} after POST /drain with --drain-timeout 1s and a live connection"
    );
    Ok(())
}
