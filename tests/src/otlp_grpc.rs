//! An OTLP/gRPC collector for the waypoint's tests: OpenTelemetry's own
//! `opentelemetry.proto.collector.trace.v1.TraceService` and `…logs.v1.LogsService`
//! (`Export`) served by tonic, over h2c or over TLS with a certificate for its IP, keeping
//! every span, every log record and each trace export's metadata.
//! Also a collector that never answers, for exports that stall.
//!
//! Each collector runs on a thread of its own (a current-thread tokio runtime) and stops
//! when dropped: the listener closes and open connections are cut.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

use crate::l7::Span;

/// A running gRPC collector.
pub struct GrpcCollector {
    pub addr: SocketAddr,
    /// Every span received, in arrival order.
    pub spans: Arc<Mutex<Vec<Span>>>,
    /// The text metadata of each export (names lower-case), in arrival order; recorded
    /// before the export's spans.
    pub exports: Arc<Mutex<Vec<HashMap<String, String>>>>,
    /// Every log record received, in arrival order.
    pub logs: Arc<Mutex<Vec<LogRecord>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl GrpcCollector {
    /// The values `name` had in the exports so far, one per export that carried it.
    pub fn metadata(&self, name: &str) -> Vec<String> {
        self.exports
            .lock()
            .unwrap()
            .iter()
            .filter_map(|md| md.get(name).cloned())
            .collect()
    }
}

impl Drop for GrpcCollector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a trace collector on `addr` speaking h2c (gRPC without TLS).
pub fn spawn_grpc_collector(addr: SocketAddr) -> Result<GrpcCollector> {
    start(addr, None, Service::Traces)
}

/// Starts a log collector (`LogsService`) on `addr` speaking h2c; records land in `logs`.
pub fn spawn_grpc_log_collector(addr: SocketAddr) -> Result<GrpcCollector> {
    start(addr, None, Service::Logs)
}

/// Which OTLP service a collector serves.
#[derive(Clone, Copy)]
enum Service {
    Traces,
    Logs,
}

/// Starts a collector on `addr` speaking gRPC over TLS, with a certificate for its IP;
/// returns it and the CA that signed the certificate (PEM).
pub fn spawn_grpc_tls_collector(addr: SocketAddr) -> Result<(GrpcCollector, String)> {
    let (cert, key, ca) = crate::web::pem_for(addr.ip())?;
    Ok((start(addr, Some((cert, key)), Service::Traces)?, ca))
}

fn start(
    addr: SocketAddr,
    tls: Option<(String, String)>,
    service: Service,
) -> Result<GrpcCollector> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("binding the gRPC collector on {addr}"))?;
    listener.set_nonblocking(true)?;
    let sink = Sink {
        spans: Arc::default(),
        exports: Arc::default(),
    };
    let (spans, exports) = (sink.spans.clone(), sink.exports.clone());
    let log_sink = LogSink::default();
    let logs = log_sink.records.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .context("the gRPC collector's TLS")?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("otlp-grpc-collector".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let stopped = async {
                    let _ = stopped.await;
                };
                // One service per collector: tonic routes several only with its `router`
                // feature (axum), which these tests do without.
                let _ = match service {
                    Service::Traces => {
                        server
                            .serve_with_incoming_shutdown(
                                TraceServiceServer::new(sink),
                                incoming,
                                stopped,
                            )
                            .await
                    }
                    Service::Logs => {
                        server
                            .serve_with_incoming_shutdown(
                                LogsServiceServer::new(log_sink),
                                incoming,
                                stopped,
                            )
                            .await
                    }
                };
            });
            // Dropping the runtime cuts the connections still open.
            drop(rt);
        })?;
    Ok(GrpcCollector {
        addr,
        spans,
        exports,
        logs,
        stop: Some(stop),
        thread: Some(thread),
    })
}

struct Sink {
    spans: Arc<Mutex<Vec<Span>>>,
    exports: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let metadata = req
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        self.exports.lock().unwrap().push(metadata);
        self.spans
            .lock()
            .unwrap()
            .extend(crate::l7::spans_of(req.into_inner()));
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One OTLP log record as the collector saw it: its body, attributes (values as text), the
/// scope's name and the resource's `service.name`.
#[derive(Debug, Clone, Default)]
pub struct LogRecord {
    pub body: String,
    pub attributes: HashMap<String, String>,
    pub scope: String,
    pub service_name: String,
}

#[derive(Default)]
struct LogSink {
    records: Arc<Mutex<Vec<LogRecord>>>,
}

#[tonic::async_trait]
impl LogsService for LogSink {
    async fn export(
        &self,
        req: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let mut out = Vec::new();
        for rl in req.into_inner().resource_logs {
            let service_name = rl
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| crate::l7::any_text(kv.value.as_ref()))
                .unwrap_or_default();
            for sl in rl.scope_logs {
                let scope = sl.scope.map(|s| s.name).unwrap_or_default();
                for r in sl.log_records {
                    out.push(LogRecord {
                        body: crate::l7::any_text(r.body.as_ref()),
                        attributes: r
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), crate::l7::any_text(kv.value.as_ref())))
                            .collect(),
                        scope: scope.clone(),
                        service_name: service_name.clone(),
                    });
                }
            }
        }
        self.records.lock().unwrap().extend(out);
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// A collector that accepts connections and never answers (a stalled or black-holed
/// collector): every export to it waits until its deadline. Counts the connections.
pub struct SilentCollector {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for SilentCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts a [`SilentCollector`] on `addr`; it holds what it accepts, reading nothing, until
/// dropped.
pub fn spawn_silent_collector(addr: SocketAddr) -> Result<SilentCollector> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("binding the collector on {addr}"))?;
    listener.set_nonblocking(true)?;
    let connections = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (count, stopped) = (connections.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stopped.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    count.fetch_add(1, Ordering::SeqCst);
                    held.push(s);
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    });
    Ok(SilentCollector {
        addr,
        connections,
        stop,
    })
}
