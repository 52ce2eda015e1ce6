//! Tracing: W3C trace context in, a server span per sampled request, the context out to the
//! backend, and spans exported over OTLP/HTTP (protobuf) by the OpenTelemetry SDK.
//!
//! Sampling is parent-based, as Envoy's: a request that arrives with a `traceparent` keeps
//! its sampled flag; one without is sampled with the configured probability (Istio's
//! default is 1 %). For a sampled request the waypoint's span becomes the parent of what the
//! backend sees: `traceparent` is rewritten to carry the waypoint's span id. An unsampled
//! request's `traceparent` passes through untouched.
//!
//! Spans leave the core: ending a span queues it to the SDK's batch processor, which
//! exports from a thread of its own. Only sampled requests pay that hand-off.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The `traceparent` header (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

/// Where spans go and how many requests get one.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// The OTLP/HTTP endpoint, e.g. `http://otel-collector:4318` (`/v1/traces` is added
    /// unless the URL already ends with it).
    pub endpoint: String,
    /// Share of requests without a sampled parent that start a trace, 0..=1.
    pub sampling: f64,
    /// `service.name` of the spans' resource.
    pub service_name: String,
    /// A PEM file of the roots that verify an `https://` endpoint; `None`: the system's.
    pub roots: Option<std::path::PathBuf>,
}

/// The exporter and the tracer; shared by every core.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    sampling: f64,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("sampling", &self.sampling)
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

/// The exporter's client: HTTPS verified against `cfg.roots` (only those) or the system's
/// roots, with a deadline per export so a stuck collector costs a batch, not the thread.
fn http_client(cfg: &TraceConfig) -> Result<reqwest::blocking::Client, String> {
    let mut b = reqwest::blocking::Client::builder().timeout(EXPORT_TIMEOUT);
    if let Some(path) = &cfg.roots {
        let pem = std::fs::read(path)
            .map_err(|e| format!("reading the OTLP roots {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("the OTLP roots {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "the OTLP roots {}: no certificate in it",
                path.display()
            ));
        }
        b = b.tls_certs_only(certs);
    }
    // reqwest's blocking client starts a runtime of its own; built on a thread of its own,
    // as it must not be built inside another runtime.
    std::thread::spawn(move || b.build())
        .join()
        .map_err(|_| "building the OTLP client panicked".to_string())?
        .map_err(|e| format!("the OTLP client: {e}"))
}

/// How long one export may take (the SDK's default export timeout).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Tracing {
    /// Starts the exporter (a background thread; nothing is sent until a span ends).
    pub fn start(cfg: &TraceConfig) -> Result<Arc<Tracing>, String> {
        if !(0.0..=1.0).contains(&cfg.sampling) {
            return Err(format!("sampling {} is not in 0..=1", cfg.sampling));
        }
        let url = if cfg.endpoint.trim_end_matches('/').ends_with("/v1/traces") {
            cfg.endpoint.clone()
        } else {
            format!("{}/v1/traces", cfg.endpoint.trim_end_matches('/'))
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "{}: an OTLP/HTTP endpoint starts with http:// or https://",
                cfg.endpoint
            ));
        }
        let client = http_client(cfg)?;
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(url)
            .build()
            .map_err(|e| format!("OTLP exporter for {}: {e}", cfg.endpoint))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("ringmesh-waypoint");
        Ok(Arc::new(Tracing {
            provider,
            tracer,
            sampling: cfg.sampling,
        }))
    }

    /// Decides on a request: `Some` when it is sampled. Then its server span (`name`) is
    /// open, and `headers` carry it as the parent for the backend. `random` is a uniform
    /// value in 0..1 from the caller's per-core generator.
    pub fn begin(&self, headers: &mut HeaderMap, name: String, random: f64) -> Option<TraceCtx> {
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
            None if random < self.sampling => Context::new(),
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

    /// Exports what is queued and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing the last spans failed");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_roots_are_checked_before_anything_is_sent() {
        let cfg = |endpoint: &str, roots: Option<&str>| TraceConfig {
            endpoint: endpoint.into(),
            sampling: 1.0,
            service_name: "t".into(),
            roots: roots.map(Into::into),
        };
        let e = Tracing::start(&cfg("ftp://x", None)).unwrap_err();
        assert!(e.contains("http:// or https://"), "{e}");
        let e = Tracing::start(&cfg("https://x", Some("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            e.contains("reading the OTLP roots /nonexistent/ca.pem"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("otlp-roots-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate\n").unwrap();
        let e = Tracing::start(&cfg("https://x", Some(dir.to_str().unwrap()))).unwrap_err();
        let _ = std::fs::remove_file(&dir);
        assert!(e.contains("no certificate"), "{e}");
    }

    #[test]
    fn traceparent_parsing_follows_the_w3c_grammar() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, sampled) = parse_traceparent(ok).unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert!(sampled);
        assert!(
            !parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .2
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-xbf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }
}
