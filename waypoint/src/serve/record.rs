//! One request's telemetry: created on arrival, finished when the response body ends or
//! is dropped; counted in `Stats`, logged on target `access`, and its span ended.

use super::*;

/// One request's telemetry, from its arrival to the end of its response body.
pub(super) struct Record {
    pub(super) stats: Rc<Stats>,
    pub(super) start: Instant,
    pub(super) service: ServiceRef,
    pub(super) port: u16,
    pub(super) route: Arc<str>,
    pub(super) peer: Peer,
    pub(super) method: http::Method,
    pub(super) path: String,
    pub(super) grpc: bool,
    pub(super) request_bytes: Rc<Cell<u64>>,
    pub(super) endpoint: Option<Endpoint>,
    pub(super) code: u16,
    pub(super) outcome: Outcome,
    /// The request's span, when it is sampled.
    pub(super) trace: Option<(Arc<Tracing>, TraceCtx)>,
    pub(super) user_agent: Option<String>,
}

/// Longest path the access log keeps (a hostile client must not fill the log).
pub(super) const LOG_PATH_MAX: usize = 256;

impl Record {
    pub(super) fn new(stats: Rc<Stats>, target: &Target, parts: &Parts) -> Record {
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

    pub(super) fn finish(mut self, response_bytes: u64, complete: bool) {
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
