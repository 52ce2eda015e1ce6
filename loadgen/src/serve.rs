//! Backends for benchmarks and tests (`loadgen serve`): echo, sink, source, and minimal
//! HTTP/1.1 and HTTP/2 responders with a fixed body, one `SO_REUSEPORT` listener per core.
//!
//! Invariants:
//! - Thread-per-core: each worker accepts and serves its own connections; the only state
//!   shared across cores is [`Faults`] (atomics), touched only when a fault knob is set.
//! - Per-connection buffers are allocated once per connection; HTTP responses are encoded
//!   once per server and written as is.
//! - Fault knobs are testing aids: they make the server misbehave on purpose (stall a core,
//!   reset connections mid-response, answer with an error status).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use runtime::net::{TcpListener, TcpStream};
use runtime::{Runtime, RuntimeConfig, Worker};

use crate::Error;
use crate::http1::{MessageReader, Step, encode_response, pattern};

/// Per-connection buffer. 64 KiB: the bulk copy-loop size that measured well (DESIGN.md:
/// 4–8 KiB buffers lost 45–77 % of throughput).
const BUF: usize = 64 * 1024;
/// Largest HTTP request body the responders accept (they discard it as it arrives).
const MAX_REQUEST_BODY: u64 = 1 << 30;
/// HTTP/2 windows, as HBONE uses (DESIGN.md).
const H2_STREAM_WINDOW: u32 = 4 << 20;
const H2_CONN_WINDOW: u32 = 16 << 20;

/// What the backend does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeMode {
    /// Writes back everything it reads.
    Echo,
    /// Reads and discards.
    Sink,
    /// Writes the payload pattern until the peer goes away.
    Source,
    /// HTTP/1.1 keep-alive responder with a fixed body.
    Http1,
    /// HTTP/2 (prior knowledge) responder with a fixed body.
    Http2,
    /// HBONE terminator (mTLS + HTTP/2 CONNECT) that echoes the bytes of every tunnel.
    Hbone,
}

impl std::str::FromStr for ServeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "echo" => ServeMode::Echo,
            "sink" => ServeMode::Sink,
            "source" => ServeMode::Source,
            "http1" => ServeMode::Http1,
            "http2" => ServeMode::Http2,
            "hbone" => ServeMode::Hbone,
            _ => {
                return Err(format!(
                    "unknown serve mode {s:?}: expected echo, sink, source, http1, http2 or hbone"
                ));
            }
        })
    }
}

/// Backend configuration.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub mode: ServeMode,
    pub listen: SocketAddr,
    pub runtime: RuntimeConfig,
    /// HTTP response body size.
    pub body_size: usize,
    /// HTTP response status (testing aid when not 200).
    pub status: u16,
    /// Testing aid: after this many responses (HTTP/1.1) or echoed reads (echo) on a
    /// connection, send half of the next one and reset the connection.
    pub reset_after: Option<u64>,
    /// Testing aid: stall the worker thread that handles the `stall_after`-th request
    /// (server-wide count) for this long, once — a whole-core pause like a GC stop.
    pub stall_once: Option<Duration>,
    pub stall_after: u64,
    /// HBONE mode: the server TLS config (`hbone::tls::server_config`).
    pub hbone_tls: Option<Arc<rustls::ServerConfig>>,
}

/// Fault-injection state shared by all cores (only used when a knob is set).
#[derive(Debug, Default)]
pub struct Faults {
    served: AtomicU64,
    stalled: AtomicBool,
}

/// A running backend.
#[derive(Debug)]
pub struct Server {
    runtime: Runtime<()>,
    local: SocketAddr,
}

impl Server {
    /// The bound address (port resolved when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The driver the workers run.
    pub fn driver(&self) -> String {
        self.runtime
            .driver()
            .map(|d| d.to_string())
            .unwrap_or_default()
    }

    /// Stops accepting, gives live connections `deadline`, and joins the workers.
    pub fn stop(self, deadline: Duration) -> Result<(), Error> {
        self.runtime.drain(deadline);
        self.runtime
            .join()
            .map_err(|e| Error::Runtime(e.to_string()))
    }

    /// Serves until SIGTERM/SIGINT, then drains.
    pub fn run_until_signal(self, drain: Duration) -> Result<(), Error> {
        self.runtime
            .run_until_signal(drain)
            .map_err(|e| Error::Runtime(e.to_string()))
    }
}

/// Starts the backend: one listener per core on the same address.
pub fn start(cfg: &ServeConfig) -> Result<Server, Error> {
    // With port 0 every core would get its own port; reserve one port first (bound with
    // SO_REUSEPORT but not listening, so it takes no connections) and let the cores share it.
    let reservation = reserve(cfg.listen)?;
    let local = reservation
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| Error::Io {
            what: format!("reading the bound address of {}", cfg.listen),
            source: std::io::Error::other("no socket address"),
        })?;
    let cfg2 = cfg.clone();
    let faults = Arc::new(Faults::default());
    let response: Arc<Vec<u8>> = {
        let mut v = Vec::new();
        encode_response(&mut v, cfg.status, cfg.body_size, false);
        Arc::new(v)
    };
    let runtime = runtime::launch::<(), _, _>(&cfg.runtime, move |worker: Worker<()>| {
        let listener = TcpListener::bind(local)?;
        let cfg = Rc::new(cfg2.clone());
        let faults = faults.clone();
        let response = response.clone();
        Ok(async move {
            let w = worker.clone();
            worker
                .serve(listener, move |stream, _peer| {
                    let cfg = cfg.clone();
                    let faults = faults.clone();
                    let response = response.clone();
                    let w = w.clone();
                    async move {
                        let res = match cfg.mode {
                            ServeMode::Echo => echo(&stream, &cfg).await,
                            ServeMode::Sink => sink(&stream).await,
                            ServeMode::Source => source(&stream).await,
                            ServeMode::Http1 => http1(&stream, &cfg, &faults, &response).await,
                            ServeMode::Http2 => http2(stream, &cfg, &w).await,
                            ServeMode::Hbone => hbone_echo(stream, &cfg, &w).await,
                        };
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "backend connection ended");
                        }
                    }
                })
                .await;
        })
    })
    .map_err(|e| Error::Runtime(e.to_string()))?;
    drop(reservation);
    Ok(Server { runtime, local })
}

fn reserve(addr: SocketAddr) -> Result<socket2::Socket, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let io = |source| Error::Io {
        what: format!("binding {addr}"),
        source,
    };
    let s =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(io)?;
    s.set_reuse_address(true).map_err(io)?;
    s.set_reuse_port(true).map_err(io)?;
    s.bind(&addr.into()).map_err(io)?;
    Ok(s)
}

fn reset(stream: &TcpStream) {
    // Zero linger: the close that follows (the caller drops the stream) sends RST.
    let _ = stream.set_zero_linger();
}

async fn echo(s: &TcpStream, cfg: &ServeConfig) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF];
    let mut reads = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if cfg.reset_after.is_some_and(|r| reads >= r) {
            s.write_all(&buf[..n / 2]).await?;
            reset(s);
            return Ok(());
        }
        reads += 1;
        s.write_all(&buf[..n]).await?;
    }
}

async fn sink(s: &TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF];
    while s.read(&mut buf).await? > 0 {}
    Ok(())
}

async fn source(s: &TcpStream) -> std::io::Result<()> {
    // Whole alphabet cycles so the pattern continues seamlessly across writes.
    let chunk: Vec<u8> = pattern(BUF / 26 * 26).collect();
    loop {
        s.write_all(&chunk).await?;
    }
}

async fn http1(
    s: &TcpStream,
    cfg: &ServeConfig,
    faults: &Faults,
    response: &[u8],
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF];
    let mut out: Vec<u8> = Vec::with_capacity(response.len());
    let mut filled = 0;
    let mut reader = MessageReader::request(MAX_REQUEST_BODY);
    let mut served = 0u64;
    loop {
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        // Answer every complete request in this read with one write (pipelining-friendly).
        out.clear();
        let mut close = false;
        loop {
            let (used, step) = match reader.advance(&buf[..filled]) {
                Ok(v) => v,
                Err(e) => {
                    let mut bad = Vec::new();
                    encode_response(&mut bad, 400, 0, true);
                    s.write_all(&out).await?;
                    s.write_all(&bad).await?;
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                }
            };
            buf.copy_within(used..filled, 0);
            filled -= used;
            let Step::Done(m) = step else { break };
            if cfg.reset_after.is_some_and(|r| served >= r) {
                out.extend_from_slice(&response[..response.len() / 2]);
                s.write_all(&out).await?;
                reset(s);
                return Ok(());
            }
            if let Some(stall) = cfg.stall_once {
                let n = faults.served.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= cfg.stall_after && !faults.stalled.swap(true, Ordering::AcqRel) {
                    // Deliberately blocks this core's event loop: every connection on it stalls.
                    std::thread::sleep(stall);
                }
            }
            served += 1;
            out.extend_from_slice(response);
            if m.close {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
        if close {
            return Ok(());
        }
    }
}

async fn http2(stream: TcpStream, cfg: &ServeConfig, worker: &Worker<()>) -> std::io::Result<()> {
    let to_io = |e: h2::Error| std::io::Error::other(e.to_string());
    let mut conn = h2::server::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        // ≥ 100 concurrent streams, as HBONE servers advertise (DESIGN.md).
        .max_concurrent_streams(1024)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(to_io)?;
    let body: Bytes = pattern(cfg.body_size).collect::<Vec<u8>>().into();
    let status = http::StatusCode::from_u16(cfg.status).unwrap_or(http::StatusCode::OK);
    while let Some(next) = conn.accept().await {
        let (req, mut respond) = next.map_err(to_io)?;
        let body = body.clone();
        worker.spawn_conn(async move {
            let mut req_body = req.into_body();
            while let Some(chunk) = req_body.data().await {
                let Ok(chunk) = chunk else { return };
                let _ = req_body.flow_control().release_capacity(chunk.len());
            }
            let resp = http::Response::builder()
                .status(status)
                .body(())
                .expect("static response parts");
            let empty = body.is_empty();
            let Ok(mut send) = respond.send_response(resp, empty) else {
                return;
            };
            if !empty {
                let _ = send.send_data(body, true);
            }
        });
    }
    Ok(())
}

async fn hbone_echo(
    stream: TcpStream,
    cfg: &ServeConfig,
    worker: &Worker<()>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(tls) = cfg.hbone_tls.clone() else {
        return Err(std::io::Error::other("HBONE mode without a TLS config"));
    };
    let server_cfg = hbone::server::ServerConfig::new(tls);
    let res = hbone::server::serve_tls(
        stream,
        &server_cfg,
        worker.shutdown().draining(),
        |incoming| async move {
            let Ok(mut tunnel) = incoming.accept() else {
                return;
            };
            let mut buf = vec![0u8; BUF];
            loop {
                match tunnel.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tunnel.write_all(&buf[..n]).await.is_err()
                            || tunnel.flush().await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = tunnel.shutdown().await;
        },
    )
    .await;
    res.map_err(std::io::Error::other)
}
