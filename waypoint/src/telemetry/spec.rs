//! The shapes the Telemetry API arrives in: Istio's `Telemetry` kind (flattened, `name` and
//! `namespace` beside the spec's fields, as the other kinds of the mesh config file), and
//! the part of Istio's MeshConfig that names telemetry providers.
//!
//! `Telemetry` denies unknown keys (a typo must not pass silently). The MeshConfig is
//! Istio's whole `mesh` document, of which only the telemetry fields are read: its other
//! fields are istiod's and the sidecars' business.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A `telemetry.istio.io/v1` Telemetry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    pub name: String,
    pub namespace: String,
    /// Workload selectors configure sidecars and node proxies; a waypoint is chosen by
    /// `targetRefs` (Istio). A Telemetry with a selector is kept, and does not apply here.
    #[serde(default)]
    pub selector: Option<SelectorSpec>,
    #[serde(default)]
    pub target_ref: Option<TelemetryTargetSpec>,
    #[serde(default)]
    pub target_refs: Vec<TelemetryTargetSpec>,
    #[serde(default)]
    pub tracing: Vec<TracingSpec>,
    #[serde(default)]
    pub metrics: Vec<MetricsSpec>,
    #[serde(default)]
    pub access_logging: Vec<AccessLoggingSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorSpec {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `kind` is `Gateway` (the waypoint) or `Service`; `group` is the kind's API group.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetryTargetSpec {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    /// Must be the Telemetry's own (Istio's rule for policy targets).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `CLIENT`, `SERVER` or `CLIENT_AND_SERVER` (the default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeSelectorSpec {
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRefSpec {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSpec {
    #[serde(default, rename = "match")]
    pub match_: Option<ModeSelectorSpec>,
    #[serde(default)]
    pub providers: Vec<ProviderRefSpec>,
    /// 0 to 100.
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
    #[serde(default)]
    pub disable_span_reporting: Option<bool>,
    #[serde(default)]
    pub custom_tags: Option<BTreeMap<String, CustomTagSpec>>,
    /// Envoy samples by the `x-request-id` when set; the waypoint draws at random either
    /// way (accepted, and noted in the design notes).
    #[serde(default)]
    pub use_request_id_for_trace_sampling: Option<bool>,
    #[serde(default)]
    pub enable_istio_tags: Option<bool>,
    #[serde(default)]
    pub disable_context_propagation: Option<bool>,
}

/// One of `literal`, `environment`, `header`, `formatter` (Envoy's command operators).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTagSpec {
    #[serde(default)]
    pub literal: Option<LiteralSpec>,
    #[serde(default)]
    pub environment: Option<NamedValueSpec>,
    #[serde(default)]
    pub header: Option<NamedValueSpec>,
    #[serde(default)]
    pub formatter: Option<LiteralSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiteralSpec {
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedValueSpec {
    pub name: String,
    #[serde(default)]
    pub default_value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSpec {
    #[serde(default)]
    pub providers: Vec<ProviderRefSpec>,
    #[serde(default)]
    pub overrides: Vec<MetricsOverrideSpec>,
    /// Envoy's flush interval to a push provider; Prometheus is scraped, so it changes
    /// nothing here (accepted).
    #[serde(default)]
    pub reporting_interval: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverrideSpec {
    #[serde(default, rename = "match")]
    pub match_: Option<MetricSelectorSpec>,
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub tag_overrides: BTreeMap<String, TagOverrideSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelectorSpec {
    /// `ALL_METRICS` (the default), `REQUEST_COUNT`, `REQUEST_DURATION`, `REQUEST_SIZE`,
    /// `RESPONSE_SIZE`, or one of the TCP and gRPC message metrics (which a waypoint's
    /// HTTP requests do not report).
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub custom_metric: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverrideSpec {
    /// `UPSERT` (the default) or `REMOVE`.
    #[serde(default)]
    pub operation: Option<String>,
    /// A CEL expression over the request's attributes (UPSERT).
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLoggingSpec {
    #[serde(default, rename = "match")]
    pub match_: Option<ModeSelectorSpec>,
    #[serde(default)]
    pub providers: Vec<ProviderRefSpec>,
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub filter: Option<FilterSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterSpec {
    /// A CEL expression; the request is logged when it is true.
    pub expression: String,
}

/// The telemetry part of Istio's MeshConfig (the `mesh` key of the `istio` ConfigMap).
/// Unknown keys are allowed: the rest of the document is not the waypoint's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// Where mesh-wide Telemetry lives (Istio's default: `istio-system`).
    #[serde(default)]
    pub root_namespace: Option<String>,
    /// Istio's older switch for access logs: any path turns them on where no Telemetry
    /// says otherwise.
    #[serde(default)]
    pub access_log_file: Option<String>,
    /// Envoy's format for the built-in `envoy` provider and `accessLogFile` lines.
    #[serde(default)]
    pub access_log_format: Option<String>,
    /// `TEXT` (default) or `JSON`.
    #[serde(default)]
    pub access_log_encoding: Option<String>,
    #[serde(default)]
    pub default_providers: DefaultProvidersSpec,
    #[serde(default)]
    pub extension_providers: Vec<ProviderSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultProvidersSpec {
    #[serde(default)]
    pub tracing: Vec<String>,
    #[serde(default)]
    pub metrics: Vec<String>,
    #[serde(default)]
    pub access_logging: Vec<String>,
}

/// One extension provider: its name and one kind. Kinds the waypoint does not export to
/// (Zipkin, Datadog, external authorization, ...) are kept by name, so a Telemetry naming
/// them is reported rather than refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    pub name: String,
    #[serde(default)]
    pub opentelemetry: Option<OpenTelemetrySpec>,
    #[serde(default)]
    pub envoy_file_access_log: Option<FileAccessLogSpec>,
    /// Access log records over OTLP/gRPC.
    #[serde(default)]
    pub envoy_otel_als: Option<OtelAlsSpec>,
    #[serde(default)]
    pub prometheus: Option<serde_yaml_ignored::Ignored>,
    /// An external authorization service over HTTP (AuthorizationPolicy `CUSTOM`).
    #[serde(default)]
    pub envoy_ext_authz_http: Option<crate::security::ext_authz::ExtAuthzHttpSpec>,
    /// The same over gRPC (Envoy's `Authorization/Check`).
    #[serde(default)]
    pub envoy_ext_authz_grpc: Option<crate::security::ext_authz::ExtAuthzGrpcSpec>,
    /// Every other key: the provider's kind, unknown or not taken.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ignored::Ignored>,
}

/// Any value, not read.
pub mod serde_yaml_ignored {
    use serde::Deserialize;

    #[derive(Debug, Clone, Default)]
    pub struct Ignored;

    impl<'de> Deserialize<'de> for Ignored {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde::de::IgnoredAny::deserialize(d).map(|_| Ignored)
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenTelemetrySpec {
    /// `[<namespace>/]<hostname>`.
    pub service: String,
    pub port: u32,
    /// The longest `http.url` tag, in bytes (Envoy's `max_path_tag_length`; default 256).
    #[serde(default)]
    pub max_tag_length: Option<u32>,
    /// Set: OTLP over HTTP; else gRPC.
    #[serde(default)]
    pub http: Option<OtelHttpSpec>,
    #[serde(default)]
    pub grpc: Option<OtelGrpcSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtelHttpSpec {
    #[serde(default)]
    pub path: Option<String>,
    /// A duration, `10s`.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub headers: Vec<HeaderSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtelGrpcSpec {
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub initial_metadata: Vec<HeaderSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderSpec {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileAccessLogSpec {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub log_format: Option<LogFormatSpec>,
}

/// Istio's `envoyOtelAls`: access log records to an OpenTelemetry collector over gRPC.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtelAlsSpec {
    /// `[<namespace>/]<hostname>`.
    pub service: String,
    pub port: u32,
    /// The records' scope name (Istio's default: `otel_envoy_accesslog`).
    #[serde(default)]
    pub log_name: Option<String>,
    /// `text`: the record's body (default: Istio's text format); `labels`: its attributes.
    #[serde(default)]
    pub log_format: Option<LogFormatSpec>,
}

/// A provider's `logFormat`: one of `text` and `labels` (a JSON line).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogFormatSpec {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub labels: Option<serde_json::Map<String, serde_json::Value>>,
}
