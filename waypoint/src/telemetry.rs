//! Istio's Telemetry API on the waypoint: which spans, access log lines and metrics each
//! request produces, per Service, from `Telemetry` objects and the MeshConfig's providers.
//!
//! Owns: the checks of a `Telemetry` ([`check`]), the MeshConfig's providers ([`Mesh`]),
//! and merging the Telemetries that apply into one [`Plan`] per Service ([`TelemetryTable`]).
//! The request path asks the table for its Service's plan: one map lookup.
//!
//! Which Telemetries apply, and how they merge, as istiod computes them for a waypoint:
//! - the root namespace's (MeshConfig `rootNamespace`, default `istio-system`) without a
//!   selector or targets, then the waypoint's namespace's without either, then those in the
//!   waypoint's namespace that target its Gateway, then those that target the Service (in
//!   the Service's namespace); each later one overrides the earlier;
//! - a Telemetry with a workload `selector` configures sidecars, never a waypoint;
//! - a waypoint is the server side: entries whose `match.mode` is `CLIENT` do not apply;
//! - tracing: the last named provider wins; `randomSamplingPercentage`,
//!   `disableSpanReporting`, `customTags` (replaced whole), `enableIstioTags` and
//!   `disableContextPropagation` override field by field. No provider: no spans. No
//!   Telemetry tracing and no default provider: the `--otlp-endpoint` exporter, if any;
//! - access logs: a provider list overrides its parent's; `disabled` and `filter` apply to
//!   the providers they name. No Telemetry logging and no default provider: MeshConfig's
//!   `accessLogFile` decides;
//! - metrics: a provider list overrides its parent's; overrides (`disabled`, tag `REMOVE`
//!   and `UPSERT`) merge in order, per metric. Metrics are reported when a Prometheus
//!   provider is in scope.
//!
//! Providers: `opentelemetry` (OTLP over gRPC, or HTTP when `http` is set), an
//! `envoyFileAccessLog` to standard output (in an Envoy format when it has a `logFormat`,
//! [`format`](mod@format)), `envoyOtelAls` (access log records over OTLP/gRPC), and `prometheus`. Istio's built-in `envoy` and
//! `prometheus` exist when the MeshConfig does not define them. A Telemetry that names a
//! provider the waypoint cannot use (Zipkin, a file path) is warned about and that provider
//! is skipped, as istiod skips a provider it cannot fetch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::route::{RouteError, ServiceRef, err};
use crate::trace::Tracing;
use crate::trace::logs::LogExport;

mod check;
pub mod expr;
pub mod format;
mod merge;
mod mesh;
pub mod spec;
#[cfg(test)]
mod tests;

pub use check::check;
pub use expr::{Attributes, Expr};
pub use format::LogFormat;
pub use merge::{Scope, Warnings};
pub use mesh::{Exporter, Exporters, Mesh, OtelLog, Provider};
pub use spec::{MeshSpec, TelemetrySpec};

/// The root namespace when the MeshConfig names none.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Envoy's default `max_path_tag_length`.
pub const DEFAULT_MAX_TAG_LENGTH: usize = 256;
/// Longest value an `UPSERT` tag gets: request contents must not make labels unbounded.
pub const MAX_TAG_VALUE: usize = 128;

/// Istio's HTTP metrics and its two gRPC message counters, in the order the plan keeps
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    RequestCount = 0,
    RequestDuration = 1,
    RequestSize = 2,
    ResponseSize = 3,
    /// `istio_request_messages_total`: gRPC messages the client sent.
    GrpcRequestMessages = 4,
    /// `istio_response_messages_total`: gRPC messages the server sent.
    GrpcResponseMessages = 5,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::RequestCount,
        Metric::RequestDuration,
        Metric::RequestSize,
        Metric::ResponseSize,
        Metric::GrpcRequestMessages,
        Metric::GrpcResponseMessages,
    ];

    /// The metrics a request reports once it ends (the message counters also count while
    /// a stream is open).
    pub const PER_REQUEST: [Metric; 4] = [
        Metric::RequestCount,
        Metric::RequestDuration,
        Metric::RequestSize,
        Metric::ResponseSize,
    ];
}

/// How one request is observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `None`: no span (a `traceparent` passes untouched).
    pub tracing: Option<TracingPlan>,
    /// `None`: no access log line of the waypoint's own.
    pub access_log: Option<LogPlan>,
    /// Lines in Envoy's formats (providers with a `logFormat`, or the MeshConfig's), one
    /// per provider that takes the request.
    pub formatted_logs: Vec<FormattedLog>,
    pub metrics: MetricsPlan,
}

/// Access log lines in an Envoy format, on standard output or as OTLP records.
#[derive(Debug, Clone, PartialEq)]
pub struct FormattedLog {
    /// Write a line only when this is true for the request.
    pub filter: Option<Expr>,
    pub format: Arc<LogFormat>,
    pub sink: LogSink,
}

/// Where a [`FormattedLog`] goes.
#[derive(Debug, Clone)]
pub enum LogSink {
    Stdout,
    /// An `envoyOtelAls` provider's exporter ([`LogFormat::Otel`] records).
    Otel(Arc<LogExport>),
}

impl PartialEq for LogSink {
    fn eq(&self, o: &LogSink) -> bool {
        match (self, o) {
            (LogSink::Stdout, LogSink::Stdout) => true,
            (LogSink::Otel(a), LogSink::Otel(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Spans for a Service's requests.
#[derive(Clone)]
pub struct TracingPlan {
    pub tracer: Arc<Tracing>,
    /// The share of requests without a sampled parent that start a trace, 0..=1.
    pub sampling: f64,
    /// Istio's standard span attributes (`istio.*`, `http.*`, `upstream_cluster`, ...).
    pub istio_tags: bool,
    pub custom_tags: Vec<(String, TagValue)>,
    /// The longest `http.url` attribute, in bytes.
    pub max_path: usize,
}

impl std::fmt::Debug for TracingPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingPlan")
            .field("sampling", &self.sampling)
            .field("istio_tags", &self.istio_tags)
            .field("custom_tags", &self.custom_tags)
            .field("max_path", &self.max_path)
            .finish_non_exhaustive()
    }
}

impl PartialEq for TracingPlan {
    fn eq(&self, o: &TracingPlan) -> bool {
        Arc::ptr_eq(&self.tracer, &o.tracer)
            && self.sampling == o.sampling
            && self.istio_tags == o.istio_tags
            && self.custom_tags == o.custom_tags
            && self.max_path == o.max_path
    }
}

/// A custom span tag's value.
#[derive(Debug, Clone, PartialEq)]
pub enum TagValue {
    /// A literal, or an environment variable read when the plan was built.
    Fixed(String),
    /// A request header, or the default when the request has none.
    Header {
        name: http::HeaderName,
        default: String,
    },
    /// Envoy's command operators (`formatter`), filled when the span ends.
    Format(Arc<format::Format>),
}

/// Access log lines for a Service's requests.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPlan {
    /// Log a request only when this is true for it.
    pub filter: Option<Expr>,
}

/// Which of Istio's metrics a Service's requests report, and with which labels.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsPlan {
    /// Per [`Metric`]: `None` when it is not reported.
    pub metrics: [Option<Labels>; Metric::ALL.len()],
}

/// One metric's label changes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Labels {
    /// Standard labels left out.
    pub removed: Vec<String>,
    /// Labels set from an expression ([`TelemetryTable::upserts`], by name); the values
    /// ride on the request's series.
    pub upserted: Vec<String>,
}

impl MetricsPlan {
    /// Every metric, standard labels.
    pub fn standard() -> MetricsPlan {
        MetricsPlan {
            metrics: std::array::from_fn(|_| Some(Labels::default())),
        }
    }

    pub fn reports_any(&self) -> bool {
        self.metrics.iter().any(Option::is_some)
    }

    pub fn get(&self, m: Metric) -> Option<&Labels> {
        self.metrics[m as usize].as_ref()
    }
}

/// Every plan, by Service; and the MeshConfig's authorization providers, which come with
/// the same MeshConfig and are swapped with it.
#[derive(Debug, Clone)]
pub struct TelemetryTable {
    default: Arc<Plan>,
    by_service: HashMap<ServiceRef, Arc<Plan>>,
    /// Expressions of `UPSERT` tags, by tag name, over every Service.
    upserts: BTreeMap<String, Expr>,
    authz: Arc<crate::security::ext_authz::AuthzProviders>,
    /// The MeshConfig's `rootNamespace`: where class-wide policies (and Telemetry) live.
    root_namespace: Arc<str>,
}

impl TelemetryTable {
    /// The plan of a waypoint without Telemetry config: every metric, access logs, and
    /// spans to `tracer` with `sampling` if there is one.
    pub fn simple(tracer: Option<Arc<Tracing>>, sampling: f64) -> TelemetryTable {
        TelemetryTable {
            default: Arc::new(Plan {
                tracing: tracer.map(|tracer| TracingPlan {
                    tracer,
                    sampling,
                    istio_tags: true,
                    custom_tags: Vec::new(),
                    max_path: DEFAULT_MAX_TAG_LENGTH,
                }),
                access_log: Some(LogPlan { filter: None }),
                formatted_logs: Vec::new(),
                metrics: MetricsPlan::standard(),
            }),
            by_service: HashMap::new(),
            upserts: BTreeMap::new(),
            authz: Arc::default(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.into(),
        }
    }

    /// The MeshConfig's `rootNamespace` (`istio-system` without one): the namespace whose
    /// policies on GatewayClass `istio-waypoint` apply to every waypoint.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// The MeshConfig's authorization provider `name`: usable, or why not; `None` when the
    /// MeshConfig has no provider of that name.
    pub fn authz_provider(
        &self,
        name: &str,
    ) -> Option<&Result<Arc<crate::security::ext_authz::ExtAuthz>, String>> {
        self.authz.get(name)
    }

    /// The plan for requests to `service`.
    pub fn plan(&self, service: &ServiceRef) -> &Arc<Plan> {
        // Most meshes target no Service: no hashing on the request path then.
        if self.by_service.is_empty() {
            return &self.default;
        }
        self.by_service.get(service).unwrap_or(&self.default)
    }

    /// The `UPSERT` expressions (by tag name) any plan uses.
    pub fn upserts(&self) -> &BTreeMap<String, Expr> {
        &self.upserts
    }
}
