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

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::guard::GuardState;
use crate::h2conn::{self, H2Settings, KeepaliveFailure};
use crate::identity::Identity;
use crate::stream::{self, Abort, HboneStream, Originator, RelayError};
use crate::window::PathRtt;
use crate::wire::{ConnectRequest, Status};
use runtime::meter::Meter;

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
    /// Boxed: an `Incoming` moves through every layer of a stream's task until the 200, and
    /// each layer that holds it across an await keeps its own slot for the stream's life
    /// (120 B inline each); the request itself is freed when the stream is answered.
    request: Box<ConnectRequest>,
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
    Relayed,
    /// The upstream could not be had; the request was answered with this status.
    Rejected(Status),
    /// The peer reset the stream before the upstream was ready; the dial was dropped.
    Cancelled,
    /// 200 was sent, then the relay ended early (both ends were reset).
    RelayFailed(RelayError),
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
    /// directions end, counting into `meter` (the tunnel faces the originator); on failure
    /// answers the status. The caller logs and counts the outcome.
    ///
    /// If the peer resets the stream while the dial is under way, the dial is dropped: a peer
    /// that floods HEADERS-then-RST cannot make the node dial for streams nobody waits for.
    /// If the relay fails (a reset from either side, an I/O error) or `abort` completes, both
    /// ends are reset (`crate::stream::relay`), so neither mistakes the cut for a complete
    /// stream.
    ///
    /// The dial is boxed, and freed once it completes: held inline, its state (a connect
    /// with its timer, ~1.4 KiB on a node) stayed in the stream's task for the whole relay,
    /// idle or not (an `async fn` keeps its arguments to the end). `abort` is `Unpin` for
    /// the same reason (see [`stream::relay`]): pin it where you own it.
    pub fn serve<'a, U, F>(
        self,
        upstream: F,
        meter: &'a Meter,
        abort: impl Future<Output = ()> + Unpin + 'a,
    ) -> impl Future<Output = Served> + 'a
    where
        F: Future<Output = std::result::Result<U, Status>> + 'a,
        U: AsyncRead + AsyncWrite + Abort + Unpin + 'a,
    {
        self.serve_boxed(Box::pin(upstream), meter, abort)
    }

    /// Not an `async fn`, which would keep a second copy of `self` for the stream's life:
    /// the block uses what it captures in place.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold `self` twice for the stream's life"
    )]
    fn serve_boxed<'a, U, F>(
        mut self,
        mut upstream: Pin<Box<F>>,
        meter: &'a Meter,
        mut abort: impl Future<Output = ()> + Unpin + 'a,
    ) -> impl Future<Output = Served> + 'a
    where
        F: Future<Output = std::result::Result<U, Status>> + 'a,
        U: AsyncRead + AsyncWrite + Abort + Unpin + 'a,
    {
        async move {
            let dialed = {
                let respond = &mut self.respond;
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = upstream.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    // A reset (or a dead connection) ends the wait.
                    if peer_reset(cx, respond) {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await
            };
            drop(upstream);
            let mut up = match dialed {
                Some(Ok(up)) => up,
                Some(Err(status)) => {
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
                None => {
                    // Nobody to answer: drop the handle without the 503 of an unanswered request.
                    drop(self.respond.take());
                    return Served::Cancelled;
                }
            };
            let mut tunnel = match self.accept() {
                Ok(t) => t,
                Err(e) => {
                    up.abort();
                    return Served::RelayFailed(RelayError::Tunnel(std::io::Error::other(e)));
                }
            };
            match stream::relay(&mut tunnel, &mut up, meter, Originator::Tunnel, &mut abort).await {
                Ok(()) => Served::Relayed,
                Err(e) => Served::RelayFailed(e),
            }
        }
    }
}

/// Whether the peer has reset the stream behind `respond` (or its connection is gone).
fn peer_reset(cx: &mut std::task::Context<'_>, respond: &mut Option<SendResponse<Bytes>>) -> bool {
    match respond.as_mut() {
        Some(r) => r.poll_reset(cx).is_ready(),
        None => false,
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
    let tls = match runtime::time::timeout(
        cfg.tls_handshake_timeout,
        crate::tls::accept(io, cfg.tls.clone()),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(Error::Io(e))) => {
            return Err(Error::Io(std::io::Error::new(
                e.kind(),
                format!("TLS accept: {e}"),
            )));
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(Error::Timeout {
                what: "HBONE TLS handshake",
                after: cfg.tls_handshake_timeout,
            });
        }
    };
    let session = tls.session();
    if session.alpn.as_deref() != Some(crate::tls::ALPN_H2) {
        return Err(Error::NoH2Alpn(
            session
                .alpn
                .as_ref()
                .map(|a| String::from_utf8_lossy(a).into_owned()),
        ));
    }
    // Always present after a completed handshake with crate::tls's verifier.
    let peer = session
        .peer_identity
        .clone()
        .ok_or(Error::NoIdentity { found: Vec::new() })?;
    serve_h2(tls, peer, &cfg.h2, drain, handler).await
}

/// The requests of one connection still being handled, and the connection task's waker, so
/// that the last one to finish can start the connection's idle clock.
#[derive(Default)]
struct Streams {
    live: Cell<usize>,
    waker: RefCell<Option<Waker>>,
}

/// One request's place in its connection's [`Streams`]; released when its handler ends.
struct StreamTicket(Rc<Streams>);

impl Drop for StreamTicket {
    fn drop(&mut self) {
        let left = self.0.live.get() - 1;
        self.0.live.set(left);
        if left == 0
            && let Some(w) = self.0.waker.borrow_mut().take()
        {
            w.wake();
        }
    }
}

/// Serves HTTP/2 on an already authenticated stream whose client is `peer` (after
/// [`serve_tls`], or directly in tests). Returns when the connection has ended: the client
/// closed it, `drain` fired and the streams in flight finished, or an error. `handler` runs in
/// its own task for each well-formed CONNECT.
///
/// Bounds what the peer can hold: its preface and first SETTINGS must arrive within
/// `settings.handshake_timeout`; a connection with no request in flight for
/// `settings.idle_timeout` is closed with GOAWAY; at most `settings.max_concurrent_streams`
/// handlers run at once (a stream the peer resets right after its HEADERS is closed for h2
/// but its handler may still be dialling, so h2's own limit alone would let a
/// HEADERS-then-RST flood start dials without bound: past the cap, requests are refused with
/// REFUSED_STREAM); control-frame floods end the connection (`crate::guard`).
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
    let guard = GuardState::default();
    let probe = io.rtt_probe();
    let handshake_deadline = Instant::now() + settings.handshake_timeout;
    let handshake_timeout = || Error::Timeout {
        what: "HTTP/2 preface and SETTINGS",
        after: settings.handshake_timeout,
    };
    let mut conn = match runtime::time::timeout_at(
        handshake_deadline,
        settings
            .server_builder()
            .handshake::<_, Bytes>(guard.wrap(io, true)),
    )
    .await
    {
        Ok(r) => r.map_err(h2_error)?,
        Err(_) => return Err(handshake_timeout()),
    };
    let mut liveness = h2conn::Liveness::new(
        conn.ping_pong(),
        settings.keepalive,
        None,
        settings.tuner(&guard, probe, Default::default()),
    );
    let streams = Rc::new(Streams::default());
    let mut settle = pin!(runtime::time::sleep_until(handshake_deadline));
    let mut idle: Option<h2conn::Timer> = None;
    // After an idle GOAWAY, how long the peer has to close (h2 waits for the PING it sends
    // with the GOAWAY; a peer that never answers would hold the connection forever).
    let mut closing: Option<h2conn::Timer> = None;
    let mut drain = pin!(drain);
    let mut draining = false;
    let max_streams = settings.max_concurrent_streams as usize;
    loop {
        let next = std::future::poll_fn(|cx| {
            if !draining && drain.as_mut().poll(cx).is_ready() {
                debug!(peer = %peer, "HBONE: draining connection (GOAWAY)");
                conn.graceful_shutdown();
                draining = true;
            }
            if !guard.settled() && settle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Ended::Handshake));
            }
            if let Poll::Ready(f) = liveness.poll(cx, &mut conn) {
                return Poll::Ready(Err(Ended::Keepalive(f)));
            }
            if let Some(limit) = settings.idle_timeout.filter(|_| !draining) {
                if streams.live.get() == 0 {
                    let timer = idle.get_or_insert_with(|| Box::pin(runtime::time::sleep(limit)));
                    if timer.as_mut().poll(cx).is_ready() {
                        debug!(peer = %peer, ?limit, "HBONE: connection idle; closing (GOAWAY)");
                        conn.graceful_shutdown();
                        draining = true;
                        idle = None;
                        closing = Some(Box::pin(runtime::time::sleep(settings.handshake_timeout)));
                    }
                } else {
                    idle = None;
                    let mut w = streams.waker.borrow_mut();
                    if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *w = Some(cx.waker().clone());
                    }
                }
            }
            if let Some(t) = closing.as_mut()
                && streams.live.get() == 0
                && t.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(Ended::Idle));
            }
            conn.poll_accept(cx).map(Ok)
        })
        .await;
        match next {
            Ok(Some(Ok((request, mut respond)))) => {
                if streams.live.get() >= max_streams {
                    debug!(peer = %peer, "HBONE: too many requests in flight; REFUSED_STREAM");
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                streams.live.set(streams.live.get() + 1);
                let ticket = StreamTicket(streams.clone());
                dispatch(request, respond, &peer, &handler, ticket);
            }
            Ok(Some(Err(e))) => {
                debug!(peer = %peer, error = %e, "HBONE: connection error");
                if guard.sent_goaway() == Some(u32::from(h2::Reason::ENHANCE_YOUR_CALM)) {
                    return Err(Error::Flood(format!(
                        "HTTP/2 frame flood: the peer broke h2's limits (GOAWAY ENHANCE_YOUR_CALM): {e}"
                    )));
                }
                return Err(h2_error(e));
            }
            Ok(None) => {
                // h2 may end a connection that broke one of its own limits (its DATA frame
                // budget, rapid resets) as a clean close after its GOAWAY: say so.
                if guard.sent_goaway() == Some(u32::from(h2::Reason::ENHANCE_YOUR_CALM)) {
                    return Err(Error::Flood(
                        "HTTP/2 frame flood: the peer broke h2's limits (GOAWAY ENHANCE_YOUR_CALM)"
                            .into(),
                    ));
                }
                debug!(peer = %peer, "HBONE: connection closed");
                return Ok(());
            }
            Err(Ended::Handshake) => return Err(handshake_timeout()),
            Err(Ended::Idle) => {
                debug!(peer = %peer, "HBONE: idle connection not closed by the peer after GOAWAY; dropping it");
                return Ok(());
            }
            Err(Ended::Keepalive(KeepaliveFailure::Timeout)) => {
                warn!(peer = %peer, "HBONE: PING timeout; dropping connection");
                return Err(Error::Timeout {
                    what: "HTTP/2 PING",
                    after: settings.keepalive.map(|k| k.timeout).unwrap_or_default(),
                });
            }
            Err(Ended::Keepalive(KeepaliveFailure::Error(e))) => return Err(h2_error(e)),
        }
    }
}

/// Why the connection loop stopped other than through h2.
enum Ended {
    Handshake,
    /// Idle, GOAWAY sent, and the peer did not close in time.
    Idle,
    Keepalive(KeepaliveFailure),
}

/// An h2 error, with the guard's flood verdict lifted out of h2's I/O wrapper so callers
/// can tell a hostile peer from a broken one.
fn h2_error(e: h2::Error) -> Error {
    if crate::guard::is_flood(&e) {
        return Error::Flood(e.to_string());
    }
    Error::H2(e)
}

/// Validates one request and hands it to the handler in its own task, or answers 400.
fn dispatch<H, Fut>(
    request: http::Request<h2::RecvStream>,
    respond: SendResponse<Bytes>,
    peer: &Rc<Identity>,
    handler: &H,
    ticket: StreamTicket,
) where
    H: Fn(Incoming) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let (parts, body) = request.into_parts();
    // Rejects methods other than CONNECT and unparsable authorities (Error::Wire).
    match ConnectRequest::from_http(&parts) {
        Ok(request) => {
            let incoming = Incoming {
                request: Box::new(request),
                peer: peer.clone(),
                respond: Some(respond),
                body: Some(body),
            };
            // `map`, not an `async` block awaiting the handler: that would hold the handler's
            // future twice for the stream's life (see `runtime::coop::budgeted`).
            let fut = futures_util::FutureExt::map(handler(incoming), move |()| drop(ticket));
            runtime::spawn(fut).detach();
        }
        Err(e) => {
            debug!(peer = %peer, error = %e, "HBONE: bad request; answering 400");
            if let Err(e) = answer(respond, Status::BadRequest) {
                debug!(error = %e, "HBONE: could not send 400");
            }
        }
    }
}
