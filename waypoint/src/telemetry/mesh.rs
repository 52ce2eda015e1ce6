//! The MeshConfig's telemetry providers, checked: what each provider is to the waypoint,
//! and where an OpenTelemetry provider's spans go.

use std::collections::HashMap;
use std::time::Duration;

use crate::security::ext_authz::{AuthzProviders, ExtAuthz};

use super::*;

/// A provider of the MeshConfig, as the waypoint can use it.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    /// OTLP traces.
    OpenTelemetry(Exporter),
    /// Access log lines on standard output: the waypoint's own line, or Envoy's format.
    StdoutLog(Option<Arc<LogFormat>>),
    /// Access log records over OTLP/gRPC (`envoyOtelAls`).
    OtelLog(OtelLog),
    Prometheus,
    /// An external authorization service (`envoyExtAuthzHttp` or `envoyExtAuthzGrpc`), or
    /// why it cannot be used.
    ExtAuthz(Result<Arc<ExtAuthz>, String>),
    /// A kind the waypoint does not export to, with why.
    Unusable(String),
}

/// Where and how an OpenTelemetry provider's spans go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Exporter {
    /// `http://host:port` (`https://` for port 443).
    pub endpoint: String,
    /// `None`: gRPC; `Some(path)`: OTLP/HTTP to that path.
    pub http_path: Option<String>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// `service.name` of the spans' resource.
    pub service_name: String,
    pub max_tag_length: usize,
}

/// An `envoyOtelAls` provider: where its records go and what they hold.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelLog {
    /// The collector (gRPC).
    pub exporter: Exporter,
    /// The records' scope name.
    pub log_name: String,
    /// The body and attributes ([`LogFormat::Otel`]).
    pub format: Arc<LogFormat>,
}

/// Starts (or reuses) the exporter of an OpenTelemetry provider.
pub trait Exporters {
    fn exporter(&mut self, e: &Exporter) -> Result<Arc<Tracing>, String>;
    /// The access log exporter of an `envoyOtelAls` provider.
    fn log_exporter(&mut self, e: &Exporter, log_name: &str) -> Result<Arc<LogExport>, String>;
}

/// The MeshConfig's telemetry part, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    pub root_namespace: String,
    /// `accessLogFile` is set.
    pub access_log_file: bool,
    /// The MeshConfig's `accessLogFormat` / `accessLogEncoding`, for `accessLogFile` and
    /// the built-in `envoy` provider (`None`: the waypoint's own line).
    pub access_log_format: Option<Arc<LogFormat>>,
    pub default_tracing: Vec<String>,
    pub default_metrics: Vec<String>,
    pub default_access_logging: Vec<String>,
    /// By lower-case name (Istio matches provider names without case).
    pub providers: HashMap<String, (String, Provider)>,
}

impl Default for Mesh {
    /// The waypoint without a MeshConfig: Istio's built-in providers, metrics by
    /// Prometheus and access logs on standard output by default.
    fn default() -> Mesh {
        Mesh::build(
            &MeshSpec {
                default_providers: spec::DefaultProvidersSpec {
                    metrics: vec!["prometheus".into()],
                    access_logging: vec!["envoy".into()],
                    tracing: Vec::new(),
                },
                ..MeshSpec::default()
            },
            "waypoint",
        )
        .expect("the built-in MeshConfig is valid")
    }
}

impl Mesh {
    /// Checks `spec`; `service_name` names the spans' resource (`<gateway>.<namespace>`, as
    /// Istio names a waypoint's).
    pub fn build(spec: &MeshSpec, service_name: &str) -> Result<Mesh, RouteError> {
        let mut providers = HashMap::new();
        for (i, p) in spec.extension_providers.iter().enumerate() {
            let at = format!("extensionProviders[{i}]");
            if p.name.is_empty() {
                return Err(err(format!("{at}.name"), "a provider needs a name"));
            }
            let provider = if let Some(o) = &p.opentelemetry {
                Provider::OpenTelemetry(exporter(o, &at, service_name)?)
            } else if let Some(f) = &p.envoy_file_access_log {
                let format = match &f.log_format {
                    None => None,
                    Some(l) => Some(log_format(
                        l,
                        &format!("{at}.envoyFileAccessLog.logFormat"),
                    )?),
                };
                match f.path.as_deref() {
                    None | Some("") | Some("/dev/stdout") => Provider::StdoutLog(format),
                    Some(other) => Provider::Unusable(format!(
                        "writes to {other}; the waypoint's access log goes to standard output only"
                    )),
                }
            } else if let Some(a) = &p.envoy_otel_als {
                Provider::OtelLog(otel_log(a, &at, service_name)?)
            } else if p.prometheus.is_some() {
                Provider::Prometheus
            } else if let Some(a) = &p.envoy_ext_authz_http {
                // A bad one is kept, with why: the policies naming it then refuse.
                Provider::ExtAuthz(
                    ExtAuthz::build(&p.name, a, &at)
                        .map(Arc::new)
                        .map_err(|e| e.to_string()),
                )
            } else if let Some(g) = &p.envoy_ext_authz_grpc {
                Provider::ExtAuthz(
                    ExtAuthz::build_grpc(&p.name, g, &at)
                        .map(Arc::new)
                        .map_err(|e| e.to_string()),
                )
            } else {
                let kind = p.other.keys().next().map_or("none", String::as_str);
                Provider::Unusable(format!(
                    "a provider of kind {kind}, which the waypoint does not export to"
                ))
            };
            if providers
                .insert(p.name.to_ascii_lowercase(), (p.name.clone(), provider))
                .is_some()
            {
                return Err(err(
                    format!("{at}.name"),
                    format!("provider {:?} is defined twice", p.name),
                ));
            }
        }
        let access_log_format = mesh_log_format(spec)?;
        // Istio's built-in providers, unless the MeshConfig defines its own.
        providers
            .entry("prometheus".into())
            .or_insert(("prometheus".into(), Provider::Prometheus));
        providers.entry("envoy".into()).or_insert((
            "envoy".into(),
            Provider::StdoutLog(access_log_format.clone()),
        ));
        let root = spec
            .root_namespace
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| DEFAULT_ROOT_NAMESPACE.into());
        Ok(Mesh {
            root_namespace: root,
            access_log_file: spec
                .access_log_file
                .as_deref()
                .is_some_and(|f| !f.is_empty()),
            access_log_format,
            default_tracing: spec.default_providers.tracing.clone(),
            default_metrics: spec.default_providers.metrics.clone(),
            default_access_logging: spec.default_providers.access_logging.clone(),
            providers,
        })
    }

    pub(super) fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers
            .get(&name.to_ascii_lowercase())
            .map(|(_, p)| p)
    }

    /// The authorization providers, by their own name (a CUSTOM policy names one exactly,
    /// as istiod looks it up).
    pub fn authz_providers(&self) -> AuthzProviders {
        self.providers
            .values()
            .filter_map(|(name, p)| match p {
                Provider::ExtAuthz(a) => Some((name.clone(), a.clone())),
                _ => None,
            })
            .collect()
    }
}

/// A provider's `service` (`[<namespace>/]<hostname>`: the namespace only disambiguates
/// in Istio's registry) and `port`, checked.
fn host_port<'a>(service: &'a str, port: u32, at: &str) -> Result<(&'a str, u16), RouteError> {
    let host = service.rsplit('/').next().unwrap_or("");
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == ':' || c == '@') {
        return Err(err(
            format!("{at}.service"),
            format!("{service:?} is not a host name"),
        ));
    }
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(format!("{at}.port"), format!("{port} is not a port")))?;
    Ok((host, port))
}

/// An `envoyOtelAls` provider: gRPC to `service:port`, the body in `logFormat.text` (Istio's
/// text format when none), the attributes in `logFormat.labels`.
fn otel_log(a: &spec::OtelAlsSpec, at: &str, service_name: &str) -> Result<OtelLog, RouteError> {
    let at = format!("{at}.envoyOtelAls");
    let (host, port) = host_port(&a.service, a.port, &at)?;
    let scheme = if port == 443 { "https" } else { "http" };
    let f = a.log_format.clone().unwrap_or_default();
    let format = LogFormat::otel(f.text.as_deref(), f.labels.as_ref())
        .map_err(|e| err(format!("{at}.logFormat"), e))?;
    Ok(OtelLog {
        exporter: Exporter {
            endpoint: format!("{scheme}://{host}:{port}"),
            http_path: None,
            headers: Vec::new(),
            timeout: crate::trace::EXPORT_TIMEOUT,
            service_name: service_name.to_string(),
            max_tag_length: DEFAULT_MAX_TAG_LENGTH,
        },
        log_name: a
            .log_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| crate::trace::logs::DEFAULT_LOG_NAME.into()),
        format: Arc::new(format),
    })
}

/// An `opentelemetry` provider's exporter.
fn exporter(
    o: &spec::OpenTelemetrySpec,
    at: &str,
    service_name: &str,
) -> Result<Exporter, RouteError> {
    let (host, port) = host_port(&o.service, o.port, &format!("{at}.opentelemetry"))?;
    let scheme = if port == 443 { "https" } else { "http" };
    let (http_path, timeout, headers) = match (&o.http, &o.grpc) {
        (Some(h), _) => {
            let path = h.path.clone().unwrap_or_else(|| "/v1/traces".into());
            if !path.starts_with('/') {
                return Err(err(
                    format!("{at}.opentelemetry.http.path"),
                    format!("{path:?} does not start with /"),
                ));
            }
            (Some(path), h.timeout.as_deref(), &h.headers)
        }
        (None, Some(g)) => (None, g.timeout.as_deref(), &g.initial_metadata),
        (None, None) => (None, None, &Vec::new()),
    };
    let timeout = match timeout {
        Some(t) => crate::route::duration(t, &format!("{at}.opentelemetry.timeout"))?,
        None => Duration::from_secs(10),
    };
    let mut hs = Vec::with_capacity(headers.len());
    for (j, h) in headers.iter().enumerate() {
        http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            err(
                format!("{at}.opentelemetry.headers[{j}].name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        http::HeaderValue::from_str(&h.value).map_err(|_| {
            err(
                format!("{at}.opentelemetry.headers[{j}].value"),
                "not a header value",
            )
        })?;
        hs.push((h.name.to_ascii_lowercase(), h.value.clone()));
    }
    Ok(Exporter {
        endpoint: format!("{scheme}://{host}:{port}"),
        http_path,
        headers: hs,
        timeout,
        service_name: service_name.to_string(),
        max_tag_length: o
            .max_tag_length
            .map_or(DEFAULT_MAX_TAG_LENGTH, |n| (n as usize).max(1)),
    })
}

/// A provider's `logFormat`, checked.
fn log_format(l: &spec::LogFormatSpec, at: &str) -> Result<Arc<LogFormat>, RouteError> {
    let f = match (&l.text, &l.labels) {
        (Some(_), Some(_)) => return Err(err(at, "give text or labels, not both")),
        (Some(t), None) => LogFormat::text(t).map_err(|e| err(format!("{at}.text"), e))?,
        (None, Some(m)) => LogFormat::json(m).map_err(|e| err(format!("{at}.labels"), e))?,
        (None, None) => return Err(err(at, "give text or labels")),
    };
    Ok(Arc::new(f))
}

/// The MeshConfig's `accessLogFormat` in its `accessLogEncoding`, as Istio reads them: a
/// JSON format is an object of format strings; JSON without a format is Istio's default
/// JSON line; TEXT without a format is the waypoint's own line.
fn mesh_log_format(spec: &MeshSpec) -> Result<Option<Arc<LogFormat>>, RouteError> {
    let json = match spec.access_log_encoding.as_deref() {
        None | Some("") | Some("TEXT") => false,
        Some("JSON") => true,
        Some(other) => {
            return Err(err(
                "accessLogEncoding",
                format!("{other:?} is not TEXT or JSON"),
            ));
        }
    };
    let text = spec
        .access_log_format
        .as_deref()
        .filter(|f| !f.trim().is_empty());
    let f = match (json, text) {
        (false, None) => return Ok(None),
        (false, Some(t)) => LogFormat::text(t).map_err(|e| err("accessLogFormat", e))?,
        (true, None) => LogFormat::istio_json(),
        (true, Some(t)) => {
            let labels: serde_json::Map<String, serde_json::Value> = serde_json::from_str(t)
                .map_err(|e| {
                    err(
                        "accessLogFormat",
                        format!("with accessLogEncoding JSON, a JSON object of formats: {e}"),
                    )
                })?;
            LogFormat::json(&labels).map_err(|e| err("accessLogFormat", e))?
        }
    };
    Ok(Some(Arc::new(f)))
}
