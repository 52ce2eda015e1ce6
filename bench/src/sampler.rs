//! CPU time and memory of processes, read from `/proc` (Linux only).
//!
//! - CPU: `utime + stime` (fields 14 and 15 of `/proc/PID/stat`, all threads of the
//!   process) in clock ticks, converted with `CLK_TCK` read once from `getconf CLK_TCK`.
//!   A [`Sampler`] reads it at start and at finish, so startup cost is not counted.
//! - Memory: `VmRSS` and `RssAnon` of `/proc/PID/status`, sampled every
//!   [`SAMPLE_EVERY`]. Peak is the largest sample; steady is the median of the samples in
//!   the second half of the window (after start-up growth, when a proxy carrying constant
//!   load has reached its working set).
//!
//! A process that exits while sampled is an error at [`Sampler::finish`]: a proxy that
//! died mid-run would make every figure of that run wrong.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Memory sampling period: 100 ms resolves a 3 s quick run into ~30 samples while costing
/// well under 1% of a core (two small file reads per process per sample).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Clock ticks per second, from `getconf CLK_TCK` (100 on every Linux we know of, but read
/// it rather than assume).
pub fn clock_ticks() -> Result<u64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .map_err(|e| Error::os("running `getconf CLK_TCK`", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::parse(
            "`getconf CLK_TCK` output",
            format!("{text:?}"),
        )),
    }
}

/// `utime + stime` of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    parse_stat_ticks(&text).ok_or_else(|| Error::parse(path, "no utime/stime fields"))
}

/// Parses utime+stime from the text of `/proc/PID/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")" come field 3 (state) onwards: utime is field 14, i.e. index 11 here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mem {
    /// `VmRSS`: every resident page, including file-backed pages of the binary.
    pub rss_kib: u64,
    /// `RssAnon`: resident anonymous pages (heap, stacks): what the process allocated.
    pub rss_anon_kib: u64,
}

/// Current `VmRSS` and `RssAnon` of `pid`.
pub fn mem(pid: u32) -> Result<Mem> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    parse_status_mem(&text).ok_or_else(|| Error::parse(path, "no VmRSS/RssAnon lines"))
}

/// Parses `VmRSS` and `RssAnon` (kB) from the text of `/proc/PID/status`.
pub fn parse_status_mem(text: &str) -> Option<Mem> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        rss_anon_kib: field("RssAnon:")?,
    })
}

/// What one process used during a sampling window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcUsage {
    pub pid: u32,
    /// CPU-seconds (user + system) spent inside the window.
    pub cpu_s: f64,
    pub rss_peak_kib: u64,
    pub rss_steady_kib: u64,
    pub rss_anon_peak_kib: u64,
    pub rss_anon_steady_kib: u64,
    /// Memory samples taken.
    pub samples: usize,
}

/// Samples a set of processes from [`Sampler::start`] to [`Sampler::finish`].
pub struct Sampler {
    pids: Vec<u32>,
    start_ticks: Vec<u64>,
    ticks_per_s: u64,
    started: Instant,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Vec<Vec<Mem>>>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").field("pids", &self.pids).finish()
    }
}

impl Sampler {
    /// Reads the CPU counters of `pids` now and starts sampling their memory.
    pub fn start(pids: &[u32], ticks_per_s: u64) -> Result<Sampler> {
        let start_ticks = pids
            .iter()
            .map(|&p| cpu_ticks(p))
            .collect::<Result<Vec<_>>>()?;
        let (stop, stopped) = mpsc::channel::<()>();
        let list = pids.to_vec();
        let thread = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                let mut series: Vec<Vec<Mem>> = vec![Vec::new(); list.len()];
                loop {
                    for (i, &pid) in list.iter().enumerate() {
                        if let Ok(m) = mem(pid) {
                            series[i].push(m);
                        }
                    }
                    // Waiting on the channel is both the sampling period and the stop signal.
                    match stopped.recv_timeout(SAMPLE_EVERY) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => return series,
                    }
                }
            })
            .map_err(|e| Error::os("starting the sampler thread", e))?;
        Ok(Sampler {
            pids: pids.to_vec(),
            start_ticks,
            ticks_per_s,
            started: Instant::now(),
            stop,
            thread,
        })
    }

    /// Stops sampling and returns each process's usage, in the order of the PIDs given.
    pub fn finish(self) -> Result<(Vec<ProcUsage>, Duration)> {
        let end_ticks: Vec<Result<u64>> = self.pids.iter().map(|&p| cpu_ticks(p)).collect();
        let wall = self.started.elapsed();
        let _ = self.stop.send(());
        let series = self
            .thread
            .join()
            .map_err(|_| Error::invalid("sampler", "sampler thread panicked"))?;
        let mut out = Vec::with_capacity(self.pids.len());
        for (i, &pid) in self.pids.iter().enumerate() {
            let end = end_ticks[i].as_ref().map_err(|e| {
                Error::invalid(
                    format!("process {pid}"),
                    format!("exited while being measured ({e})"),
                )
            })?;
            let cpu_s = end.saturating_sub(self.start_ticks[i]) as f64 / self.ticks_per_s as f64;
            out.push(usage(pid, cpu_s, &series[i]));
        }
        Ok((out, wall))
    }
}

/// Peak and steady (median of the second half) of a memory series.
pub fn usage(pid: u32, cpu_s: f64, series: &[Mem]) -> ProcUsage {
    let second_half = &series[series.len() / 2..];
    let steady = |f: fn(&Mem) -> u64| -> u64 {
        let mut v: Vec<u64> = second_half.iter().map(f).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    ProcUsage {
        pid,
        cpu_s,
        rss_peak_kib: series.iter().map(|m| m.rss_kib).max().unwrap_or(0),
        rss_steady_kib: steady(|m| m.rss_kib),
        rss_anon_peak_kib: series.iter().map(|m| m.rss_anon_kib).max().unwrap_or(0),
        rss_anon_steady_kib: steady(|m| m.rss_anon_kib),
        samples: series.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let text = "1234 (we(ird) name) R 1 1234 1234 0 -1 4194304 100 0 0 0 250 17 0 0 20 0 1 0 100 1000 50";
        assert_eq!(parse_stat_ticks(text), Some(267));
        assert_eq!(parse_stat_ticks("1 (x) R 1 2"), None);
    }

    #[test]
    fn status_fields() {
        let text =
            "Name:\tenvoy\nVmRSS:\t   66000 kB\nRssAnon:\t   15000 kB\nRssFile:\t 51000 kB\n";
        assert_eq!(
            parse_status_mem(text),
            Some(Mem {
                rss_kib: 66000,
                rss_anon_kib: 15000
            })
        );
        assert_eq!(parse_status_mem("Name:\tx\n"), None);
    }

    #[test]
    fn steady_is_median_of_second_half() {
        let s: Vec<Mem> = [10, 50, 20, 30, 40, 30]
            .iter()
            .map(|&k| Mem {
                rss_kib: k,
                rss_anon_kib: k / 10,
            })
            .collect();
        let u = usage(1, 0.5, &s);
        assert_eq!(u.rss_peak_kib, 50);
        assert_eq!(u.rss_steady_kib, 30);
        assert_eq!(u.rss_anon_steady_kib, 3);
        assert_eq!(u.samples, 6);
    }
}
