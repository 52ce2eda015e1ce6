//! The control thread's HTTP endpoints: admin (config dump, log level, drain), Prometheus
//! metrics, and the readiness probe. Off the data path: plain blocking `std::net` sockets,
//! one accept thread per listener and one short-lived thread per connection.
//!
//! Invariants:
//! - Nothing a client sends can panic a thread, grow memory past [`Limits::max_head_bytes`]
//!   per connection, or hold a connection past [`Limits::request_timeout`] (the deadline
//!   covers the whole request, so a client dripping one byte at a time is cut off too).
//! - At most [`Limits::max_connections`] connections are served at once per server; more
//!   get an immediate 503 so a flood cannot starve the readiness probe of threads forever.
//! - One request per connection; every response carries `Connection: close` and a
//!   `Content-Length`. Request bodies are never interpreted (all inputs are in the query).
//! - Dropping or [`AdminServer::stop`]ping the server stops accepting and joins the accept
//!   threads; in-flight connections finish within their deadline on their own threads.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the node exposes to the admin endpoints. Implemented by the node's control state.
pub trait AdminSource: Send + Sync + 'static {
    /// The config dump (istioctl's `ztunnel-config` shape).
    fn config_dump(&self) -> serde_json::Value;
    /// `Ok` when ready to serve; else what is still pending.
    fn ready(&self) -> Result<(), String>;
    /// Prometheus text exposition (format 0.0.4).
    fn metrics(&self) -> String;
    /// The log filter in force (`tracing_subscriber::EnvFilter` syntax).
    fn log_filter(&self) -> String;
    /// The filter the process started with (what `reset` restores).
    fn default_log_filter(&self) -> String;
    /// Replaces the log filter.
    fn set_log_filter(&self, filter: &str) -> Result<(), String>;
    /// Starts a graceful drain.
    fn drain(&self);
}

/// Where each endpoint listens; `None` disables it. Also returned by
/// [`AdminServer::local_addrs`] with the bound addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminAddrs {
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub ready: Option<SocketAddr>,
}

impl Default for AdminAddrs {
    /// Istio's ports (DESIGN.md): 15000 admin, 15020 metrics, 15021 readiness, on loopback.
    fn default() -> Self {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        AdminAddrs {
            admin: Some(SocketAddr::new(lo, 15000)),
            metrics: Some(SocketAddr::new(lo, 15020)),
            ready: Some(SocketAddr::new(lo, 15021)),
        }
    }
}

/// Bounds on what one client may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Whole-request deadline: reading the head, writing the response, lingering close.
    pub request_timeout: Duration,
    /// Request line plus headers.
    pub max_head_bytes: usize,
    /// Connections served concurrently per server.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // The kubelet's probe timeout defaults to 1 s; 5 s leaves room for a loaded
            // machine and still frees a stuck connection's thread quickly.
            request_timeout: Duration::from_secs(5),
            // No route needs more than a short query; 8 KiB is the common server default
            // (Envoy's max_request_headers_kb is larger, but it serves arbitrary traffic).
            max_head_bytes: 8 * 1024,
            // Probes, a scraper and an operator: a handful at once. Each costs one thread.
            max_connections: 32,
        }
    }
}

/// Running admin listeners. Drop or [`AdminServer::stop`] to stop them.
pub struct AdminServer {
    local: AdminAddrs,
    stop: Arc<AtomicBool>,
    accept_threads: Vec<(SocketAddr, JoinHandle<()>)>,
}

impl AdminServer {
    /// The addresses actually bound (ports resolved when asked for port 0).
    pub fn local_addrs(&self) -> AdminAddrs {
        self.local
    }

    /// Stop accepting and join the accept threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (addr, handle) in self.accept_threads.drain(..) {
            // A blocking accept() only returns on a connection: make one to wake it.
            let target = wake_addr(addr);
            match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                Ok(_) => {
                    let _ = handle.join();
                }
                Err(e) => {
                    // Do not hang the caller; the thread ends at its next accept.
                    tracing::warn!(%addr, error = %e, "could not wake admin listener; detaching");
                }
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Connect target that reaches a listener bound to `addr` (unspecified → loopback).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Start the listeners in `addrs` with default [`Limits`].
pub fn start(addrs: &AdminAddrs, source: Arc<dyn AdminSource>) -> io::Result<AdminServer> {
    start_with(addrs, source, Limits::default())
}

/// Start the listeners in `addrs`. A bind error names the endpoint and address, and leaves
/// nothing running.
pub fn start_with(
    addrs: &AdminAddrs,
    source: Arc<dyn AdminSource>,
    limits: Limits,
) -> io::Result<AdminServer> {
    let mut server = AdminServer {
        local: AdminAddrs {
            admin: None,
            metrics: None,
            ready: None,
        },
        stop: Arc::new(AtomicBool::new(false)),
        accept_threads: Vec::new(),
    };
    let shared = Arc::new(Shared {
        source,
        limits,
        active: AtomicUsize::new(0),
    });
    let endpoints = [
        (Endpoint::Admin, addrs.admin),
        (Endpoint::Metrics, addrs.metrics),
        (Endpoint::Ready, addrs.ready),
    ];
    for (endpoint, addr) in endpoints {
        let Some(addr) = addr else { continue };
        // On error `server` drops here, stopping the listeners already started.
        let listener = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{} listener on {addr}: {e}", endpoint.name()),
            )
        })?;
        let local = listener.local_addr()?;
        let (stop, shared) = (Arc::clone(&server.stop), Arc::clone(&shared));
        let handle = std::thread::Builder::new()
            .name(format!("{}-accept", endpoint.name()))
            .spawn(move || accept_loop(listener, endpoint, stop, shared))?;
        server.accept_threads.push((local, handle));
        match endpoint {
            Endpoint::Admin => server.local.admin = Some(local),
            Endpoint::Metrics => server.local.metrics = Some(local),
            Endpoint::Ready => server.local.ready = Some(local),
        }
        tracing::info!(endpoint = endpoint.name(), addr = %local, "admin endpoint listening");
    }
    Ok(server)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Admin,
    Metrics,
    Ready,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Admin => "admin",
            Endpoint::Metrics => "metrics",
            Endpoint::Ready => "readiness",
        }
    }
}

struct Shared {
    source: Arc<dyn AdminSource>,
    limits: Limits,
    active: AtomicUsize,
}

/// Holds one slot of `Shared::active`; released even if the handler panics.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: TcpListener,
    endpoint: Endpoint,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(endpoint = endpoint.name(), error = %e, "admin accept failed");
                // EMFILE and friends repeat immediately; back off instead of spinning a core.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.limits.max_connections {
            let _slot = Slot(Arc::clone(&shared));
            // Answered on the accept thread, so kept short: long enough for a loopback
            // client's request to arrive and be drained (no RST eating the 503), short
            // enough that a flood only slows accepting, which is the backpressure we want.
            let deadline = Instant::now() + Duration::from_millis(100);
            let mut stream = stream;
            let resp = Response::text(503, "too many admin connections\n");
            if write_response(&stream, &resp, false, deadline).is_ok() {
                linger(&mut stream, deadline);
            }
            continue;
        }
        let slot = Slot(Arc::clone(&shared));
        let spawned = std::thread::Builder::new()
            .name(format!("{}-conn", endpoint.name()))
            .spawn(move || serve(stream, endpoint, &slot.0));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not spawn admin connection thread");
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
}

/// Why a request head was rejected.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Connection closed or timed out before a full head arrived.
    Incomplete,
    /// Head larger than the limit (431).
    TooLarge,
    /// Not HTTP/1.x (505).
    Version,
    /// Anything else (400), with a reason for the response body.
    Malformed(&'static str),
}

/// Read until the blank line ending the head, within `max` bytes and by `deadline`.
fn read_head(stream: &mut TcpStream, max: usize, deadline: Instant) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut scanned: usize = 0;
    loop {
        // Rescan only the new bytes (and 3 before them, for a terminator split across reads).
        if let Some(end) = head_end(&buf[scanned.saturating_sub(3)..]) {
            buf.truncate(scanned.saturating_sub(3) + end);
            return Ok(buf);
        }
        scanned = buf.len();
        if buf.len() >= max {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Incomplete);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Incomplete),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Incomplete),
        }
    }
}

/// Index just past the blank line (`\r\n\r\n`, or bare `\n\n` per RFC 9112 §2.2).
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") || buf[i..].starts_with(b"\n\r\n") {
            Some(i + if buf[i + 1] == b'\r' { 3 } else { 2 })
        } else {
            None
        }
    })
}

fn is_tchar(b: u8) -> bool {
    // RFC 9110 §5.6.2 token characters.
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parse a request head (RFC 9112 §3 request line, §5 field lines). Header values are
/// checked for shape but not used: no route depends on them.
pub(crate) fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(
            "request line is not METHOD SP TARGET SP VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(HeadError::Malformed("bad method"));
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HeadError::Malformed(
            "request target must be an absolute path",
        ));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err(HeadError::Version),
        _ => return Err(HeadError::Malformed("bad HTTP version")),
    }
    for field in lines {
        if field.is_empty() {
            continue;
        }
        let Some((name, _value)) = field.split_once(':') else {
            return Err(HeadError::Malformed("header line without a colon"));
        };
        // No whitespace between name and colon (RFC 9112 §5.1), and no obs-fold.
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(HeadError::Malformed("bad header name"));
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
    })
}

/// The value of `key` in a query string, percent-decoded. `Err` on bad escapes or non-UTF-8.
pub(crate) fn query_param(query: &str, key: &str) -> Result<Option<String>, &'static str> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return percent_decode(v).map(Some);
        }
    }
    Ok(None)
}

fn percent_decode(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or("truncated percent escape")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "bad percent escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent escape")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "query value is not UTF-8")
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    allow: Option<&'static str>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            allow: None,
        }
    }

    fn not_allowed(allow: &'static str) -> Response {
        Response {
            allow: Some(allow),
            ..Response::text(405, format!("method not allowed; use {allow}\n"))
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn serve(mut stream: TcpStream, endpoint: Endpoint, shared: &Shared) {
    let deadline = Instant::now() + shared.limits.request_timeout;
    let (resp, head_only) = match read_head(&mut stream, shared.limits.max_head_bytes, deadline)
        .and_then(|h| parse_head(&h))
    {
        Ok(req) => {
            let head_only = req.method == "HEAD";
            (route(endpoint, &req, shared), head_only)
        }
        // Nothing complete arrived: there is no one to answer.
        Err(HeadError::Incomplete) => return,
        Err(HeadError::TooLarge) => (Response::text(431, "request head too large\n"), false),
        Err(HeadError::Version) => (Response::text(505, "only HTTP/1.x is served\n"), false),
        Err(HeadError::Malformed(why)) => (Response::text(400, format!("{why}\n")), false),
    };
    // The answer gets its own time: a route may take long on purpose (a CPU profile).
    let deadline = deadline.max(Instant::now() + shared.limits.request_timeout);
    if write_response(&stream, &resp, head_only, deadline).is_ok() {
        linger(&mut stream, deadline);
    }
}

/// Allow both GET and HEAD where GET is allowed (RFC 9110 §9.1).
fn is_get(req: &Request) -> bool {
    req.method == "GET" || req.method == "HEAD"
}

const ADMIN_INDEX: &str = "ringmesh admin\n\
GET  /config_dump                  workloads, services, policies, certificates (istioctl's shape)\n\
GET  /logging                      the log filter in force\n\
POST /logging                      the same (as ztunnel)\n\
POST /logging?level=F              add directives to the filter: a level, or target=level (or target:level), comma-separated\n\
POST /logging?level=F&reset        the filter the process started with, then F\n\
POST /quitquitquit                 drain and exit\n\
POST /drain                        drain and exit\n\
GET  /debug/pprof/profile?seconds=N a CPU profile of every thread over N s (default 10, 1..=60), pprof protobuf\n";

/// A profile's length when none is asked for (ztunnel's and Go's default).
const PROFILE_DEFAULT_SECS: u64 = 10;
/// The longest profile: the admin connection's thread is held for its length.
const PROFILE_MAX_SECS: u64 = 60;
/// Samples per second: 99, not 100, so sampling does not beat with 10 ms timers.
const PROFILE_HZ: i32 = 99;

/// One profile at a time: the sampler is process-wide (`SIGPROF`).
static PROFILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Samples every thread's stack for `length` and answers with the profile in pprof's
/// protobuf format (`go tool pprof`, `pprof -http`), as ztunnel's `/debug/pprof/profile`.
fn cpu_profile(length: std::time::Duration) -> Response {
    use pprof::protos::Message as _;
    use std::sync::atomic::Ordering;
    if PROFILING.swap(true, Ordering::AcqRel) {
        return Response::text(
            503,
            "a profile is already being taken; try again after it\n",
        );
    }
    let result = (|| {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(PROFILE_HZ)
            // Unwinding from inside these can deadlock in the signal handler.
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| format!("starting the profiler: {e}"))?;
        std::thread::sleep(length);
        let report = guard
            .report()
            .build()
            .map_err(|e| format!("building the report: {e}"))?;
        let profile = report
            .pprof()
            .map_err(|e| format!("encoding the profile: {e}"))?;
        Ok::<_, String>(profile.encode_to_vec())
    })();
    PROFILING.store(false, Ordering::Release);
    match result {
        Ok(body) => Response {
            status: 200,
            content_type: "application/octet-stream",
            body,
            allow: None,
        },
        Err(e) => Response::text(500, format!("{e}\n")),
    }
}

/// `POST /logging`'s answer: the filter in force, as ztunnel words it.
fn current_level(src: &dyn AdminSource) -> Response {
    Response::text(200, format!("current log level is {}\n", src.log_filter()))
}

/// Checks ztunnel's (and istioctl's) `level` directives and turns them into EnvFilter ones:
/// each clause is a level (`off|error|warn|info|debug|trace`, and istioctl's `warning` and
/// `critical`) or `target=level` / `target:level`.
pub(crate) fn level_directives(level: &str) -> Result<String, String> {
    let norm = |l: &str| -> Option<&'static str> {
        Some(match l.trim() {
            "off" => "off",
            "error" | "critical" => "error",
            "warn" | "warning" => "warn",
            "info" => "info",
            "debug" => "debug",
            "trace" => "trace",
            _ => return None,
        })
    };
    let mut out = Vec::new();
    for clause in level.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if let Some(l) = norm(clause) {
            out.push(l.to_string());
            continue;
        }
        // `target=level`, or istioctl's `target:level` (targets may hold `::`).
        let split = match clause.split_once('=') {
            Some(p) => Some(p),
            None => clause.rsplit_once(':'),
        };
        let Some((target, l)) = split else {
            return Err(format!("invalid level provided: {clause}"));
        };
        let target_ok = !target.is_empty()
            && target
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
        match (target_ok, norm(l)) {
            (true, Some(l)) => out.push(format!("{target}={l}")),
            _ => return Err(format!("invalid level provided: {clause}")),
        }
    }
    Ok(out.join(","))
}

fn route(endpoint: Endpoint, req: &Request, shared: &Shared) -> Response {
    let src = &*shared.source;
    match (endpoint, req.path.as_str()) {
        (Endpoint::Admin, "/") if is_get(req) => Response::text(200, ADMIN_INDEX),
        (Endpoint::Admin, "/config_dump") if is_get(req) => {
            match serde_json::to_vec_pretty(&src.config_dump()) {
                Ok(mut body) => {
                    body.push(b'\n');
                    Response {
                        status: 200,
                        content_type: "application/json",
                        body,
                        allow: None,
                    }
                }
                Err(e) => Response::text(500, format!("config dump: {e}\n")),
            }
        }
        (Endpoint::Admin, "/logging") if is_get(req) => current_level(src),
        (Endpoint::Admin, "/logging") if req.method == "POST" => {
            let query = req.query.as_deref().unwrap_or("");
            let level = match query_param(query, "level") {
                Ok(l) => l.unwrap_or_default(),
                Err(why) => return Response::text(400, format!("level: {why}\n{ADMIN_INDEX}")),
            };
            let reset = query
                .split('&')
                .any(|p| p == "reset" || p.starts_with("reset="));
            if level.trim().is_empty() && !reset {
                return current_level(src);
            }
            let directives = match level_directives(&level) {
                Ok(d) => d,
                Err(why) => return Response::text(400, format!("{why}\n{ADMIN_INDEX}")),
            };
            let base = if reset {
                src.default_log_filter()
            } else {
                src.log_filter()
            };
            let filter = match (base.is_empty(), directives.is_empty()) {
                (_, true) => base,
                (true, false) => directives,
                (false, false) => format!("{base},{directives}"),
            };
            match src.set_log_filter(&filter) {
                Ok(()) => {
                    tracing::info!(filter = %filter, "log filter changed through the admin API");
                    current_level(src)
                }
                Err(why) => Response::text(400, format!("Failed to set new level: {why}\n")),
            }
        }
        (Endpoint::Admin, "/debug/pprof/profile") if is_get(req) => {
            let seconds = match query_param(req.query.as_deref().unwrap_or(""), "seconds") {
                Ok(None) => PROFILE_DEFAULT_SECS,
                Ok(Some(v)) => match v.parse::<u64>() {
                    Ok(n) if (1..=PROFILE_MAX_SECS).contains(&n) => n,
                    _ => {
                        return Response::text(
                            400,
                            format!(
                                "seconds: {v:?} is not a whole number from 1 to {PROFILE_MAX_SECS}\n"
                            ),
                        );
                    }
                },
                Err(why) => return Response::text(400, format!("seconds: {why}\n")),
            };
            cpu_profile(std::time::Duration::from_secs(seconds))
        }
        (Endpoint::Admin, "/quitquitquit") if req.method == "POST" => {
            tracing::info!("shutdown requested through the admin API (/quitquitquit)");
            src.drain();
            Response::text(200, "shutdown now\n")
        }
        (Endpoint::Admin, "/drain") if req.method == "POST" => {
            tracing::info!("drain requested through the admin API");
            src.drain();
            Response::text(200, "draining\n")
        }
        (Endpoint::Metrics, "/metrics" | "/stats/prometheus") if is_get(req) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: src.metrics().into_bytes(),
            allow: None,
        },
        (Endpoint::Ready, "/healthz/ready") if is_get(req) => match src.ready() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(pending) => Response::text(500, format!("not ready, pending: {pending}\n")),
        },
        // Known paths with the wrong method.
        (Endpoint::Admin, "/" | "/config_dump")
        | (Endpoint::Metrics, "/metrics" | "/stats/prometheus") => {
            Response::not_allowed("GET, HEAD")
        }
        (Endpoint::Admin, "/quitquitquit") => Response::not_allowed("POST"),
        (Endpoint::Ready, "/healthz/ready") => Response::not_allowed("GET, HEAD"),
        (Endpoint::Admin, "/logging") => Response::not_allowed("GET, HEAD, POST"),
        (Endpoint::Admin, "/drain") => Response::not_allowed("POST"),
        (Endpoint::Admin, "/debug/pprof/profile") => Response::not_allowed("GET, HEAD"),
        _ => Response::text(404, "not found\n"),
    }
}

fn write_response(
    mut stream: &TcpStream,
    resp: &Response,
    head_only: bool,
    deadline: Instant,
) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_write_timeout(Some(left))?;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    if let Some(allow) = resp.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&resp.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

/// Half-close, then read and discard what the client still sends (an ignored body) until it
/// closes, so the kernel does not answer unread data with a RST that could destroy the
/// response before the client reads it. Bounded by the deadline and by 64 KiB.
fn linger(stream: &mut TcpStream, deadline: Instant) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut budget: usize = 64 * 1024;
    while budget > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => budget = budget.saturating_sub(n),
        }
    }
}

#[cfg(test)]
mod tests;
