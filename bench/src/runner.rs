//! Runs the plan: for each repetition, each workload, each scenario (rotated per
//! repetition, so no scenario always runs first or last while the machine warms up or
//! other work comes and goes), a fresh backend, a fresh system under test, one loadgen
//! client run, and the proxies' CPU and memory sampled over exactly the client's lifetime.
//!
//! Invariants: every process of a run is stopped before the next run starts (each run owns
//! its [`Group`]s and drops them), so runs never share a warm proxy or a port; a run that
//! fails is recorded with its reason and the plan goes on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::net::{accepts, wait_for};
use crate::procs::{Group, Supervisor};
use crate::report::Run;
use crate::sampler::Sampler;
use crate::scenario::{self, Kind, launch};
use crate::workload::{Workload, parse_client_json, parse_listening};
use crate::{Error, Result};

/// Idle window before the load: the proxies' CPU while they carry nothing (timers,
/// wake-ups, stats flushes) — the fixed cost that dominates CPU per request at low rates.
/// 1 s resolves it to 1% of a core at the usual 100 clock ticks per second.
pub const IDLE_WINDOW: Duration = Duration::from_secs(1);

/// Wait after a held-connections client exits before RssAnon is read again: the proxies
/// see every close within milliseconds; a purge that runs on a timer has had its turn.
pub const AFTER_CLOSE: Duration = Duration::from_secs(3);

/// RssAnon of each process now, in KiB, in the order given.
fn sample_rss_anon(pids: &[u32]) -> Result<Vec<u64>> {
    pids.iter()
        .map(|&p| crate::sampler::mem(p).map(|m| m.rss_anon_kib))
        .collect()
}

/// Backend start-up deadline.
const BACKEND_DEADLINE: Duration = Duration::from_secs(20);

/// How long past its `--duration` a client may take (connect, drain, write JSON) before it
/// is killed and the run marked failed.
const CLIENT_GRACE: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenarios: Vec<Kind>,
    pub workloads: Vec<Workload>,
    pub repeat: u32,
    /// Load duration of one run.
    pub duration: Duration,
    pub loadgen: PathBuf,
    /// How scenarios are launched, and where every role runs (`scenario_opts.topology`).
    pub scenario_opts: scenario::Options,
    /// Print each scenario's generated configs the first time it starts.
    pub show_config: bool,
}

impl Plan {
    /// The (scenario, workload) pairs in report order: by workload, then scenario.
    pub fn pairs(&self) -> Vec<(Kind, Workload)> {
        let mut out = Vec::new();
        for &w in &self.workloads {
            for &k in &self.scenarios {
                if k.carries(w.protocol()) {
                    out.push((k, w));
                }
            }
        }
        out
    }

    /// Number of runs the plan makes.
    pub fn run_count(&self) -> usize {
        self.pairs().len() * self.repeat as usize
    }
}

/// `taskset -c <list>` launchers for `--pin`: the load generator and backend on CPU 0,
/// proxies on CPUs 1..n-1, so proxies never compete with the load for a core.
pub fn pin_launchers(cores: usize) -> Result<(Vec<String>, Vec<String>)> {
    if cores < 2 {
        return Err(Error::invalid(
            "--pin",
            format!("needs at least 2 cores, this machine has {cores}"),
        ));
    }
    if crate::net::on_path("taskset").is_none() {
        return Err(Error::MissingProgram {
            program: "taskset".into(),
            hint: "install util-linux (`apt-get install util-linux`)".into(),
        });
    }
    let proxies = if cores == 2 {
        "1".to_string()
    } else {
        format!("1-{}", cores - 1)
    };
    let t = |list: &str| vec!["taskset".to_string(), "-c".into(), list.to_string()];
    Ok((t("0"), t(&proxies)))
}

/// Runs the whole plan; `progress` gets one line per run.
pub fn run_plan(
    plan: &Plan,
    sup: &Supervisor,
    ticks_per_s: u64,
    mut progress: impl FnMut(&str),
) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut shown = Vec::new();
    let total = plan.run_count();
    for rep in 1..=plan.repeat {
        for &w in &plan.workloads {
            let mut order: Vec<Kind> = plan
                .scenarios
                .iter()
                .copied()
                .filter(|k| k.carries(w.protocol()))
                .collect();
            if !order.is_empty() {
                let n = order.len();
                order.rotate_left((rep as usize - 1) % n);
            }
            for k in order {
                let started = Instant::now();
                let show = plan.show_config && !shown.contains(&k);
                let run = one_run(plan, sup, ticks_per_s, k, w, rep, show);
                shown.push(k);
                let line = match (&run.failure, run.figures()) {
                    (Some(f), _) => format!("FAILED: {}", f.lines().next().unwrap_or("")),
                    (None, Some(f)) => format!(
                        "{:.0} req/s, {:.2} Gbit/s, p99 {:.0} µs, proxy CPU {}, errors {}",
                        f.rps,
                        f.gbps,
                        f.p99_us,
                        if run.proxies.is_empty() {
                            "–".to_string()
                        } else {
                            format!("{:.2} s", f.proxy_cpu_s)
                        },
                        run.client.as_ref().map(|c| c.errors).unwrap_or(0)
                    ),
                    (None, None) => "no result".into(),
                };
                progress(&format!(
                    "[{}/{}] rep {rep} {w} / {k}: {line} ({:.1} s)",
                    runs.len() + 1,
                    total,
                    started.elapsed().as_secs_f64()
                ));
                runs.push(run);
            }
        }
    }
    runs
}

/// One run; failures are recorded in the returned [`Run`], never propagated.
pub fn one_run(
    plan: &Plan,
    sup: &Supervisor,
    ticks_per_s: u64,
    kind: Kind,
    w: Workload,
    rep: u32,
    show_config: bool,
) -> Run {
    let mut run = Run {
        scenario: kind.name().to_string(),
        workload: w.name().to_string(),
        repetition: rep,
        client: None,
        proxies: Vec::new(),
        wall_s: 0.0,
        idle_cpu_pct: None,
        idle_rss_anon_kib: Vec::new(),
        after_rss_anon_kib: Vec::new(),
        failure: None,
    };
    if let Err(e) = try_run(plan, sup, ticks_per_s, kind, w, show_config, &mut run) {
        run.failure = Some(e.to_string());
    }
    run
}

fn try_run(
    plan: &Plan,
    sup: &Supervisor,
    ticks_per_s: u64,
    kind: Kind,
    w: Workload,
    show_config: bool,
    run: &mut Run,
) -> Result<()> {
    let topo = &plan.scenario_opts.topology;
    let mut backend_group = sup.group("backend")?;
    let backend_ip = scenario::backend_ip(kind, topo);
    let backend = topo
        .backend
        .run(|| start_backend(plan, &mut backend_group, w, backend_ip))?;
    let sut = scenario::start(kind, &plan.scenario_opts, sup, backend, w.protocol())?;
    if show_config {
        for (name, text) in &sut.configs {
            println!("----- {kind}: {name} -----\n{text}");
        }
    }
    let mut client_group = sup.group("client")?;
    let json = client_group.dir().join("result.json");
    let mut cmd = launch(&topo.client.launcher, &plan.loadgen);
    cmd.args(w.client_args(sut.entry, plan.duration, &json));
    if topo.remote_targets() {
        cmd.arg("--allow-remote");
    }
    if !sut.proxy_pids.is_empty() {
        // A measurement window, not a synchronisation: the proxies are already ready.
        let idle = Sampler::start(&sut.proxy_pids, ticks_per_s)?;
        std::thread::sleep(IDLE_WINDOW);
        let (usage, wall) = idle.finish()?;
        let cpu = usage.iter().fold(0.0, |a, u| a + u.cpu_s);
        run.idle_cpu_pct = Some(cpu / wall.as_secs_f64() * 100.0);
        run.idle_rss_anon_kib = sample_rss_anon(&sut.proxy_pids)?;
    }
    let sampler = Sampler::start(&sut.proxy_pids, ticks_per_s)?;
    let what = format!("loadgen {w}");
    let client = topo.client.run(|| client_group.spawn(&what, cmd))?;
    let status = client_group.wait(&client, Instant::now() + plan.duration + CLIENT_GRACE);
    let sampled = sampler.finish();
    let status = status?;
    let (usage, wall) = sampled?;
    run.proxies = usage;
    run.wall_s = wall.as_secs_f64();
    if w.held_connections().is_some() && !sut.proxy_pids.is_empty() {
        // What the proxies keep once every connection has closed: freed memory that went
        // back to the OS is gone from RssAnon by then.
        std::thread::sleep(AFTER_CLOSE);
        run.after_rss_anon_kib = sample_rss_anon(&sut.proxy_pids)?;
    }
    // loadgen exits non-zero when the run had errors; the JSON still carries the figures.
    let text = std::fs::read_to_string(&json).map_err(|e| Error::Loadgen {
        what: format!("loadgen {w} against {kind}"),
        reason: format!("exited with {status} and wrote no JSON ({e})"),
        log: client_group.log_tail(&client),
    })?;
    run.client = Some(parse_client_json(&text, &format!("loadgen {w} JSON"))?);
    drop(sut);
    drop(backend_group);
    Ok(())
}

fn start_backend(
    plan: &Plan,
    group: &mut Group,
    w: Workload,
    ip: std::net::IpAddr,
) -> Result<SocketAddr> {
    let topo = &plan.scenario_opts.topology;
    let mut cmd = launch(&topo.backend.launcher, &plan.loadgen);
    cmd.args(w.backend_args(ip));
    if topo.remote_targets() {
        cmd.arg("--allow-remote");
    }
    let what = format!("loadgen serve for {w}");
    let proc = group.spawn(&what, cmd)?;
    let ready = wait_for(Instant::now() + BACKEND_DEADLINE, || {
        if let Some(status) = group.exited(&proc) {
            return Err(Error::NotReady {
                what: what.clone(),
                reason: format!("exited with {status}"),
                log: group.log_tail(&proc),
            });
        }
        let out = std::fs::read_to_string(&proc.log).unwrap_or_default();
        Ok(parse_listening(&out).filter(|a| accepts(*a)))
    })?;
    ready.ok_or_else(|| Error::NotReady {
        what,
        reason: "no `listening on ADDR` accepting connections before the deadline".into(),
        log: group.log_tail(&proc),
    })
}
