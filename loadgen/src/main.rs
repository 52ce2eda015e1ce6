//! The `loadgen` binary: parses the command line, runs, prints the table, writes outputs.
//! Exit status: 0 clean, 1 the run had request errors, 2 usage or setup error.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use loadgen::cli::{Cli, ClientCmd, Command, SweepArgs};
use loadgen::report::{write_hdr_log, write_json};
use loadgen::sweep::{Sweep, SweepAxis};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Set by harnesses (tests, ringmesh-bench) so their load generators die with them.
    if std::env::var_os("RINGMESH_EXIT_WITH_PARENT").is_some()
        && let Err(e) = runtime::signal::exit_with_parent()
    {
        eprintln!("loadgen: RINGMESH_EXIT_WITH_PARENT: {e}");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOADGEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let cfg = args.config()?;
            let server = loadgen::serve::start(&cfg)?;
            println!(
                "listening on {} ({:?}, driver {})",
                server.local_addr(),
                cfg.mode,
                server.driver()
            );
            use std::io::Write as _;
            std::io::stdout().flush()?;
            server.run_until_signal(std::time::Duration::from_secs(1))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DevCerts(args) => {
            let (client, server) = args.write()?;
            println!(
                "wrote {}: root.pem, client.pem/.key ({client}), server.pem/.key ({server})",
                args.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plot { json, svg, title } => {
            let text = std::fs::read_to_string(&json)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", json.display()))?;
            let result: loadgen::sweep::SweepResult = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{} is not a sweep JSON: {e}", json.display()))?;
            std::fs::write(&svg, loadgen::svg::sweep_svg(&result, &title))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Client(cmd) => run_client(&cmd),
        Command::Sweep(args) => sweep(&args),
    }
}

fn run_client(cmd: &ClientCmd) -> anyhow::Result<ExitCode> {
    let spec = cmd.spec()?;
    let load = cmd.load();
    let out = loadgen::run::run(&spec)?;
    print!("{}", out.report.table());
    if let Some(p) = &load.json {
        out.report.write_json(p)?;
    }
    if let Some(p) = &load.hdr_log {
        write_hdr_log(
            p,
            &out.stats.latency,
            out.started_at,
            spec.duration.unwrap_or_default(),
            &out.report.mode,
        )?;
    }
    if out.report.requests == 0 {
        eprintln!("loadgen: no request completed in the measured window");
        return Ok(ExitCode::from(1));
    }
    Ok(if out.report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn sweep(args: &SweepArgs) -> anyhow::Result<ExitCode> {
    let plan = args.plan()?;
    let base = args.client.spec()?;
    let mut sweep = Sweep::new(plan.clone());
    while let Some(load) = sweep.next_load() {
        let mut spec = base.clone();
        spec.duration = Some(args.step_duration);
        spec.requests = None;
        spec.progress = false;
        match plan.axis {
            SweepAxis::Rate => spec.rate = Some(load),
            SweepAxis::Connections => {
                spec.rate = None;
                spec.connections = load as usize;
            }
        }
        let out = loadgen::run::run(&spec)?;
        let p = sweep.record(load, &out.report);
        eprintln!(
            "step {:>10.0}: {:>10.1} req/s  p50 {:>7} us  p99 {:>7} us  p99.9 {:>7} us  errors {}  {}",
            load,
            p.achieved_rps,
            p.latency_us.p50,
            p.latency_us.p99,
            p.latency_us.p999,
            p.errors_total,
            p.reason.as_deref().unwrap_or("ok")
        );
    }
    let result = sweep.result();
    match result.max_sustainable_rps {
        Some(r) => println!(
            "max sustainable: {r:.1} req/s at {} {} (p99 SLO {} us); stopped {}",
            result.max_sustainable_load.unwrap_or_default(),
            if plan.axis == SweepAxis::Rate {
                "req/s target"
            } else {
                "connections"
            },
            plan.slo_p99_us,
            result.stopped_because
        ),
        None => println!(
            "no sustainable step (p99 SLO {} us); stopped {}",
            plan.slo_p99_us, result.stopped_because
        ),
    }
    if let Some(p) = &args.json {
        write_json(p, &result)?;
    }
    if let Some(p) = &args.svg {
        let title = format!(
            "{} {}: latency vs rate",
            base.client.mode.name(),
            base.target_label
        );
        std::fs::write(p, loadgen::svg::sweep_svg(&result, &title))?;
    }
    Ok(if result.max_sustainable_rps.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
