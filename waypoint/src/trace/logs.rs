//! Access log records over OTLP/gRPC: Istio's `envoyOtelAls` provider. Each record's body is
//! the request's line in the provider's format and its attributes are the provider's
//! labels, as Envoy's OpenTelemetry access logger sends them.
//!
//! Owns: a [`LogExport`] owns the SDK's logger provider (its batch processor and that
//! processor's thread) and the export runtime the tonic exporter runs on (shared code with
//! the span exporter, `trace/export.rs`).
//!
//! Invariants (those of the span exporter):
//! - a core never waits on the exporter: [`LogExport::emit`] only queues the record to the
//!   batch processor (2,048 records, the SDK's default; full means the record is dropped);
//! - every export ends within the configured timeout, so a dead or stalled collector costs
//!   one batch per timeout;
//! - the export runtime outlives the provider: the provider is flushed first.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLogger, SdkLoggerProvider};

use super::export::{ExportRuntime, grpc_channel, grpc_tls};
use super::{OtlpProtocol, TraceConfig};

/// Istio's default `logName` for an `envoyOtelAls` provider.
pub const DEFAULT_LOG_NAME: &str = "otel_envoy_accesslog";

/// An OTLP/gRPC access log exporter; shared by every core.
pub struct LogExport {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
    /// Declared after the provider so it is dropped after it; `Drop` flushes first.
    _runtime: ExportRuntime,
}

impl std::fmt::Debug for LogExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogExport").finish_non_exhaustive()
    }
}

impl LogExport {
    /// Starts the exporter to `cfg.endpoint` (gRPC only, as Envoy's OpenTelemetry access
    /// logger), its records' scope named `log_name`; nothing is sent until a record comes.
    pub fn start(cfg: &TraceConfig, log_name: &str) -> Result<Arc<LogExport>, String> {
        if cfg.protocol != OtlpProtocol::Grpc {
            return Err("OTLP access logs go over gRPC only".into());
        }
        if cfg.timeout.is_zero() {
            return Err("the export timeout is zero".into());
        }
        let headers = cfg.header_map()?;
        let tls = grpc_tls(cfg)?;
        let runtime = ExportRuntime::new()?;
        let channel = grpc_channel(cfg, tls, &runtime)?;
        let exporter = opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_channel(channel)
            .with_metadata(tonic::metadata::MetadataMap::from_headers(headers))
            .with_protocol(Protocol::Grpc)
            .with_timeout(cfg.timeout)
            .build()
            .map_err(|e| format!("OTLP log exporter for {}: {e}", cfg.endpoint))?;
        let exporter = OnRuntime {
            exporter,
            runtime: runtime.handle.clone(),
            timeout: cfg.timeout,
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        let provider = SdkLoggerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let logger = provider.logger(log_name.to_string());
        Ok(Arc::new(LogExport {
            provider,
            logger,
            _runtime: runtime,
        }))
    }

    /// Queues one record: `body`, with `attributes`, stamped now.
    pub fn emit(&self, body: String, attributes: Vec<(String, AnyValue)>) {
        let mut r = self.logger.create_log_record();
        let now = SystemTime::now();
        r.set_timestamp(now);
        r.set_observed_timestamp(now);
        r.set_body(AnyValue::String(body.into()));
        for (k, v) in attributes {
            r.add_attribute(k, v);
        }
        self.logger.emit(r);
    }

    /// Exports what is queued and stops (at shutdown; up to 5 s, the SDK's default).
    pub fn shutdown(&self) {
        match self.provider.shutdown() {
            Ok(()) | Err(OTelSdkError::AlreadyShutdown) => {}
            Err(e) => tracing::warn!(error = %e, "flushing the last access log records failed"),
        }
    }
}

impl Drop for LogExport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The tonic exporter driven on the export runtime: the batch processor's thread blocks on
/// each export (it has nothing else to do), under one deadline.
#[derive(Debug)]
struct OnRuntime {
    exporter: opentelemetry_otlp::LogExporter,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl LogExporter for OnRuntime {
    fn export(&self, batch: LogBatch<'_>) -> impl Future<Output = OTelSdkResult> + Send {
        let done = self.runtime.block_on(async {
            tokio::time::timeout(self.timeout, self.exporter.export(batch)).await
        });
        let done = match done {
            Ok(r) => r,
            Err(_) => Err(OTelSdkError::Timeout(self.timeout)),
        };
        std::future::ready(done)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.exporter.set_resource(resource);
    }
}
