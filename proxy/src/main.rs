//! The `ringmesh` binary: argument parsing and process set-up only.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use proxy::forward::{self, ForwardConfig};
use runtime::relay::{CopyMode, RelayOptions};
use runtime::{Cores, DriverChoice, RuntimeConfig, Shutdown};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ringmesh: a thread-per-core node proxy for sidecar-less service mesh.
#[derive(Debug, Parser)]
#[command(name = "ringmesh", version, about, long_about = None)]
struct Cli {
    /// Log filter, in tracing's EnvFilter syntax (e.g. "info", "ringmesh=debug").
    #[arg(long, global = true, default_value = "info", env = "RINGMESH_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Forward TCP from one address to another on every core (no mesh logic).
    Forward(ForwardArgs),
}

/// Flags shared by every command that runs workers.
#[derive(Debug, Args)]
struct RuntimeArgs {
    /// Cores to run on: "all", a count ("2"), or a list of core ids ("0,1").
    #[arg(long, default_value = "all")]
    cores: Cores,
    /// Event driver: "auto" (io_uring, falling back to epoll when it cannot start),
    /// "io-uring" (fail if unavailable) or "epoll".
    #[arg(long, default_value = "auto")]
    driver: DriverChoice,
    /// On SIGTERM/SIGINT, how long live connections may run before they are closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
}

impl RuntimeArgs {
    fn config(&self) -> RuntimeConfig {
        RuntimeConfig {
            cores: self.cores.clone(),
            driver: self.driver,
        }
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
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!(
            "ringmesh: bad --log filter {:?}: {e}; using \"info\"",
            cli.log
        );
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Forward(args) => run_forward(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_forward(args: ForwardArgs) -> anyhow::Result<()> {
    let config = ForwardConfig {
        listen: args.listen,
        to: args.to,
        relay: RelayOptions {
            mode: args.copy,
            idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
        },
        connect_timeout: args.connect_timeout,
    };
    let shutdown = Shutdown::default();
    shutdown.drain_on_signals(args.runtime.drain_timeout)?;
    let rt = forward::start(&args.runtime.config(), shutdown, config)?;
    tracing::info!(
        listen = %args.listen,
        to = %args.to,
        copy = %args.copy,
        workers = rt.workers().len(),
        driver = %rt.driver().map(|d| d.as_str()).unwrap_or("none"),
        "forwarding"
    );
    rt.join()?;
    tracing::info!("drained, exiting");
    Ok(())
}
