//! Serving one tunnel: HTTP/1.1 or HTTP/2 (prior knowledge) parsed by hyper, each request
//! routed by the [`RouteTable`] and forwarded over HTTP/1.1 to an endpoint of the Service
//! its rule picks, through the caller's [`Upstreams`].
//!
//! Per request, in order (Envoy's order, so results compare): route match (404 when the
//! Service has routes and none match), fault delay, fault abort, request header edits, the
//! weighted backend pick, the mirror (spawned, never awaited), then attempts under the
//! route's timeout: each attempt under its own per-try timeout, retried on the configured
//! conditions while the retry budget allows, with a backoff between tries. Response header
//! edits last.
//!
//! Local answers follow Envoy's wording (`no healthy upstream`, `upstream request timeout`,
//! `upstream connect error or disconnect/reset before headers`), so operators find what
//! they know.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::{LocalExec, Protocol, sniff};
use crate::route::{Retry, RouteTable, Rule, ServiceRef};
use crate::security::{Peer, Refusal, SecurityTable};
use crate::stats::{Key, Outcome, Stats};
use crate::trace::{TraceCtx, Tracing};

/// Largest request body held for a retry or a mirror. A body that may be larger (no
/// Content-Length, or a larger one) streams straight through and is neither retried nor
/// mirrored: the waypoint never buffers a whole upload. 64 KiB as Envoy's default
/// per-request buffer for retries.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// Idle HTTP/1.1 connections kept per backend Service port on a core. Enough for the
/// concurrency one client connection's HTTP/2 streams produce; more are closed when done.
pub const IDLE_PER_BACKEND: usize = 64;

/// Largest request head (HTTP/1.1: request line and headers) and header list (HTTP/2) a
/// client may send. Larger is refused (431), and the connection's buffer stays bounded.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Concurrent HTTP/2 streams per client connection (each holds an upstream request).
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// A mirror that takes longer than this is dropped: its copy must not hold memory for long.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies on both sides: a streamed hyper body or bytes in hand. Boxed without `Send`:
/// a body never leaves its core.
pub struct Body(Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError>>>);

impl Body {
    pub fn new<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + 'static,
        B::Error: Into<BoxError>,
    {
        Body(Box::pin(body.map_err(Into::into)))
    }

    /// Bytes in hand.
    pub fn full(bytes: Bytes) -> Body {
        Body::new(Full::new(bytes).map_err(|e| match e {}))
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// Why an upstream could not be had.
#[derive(Debug, Clone)]
pub enum UpstreamError {
    /// The Service has no healthy endpoint (not retried).
    NoEndpoint(String),
    /// An endpoint was chosen and could not be reached (retried on `connect-failure`).
    Connect(String),
}

/// How the waypoint reaches a Service's endpoints: the caller resolves and dials (an HBONE
/// stream to the endpoint's node, or plain TCP outside the mesh).
pub trait Upstreams: 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + 'static;

    /// A byte stream to one endpoint of `service` on its Service port `port`, and which
    /// endpoint it is.
    #[allow(clippy::type_complexity)]
    fn open(
        &self,
        service: &ServiceRef,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Result<(Self::Io, Endpoint), UpstreamError>>>>;
}

/// The endpoint an upstream connection reached (for telemetry: Istio's `destination_*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The endpoint workload's uid.
    pub uid: Arc<str>,
    pub addr: std::net::SocketAddr,
}

/// What the tunnel was addressed to: the Service and Service port a node proxy sent here,
/// and who sent it (the tunnel's verified peer: the source pod's identity).
#[derive(Debug, Clone)]
pub struct Target {
    pub service: ServiceRef,
    /// The Service's hostname (span names, `host:port/*` as Envoy's).
    pub host: Arc<str>,
    pub port: u16,
    pub peer: Peer,
}

type IdleKey = (ServiceRef, u16);
type Idle = Rc<RefCell<HashMap<IdleKey, Vec<(SendRequest<Body>, Endpoint)>>>>;

/// One core's waypoint: the route table in force, the upstream connections, the counters.
pub struct Waypoint<U: Upstreams> {
    table: RefCell<Arc<RouteTable>>,
    security: RefCell<Arc<SecurityTable>>,
    passthrough: Arc<Rule>,
    upstreams: U,
    idle: Idle,
    /// HTTP/2 connections (gRPC), one per Service port.
    h2: RefCell<HashMap<IdleKey, (hyper::client::conn::http2::SendRequest<Body>, Endpoint)>>,
    rng: RefCell<SmallRng>,
    in_flight: Rc<Cell<u32>>,
    retries_in_flight: Rc<Cell<u32>>,
    tracing: Option<Arc<Tracing>>,
    limits: ConnLimits,
    pub stats: Rc<Stats>,
}

/// Deadlines of a client connection (a tunnel's HTTP connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Once a request's first byte has arrived, its head must be complete within this
    /// (slowloris); 10 s by default. HTTP/1.1 only: an HTTP/2 head arrives in one frame
    /// sequence that h2 bounds by size.
    pub head_timeout: Duration,
    /// A connection with no request in flight for this long is closed; 1 h by default, as
    /// Envoy's HTTP connection manager.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

impl<U: Upstreams> Waypoint<U> {
    pub fn new(
        table: Arc<RouteTable>,
        security: Arc<SecurityTable>,
        upstreams: U,
        stats: Rc<Stats>,
        tracing: Option<Arc<Tracing>>,
        limits: ConnLimits,
    ) -> Rc<Waypoint<U>> {
        Rc::new(Waypoint {
            table: RefCell::new(table),
            security: RefCell::new(security),
            passthrough: Arc::new(Rule::passthrough()),
            upstreams,
            idle: Rc::default(),
            h2: RefCell::default(),
            rng: RefCell::new(SmallRng::from_os_rng()),
            in_flight: Rc::new(Cell::new(0)),
            retries_in_flight: Rc::new(Cell::new(0)),
            tracing,
            limits,
            stats,
        })
    }

    /// Routes and policies from now on (requests under way keep theirs).
    pub fn set_config(&self, table: Arc<RouteTable>, security: Arc<SecurityTable>) {
        *self.table.borrow_mut() = table;
        *self.security.borrow_mut() = security;
    }

    pub fn upstreams(&self) -> &U {
        &self.upstreams
    }

    /// Serves one tunnel until the client is done with it. HTTP errors on the connection
    /// (a malformed request, a reset) end it and are returned for the caller's log.
    pub async fn serve_connection<T>(self: Rc<Self>, io: T, target: Target) -> Result<(), String>
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let activity = Rc::new(Activity::new());
        let io = Watched {
            inner: io,
            activity: activity.clone(),
        };
        let watchdog = watchdog(activity.clone(), self.limits);
        let serve = async {
            let Some((proto, io)) = sniff(io)
                .await
                .map_err(|e| format!("reading the request: {e}"))?
            else {
                return Ok(());
            };
            activity.http2.set(proto == Protocol::Http2);
            let wp = self.clone();
            let act = activity.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let wp = wp.clone();
                let target = target.clone();
                let act = act.clone();
                async move {
                    act.begin();
                    let resp = wp.handle(&target, req).await;
                    act.end();
                    Ok::<_, Infallible>(resp)
                }
            });
            let io = TokioIo::new(io);
            let res = match proto {
                Protocol::Http1 => {
                    hyper::server::conn::http1::Builder::new()
                        .max_buf_size(MAX_HEADER_BYTES.max(8192))
                        .serve_connection(io, service)
                        .await
                }
                Protocol::Http2 => {
                    hyper::server::conn::http2::Builder::new(LocalExec)
                        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                        .max_header_list_size(MAX_HEADER_BYTES as u32)
                        .serve_connection(io, service)
                        .await
                }
            };
            res.map_err(|e| e.to_string())
        };
        let serve = std::pin::pin!(serve);
        let watchdog = std::pin::pin!(watchdog);
        match futures_util::future::select(serve, watchdog).await {
            futures_util::future::Either::Left((res, _)) => res,
            futures_util::future::Either::Right((why, _)) => {
                self.stats
                    .connections_timed_out
                    .set(self.stats.connections_timed_out.get() + 1);
                Err(why)
            }
        }
    }

    fn chance(&self, p: f64) -> bool {
        p >= 1.0 || (p > 0.0 && self.rng.borrow_mut().random::<f64>() < p)
    }

    fn rule_for(&self, target: &Target, parts: &Parts) -> Result<Arc<Rule>, ()> {
        let table = self.table.borrow().clone();
        if let Some(rule) = table.select(&target.service, target.port, parts)? {
            return Ok(rule);
        }
        Ok(self.passthrough.clone())
    }

    /// One request, start to response head.
    async fn handle(self: &Rc<Self>, target: &Target, req: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        normalize(&mut parts);
        let _in_flight = Gauge::enter(&self.in_flight);
        let mut rec = Record::new(self.stats.clone(), target, &parts);
        if let Some(t) = &self.tracing {
            let name = format!("{}:{}/*", target.host, target.port);
            let random = self.rng.borrow_mut().random::<f64>();
            rec.trace = t
                .begin(&mut parts.headers, name, random)
                .map(|c| (t.clone(), c));
        }
        // Deny before routing: authentication, then authorization.
        let security = self.security.borrow().clone();
        if let Err(refusal) = security.check(&target.service, target.port, &target.peer, &mut parts)
        {
            let (outcome, resp) = match refusal {
                Refusal::Unauthenticated(why) => {
                    let mut resp = local(StatusCode::UNAUTHORIZED, why);
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(
                            "Bearer realm=\"http://waypoint\", error=\"invalid_token\"",
                        ),
                    );
                    (Outcome::Unauthenticated, resp)
                }
                Refusal::Denied(policy) => {
                    tracing::debug!(service = %target.service, %policy, "RBAC: access denied");
                    (
                        Outcome::Denied,
                        local(StatusCode::FORBIDDEN, "RBAC: access denied"),
                    )
                }
            };
            return self.answer(rec, outcome, resp);
        }
        let rule = match self.rule_for(target, &parts) {
            Ok(r) => {
                rec.route = r.route.clone();
                r
            }
            Err(()) => {
                return self.answer(
                    rec,
                    Outcome::NoRoute,
                    local(StatusCode::NOT_FOUND, "no route matched the request"),
                );
            }
        };
        if let Some(fault) = &rule.fault {
            if let Some((delay, p)) = fault.delay
                && self.chance(p)
            {
                self.stats.delays.set(self.stats.delays.get() + 1);
                runtime::time::sleep(delay).await;
            }
            if let Some((status, p)) = fault.abort
                && self.chance(p)
            {
                self.stats.aborts.set(self.stats.aborts.get() + 1);
                return self.answer(
                    rec,
                    Outcome::FaultAbort,
                    local(status, "fault filter abort"),
                );
            }
        }
        rule.request_headers.apply(&mut parts.headers);
        let r = self.rng.borrow_mut().random::<u64>();
        let Some(backend) = rule.pick_for(&target.service, r) else {
            return self.answer(
                rec,
                Outcome::NoRoute,
                local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no backend of the route has weight",
                ),
            );
        };
        let port = backend.port.unwrap_or(target.port);
        let wants_copy =
            rule.retry.as_ref().is_some_and(|r| r.attempts > 0) || rule.mirror.is_some();
        let body = if wants_copy && fits(&body.size_hint()) {
            match Limited::collect(body).await {
                Ok(bytes) => ReqBody::Replay(bytes),
                Err(e) => {
                    return self.answer(
                        rec,
                        Outcome::ClientError,
                        local(
                            StatusCode::BAD_REQUEST,
                            &format!("reading the request body: {e}"),
                        ),
                    );
                }
            }
        } else {
            ReqBody::Stream(Some(Counted {
                inner: body,
                n: rec.request_bytes.clone(),
            }))
        };
        if let ReqBody::Replay(b) = &body {
            rec.request_bytes.set(b.len() as u64);
        }
        let head = Head::of(&parts);
        if let (Some(m), ReqBody::Replay(bytes)) = (&rule.mirror, &body)
            && self.chance(m.fraction)
        {
            let port = m.backend.port.unwrap_or(target.port);
            self.mirror(
                head.shadow(),
                bytes.clone(),
                m.backend.service.clone(),
                port,
            );
        }
        let attempts = self.attempts(&rule, &backend.service, port, &head, body);
        let result = match rule.request_timeout {
            Some(t) => runtime::time::timeout(t, attempts)
                .await
                .unwrap_or(Err(SendError::Timeout)),
            None => attempts.await,
        };
        let (outcome, mut resp) = match result {
            Ok((resp, endpoint)) => {
                rec.endpoint = Some(endpoint);
                (Outcome::Forwarded, resp)
            }
            Err(e) => e.answer(),
        };
        strip_hop_by_hop(resp.headers_mut());
        rule.response_headers.apply(resp.headers_mut());
        self.answer(rec, outcome, resp)
    }

    /// The response, with its record riding on the body: counted and logged when the body
    /// ends (or the client goes away).
    fn answer(&self, mut rec: Record, outcome: Outcome, resp: Response<Body>) -> Response<Body> {
        rec.code = resp.status().as_u16();
        rec.outcome = outcome;
        resp.map(|inner| {
            Body::new(Finish {
                inner,
                rec: Some(Pending {
                    record: rec,
                    response_bytes: 0,
                }),
            })
        })
    }

    /// The attempts at one backend, under the rule's retry policy.
    async fn attempts(
        &self,
        rule: &Rule,
        service: &ServiceRef,
        port: u16,
        head: &Head,
        mut body: ReqBody,
    ) -> Result<(Response<Body>, Endpoint), SendError> {
        let retry = rule.retry.as_ref();
        let max_retries = match (&body, retry) {
            (ReqBody::Replay(_), Some(r)) => r.attempts,
            _ => 0,
        };
        let mut retried = 0;
        let mut _retrying: Option<Gauge> = None;
        loop {
            let req = head.request(body.take());
            let send = self.send(service, port, req);
            let res = match retry.and_then(|r| r.per_try_timeout) {
                Some(t) => runtime::time::timeout(t, send)
                    .await
                    .unwrap_or(Err(SendError::Timeout)),
                None => send.await,
            };
            let again = retried < max_retries
                && retry.is_some_and(|r| match &res {
                    Ok((resp, _)) => r.retries_status(resp.status().as_u16()),
                    Err(e) => e.retried_by(r),
                });
            if !again {
                return res;
            }
            if !self.budget_allows(retry) {
                self.stats
                    .retries_over_budget
                    .set(self.stats.retries_over_budget.get() + 1);
                return res;
            }
            drop(res);
            retried += 1;
            self.stats.retries.set(self.stats.retries.get() + 1);
            if _retrying.is_none() {
                _retrying = Some(Gauge::enter(&self.retries_in_flight));
            }
            if let Some(r) = retry
                && !r.backoff.is_zero()
            {
                // Jittered as Envoy does: uniformly in [0, backoff × 2^(n-1)], capped at 10×.
                let cap = r
                    .backoff
                    .saturating_mul(1 << (retried - 1).min(3))
                    .min(r.backoff * 10);
                let pause = cap.mul_f64(self.rng.borrow_mut().random::<f64>());
                runtime::time::sleep(pause).await;
            }
        }
    }

    /// Envoy's retry budget: concurrent retries at most `budget_percent` of the requests in
    /// flight on this core, but always `min_retry_concurrency`.
    fn budget_allows(&self, retry: Option<&Retry>) -> bool {
        let Some(r) = retry else { return false };
        let active = f64::from(self.in_flight.get());
        let allowed = (active * r.budget_percent)
            .floor()
            .max(f64::from(r.min_retry_concurrency));
        f64::from(self.retries_in_flight.get()) < allowed
    }

    /// One attempt: a pooled or new HTTP/1.1 connection to an endpoint, the request, the
    /// response head. The connection goes back to the pool when the response body ends.
    async fn send(
        &self,
        service: &ServiceRef,
        port: u16,
        req: Request<Body>,
    ) -> Result<(Response<Body>, Endpoint), SendError> {
        if req.version() == Version::HTTP_2 {
            return self.send_h2(service, port, req).await;
        }
        let key = (service.clone(), port);
        let mut sender = None;
        while let Some((mut s, endpoint)) = self.pooled(&key) {
            // A kept connection finishes its previous exchange before it takes another;
            // one the endpoint closed meanwhile is dropped.
            if s.ready().await.is_ok() {
                sender = Some((s, endpoint));
                break;
            }
        }
        if sender.is_none() {
            let (io, endpoint) = self
                .upstreams
                .open(service, port)
                .await
                .map_err(SendError::Upstream)?;
            let (s, conn) = hyper::client::conn::http1::Builder::new()
                .max_buf_size(MAX_HEADER_BYTES.max(8192))
                .handshake::<_, Body>(TokioIo::new(io))
                .await
                .map_err(|e| SendError::Upstream(UpstreamError::Connect(e.to_string())))?;
            runtime::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP connection ended");
                }
            })
            .detach();
            sender = Some((s, endpoint));
        }
        let (mut sender, endpoint) = sender.expect("set above");
        let resp = sender.send_request(req).await.map_err(|e| {
            // A "user" error is the request body's: the client sent a broken body (a bad
            // chunk), which is the client's fault, not the backend's.
            if e.is_user() {
                SendError::ClientBody(e.to_string())
            } else {
                SendError::Reset(e.to_string())
            }
        })?;
        let idle = self.idle.clone();
        let kept = endpoint.clone();
        let resp = resp.map(move |body| {
            Body::new(ReturnOnEnd {
                body,
                sender: Some((sender, kept)),
                key: Some(key),
                idle,
            })
        });
        Ok((resp, endpoint))
    }

    /// One attempt over HTTP/2 (gRPC): one multiplexed connection per Service port on a
    /// core, opened on first use and replaced when it closes.
    async fn send_h2(
        &self,
        service: &ServiceRef,
        port: u16,
        req: Request<Body>,
    ) -> Result<(Response<Body>, Endpoint), SendError> {
        let key = (service.clone(), port);
        let live = self
            .h2
            .borrow()
            .get(&key)
            .filter(|(s, _)| !s.is_closed())
            .cloned();
        let (mut sender, endpoint) = match live {
            Some(c) => c,
            None => {
                let (io, endpoint) = self
                    .upstreams
                    .open(service, port)
                    .await
                    .map_err(SendError::Upstream)?;
                let (s, conn) = hyper::client::conn::http2::Builder::new(LocalExec)
                    .max_header_list_size(MAX_HEADER_BYTES as u32)
                    .handshake::<_, Body>(TokioIo::new(io))
                    .await
                    .map_err(|e| SendError::Upstream(UpstreamError::Connect(e.to_string())))?;
                runtime::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                })
                .detach();
                self.h2
                    .borrow_mut()
                    .insert(key, (s.clone(), endpoint.clone()));
                (s, endpoint)
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| SendError::Reset(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| {
            if e.is_user() {
                SendError::ClientBody(e.to_string())
            } else {
                SendError::Reset(e.to_string())
            }
        })?;
        Ok((resp.map(Body::new), endpoint))
    }

    fn pooled(&self, key: &IdleKey) -> Option<(SendRequest<Body>, Endpoint)> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some((s, e)) = list.pop() {
            if !s.is_closed() {
                return Some((s, e));
            }
        }
        None
    }

    /// Sends a copy to the mirror and forgets it: the client never waits for it, and its
    /// failure is only counted.
    fn mirror(self: &Rc<Self>, head: Head, body: Bytes, service: ServiceRef, port: u16) {
        let wp = self.clone();
        self.stats.mirrors.set(self.stats.mirrors.get() + 1);
        runtime::spawn(async move {
            let req = head.request(Some(Body::full(body)));
            let sent = runtime::time::timeout(MIRROR_TIMEOUT, async {
                let (resp, _) = wp.send(&service, port, req).await?;
                // Drain it so the connection can be reused.
                let _ = resp.into_body().collect().await;
                Ok::<_, SendError>(())
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                wp.stats
                    .mirror_failures
                    .set(wp.stats.mirror_failures.get() + 1);
            }
        })
        .detach();
    }
}

/// What a client connection has been doing, for its deadlines.
struct Activity {
    /// Bytes read from the client so far.
    bytes: Cell<u64>,
    /// Requests between head and response head.
    in_flight: Cell<u32>,
    /// Since when nothing has been in flight, and the byte count then.
    idle_since: Cell<Instant>,
    bytes_at_idle: Cell<u64>,
    http2: Cell<bool>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            bytes: Cell::new(0),
            in_flight: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            bytes_at_idle: Cell::new(0),
            http2: Cell::new(false),
        }
    }

    fn begin(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    fn end(&self) {
        let n = self.in_flight.get().saturating_sub(1);
        self.in_flight.set(n);
        if n == 0 {
            self.idle_since.set(Instant::now());
            self.bytes_at_idle.set(self.bytes.get());
        }
    }

    /// Why the connection must close now, if it must.
    fn verdict(&self, limits: ConnLimits, now: Instant) -> Option<String> {
        if self.in_flight.get() > 0 {
            return None;
        }
        let idle = now.saturating_duration_since(self.idle_since.get());
        let started = self.bytes.get() > self.bytes_at_idle.get();
        if started && !self.http2.get() && idle > limits.head_timeout {
            return Some(format!(
                "the request head was not complete {:?} after it began",
                limits.head_timeout
            ));
        }
        (idle > limits.idle_timeout).then(|| format!("no request for {:?}", limits.idle_timeout))
    }
}

/// Completes when the connection's deadlines say it must close, with why. One timer per
/// connection, not per request.
async fn watchdog(activity: Rc<Activity>, limits: ConnLimits) -> String {
    let check = (limits.head_timeout.min(limits.idle_timeout) / 4).max(Duration::from_millis(50));
    loop {
        runtime::time::sleep(check).await;
        if let Some(why) = activity.verdict(limits, Instant::now()) {
            return why;
        }
    }
}

/// The client stream, counting what it reads.
struct Watched<T> {
    inner: T,
    activity: Rc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.activity.bytes.set(self.activity.bytes.get() + n);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A counter held up while something is in flight.
struct Gauge(Rc<Cell<u32>>);

impl Gauge {
    fn enter(c: &Rc<Cell<u32>>) -> Gauge {
        c.set(c.get() + 1);
        Gauge(c.clone())
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// The request body for the next attempt.
enum ReqBody {
    /// Held (small, with a retry or mirror): every attempt gets a copy.
    Replay(Bytes),
    /// Streaming: one attempt only.
    Stream(Option<Counted>),
}

impl ReqBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Replay(b) => Some(Body::full(b.clone())),
            ReqBody::Stream(s) => s.take().map(Body::new),
        }
    }
}

/// Whether a body known by its size hint fits [`REPLAY_LIMIT`].
fn fits(hint: &SizeHint) -> bool {
    hint.upper().is_some_and(|u| u <= REPLAY_LIMIT)
}

struct Limited;

impl Limited {
    async fn collect(body: Incoming) -> Result<Bytes, String> {
        let limited = http_body_util::Limited::new(body, REPLAY_LIMIT as usize);
        limited
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string())
    }
}

/// The parts of a request every attempt repeats (`Parts` is not `Clone`: its extensions).
#[derive(Clone)]
struct Head {
    method: http::Method,
    path: http::uri::PathAndQuery,
    headers: HeaderMap,
    /// gRPC (`content-type: application/grpc*`): it goes to the backend over HTTP/2, with
    /// `te: trailers`, because gRPC needs HTTP/2 and its trailers end to end.
    grpc: bool,
}

impl Head {
    /// HTTP/1.1 to the backend (HTTP/2 for gRPC): origin-form target, `Host` from the
    /// authority (HTTP/2's `:authority`), hop-by-hop headers dropped.
    fn of(parts: &Parts) -> Head {
        let grpc = is_grpc(&parts.headers);
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        if grpc {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if !headers.contains_key(header::HOST)
            && let Some(a) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            headers.insert(header::HOST, v);
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        Head {
            method: parts.method.clone(),
            path,
            headers,
            grpc,
        }
    }

    /// The mirror's copy: `Host` gets Envoy's `-shadow` suffix, so the mirror can tell.
    fn shadow(&self) -> Head {
        let mut h = self.clone();
        if let Some(host) = h.headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
            let shadow = match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("{name}-shadow:{port}")
                }
                _ => format!("{host}-shadow"),
            };
            if let Ok(v) = HeaderValue::from_str(&shadow) {
                h.headers.insert(header::HOST, v);
            }
        }
        h
    }

    fn request(&self, body: Option<Body>) -> Request<Body> {
        let body = body.unwrap_or_else(|| Body::full(Bytes::new()));
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = self.headers.clone();
        if self.grpc {
            // HTTP/2 takes the authority from the URI (`:authority`), and Host must go.
            let host = req
                .headers_mut()
                .remove(header::HOST)
                .and_then(|h| h.to_str().ok().map(str::to_string))
                .unwrap_or_else(|| "backend".to_string());
            *req.uri_mut() = http::Uri::builder()
                .scheme("http")
                .authority(host.as_str())
                .path_and_query(self.path.clone())
                .build()
                .unwrap_or_else(|_| http::Uri::from(self.path.clone()));
            *req.version_mut() = Version::HTTP_2;
        } else {
            *req.uri_mut() = http::Uri::from(self.path.clone());
            *req.version_mut() = Version::HTTP_11;
        }
        req
    }
}

/// `content-type: application/grpc` or `application/grpc+proto` etc.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Removes dot segments from the request's path before policy, routing and forwarding
/// (Envoy's `normalize_path`, Istio's default): what is checked is what is sent.
fn normalize(parts: &mut Parts) {
    let std::borrow::Cow::Owned(path) = crate::route::normalize_path(parts.uri.path()) else {
        return;
    };
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut builder = http::Uri::builder();
    if let Some(s) = parts.uri.scheme() {
        builder = builder.scheme(s.clone());
    }
    if let Some(a) = parts.uri.authority() {
        builder = builder.authority(a.clone());
    }
    if let Ok(uri) = builder.path_and_query(pq).build() {
        parts.uri = uri;
    }
}

/// Headers that belong to one hop (RFC 9110 §7.6.1), plus those the `Connection` header
/// names. HTTP/2 forbids them; HTTP/1.1 must not forward them.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for h in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(h);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// A local answer: `status`, plain text.
pub fn local(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(Body::full(Bytes::from(format!("{text}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Why an attempt produced no response.
#[derive(Debug)]
enum SendError {
    Upstream(UpstreamError),
    /// The connection broke before the response head.
    Reset(String),
    /// The client's request body could not be read (never retried).
    ClientBody(String),
    Timeout,
}

impl SendError {
    fn retried_by(&self, r: &Retry) -> bool {
        match self {
            SendError::Upstream(UpstreamError::Connect(_)) => r.on_connect_failure,
            SendError::Upstream(UpstreamError::NoEndpoint(_)) => false,
            SendError::Reset(_) => r.on_reset,
            SendError::ClientBody(_) => false,
            // A per-try timeout is worth another try (Envoy retries it on `5xx` and
            // `gateway-error` too, as a 504).
            SendError::Timeout => r.on_5xx || r.on_gateway_error || r.codes.contains(&504),
        }
    }

    fn answer(self) -> (Outcome, Response<Body>) {
        match self {
            SendError::Upstream(UpstreamError::NoEndpoint(why)) => {
                tracing::debug!(%why, "no endpoint");
                (
                    Outcome::NoHealthyUpstream,
                    local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                )
            }
            SendError::Upstream(UpstreamError::Connect(why)) => (
                Outcome::ConnectFailure,
                local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {why}"
                    ),
                ),
            ),
            SendError::Reset(why) => (
                Outcome::Reset,
                local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection termination ({why})"
                    ),
                ),
            ),
            SendError::ClientBody(why) => {
                let mut resp = local(
                    StatusCode::BAD_REQUEST,
                    &format!("the request body could not be read: {why}"),
                );
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                (Outcome::ClientError, resp)
            }
            SendError::Timeout => (
                Outcome::Timeout,
                local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
            ),
        }
    }
}

/// A response body that hands its connection back to the pool when it ends cleanly.
struct ReturnOnEnd {
    body: Incoming,
    sender: Option<(SendRequest<Body>, Endpoint)>,
    key: Option<IdleKey>,
    idle: Idle,
}

impl http_body::Body for ReturnOnEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => {
                self.sender = None;
            }
            // hyper stops polling a body that says it has ended (a known length, all read):
            // the connection goes back as soon as the last frame is out.
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            _ => {}
        }
        polled.map(|o| o.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ReturnOnEnd {
    fn drop(&mut self) {
        // A body read to its end but never polled past it (an empty one, say).
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl ReturnOnEnd {
    fn give_back(&mut self) {
        if let (Some(sender), Some(key)) = (self.sender.take(), self.key.take()) {
            let mut idle = self.idle.borrow_mut();
            let list = idle.entry(key).or_default();
            if list.len() < IDLE_PER_BACKEND {
                list.push(sender);
            }
        }
    }
}

/// A request body that counts its bytes as they stream through.
struct Counted {
    inner: Incoming,
    n: Rc<Cell<u64>>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled
            && let Some(d) = f.data_ref()
        {
            self.n.set(self.n.get() + d.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One request's telemetry, from its arrival to the end of its response body.
struct Record {
    stats: Rc<Stats>,
    start: Instant,
    service: ServiceRef,
    port: u16,
    route: Arc<str>,
    peer: Peer,
    method: http::Method,
    path: String,
    grpc: bool,
    request_bytes: Rc<Cell<u64>>,
    endpoint: Option<Endpoint>,
    code: u16,
    outcome: Outcome,
    /// The request's span, when it is sampled.
    trace: Option<(Arc<Tracing>, TraceCtx)>,
    user_agent: Option<String>,
}

/// Longest path the access log keeps (a hostile client must not fill the log).
const LOG_PATH_MAX: usize = 256;

impl Record {
    fn new(stats: Rc<Stats>, target: &Target, parts: &Parts) -> Record {
        let grpc = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let mut path = parts.uri.path().to_string();
        if path.len() > LOG_PATH_MAX {
            let mut cut = LOG_PATH_MAX;
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            path.truncate(cut);
        }
        Record {
            stats,
            start: Instant::now(),
            service: target.service.clone(),
            port: target.port,
            route: Arc::from("-"),
            peer: target.peer.clone(),
            method: parts.method.clone(),
            path,
            grpc,
            request_bytes: Rc::new(Cell::new(0)),
            endpoint: None,
            code: 0,
            outcome: Outcome::Forwarded,
            trace: None,
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(LOG_PATH_MAX).collect()),
        }
    }

    fn finish(mut self, response_bytes: u64, complete: bool) {
        let took = self.start.elapsed();
        let request_bytes = self.request_bytes.get();
        if let Some((tracing, ctx)) = self.trace.take() {
            use opentelemetry::KeyValue;
            let mut attrs = vec![
                KeyValue::new("component", "proxy"),
                KeyValue::new("http.method", self.method.to_string()),
                KeyValue::new("http.url", self.path.clone()),
                KeyValue::new("http.status_code", i64::from(self.code)),
                KeyValue::new("response_flags", self.outcome.flag()),
                KeyValue::new("request_size", request_bytes as i64),
                KeyValue::new("response_size", response_bytes as i64),
                KeyValue::new(
                    "upstream_cluster",
                    format!("outbound|{}||{}", self.port, self.service),
                ),
                KeyValue::new("istio.namespace", self.service.namespace.to_string()),
            ];
            if let Some(e) = &self.endpoint {
                attrs.push(KeyValue::new("upstream_address", e.addr.to_string()));
            }
            if let Some(a) = self.peer.addr {
                attrs.push(KeyValue::new("peer.address", a.ip().to_string()));
            }
            if let Some(ua) = &self.user_agent {
                attrs.push(KeyValue::new("user_agent", ua.clone()));
            }
            let error = self.code >= 500 || !complete;
            tracing.end(ctx, error, attrs);
        }
        let key = Key {
            service: self.service.clone(),
            route: self.route.clone(),
            code: self.code,
            outcome: self.outcome,
            source: self.peer.workload.clone(),
            source_principal: self.peer.principal.clone(),
            endpoint: self.endpoint.as_ref().map(|e| e.uid.clone()),
            grpc: self.grpc,
        };
        self.stats.record(key, took, request_bytes, response_bytes);
        let src_addr = self.peer.addr.map(|a| a.to_string());
        let dst_addr = self.endpoint.as_ref().map(|e| e.addr.to_string());
        tracing::event!(
            target: "access",
            tracing::Level::INFO,
            src.addr = src_addr.as_deref().unwrap_or("-"),
            src.workload = self.peer.workload.as_deref().unwrap_or("-"),
            src.identity = self.peer.principal.as_deref().unwrap_or("-"),
            dst.service = %self.service,
            dst.port = self.port,
            dst.workload = self.endpoint.as_ref().map_or("-", |e| &*e.uid),
            dst.addr = dst_addr.as_deref().unwrap_or("-"),
            route = &*self.route,
            http.method = %self.method,
            http.path = %self.path,
            http.status = self.code,
            response_flags = self.outcome.flag(),
            complete,
            bytes_recv = request_bytes,
            bytes_sent = response_bytes,
            duration = %format_args!("{}ms", took.as_millis()),
            "request complete"
        );
    }
}

/// A response body that finishes its request's record when it ends or is dropped.
struct Finish {
    inner: Body,
    rec: Option<Pending>,
}

struct Pending {
    record: Record,
    response_bytes: u64,
}

impl http_body::Body for Finish {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(rec)) = (f.data_ref(), self.rec.as_mut()) {
                    rec.response_bytes += d.len() as u64;
                }
                // hyper stops at a body that says it ended: finish now.
                if self.inner.is_end_stream()
                    && let Some(rec) = self.rec.take()
                {
                    let n = rec.response_bytes;
                    rec.record.finish(n, true);
                }
            }
            Poll::Ready(None) => {
                if let Some(rec) = self.rec.take() {
                    let n = rec.response_bytes;
                    rec.record.finish(n, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(rec) = self.rec.take() {
                    let n = rec.response_bytes;
                    rec.record.finish(n, false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            let n = rec.response_bytes;
            // An empty body is complete without a single poll.
            rec.record.finish(n, self.inner.is_end_stream());
        }
    }
}
