//! Clients: what one load slot does per request. A slot is a connection (TCP, HTTP/1.1,
//! connect-churn) or one stream of a shared HTTP/2 connection.
//!
//! Invariants:
//! - `exchange` performs exactly one request and either completes it or returns the
//!   [`ErrorKind`] it failed with; it (re)connects on demand, so a slot survives errors.
//! - After any error, or after the caller abandons an exchange on timeout ([`Client::abort`]),
//!   the connection is dropped and never reused: its state is unknown.
//! - The hot path allocates nothing per request for TCP and HTTP/1.1: request bytes are
//!   encoded once per slot and buffers are reused (HTTP/2 allocates what `h2` needs).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use runtime::net::TcpStream;

use crate::http1::Method;
use crate::stats::ErrorKind;

pub mod bulk;
pub mod h1;
pub mod h2c;
pub mod hbone;
pub mod tcp;

/// Bytes and connects done by one exchange (added to the worker's stats when measured).
#[derive(Clone, Copy, Debug, Default)]
pub struct IoTally {
    pub sent: u64,
    pub received: u64,
    pub connects: u64,
}

/// An HTTP request shape shared by the HTTP/1.1 and HTTP/2 clients.
#[derive(Clone, Debug)]
pub struct HttpSpec {
    pub method: Method,
    /// `host[:port]` sent as Host / :authority.
    pub authority: String,
    pub path: String,
    /// Request body bytes (POST).
    pub body_size: usize,
    /// Required status; `None` accepts any 2xx.
    pub expect_status: Option<u16>,
    /// Largest response body accepted.
    pub max_body: u64,
}

impl HttpSpec {
    /// True when `status` is what this spec expects.
    pub fn status_ok(&self, status: u16) -> bool {
        match self.expect_status {
            Some(s) => s == status,
            None => (200..300).contains(&status),
        }
    }
}

/// What each slot does, shared by all workers.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Write `size` bytes, read the same `size` bytes back from an echo server and check them.
    TcpEcho { size: usize },
    /// Stream `chunk`-byte writes (upload) or reads (download) for throughput.
    TcpBulk { chunk: usize, download: bool },
    /// HTTP/1.1 keep-alive requests.
    Http1(HttpSpec),
    /// HTTP/2 streams multiplexed over shared connections.
    Http2(HttpSpec),
    /// A new TCP connection per request, then a TCP echo of `size` bytes (0: connect only).
    ChurnTcp { size: usize },
    /// A new TCP connection per request carrying one HTTP/1.1 request.
    ChurnHttp1(HttpSpec),
    /// TCP echo through HBONE tunnels (mTLS + HTTP/2 CONNECT) to a node proxy.
    Hbone(hbone::HboneSpec),
}

impl Mode {
    /// Name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::TcpEcho { .. } | Mode::TcpBulk { .. } => "tcp",
            Mode::Http1(_) => "http1",
            Mode::Http2(_) => "http2",
            Mode::ChurnTcp { .. } | Mode::ChurnHttp1(_) => "connect-churn",
            Mode::Hbone(_) => "hbone",
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub mode: Mode,
    pub target: SocketAddr,
    pub connect_timeout: Duration,
}

/// One slot's client.
pub enum Client {
    Tcp(tcp::EchoClient),
    Http1(h1::Http1Client),
    Http2(h2c::H2Slot),
    Hbone(hbone::HboneSlot),
}

impl Client {
    /// A client for one slot. HTTP/2 and HBONE slots of one connection share `group`.
    /// `completion_io`: the worker runs io_uring, where owned-buffer completion I/O is the
    /// cheaper style (see `h1`).
    pub fn new(cfg: &ClientConfig, group: Option<&Group>, completion_io: bool) -> Client {
        match &cfg.mode {
            // Bulk slots are driven by `bulk::stream`, not per request; this arm is unused.
            Mode::TcpEcho { size } | Mode::TcpBulk { chunk: size, .. } => {
                Client::Tcp(tcp::EchoClient::new(cfg, *size, false))
            }
            Mode::ChurnTcp { size } => Client::Tcp(tcp::EchoClient::new(cfg, *size, true)),
            Mode::Http1(spec) => {
                Client::Http1(h1::Http1Client::new(cfg, spec, false, completion_io))
            }
            Mode::ChurnHttp1(spec) => {
                Client::Http1(h1::Http1Client::new(cfg, spec, true, completion_io))
            }
            Mode::Http2(spec) => {
                let group = match group {
                    Some(Group::H2(g)) => g.clone(),
                    _ => Rc::new(h2c::H2Group::new(cfg.clone())),
                };
                Client::Http2(h2c::H2Slot::new(group, spec))
            }
            Mode::Hbone(spec) => {
                let group = match group {
                    Some(Group::Hbone(g)) => g.clone(),
                    _ => Rc::new(hbone::HboneGroup::new(
                        cfg.target,
                        cfg.connect_timeout,
                        spec.tls.clone(),
                    )),
                };
                Client::Hbone(hbone::HboneSlot::new(group, spec))
            }
        }
    }

    /// Performs one request.
    pub async fn exchange(&mut self, io: &mut IoTally) -> Result<(), ErrorKind> {
        match self {
            Client::Tcp(c) => c.exchange(io).await,
            Client::Http1(c) => c.exchange(io).await,
            Client::Http2(c) => c.exchange(io).await,
            Client::Hbone(c) => c.exchange(io).await,
        }
    }

    /// The caller gave up on an exchange (timeout): forget the connection.
    pub fn abort(&mut self) {
        match self {
            Client::Tcp(c) => c.abort(),
            Client::Http1(c) => c.abort(),
            Client::Http2(c) => c.abort(),
            Client::Hbone(c) => c.abort(),
        }
    }
}

/// A connection shared by several slots (HTTP/2, HBONE).
pub enum Group {
    H2(Rc<h2c::H2Group>),
    Hbone(Rc<hbone::HboneGroup>),
}

impl Group {
    /// The shared connection for one connection's slots, if the mode multiplexes.
    pub fn for_mode(cfg: &ClientConfig) -> Option<Group> {
        match &cfg.mode {
            Mode::Http2(_) => Some(Group::H2(Rc::new(h2c::H2Group::new(cfg.clone())))),
            Mode::Hbone(spec) => Some(Group::Hbone(Rc::new(hbone::HboneGroup::new(
                cfg.target,
                cfg.connect_timeout,
                spec.tls.clone(),
            )))),
            _ => None,
        }
    }
}

/// Connects with a timeout, classifying failures.
pub async fn connect(
    target: SocketAddr,
    timeout: Duration,
    io: &mut IoTally,
) -> Result<TcpStream, ErrorKind> {
    io.connects += 1;
    match runtime::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ErrorKind::from_connect(&e)),
        Err(_) => Err(ErrorKind::ConnectTimeout),
    }
}
