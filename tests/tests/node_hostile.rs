//! What a peer can send to a node's listeners, short of valid traffic: garbage and plain
//! HTTP on the HBONE port, client certificates from a foreign CA or another trust domain,
//! garbage on the SOCKS5 entry, and connections that never finish a handshake. The node
//! refuses each, stays up, closes the silent ones within its handshake deadlines, and keeps
//! serving valid tunnels.
//!
//! Address plan: 127.226.0.0/16; node-1 on .0.1 with workloads client (.1.1) and echo (.2.1).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use e2e::{MeshDir, Node, echo_once, hbone_request, ip4, socks_connect, spawn_echo, spiffe};

const X: u8 = 226;
/// The node's TLS handshake and SOCKS5 handshake deadlines are 10 s each (hbone's
/// DEFAULT_TLS_HANDSHAKE_TIMEOUT, proxy's SOCKS_HANDSHAKE_TIMEOUT); allow some slack.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(15);

/// Connects, optionally writes `bytes`, and returns how long until the node closed it.
fn closed_after(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Result<Duration> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(limit))?;
    let started = Instant::now();
    if !bytes.is_empty() {
        // The node may close before reading everything; a reset here is an answer too.
        let _ = s.write_all(bytes);
    }
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(started.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "{addr} kept a connection open for {limit:?} after {} bytes",
                    bytes.len()
                )
            }
            Err(_) => return Ok(started.elapsed()),
        }
    }
}

/// A CONNECT with a client leaf from `signer` for `identity`, trusting the mesh's real root
/// for the server (so only the server's check of the client can fail); the error if any.
fn handshake_with(
    signer: &proxy::identity::Ca,
    mesh_root: &proxy::identity::Ca,
    identity: &hbone::Identity,
    addr: SocketAddr,
    authority: SocketAddr,
) -> Result<Option<hbone::Error>> {
    let leaf = signer.sign_leaf(identity, Duration::from_secs(3600))?;
    let tls = hbone::tls::client_config(
        leaf.chain(),
        leaf.key(),
        &[mesh_root.root_der().clone()],
        vec![spiffe("test", "echo")],
    )?;
    let r = runtime::block_on(runtime::DriverChoice::Auto, async move {
        let conn = hbone::client::connect(addr, tls, &hbone::h2conn::H2Settings::default()).await?;
        conn.send_connect(&hbone::wire::ConnectRequest::new(authority))
            .await
            .map(|_| ())
    })?;
    Ok(r.err())
}

#[test]
fn hostile_peers_are_refused_and_the_node_keeps_serving() -> Result<()> {
    let (client, echo) = (ip4(X, 1, 1), ip4(X, 2, 1));
    let config = format!(
        "workloads:\n  - {{name: client, namespace: test, serviceAccount: client, workloadIps: [\"{client}\"], node: node-1, protocol: HBONE}}\n  - {{name: echo, namespace: test, serviceAccount: echo, workloadIps: [\"{echo}\"], node: node-1, protocol: HBONE}}\n"
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    let mut n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &["--cores", "2"])?;
    let hbone = SocketAddr::new(echo, 15008);
    let socks = n1.socks();

    // Silent connections: closed by the handshake deadlines (in the background meanwhile).
    let silent: Vec<_> = [hbone, socks]
        .into_iter()
        .map(|addr| {
            std::thread::spawn(move || {
                closed_after(addr, &[], HANDSHAKE_DEADLINE).map(|d| (addr, d))
            })
        })
        .collect();

    // Garbage and plain HTTP on the HBONE port, garbage on the SOCKS5 entry.
    let mut junk = vec![0u8; 64 << 10];
    let mut x = 0x1234_5678_9abc_def0u64;
    for b in junk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for (addr, bytes) in [
        (hbone, &junk[..]),
        (hbone, &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
        (hbone, &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]),
        (socks, &junk[..]),
        (socks, &[5, 1, 2][..]),
        (socks, &[4, 1, 0, 80, 127, 0, 0, 1, 0][..]),
    ] {
        closed_after(addr, bytes, Duration::from_secs(5))?;
    }

    // Client certificates the node must not accept.
    let (foreign, real) = (
        proxy::identity::Ca::generate()?,
        proxy::identity::ca::load(&mesh.ca)?,
    );
    let authority = SocketAddr::new(echo, 8080);
    ensure!(
        handshake_with(&real, &real, &spiffe("test", "client"), hbone, authority)?.is_none(),
        "the control handshake (real CA) failed"
    );
    let e = handshake_with(&foreign, &real, &spiffe("test", "client"), hbone, authority)?;
    ensure!(
        e.is_some(),
        "a client certificate from a foreign CA was accepted"
    );
    let other_td = hbone::Identity::new("other.local", "test", "client")?;
    let r = hbone_request(
        &mesh.ca,
        &other_td,
        &spiffe("test", "echo"),
        hbone,
        SocketAddr::new(echo, 8080),
        b"x",
    )?;
    ensure!(
        r.is_err(),
        "a client certificate from another trust domain was accepted: {r:?}"
    );

    for t in silent {
        let (addr, after) = t.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
        ensure!(
            after >= Duration::from_secs(1),
            "{addr} closed a silent connection after only {after:?}"
        );
    }

    // Still up and serving, over HBONE and SOCKS5.
    ensure!(
        n1.proc.wait_exit(Duration::from_millis(10)).is_err(),
        "node-1 exited:\n{}",
        n1.proc.stderr()
    );
    let ok = hbone_request(
        &mesh.ca,
        &spiffe("test", "client"),
        &spiffe("test", "echo"),
        hbone,
        SocketAddr::new(echo, 8080),
        b"fine",
    )?;
    ensure!(
        ok.as_ref().is_ok_and(|b| b == b"fine"),
        "valid tunnel after the abuse: {ok:?}"
    );
    let back = echo_once(
        socks_connect(client, socks, SocketAddr::new(echo, 8080))?,
        b"still fine",
    )?;
    ensure!(back == b"still fine");
    ensure!(
        !n1.proc.stderr().contains("panicked"),
        "node-1 panicked:\n{}",
        n1.proc.stderr()
    );
    Ok(())
}
