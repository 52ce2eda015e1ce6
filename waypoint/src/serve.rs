//! Serving one tunnel: HTTP/1.1 or HTTP/2 (prior knowledge) parsed by hyper, each request
//! routed by the [`RouteTable`] and forwarded over HTTP/1.1 to an endpoint of the Service
//! its rule picks, through the caller's [`Upstreams`].
//!
//! Per request, in order (Envoy's order, so results compare): route match (404 when the
//! Service has routes and none match), fault delay, fault abort, a redirect (answered
//! here), request header edits, the URL rewrite (path and `Host`), the weighted backend pick, the mirror (spawned, never awaited), then attempts under the
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
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
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

use crate::dr::pool::Slot;
use crate::dr::{Limits, Outlier, PoolPolicy};
use crate::io::{LocalExec, Protocol, sniff};
use crate::route::{Backend, CorsStep, Retry, RouteTable, Rule, ServiceRef};
use crate::security::{Peer, Refusal, SecurityTable, Through};
use crate::stats::{Key, Messages, Outcome, Stats};
use crate::telemetry::{Plan, TelemetryTable};
use crate::trace::{TraceCtx, Tracing};

mod authorize;
mod body;
mod conn;
mod ext_authz;
mod inbound;
mod mirror;
mod pool;
mod record;
mod request;
mod tee;
mod upstream;
mod websocket;

pub use body::{Body, BoxError};
use body::{Counted, Finish, Holding, Pending, ReturnOnEnd};
pub use conn::ConnLimits;
use conn::{Activity, Watched, watchdog};
use inbound::Inbound;
use pool::{Conn, Idle};
use record::{LOG_PATH_MAX, Record};
pub use request::local;
use request::{
    Head, Limited, Local, ReqBody, SendError, X_REQUEST_ID, ensure_request_id, fits, is_websocket,
    normalize, rewrite, strip_hop_by_hop,
};
use tee::Tee;
use upstream::{Active, H2Conn, Health, Load, Tried};
pub use upstream::{Host, Picked, Upstream, cluster_name};
use websocket::{Upgraded, splice};

/// Largest request body held for a retry or a mirror. A body of unknown length or larger
/// streams: to the first attempt, kept for a retry only while it fits (`serve/tee.rs`), and
/// to a mirror as it is read (`serve/mirror.rs`); the waypoint never buffers a whole upload.
/// 64 KiB as Envoy's default per-request buffer for retries.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// Idle HTTP/1.1 connections kept per endpoint on a core. Enough for the concurrency one
/// client connection's HTTP/2 streams produce; more are closed when done.
pub const IDLE_PER_BACKEND: usize = 64;

/// Largest request head (HTTP/1.1: request line and headers) and header list (HTTP/2) a
/// client may send. Larger is refused (431), and the connection's buffer stays bounded.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Concurrent HTTP/2 streams per client connection (each holds an upstream request).
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// A mirror that takes longer than this is dropped: its copy must not hold memory for long.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// The same for a mirror fed by a body that streams: it lasts as long as the request's body
/// does (a gRPC stream, a long upload), so it gets longer; what it holds meanwhile is
/// bounded by its queue (`serve/mirror.rs`), and this bounds how long a mirror that never
/// answers keeps a connection.
pub const MIRROR_STREAM_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an upstream could not be had.
#[derive(Debug, Clone)]
pub enum UpstreamError {
    /// The Service has no healthy endpoint (not retried).
    NoEndpoint(String),
    /// An endpoint was chosen and could not be reached (retried on `connect-failure`).
    Connect(String),
}

/// How the waypoint reaches a Service's endpoints: the caller knows the mesh (which
/// endpoints a Service or subset has, and how to balance among them) and how to dial one
/// (an HBONE stream to the endpoint's node, or plain TCP outside the mesh). The waypoint
/// picks an endpoint per request and keeps the connections, per endpoint.
pub trait Upstreams: 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + 'static;

    /// The endpoint for the next request to `to`: one of its healthy endpoints (of its
    /// subset, if it names one), by the balancing its DestinationRule asks for, leaving
    /// out endpoints outlier detection ejected. `host(addr)` is what this core knows of the
    /// endpoint at `addr`.
    fn pick(
        &self,
        to: &Upstream,
        host: &dyn Fn(SocketAddr) -> Host,
    ) -> Result<Picked, UpstreamError>;

    /// The connection pool limits of `to`'s DestinationRule (the Service's, or its
    /// subset's), if it sets any; the same every [`Picked::limits`] for `to` carries.
    fn limits(&self, to: &Upstream) -> Option<Arc<Limits>>;

    /// The consistent hashing `to`'s DestinationRule asks for, if it does: the waypoint
    /// hashes each request's key by it and sets [`Upstream::hash`] before the pick.
    fn hash_policy(&self, to: &Upstream) -> Option<Arc<crate::dr::HashPolicy>>;

    /// The Envoy cluster istiod gives `to` in this waypoint (what Envoy's access log and
    /// spans name): [`cluster_name`]'s, with `to`'s hostname, bound when `to`'s Service
    /// uses this waypoint. `None` when the mesh does not know `to`.
    fn cluster_name(&self, to: &Upstream) -> Option<String>;

    /// This side's address on the socket that carries `io` (for an HBONE stream, its
    /// connection's socket to the endpoint's node), for the access log's
    /// `%UPSTREAM_LOCAL_ADDRESS%`; `None` if it has none.
    fn local_addr(io: &Self::Io) -> Option<SocketAddr>;

    /// A new byte stream to `endpoint`, which [`Upstreams::pick`] chose.
    #[allow(clippy::type_complexity)]
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> Pin<Box<dyn Future<Output = Result<Self::Io, UpstreamError>>>>;
}

/// The endpoint an upstream connection reached (for telemetry: Istio's `destination_*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The endpoint workload's uid.
    pub uid: Arc<str>,
    pub addr: SocketAddr,
}

/// Where an attempt's request went: the endpoint, and this side's address on the socket
/// that carried it.
#[derive(Debug, Clone)]
pub struct Reached {
    pub endpoint: Endpoint,
    pub local: Option<SocketAddr>,
}

/// What the tunnel was addressed to: the Service and Service port a node proxy sent here,
/// and who sent it (the tunnel's verified peer: the source pod's identity).
#[derive(Debug, Clone)]
pub struct Target {
    pub service: ServiceRef,
    /// How a request that goes to the Service itself (a rule without backends, no route)
    /// names it upstream, when `service` does not name it alone: its hostname, for one of a
    /// ServiceEntry's hosts (each a Service of the entry's namespace and name).
    pub upstream: Option<ServiceRef>,
    /// The Service's hostname (span names, `host:port/*` as Envoy's).
    pub host: Arc<str>,
    pub port: u16,
    pub peer: Peer,
    /// The address the client called (the tunnel's CONNECT authority), for the access
    /// log's `%DOWNSTREAM_LOCAL_ADDRESS%`.
    pub local: Option<SocketAddr>,
}

/// `send` under a timeout, if there is one. Not an `async fn`: `runtime::time::Timeout`
/// holds the future once, and this is the largest future of a request.
fn within<T>(
    timeout: Option<Duration>,
    send: impl Future<Output = Result<T, SendError>>,
) -> impl Future<Output = Result<T, SendError>> {
    runtime::time::timeout_if(timeout, send).map(|r| r.unwrap_or(Err(SendError::Timeout)))
}

/// One core's waypoint: the route table in force, the upstream connections, the counters.
pub struct Waypoint<U: Upstreams> {
    table: RefCell<Arc<RouteTable>>,
    security: RefCell<Arc<SecurityTable>>,
    passthrough: Arc<Rule>,
    upstreams: U,
    idle: Idle,
    /// HTTP/2 connections (gRPC), one per endpoint.
    h2: RefCell<HashMap<Endpoint, H2Conn>>,
    load: Load,
    /// Outlier detection's view of endpoints with recent errors or ejections.
    health: RefCell<HashMap<SocketAddr, Health>>,
    rng: RefCell<SmallRng>,
    in_flight: Rc<Cell<u32>>,
    retries_in_flight: Rc<Cell<u32>>,
    /// Spans, access log and metrics per Service (the Telemetry API).
    telemetry: RefCell<Arc<TelemetryTable>>,
    limits: ConnLimits,
    /// The waypoint's own Gateway (namespace and name): policies that target it apply to
    /// every request.
    gateway: Option<ServiceRef>,
    pub stats: Rc<Stats>,
}

impl<U: Upstreams> Waypoint<U> {
    pub fn new(
        table: Arc<RouteTable>,
        security: Arc<SecurityTable>,
        upstreams: U,
        stats: Rc<Stats>,
        telemetry: Arc<TelemetryTable>,
        limits: ConnLimits,
        gateway: Option<ServiceRef>,
    ) -> Rc<Waypoint<U>> {
        Rc::new(Waypoint {
            table: RefCell::new(table),
            security: RefCell::new(security),
            passthrough: Arc::new(Rule::passthrough()),
            upstreams,
            idle: Rc::default(),
            h2: RefCell::default(),
            load: Rc::default(),
            health: RefCell::default(),
            rng: RefCell::new(SmallRng::from_os_rng()),
            in_flight: Rc::new(Cell::new(0)),
            retries_in_flight: Rc::new(Cell::new(0)),
            telemetry: RefCell::new(telemetry),
            limits,
            gateway,
            stats,
        })
    }

    /// Routes and policies from now on (requests under way keep theirs).
    pub fn set_config(&self, table: Arc<RouteTable>, security: Arc<SecurityTable>) {
        *self.table.borrow_mut() = table;
        *self.security.borrow_mut() = security;
    }

    /// Telemetry from now on (requests under way keep their plan).
    pub fn set_telemetry(&self, table: Arc<TelemetryTable>) {
        *self.telemetry.borrow_mut() = table;
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
            let upgraded: Upgraded<U> = Rc::default();
            let slot = upgraded.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let wp = wp.clone();
                let target = target.clone();
                let act = act.clone();
                let slot = slot.clone();
                // Boxed: polling the connection by hand (below) needs an `Unpin` future.
                Box::pin(async move {
                    act.begin();
                    let resp = wp.handle(&target, req, &slot).await;
                    act.end();
                    Ok::<_, Infallible>(resp)
                })
            });
            let io = TokioIo::new(io);
            let res = match proto {
                Protocol::Http1 => {
                    // Without shutdown, so the stream is ours again after a WebSocket
                    // handshake (hyper's own upgrades need `Send` streams; ours are per core).
                    let mut conn = hyper::server::conn::http1::Builder::new()
                        .max_buf_size(MAX_HEADER_BYTES.max(8192))
                        .serve_connection(io, service);
                    let done = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await;
                    let parts = conn.into_parts();
                    let mut client = parts.io.into_inner();
                    if let Err(e) = done {
                        // hyper has written its 4xx; the stream still closes gracefully,
                        // so the answer is not lost to a reset.
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut client).await;
                        return Err(e.to_string());
                    }
                    let upstream = upgraded.borrow_mut().take();
                    return match upstream {
                        Some(upstream) => {
                            // A WebSocket is in flight until it closes: no idle deadline.
                            activity.begin();
                            splice(client, parts.read_buf, upstream).await
                        }
                        None => {
                            let _ = tokio::io::AsyncWriteExt::shutdown(&mut client).await;
                            Ok(())
                        }
                    };
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
        if let Some(rule) = table.select_for(&target.service, &target.host, target.port, parts)? {
            return Ok(rule);
        }
        Ok(self.passthrough.clone())
    }

    /// One request, start to response head.
    async fn handle(
        self: &Rc<Self>,
        target: &Target,
        req: Request<Incoming>,
        upgraded: &Upgraded<U>,
    ) -> Response<Body> {
        let websocket = is_websocket(&req);
        let (mut parts, body) = req.into_parts();
        let mut body = Inbound::new(body);
        normalize(&mut parts);
        ensure_request_id(&mut parts, &mut *self.rng.borrow_mut());
        let _in_flight = Gauge::enter(&self.in_flight);
        let table = self.telemetry.borrow().clone();
        let plan: Arc<Plan> = table.plan(&target.service).clone();
        let mut rec = Record::new(self.stats.clone(), target, &parts, &table, plan);
        if let Some(t) = &rec.plan.tracing {
            let name = format!("{}:{}/*", target.host, target.port);
            let sample = self.rng.borrow_mut().random::<f64>() < t.sampling;
            if let Some(c) = t.tracer.begin(&mut parts.headers, name, sample) {
                rec.trace = Some((t.tracer.clone(), c));
            }
        }
        // Deny before routing (`serve/authorize.rs`).
        let routed = match self
            .authorize(target, &mut parts, &mut body, websocket, &table, &mut rec)
            .await
        {
            Ok(routed) => routed,
            Err((outcome, resp)) => return self.answer(rec, outcome, resp),
        };
        let rule = match routed.unwrap_or_else(|| self.rule_for(target, &parts)) {
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
            if let Some((abort, p)) = fault.abort
                && self.chance(p)
            {
                self.stats.aborts.set(self.stats.aborts.get() + 1);
                let mut resp = local(abort.status, "fault filter abort");
                if let Some(l) = resp.extensions_mut().get_mut::<Local>() {
                    l.grpc_status = abort.grpc_status;
                }
                return self.answer(rec, Outcome::FaultAbort, resp);
            }
        }
        // CORS, after authorization and faults, before the router's own answers (Envoy's
        // filter order in a waypoint: fault, cors, router).
        if let Some(cors) = &rule.cors {
            match cors.step(&parts) {
                CorsStep::Pass => {}
                CorsStep::Allowed(origin) => rec.cors = Some((cors.clone(), origin)),
                CorsStep::Answer(headers, origin) => {
                    rec.cors = origin.map(|o| (cors.clone(), o));
                    let mut resp = Response::new(Body::full(Bytes::new()));
                    *resp.headers_mut() = headers;
                    return self.answer(rec, Outcome::CorsPreflight, resp);
                }
            }
        }
        if let Some(redirect) = &rule.redirect {
            let location = redirect.location(&parts, target.port);
            // As Envoy's router: the status and `Location`, no body.
            let mut resp = Response::new(Body::full(Bytes::new()));
            match HeaderValue::from_str(&location) {
                Ok(v) => {
                    *resp.status_mut() = redirect.status;
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                Err(_) => {
                    // Only a request path with bytes a header cannot carry gets here.
                    resp = local(
                        StatusCode::BAD_REQUEST,
                        "the redirect location is not a header value",
                    );
                }
            }
            rule.response_headers.apply(resp.headers_mut());
            return self.answer(rec, Outcome::Redirect, resp);
        }
        let r = self.rng.borrow_mut().random::<u64>();
        let parent = target.upstream.as_ref().unwrap_or(&target.service);
        let Some(backend) = rule.pick_for(parent, r) else {
            return self.answer(
                rec,
                Outcome::NoRoute,
                local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no backend of the route has weight",
                ),
            );
        };
        // A backend's own edits and the rule's, in istiod's order (`processDestination`):
        // a rule's one backend has its edits after the rule's (they share the route's
        // lists, the destination's last), a weighted split's go first (the weighted
        // cluster's, which the route's then override).
        let backend_last = rule.backend_edits_last();
        let own = backend.edits.as_deref();
        if let Some(e) = own.filter(|_| !backend_last) {
            e.request.apply(&mut parts.headers);
        }
        rule.request_headers.apply(&mut parts.headers);
        if let Some(e) = own.filter(|_| backend_last) {
            e.request.apply(&mut parts.headers);
        }
        if let Some(rw) = &rule.rewrite {
            rewrite(&mut parts, rw);
        }
        let mut to = Upstream::of(&backend, target.port);
        if rec.wants_cluster() {
            rec.cluster = self.upstreams.cluster_name(&to);
        }
        let mut set_cookie = None;
        if let Some(policy) = self.upstreams.hash_policy(&to) {
            let made = self.rng.borrow_mut().random::<u64>();
            let affinity = policy.affinity(&parts, target.peer.addr, made);
            to.hash = affinity.hash;
            set_cookie = affinity.set_cookie;
        }
        let result = if websocket {
            // A handshake has no body to replay or mirror: one attempt, on a connection of
            // its own that becomes the WebSocket's if the backend switches protocols.
            let head = Head::of(&parts).websocket();
            let send = self.send_websocket(&to, head.request(None), upgraded);
            within(rule.request_timeout, send).await
        } else {
            let retried = rule.retry.as_ref().is_some_and(|r| r.attempts > 0);
            let wants_copy = retried || rule.mirror.is_some();
            let mirror_to = rule
                .mirror
                .as_ref()
                .filter(|m| self.chance(m.fraction))
                .map(|m| Upstream::of(&m.backend, target.port));
            let held = wants_copy && fits(&body.size_hint());
            // A body that streams reaches the mirror as the request reads it.
            let (tap, copy) = match (&mirror_to, held) {
                (Some(_), false) => {
                    let (tap, copy) = mirror::channel();
                    (Some(tap), Some(copy))
                }
                _ => (None, None),
            };
            let counted = |inner| Counted {
                inner,
                n: rec.request_bytes.clone(),
                messages: rec
                    .messages
                    .as_ref()
                    .map(|m| (crate::grpc::Frames::default(), m.clone())),
                mirror: tap,
            };
            let body = if held {
                match Limited::collect(body).await {
                    Ok(bytes) => {
                        if let Some(m) = &rec.messages {
                            m.request.set(crate::grpc::Frames::default().scan(&bytes));
                        }
                        ReqBody::Replay(bytes)
                    }
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
            } else if retried {
                // Length unknown or over the limit (gRPC, chunked): streamed, and kept
                // while it fits so that a retry can start over.
                ReqBody::Tee(Tee::new(Body::new(counted(body))))
            } else {
                ReqBody::Stream(Some(counted(body)))
            };
            if let ReqBody::Replay(b) = &body {
                rec.request_bytes.set(b.len() as u64);
            }
            let head = Head::of(&parts);
            if let Some(to) = mirror_to {
                match (&body, copy) {
                    (ReqBody::Replay(bytes), _) => {
                        self.mirror(head.shadow(), Body::full(bytes.clone()), to, MIRROR_TIMEOUT)
                    }
                    (_, Some(copy)) => {
                        self.mirror(head.shadow(), Body::new(copy), to, MIRROR_STREAM_TIMEOUT)
                    }
                    _ => {}
                }
            }
            within(rule.request_timeout, self.attempts(&rule, &to, &head, body)).await
        };
        let (outcome, mut resp) = match result {
            Ok((resp, reached)) => {
                rec.endpoint = Some(reached.endpoint);
                rec.upstream_local = reached.local;
                (Outcome::Forwarded, resp)
            }
            Err(e) => {
                if let SendError::Upstream(UpstreamError::Connect(why)) = &e {
                    rec.transport_failure = Some(why.chars().take(LOG_PATH_MAX).collect());
                }
                e.answer()
            }
        };
        // A WebSocket's 101 keeps the headers that say what it switches to.
        if !(websocket && resp.status() == StatusCode::SWITCHING_PROTOCOLS) {
            strip_hop_by_hop(resp.headers_mut());
        }
        if let Some(cookie) = set_cookie
            && outcome == Outcome::Forwarded
        {
            // The cookie the waypoint made for consistent hashing (Envoy sets it so too).
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        if let Some(e) = own.filter(|_| !backend_last) {
            e.response.apply(resp.headers_mut());
        }
        rule.response_headers.apply(resp.headers_mut());
        if let Some(e) = own.filter(|_| backend_last) {
            e.response.apply(resp.headers_mut());
        }
        self.answer(rec, outcome, resp)
    }

    /// The response, with its record riding on the body: counted and logged when the body
    /// ends (or the client goes away).
    ///
    /// A gRPC client gets the waypoint's own answers (denials, faults, timeouts, no route)
    /// in gRPC's trailers-only form, as Envoy sends them, so its library reports a gRPC
    /// status and message rather than a protocol error; the telemetry keeps the HTTP code
    /// the answer stands for.
    fn answer(
        &self,
        mut rec: Record,
        outcome: Outcome,
        mut resp: Response<Body>,
    ) -> Response<Body> {
        if let Some((cors, origin)) = rec.cors.take() {
            cors.decorate(resp.headers_mut(), origin);
        }
        // What a CUSTOM policy's provider said the client gets when it allows.
        for (name, value) in std::mem::take(&mut rec.on_allow) {
            resp.headers_mut().append(name, value);
        }
        rec.code = resp.status().as_u16();
        rec.outcome = outcome;
        let resp = match resp.extensions().get::<Local>().cloned() {
            Some(l) if rec.grpc => {
                crate::grpc::trailers_only(resp, l.grpc_status, &l.text, Body::full(Bytes::new()))
            }
            _ => resp,
        };
        rec.capture_response(resp.headers());
        if rec.grpc {
            // A trailers-only answer (the backend's or ours) carries its status here.
            rec.grpc_status = crate::grpc::status_in(resp.headers());
            rec.open_stream();
        }
        resp.map(|inner| {
            Body::new(Finish {
                inner,
                rec: Some(Pending {
                    record: rec,
                    response_bytes: 0,
                    frames: crate::grpc::Frames::default(),
                }),
            })
        })
    }

    /// The attempts at one backend, under the rule's retry policy.
    async fn attempts(
        &self,
        rule: &Rule,
        to: &Upstream,
        head: &Head,
        mut body: ReqBody,
    ) -> Result<(Response<Body>, Reached), SendError> {
        let retry = rule.retry.as_ref();
        let max_retries = match (&body, retry) {
            (ReqBody::Replay(_) | ReqBody::Tee(_), Some(r)) => r.attempts,
            _ => 0,
        };
        let mut retried = 0;
        // The endpoints tried so far: a retry prefers another.
        let mut tried = Tried::new();
        let mut _retrying: Option<Gauge> = None;
        let mut _retry_slot = None;
        loop {
            let req = head.request(body.take());
            let per_try = retry.and_then(|r| r.per_try_timeout);
            let res = within(per_try, self.send(to, req, &mut tried)).await;
            let again = retried < max_retries
                && body.replayable()
                && retry.is_some_and(|r| match &res {
                    Ok((resp, _)) => r.retries_response(resp.status().as_u16(), resp.headers()),
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
            // The Service's `maxRetries`: retries in flight at once, over every core.
            if let Some(l) = self.upstreams.limits(to) {
                match l.retries.try_enter(l.policy.max_retries) {
                    Some(slot) => _retry_slot = Some(slot),
                    None => {
                        self.stats
                            .retries_overflow
                            .set(self.stats.retries_overflow.get() + 1);
                        return res;
                    }
                }
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

    /// Sends a copy to the mirror and forgets it: the client never waits for it, and its
    /// failure is only counted.
    fn mirror(self: &Rc<Self>, head: Head, body: Body, to: Upstream, timeout: Duration) {
        let wp = self.clone();
        self.stats.mirrors.set(self.stats.mirrors.get() + 1);
        runtime::spawn(async move {
            let req = head.request(Some(body));
            let sent = runtime::time::timeout(timeout, async {
                let (resp, _) = wp.send(&to, req, &mut Tried::new()).await?;
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
