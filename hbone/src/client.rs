//! HBONE client: dial TCP, mutual TLS, HTTP/2 with prior knowledge, CONNECT.
//!
//! Owns: one client HTTP/2 connection ([`ClientConn`]) and the count of streams open on it.
//!
//! Invariants:
//! - every connection is driven by exactly one detached task on the core that created it
//!   (h2's `Connection` future plus its PING keepalive); the handles here only queue work for
//!   it. The task ends when the peer or an error closes the connection, when the keepalive
//!   declares the peer dead, or when every handle and stream has been dropped;
//! - the stream count includes streams still waiting for their response, so a pool that
//!   reads it never puts more than its limit on one connection;
//! - a CONNECT answered with anything but 200 never yields a stream: the caller gets
//!   [`Error::Rejected`] with the status, and the stream is reset.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::guard::GuardState;
use crate::h2conn::{self, ClientEnd, H2Settings, KeepaliveFailure};
use crate::stream::HboneStream;
use crate::window::PathRtt;
use crate::wire::ConnectRequest;

/// State shared between a connection's handles, its streams and its driver task.
#[derive(Debug)]
struct Shared {
    /// Streams open or being opened.
    active: Cell<usize>,
    /// When `active` last dropped to zero (or the connection was made).
    idle_since: Cell<Instant>,
    /// Set by the driver task when the connection has ended.
    closed: Cell<bool>,
    peer: SocketAddr,
    /// This side's address on the connection's TCP socket, when it came from a socket
    /// (`None` over other streams): telemetry's upstream local address.
    local: Cell<Option<SocketAddr>>,
    /// The stream receive window in effect (grown by the driver's window tuner).
    recv_window: Rc<Cell<u32>>,
}

/// One slot of a connection's stream count, held by a stream (or a request in flight) and
/// given back on drop.
#[derive(Debug)]
pub(crate) struct StreamSlot(Rc<Shared>);

impl StreamSlot {
    fn new(shared: &Rc<Shared>) -> StreamSlot {
        shared.active.set(shared.active.get() + 1);
        StreamSlot(shared.clone())
    }

    /// This side's address on the TCP socket the stream's connection runs on.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.0.local.get()
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let left = self.0.active.get() - 1;
        self.0.active.set(left);
        if left == 0 {
            self.0.idle_since.set(Instant::now());
        }
    }
}

/// A client HTTP/2 connection to an HBONE server. Cheap to clone; all clones share the
/// connection. `!Send`: it belongs to the core that dialed it.
#[derive(Clone)]
pub struct ClientConn {
    send: h2::client::SendRequest<Bytes>,
    shared: Rc<Shared>,
}

impl std::fmt::Debug for ClientConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConn")
            .field("peer", &self.shared.peer)
            .field("active", &self.shared.active.get())
            .field("closed", &self.shared.closed.get())
            .finish()
    }
}

/// Dials `addr`, runs the mTLS handshake with `tls` (a config from [`crate::tls`], which
/// checks the server's SPIFFE identity and sends no SNI) and the HTTP/2 handshake.
///
/// Must run inside the core's runtime: the connection's driver task is spawned on it. Has no
/// deadline of its own (the kernel's SYN retries take ~2 min); [`crate::pool::Pool`] bounds it
/// with `PoolConfig::connect_timeout`, direct callers should wrap it in a timeout.
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    settings: &H2Settings,
) -> Result<ClientConn> {
    connect_placed(&runtime::net::Placement::default(), addr, tls, settings).await
}

/// [`connect`] with the TCP socket made where `place` says (a pod's network namespace).
pub async fn connect_placed(
    place: &runtime::net::Placement,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    settings: &H2Settings,
) -> Result<ClientConn> {
    let tcp = runtime::net::TcpStream::connect_placed(place, None, addr)
        .await
        .map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("connect to {addr}: {e}"),
            ))
        })?;
    let local = tcp.local_addr().ok();
    let tls_stream = tls_connect(tcp, addr, tls).await?;
    let conn = ClientConn::handshake(tls_stream, addr, settings).await?;
    conn.shared.local.set(local);
    Ok(conn)
}

/// The client side of the mTLS handshake over any stream, checking that ALPN chose `h2`.
pub async fn tls_connect<T>(
    io: T,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<crate::tls::TlsStream<T>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The name is neither sent (no SNI) nor checked: the server is authenticated by its
    // URI SAN (crate::tls).
    let stream = crate::tls::connect(io, tls).await.map_err(|e| match e {
        Error::Io(e) => Error::Io(std::io::Error::new(
            e.kind(),
            format!("TLS handshake with {addr}: {e}"),
        )),
        e => e,
    })?;
    let alpn = &stream.session().alpn;
    if alpn.as_deref() != Some(crate::tls::ALPN_H2) {
        return Err(Error::NoH2Alpn(
            alpn.as_ref()
                .map(|a| String::from_utf8_lossy(a).into_owned()),
        ));
    }
    Ok(stream)
}

impl ClientConn {
    /// Runs the HTTP/2 client handshake over `io` (already authenticated, or plain for tests)
    /// and spawns the connection's driver task on the current core.
    pub async fn handshake<T>(io: T, peer: SocketAddr, settings: &H2Settings) -> Result<ClientConn>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + PathRtt + Unpin + 'static,
    {
        let meter = GuardState::default();
        let probe = io.rtt_probe();
        let (send, mut conn) = settings
            .client_builder()
            .handshake::<_, Bytes>(meter.wrap(io, false))
            .await
            .map_err(Error::H2)?;
        let recv_window = Rc::new(Cell::new(settings.stream_window));
        let shared = Rc::new(Shared {
            active: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            closed: Cell::new(false),
            peer,
            local: Cell::new(None),
            recv_window: recv_window.clone(),
        });
        let driver_shared = shared.clone();
        let (settled_tx, settled_rx) = futures_channel::oneshot::channel();
        let liveness = h2conn::Liveness::new(
            conn.ping_pong(),
            settings.keepalive,
            Some(settled_tx),
            settings.tuner(&meter, probe, recv_window.clone()),
        );
        runtime::spawn(async move {
            let end = h2conn::drive_client(conn, liveness).await;
            driver_shared.closed.set(true);
            match end {
                ClientEnd::Closed(Ok(())) => debug!(%peer, "HBONE connection closed"),
                ClientEnd::Closed(Err(e)) => debug!(%peer, error = %e, "HBONE connection ended"),
                ClientEnd::Keepalive(KeepaliveFailure::Timeout) => {
                    warn!(%peer, "HBONE connection: PING timeout, closing")
                }
                ClientEnd::Keepalive(KeepaliveFailure::Error(e)) => {
                    debug!(%peer, error = %e, "HBONE connection: PING failed, closing")
                }
            }
        })
        .detach();
        // Wait for the server's SETTINGS (see `h2conn::Liveness`); if the driver ends first,
        // the sender is dropped and the connection is unusable.
        if settled_rx.await.is_err() {
            let mut send = send;
            let err = std::future::poll_fn(|cx| send.poll_ready(cx)).await.err();
            return Err(match err {
                Some(e) => Error::H2(e),
                None => Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("HBONE connection to {peer} closed during the HTTP/2 handshake"),
                )),
            });
        }
        Ok(ClientConn { send, shared })
    }

    /// Opens a tunnel: sends the CONNECT and waits for the response. Non-200 answers are
    /// [`Error::Rejected`]. Dropping the returned future before it completes resets the stream.
    pub async fn send_connect(&self, req: &ConnectRequest) -> Result<HboneStream> {
        let slot = StreamSlot::new(&self.shared);
        self.send_connect_in(req, slot).await
    }

    pub(crate) async fn send_connect_in(
        &self,
        req: &ConnectRequest,
        slot: StreamSlot,
    ) -> Result<HboneStream> {
        let request = req.to_http_request()?;
        let mut send = self.send.clone();
        std::future::poll_fn(|cx| send.poll_ready(cx))
            .await
            .map_err(Error::H2)?;
        let (response, stream) = send.send_request(request, false).map_err(Error::H2)?;
        let response = response.await.map_err(Error::H2)?;
        let status = response.status();
        if status != http::StatusCode::OK {
            // Dropping `stream` and the body resets whatever is left of the stream.
            return Err(Error::Rejected { status });
        }
        Ok(HboneStream::new(stream, response.into_body(), Some(slot)))
    }

    /// Whether new streams can be opened: the driver is running and no GOAWAY or connection
    /// error has been seen (RFC 9113 §6.8: after GOAWAY no new streams may be started).
    pub fn is_usable(&self) -> bool {
        if self.shared.closed.get() {
            return false;
        }
        let mut send = self.send.clone();
        let mut cx = Context::from_waker(Waker::noop());
        // A fresh handle has no pending stream, so this only reports connection errors.
        matches!(send.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Whether the driver task has ended (the connection is gone).
    /// The stream receive window this side advertises now: the first one until the window
    /// tuner has seen it limit a transfer (`h2conn::INITIAL_STREAM_WINDOW`).
    pub fn recv_window(&self) -> u32 {
        self.shared.recv_window.get()
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.get()
    }

    /// Streams open or being opened on this connection.
    pub fn active_streams(&self) -> usize {
        self.shared.active.get()
    }

    /// The peer's current SETTINGS_MAX_CONCURRENT_STREAMS as h2 knows it (our initial
    /// assumption until the peer's SETTINGS arrive).
    pub fn peer_max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// The server address this connection was dialed to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// This side's address on the connection's TCP socket; `None` for a connection
    /// handshaken over another kind of stream.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.local.get()
    }

    /// When the last stream ended, if none is open now.
    pub fn idle_since(&self) -> Option<Instant> {
        (self.shared.active.get() == 0).then(|| self.shared.idle_since.get())
    }

    /// Reserves a stream slot if fewer than `limit` streams are open.
    pub(crate) fn try_reserve(&self, limit: usize) -> Option<StreamSlot> {
        (self.shared.active.get() < limit).then(|| StreamSlot::new(&self.shared))
    }
}
