//! Tools of a hostile peer, for the hostile-peer suite: an mTLS connection to a node's HBONE
//! port with a certificate from the mesh's own CA (what a compromised or buggy peer node
//! holds), speaking raw HTTP/2 frames (RFC 9113 §4.1) so the test can send what no client
//! library would; and probes of the node process (resident memory, descriptors).
#![allow(dead_code, unused_imports)] // each test uses a different subset

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use hbone::wire::frame::{
    ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, GOAWAY, HEADERS, PING,
    PREFACE, RST_STREAM, RawFrame as Frame, SETTINGS, connect_block as connect_headers,
    encode as frame,
};

/// A blocking mTLS connection to an HBONE port, raw frames on top.
pub struct Raw {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    rbuf: Vec<u8>,
}

impl Raw {
    /// TCP + TLS (ALPN h2) with a leaf for `client` signed by the mesh CA in `ca_dir`,
    /// expecting the server to be `server`. No HTTP/2 preface yet.
    pub fn tls(
        ca_dir: &std::path::Path,
        client: &hbone::Identity,
        server: &hbone::Identity,
        addr: SocketAddr,
    ) -> Result<Raw> {
        let ca = proxy::identity::ca::load(ca_dir)?;
        let leaf = ca.sign_leaf(client, Duration::from_secs(3600))?;
        let cfg: Arc<rustls::ClientConfig> = hbone::tls::client_config(
            leaf.chain(),
            leaf.key(),
            &[ca.root_der().clone()],
            vec![server.clone()],
        )?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let conn = rustls::ClientConnection::new(cfg, hbone::tls::server_name())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Drive the handshake to completion now.
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .context("TLS handshake")?;
        }
        Ok(Raw {
            tls,
            rbuf: Vec::new(),
        })
    }

    /// [`Raw::tls`], then the client preface and SETTINGS, and the server's SETTINGS acked.
    pub fn h2(
        ca_dir: &std::path::Path,
        client: &hbone::Identity,
        server: &hbone::Identity,
        addr: SocketAddr,
    ) -> Result<Raw> {
        let mut raw = Raw::tls(ca_dir, client, server, addr)?;
        let mut out = PREFACE.to_vec();
        frame(&mut out, SETTINGS, 0, 0, &[]);
        raw.send(&out)?;
        raw.next_where(|f| f.kind == SETTINGS && f.flags & ACK == 0)?;
        raw.send_frame(SETTINGS, ACK, 0, &[])?;
        Ok(raw)
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    pub fn send_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<()> {
        let mut out = Vec::new();
        frame(&mut out, kind, flags, stream, payload);
        Ok(self.send(&out)?)
    }

    /// The next frame (errors at EOF, on a reset, or after the socket's read timeout).
    pub fn next(&mut self) -> Result<Frame> {
        loop {
            if let Some((f, used)) = Frame::split(&self.rbuf) {
                self.rbuf.drain(..used);
                return Ok(f);
            }
            let mut buf = [0u8; 16 * 1024];
            let n = self.tls.read(&mut buf)?;
            if n == 0 {
                bail!("connection closed by the node");
            }
            self.rbuf.extend_from_slice(&buf[..n]);
        }
    }

    /// Skips frames until one matches, answering PINGs and SETTINGS on the way.
    pub fn next_where(&mut self, want: impl Fn(&Frame) -> bool) -> Result<Frame> {
        loop {
            let f = self.next()?;
            if want(&f) {
                return Ok(f);
            }
            if f.kind == PING && f.flags & ACK == 0 {
                self.send_frame(PING, ACK, 0, &f.payload)?;
            }
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                self.send_frame(SETTINGS, ACK, 0, &[])?;
            }
        }
    }

    /// Opens a CONNECT stream and waits for its response status (the first byte of the
    /// HPACK block: 0x88 is `:status 200` from the static table).
    pub fn connect(&mut self, stream: u32, authority: SocketAddr) -> Result<Frame> {
        self.send_frame(
            HEADERS,
            END_HEADERS,
            stream,
            &connect_headers(&authority.to_string()),
        )?;
        self.next_where(|f| f.kind == HEADERS && f.stream == stream)
    }

    /// Reads until the node closes the connection (or `limit` passes: an error). A GOAWAY on
    /// the way is returned.
    pub fn until_closed(&mut self, limit: Duration) -> Result<Option<Frame>> {
        let deadline = Instant::now() + limit;
        let mut goaway = None;
        loop {
            if Instant::now() >= deadline {
                bail!("the node kept the connection open for {limit:?}");
            }
            match self.next() {
                Ok(f) if f.kind == GOAWAY => goaway = Some(f),
                Ok(_) => {}
                Err(e) => {
                    let io = e.downcast_ref::<std::io::Error>().map(|e| e.kind());
                    if matches!(io, Some(ErrorKind::WouldBlock | ErrorKind::TimedOut)) {
                        continue;
                    }
                    return Ok(goaway);
                }
            }
        }
    }
}

/// The error code of a GOAWAY frame.
pub fn goaway_code(f: &Frame) -> u32 {
    f.goaway().1
}

/// A process's resident memory in bytes (`VmRSS`).
pub fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmRSS")?
        .parse()?;
    Ok(kib << 10)
}

/// A process's open descriptors.
pub fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Samples `pid`'s resident memory every 20 ms on a thread until the returned guard is
/// asked for the peak.
pub struct PeakRss {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl PeakRss {
    pub fn start(pid: u32) -> PeakRss {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak.max(rss(pid).unwrap_or(0))
        });
        PeakRss {
            stop,
            thread: Some(thread),
        }
    }

    pub fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long one mTLS + HTTP/2 handshake with the node takes (TCP connect to the node's
/// SETTINGS read).
pub fn handshake_time(
    ca_dir: &std::path::Path,
    client: &hbone::Identity,
    server: &hbone::Identity,
    addr: SocketAddr,
) -> Result<Duration> {
    let started = Instant::now();
    let _raw = Raw::h2(ca_dir, client, server, addr)?;
    Ok(started.elapsed())
}

/// A backend that accepts connections and never reads from them (so a tunnel's receive
/// window and h2's buffers fill up), holding them until the test ends.
pub fn spawn_sink(addr: SocketAddr) -> Result<()> {
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding sink {addr}"))?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            match s {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
    });
    Ok(())
}

/// The config of [`one_node`]: a client (.1.1), an echo (.2.1) and a sink that never reads
/// (.2.2) as HBONE workloads, all on node-1.
pub fn one_node_config(x: u8) -> String {
    let w = |name: &str, ip| {
        format!(
            "  - {{name: {name}, namespace: test, serviceAccount: {name}, workloadIps: [\"{ip}\"], node: node-1, protocol: HBONE}}\n"
        )
    };
    format!(
        "workloads:\n{}{}{}",
        w("client", e2e::ip4(x, 1, 1)),
        w("echo", e2e::ip4(x, 2, 1)),
        w("sink", e2e::ip4(x, 2, 2))
    )
}

/// A mesh of one node ([`one_node_config`]) with the echo and the sink listening.
pub fn one_node(x: u8) -> Result<e2e::MeshDir> {
    let mesh = e2e::MeshDir::new(&one_node_config(x))?;
    e2e::spawn_echo(SocketAddr::new(e2e::ip4(x, 2, 1), 8080))?;
    spawn_sink(SocketAddr::new(e2e::ip4(x, 2, 2), 8080))?;
    Ok(mesh)
}

/// A normal client still gets through, over SOCKS5 and HBONE, and the node is alive.
pub fn still_serving(n: &mut e2e::Node, mesh: &e2e::MeshDir, x: u8) -> Result<()> {
    use anyhow::ensure;
    use e2e::{echo_once, hbone_request, ip4, socks_connect, spiffe};
    ensure!(
        n.proc.wait_exit(Duration::from_millis(10)).is_err(),
        "the node exited:\n{}",
        n.proc.stderr()
    );
    let echo = SocketAddr::new(ip4(x, 2, 1), 8080);
    let back = echo_once(socks_connect(ip4(x, 1, 1), n.socks(), echo)?, b"still here")?;
    ensure!(back == b"still here", "SOCKS5 → HBONE echo: {back:?}");
    let r = hbone_request(
        &mesh.ca,
        &spiffe("test", "client"),
        &spiffe("test", "echo"),
        SocketAddr::new(ip4(x, 2, 1), 15008),
        echo,
        b"direct",
    )?;
    ensure!(
        r.as_ref().is_ok_and(|b| b == b"direct"),
        "HBONE echo: {r:?}"
    );
    ensure!(
        !n.proc.stderr().contains("panicked"),
        "the node panicked:\n{}",
        n.proc.stderr()
    );
    Ok(())
}

/// The sum of a node's metric over the series matching `labels`.
pub fn metric(n: &e2e::Node, name: &str, labels: &[&str]) -> Result<f64> {
    Ok(e2e::metric_sum(&n.metrics()?, name, labels))
}
