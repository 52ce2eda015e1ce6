//! `ringmesh waypoint`: its flags, and turning them into the waypoint's options (the CA,
//! istiod, the Kubernetes API, tracing, deadlines).

use super::*;

#[derive(Debug, Args)]
pub(crate) struct WaypointArgs {
    /// The mesh config file (the nodes' file; `httpRoutes` are read from it). Watched. With
    /// --xds-address it holds only the waypoint's kinds (httpRoutes, virtualServices,
    /// destinationRules, authorizationPolicies, requestAuthentications); with --kube only
    /// the mesh; with both, leave it out.
    #[arg(long, env = "LOCAL_XDS_PATH")]
    config: Option<PathBuf>,
    /// Read the waypoint's kinds (HTTPRoutes, VirtualServices, DestinationRules,
    /// AuthorizationPolicies, RequestAuthentications) from the Kubernetes API, listed and
    /// watched in every namespace, instead of the file. In a pod: the API server from
    /// KUBERNETES_SERVICE_HOST/PORT, the service account's token and CA. The waypoint
    /// waits for the first list of each kind (up to 60 s) before it serves.
    #[arg(long)]
    kube: bool,
    /// The Kubernetes API server (implies --kube), e.g. https://10.96.0.1:443.
    #[arg(long)]
    kube_api: Option<String>,
    /// The bearer token file for the API server, read for every request (default: the
    /// service account's, /var/run/secrets/kubernetes.io/serviceaccount/token).
    #[arg(long)]
    kube_token: Option<PathBuf>,
    /// Roots that verify the API server: a PEM file, inline PEM, or SYSTEM (default: the
    /// service account's ca.crt).
    #[arg(long)]
    kube_ca: Option<String>,
    /// istiod's workload xDS (e.g. https://istiod.istio-system.svc:15012): the waypoint then
    /// takes workloads and Services from istiod, as the nodes do, and its own workload is
    /// found there by --workload (istiod's uid, `<cluster>//Pod/<namespace>/<name>`).
    /// Needs the Istio CA (no --ca-dir).
    #[arg(long, env = "XDS_ADDRESS")]
    xds_address: Option<String>,
    /// Roots that verify istiod's xDS: a PEM file, inline PEM, or SYSTEM.
    #[arg(long, env = "XDS_ROOT_CA")]
    xds_root_ca: Option<String>,
    /// Directory of the built-in CA (from `ringmesh ca init`). Without it, the certificate
    /// comes from the Istio CA (--ca-address).
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// The Istio CA's address (istiod, e.g. https://istiod.istio-system.svc:15012), used
    /// when there is no --ca-dir.
    #[arg(long, env = "CA_ADDRESS")]
    ca_address: Option<String>,
    /// Roots that verify the Istio CA: a PEM file, inline PEM, or SYSTEM.
    #[arg(long, env = "CA_ROOT_CA")]
    ca_root_ca: Option<String>,
    /// Bearer token for the Istio CA: a file (re-read on every call) or the token itself.
    #[arg(long, env = "AUTH_TOKEN")]
    auth_token: Option<String>,
    /// The cluster this waypoint runs in (ISTIO_META_CLUSTER_ID). Default: Kubernetes.
    #[arg(long, env = "ISTIO_META_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// The waypoint's own workload in the config, by uid (`namespace/name` unless the
    /// workload sets `uid`), or in istiod's workloads with --xds-address
    /// (`Kubernetes//Pod/<namespace>/<name>`): its IP is where the waypoint listens, its
    /// service account the identity it presents.
    #[arg(long)]
    workload: String,
    /// HBONE port (mesh-wide, as the nodes').
    #[arg(long, default_value_t = 15008)]
    hbone_port: u16,
    /// /metrics and /healthz/ready. "none" disables it. Default: port 15020 on the
    /// waypoint's IP (every address with --xds-address).
    #[arg(long, value_parser = parse_opt_addr)]
    metrics: Option<OptAddr>,
    /// Lifetime of the waypoint's certificate (renewed at half-life).
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    cert_lifetime: Duration,
    /// How often to check the config file for changes ("0" = never).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    watch_interval: Duration,
    /// Close pooled HBONE connections to endpoints idle for this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pool_idle_timeout: Duration,
    /// Export a span per sampled request over OTLP to this collector: with --otlp-protocol
    /// http, e.g. http://otel-collector.istio-system:4318 (/v1/traces is added); with grpc,
    /// e.g. http://otel-collector.istio-system:4317 (no path). https:// is verified against
    /// --otlp-ca, else the system's roots. Unset: no tracing.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// How spans reach --otlp-endpoint: `grpc` (OTLP/gRPC, what Istio's OpenTelemetry
    /// provider uses by default) or `http` (OTLP/HTTP with protobuf bodies; `http/protobuf`
    /// is the same).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_name = "grpc|http",
        default_value = "http",
        value_parser = parse_otlp_protocol
    )]
    otlp_protocol: waypoint::trace::OtlpProtocol,
    /// A header sent with every export, NAME=VALUE (repeat the flag for more): an HTTP
    /// header over http, gRPC metadata over grpc (Istio's `http.headers` /
    /// `grpc.initialMetadata`), e.g. `authorization=Bearer <token>`. Without the flag:
    /// OTEL_EXPORTER_OTLP_HEADERS, in its form `name=value,name2=value2` (values
    /// percent-encoded). The exporter also adds OTEL_EXPORTER_OTLP_HEADERS and
    /// OTEL_EXPORTER_OTLP_TRACES_HEADERS itself: with the flag, leave them unset.
    #[arg(long = "otlp-header", value_name = "NAME=VALUE", value_parser = parse_otlp_header)]
    otlp_headers: Vec<(String, String)>,
    /// Percent of requests without a sampled `traceparent` that start a trace (Istio's
    /// default is 1); requests with one follow its sampled flag.
    #[arg(long, default_value_t = 1.0)]
    trace_sampling: f64,
    /// Roots (a PEM file) that verify an https:// --otlp-endpoint (and an OpenTelemetry
    /// provider on port 443); default: the system's.
    #[arg(long)]
    otlp_ca: Option<PathBuf>,
    /// Istio's MeshConfig (YAML: the `mesh` key of the `istio` ConfigMap, as mounted in a
    /// pod, e.g. /etc/istio/config/mesh): its `extensionProviders` and `defaultProviders`
    /// are the providers Telemetry objects name (OpenTelemetry tracing, over gRPC or HTTP;
    /// `envoyFileAccessLog` to /dev/stdout; Prometheus) and CUSTOM AuthorizationPolicies
    /// name (`envoyExtAuthzHttp`, `envoyExtAuthzGrpc`), and `accessLogFile` turns access logs on where no
    /// Telemetry decides. Watched. Without it: Prometheus metrics and access logs on, spans
    /// only to --otlp-endpoint, no external authorization.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// Once an HTTP/1.1 request's first byte has arrived, its head must be complete within
    /// this, or the connection is closed (slowloris).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_head_timeout: Duration,
    /// Close a client connection with no request in flight for this long (Envoy's default:
    /// 1 h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// How often keys fetched for RequestAuthentications (`jwksUri`, or OpenID discovery
    /// from the issuer) are fetched again (istiod's default). HTTPS servers are verified
    /// against the system's roots, or the PEM file SSL_CERT_FILE names.
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    jwks_refresh: Duration,
    /// The waypoint's Gateway (NAME, or NAMESPACE/NAME): AuthorizationPolicies and
    /// RequestAuthentications whose targetRefs name it (kind Gateway) apply to every
    /// request. Default: the workload's `gateway.networking.k8s.io/gateway-name` label, else
    /// its canonical name (Istio names a waypoint's pods after their Gateway), in its
    /// namespace.
    #[arg(long)]
    gateway: Option<String>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub(crate) fn run_waypoint(args: WaypointArgs) -> anyhow::Result<()> {
    let ca = match &args.ca_dir {
        Some(dir) => {
            anyhow::ensure!(
                args.xds_address
                    .as_deref()
                    .is_none_or(|a| a.trim().is_empty()),
                "--xds-address needs the Istio CA: with istiod's mesh, the certificate comes from istiod too (leave out --ca-dir)"
            );
            proxy::l7::CaSource::Dir(dir.clone())
        }
        None => {
            use proxy::node::cluster::{ClusterFlags, ClusterSettings, ProxyMode};
            let flags = ClusterFlags {
                xds_address: args.xds_address.clone(),
                xds_root_ca: args.xds_root_ca.clone(),
                ca_address: args.ca_address.clone(),
                ca_root_ca: args.ca_root_ca.clone(),
                auth_token: args.auth_token.clone(),
                cluster_id: args.cluster_id.clone(),
                proxy_mode: Some(ProxyMode::Dedicated),
                secret_ttl: Some(args.cert_lifetime),
                has_config_file: args.config.is_some(),
                has_ca_dir: false,
                ..ClusterFlags::default()
            };
            let settings = ClusterSettings::from_env(std::env::vars(), &flags)
                .map_err(|e| anyhow::anyhow!(e))?;
            anyhow::ensure!(
                settings.ca.is_some(),
                "the waypoint needs a CA: --ca-dir (the built-in CA) or --ca-address (the Istio CA, CA_ADDRESS)"
            );
            proxy::l7::CaSource::Istio(Box::new(settings))
        }
    };
    let from_istiod = matches!(&ca, proxy::l7::CaSource::Istio(s) if s.xds.is_some());
    let metrics = match args.metrics {
        Some(a) => a,
        // istiod's workloads arrive later: every address, as a node in a cluster.
        None if from_istiod => Some(SocketAddr::new(
            std::net::Ipv6Addr::UNSPECIFIED.into(),
            15020,
        )),
        None => Some(SocketAddr::new(
            waypoint_ip(
                args.config.as_deref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--config is needed: without --xds-address the mesh comes from this file"
                    )
                })?,
                &args.workload,
            )?,
            15020,
        )),
    };
    let kube = kube_api(&args)?;
    proxy::l7::run(proxy::l7::WaypointOptions {
        config: args.config,
        mesh_config: args.mesh_config,
        otlp_ca: args.otlp_ca.clone(),
        kube,
        ca,
        workload: args.workload,
        hbone_port: args.hbone_port,
        metrics,
        cert_lifetime: args.cert_lifetime,
        watch_interval: args.watch_interval,
        pool_idle_timeout: args.pool_idle_timeout,
        runtime: args.runtime.config(),
        drain_timeout: args.runtime.drain(),
        jwks_refresh: nonzero("--jwks-refresh", args.jwks_refresh)?,
        gateway: args.gateway,
        conn_limits: waypoint::serve::ConnLimits {
            head_timeout: nonzero("--request-head-timeout", args.request_head_timeout)?,
            idle_timeout: nonzero("--idle-timeout", args.idle_timeout)?,
        },
        tracing: match args.otlp_endpoint {
            Some(endpoint) => {
                if !(0.0..=100.0).contains(&args.trace_sampling) {
                    anyhow::bail!(
                        "--trace-sampling {}: a percentage is 0 to 100",
                        args.trace_sampling
                    );
                }
                let headers = otlp_headers(
                    args.otlp_headers,
                    std::env::var("OTEL_EXPORTER_OTLP_HEADERS").ok(),
                    &args.otlp_protocol,
                )?;
                Some(waypoint::trace::TraceConfig {
                    sampling: args.trace_sampling / 100.0,
                    roots: args.otlp_ca.clone(),
                    protocol: args.otlp_protocol,
                    headers,
                    ..waypoint::trace::TraceConfig::new(endpoint)
                })
            }
            None => None,
        },
    })
}

/// `--otlp-protocol`: grpc, http/protobuf or http.
fn parse_otlp_protocol(s: &str) -> Result<waypoint::trace::OtlpProtocol, String> {
    s.parse()
}

/// `--otlp-header NAME=VALUE`, split at the first `=` (the value may hold more); checked
/// against the protocol in [`otlp_headers`].
fn parse_otlp_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err("expected NAME=VALUE".into()),
    }
}

/// The export headers: the flags', else those of `env` (OTEL_EXPORTER_OTLP_HEADERS), each
/// checked for `protocol`; an error names where the bad one came from.
fn otlp_headers(
    flags: Vec<(String, String)>,
    env: Option<String>,
    protocol: &waypoint::trace::OtlpProtocol,
) -> anyhow::Result<Vec<(String, String)>> {
    let (headers, from) = match env {
        Some(text) if flags.is_empty() => (
            waypoint::trace::parse_header_list(&text)
                .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: {e}"))?,
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        _ => (flags, "--otlp-header"),
    };
    for (name, value) in &headers {
        waypoint::trace::check_header(name, value, protocol)
            .map_err(|e| anyhow::anyhow!("{from} {name}=...: {e}"))?;
    }
    Ok(headers)
}

/// `d`, or an error naming `flag` when it is zero (a zero deadline would close everything).
/// Where the Kubernetes API is, for `--kube`: the flags, else the pod's environment and
/// service account (the environment is read here, in `main`, as everywhere).
fn kube_api(args: &WaypointArgs) -> anyhow::Result<Option<control::kube::KubeApi>> {
    if !args.kube && args.kube_api.is_none() {
        return Ok(None);
    }
    const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let base = match &args.kube_api {
        Some(url) => url.clone(),
        None => {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                anyhow::anyhow!(
                    "--kube: KUBERNETES_SERVICE_HOST is not set (not in a pod?): give --kube-api"
                )
            })?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            // An IPv6 host goes in brackets.
            if host.contains(':') {
                format!("https://[{host}]:{port}")
            } else {
                format!("https://{host}:{port}")
            }
        }
    };
    let base = control::fetch::check_url(&base).map_err(|e| anyhow::anyhow!("--kube-api: {e}"))?;
    let token = match &args.kube_token {
        Some(t) => Some(t.clone()),
        None if args.kube_api.is_none() => Some(PathBuf::from(format!("{SA}/token"))),
        None => None,
    };
    let roots = match &args.kube_ca {
        Some(v) => control::grpc::RootCa::parse(v),
        None if args.kube_api.is_none() => {
            control::grpc::RootCa::File(PathBuf::from(format!("{SA}/ca.crt")))
        }
        None => control::grpc::RootCa::System,
    };
    Ok(Some(control::kube::KubeApi { base, token, roots }))
}

fn waypoint_ip(config: &std::path::Path, uid: &str) -> anyhow::Result<std::net::IpAddr> {
    let load = proxy::config::LoadOptions::default();
    let snap = proxy::config::load_file(config, &load).map_err(|e| anyhow::anyhow!("{e}"))?;
    snap.workload_by_uid(uid)
        .and_then(|w| w.ips.first().copied())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--workload {uid}: no workload with this uid and an IP in {}",
                config.display()
            )
        })
}
