//! One request's telemetry: created on arrival, finished when the response body ends or
//! is dropped; counted in `Stats`, logged on target `access`, and its span ended, each as
//! its Service's [`Plan`] says.

use super::*;
use crate::stats::{Messages, StreamKey};
use crate::telemetry::{Attributes, LogSink, MAX_TAG_VALUE, Metric, TagValue};

/// One request's telemetry, from its arrival to the end of its response body.
pub(super) struct Record {
    pub(super) stats: Rc<Stats>,
    pub(super) start: Instant,
    pub(super) service: ServiceRef,
    /// The Service as its series count it: `service`, or its hostname when other Services
    /// share its name (a ServiceEntry's hosts, each reported as itself).
    series: ServiceRef,
    pub(super) port: u16,
    pub(super) route: Arc<str>,
    pub(super) peer: Peer,
    pub(super) method: http::Method,
    pub(super) path: String,
    pub(super) grpc: bool,
    /// A gRPC response's status, once a `grpc-status` went by (headers or trailers).
    pub(super) grpc_status: Option<u8>,
    /// A gRPC stream's message counts (`None` for plain HTTP, or when the plan reports
    /// neither message counter).
    pub(super) messages: Option<Rc<Messages>>,
    /// The id [`Stats::open_stream`] gave, while the stream is open.
    stream: Option<u64>,
    pub(super) request_bytes: Rc<Cell<u64>>,
    pub(super) endpoint: Option<Endpoint>,
    pub(super) code: u16,
    pub(super) outcome: Outcome,
    /// The request's span, when it is sampled.
    pub(super) trace: Option<(Arc<Tracing>, TraceCtx)>,
    pub(super) user_agent: Option<String>,
    /// `x-request-id` (the client's, or the one the waypoint made).
    request_id: Option<HeaderValue>,
    /// How this request is observed (its Service's Telemetry).
    pub(super) plan: Arc<Plan>,
    /// The table the plan came from (its `UPSERT` expressions).
    table: Arc<TelemetryTable>,
    /// What a filter or an `UPSERT` reads; taken only when the plan has one.
    attrs: Option<Box<Captured>>,
    /// Custom span tags, resolved on arrival (a header tag reads the client's header);
    /// `None` for a formatter tag, filled when the span ends.
    custom_tags: Vec<(String, Option<String>)>,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` when the outcome's own is not precise enough.
    pub(super) details: Option<String>,
    /// The cluster of the backend the route chose ([`Upstreams::cluster_name`]), when a
    /// log format or a span names it; `None` before a route chose one.
    pub(super) cluster: Option<String>,
    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: why the endpoint could not be reached,
    /// when the answer says so (`UF`).
    pub(super) transport_failure: Option<String>,
    /// This side's address on the socket that carried the request upstream.
    pub(super) upstream_local: Option<std::net::SocketAddr>,
    /// Headers a CUSTOM policy's provider gave for the client's response, when it allowed.
    pub(super) on_allow: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The route's CORS policy and the allowed origin every answer from here tells.
    pub(super) cors: Option<(Arc<crate::route::Cors>, http::HeaderValue)>,
    /// What lines in Envoy's formats read; taken only when the plan has such a log.
    log: Option<Box<LogCapture>>,
    /// The address the client called.
    local: Option<std::net::SocketAddr>,
}

/// The request's side of a line in an Envoy format, and the response headers it reads.
struct LogCapture {
    start: std::time::SystemTime,
    path: String,
    authority: String,
    protocol: &'static str,
    request_headers: Vec<(header::HeaderName, HeaderValue)>,
    response_headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// The request's side of the attributes expressions read.
struct Captured {
    path: String,
    headers: HeaderMap,
    protocol: &'static str,
    host: Arc<str>,
}

/// Beyond this many series on a core, `UPSERT` values are replaced by `overflow`: values
/// from request contents must not grow the counters without bound.
pub(super) const MAX_UPSERT_SERIES: usize = 10_000;

/// Longest path the access log keeps (a hostile client must not fill the log).
pub(super) const LOG_PATH_MAX: usize = 256;

impl Record {
    pub(super) fn new(
        stats: Rc<Stats>,
        target: &Target,
        parts: &Parts,
        table: &Arc<TelemetryTable>,
        plan: Arc<Plan>,
    ) -> Record {
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
        let filtered = plan.access_log.as_ref().is_some_and(|l| l.filter.is_some())
            || plan.formatted_logs.iter().any(|l| l.filter.is_some())
            || (!table.upserts().is_empty()
                && plan
                    .metrics
                    .metrics
                    .iter()
                    .flatten()
                    .any(|l| !l.upserted.is_empty()));
        let attrs = filtered.then(|| {
            Box::new(Captured {
                path: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
                headers: parts.headers.clone(),
                protocol: if parts.version == Version::HTTP_2 {
                    "HTTP/2"
                } else {
                    "HTTP/1.1"
                },
                host: target.host.clone(),
            })
        });
        let custom_tags = match &plan.tracing {
            Some(t) => t
                .custom_tags
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        TagValue::Fixed(s) => Some(s.clone()),
                        TagValue::Header { name, default } => Some(
                            parts
                                .headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map_or_else(
                                    || default.clone(),
                                    |v| v.chars().take(LOG_PATH_MAX).collect(),
                                ),
                        ),
                        TagValue::Format(_) => None,
                    };
                    (k.clone(), v)
                })
                .collect(),
            None => Vec::new(),
        };
        let formats = plan_formats(&plan);
        let log = (!formats.is_empty()).then(|| {
            let mut request_headers = Vec::new();
            for f in &formats {
                for name in f.headers(false) {
                    if request_headers.iter().any(|(n, _)| *n == name) {
                        continue;
                    }
                    if let Some(v) = parts.headers.get(&name) {
                        request_headers.push((name, v.clone()));
                    }
                }
            }
            Box::new(LogCapture {
                start: std::time::SystemTime::now(),
                path: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
                authority: parts
                    .headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                    .unwrap_or("")
                    .to_string(),
                protocol: if parts.version == Version::HTTP_2 {
                    "HTTP/2"
                } else {
                    "HTTP/1.1"
                },
                request_headers,
                response_headers: Vec::new(),
            })
        });
        let messages = (grpc
            && (plan.metrics.get(Metric::GrpcRequestMessages).is_some()
                || plan.metrics.get(Metric::GrpcResponseMessages).is_some()))
        .then(|| Rc::new(Messages::default()));
        Record {
            stats,
            start: Instant::now(),
            service: target.service.clone(),
            series: target.upstream.as_ref().unwrap_or(&target.service).clone(),
            port: target.port,
            route: Arc::from("-"),
            peer: target.peer.clone(),
            method: parts.method.clone(),
            path,
            grpc,
            grpc_status: None,
            messages,
            stream: None,
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
            request_id: parts.headers.get(X_REQUEST_ID).cloned(),
            plan,
            table: table.clone(),
            attrs,
            custom_tags,
            details: None,
            cluster: None,
            transport_failure: None,
            upstream_local: None,
            on_allow: Vec::new(),
            cors: None,
            log,
            local: target.local,
        }
    }

    /// The response headers lines in Envoy's formats read, as the response head goes out.
    pub(super) fn capture_response(&mut self, headers: &HeaderMap) {
        let Some(log) = self.log.as_deref_mut() else {
            return;
        };
        for f in plan_formats(&self.plan) {
            for name in f.headers(true) {
                if log.response_headers.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                if let Some(v) = headers.get(&name) {
                    log.response_headers.push((name, v.clone()));
                }
            }
        }
    }

    /// What Envoy's formats read of this request, once it ended.
    fn entry<'a>(
        &'a self,
        log: &'a LogCapture,
        took: Duration,
        request_bytes: u64,
        response_bytes: u64,
        peer_uri_san: &'a Option<String>,
    ) -> crate::telemetry::format::Entry<'a> {
        crate::telemetry::format::Entry {
            start: log.start,
            method: self.method.as_str(),
            path: &log.path,
            authority: &log.authority,
            protocol: log.protocol,
            request_headers: &log.request_headers,
            response_headers: &log.response_headers,
            code: self.code,
            flags: self.outcome.flag(),
            details: self
                .details
                .as_deref()
                .unwrap_or_else(|| self.outcome.details()),
            bytes_received: request_bytes,
            bytes_sent: response_bytes,
            duration: took,
            upstream_host: self.endpoint.as_ref().map(|e| e.addr),
            upstream_local: self.upstream_local,
            upstream_cluster: self.cluster.as_deref(),
            downstream_local: self.local,
            downstream_remote: self.peer.addr,
            peer_uri_san: peer_uri_san.as_deref(),
            route: &self.route,
            grpc_status: self.grpc_status(),
            transport_failure: self.transport_failure.as_deref(),
        }
    }

    /// The string an [`Record::entry`] borrows: the peer's URI SAN.
    fn entry_strings(&self) -> Option<String> {
        self.peer
            .principal
            .as_deref()
            .map(|p| format!("spiffe://{p}"))
    }

    /// Whether something this request writes names its upstream cluster: a line in an
    /// Envoy format, or a span.
    pub(super) fn wants_cluster(&self) -> bool {
        self.log.is_some() || self.trace.is_some()
    }

    /// Lines in Envoy's formats, to standard output or as OTLP records, for the providers
    /// that take this request.
    fn write_formatted(
        &self,
        attrs: Option<&Attributes<'_>>,
        entry: &crate::telemetry::format::Entry<'_>,
    ) {
        use std::io::Write as _;
        let mut out = String::new();
        for l in &self.plan.formatted_logs {
            let take = match (&l.filter, attrs) {
                (None, _) => true,
                (Some(f), Some(a)) => f.matches(a).unwrap_or(false),
                (Some(_), None) => false,
            };
            if !take {
                continue;
            }
            match &l.sink {
                LogSink::Stdout => out.push_str(&l.format.line(entry)),
                LogSink::Otel(export) => {
                    if let Some((body, attributes)) = l.format.record(entry) {
                        export.emit(body, attributes);
                    }
                }
            }
        }
        if !out.is_empty() {
            // One write for the request's lines: they stay whole beside other cores'.
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
        }
    }

    /// The attributes an expression reads, once the response is known.
    fn attributes<'a>(
        &'a self,
        c: &'a Captured,
        took: Duration,
        req: u64,
        resp: u64,
    ) -> Attributes<'a> {
        Attributes {
            method: self.method.as_str(),
            path: &c.path,
            host: &c.host,
            headers: &c.headers,
            protocol: c.protocol,
            code: self.code,
            flags: self.outcome.flag(),
            request_size: req,
            response_size: resp,
            duration: took,
            source: self.peer.addr,
            source_principal: self.peer.principal.as_deref(),
            port: self.port,
            upstream: self.endpoint.as_ref().map(|e| e.addr),
        }
    }

    /// The response head is going out: a gRPC stream's messages count from now on under
    /// the peers it has, so a scrape sees a long stream before it ends.
    pub(super) fn open_stream(&mut self) {
        let Some(m) = &self.messages else { return };
        if self.stream.is_some() {
            return;
        }
        let attrs = self
            .attrs
            .as_deref()
            .map(|c| self.attributes(c, self.start.elapsed(), self.request_bytes.get(), 0));
        let key = StreamKey {
            service: self.series.clone(),
            source: self.peer.workload.clone(),
            source_principal: self.peer.principal.clone(),
            endpoint: self.endpoint.as_ref().map(|e| e.uid.clone()),
            tags: self.upserted(attrs.as_ref()),
        };
        self.stream = Some(self.stats.open_stream(key, m.clone()));
    }

    /// `grpc_response_status`: the status a `grpc-status` gave, or the one the HTTP code
    /// stands for; `None` for plain HTTP.
    fn grpc_status(&self) -> Option<u8> {
        self.grpc.then(|| {
            self.grpc_status
                .unwrap_or_else(|| crate::grpc::status_of_http(self.code))
        })
    }

    pub(super) fn finish(mut self, response_bytes: u64, complete: bool) {
        let took = self.start.elapsed();
        let request_bytes = self.request_bytes.get();
        if let Some(id) = self.stream.take() {
            self.stats.close_stream(id);
        }
        let trace = self.trace.take();
        let strings = self.log.as_ref().map(|_| self.entry_strings());
        let entry = match (self.log.as_deref(), &strings) {
            (Some(log), Some(strings)) => {
                Some(self.entry(log, took, request_bytes, response_bytes, strings))
            }
            _ => None,
        };
        if let Some((tracing, ctx)) = trace {
            let error = self.code >= 500 || !complete;
            let attrs = self.span_attributes(request_bytes, response_bytes, entry.as_ref());
            tracing.end(ctx, error, attrs);
        }
        let attrs = self
            .attrs
            .as_deref()
            .map(|c| self.attributes(c, took, request_bytes, response_bytes));
        if self.plan.metrics.reports_any() {
            let tags = self.upserted(attrs.as_ref());
            let key = Key {
                service: self.series.clone(),
                route: self.route.clone(),
                code: self.code,
                outcome: self.outcome,
                source: self.peer.workload.clone(),
                source_principal: self.peer.principal.clone(),
                endpoint: self.endpoint.as_ref().map(|e| e.uid.clone()),
                grpc: self.grpc,
                grpc_status: self.grpc_status(),
                tags,
            };
            self.stats.record(key, took, request_bytes, response_bytes);
        }
        if let Some(entry) = &entry {
            self.write_formatted(attrs.as_ref(), entry);
        }
        let log = match &self.plan.access_log {
            None => false,
            Some(l) => match (&l.filter, &attrs) {
                (None, _) => true,
                (Some(f), Some(a)) => f.matches(a).unwrap_or(false),
                (Some(_), None) => false,
            },
        };
        // The line's fields are formatted only if the `access` target is on (`--log warn`
        // turns it off: nothing then is spent on it per request).
        if !log || !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
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
            request_id = %self.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            "request complete"
        );
    }

    /// The span's attributes: Istio's standard tags (unless the Telemetry turned them off)
    /// and the custom ones.
    fn span_attributes(
        &self,
        request_bytes: u64,
        response_bytes: u64,
        entry: Option<&crate::telemetry::format::Entry<'_>>,
    ) -> Vec<opentelemetry::KeyValue> {
        use opentelemetry::KeyValue;
        let mut attrs = Vec::with_capacity(12 + self.custom_tags.len());
        let istio = self.plan.tracing.as_ref().is_none_or(|t| t.istio_tags);
        if istio {
            let max = self
                .plan
                .tracing
                .as_ref()
                .map_or(LOG_PATH_MAX, |t| t.max_path);
            let mut url = self.path.as_str();
            if url.len() > max {
                let mut cut = max;
                while !url.is_char_boundary(cut) {
                    cut -= 1;
                }
                url = &url[..cut];
            }
            attrs.extend([
                KeyValue::new("component", "proxy"),
                KeyValue::new("http.method", self.method.to_string()),
                KeyValue::new("http.url", url.to_string()),
                KeyValue::new("http.status_code", i64::from(self.code)),
                KeyValue::new("response_flags", self.outcome.flag()),
                KeyValue::new("request_size", request_bytes as i64),
                KeyValue::new("response_size", response_bytes as i64),
                KeyValue::new("istio.namespace", self.service.namespace.to_string()),
            ]);
            if let Some(c) = &self.cluster {
                // The name, and the observability name istiod sets (the name and `;`).
                attrs.push(KeyValue::new("upstream_cluster", c.clone()));
                attrs.push(KeyValue::new("upstream_cluster.name", format!("{c};")));
            }
            if let Some(e) = &self.endpoint {
                attrs.push(KeyValue::new("upstream_address", e.addr.to_string()));
            }
            if let Some(status) = self.grpc_status() {
                // As Envoy tags a gRPC request's span.
                attrs.push(KeyValue::new("grpc.status_code", i64::from(status)));
            }
            if let Some(a) = self.peer.addr {
                attrs.push(KeyValue::new("peer.address", a.ip().to_string()));
            }
            if let Some(ua) = &self.user_agent {
                attrs.push(KeyValue::new("user_agent", ua.clone()));
            }
            if let Some(id) = self.request_id.as_ref().and_then(|v| v.to_str().ok()) {
                attrs.push(KeyValue::new("guid:x-request-id", id.to_string()));
            }
        }
        let tags = self.plan.tracing.as_ref().map(|t| &t.custom_tags);
        for (i, (k, v)) in self.custom_tags.iter().enumerate() {
            let v = match v {
                Some(v) => v.clone(),
                // A formatter tag: Envoy's operators over the ended request.
                None => match (tags.and_then(|t| t.get(i)), entry) {
                    (Some((_, TagValue::Format(f))), Some(e)) => f.text(e),
                    _ => continue,
                },
            };
            attrs.push(KeyValue::new(k.clone(), v));
        }
        attrs
    }

    /// The values of the plan's `UPSERT` tags, by name (empty when it has none).
    fn upserted(&self, attrs: Option<&Attributes<'_>>) -> Vec<(Arc<str>, String)> {
        let Some(a) = attrs else {
            return Vec::new();
        };
        let mut names: Vec<&str> = self
            .plan
            .metrics
            .metrics
            .iter()
            .flatten()
            .flat_map(|l| l.upserted.iter().map(String::as_str))
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        names.sort_unstable();
        names.dedup();
        let full = self.stats.series() >= MAX_UPSERT_SERIES;
        names
            .into_iter()
            .filter_map(|n| {
                let e = self.table.upserts().get(n)?;
                let v = if full {
                    "overflow".to_string()
                } else {
                    let mut v = e.label(a).unwrap_or_else(|| "unknown".into());
                    if v.len() > MAX_TAG_VALUE {
                        let mut cut = MAX_TAG_VALUE;
                        while !v.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        v.truncate(cut);
                    }
                    v
                };
                Some((Arc::from(n), v))
            })
            .collect()
    }
}

/// Every Envoy format a plan writes with: its formatted logs' and its formatter span tags'.
fn plan_formats(plan: &Plan) -> Vec<&crate::telemetry::format::Format> {
    let mut out: Vec<&crate::telemetry::format::Format> = plan
        .formatted_logs
        .iter()
        .flat_map(|l| l.format.formats())
        .collect();
    if let Some(t) = &plan.tracing {
        for (_, v) in &t.custom_tags {
            if let TagValue::Format(f) = v {
                out.push(f);
            }
        }
    }
    out
}
