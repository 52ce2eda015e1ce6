//! Capacity sweep logic: which load to try next and whether a step was sustainable. The
//! runs themselves are done by the caller (one ordinary run per step); this module holds no
//! I/O, so the search is unit-tested.
//!
//! Invariants:
//! - A step is sustainable only if p99 ≤ SLO, no request failed, and (open loop) the
//!   achieved rate is within [`ACHIEVED_TOLERANCE`] of the target — a generator or server
//!   that cannot keep the rate has not sustained it, whatever its latency says.
//! - The ramp stops at the first unsustainable step or at the maximum; then up to `refine`
//!   bisection steps between the last good and the first bad load narrow the answer.
//! - Every step tried is kept in the curve, in the order run.

use serde::{Deserialize, Serialize};

use crate::histogram::LatencySummary;
use crate::report::Report;

/// Open-loop runs must achieve at least this share of the target to count as sustained.
/// 5 %: above the noise of a short run on a shared machine (≈1–2 %), below any real shortfall.
pub const ACHIEVED_TOLERANCE: f64 = 0.95;

/// What a sweep varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepAxis {
    /// Open-loop target rate (req/s).
    Rate,
    /// Closed-loop connection count.
    Connections,
}

/// The search plan.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    pub axis: SweepAxis,
    pub start: f64,
    /// Added per ramp step when `factor` is 1.
    pub step: f64,
    /// Multiplied per ramp step when > 1 (geometric ramp).
    pub factor: f64,
    pub max: f64,
    pub slo_p99_us: u64,
    /// Bisection steps after the first failure.
    pub refine: u32,
}

/// One measured step of the curve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Target rate (rate axis) or connection count (connections axis).
    pub load: f64,
    pub achieved_rps: f64,
    pub latency_us: LatencySummary,
    pub errors_total: u64,
    pub late_sends: u64,
    pub sustainable: bool,
    /// Why not, when not sustainable.
    pub reason: Option<String>,
}

/// The answer of a sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepResult {
    pub axis: SweepAxis,
    pub slo_p99_us: u64,
    /// Highest achieved req/s among sustainable steps.
    pub max_sustainable_rps: Option<f64>,
    /// The load setting that achieved it.
    pub max_sustainable_load: Option<f64>,
    pub stopped_because: String,
    pub points: Vec<SweepPoint>,
}

/// Judges one step.
pub fn judge(plan: &SweepPlan, load: f64, r: &Report) -> SweepPoint {
    let mut reason = None;
    if r.errors_total > 0 {
        reason = Some(format!("{} errors", r.errors_total));
    } else if r.latency_us.p99 > plan.slo_p99_us {
        reason = Some(format!(
            "p99 {} us > SLO {} us",
            r.latency_us.p99, plan.slo_p99_us
        ));
    } else if r.responses == 0 {
        reason = Some("no responses".to_string());
    } else if plan.axis == SweepAxis::Rate && r.achieved_rps < load * ACHIEVED_TOLERANCE {
        reason = Some(format!(
            "achieved {:.0} of {:.0} req/s",
            r.achieved_rps, load
        ));
    }
    SweepPoint {
        load,
        achieved_rps: r.achieved_rps,
        latency_us: r.latency_us,
        errors_total: r.errors_total,
        late_sends: r.late_sends,
        sustainable: reason.is_none(),
        reason,
    }
}

/// The stepping state machine: ask [`Sweep::next_load`], run it, give the report to
/// [`Sweep::record`], until `next_load` returns `None`.
#[derive(Debug)]
pub struct Sweep {
    plan: SweepPlan,
    points: Vec<SweepPoint>,
    good: Option<f64>,
    bad: Option<f64>,
    refined: u32,
    next: Option<f64>,
    stopped: String,
}

impl Sweep {
    pub fn new(plan: SweepPlan) -> Sweep {
        let first = Some(plan.start);
        Sweep {
            plan,
            points: Vec::new(),
            good: None,
            bad: None,
            refined: 0,
            next: first,
            stopped: String::new(),
        }
    }

    /// The load to run next, or `None` when done.
    pub fn next_load(&self) -> Option<f64> {
        self.next
    }

    /// Records the result of running `load` and plans the next step.
    pub fn record(&mut self, load: f64, report: &Report) -> &SweepPoint {
        let p = judge(&self.plan, load, report);
        if p.sustainable {
            self.good = Some(self.good.map_or(load, |g: f64| g.max(load)));
        } else {
            self.bad = Some(self.bad.map_or(load, |b: f64| b.min(load)));
            if self.stopped.is_empty() {
                self.stopped = format!("at {load}: {}", p.reason.clone().unwrap_or_default());
            }
        }
        self.points.push(p);
        self.next = self.plan_next(load);
        self.points.last().expect("just pushed")
    }

    fn plan_next(&mut self, load: f64) -> Option<f64> {
        let integral = self.plan.axis == SweepAxis::Connections;
        match (self.good, self.bad) {
            (_, None) => {
                let n = if self.plan.factor > 1.0 {
                    load * self.plan.factor
                } else {
                    load + self.plan.step
                };
                let n = if integral {
                    n.round().max(load + 1.0)
                } else {
                    n
                };
                if load >= self.plan.max {
                    self.stopped = format!("reached the maximum load {}", self.plan.max);
                    None
                } else {
                    Some(n.min(self.plan.max))
                }
            }
            (Some(g), Some(b)) if self.refined < self.plan.refine && g < b => {
                let mid = (g + b) / 2.0;
                let mid = if integral { mid.floor() } else { mid.round() };
                if mid <= g || mid >= b {
                    return None;
                }
                self.refined += 1;
                Some(mid)
            }
            _ => None,
        }
    }

    /// The result once done (or so far).
    pub fn result(&self) -> SweepResult {
        let best = self
            .points
            .iter()
            .filter(|p| p.sustainable)
            .max_by(|a, b| a.achieved_rps.total_cmp(&b.achieved_rps));
        SweepResult {
            axis: self.plan.axis,
            slo_p99_us: self.plan.slo_p99_us,
            max_sustainable_rps: best.map(|p| p.achieved_rps),
            max_sustainable_load: best.map(|p| p.load),
            stopped_because: if self.stopped.is_empty() {
                "not finished".into()
            } else {
                self.stopped.clone()
            },
            points: self.points.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::RunInfo;
    use crate::stats::{ErrorKind, WorkerStats};
    use std::time::Duration;

    /// A fake system: latency p99 grows with load and explodes past `knee`.
    fn run(load: f64, knee: f64, errors_at: f64) -> Report {
        let mut st = WorkerStats::default();
        let lat = if load <= knee {
            200 + (load / 10.0) as u64
        } else {
            50_000
        };
        for _ in 0..1000 {
            st.ok(Duration::from_micros(lat));
        }
        if load >= errors_at {
            st.err(ErrorKind::Timeout);
        }
        let info = RunInfo {
            target_rps: Some(load),
            measured: Duration::from_secs_f64(1001.0 / load),
            ..Default::default()
        };
        Report::new(&info, &st)
    }

    fn plan() -> SweepPlan {
        SweepPlan {
            axis: SweepAxis::Rate,
            start: 1000.0,
            step: 1000.0,
            factor: 1.0,
            max: 20_000.0,
            slo_p99_us: 2000,
            refine: 3,
        }
    }

    #[test]
    fn ramps_until_slo_then_bisects() {
        let mut s = Sweep::new(plan());
        let mut tried = Vec::new();
        while let Some(load) = s.next_load() {
            tried.push(load);
            let r = run(load, 5400.0, f64::INFINITY);
            s.record(load, &r);
            assert!(tried.len() < 50);
        }
        assert_eq!(
            &tried[..6],
            &[1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0]
        );
        // Bisection between 5000 and 6000: 5500 (bad), 5250 (good), 5375 -> rounded 5375 (good).
        assert_eq!(&tried[6..], &[5500.0, 5250.0, 5375.0]);
        let res = s.result();
        assert_eq!(res.max_sustainable_load, Some(5375.0));
        assert!(res.stopped_because.contains("p99"));
        assert_eq!(res.points.len(), tried.len());
    }

    #[test]
    fn errors_stop_the_ramp() {
        let mut s = Sweep::new(SweepPlan {
            refine: 0,
            ..plan()
        });
        while let Some(load) = s.next_load() {
            s.record(load, &run(load, f64::INFINITY, 3000.0));
        }
        let res = s.result();
        assert_eq!(res.max_sustainable_load, Some(2000.0));
        assert!(
            res.stopped_because.contains("errors"),
            "{}",
            res.stopped_because
        );
    }

    #[test]
    fn shortfall_is_not_sustained() {
        let mut r = run(1000.0, f64::INFINITY, f64::INFINITY);
        r.achieved_rps = 900.0;
        assert!(!judge(&plan(), 1000.0, &r).sustainable);
    }

    #[test]
    fn reaches_max_and_connections_are_integral() {
        let p = SweepPlan {
            axis: SweepAxis::Connections,
            start: 1.0,
            step: 0.0,
            factor: 2.0,
            max: 16.0,
            slo_p99_us: 1_000_000,
            refine: 2,
        };
        let mut s = Sweep::new(p);
        let mut tried = Vec::new();
        while let Some(load) = s.next_load() {
            tried.push(load);
            let mut r = run(load * 1000.0, f64::INFINITY, f64::INFINITY);
            r.target_rps = None;
            s.record(load, &r);
        }
        assert_eq!(tried, [1.0, 2.0, 4.0, 8.0, 16.0]);
        assert!(s.result().stopped_because.contains("maximum"));
    }
}
