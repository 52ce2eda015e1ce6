//! HBONE server: mutual TLS, HTTP/2, and one CONNECT per stream handed to the caller.
//!
//! Owns: one accepted HBONE connection, from TLS handshake to the last stream, and the
//! answer to every request on it.
//!
//! Invariants:
//! - only TLS sessions that negotiated ALPN `h2` and whose client certificate verified
//!   (crate::tls) reach HTTP/2; the peer's SPIFFE identity is read once per connection and
//!   handed to the caller with every request;
//! - every request gets exactly one answer: 400 with END_STREAM here when it is not a CONNECT
//!   or its fields do not parse (RFC 9113 §8.5; HBONE wire rules in crate::wire); otherwise
//!   the caller's handler answers through [`Incoming`], and an `Incoming` dropped without an
//!   answer answers 503 (never a silent RST);
//! - 200 is sent only by [`Incoming::accept`], which the caller calls once the upstream is
//!   connected ([`Incoming::serve`] does this ordering for it);
//! - each request runs in its own detached task on this core, so a slow upstream dial never
//!   holds up other streams; the connection task only accepts and dispatches;
//! - drain sends GOAWAY (RFC 9113 §6.8; h2 sends the two-step GOAWAY with a PING in between)
//!   and keeps serving the streams already started until they end; a keepalive failure
//!   drops the connection at once (the peer is gone, nothing can be flushed to it).

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::h2conn::{self, H2Settings, KeepaliveFailure};
use crate::identity::Identity;
use crate::stream::{self, HboneStream, RelayMeter, RelayStats};
use crate::window::{Metered, PathRtt};
use crate::wire::{ConnectRequest, Status};

/// TLS handshake deadline for an accepted connection. A client that has not finished the
/// handshake in 10 s is broken or hostile (slowloris); its task and socket are freed.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything an HBONE listener needs per connection.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The rustls server config (crate::tls): presents our certificate, requires and
    /// verifies the client's, offers ALPN `h2`.
    pub tls: Arc<rustls::ServerConfig>,
    /// HTTP/2 settings.
    pub h2: H2Settings,
    /// Deadline for the TLS handshake.
    pub tls_handshake_timeout: Duration,
}

impl ServerConfig {
    /// Default HTTP/2 settings and handshake timeout around `tls`.
    pub fn new(tls: Arc<rustls::ServerConfig>) -> ServerConfig {
        ServerConfig {
            tls,
            h2: H2Settings::default(),
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

/// A CONNECT request waiting for its answer.
///
/// Answer with [`Incoming::reject`] (400/401/503, END_STREAM) or, once the upstream is
/// connected, [`Incoming::accept`] (200) — or let [`Incoming::serve`] do both around a dial.
/// Dropped unanswered, it answers 503.
pub struct Incoming {
    request: ConnectRequest,
    peer: Rc<Identity>,
    respond: Option<SendResponse<Bytes>>,
    body: Option<h2::RecvStream>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("request", &self.request)
            .field("peer", &self.peer)
            .finish()
    }
}

/// How [`Incoming::serve`] ended.
#[derive(Debug)]
pub enum Served {
    /// 200 was sent and the relay ran to the end of both directions.
    Relayed(RelayStats),
    /// The upstream could not be had; the request was answered with this status.
    Rejected(Status),
    /// 200 was sent, then the relay failed after moving these bytes.
    RelayFailed(RelayStats, std::io::Error),
}

impl Incoming {
    /// The parsed request.
    pub fn request(&self) -> &ConnectRequest {
        &self.request
    }

    /// The client's SPIFFE identity, from its verified certificate.
    pub fn peer_identity(&self) -> &Identity {
        &self.peer
    }

    /// Answers with `status` and END_STREAM. A 200 here would announce a tunnel and close it
    /// in the same breath, so it is answered as 503 instead.
    pub fn reject(mut self, status: Status) -> Result<()> {
        let status = if status.is_ok() {
            Status::ServiceUnavailable
        } else {
            status
        };
        let respond = self.take_respond()?;
        answer(respond, status)
    }

    /// Answers 200 and returns the tunnel. Call only once the upstream is connected
    /// (DESIGN.md: 200 means the bytes have somewhere to go).
    pub fn accept(mut self) -> Result<HboneStream> {
        let mut respond = self.take_respond()?;
        let body = self.body.take().ok_or_else(answered_twice)?;
        let response = http::Response::builder()
            .status(http::StatusCode::OK)
            .body(())
            .map_err(|e| Error::Unavailable(format!("building 200 response: {e}")))?;
        let send = respond.send_response(response, false).map_err(Error::H2)?;
        Ok(HboneStream::new(send, body, None))
    }

    /// The response handle; present from construction until `reject`/`accept`/drop take it,
    /// each of which consumes `self`, so this cannot fail in practice.
    fn take_respond(&mut self) -> Result<SendResponse<Bytes>> {
        self.respond.take().ok_or_else(answered_twice)
    }

    /// Waits for `upstream` (the caller's dial); on success answers 200 and relays until both
    /// directions end, on failure answers the status. The caller logs and counts the outcome.
    /// If the relay fails (a reset from either side, an I/O error), the upstream is closed with
    /// a reset ([`Upstream::abort`]) and the tunnel with RST_STREAM, so neither end mistakes
    /// the abort for a complete stream.
    pub async fn serve<U, F>(self, upstream: F) -> Served
    where
        F: Future<Output = std::result::Result<U, Status>>,
        U: Upstream,
    {
        self.serve_metered(upstream, &RelayMeter::default()).await
    }

    /// [`serve`](Self::serve), counting the relayed bytes into `meter` as they move, so a
    /// caller that drops this future early (a revoked connection) still knows them.
    pub async fn serve_metered<U, F>(self, upstream: F, meter: &RelayMeter) -> Served
    where
        F: Future<Output = std::result::Result<U, Status>>,
        U: Upstream,
    {
        let mut up = match upstream.await {
            Ok(up) => up,
            Err(status) => {
                let status = if status.is_ok() {
                    Status::ServiceUnavailable
                } else {
                    status
                };
                if let Err(e) = self.reject(status) {
                    debug!(error = %e, "HBONE: could not send rejection (peer gone)");
                }
                return Served::Rejected(status);
            }
        };
        let mut tunnel = match self.accept() {
            Ok(t) => t,
            Err(e) => {
                return Served::RelayFailed(RelayStats::default(), std::io::Error::other(e));
            }
        };
        match stream::relay_metered(&mut tunnel, &mut up, meter).await {
            Ok(stats) => Served::Relayed(stats),
            Err(e) => {
                up.abort();
                // Dropping the tunnel unfinished resets it (RST_STREAM CANCEL).
                Served::RelayFailed(meter.stats(), e)
            }
        }
    }
}

/// The socket [`Incoming::serve`] relays a tunnel into.
pub trait Upstream: AsyncRead + AsyncWrite + Unpin {
    /// Makes the coming close a reset, so the far end sees an abort and not end of stream.
    fn abort(&self);
}

impl Upstream for runtime::net::TcpStream {
    fn abort(&self) {
        // SO_LINGER 0: close sends RST. Failing to set it leaves a FIN, nothing worse.
        let _ = self.set_zero_linger();
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(respond) = self.respond.take() {
            debug!(request = ?self.request, "HBONE: request dropped unanswered; answering 503");
            let _ = answer(respond, Status::ServiceUnavailable);
        }
    }
}

fn answered_twice() -> Error {
    Error::Unavailable("HBONE request already answered".into())
}

/// Sends a final non-200 answer with END_STREAM.
fn answer(mut respond: SendResponse<Bytes>, status: Status) -> Result<()> {
    let response = http::Response::builder()
        .status(status.to_http())
        .body(())
        .map_err(|e| Error::Unavailable(format!("building {status} response: {e}")))?;
    respond.send_response(response, true).map_err(Error::H2)?;
    Ok(())
}

/// Serves one accepted TCP connection: TLS handshake (ALPN `h2`, client certificate
/// required), then [`serve_h2`] with the client's identity.
pub async fn serve_tls<T, H, Fut>(
    io: T,
    cfg: &ServerConfig,
    drain: impl Future<Output = ()>,
    handler: H,
) -> Result<()>
where
    T: AsyncRead + AsyncWrite + PathRtt + Unpin + 'static,
    H: Fn(Incoming) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.tls.clone());
    let tls = match runtime::time::timeout(cfg.tls_handshake_timeout, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(tls_accept_error(e)),
        Err(_) => {
            return Err(Error::Timeout {
                what: "HBONE TLS handshake",
                after: cfg.tls_handshake_timeout,
            });
        }
    };
    let session = tls.get_ref().1;
    if !crate::tls::negotiated_h2(session) {
        let alpn = session.alpn_protocol();
        return Err(Error::NoH2Alpn(
            alpn.map(|a| String::from_utf8_lossy(a).into_owned()),
        ));
    }
    // Always present after a completed handshake with crate::tls's verifier.
    let peer = crate::tls::peer_identity(session).ok_or(Error::NoIdentity { found: Vec::new() })?;
    serve_h2(tls, peer, &cfg.h2, drain, handler).await
}

fn tls_accept_error(e: std::io::Error) -> Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => Error::Tls(tls.clone()),
        None => Error::Io(std::io::Error::new(e.kind(), format!("TLS accept: {e}"))),
    }
}

/// Serves HTTP/2 on an already authenticated stream whose client is `peer` (after
/// [`serve_tls`], or directly in tests). Returns when the connection has ended: the client
/// closed it, `drain` fired and the streams in flight finished, or an error. `handler` runs in
/// its own task for each well-formed CONNECT.
pub async fn serve_h2<T, H, Fut>(
    io: T,
    peer: Identity,
    settings: &H2Settings,
    drain: impl Future<Output = ()>,
    handler: H,
) -> Result<()>
where
    T: AsyncRead + AsyncWrite + PathRtt + Unpin,
    H: Fn(Incoming) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let peer = Rc::new(peer);
    let meter = Metered::default();
    let probe = io.rtt_probe();
    let mut conn = settings
        .server_builder()
        .handshake::<_, Bytes>(meter.wrap(io))
        .await
        .map_err(Error::H2)?;
    let mut liveness = h2conn::Liveness::new(
        conn.ping_pong(),
        settings.keepalive,
        None,
        settings.tuner(&meter, probe, Default::default()),
    );
    let mut drain = pin!(drain);
    let mut draining = false;
    loop {
        let next = std::future::poll_fn(|cx| {
            if !draining && drain.as_mut().poll(cx).is_ready() {
                debug!(peer = %peer, "HBONE: draining connection (GOAWAY)");
                conn.graceful_shutdown();
                draining = true;
            }
            if let Poll::Ready(f) = liveness.poll(cx, &mut conn) {
                return Poll::Ready(Err(f));
            }
            conn.poll_accept(cx).map(Ok)
        })
        .await;
        match next {
            Ok(Some(Ok((request, respond)))) => dispatch(request, respond, &peer, &handler),
            Ok(Some(Err(e))) => {
                debug!(peer = %peer, error = %e, "HBONE: connection error");
                return Err(Error::H2(e));
            }
            Ok(None) => {
                debug!(peer = %peer, "HBONE: connection closed");
                return Ok(());
            }
            Err(KeepaliveFailure::Timeout) => {
                warn!(peer = %peer, "HBONE: PING timeout; dropping connection");
                return Err(Error::Timeout {
                    what: "HTTP/2 PING",
                    after: settings.keepalive.map(|k| k.timeout).unwrap_or_default(),
                });
            }
            Err(KeepaliveFailure::Error(e)) => return Err(Error::H2(e)),
        }
    }
}

/// Validates one request and hands it to the handler in its own task, or answers 400.
fn dispatch<H, Fut>(
    request: http::Request<h2::RecvStream>,
    respond: SendResponse<Bytes>,
    peer: &Rc<Identity>,
    handler: &H,
) where
    H: Fn(Incoming) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let (parts, body) = request.into_parts();
    // Rejects methods other than CONNECT and unparsable authorities (Error::Wire).
    match ConnectRequest::from_http(&parts) {
        Ok(request) => {
            let incoming = Incoming {
                request,
                peer: peer.clone(),
                respond: Some(respond),
                body: Some(body),
            };
            runtime::spawn(handler(incoming)).detach();
        }
        Err(e) => {
            debug!(peer = %peer, error = %e, "HBONE: bad request; answering 400");
            if let Err(e) = answer(respond, Status::BadRequest) {
                debug!(error = %e, "HBONE: could not send 400");
            }
        }
    }
}
