//! The `ringmesh` binary: argument parsing and process set-up only.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use proxy::admin::AdminAddrs;
use proxy::forward::{self, ForwardConfig};
use proxy::node::listeners::EntryAddrs;
use proxy::node::{self, IncomingCpu, NodeOptions, UnknownSource};
use runtime::relay::{CopyMode, RelayOptions};
use runtime::{Cores, DriverChoice, RuntimeConfig, Shutdown};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[path = "cli/waypoint.rs"]
mod waypoint_cmd;
use waypoint_cmd::{WaypointArgs, run_waypoint};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ringmesh: a thread-per-core node proxy for sidecar-less service mesh.
#[derive(Debug, Parser)]
#[command(name = "ringmesh", version, about, long_about = None)]
struct Cli {
    /// Log filter, in tracing's EnvFilter syntax (e.g. "info", "access=debug"). Falls back to
    /// RUST_LOG, as ztunnel. Default: "info" ("warn" for `demo`, whose own output is the
    /// report).
    #[arg(long, global = true, env = "RINGMESH_LOG")]
    log: Option<String>,
    /// Log line layout: "plain" (TAB-separated, ztunnel's) or "json" (one object per line,
    /// ztunnel's keys). Read from LOG_FORMAT, as ztunnel.
    #[arg(long, global = true, env = "LOG_FORMAT", default_value = "plain")]
    log_format: proxy::telemetry::format::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node proxy: outbound capture and SOCKS5 entry, inbound HBONE and plaintext,
    /// built-in CA certificates, config file watching, admin and metrics endpoints.
    Run(Box<RunArgs>),
    /// Start a two-node mesh on loopback, send real traffic through it, print what happened.
    Demo(proxy::demo::DemoArgs),
    /// The built-in certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Mesh config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Forward TCP from one address to another on every core (no mesh logic).
    Forward(ForwardArgs),
    /// Run a waypoint: the L7 proxy that node proxies send a Service's traffic to when the
    /// Service names it (`waypoint:` in the mesh config). HBONE in on <its IP>:15008, HTTP/1.1
    /// and HTTP/2 routed by the config's `httpRoutes`, HBONE out to the chosen endpoints.
    Waypoint(Box<WaypointArgs>),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a root CA (ECDSA P-256, 10 years) in DIR: ca-cert.pem and ca-key.pem (0600).
    Init {
        /// Directory to write the CA into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Overwrite an existing CA.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a mesh config file without starting anything; exit status 1 if invalid.
    Check {
        /// The YAML file.
        file: PathBuf,
        /// The file is a cluster waypoint's (`ringmesh waypoint --xds-address`): only its
        /// own kinds, Services named by Kubernetes' rules and not looked up.
        #[arg(long)]
        waypoint: bool,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The mesh config file (YAML; see examples/mesh.yaml; ztunnel's local config format is
    /// accepted too). Watched for changes. Embedded mode; without it, cluster mode takes the
    /// mesh from istiod (--xds-address).
    #[arg(long, env = "LOCAL_XDS_PATH")]
    config: Option<PathBuf>,
    /// This node's name (overrides `node:` in the config file; in a cluster the Kubernetes
    /// node, from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Directory of the built-in CA (from `ringmesh ca init`). Without it, certificates come
    /// from the Istio CA (--ca-address).
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Outbound capture listener (redirected traffic; original destination from
    /// SO_ORIGINAL_DST). "none" disables it.
    #[arg(long, default_value = "127.0.0.1:15001", value_parser = parse_opt_addr)]
    capture: OptAddr,
    /// SOCKS5 entry (CONNECT, no auth) for hosts without redirection. "none" disables it.
    #[arg(long, default_value = "127.0.0.1:15080", value_parser = parse_opt_addr)]
    socks5: OptAddr,
    /// Admin endpoint (/config_dump, /logging, /drain). "none" disables it.
    #[arg(long, default_value = "127.0.0.1:15000", value_parser = parse_opt_addr)]
    admin: OptAddr,
    /// Prometheus endpoint (/metrics). "none" disables it. Default: 127.0.0.1:15020, and
    /// [::]:15020 in cluster mode (Prometheus scrapes the pod IP).
    #[arg(long, value_parser = parse_opt_addr)]
    metrics: Option<OptAddr>,
    /// Readiness endpoint (/healthz/ready). "none" disables it. Default: 127.0.0.1:15021,
    /// and [::]:15021 in cluster mode (the kubelet probes the pod IP).
    #[arg(long, value_parser = parse_opt_addr)]
    ready: Option<OptAddr>,
    /// HBONE port, on every node's workload IPs (mesh-wide).
    #[arg(long, default_value_t = 15008)]
    hbone_port: u16,
    /// Inbound plaintext port, on every local workload IP.
    #[arg(long, default_value_t = 15006)]
    plaintext_port: u16,
    /// Outbound traffic from an IP that is no local workload: "passthrough" or "reject".
    #[arg(long, default_value = "passthrough")]
    unknown_source: UnknownSource,
    /// Keep each new connection on the worker of the core that received it
    /// (SO_INCOMING_CPU): "all" listeners; "capture" (only the capture and SOCKS5 entries,
    /// whose peers are pods on this node: for NICs with fewer queues than workers, which
    /// would gather inbound connections on a few workers); "off" (the kernel's
    /// SO_REUSEPORT hash everywhere). /metrics shows the spread per worker
    /// (ringmesh_worker_connections_opened_total, ringmesh_worker_connections_active).
    #[arg(long, default_value = "all")]
    incoming_cpu: IncomingCpu,
    /// Lifetime of workload certificates (renewed at half-life).
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    cert_lifetime: Duration,
    /// Close pooled HBONE connections idle for this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pool_idle_timeout: Duration,
    /// Concurrent HBONE streams to one peer (per core) that each get their own connection
    /// before streams share one. 1 (default, as ztunnel) multiplexes them all; 8 moved 14 %
    /// more bytes with eight bulk streams but cost closed-loop small requests 13 % of their
    /// rate (bench/README.md, "Spreading streams over connections").
    #[arg(long, default_value_t = hbone::pool::DEFAULT_SPREAD)]
    hbone_spread: usize,
    /// How often to check the config file for changes ("0" = never).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    watch_interval: Duration,
    #[command(flatten)]
    limits: LimitArgs,
    /// The Istio version `istio_build{tag}` reports (ztunnel's chart sets this variable).
    #[arg(long, env = "ISTIO_META_ISTIO_VERSION", hide = true)]
    istio_version: Option<String>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// Cluster mode: istiod and the Istio CA, read from ztunnel's environment variables (the
/// flags win). See README "Cluster mode".
#[derive(Debug, Args)]
struct ClusterArgs {
    /// istiod's xDS address (host:port or https://host:port). Empty disables xDS. Default in
    /// a cluster without --config: https://istiod.istio-system.svc:15012.
    #[arg(long, env = "XDS_ADDRESS")]
    xds_address: Option<String>,
    /// The Istio CA's address. Default: the xDS address (unless --ca-dir).
    #[arg(long, env = "CA_ADDRESS")]
    ca_address: Option<String>,
    /// Roots that verify istiod: a PEM file, inline PEM, or SYSTEM.
    /// Default ./var/run/secrets/istio/root-cert.pem.
    #[arg(long, env = "XDS_ROOT_CA")]
    xds_root_ca: Option<String>,
    /// Roots that verify the Istio CA (same forms).
    #[arg(long, env = "CA_ROOT_CA")]
    ca_root_ca: Option<String>,
    /// Bearer token for istiod: a file (re-read on every call) or the token itself.
    /// Default ./var/run/secrets/tokens/istio-token when it exists.
    #[arg(long, env = "AUTH_TOKEN")]
    auth_token: Option<String>,
    /// Cluster id sent to istiod (`clusterid`). Default ISTIO_META_CLUSTER_ID, CLUSTER_ID,
    /// then "Kubernetes".
    #[arg(long)]
    cluster_id: Option<String>,
    /// "shared" (one proxy for the node's pods: certificates on their behalf) or
    /// "dedicated". Set to "shared" explicitly in cluster mode, it also turns in-pod mode
    /// on, as in ztunnel (with istio-cni's socket at its default path).
    #[arg(long, env = "PROXY_MODE")]
    proxy_mode: Option<proxy::node::cluster::ProxyMode>,
    /// In-pod mode: take pods from istio-cni's ZDS socket at this path and serve each from
    /// inside its network namespace (15001, 15006, 15008 there). Default when in-pod mode
    /// is on: /var/run/ztunnel/ztunnel.sock.
    #[arg(long, env = "INPOD_UDS")]
    inpod_uds: Option<PathBuf>,
    /// The packet mark on every socket made in a pod (istio-cni's rules let marked packets
    /// pass uncaptured).
    #[arg(long, env = "PACKET_MARK", default_value_t = proxy::node::inpod::INPOD_MARK)]
    packet_mark: u32,
    /// In-pod mode: answer DNS on 127.0.0.1:15053 in every pod (service hostnames from the
    /// mesh, the rest forwarded), where istio-cni redirects port 53.
    #[arg(long, env = "DNS_CAPTURE", default_value_t = true, action = clap::ArgAction::Set)]
    dns_capture: bool,
    /// Resolvers for names that are not the mesh's (comma-separated ip or ip:port).
    /// Default: the nameservers of this host's /etc/resolv.conf.
    #[arg(long, value_delimiter = ',', value_parser = parse_resolver)]
    dns_upstream: Vec<SocketAddr>,
    /// The cluster's DNS domain.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
}

fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{s:?}: expected an IP address or ip:port"))
}

/// What a peer may hold or make the node wait for (README: "Limits a node enforces").
#[derive(Debug, Args)]
struct LimitArgs {
    /// Deadline for an inbound TLS handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tls_handshake_timeout: Duration,
    /// Deadline for a peer's HTTP/2 preface and first SETTINGS once TLS is done.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    h2_handshake_timeout: Duration,
    /// Close an inbound HBONE connection that carries no stream for this long (GOAWAY).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    h2_idle_timeout: Duration,
    /// Deadline for a SOCKS5 client's greeting and request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    socks5_handshake_timeout: Duration,
    /// Deadline for dialling an upstream (a local pod, or a plain-TCP destination).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Close a relayed connection after this long without a byte either way ("0": never,
    /// as ztunnel).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Connections the node holds at once (each worker takes its share).
    #[arg(long, default_value_t = proxy::node::limits::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Inbound HBONE connections one peer IP may hold on one worker.
    #[arg(long, default_value_t = proxy::node::limits::MAX_PEER_CONNECTIONS)]
    max_peer_connections: usize,
    /// Refuse new connections once the node's resident memory is above this ("512MiB",
    /// "2GiB"; "none": no limit), until it falls below 90% of it.
    #[arg(long, default_value = "none", value_parser = parse_memory_limit)]
    memory_limit: MemoryLimit,
}

/// `--memory-limit` (a newtype: clap reads a bare `Option` as "flag may be absent").
#[derive(Debug, Clone, Copy)]
struct MemoryLimit(Option<u64>);

fn parse_memory_limit(s: &str) -> Result<MemoryLimit, String> {
    proxy::node::limits::parse_size(s).map(MemoryLimit)
}

impl LimitArgs {
    fn limits(&self) -> proxy::node::Limits {
        proxy::node::Limits {
            tls_handshake_timeout: self.tls_handshake_timeout,
            h2_handshake_timeout: self.h2_handshake_timeout,
            h2_idle_timeout: self.h2_idle_timeout,
            socks5_handshake_timeout: self.socks5_handshake_timeout,
            connect_timeout: self.connect_timeout,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            max_connections: self.max_connections,
            max_peer_connections: self.max_peer_connections,
            memory_limit: self.memory_limit.0,
        }
    }
}

/// An address flag that can be turned off with "none".
type OptAddr = Option<SocketAddr>;

fn parse_opt_addr(s: &str) -> Result<OptAddr, String> {
    if s == "none" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:15000 (or \"none\")"))
}

/// Flags shared by every command that runs workers.
#[derive(Debug, Args)]
struct RuntimeArgs {
    /// Cores to run on: "all", a count ("2"), or a list of core ids ("0,1"). Default "all"
    /// (`ringmesh run`: ZTUNNEL_WORKER_THREADS when set).
    #[arg(long, env = "RINGMESH_CORES")]
    cores: Option<Cores>,
    /// Event driver: "auto" (io_uring, falling back to epoll when it cannot start),
    /// "io-uring" (fail if unavailable) or "epoll".
    #[arg(long, default_value = "auto", env = "RINGMESH_DRIVER")]
    driver: DriverChoice,
    /// On SIGTERM/SIGINT, how long live connections may run before they are closed.
    /// Default 10s (`ringmesh run`: CONNECTION_TERMINATION_DEADLINE, or derived from
    /// TERMINATION_GRACE_PERIOD_SECONDS as ztunnel does, when set).
    #[arg(long, value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
}

/// `--drain-timeout`'s default.
const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

impl RuntimeArgs {
    fn config(&self) -> RuntimeConfig {
        RuntimeConfig {
            cores: self.cores.clone().unwrap_or(Cores::All),
            driver: self.driver,
        }
    }

    fn drain(&self) -> Duration {
        self.drain_timeout.unwrap_or(DEFAULT_DRAIN)
    }
}

#[derive(Debug, Args)]
struct ForwardArgs {
    /// Address to accept connections on (every core binds it with SO_REUSEPORT).
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward each connection to.
    #[arg(long)]
    to: SocketAddr,
    /// How bytes are moved: "splice" (zero-copy through kernel pipes) or "buffered"
    /// (completion I/O through an adaptive user-space buffer).
    #[arg(long, default_value = "splice")]
    copy: CopyMode,
    /// Close a connection after this long without a byte in either direction ("0" = never).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Give up dialling the target after this long and reset the client.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Keep each new connection on the worker of the core that received it
    /// (SO_INCOMING_CPU), as `ringmesh run` does by default: "all" (or "capture": the
    /// listener is an entry like a node's capture) or "off" (the kernel's SO_REUSEPORT hash).
    #[arg(long, default_value = "off")]
    incoming_cpu: IncomingCpu,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// Parses "250ms", "10s", "5m", "1h" or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s or 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

fn main() -> ExitCode {
    // Already done at load time by runtime's constructor; calling it here also keeps that
    // constructor's object linked into the binary.
    runtime::alloc::tune_mimalloc();
    // Set by harnesses (tests, ringmesh-bench) so their nodes die with them.
    if std::env::var_os("RINGMESH_EXIT_WITH_PARENT").is_some()
        && let Err(e) = runtime::signal::exit_with_parent()
    {
        eprintln!("ringmesh: RINGMESH_EXIT_WITH_PARENT: {e}");
    }
    let cli = Cli::parse();
    let default_log = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    let mut log = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|l| !l.is_empty()))
        .unwrap_or_else(|| default_log.to_string());
    let filter = match tracing_subscriber::EnvFilter::try_new(&log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringmesh: bad log filter {log:?}: {e}; using \"info\"");
            log = "info".into();
            tracing_subscriber::EnvFilter::new("info")
        }
    };
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(proxy::telemetry::format::Formatter(cli.log_format))
                .with_writer(std::io::stderr),
        )
        .init();
    let set_log = node::LogControl {
        default: log,
        reload: Box::new(move |f: &str| -> Result<(), String> {
            let filter = tracing_subscriber::EnvFilter::try_new(f)
                .map_err(|e| format!("bad log filter {f:?}: {e}"))?;
            reload.reload(filter).map_err(|e| e.to_string())
        }),
    };
    let result = match cli.command {
        Command::Forward(args) => run_forward(args),
        Command::Run(args) => run_node(*args, set_log),
        Command::Demo(args) => proxy::demo::run(args),
        Command::Ca(CaCommand::Init { dir, force }) => ca_init(&dir, force),
        Command::Config(ConfigCommand::Check { file, waypoint }) => config_check(&file, waypoint),
        Command::Waypoint(args) => run_waypoint(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(args: RunArgs, set_log: node::LogControl) -> anyhow::Result<()> {
    use proxy::node::cluster::{self, ClusterFlags, ClusterSettings};
    let flags = ClusterFlags {
        xds_address: args.cluster.xds_address.clone(),
        ca_address: args.cluster.ca_address.clone(),
        xds_root_ca: args.cluster.xds_root_ca.clone(),
        ca_root_ca: args.cluster.ca_root_ca.clone(),
        auth_token: args.cluster.auth_token.clone(),
        cluster_id: args.cluster.cluster_id.clone(),
        node_name: args.node.clone(),
        proxy_mode: args.cluster.proxy_mode,
        secret_ttl: Some(args.cert_lifetime),
        has_config_file: args.config.is_some(),
        has_ca_dir: args.ca_dir.is_some(),
    };
    let settings =
        ClusterSettings::from_env(std::env::vars(), &flags).map_err(|e| anyhow::anyhow!(e))?;
    let cluster_mode = settings.xds.is_some();
    let all = |port: u16| {
        Some(SocketAddr::new(
            std::net::Ipv6Addr::UNSPECIFIED.into(),
            port,
        ))
    };
    let local = |port: u16| Some(SocketAddr::from(([127, 0, 0, 1], port)));
    let metrics = args.metrics.unwrap_or_else(|| {
        if cluster_mode {
            all(15020)
        } else {
            local(15020)
        }
    });
    let ready = args.ready.unwrap_or_else(|| {
        if cluster_mode {
            all(15021)
        } else {
            local(15021)
        }
    });
    let mut runtime = args.runtime.config();
    if args.runtime.cores.is_none()
        && let Ok(v) = std::env::var("ZTUNNEL_WORKER_THREADS")
    {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = cluster::worker_threads(&v, cpus).map_err(|e| anyhow::anyhow!(e))?;
        runtime.cores = runtime::Cores::Count(n);
    }
    let mut drain_timeout = args.runtime.drain();
    if args.runtime.drain_timeout.is_none() {
        if let Ok(v) = std::env::var("CONNECTION_TERMINATION_DEADLINE") {
            drain_timeout = cluster::parse_env_duration("CONNECTION_TERMINATION_DEADLINE", &v)
                .map_err(|e| anyhow::anyhow!(e))?;
        } else if let Ok(v) = std::env::var("TERMINATION_GRACE_PERIOD_SECONDS") {
            drain_timeout = cluster::drain_from_grace(&v).map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    // In-pod mode as ztunnel chooses it: a ZDS socket named, or PROXY_MODE=shared said
    // outright in cluster mode. Otherwise listeners go on workload IPs in this namespace.
    let shared_said = args.cluster.proxy_mode == Some(cluster::ProxyMode::Shared);
    let inpod = match (&args.cluster.inpod_uds, cluster_mode && shared_said) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => Some(PathBuf::from(control::zds::DEFAULT_SOCKET)),
        (None, false) => None,
    }
    .map(|uds| proxy::node::options::InPodOptions {
        uds,
        mark: args.cluster.packet_mark,
        dns: args.cluster.dns_capture,
        dns_upstreams: if args.cluster.dns_upstream.is_empty() {
            std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| proxy::dns::nameservers(&t))
                .unwrap_or_default()
        } else {
            args.cluster.dns_upstream.clone()
        },
        cluster_domain: args.cluster.cluster_domain.clone(),
    });
    let opts = NodeOptions {
        config: args.config,
        node: args.node,
        ca_dir: args.ca_dir,
        cluster: settings,
        runtime,
        drain_timeout,
        entries: EntryAddrs {
            capture: args.capture,
            socks5: args.socks5,
        },
        admin: AdminAddrs {
            admin: args.admin,
            metrics,
            ready,
        },
        hbone_port: args.hbone_port,
        plaintext_port: args.plaintext_port,
        unknown_source: args.unknown_source,
        incoming_cpu: args.incoming_cpu,
        cert_lifetime: args.cert_lifetime,
        pool_idle_timeout: args.pool_idle_timeout,
        hbone_spread: args.hbone_spread,
        watch_interval: args.watch_interval,
        limits: args.limits.limits(),
        istio_version: args.istio_version,
        inpod,
    };
    node::run(opts, set_log)
}

fn ca_init(dir: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let files = proxy::identity::ca::init(dir, force)?;
    println!(
        "created CA: certificate {}, key {} (mode 0600)",
        files.cert.display(),
        files.key.display()
    );
    Ok(())
}

fn config_check(file: &std::path::Path, waypoint: bool) -> anyhow::Result<()> {
    if waypoint {
        let load = proxy::config::LoadOptions {
            l7_only: true,
            ..proxy::config::LoadOptions::default()
        };
        let s = proxy::config::load_file(file, &load)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .summary();
        let (authz, authn) = s.l7_policies;
        println!(
            "{}: ok (for a waypoint with istiod's mesh: {} routes, {} destination rules, {authz} authorization policies, {authn} request authentications)",
            file.display(),
            s.routes,
            s.destination_rules
        );
        return Ok(());
    }
    let summary = proxy::config::check_file(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}: ok ({summary})", file.display());
    Ok(())
}

fn nonzero(flag: &str, d: Duration) -> anyhow::Result<Duration> {
    anyhow::ensure!(!d.is_zero(), "{flag}: must be longer than zero");
    Ok(d)
}

/// The IP of workload `uid` in `config` (for the waypoint's default metrics address).
fn run_forward(args: ForwardArgs) -> anyhow::Result<()> {
    let config = ForwardConfig {
        listen: args.listen,
        to: args.to,
        relay: RelayOptions {
            mode: args.copy,
            idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
        },
        connect_timeout: args.connect_timeout,
        incoming_cpu: args.incoming_cpu,
    };
    let shutdown = Shutdown::default();
    shutdown.drain_on_signals(args.runtime.drain())?;
    let rt = forward::start(&args.runtime.config(), shutdown, config)?;
    tracing::info!(
        listen = %args.listen,
        to = %args.to,
        copy = %args.copy,
        incoming_cpu = args.incoming_cpu.as_str(),
        workers = rt.workers().len(),
        driver = %rt.driver().map(|d| d.as_str()).unwrap_or("none"),
        "forwarding"
    );
    rt.join()?;
    tracing::info!("drained, exiting");
    Ok(())
}
