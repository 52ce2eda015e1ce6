//! L7 test peers for the waypoint's end-to-end tests: an HTTP/1.1 backend whose paths script
//! its misbehaviour, a keep-alive HTTP/1.1 client (also for hand-made hostile requests), and
//! the `ringmesh waypoint` process.
//!
//! The backend answers every request with `200` and a body `<name> <method> <path>` followed
//! by the request's headers (one `name: value` per line) and `len=<body bytes>`, unless the
//! path says otherwise:
//! - `/status/<code>`: that status;
//! - `/flaky/<n>/...`: the first `n` requests to that exact path answer 503;
//! - `/fail-on/<name>/...`: 503 from the backend called `name`, 200 from the others;
//! - `/reset/<n>/...`: the first `n` requests to that exact path get the connection reset
//!   before any response byte;
//! - `/slow/<ms>/...`: the answer waits `ms` milliseconds.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::{MeshDir, Proc, bin, wait_for};

/// A running test backend.
pub struct Backend {
    pub addr: SocketAddr,
    /// Requests answered (or reset) so far.
    pub requests: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// How often each path was asked for.
    pub paths: Arc<Mutex<HashMap<String, u32>>>,
    /// The body length of the last request for each path, as read (before any delay).
    pub bodies: Arc<Mutex<HashMap<String, u64>>>,
}

/// Starts backend `name` on `addr` (a thread per connection; keep-alive).
pub fn spawn_backend(addr: SocketAddr, name: &str) -> Result<Backend> {
    spawn_slow_backend(addr, name, Duration::ZERO)
}

/// [`spawn_backend`] that waits `delay` before every answer.
pub fn spawn_slow_backend(addr: SocketAddr, name: &str, delay: Duration) -> Result<Backend> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding backend {addr}"))?;
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let lens: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let (count, name, paths, bodies) = (
        requests.clone(),
        name.to_string(),
        seen.clone(),
        lens.clone(),
    );
    let accepted = connections.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (count, seen, lens, name) =
                (count.clone(), seen.clone(), lens.clone(), name.clone());
            std::thread::spawn(move || {
                let _ = serve_backend_conn(s, &name, delay, &count, &seen, &lens);
            });
        }
    });
    Ok(Backend {
        addr,
        requests,
        connections,
        paths,
        bodies,
    })
}

fn serve_backend_conn(
    s: TcpStream,
    name: &str,
    delay: Duration,
    count: &AtomicUsize,
    seen: &Mutex<HashMap<String, u32>>,
    lens: &Mutex<HashMap<String, u64>>,
) -> Result<()> {
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    loop {
        let Some(req) = read_request(&mut r)? else {
            return Ok(());
        };
        count.fetch_add(1, Ordering::SeqCst);
        lens.lock().unwrap().insert(req.path.clone(), req.body_len);
        if req.path.starts_with("/ws")
            && header(&req.headers, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        {
            // A WebSocket handshake: 101, a greeting right behind the head, then an echo of
            // whatever arrives until the peer closes.
            w.write_all(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\nx-backend: {name}\r\n\r\nhello from {name}\n"
                )
                .as_bytes(),
            )?;
            std::io::copy(&mut r, &mut w)?;
            return Ok(());
        }
        std::thread::sleep(delay);
        let times = {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(req.path.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let mut parts = req.path.trim_start_matches('/').split('/');
        let (kind, word) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let arg: u64 = word.split('?').next().unwrap_or("").parse().unwrap_or(0);
        let mut status = 200;
        match kind {
            "fail-on" if word == name => status = 503,
            "status" => status = arg as u16,
            "flaky" if u64::from(times) <= arg => status = 503,
            "reset" if u64::from(times) <= arg => {
                let sock = socket2::SockRef::from(&w);
                let _ = sock.set_linger(Some(Duration::ZERO));
                return Ok(());
            }
            "slow" => std::thread::sleep(Duration::from_millis(arg)),
            _ => {}
        }
        let mut body = format!("{name} {} {}\n", req.method, req.path);
        for (k, v) in &req.headers {
            body.push_str(&format!("{k}: {v}\n"));
        }
        body.push_str(&format!("len={}\n", req.body_len));
        // One write: a response split over several small writes meets Nagle and a delayed
        // ACK on a reused connection (40 ms a request).
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-backend: {name}\r\n\r\n{body}",
            body.len()
        );
        w.write_all(response.as_bytes())?;
    }
}

pub(crate) struct BackendRequest {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    body_len: u64,
    /// The body's first [`BODY_HEAD`] bytes.
    pub(crate) body_head: Vec<u8>,
}

/// How much of a request body [`read_request`] keeps.
const BODY_HEAD: usize = 4096;

/// Keeps the first [`BODY_HEAD`] bytes written to it, drops the rest.
struct KeepHead(Vec<u8>);

impl Write for KeepHead {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = BODY_HEAD.saturating_sub(self.0.len());
        self.0.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One request off a keep-alive connection (its body read and counted; only its first
/// bytes kept).
pub(crate) fn read_request(r: &mut BufReader<TcpStream>) -> Result<Option<BackendRequest>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut it = line.split_whitespace();
    let (method, path) = (
        it.next().unwrap_or("").to_string(),
        it.next().unwrap_or("").to_string(),
    );
    let headers = read_headers(r)?;
    let len = header(&headers, "content-length").and_then(|v| v.parse().ok());
    let chunked = header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let mut head = KeepHead(Vec::new());
    let body_len = if chunked {
        read_chunked(r, &mut head)?
    } else {
        std::io::copy(&mut r.by_ref().take(len.unwrap_or(0)), &mut head)?
    };
    Ok(Some(BackendRequest {
        method,
        path,
        headers,
        body_len,
        body_head: head.0,
    }))
}

fn read_headers(r: &mut impl BufRead) -> Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        ensure!(r.read_line(&mut line)? > 0, "EOF inside the header block");
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(headers);
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads a chunked body into `out`; returns its length.
fn read_chunked(r: &mut impl BufRead, out: &mut impl Write) -> Result<u64> {
    let mut total = 0;
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let n = u64::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("chunk size {size:?}"))?;
        if n == 0 {
            read_headers(r)?; // trailers
            return Ok(total);
        }
        total += std::io::copy(&mut r.by_ref().take(n), out)?;
        let mut crlf = String::new();
        r.read_line(&mut crlf)?;
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// An HTTP/1.1 client on one keep-alive connection.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    /// The connection itself, for bytes after an upgrade: its buffered reader and writer.
    pub fn raw(&mut self) -> (&mut BufReader<TcpStream>, &mut TcpStream) {
        (&mut self.r, &mut self.w)
    }

    pub fn new(s: TcpStream) -> Result<Client> {
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Client {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    }

    /// Sends `method path` with `headers` and `body`, reads the response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: echo.test\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        self.w.write_all(head.as_bytes())?;
        self.w.write_all(body)?;
        self.read_response()
    }

    /// Writes raw bytes (a hand-made, possibly hostile request).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes)?;
        Ok(())
    }

    /// Reads one response.
    pub fn read_response(&mut self) -> Result<Response> {
        let mut line = String::new();
        ensure!(
            self.r.read_line(&mut line)? > 0,
            "connection closed before a response"
        );
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("status line {line:?}"))?;
        let headers = read_headers(&mut self.r)?;
        let mut body = Vec::new();
        if header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            read_chunked(&mut self.r, &mut body)?;
        } else if let Some(n) =
            header(&headers, "content-length").and_then(|v| v.parse::<u64>().ok())
        {
            self.r.by_ref().take(n).read_to_end(&mut body)?;
        } else {
            self.r.read_to_end(&mut body)?;
        }
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Whether the peer closed the connection (reads EOF within `wait`).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let _ = self.w.set_read_timeout(Some(wait));
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0) | Err(_))
    }

    pub fn shutdown(&self) {
        let _ = self.w.shutdown(Shutdown::Both);
    }
}

/// A running `ringmesh waypoint`.
pub struct Waypoint {
    pub proc: Proc,
    pub ip: IpAddr,
}

impl Waypoint {
    /// Starts the waypoint of workload `uid` (which has IP `ip` in the mesh's config) and
    /// waits until it answers on `/healthz/ready`.
    pub fn start(mesh: &MeshDir, uid: &str, ip: IpAddr) -> Result<Waypoint> {
        Waypoint::start_with(mesh, uid, ip, &[])
    }

    /// [`Waypoint::start`] with `extra` arguments.
    pub fn start_with(mesh: &MeshDir, uid: &str, ip: IpAddr, extra: &[&str]) -> Result<Waypoint> {
        let ca = mesh.ca.to_string_lossy();
        let mut args = vec!["--ca-dir", &*ca];
        args.extend_from_slice(extra);
        Waypoint::start_env(&mesh.config, uid, ip, &args, &[])
    }

    /// The waypoint on `config` with `extra` arguments and `env` (no CA given unless in
    /// `extra`: the Istio CA's variables then).
    pub fn start_env(
        config: &std::path::Path,
        uid: &str,
        ip: IpAddr,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Waypoint> {
        let metrics = SocketAddr::new(ip, 15020).to_string();
        let config = config.to_string_lossy();
        let mut args = vec![
            "waypoint",
            "--config",
            &config,
            "--workload",
            uid,
            "--metrics",
            &metrics,
            "--cores",
            "1",
        ];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn_env(&bin("ringmesh"), &args, env)?;
        let ready = SocketAddr::new(ip, 15020);
        let mut exited = None;
        wait_for(Duration::from_secs(15), "the waypoint ready", || {
            if let Ok(code) = proc.wait_exit(Duration::ZERO) {
                exited = Some(code);
                return true;
            }
            proxy::demo::http_get(ready, "/healthz/ready").is_ok_and(|b| b.starts_with("ready"))
        })
        .with_context(|| format!("waypoint log:\n{}", proc.stderr()))?;
        if let Some(code) = exited {
            bail!("the waypoint exited with {code:?}:\n{}", proc.stderr());
        }
        Ok(Waypoint { proc, ip })
    }

    pub fn metrics(&self) -> Result<String> {
        proxy::demo::http_get(SocketAddr::new(self.ip, 15020), "/metrics")
    }

    /// The process's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS in /proc/<pid>/status")
    }
}

/// One span as the collector received it.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    /// Lower-case hex.
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// Attributes as text (`key` → value).
    pub attributes: HashMap<String, String>,
    pub service_name: String,
}

/// An OTLP/HTTP collector: answers `POST /v1/traces` (protobuf) and keeps the spans.
pub struct Collector {
    pub addr: SocketAddr,
    pub spans: Arc<Mutex<Vec<Span>>>,
}

/// Starts a collector on `addr`.
pub fn spawn_collector(addr: SocketAddr) -> Result<Collector> {
    start_collector(addr, None)
}

/// Starts a collector on `addr` that speaks HTTPS, with a certificate for its IP; returns
/// it and the CA that signed the certificate (PEM).
pub fn spawn_https_collector(addr: SocketAddr) -> Result<(Collector, String)> {
    let (config, ca) = crate::web::tls_for(addr.ip())?;
    Ok((start_collector(addr, Some(config))?, ca))
}

fn start_collector(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Result<Collector> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding the collector on {addr}"))?;
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let (kept, tls) = (kept.clone(), tls.clone());
            std::thread::spawn(move || -> Result<()> {
                match tls {
                    None => collect(s, &kept),
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config)?;
                        collect(rustls::StreamOwned::new(conn, s), &kept)
                    }
                }
            });
        }
    });
    Ok(Collector { addr, spans })
}

/// Serves one collector connection: `POST /v1/traces` requests, their spans kept.
fn collect(s: impl Read + Write, kept: &Mutex<Vec<Span>>) -> Result<()> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let headers = read_headers(&mut r)?;
        let len: usize = header(&headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        if line.starts_with("POST /v1/traces") {
            let req = ExportTraceServiceRequest::decode(body.as_slice())?;
            kept.lock().unwrap().extend(spans_of(req));
        }
        let w = r.get_mut();
        w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )?;
        w.flush()?;
    }
}

/// The spans of one export, as the collectors keep them.
pub(crate) fn spans_of(
    req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service_name = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| any_text(a.value.as_ref()))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for sp in ss.spans {
                out.push(Span {
                    name: sp.name,
                    trace_id: hex(&sp.trace_id),
                    span_id: hex(&sp.span_id),
                    parent_span_id: hex(&sp.parent_span_id),
                    attributes: sp
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), any_text(a.value.as_ref())))
                        .collect(),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An attribute or body value as text (numbers and booleans written out).
pub fn any_text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// A gRPC-shaped HTTP/2 backend (h2c, prior knowledge) on `addr` that echoes: it answers
/// every call at once with `200`, `content-type: application/grpc` and the headers
/// `x-backend: <name>`, `x-path: <path>`, `x-te: <te header>`, sends each request DATA
/// frame back as it arrives (so the response holds the request's messages), and ends with
/// the trailers `grpc-status` and `x-request-bytes: <n>`. The status is 0, or by the method:
/// `…/Fail` ends with 14 (UNAVAILABLE) and a `grpc-message`; `…/TrailersOnly` answers at
/// once with `grpc-status: 5` in its headers and no body, and the test binary's first
/// `…/FlakyOnce` call with `grpc-status: 14` so. Counts calls.
pub fn spawn_grpc_backend(addr: SocketAddr, name: &str) -> Result<Arc<AtomicUsize>> {
    Ok(spawn_recording_grpc_backend(addr, name)?.requests)
}

/// A [`spawn_grpc_backend`] and what it saw.
pub struct GrpcBackend {
    /// Requests accepted so far.
    pub requests: Arc<AtomicUsize>,
    /// The body length of the last request for each path whose body ended cleanly.
    pub bodies: Arc<Mutex<HashMap<String, u64>>>,
}

/// [`spawn_grpc_backend`], recording each path's request body length.
pub fn spawn_recording_grpc_backend(addr: SocketAddr, name: &str) -> Result<GrpcBackend> {
    let std_listener =
        TcpListener::bind(addr).with_context(|| format!("binding the gRPC backend {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let count = Arc::new(AtomicUsize::new(0));
    let bodies: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let (counted, name, recorded) = (count.clone(), name.to_string(), bodies.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            while let Ok((s, _)) = listener.accept().await {
                let (counted, name, recorded) = (counted.clone(), name.clone(), recorded.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(s).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        counted.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(grpc_echo(name.clone(), req, respond, recorded.clone()));
                    }
                });
            }
        });
    });
    Ok(GrpcBackend {
        requests: count,
        bodies,
    })
}

/// One call of [`spawn_grpc_backend`].
async fn grpc_echo(
    name: String,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    bodies: Arc<Mutex<HashMap<String, u64>>>,
) {
    let path = req.uri().path().to_string();
    let te = req
        .headers()
        .get("te")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("x-backend", name)
        .header("x-path", &path)
        .header("x-te", te);
    // The first `…/FlakyOnce` call of the test binary is UNAVAILABLE, trailers-only; the
    // rest go on as usual (a retry's test).
    static FLAKY: AtomicUsize = AtomicUsize::new(0);
    let flaky_first = path.ends_with("/FlakyOnce") && FLAKY.fetch_add(1, Ordering::SeqCst) == 0;
    if path.ends_with("/TrailersOnly") || flaky_first {
        let status = if flaky_first { "14" } else { "5" };
        let resp = head
            .header("grpc-status", status)
            .body(())
            .expect("static response");
        let _ = respond.send_response(resp, true);
        return;
    }
    let Ok(mut send) = respond.send_response(head.body(()).expect("static response"), false) else {
        return;
    };
    let mut body = req.into_body();
    let mut n = 0usize;
    loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                n += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
                if send.send_data(chunk, false).is_err() {
                    return;
                }
            }
            // A reset stream is not a body that ended.
            Some(Err(_)) => return,
            None => break,
        }
    }
    bodies.lock().unwrap().insert(path.clone(), n as u64);
    let mut trailers = http::HeaderMap::new();
    if path.ends_with("/Fail") {
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        trailers.insert(
            "grpc-message",
            http::HeaderValue::from_static("backend%20down"),
        );
    } else {
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    }
    if let Ok(v) = http::HeaderValue::from_str(&n.to_string()) {
        trailers.insert("x-request-bytes", v);
    }
    let _ = send.send_trailers(trailers);
}
