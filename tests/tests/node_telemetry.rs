//! What operators see of a node, end to end (issue 13): Istio's L4 metrics and ztunnel's
//! access log, checked against what really crossed the wire, and `/config_dump` decoded as
//! istioctl decodes it.
//!
//! - Bytes: every path (outbound HBONE, outbound plain TCP, passthrough, inbound HBONE,
//!   inbound plaintext) carries requests and responses of different sizes, so a swapped
//!   direction shows. Metrics count `received` = request and `sent` = response on both
//!   reporters; the access log counts from the node's network side (outbound `bytes_sent` =
//!   request, inbound `bytes_sent` = response).
//! - Bytes are counted while they move: a connection held open shows them in `/metrics`.
//! - `ringmesh_connections_active` is exact through refusals, denials and failed dials.
//! - The 27 Istio labels of a connection between two named workloads, in order, on both
//!   nodes.
//! - `/config_dump` decodes into mirrors of istioctl's Go types (`e2e::istioctl`), with the
//!   certificates' PEM, serial number and validity in the forms istioctl parses.
//!
//! Address plan: 127.221/16 (bytes on every path), 127.222/16 (inbound plaintext; needs root
//! for the iptables DNAT, skipped otherwise, CI runs as root), 127.223/16 (live bytes),
//! 127.224/16 (active gauge), 127.238/16, 127.218/16 and 127.219/16 (labels: HBONE, plain
//! TCP outbound, inbound plaintext; the last needs root), 127.239/16 (config dump).

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use e2e::{
    AccessLog, Dnat, MeshDir, Node, connect_from, ip4, is_root, metric_samples, metric_value,
    socks_connect, socks_reply_code, wait_for,
};

const WAIT: Duration = Duration::from_secs(10);

/// A backend on `addr` that answers each `req`-byte request with `resp` bytes
/// ([`response_byte`]), until the client half-closes; counts accepted connections.
fn spawn_responder(addr: SocketAddr, req: usize, resp: usize) -> Result<Arc<AtomicUsize>> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let answer: Vec<u8> = (0..resp).map(response_byte).collect();
                let mut buf = vec![0u8; req];
                loop {
                    // A request, or the client's end of stream between requests.
                    let mut got = 0;
                    while got < req {
                        match s.read(&mut buf[got..]) {
                            Ok(0) if got == 0 => {
                                let _ = s.shutdown(Shutdown::Write);
                                return;
                            }
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                    if s.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(accepted)
}

fn response_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// One request of `req` bytes; checks that exactly the `resp`-byte answer comes back.
fn request(conn: &mut TcpStream, req: usize, resp: usize) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    conn.write_all(&vec![b'q'; req])?;
    let mut back = vec![0u8; resp];
    conn.read_exact(&mut back)
        .with_context(|| format!("reading a {resp}-byte response"))?;
    ensure!(
        back.iter().enumerate().all(|(i, &b)| b == response_byte(i)),
        "the response came back altered"
    );
    Ok(())
}

/// Half-closes `conn` and checks the server closes too, with nothing more to say.
fn close(conn: TcpStream) -> Result<()> {
    conn.shutdown(Shutdown::Write)?;
    let rest = e2e::read_all(&conn)?;
    ensure!(
        rest.is_empty(),
        "{} unexpected bytes after close",
        rest.len()
    );
    Ok(())
}

/// A node's Istio counters for the series whose labels include `want`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    opened: f64,
    closed: f64,
    /// Request bytes (client → server).
    received: f64,
    /// Response bytes (server → client).
    sent: f64,
}

fn counts(m: &str, want: &[(&str, &str)]) -> Result<Counts> {
    Ok(Counts {
        opened: metric_value(m, "istio_tcp_connections_opened_total", want)?,
        closed: metric_value(m, "istio_tcp_connections_closed_total", want)?,
        received: metric_value(m, "istio_tcp_received_bytes_total", want)?,
        sent: metric_value(m, "istio_tcp_sent_bytes_total", want)?,
    })
}

/// Waits until `node`'s counters for `want` are `expect`; fails with what they were.
fn wait_counts(node: &Node, want: &[(&str, &str)], expect: Counts, what: &str) -> Result<()> {
    let mut last = None;
    wait_for(WAIT, what, || {
        last = node.metrics().ok().and_then(|m| counts(&m, want).ok());
        last == Some(expect)
    })
    .map_err(|e| {
        e.context(format!(
            "{}: {want:?} counted {last:?}, expected {expect:?}\n{}",
            node.name,
            node.metrics().unwrap_or_default()
        ))
    })
}

/// `ringmesh_connections_active` of every reporter and protocol, in a fixed order:
/// (source: hbone, tcp, passthrough; destination: hbone, tcp, passthrough).
fn active(node: &Node) -> Result<[f64; 6]> {
    let m = node.metrics()?;
    let mut out = [0.0; 6];
    let mut seen = 0;
    for s in metric_samples(&m, "ringmesh_connections_active")? {
        let r = match s.label("reporter") {
            Some("source") => 0,
            Some("destination") => 3,
            other => bail!("reporter {other:?}"),
        };
        let p = match s.label("protocol") {
            Some("hbone") => 0,
            Some("tcp") => 1,
            Some("passthrough") => 2,
            other => bail!("protocol {other:?}"),
        };
        out[r + p] = s.value;
        seen += 1;
    }
    ensure!(
        seen == 6,
        "{seen} ringmesh_connections_active samples:\n{m}"
    );
    Ok(out)
}

/// One workload of namespace `test` in the config's flow style; `extra` adds keys
/// (`, services: [...]`).
fn workload_line(name: &str, ip: IpAddr, node: &str, protocol: &str, extra: &str) -> String {
    format!(
        "  - {{name: {name}, namespace: test, serviceAccount: {name}, workloadIps: [\"{ip}\"], node: {node}, protocol: {protocol}{extra}}}\n"
    )
}

/// The `srv` service (`srv.test.svc.cluster.local`, port 80 → 8080) on `vip`.
fn srv_service(vip: IpAddr) -> String {
    format!(
        "services:\n  - {{name: srv, namespace: test, hostname: srv.test.svc.cluster.local, vips: [\"{vip}\"], ports: {{80: 8080}}}}\n"
    )
}

const SRV_MEMBER: &str = ", services: [\"test/srv.test.svc.cluster.local\"]";

/// The access line of `node` matching `pred`, once it is written.
fn line(node: &Node, what: &str, pred: impl Fn(&AccessLog) -> bool) -> Result<AccessLog> {
    node.wait_access(WAIT, what, pred)
}

/// Checks a complete line's byte counts and outcome.
fn ensure_bytes(l: &AccessLog, sent: usize, recv: usize) -> Result<()> {
    ensure!(
        l.complete()
            && l.outcome() == "complete"
            && l.level == "info"
            && l.num("bytes_sent") == sent as u64
            && l.num("bytes_recv") == recv as u64,
        "expected bytes_sent={sent} bytes_recv={recv}: {}",
        l.line
    );
    Ok(())
}

#[test]
fn request_and_response_bytes_are_counted_apart_on_every_path() -> Result<()> {
    const X: u8 = 221;
    let (client, srv, db, outside) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 2, 2), ip4(X, 9, 9));
    let vip = SocketAddr::new(ip4(X, 100, 1), 80);
    let config = format!(
        "workloads:\n{}{}{}{}",
        workload_line("client", client, "node-1", "HBONE", ""),
        workload_line("srv", srv, "node-2", "HBONE", SRV_MEMBER),
        workload_line("db", db, "node-2", "TCP", ""),
        srv_service(vip.ip()),
    );
    // (request, response) sizes, different on every path; HBONE's response spans several
    // HTTP/2 DATA frames.
    const HBONE: (usize, usize) = (1000, 30000);
    const TCP: (usize, usize) = (700, 9000);
    const PASS: (usize, usize) = (300, 5000);
    spawn_responder(SocketAddr::new(srv, 8080), HBONE.0, HBONE.1)?;
    let db_addr = SocketAddr::new(db, 5432);
    spawn_responder(db_addr, TCP.0, TCP.1)?;
    let outside_addr = SocketAddr::new(outside, 7000);
    spawn_responder(outside_addr, PASS.0, PASS.1)?;
    let mesh = MeshDir::new(&config)?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;

    for (target, (req, resp)) in [(vip, HBONE), (db_addr, TCP), (outside_addr, PASS)] {
        let mut c = socks_connect(client, n1.socks(), target)?;
        request(&mut c, req, resp).with_context(|| format!("through {target}"))?;
        close(c).with_context(|| format!("closing {target}"))?;
    }

    // The access log, from each node's network side.
    let hbone_out = line(&n1, "node-1's HBONE line", |l| {
        l.get("dst.service") == "srv.test.svc.cluster.local"
    })?;
    ensure!(hbone_out.carrier() == "hbone", "{}", hbone_out.line);
    ensure_bytes(&hbone_out, HBONE.0, HBONE.1)?;
    let hbone_in = line(&n2, "node-2's HBONE line", |l| {
        l.get("direction") == "inbound"
    })?;
    ensure!(
        hbone_in.get("dst.hbone_addr") == format!("{srv}:8080")
            && hbone_in.get("src.addr").starts_with(&format!("{client}:")),
        "{}",
        hbone_in.line
    );
    ensure_bytes(&hbone_in, HBONE.1, HBONE.0)?;
    let tcp = line(&n1, "node-1's TCP line", |l| {
        l.get("dst.addr") == db_addr.to_string()
    })?;
    ensure!(tcp.carrier() == "tcp", "{}", tcp.line);
    ensure_bytes(&tcp, TCP.0, TCP.1)?;
    let pass = line(&n1, "node-1's passthrough line", |l| {
        l.get("dst.addr") == outside_addr.to_string()
    })?;
    ensure!(pass.carrier() == "passthrough", "{}", pass.line);
    ensure_bytes(&pass, PASS.0, PASS.1)?;

    // The metrics: received = request, sent = response, on both reporters.
    let one = |(req, resp): (usize, usize)| Counts {
        opened: 1.0,
        closed: 1.0,
        received: req as f64,
        sent: resp as f64,
    };
    let source = ("reporter", "source");
    let mtls = ("connection_security_policy", "mutual_tls");
    let plain = ("connection_security_policy", "unknown");
    wait_counts(
        &n1,
        &[source, mtls, ("destination_workload", "srv")],
        one(HBONE),
        "node-1's HBONE series",
    )?;
    wait_counts(
        &n2,
        &[
            ("reporter", "destination"),
            mtls,
            ("source_workload", "client"),
        ],
        one(HBONE),
        "node-2's HBONE series",
    )?;
    wait_counts(
        &n1,
        &[source, plain, ("destination_workload", "db")],
        one(TCP),
        "node-1's TCP series",
    )?;
    wait_counts(
        &n1,
        &[source, plain, ("destination_workload", "unknown")],
        one(PASS),
        "node-1's passthrough series",
    )?;
    // Nothing else was counted, and ringmesh's own families agree on how each was carried.
    let m1 = n1.metrics()?;
    let all = counts(&m1, &[])?;
    ensure!(
        all == Counts {
            opened: 3.0,
            closed: 3.0,
            received: (HBONE.0 + TCP.0 + PASS.0) as f64,
            sent: (HBONE.1 + TCP.1 + PASS.1) as f64,
        },
        "node-1 in all: {all:?}\n{m1}"
    );
    for protocol in ["hbone", "tcp", "passthrough"] {
        let closed = metric_value(
            &m1,
            "ringmesh_connections_closed_total",
            &[source, ("protocol", protocol)],
        )?;
        ensure!(closed == 1.0, "node-1 closed {closed} {protocol}:\n{m1}");
    }
    let m2 = n2.metrics()?;
    let closed = metric_value(
        &m2,
        "ringmesh_connections_closed_total",
        &[("reporter", "destination"), ("protocol", "hbone")],
    )?;
    ensure!(
        counts(&m2, &[])? == one(HBONE) && closed == 1.0,
        "node-2:\n{m2}"
    );
    Ok(())
}

#[test]
fn inbound_plaintext_bytes_are_counted_apart() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root for iptables (CI runs as root)");
        return Ok(());
    }
    const X: u8 = 222;
    let (srv, outsider) = (ip4(X, 2, 1), ip4(X, 9, 9));
    const SIZES: (usize, usize) = (200, 7000);
    let pod = SocketAddr::new(srv, 8080);
    spawn_responder(pod, SIZES.0, SIZES.1)?;
    let mesh = MeshDir::new(&format!(
        "workloads:\n{}",
        workload_line("srv", srv, "node-2", "HBONE", "")
    ))?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    let _dnat = Dnat::add(outsider, pod, SocketAddr::new(srv, 15006))?;
    let mut c = connect_from(outsider, pod)?;
    request(&mut c, SIZES.0, SIZES.1)?;
    close(c)?;

    let l = line(&n2, "node-2's plaintext line", |l| {
        l.get("direction") == "inbound"
    })?;
    ensure!(
        l.carrier() == "tcp"
            && l.get("dst.addr") == pod.to_string()
            && l.get("dst.workload") == "srv"
            && l.get("src.addr").starts_with(&format!("{outsider}:"))
            && l.get("src.identity").is_empty(),
        "{}",
        l.line
    );
    ensure_bytes(&l, SIZES.1, SIZES.0)?;
    wait_counts(
        &n2,
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "unknown"),
            ("source_workload", "unknown"),
            ("destination_workload", "srv"),
        ],
        Counts {
            opened: 1.0,
            closed: 1.0,
            received: SIZES.0 as f64,
            sent: SIZES.1 as f64,
        },
        "node-2's plaintext series",
    )?;
    let m = n2.metrics()?;
    let closed = metric_value(
        &m,
        "ringmesh_connections_closed_total",
        &[("reporter", "destination"), ("protocol", "tcp")],
    )?;
    ensure!(closed == 1.0, "{m}");
    Ok(())
}

#[test]
fn a_long_lived_connections_bytes_reach_metrics_before_it_closes() -> Result<()> {
    const X: u8 = 223;
    let (client, srv, db) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 2, 2));
    const HBONE: (usize, usize) = (1000, 30000);
    const TCP: (usize, usize) = (700, 9000);
    spawn_responder(SocketAddr::new(srv, 8080), HBONE.0, HBONE.1)?;
    spawn_responder(SocketAddr::new(db, 5432), TCP.0, TCP.1)?;
    let mesh = MeshDir::new(&format!(
        "workloads:\n{}{}{}",
        workload_line("client", client, "node-1", "HBONE", ""),
        workload_line("srv", srv, "node-2", "HBONE", ""),
        workload_line("db", db, "node-2", "TCP", ""),
    ))?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    let mut tunnel = socks_connect(client, n1.socks(), SocketAddr::new(srv, 8080))?;
    let mut plain = socks_connect(client, n1.socks(), SocketAddr::new(db, 5432))?;

    let source = ("reporter", "source");
    let out_hbone = [source, ("destination_workload", "srv")];
    let in_hbone = [("reporter", "destination"), ("destination_workload", "srv")];
    let out_tcp = [source, ("destination_workload", "db")];
    let open = |n: usize, (req, resp): (usize, usize)| Counts {
        opened: 1.0,
        closed: 0.0,
        received: (n * req) as f64,
        sent: (n * resp) as f64,
    };
    for n in 1..=2 {
        request(&mut tunnel, HBONE.0, HBONE.1)?;
        request(&mut plain, TCP.0, TCP.1)?;
        wait_counts(&n1, &out_hbone, open(n, HBONE), "node-1's live HBONE bytes")?;
        wait_counts(&n2, &in_hbone, open(n, HBONE), "node-2's live HBONE bytes")?;
        wait_counts(&n1, &out_tcp, open(n, TCP), "node-1's live TCP bytes")?;
        // Still open: counted active, no access line yet.
        ensure!(
            active(&n1)? == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
                && active(&n2)? == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
            "active: node-1 {:?}, node-2 {:?}",
            active(&n1)?,
            active(&n2)?
        );
        let lines = n1.access_logs().len() + n2.access_logs().len();
        ensure!(lines == 0, "{lines} access lines for open connections");
    }

    close(tunnel)?;
    close(plain)?;
    let out = line(&n1, "node-1's HBONE line", |l| l.carrier() == "hbone")?;
    ensure_bytes(&out, 2 * HBONE.0, 2 * HBONE.1)?;
    let inb = line(&n2, "node-2's HBONE line", |l| l.carrier() == "hbone")?;
    ensure_bytes(&inb, 2 * HBONE.1, 2 * HBONE.0)?;
    let tcp = line(&n1, "node-1's TCP line", |l| l.carrier() == "tcp")?;
    ensure_bytes(&tcp, 2 * TCP.0, 2 * TCP.1)?;
    let closed = |c: Counts| Counts { closed: 1.0, ..c };
    wait_counts(
        &n1,
        &out_hbone,
        closed(open(2, HBONE)),
        "node-1's HBONE close",
    )?;
    wait_counts(
        &n2,
        &in_hbone,
        closed(open(2, HBONE)),
        "node-2's HBONE close",
    )?;
    wait_counts(&n1, &out_tcp, closed(open(2, TCP)), "node-1's TCP close")?;
    ensure!(active(&n1)? == [0.0; 6] && active(&n2)? == [0.0; 6]);
    Ok(())
}

/// RFC 1928 §6 reply codes.
const SUCCEEDED: u8 = 0;
const NOT_ALLOWED: u8 = 2;
const HOST_UNREACHABLE: u8 = 4;
const CONNECTION_REFUSED: u8 = 5;

#[test]
fn refused_denied_and_unreachable_connections_leave_the_active_gauge_true() -> Result<()> {
    const X: u8 = 224;
    let (client, srv, locked, db) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 2, 2), ip4(X, 2, 3));
    let vip = ip4(X, 100, 1);
    let config = format!(
        "workloads:\n{}{}{}{}{}policies:\n  - name: lock\n    action: Deny\n    destination: {{workloads: [\"test/locked\"]}}\n    from:\n      - principals: [\"cluster.local/ns/test/sa/client\"]\n",
        workload_line("client", client, "node-1", "HBONE", ""),
        workload_line("srv", srv, "node-2", "HBONE", SRV_MEMBER),
        workload_line("locked", locked, "node-2", "HBONE", ""),
        workload_line("db", db, "node-2", "TCP", ""),
        srv_service(vip),
    );
    spawn_responder(SocketAddr::new(srv, 8080), 10, 20)?;
    let locked_pod = spawn_responder(SocketAddr::new(locked, 8080), 10, 20)?;
    // Ports nobody listens on: db's pod port, and one outside the mesh.
    let closed_outside = TcpListener::bind(SocketAddr::new(ip4(X, 9, 9), 0))?.local_addr()?;
    let mesh = MeshDir::new(&config)?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;

    // Held open through every case below.
    let mut held = socks_connect(client, n1.socks(), SocketAddr::new(srv, 8080))?;
    request(&mut held, 10, 20)?;
    let expect_active = |n1_hbone: f64, n2_hbone: f64| -> Result<()> {
        let (a1, a2) = (active(&n1)?, active(&n2)?);
        ensure!(
            a1 == [n1_hbone, 0.0, 0.0, 0.0, 0.0, 0.0] && a2 == [0.0, 0.0, 0.0, n2_hbone, 0.0, 0.0],
            "active: node-1 {a1:?}, node-2 {a2:?}\nnode-1:\n{}\nnode-2:\n{}",
            n1.metrics().unwrap_or_default(),
            n2.metrics().unwrap_or_default()
        );
        Ok(())
    };
    wait_for(WAIT, "the held connection counted active", || {
        expect_active(1.0, 1.0).is_ok()
    })?;

    // (what, target, SOCKS5 replies, node-1's outcome, whether node-2 logs it too)
    let cases: [(&str, SocketAddr, &[u8], &str, bool); 6] = [
        (
            "refused: a service port with no endpoint",
            SocketAddr::new(vip, 81),
            &[HOST_UNREACHABLE],
            "no_endpoint",
            false,
        ),
        (
            "refused: the node's own metrics listener (a loop)",
            SocketAddr::new(ip4(X, 0, 1), 15020),
            &[NOT_ALLOWED],
            "loop",
            false,
        ),
        (
            "denied by policy on node-2",
            SocketAddr::new(locked, 8080),
            &[NOT_ALLOWED],
            "denied",
            true,
        ),
        (
            "unreachable: a closed port of an HBONE pod",
            SocketAddr::new(srv, 9999),
            &[HOST_UNREACHABLE],
            "unreachable",
            true,
        ),
        (
            "unreachable: a closed port of a plain-TCP pod",
            SocketAddr::new(db, 5432),
            &[HOST_UNREACHABLE, CONNECTION_REFUSED],
            "unreachable",
            false,
        ),
        (
            "unreachable: a closed port outside the mesh",
            closed_outside,
            &[HOST_UNREACHABLE, CONNECTION_REFUSED],
            "unreachable",
            false,
        ),
    ];
    for (i, (what, target, replies, outcome, inbound)) in cases.into_iter().enumerate() {
        let code = socks_reply_code(client, n1.socks(), target)?;
        ensure!(
            code != SUCCEEDED && replies.contains(&code),
            "{what}: SOCKS5 reply {code}"
        );
        // Its lines are written after its counts: once they are there, the gauge is final.
        let outbound: Vec<AccessLog> = {
            let mut found = Vec::new();
            wait_for(WAIT, &format!("node-1's line for {what}"), || {
                found = n1
                    .access_logs()
                    .into_iter()
                    .filter(|l| l.outcome() != "complete")
                    .collect();
                found.len() > i
            })?;
            found
        };
        let l = &outbound[i];
        ensure!(l.outcome() == outcome, "{what}: {}", l.line);
        if inbound {
            line(&n2, &format!("node-2's line for {what}"), |l| {
                l.outcome() == outcome
            })?;
        }
        expect_active(1.0, 1.0).map_err(|e| e.context(what))?;
    }
    ensure!(
        locked_pod.load(Ordering::SeqCst) == 0,
        "the denied connection reached its pod"
    );
    // Inbound, refused before it was opened: a peer's CONNECT to node-2's own plaintext
    // listener on srv's IP is answered 503 and counted only as a loop.
    let to_own = e2e::hbone_request(
        &mesh.ca,
        &e2e::spiffe("test", "client"),
        &e2e::spiffe("test", "srv"),
        SocketAddr::new(srv, 15008),
        SocketAddr::new(srv, 15006),
        b"x",
    )?;
    ensure!(
        matches!(&to_own, Err(e @ hbone::Error::Rejected { .. }) if e.status().code() == 503),
        "CONNECT to node-2's own listener: {to_own:?}"
    );
    line(&n2, "node-2's loop line", |l| l.outcome() == "loop")?;
    expect_active(1.0, 1.0).map_err(|e| e.context("an inbound loop"))?;

    // Refusals have no Istio series; every opened connection but the held one is closed with
    // its flag.
    let m1 = n1.metrics()?;
    let v = |m: &str, name: &str, want: &[(&str, &str)]| metric_value(m, name, want);
    for (reason, n) in [("no_endpoint", 1.0), ("loop", 1.0)] {
        let got = v(
            &m1,
            "ringmesh_connections_refused_total",
            &[("reason", reason)],
        )?;
        ensure!(got == n, "node-1 refused {got} as {reason}:\n{m1}");
    }
    let opened = v(&m1, "istio_tcp_connections_opened_total", &[])?;
    let closed = v(&m1, "istio_tcp_connections_closed_total", &[])?;
    let deny = v(
        &m1,
        "istio_tcp_connections_failed_total",
        &[("response_flags", "DENY")],
    )?;
    let connect = v(
        &m1,
        "istio_tcp_connections_failed_total",
        &[("response_flags", "CONNECT")],
    )?;
    ensure!(
        opened == 5.0 && closed == 4.0 && deny == 1.0 && connect == 3.0,
        "node-1: opened {opened}, closed {closed}, DENY {deny}, CONNECT {connect}\n{m1}"
    );
    let m2 = n2.metrics()?;
    let loops = v(
        &m2,
        "ringmesh_connections_refused_total",
        &[("reason", "loop")],
    )?;
    ensure!(loops == 1.0, "node-2 refused {loops} loops:\n{m2}");
    let opened = v(&m2, "istio_tcp_connections_opened_total", &[])?;
    let closed = v(&m2, "istio_tcp_connections_closed_total", &[])?;
    let failed = v(&m2, "istio_tcp_connections_failed_total", &[])?;
    ensure!(
        opened == 3.0 && closed == 2.0 && failed == 2.0,
        "node-2: opened {opened}, closed {closed}, failed {failed}\n{m2}"
    );

    close(held)?;
    wait_for(WAIT, "no connection active on either node", || {
        expect_active(0.0, 0.0).is_ok()
    })
    .map_err(|e| e.context(format!("{:?}", expect_active(0.0, 0.0).err())))?;
    for node in [&n1, &n2] {
        let m = node.metrics()?;
        let opened = v(&m, "istio_tcp_connections_opened_total", &[])?;
        let closed = v(&m, "istio_tcp_connections_closed_total", &[])?;
        ensure!(
            opened == closed,
            "{}: opened {opened}, closed {closed}",
            node.name
        );
    }
    // Every socket the clients opened on node-1 is closed again (refused ones included).
    let sockets = || {
        n1.metrics().ok().and_then(|m| {
            metric_value(&m, "istio_tcp_sockets_open", &[("reporter", "source")]).ok()
        })
    };
    wait_for(WAIT, "node-1's source sockets to close", || {
        sockets() == Some(0.0)
    })
    .map_err(|e| e.context(format!("{:?} open", sockets())))?;
    Ok(())
}

#[path = "node_telemetry/labels.rs"]
mod labels;

#[path = "node_telemetry/dump.rs"]
mod dump;
