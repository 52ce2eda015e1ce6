//! Tracing: W3C trace context in, a server span per sampled request, the context out to the
//! backend, and spans exported over OTLP, as OTLP/HTTP (protobuf) or OTLP/gRPC, by the
//! OpenTelemetry SDK.
//!
//! Sampling is parent-based, as Envoy's: a request that arrives with a `traceparent` keeps
//! its sampled flag; one without is sampled with the configured probability (Istio's
//! default is 1 %). For a sampled request the waypoint's span becomes the parent of what the
//! backend sees: `traceparent` is rewritten to carry the waypoint's span id. An unsampled
//! request's `traceparent` passes through untouched.
//!
//! Owns: a [`Tracing`] owns the SDK's tracer provider (with its batch processor and that
//! processor's thread) and, for gRPC, the exporter's tokio runtime (`trace/export.rs`).
//! The access log records of `envoyOtelAls` ride the same export code ([`logs`]).
//!
//! Invariants:
//! - a core never waits on the exporter: ending a span only queues it to the batch
//!   processor (a bounded queue of 2,048 spans, the SDK's default; when it is full the span
//!   is dropped, never waited for); only sampled requests pay that hand-off;
//! - every export ends within [`TraceConfig::timeout`], so a dead or stalled collector
//!   costs one batch per timeout and spans beyond the queue, nothing else;
//! - the export runtime outlives the provider: the provider is flushed and shut down
//!   before the runtime goes;
//! - a [`TraceConfig`] is checked whole before anything starts (endpoint, headers, roots,
//!   timeout, sampling): a bad one is an error naming the field and its value.

mod export;
pub mod logs;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The `traceparent` header (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

/// How long one export may take, retries included: the OTLP exporter's default
/// (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s in the OpenTelemetry specification).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Share of requests without a sampled parent that start a trace when nothing says
/// otherwise: Istio's default (`defaultConfig.tracing.sampling`, 1 %).
pub const DEFAULT_SAMPLING: f64 = 0.01;

/// How spans travel to the collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP, protobuf bodies POSTed to the endpoint plus `path` (Istio's
    /// `opentelemetry.http.path`); `None`: `/v1/traces`, unless the endpoint already ends
    /// with it.
    Http { path: Option<String> },
    /// OTLP/gRPC, `opentelemetry.proto.collector.trace.v1.TraceService/Export` on the
    /// endpoint (`http://host:4317` by convention; Istio's default for OpenTelemetry
    /// providers). The endpoint has no path of its own.
    Grpc,
}

impl Default for OtlpProtocol {
    fn default() -> Self {
        OtlpProtocol::Http { path: None }
    }
}

impl std::str::FromStr for OtlpProtocol {
    type Err = String;

    /// The values of `OTEL_EXPORTER_OTLP_PROTOCOL` that the waypoint speaks: `grpc` and
    /// `http/protobuf`, with `http` as a short name for the latter.
    fn from_str(s: &str) -> Result<Self, String> {
        let v = s.trim();
        if v.eq_ignore_ascii_case("grpc") {
            Ok(OtlpProtocol::Grpc)
        } else if v.eq_ignore_ascii_case("http/protobuf") || v.eq_ignore_ascii_case("http") {
            Ok(OtlpProtocol::Http { path: None })
        } else if v.eq_ignore_ascii_case("http/json") {
            Err(format!(
                "{s:?}: OTLP/HTTP with JSON bodies is not supported; use grpc or http/protobuf"
            ))
        } else {
            Err(format!(
                "{:?}: not an OTLP protocol (grpc, http/protobuf or http)",
                truncate(s)
            ))
        }
    }
}

/// Where spans go, how, and how many requests get one.
#[derive(Clone)]
pub struct TraceConfig {
    /// The collector: `http://host:port` or `https://host:port`. Over HTTP the traces path
    /// is added (see [`OtlpProtocol::Http`]); over gRPC it is the whole address, e.g.
    /// `http://otel-collector.istio-system:4317`.
    pub endpoint: String,
    /// Share of requests without a sampled parent that start a trace, 0..=1.
    pub sampling: f64,
    /// `service.name` of the spans' resource.
    pub service_name: String,
    /// A PEM file of the roots that verify an `https://` endpoint (only those); `None`: the
    /// system's.
    pub roots: Option<std::path::PathBuf>,
    /// HTTP or gRPC.
    pub protocol: OtlpProtocol,
    /// Sent with every export: HTTP headers, or gRPC initial metadata (Istio's
    /// `http.headers` / `grpc.initialMetadata`). Checked by [`check_header`].
    pub headers: Vec<(String, String)>,
    /// How long one export may take, retries included; then its batch is dropped.
    pub timeout: Duration,
}

impl TraceConfig {
    /// Spans to `endpoint` over OTLP/HTTP at `/v1/traces`, with Istio's default sampling
    /// (1 %), no extra headers, the system's roots and [`EXPORT_TIMEOUT`]. For Istio's
    /// OpenTelemetry provider (`service`, `port`, gRPC unless `http` is given):
    /// `TraceConfig { protocol: OtlpProtocol::Grpc, ..TraceConfig::new(format!("http://{service}:{port}")) }`.
    pub fn new(endpoint: impl Into<String>) -> TraceConfig {
        TraceConfig {
            endpoint: endpoint.into(),
            sampling: DEFAULT_SAMPLING,
            service_name: "ringmesh-waypoint".into(),
            roots: None,
            protocol: OtlpProtocol::default(),
            headers: Vec::new(),
            timeout: EXPORT_TIMEOUT,
        }
    }

    /// The headers as a map, each checked ([`check_header`]).
    fn header_map(&self) -> Result<HeaderMap, String> {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            let (name, value) = check_header(name, value, &self.protocol)?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// Header values stay out of logs (they are often credentials).
impl std::fmt::Debug for TraceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(name, _)| format!("{name}=<redacted>"))
            .collect();
        f.debug_struct("TraceConfig")
            .field("endpoint", &self.endpoint)
            .field("sampling", &self.sampling)
            .field("service_name", &self.service_name)
            .field("roots", &self.roots)
            .field("protocol", &self.protocol)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Names the exporter's transport sets itself: a header of the config may not replace them.
const RESERVED: &[&str] = &[
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "host",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "user-agent",
];

/// Checks one export header (`name` is case-insensitive) and returns it as HTTP's types.
/// The error names the header, and says what is wrong with a value without repeating it
/// (values are often credentials). Over gRPC, `grpc-*` names are the protocol's own and
/// `*-bin` names carry binary metadata, which a text value cannot give.
pub fn check_header(
    name: &str,
    value: &str,
    protocol: &OtlpProtocol,
) -> Result<(HeaderName, HeaderValue), String> {
    let shown = truncate(name);
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("header {shown:?}: not a valid header name"))?;
    if RESERVED.contains(&header.as_str()) {
        return Err(format!(
            "header {shown:?}: set by the exporter itself, it cannot be given"
        ));
    }
    if *protocol == OtlpProtocol::Grpc {
        if header.as_str().starts_with("grpc-") {
            return Err(format!(
                "header {shown:?}: grpc-* metadata is reserved for gRPC itself"
            ));
        }
        if header.as_str().ends_with("-bin") {
            return Err(format!(
                "header {shown:?}: binary (-bin) metadata is not supported"
            ));
        }
    }
    // Printable ASCII and tabs: what gRPC allows in text metadata, and a subset of what HTTP
    // allows (it tolerates other bytes only for old peers, RFC 9110 §5.5).
    let bad = |c: char| !(c == '\t' || (' '..='~').contains(&c));
    if let Some((i, c)) = value.char_indices().find(|&(_, c)| bad(c)) {
        return Err(format!(
            "header {shown:?}: its value may hold only printable ASCII ({c:?} at byte {i})"
        ));
    }
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("header {shown:?}: not a valid header value"))?;
    Ok((header, value))
}

/// The `k=v,k2=v2` list of `OTEL_EXPORTER_OTLP_HEADERS` (OpenTelemetry's exporter
/// specification): pairs split at commas, spaces around them ignored, values
/// percent-decoded. An entry without `=` or with an empty name is an error naming it.
pub fn parse_header_list(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for entry in text.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (name, value) = entry
            .split_once('=')
            .filter(|(n, _)| !n.trim().is_empty())
            .ok_or_else(|| format!("{:?}: not NAME=VALUE", truncate(entry)))?;
        let value = percent_decode(value.trim())
            .ok_or_else(|| format!("{:?}: the value is not percent-encoded UTF-8", name.trim()))?;
        out.push((name.trim().to_string(), value));
    }
    Ok(out)
}

/// `%XX` escapes to bytes; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// At most 64 characters of `s`, for error messages.
fn truncate(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The tracer and its exporter; shared by every core.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    sampling: f64,
    /// The gRPC exporter's runtime (`None` over HTTP). Declared after the provider and the
    /// tracer so it is dropped after them; `Drop` flushes the provider first.
    _runtime: Option<export::ExportRuntime>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("sampling", &self.sampling)
            .field("grpc", &self._runtime.is_some())
            .finish_non_exhaustive()
    }
}

/// A sampled request's span, open until the response ends.
pub struct TraceCtx {
    span: opentelemetry_sdk::trace::Span,
}

impl std::fmt::Debug for TraceCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cx = self.span.span_context();
        f.debug_struct("TraceCtx")
            .field("trace_id", &cx.trace_id())
            .field("span_id", &cx.span_id())
            .finish()
    }
}

impl Tracing {
    /// Checks `cfg` and starts the exporter (the batch processor's thread, and for gRPC the
    /// export runtime); nothing is sent until a span ends.
    pub fn start(cfg: &TraceConfig) -> Result<Arc<Tracing>, String> {
        if !(0.0..=1.0).contains(&cfg.sampling) {
            return Err(format!("sampling {} is not in 0..=1", cfg.sampling));
        }
        if cfg.timeout.is_zero() {
            return Err("the export timeout is zero".into());
        }
        let headers = cfg.header_map()?;
        let (provider, runtime) = export::start(cfg, headers)?;
        let tracer = provider.tracer("ringmesh-waypoint");
        Ok(Arc::new(Tracing {
            provider,
            tracer,
            sampling: cfg.sampling,
            _runtime: runtime,
        }))
    }

    /// Decides on a request: `Some` when it is sampled. Then its server span (`name`) is
    /// open, and `headers` carry it as the parent for the backend. `sample` decides for a
    /// request without a `traceparent` (the caller draws it against its plan's sampling).
    pub fn begin(&self, headers: &mut HeaderMap, name: String, sample: bool) -> Option<TraceCtx> {
        let incoming = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let parent_cx = match incoming {
            Some((trace_id, parent, sampled)) => {
                if !sampled {
                    return None;
                }
                Context::new().with_remote_span_context(SpanContext::new(
                    trace_id,
                    parent,
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::default(),
                ))
            }
            None if sample => Context::new(),
            None => return None,
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(SystemTime::now())
            .start_with_context(&self.tracer, &parent_cx);
        let cx = span.span_context();
        if !cx.is_valid() {
            return None;
        }
        let value = format!("00-{}-{}-01", cx.trace_id(), cx.span_id());
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(TRACEPARENT, v);
        }
        Some(TraceCtx { span })
    }

    /// Ends the request's span with `attributes`; the SDK exports it.
    pub fn end(&self, mut ctx: TraceCtx, error: bool, attributes: Vec<KeyValue>) {
        ctx.span.set_attributes(attributes);
        if error {
            ctx.span
                .set_status(opentelemetry::trace::Status::error("request failed"));
        }
        ctx.span.end_with_timestamp(SystemTime::now());
    }

    /// Exports what is queued and stops the exporter (at shutdown; waits up to 5 s, the
    /// SDK's default). Calling it again does nothing.
    pub fn shutdown(&self) {
        match self.provider.shutdown() {
            Ok(()) | Err(OTelSdkError::AlreadyShutdown) => {}
            Err(e) => tracing::warn!(error = %e, "flushing the last spans failed"),
        }
    }
}

impl Drop for Tracing {
    /// The provider is flushed while the export runtime still runs (it is dropped after
    /// this, with the fields).
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (W3C Trace Context §3.2): the
/// trace id, the parent span id and the sampled flag; `None` for anything else, including
/// all-zero ids and version `ff`.
pub fn parse_traceparent(v: &str) -> Option<(TraceId, SpanId, bool)> {
    let mut parts = v.trim().split('-');
    let (version, tid, pid, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if !hex(version, 2) || version == "ff" || !hex(tid, 32) || !hex(pid, 16) || !hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(tid)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(pid)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, span_id, flags & 1 == 1))
}
