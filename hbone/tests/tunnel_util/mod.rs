//! Shared fixtures for the HBONE tunnel and pool tests: a dev PKI, an HBONE server on
//! loopback whose handler dials the CONNECT authority (like the inbound path of a node
//! proxy), TCP backends, and a deterministic byte pattern to prove data arrives intact.
#![allow(dead_code)] // each test binary uses a different subset

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hbone::Identity;
use hbone::certs::{CaOptions, CertificateAuthority, LeafOptions};
use hbone::server::{Incoming, Served, ServerConfig};
use hbone::wire::Status;
use runtime::DriverChoice;
use runtime::meter::{Meter, Transferred};
use runtime::net::{TcpListener, TcpStream};

pub const TRUST_DOMAIN: &str = "cluster.local";

/// Upper bound on any wait in these tests; healthy runs take milliseconds to seconds.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// CONNECT to this port is refused by the test handler with 401 (as authorization would).
pub const DENY_PORT: u16 = 1;

/// CONNECT to this port is dropped by the handler without an answer (the server must answer
/// 503 for it).
pub const DROP_PORT: u16 = 2;

/// CONNECT to this port is answered 200 and echoed by the handler itself, without a backend
/// socket (so a thousand streams need no thousand file descriptors).
pub const ECHO_PORT: u16 = 7;

pub fn id(name: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, "test", name).expect("valid identity")
}

/// A root CA issuing leaves for identities in [`TRUST_DOMAIN`].
pub struct Pki {
    pub ca: CertificateAuthority,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            ca: CertificateAuthority::new_root(&CaOptions::new("hbone test root"))
                .expect("root CA"),
        }
    }

    pub fn server_tls(&self, me: &Identity) -> Arc<rustls::ServerConfig> {
        let leaf = self.ca.issue(me, &LeafOptions::default()).expect("leaf");
        hbone::tls::server_config(
            leaf.chain(),
            leaf.key(),
            &[self.ca.root_der().clone()],
            TRUST_DOMAIN,
        )
        .expect("server config")
    }

    pub fn client_tls(&self, me: &Identity, expect: &[Identity]) -> Arc<rustls::ClientConfig> {
        let leaf = self.ca.issue(me, &LeafOptions::default()).expect("leaf");
        hbone::tls::client_config(
            leaf.chain(),
            leaf.key(),
            &[self.ca.root_der().clone()],
            expect.to_vec(),
        )
        .expect("client config")
    }
}

/// Runs `f` on a fresh event loop with the given driver.
pub fn run(driver: DriverChoice, f: impl AsyncFnOnce() -> Result<()>) -> Result<()> {
    runtime::block_on(driver, f())?
}

/// Polls `cond` until it holds, failing after [`DEADLINE`].
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) -> Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            bail!("timed out waiting for {what}");
        }
        runtime::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Bounds a test step by [`DEADLINE`].
pub async fn deadline<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T> {
    match runtime::time::timeout(DEADLINE, f).await {
        Ok(v) => Ok(v),
        Err(_) => bail!("timed out: {what}"),
    }
}

/// What the test HBONE server saw.
#[derive(Default)]
pub struct ServerLog {
    /// TCP connections accepted.
    pub accepted: Cell<usize>,
    /// Connections whose `serve_tls` has not returned yet.
    pub live: Cell<usize>,
    /// Results of `serve_tls`, as strings (Ok or the error).
    pub ended: RefCell<Vec<Result<(), String>>>,
    /// Outcome of every request that reached the handler.
    /// How each request ended, with what its relay moved (`from_originator` is what the
    /// client sent into the tunnel).
    pub served: RefCell<Vec<(Served, Transferred)>>,
    /// Peer identities seen by the handler.
    pub peers: RefCell<Vec<Identity>>,
    /// Set to start a graceful drain of every connection.
    pub drain: Cell<bool>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub log: Rc<ServerLog>,
}

/// Starts an HBONE server on 127.0.0.1 presenting `me`. Its handler dials the CONNECT
/// authority and relays (503 if the dial fails), except port [`DENY_PORT`] which gets 401.
pub fn start_server(pki: &Pki, me: &Identity) -> Result<TestServer> {
    start_server_with(ServerConfig::new(pki.server_tls(me)))
}

pub fn start_server_with(cfg: ServerConfig) -> Result<TestServer> {
    let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let log = Rc::new(ServerLog::default());
    let log2 = log.clone();
    runtime::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let log = log2.clone();
            log.accepted.set(log.accepted.get() + 1);
            log.live.set(log.live.get() + 1);
            let cfg = cfg.clone();
            runtime::spawn(async move {
                let log3 = log.clone();
                let drain_log = log.clone();
                let drain = async move {
                    let _ = wait_until_forever(|| drain_log.drain.get()).await;
                };
                let r = hbone::server::serve_tls(tcp, &cfg, drain, move |i: Incoming| {
                    dial_and_relay(i, log3.clone())
                })
                .await;
                log.live.set(log.live.get() - 1);
                log.ended.borrow_mut().push(r.map_err(|e| e.to_string()));
            })
            .detach();
        }
    })
    .detach();
    Ok(TestServer { addr, log })
}

async fn wait_until_forever(cond: impl Fn() -> bool) {
    while !cond() {
        runtime::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn dial_and_relay(i: Incoming, log: Rc<ServerLog>) {
    log.peers.borrow_mut().push(i.peer_identity().clone());
    let target = i.request().authority.clone();
    if target.port() == DENY_PORT {
        i.reject(Status::Unauthorized).expect("send 401");
        log.served.borrow_mut().push((
            Served::Rejected(Status::Unauthorized),
            Transferred::default(),
        ));
        return;
    }
    if target.port() == DROP_PORT {
        drop(i);
        return;
    }
    if target.port() == ECHO_PORT {
        let mut t = i.accept().expect("send 200");
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tokio::io::AsyncReadExt::read(&mut t, &mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if tokio::io::AsyncWriteExt::write_all(&mut t, &buf[..n])
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut t).await;
        log.served.borrow_mut().push((
            Served::Relayed,
            Transferred {
                toward_originator: t.bytes_written(),
                from_originator: t.bytes_read(),
            },
        ));
        return;
    }
    let meter = Meter::new();
    let served = i
        .serve(
            async move {
                let addr = target.socket_addr().ok_or(Status::BadRequest)?;
                TcpStream::connect(addr)
                    .await
                    .map_err(|_| Status::ServiceUnavailable)
            },
            &meter,
            std::future::pending(),
        )
        .await;
    log.served.borrow_mut().push((served, meter.transferred()));
}

/// A TCP echo server: echoes each connection until EOF, then half-closes.
pub fn start_echo() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    runtime::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            runtime::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = tcp.shutdown_write();
            })
            .detach();
        }
    })
    .detach();
    Ok(addr)
}

/// Byte `i` of the test pattern for `seed`: splitmix64 of the 8-byte block index, so any
/// loss, duplication, reordering or corruption shows at the first wrong byte.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        let i = offset + k as u64;
        *b = (splitmix(seed ^ (i / 8)) >> (8 * (i % 8))) as u8;
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Checks received bytes against the pattern incrementally.
pub struct PatternCheck {
    seed: u64,
    pub offset: u64,
    scratch: Vec<u8>,
}

impl PatternCheck {
    pub fn new(seed: u64) -> PatternCheck {
        PatternCheck {
            seed,
            offset: 0,
            scratch: Vec::new(),
        }
    }

    pub fn check(&mut self, got: &[u8]) -> Result<()> {
        self.scratch.resize(got.len(), 0);
        fill_pattern(self.seed, self.offset, &mut self.scratch);
        if let Some(k) = got.iter().zip(&self.scratch).position(|(a, b)| a != b) {
            bail!("byte {} differs from the pattern", self.offset + k as u64);
        }
        self.offset += got.len() as u64;
        Ok(())
    }
}

/// Set by a bulk backend when its connection is done: verified bytes received, or the error.
pub type BackendResult = Rc<RefCell<Option<Result<u64, String>>>>;

/// A backend that, for one connection, verifies `expect_in` bytes of pattern `seed_in` arriving
/// and concurrently sends `send` bytes of pattern `seed_out`, then half-closes. Resolves to the
/// number of verified bytes received before EOF.
pub fn start_bulk_backend(
    seed_in: u64,
    seed_out: u64,
    send: u64,
) -> Result<(SocketAddr, BackendResult)> {
    let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let result = Rc::new(RefCell::new(None));
    let result2 = result.clone();
    runtime::spawn(async move {
        let r: Result<u64> = async {
            let (tcp, _) = listener.accept().await?;
            let reader = async {
                let mut check = PatternCheck::new(seed_in);
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = tcp.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, anyhow::Error>(check.offset);
                    }
                    check.check(&buf[..n])?;
                }
            };
            let writer = async {
                let mut buf = vec![0u8; 256 * 1024];
                let mut off = 0u64;
                while off < send {
                    let n = (send - off).min(buf.len() as u64) as usize;
                    fill_pattern(seed_out, off, &mut buf[..n]);
                    tcp.write_all(&buf[..n]).await?;
                    off += n as u64;
                }
                tcp.shutdown_write()?;
                Ok::<_, anyhow::Error>(())
            };
            let (got, sent) = futures_util::future::join(reader, writer).await;
            sent?;
            got
        }
        .await;
        *result2.borrow_mut() = Some(r.map_err(|e| format!("{e:#}")));
    })
    .detach();
    Ok((addr, result))
}

/// Writes `len` bytes of pattern `seed` to `w` in 256 KiB writes, then shuts it down.
pub async fn send_pattern<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill_pattern(seed, off, &mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        off += n as u64;
    }
    w.shutdown().await?;
    Ok(())
}

/// Reads `r` to EOF, verifying pattern `seed`; returns the byte count.
pub async fn recv_pattern<R: tokio::io::AsyncRead + Unpin>(r: &mut R, seed: u64) -> Result<u64> {
    use tokio::io::AsyncReadExt;
    let mut check = PatternCheck::new(seed);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(check.offset);
        }
        check.check(&buf[..n])?;
    }
}
