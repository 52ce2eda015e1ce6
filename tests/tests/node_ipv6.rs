//! IPv6 through the mesh: a workload on `::1` behind an IPv6 service VIP, reached from an
//! IPv4 client through SOCKS5 (address type 4), tunnelled over HBONE to `[::1]:15008`.
//!
//! Address plan: 127.233.0.0/16 for the nodes and the client; `::1` for the echo workload
//! (the one IPv6 loopback address, so only this test may use it); VIP `fd00:233::1`, which
//! is never dialled.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use e2e::{MeshDir, Node, bulk_echo, ip4, spawn_echo};

const X: u8 = 233;

/// SOCKS5 CONNECT to an IPv6 target from an IPv4 workload address.
fn socks_connect_v6(source: IpAddr, socks: SocketAddr, target: SocketAddr) -> Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(source, 0).into())?;
    sock.connect_timeout(&socks.into(), Duration::from_secs(5))?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(&[5, 1, 0])?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r)?;
    ensure!(r == [5, 0], "greeting answered {r:?}");
    let IpAddr::V6(ip) = target.ip() else {
        bail!("IPv6 targets only")
    };
    let mut req = vec![5, 1, 0, 4];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).context("SOCKS5 reply")?;
    // The bound address that follows: IPv4 (4 bytes) or IPv6 (16), then the port.
    let rest = if head[3] == 4 { 16 + 2 } else { 4 + 2 };
    let mut bound = vec![0u8; rest];
    s.read_exact(&mut bound)?;
    ensure!(
        head[1] == 0,
        "SOCKS5 CONNECT to {target} failed with reply code {}",
        head[1]
    );
    Ok(s)
}

#[test]
fn ipv6_workload_behind_an_ipv6_vip_over_hbone() -> Result<()> {
    let client = ip4(X, 1, 1);
    let backend = match std::net::TcpListener::bind("[::1]:0") {
        Ok(l) => l,
        // A host without IPv6 loopback (e.g. a container with IPv6 disabled) cannot run this.
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            eprintln!("skipped: no IPv6 loopback ({e})");
            return Ok(());
        }
        Err(e) => return Err(e).context("binding [::1]"),
    };
    let port = backend.local_addr()?.port();
    drop(backend);
    spawn_echo(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port))?;
    let config = format!(
        r#"workloads:
  - {{name: client, namespace: test, serviceAccount: client, workloadIps: ["{client}"], node: node-1, protocol: HBONE}}
  - {{name: echo6, namespace: test, serviceAccount: echo6, workloadIps: ["::1"], node: node-2, protocol: HBONE, services: ["test/echo6.test.svc.cluster.local"]}}
services:
  - {{name: echo6, namespace: test, hostname: echo6.test.svc.cluster.local, vips: ["fd00:233::1"], ports: {{80: {port}}}}}
"#
    );
    let mesh = MeshDir::new(&config)?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    const TOTAL: usize = 1 << 20;
    for target in [
        SocketAddr::new("fd00:233::1".parse()?, 80),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
    ] {
        let s = socks_connect_v6(client, n1.socks(), target)
            .map_err(|e| e.context(format!("node-1:\n{}", n1.proc.stderr())))?;
        let (sent, got, n) = bulk_echo(s, TOTAL)?;
        ensure!(
            n == TOTAL && sent == got,
            "{target}: {n} of {TOTAL} bytes back, intact: {}",
            sent == got
        );
    }
    // The VIP is not logged: the service's hostname is, and the endpoint it chose.
    let out = n1.wait_access(Duration::from_secs(5), "node-1's log", |l| {
        l.get("dst.service") == "echo6.test.svc.cluster.local"
    })?;
    ensure!(
        out.carrier() == "hbone"
            && out.get("dst.addr") == "[::1]:15008"
            && out.get("dst.hbone_addr") == format!("[::1]:{port}")
            && !out.line.contains("fd00:233::1"),
        "{}",
        out.line
    );
    ensure!(
        out.num("bytes_sent") == TOTAL as u64 && out.num("bytes_recv") == TOTAL as u64,
        "{}",
        out.line
    );
    let inb = n2.wait_access(Duration::from_secs(5), "node-2's log", |l| {
        l.get("direction") == "inbound"
    })?;
    ensure!(
        inb.get("dst.hbone_addr") == format!("[::1]:{port}")
            && inb.get("dst.addr") == "[::1]:15008",
        "{}",
        inb.line
    );
    ensure!(
        inb.get("src.identity") == "spiffe://cluster.local/ns/test/sa/client",
        "{}",
        inb.line
    );
    Ok(())
}
