//! Results: one raw [`Run`] per (repetition, workload, scenario), reduced to one
//! [`Summary`] per (scenario, workload) — the median of the successful runs with the
//! spread (min..max) — and written as a Markdown table, `results.json` and SVG charts.
//!
//! Definitions (the README repeats them):
//! - `rps`: requests (or, for bulk, connections' request count as loadgen reports it) per
//!   second achieved; `gbps`: payload bits per second / 1e9.
//! - `added_*_us`: the scenario's median percentile minus `direct`'s for the same workload
//!   (absent when `direct` was not run).
//! - `proxy_cpu_s_per_1k_req` / `_per_gb`: user+system CPU-seconds of all the scenario's
//!   proxy processes during the load, per 1,000 requests / per 1e9 payload bytes.
//! - `proxy_cpu_s_per_1k_req_over_floor` / `_per_gb_over_floor`: the same minus
//!   `tcp-relay`'s for the same workload — the data plane's cost above two plain hops that
//!   copy the same bytes through user space on ringmesh's runtime (absent when `tcp-relay`
//!   was not run, for `direct`, `tcp-relay` and one-proxy scenarios, and for churn, where
//!   the relay dials per connection while a data plane may pool). In closed-loop workloads
//!   each scenario runs at its own rate, so the two figures come from different loads.
//! - `proxy_rss_mib` / `proxy_rss_anon_mib`: steady `VmRSS` / `RssAnon` per proxy process
//!   (mean over the scenario's proxy processes); `_peak_` variants: the largest sample.
//! - `proxy_idle_cpu_pct`: CPU of all proxy processes during 1 s with no traffic before
//!   the load, in % of one core.
//! - `held_kib_per_conn` (hold-* workloads): RssAnon per held connection on the proxy
//!   process holding the most: steady RssAnon during the load minus RssAnon before it,
//!   over the connections; `retained_kib_per_conn`: the same a few seconds after they all
//!   closed (memory the process did not give back).
//! - `errors`: loadgen errors summed over all runs of the pair; `failed_runs`: runs that
//!   could not be carried out at all (a proxy did not start, loadgen crashed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::sampler::ProcUsage;
use crate::workload::ClientResult;
use crate::{Error, Result};

/// One run of one workload through one scenario.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub scenario: String,
    pub workload: String,
    /// 1-based repetition number.
    pub repetition: u32,
    /// What loadgen measured (absent when the run failed before or during the client).
    pub client: Option<ClientResult>,
    /// CPU and memory of each proxy process during the load.
    pub proxies: Vec<ProcUsage>,
    /// Wall-clock seconds of the sampling window (client start to client exit).
    pub wall_s: f64,
    /// CPU of all proxy processes while idle (1 s before the load), in % of one core.
    #[serde(default)]
    pub idle_cpu_pct: Option<f64>,
    /// RssAnon (KiB) of each proxy process at the end of the idle window, before the load.
    #[serde(default)]
    pub idle_rss_anon_kib: Vec<u64>,
    /// RssAnon (KiB) of each proxy process a few seconds after a held-connections client
    /// exited (empty for other workloads).
    #[serde(default)]
    pub after_rss_anon_kib: Vec<u64>,
    /// Why the run failed, if it did.
    pub failure: Option<String>,
}

/// Figures derived from one successful run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub rps: f64,
    pub gbps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub proxy_cpu_s: f64,
    pub cpu_per_1k_req: Option<f64>,
    pub cpu_per_gb: Option<f64>,
    pub rss_mib: f64,
    pub rss_anon_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_anon_peak_mib: f64,
    pub idle_cpu_pct: Option<f64>,
    /// Held-connections workloads: KiB of RssAnon per held connection on the proxy process
    /// that holds the most (steady during the load minus idle, over the connections).
    pub held_kib_per_conn: Option<f64>,
    /// The same a few seconds after the connections closed: what was not given back.
    pub retained_kib_per_conn: Option<f64>,
}

const KIB_PER_MIB: f64 = 1024.0;

impl Run {
    /// KiB per held connection: the largest of `(mem(i) - idle(i)) / n` over the proxies.
    fn per_held_conn(&self, mem: impl Fn(usize) -> Option<u64>) -> Option<f64> {
        let n = self
            .workload
            .parse::<crate::workload::Workload>()
            .ok()?
            .held_connections()?;
        (0..self.proxies.len())
            .filter_map(|i| {
                let idle = *self.idle_rss_anon_kib.get(i)?;
                Some((mem(i)? as f64 - idle as f64) / f64::from(n))
            })
            .reduce(f64::max)
    }

    /// The run's figures, or `None` when it failed.
    pub fn figures(&self) -> Option<Figures> {
        let c = self.client.as_ref()?;
        if self.failure.is_some() {
            return None;
        }
        let secs = if c.duration_s > 0.0 {
            c.duration_s
        } else {
            self.wall_s
        };
        let cpu: f64 = self.proxies.iter().map(|p| p.cpu_s).fold(0.0, |a, b| a + b);
        let n = self.proxies.len().max(1) as f64;
        let mean = |f: fn(&ProcUsage) -> u64| {
            self.proxies.iter().fold(0.0, |a, p| a + f(p) as f64) / n / KIB_PER_MIB
        };
        Some(Figures {
            rps: c.achieved_rps,
            gbps: if secs > 0.0 {
                c.bytes as f64 * 8.0 / secs / 1e9
            } else {
                0.0
            },
            p50_us: c.latency_us.p50,
            p90_us: c.latency_us.p90,
            p99_us: c.latency_us.p99,
            p999_us: c.latency_us.p999,
            max_us: c.latency_us.max,
            proxy_cpu_s: cpu,
            cpu_per_1k_req: (c.requests > 0).then(|| cpu / c.requests as f64 * 1000.0),
            cpu_per_gb: (c.bytes > 0).then(|| cpu / (c.bytes as f64 / 1e9)),
            rss_mib: mean(|p| p.rss_steady_kib),
            rss_anon_mib: mean(|p| p.rss_anon_steady_kib),
            rss_peak_mib: mean(|p| p.rss_peak_kib),
            rss_anon_peak_mib: mean(|p| p.rss_anon_peak_kib),
            idle_cpu_pct: self.idle_cpu_pct,
            held_kib_per_conn: self.per_held_conn(|i| Some(self.proxies[i].rss_anon_steady_kib)),
            retained_kib_per_conn: self.per_held_conn(|i| self.after_rss_anon_kib.get(i).copied()),
        })
    }
}

/// Median and spread of one (scenario, workload) pair.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub scenario: String,
    pub workload: String,
    /// Successful runs the medians are taken over.
    pub runs: usize,
    pub failed_runs: usize,
    pub rps: f64,
    pub gbps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub added_p50_us: Option<f64>,
    pub added_p90_us: Option<f64>,
    pub added_p99_us: Option<f64>,
    pub added_p999_us: Option<f64>,
    pub proxy_cpu_s: f64,
    pub proxy_cpu_s_per_1k_req: Option<f64>,
    pub proxy_cpu_s_per_gb: Option<f64>,
    /// `proxy_cpu_s_per_1k_req` minus `tcp-relay`'s (see the module docs).
    #[serde(default)]
    pub proxy_cpu_s_per_1k_req_over_floor: Option<f64>,
    /// `proxy_cpu_s_per_gb` minus `tcp-relay`'s.
    #[serde(default)]
    pub proxy_cpu_s_per_gb_over_floor: Option<f64>,
    pub proxy_processes: usize,
    pub proxy_rss_mib: f64,
    pub proxy_rss_anon_mib: f64,
    pub proxy_rss_peak_mib: f64,
    pub proxy_rss_anon_peak_mib: f64,
    /// CPU of all proxy processes while idle, % of one core (absent without proxies).
    pub proxy_idle_cpu_pct: Option<f64>,
    /// Held-connections workloads: RssAnon KiB per held connection on the proxy process
    /// that holds the most (steady during the load minus before it, over the connections).
    #[serde(default)]
    pub held_kib_per_conn: Option<f64>,
    /// The same a few seconds after every connection closed: memory not given back.
    #[serde(default)]
    pub retained_kib_per_conn: Option<f64>,
    pub errors: u64,
    pub late_sends: u64,
    /// `[min, max]` over the successful runs, per figure.
    pub spread: BTreeMap<String, [f64; 2]>,
}

/// How and where the results were measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// UTC time the run started (RFC 3339).
    pub date: String,
    /// The command line.
    pub command: String,
    pub cores: usize,
    pub kernel: String,
    pub envoy_version: Option<String>,
    pub envoy_concurrency: u32,
    pub repeat: u32,
    pub duration_s: f64,
    pub quick: bool,
    pub pin: bool,
    /// `loopback` or `veth` (`crate::topology`).
    #[serde(default = "loopback")]
    pub topology: String,
}

fn loopback() -> String {
    "loopback".into()
}

/// The content of `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub meta: Meta,
    pub summary: Vec<Summary>,
    pub runs: Vec<Run>,
}

/// Median of a non-empty list (mean of the middle two for even lengths).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Reduces raw runs to summaries, in the order pairs first appear in `order`.
pub fn summarize(runs: &[Run], order: &[(String, String)]) -> Vec<Summary> {
    let mut out: Vec<Summary> = order
        .iter()
        .map(|(scenario, workload)| summarize_pair(runs, scenario, workload))
        .collect();
    // Added latency over `direct` of the same workload.
    let direct: BTreeMap<String, Summary> = out
        .iter()
        .filter(|s| s.scenario == "direct" && s.runs > 0)
        .map(|s| (s.workload.clone(), s.clone()))
        .collect();
    for s in &mut out {
        if let Some(d) = direct.get(&s.workload).filter(|_| s.runs > 0) {
            s.added_p50_us = Some(s.p50_us - d.p50_us);
            s.added_p90_us = Some(s.p90_us - d.p90_us);
            s.added_p99_us = Some(s.p99_us - d.p99_us);
            s.added_p999_us = Some(s.p999_us - d.p999_us);
        }
    }
    // CPU over the two-hop relay baseline of the same workload: only for data planes of
    // two proxies (a one-proxy `external` has one hop), and not for churn, where the
    // relay dials a new upstream connection per client connection while a data plane
    // may pool them (ringmesh does), so it is no baseline there.
    let floor: BTreeMap<String, Summary> = out
        .iter()
        .filter(|s| s.scenario == FLOOR && s.runs > 0 && s.workload != NO_FLOOR_WORKLOAD)
        .map(|s| (s.workload.clone(), s.clone()))
        .collect();
    for s in &mut out {
        if s.scenario == FLOOR || s.runs == 0 {
            continue;
        }
        let floor = floor
            .get(&s.workload)
            .filter(|f| f.proxy_processes == s.proxy_processes);
        if let Some(f) = floor {
            let over = |mine: Option<f64>, base: Option<f64>| Some(mine? - base?);
            s.proxy_cpu_s_per_1k_req_over_floor =
                over(s.proxy_cpu_s_per_1k_req, f.proxy_cpu_s_per_1k_req);
            s.proxy_cpu_s_per_gb_over_floor = over(s.proxy_cpu_s_per_gb, f.proxy_cpu_s_per_gb);
        }
    }
    out
}

/// The scenario whose CPU the "over the floor" figures subtract.
pub const FLOOR: &str = "tcp-relay";
/// The workload without "over the floor" figures (see [`summarize`]).
pub const NO_FLOOR_WORKLOAD: &str = "churn";

fn summarize_pair(runs: &[Run], scenario: &str, workload: &str) -> Summary {
    let mine: Vec<&Run> = runs
        .iter()
        .filter(|r| r.scenario == scenario && r.workload == workload)
        .collect();
    let figs: Vec<Figures> = mine.iter().filter_map(|r| r.figures()).collect();
    let mut spread = BTreeMap::new();
    let mut stat = |name: &str, f: &dyn Fn(&Figures) -> Option<f64>| -> Option<f64> {
        let mut v: Vec<f64> = figs.iter().filter_map(f).collect();
        if v.is_empty() {
            return None;
        }
        let m = median(&mut v);
        spread.insert(name.to_string(), [v[0], v[v.len() - 1]]);
        Some(m)
    };
    let rps = stat("rps", &|f| Some(f.rps)).unwrap_or(0.0);
    let gbps = stat("gbps", &|f| Some(f.gbps)).unwrap_or(0.0);
    let p50 = stat("p50_us", &|f| Some(f.p50_us)).unwrap_or(0.0);
    let p90 = stat("p90_us", &|f| Some(f.p90_us)).unwrap_or(0.0);
    let p99 = stat("p99_us", &|f| Some(f.p99_us)).unwrap_or(0.0);
    let p999 = stat("p999_us", &|f| Some(f.p999_us)).unwrap_or(0.0);
    let max = stat("max_us", &|f| Some(f.max_us)).unwrap_or(0.0);
    let cpu = stat("proxy_cpu_s", &|f| Some(f.proxy_cpu_s)).unwrap_or(0.0);
    let per_1k = stat("proxy_cpu_s_per_1k_req", &|f| f.cpu_per_1k_req);
    let per_gb = stat("proxy_cpu_s_per_gb", &|f| f.cpu_per_gb);
    let rss = stat("proxy_rss_mib", &|f| Some(f.rss_mib)).unwrap_or(0.0);
    let anon = stat("proxy_rss_anon_mib", &|f| Some(f.rss_anon_mib)).unwrap_or(0.0);
    let rss_peak = stat("proxy_rss_peak_mib", &|f| Some(f.rss_peak_mib)).unwrap_or(0.0);
    let anon_peak = stat("proxy_rss_anon_peak_mib", &|f| Some(f.rss_anon_peak_mib)).unwrap_or(0.0);
    let idle = stat("proxy_idle_cpu_pct", &|f| f.idle_cpu_pct);
    let held = stat("held_kib_per_conn", &|f| f.held_kib_per_conn);
    let retained = stat("retained_kib_per_conn", &|f| f.retained_kib_per_conn);
    Summary {
        scenario: scenario.to_string(),
        workload: workload.to_string(),
        runs: figs.len(),
        failed_runs: mine.len() - figs.len(),
        rps,
        gbps,
        p50_us: p50,
        p90_us: p90,
        p99_us: p99,
        p999_us: p999,
        max_us: max,
        added_p50_us: None,
        added_p90_us: None,
        added_p99_us: None,
        added_p999_us: None,
        proxy_cpu_s: cpu,
        proxy_cpu_s_per_1k_req: per_1k,
        proxy_cpu_s_per_gb: per_gb,
        proxy_cpu_s_per_1k_req_over_floor: None,
        proxy_cpu_s_per_gb_over_floor: None,
        proxy_processes: mine.iter().map(|r| r.proxies.len()).max().unwrap_or(0),
        proxy_rss_mib: rss,
        proxy_rss_anon_mib: anon,
        proxy_rss_peak_mib: rss_peak,
        proxy_rss_anon_peak_mib: anon_peak,
        proxy_idle_cpu_pct: idle,
        held_kib_per_conn: held,
        retained_kib_per_conn: retained,
        errors: mine
            .iter()
            .filter_map(|r| r.client.as_ref())
            .map(|c| c.errors)
            .sum(),
        late_sends: mine
            .iter()
            .filter_map(|r| r.client.as_ref())
            .map(|c| c.late_sends)
            .sum(),
        spread,
    }
}

/// A number with precision suited to its size (3 significant digits, no exponent).
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !v.is_finite() {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.5}")
    }
}

fn with_spread(s: &Summary, key: &str, v: f64) -> String {
    match s.spread.get(key) {
        Some([lo, hi]) if s.runs > 1 => format!("{} ({}–{})", num(v), num(*lo), num(*hi)),
        _ => num(v),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "–".into())
}

/// The Markdown report: how it was measured, then one table row per pair.
pub fn markdown(r: &Results) -> String {
    let m = &r.meta;
    let mut out = String::new();
    let _ = writeln!(out, "# ringmesh-bench results\n");
    let _ = writeln!(
        out,
        "- date: {}\n- command: `{}`\n- machine: {} cores, kernel {}\n- envoy: {} (concurrency {})\n- {} repetition(s) of {} s per run, scenarios interleaved; medians with (min–max) spread{}\n",
        m.date,
        m.command,
        m.cores,
        m.kernel,
        m.envoy_version.as_deref().unwrap_or("not used"),
        m.envoy_concurrency,
        m.repeat,
        m.duration_s,
        if m.topology == "veth" {
            "; topology veth: two network namespaces joined by a veth, client and client-side \
             proxy on the first half of the CPUs, server-side proxy and backend on the rest"
        } else if m.pin {
            "; pinned (load on CPU 0, proxies on the rest)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "| scenario | workload | req/s | Gbit/s | p50 µs | p90 µs | p99 µs | p99.9 µs | added p99 µs | proxy CPU-s / 1k req | proxy CPU-s / GB | idle CPU % | RSS MiB (peak) | RssAnon MiB (peak) | errors |"
    );
    let _ = writeln!(
        out,
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for s in &r.summary {
        if s.runs == 0 {
            let _ = writeln!(
                out,
                "| {} | {} | failed ({} runs) | | | | | | | | | | | | {} |",
                s.scenario, s.workload, s.failed_runs, s.errors
            );
            continue;
        }
        let proxied = s.proxy_processes > 0;
        let mem = |v: f64, peak: f64| {
            if proxied {
                format!("{} ({})", num(v), num(peak))
            } else {
                "–".into()
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} |",
            s.scenario,
            s.workload,
            with_spread(s, "rps", s.rps),
            num(s.gbps),
            num(s.p50_us),
            num(s.p90_us),
            with_spread(s, "p99_us", s.p99_us),
            num(s.p999_us),
            opt(s.added_p99_us),
            if proxied {
                s.proxy_cpu_s_per_1k_req
                    .map(|v| with_spread(s, "proxy_cpu_s_per_1k_req", v))
                    .unwrap_or_else(|| "–".into())
            } else {
                "–".into()
            },
            if proxied {
                opt(s.proxy_cpu_s_per_gb)
            } else {
                "–".into()
            },
            if proxied {
                opt(s.proxy_idle_cpu_pct)
            } else {
                "–".into()
            },
            mem(s.proxy_rss_mib, s.proxy_rss_peak_mib),
            mem(s.proxy_rss_anon_mib, s.proxy_rss_anon_peak_mib),
            s.errors,
            if s.failed_runs > 0 {
                format!(" ({} failed runs)", s.failed_runs)
            } else {
                String::new()
            },
        );
    }
    let over: Vec<&Summary> = r
        .summary
        .iter()
        .filter(|s| {
            s.proxy_cpu_s_per_1k_req_over_floor.is_some()
                || s.proxy_cpu_s_per_gb_over_floor.is_some()
        })
        .collect();
    if !over.is_empty() {
        let _ = writeln!(
            out,
            "\n## Cost over the two-hop floor\n\nProxy CPU minus `{FLOOR}`'s for the same workload: \
             what the data plane costs above two plain hops that copy the same bytes through \
             user space on ringmesh's runtime (loopback TCP, wake-ups, copies, the event loop). \
             Closed-loop workloads run at each scenario's own rate; churn is left out (the \
             relay dials per connection, a data plane may pool).\n"
        );
        let _ = writeln!(
            out,
            "| scenario | workload | proxy CPU-s / 1k req over floor | proxy CPU-s / GB over floor |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|");
        for s in over {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                s.scenario,
                s.workload,
                opt(s.proxy_cpu_s_per_1k_req_over_floor),
                opt(s.proxy_cpu_s_per_gb_over_floor)
            );
        }
    }
    let held: Vec<&Summary> = r
        .summary
        .iter()
        .filter(|s| s.held_kib_per_conn.is_some())
        .collect();
    if !held.is_empty() {
        let _ = writeln!(
            out,
            "\n## Held connections\n\nRssAnon per held connection on the proxy process that \
             holds the most (for a two-proxy data plane: the worse node), steady during the \
             load minus before it; and what is still held {} s after every connection closed.\n",
            crate::runner::AFTER_CLOSE.as_secs()
        );
        let _ = writeln!(
            out,
            "| scenario | workload | KiB per held connection | KiB per connection kept after close |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|");
        for s in held {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                s.scenario,
                s.workload,
                s.held_kib_per_conn
                    .map(|v| with_spread(s, "held_kib_per_conn", v))
                    .unwrap_or_else(|| "–".into()),
                opt(s.retained_kib_per_conn)
            );
        }
    }
    let failures: Vec<&Run> = r.runs.iter().filter(|x| x.failure.is_some()).collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "\n## Failed runs\n");
        for f in failures {
            let first = f
                .failure
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("");
            let _ = writeln!(
                out,
                "- {} / {} #{}: {}",
                f.scenario, f.workload, f.repetition, first
            );
        }
    }
    out
}

/// Writes `report.md`, `results.json` and the charts into `dir`.
pub fn write_all(r: &Results, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    let mut put = |name: &str, text: String| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        written.push(path);
        Ok(())
    };
    put("report.md", markdown(r))?;
    let json = serde_json::to_string_pretty(r).map_err(|e| Error::parse("results", e))?;
    put("results.json", json)?;
    for (name, svg) in crate::svg::charts(&r.summary) {
        put(&name, svg)?;
    }
    Ok(written)
}

/// Reads a `results.json`.
pub fn read(path: &Path) -> Result<Results> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::parse(path.display().to_string(), e))
}
