//! The span exporters: OTLP/HTTP on the batch processor's thread, OTLP/gRPC on a runtime of
//! its own.
//!
//! Owns: the exporter's client (reqwest's blocking client, or a tonic channel) and, for gRPC,
//! [`ExportRuntime`], the tokio runtime the channel and every export run on.
//!
//! Why a runtime of its own: tonic's channel (its connection, timers and retries) needs a
//! tokio runtime, and the waypoint's cores run none (they run compio). The runtime has one
//! worker thread (`otlp-export`), which only exports use: exports are one at a time (the
//! batch processor waits for each), so one thread is never the bottleneck, and it is never
//! a core's. The batch processor's thread hands each batch to it and waits for the result.
//!
//! Invariants:
//! - a core never runs export code: spans reach the exporter through the batch processor's
//!   bounded queue (2,048 spans, the SDK's default; full means the span is dropped);
//! - an export ends within the configured timeout, retries included (tonic's per-request
//!   timeout, the exporter's retry deadline, and a deadline around the whole on the
//!   runtime), so a dead or stalled collector costs one batch per timeout;
//! - the TLS stack is rustls on aws-lc for both transports, built here from `--otlp-ca`
//!   (only those roots) or the system's roots: the exporter never builds a client itself;
//! - the runtime is shut down without waiting (`shutdown_background`), after the provider
//!   was flushed ([`super::Tracing`]'s `Drop`); an export still running then fails, it does
//!   not hang or panic.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use opentelemetry_otlp::{
    Protocol, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

use super::{OtlpProtocol, TraceConfig};

/// Builds the exporter `cfg` asks for (`headers` already checked) and the provider that
/// batches spans to it; for gRPC also the runtime the exporter runs on.
pub(super) fn start(
    cfg: &TraceConfig,
    headers: HeaderMap,
) -> Result<(SdkTracerProvider, Option<ExportRuntime>), String> {
    match &cfg.protocol {
        OtlpProtocol::Http { path } => {
            let url = http_url(&cfg.endpoint, path.as_deref())?;
            let client = http_client(cfg, headers)?;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_endpoint(url)
                // Set here so the exporter does not take them from the environment.
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(cfg.timeout)
                .build()
                .map_err(|e| format!("OTLP exporter for {}: {e}", cfg.endpoint))?;
            Ok((provider(cfg, exporter), None))
        }
        OtlpProtocol::Grpc => {
            let tls = grpc_tls(cfg)?;
            let runtime = ExportRuntime::new()?;
            let channel = grpc_channel(cfg, tls, &runtime)?;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(channel)
                .with_metadata(tonic::metadata::MetadataMap::from_headers(headers))
                .with_protocol(Protocol::Grpc)
                // The retries' deadline; the channel's timeout bounds each attempt.
                .with_timeout(cfg.timeout)
                .build()
                .map_err(|e| format!("OTLP exporter for {}: {e}", cfg.endpoint))?;
            let exporter = OnRuntime {
                exporter: Arc::new(exporter),
                runtime: runtime.handle.clone(),
                timeout: cfg.timeout,
            };
            Ok((provider(cfg, exporter), Some(runtime)))
        }
    }
}

fn provider(cfg: &TraceConfig, exporter: impl SpanExporter + 'static) -> SdkTracerProvider {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build()
}

/// `endpoint` must be `http://` or `https://`.
fn check_scheme(endpoint: &str) -> Result<bool, String> {
    if endpoint.starts_with("https://") {
        Ok(true)
    } else if endpoint.starts_with("http://") {
        Ok(false)
    } else {
        Err(format!(
            "{}: an OTLP endpoint starts with http:// or https://",
            super::truncate(endpoint)
        ))
    }
}

/// The URL spans are POSTed to: `endpoint` plus `path`, or plus `/v1/traces` unless the
/// endpoint already ends with it.
fn http_url(endpoint: &str, path: Option<&str>) -> Result<String, String> {
    check_scheme(endpoint)?;
    let base = endpoint.trim_end_matches('/');
    let url = match path {
        Some(p) => format!("{base}/{}", p.trim_start_matches('/')),
        None if base.ends_with("/v1/traces") => base.to_string(),
        None => format!("{base}/v1/traces"),
    };
    url.parse::<http::Uri>()
        .map_err(|e| format!("{}: not a URL: {e}", super::truncate(&url)))?;
    Ok(url)
}

/// The PEM of `cfg.roots`, checked to hold at least one certificate.
fn read_roots(path: &std::path::Path) -> Result<Vec<u8>, String> {
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
    Ok(pem)
}

/// The HTTP exporter's client: HTTPS verified against `cfg.roots` (only those) or the
/// system's roots, `headers` on every request, with a deadline per request so a stuck
/// collector costs a batch, not the thread.
fn http_client(cfg: &TraceConfig, headers: HeaderMap) -> Result<reqwest::blocking::Client, String> {
    let mut b = reqwest::blocking::Client::builder()
        .timeout(cfg.timeout)
        .default_headers(headers);
    if let Some(path) = &cfg.roots {
        let pem = read_roots(path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("the OTLP roots {}: {e}", path.display()))?;
        b = b.tls_certs_only(certs);
    }
    // reqwest's blocking client starts a runtime of its own; built on a thread of its own,
    // as it must not be built inside another runtime.
    std::thread::spawn(move || b.build())
        .join()
        .map_err(|_| "building the OTLP client panicked".to_string())?
        .map_err(|e| format!("the OTLP client: {e}"))
}

/// For an `https://` gRPC endpoint, its TLS: verified against `cfg.roots` only, or the
/// system's roots; `None` for `http://` (h2c).
pub(super) fn grpc_tls(
    cfg: &TraceConfig,
) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    if !check_scheme(&cfg.endpoint)? {
        return Ok(None);
    }
    let tls = tonic::transport::ClientTlsConfig::new();
    Ok(Some(match &cfg.roots {
        Some(path) => {
            tls.ca_certificate(tonic::transport::Certificate::from_pem(read_roots(path)?))
        }
        None => tls.with_native_roots(),
    }))
}

/// The gRPC channel to `cfg.endpoint` (`scheme://host:port`, no path: the service's path is
/// fixed), connected on first use, on `runtime`.
pub(super) fn grpc_channel(
    cfg: &TraceConfig,
    tls: Option<tonic::transport::ClientTlsConfig>,
    runtime: &ExportRuntime,
) -> Result<tonic::transport::Channel, String> {
    let shown = super::truncate(&cfg.endpoint);
    let uri: http::Uri = cfg
        .endpoint
        .parse()
        .map_err(|e| format!("{shown}: not a URL: {e}"))?;
    if uri.authority().is_none() {
        return Err(format!("{shown}: no host in it"));
    }
    if !matches!(uri.path_and_query().map(|p| p.as_str()), None | Some("/")) {
        return Err(format!(
            "{shown}: a gRPC endpoint is scheme://host:port, with no path"
        ));
    }
    let mut endpoint = tonic::transport::Endpoint::from(uri)
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("{shown}: TLS: {e}"))?;
    }
    // The channel's worker task, and the connections it makes, live on the export runtime.
    let _on = runtime.handle.enter();
    Ok(endpoint.connect_lazy())
}

/// The gRPC exporter's tokio runtime: one worker thread, `otlp-export`. Shut down, without
/// waiting, when dropped.
pub(crate) struct ExportRuntime {
    /// `None` once dropped.
    runtime: Option<tokio::runtime::Runtime>,
    pub(super) handle: tokio::runtime::Handle,
}

impl ExportRuntime {
    pub(super) fn new() -> Result<ExportRuntime, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            // The resolver's getaddrinfo calls (the collector's name), one at a time.
            .max_blocking_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|e| format!("the OTLP export runtime: {e}"))?;
        Ok(ExportRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        // Never blocks (this may run on any thread, even inside another runtime); an export
        // still in flight fails with "cancelled".
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The gRPC exporter, each export run on the export runtime under one deadline; the batch
/// processor's thread only waits for the result.
#[derive(Debug)]
struct OnRuntime {
    exporter: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl SpanExporter for OnRuntime {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let (exporter, timeout) = (self.exporter.clone(), self.timeout);
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, exporter.export(batch)).await });
        async move {
            match task.await {
                Ok(Ok(done)) => done,
                Ok(Err(_)) => Err(OTelSdkError::Timeout(timeout)),
                Err(e) => Err(OTelSdkError::InternalFailure(format!(
                    "the export did not finish: {e}"
                ))),
            }
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // The provider sets the resource once, before the first export: no clone of the
        // exporter is alive then.
        match Arc::get_mut(&mut self.exporter) {
            Some(e) => e.set_resource(resource),
            None => tracing::warn!("the OTLP resource changed during an export; not applied"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `OnRuntime` exporter to `endpoint` over h2c, and its runtime.
    fn grpc_exporter(endpoint: &str, timeout: Duration) -> (OnRuntime, ExportRuntime) {
        let cfg = TraceConfig {
            protocol: OtlpProtocol::Grpc,
            timeout,
            ..TraceConfig::new(endpoint)
        };
        let runtime = ExportRuntime::new().unwrap();
        let channel = grpc_channel(&cfg, None, &runtime).unwrap();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(channel)
            .with_timeout(timeout)
            .build()
            .unwrap();
        let on = OnRuntime {
            exporter: Arc::new(exporter),
            runtime: runtime.handle.clone(),
            timeout,
        };
        (on, runtime)
    }

    /// Polls `f` on a thread with no runtime, as the batch processor's thread does.
    fn wait<T>(f: impl Future<Output = T>) -> T {
        futures_util::pin_mut!(f);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_export_to_a_collector_that_never_answers_ends_at_its_deadline() {
        // Accepted by the kernel, never answered: the h2 handshake and the call hang.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let (on, _runtime) = grpc_exporter(&endpoint, Duration::from_millis(300));
        let started = std::time::Instant::now();
        let r = wait(on.export(Vec::new()));
        let took = started.elapsed();
        assert!(r.is_err(), "{r:?}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn an_export_after_the_runtime_is_gone_fails_instead_of_hanging_or_panicking() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let (on, runtime) = grpc_exporter(&endpoint, Duration::from_secs(30));
        drop(runtime);
        let r = wait(on.export(Vec::new()));
        assert!(
            matches!(&r, Err(OTelSdkError::InternalFailure(m)) if m.contains("did not finish")),
            "{r:?}"
        );
    }
}
