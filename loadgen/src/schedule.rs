//! Open-loop send schedules (the wrk2 model).
//!
//! Each connection (or HTTP/2 stream slot) owns one [`Schedule`] at `rate / slots` requests
//! per second; the superposition of the slots is the target rate. A slot with a request in
//! flight cannot send the next one, so it sends late — and its latency is still measured from
//! the *intended* time. That is the coordinated-omission correction: a server that stalls
//! for 200 ms makes every request scheduled during the stall count the time it waited.
//!
//! Invariants:
//! - Intended times never drift: uniform times are `start + (phase + n) · period`, computed
//!   from `n`, not by adding periods; Poisson gaps are exponential draws with the slot's
//!   mean, so the union of independent slots is a Poisson process at the target rate.
//! - A send is "late" when it leaves more than [`LATE_THRESHOLD`] after its intended time.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::SmallRng};

/// A send more than this after its intended time counts in `late_sends`. 1 ms: well above
/// timer and scheduling jitter of a busy event loop (tens of µs), well below anything that
/// matters for a latency SLO, so a late send means the generator (or the server blocking a
/// connection) could not keep the schedule.
pub const LATE_THRESHOLD: Duration = Duration::from_millis(1);

/// Arrival process of an open-loop run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Evenly spaced sends.
    Uniform,
    /// Exponentially distributed gaps (Poisson arrivals).
    Poisson,
}

impl Arrival {
    /// Name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Arrival::Uniform => "uniform",
            Arrival::Poisson => "poisson",
        }
    }
}

/// The intended send times of one slot.
#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    period_ns: f64,
    phase: f64,
    arrival: Arrival,
    rng: SmallRng,
    n: u64,
    /// Poisson: offset of the next send from `start`, in ns.
    poisson_next_ns: f64,
}

impl Schedule {
    /// A schedule sending `rate` requests/s from `start`. `phase` in `[0, 1)` staggers slots
    /// of a uniform run so they do not fire together; `seed` makes Poisson runs reproducible.
    pub fn new(start: Instant, rate: f64, phase: f64, arrival: Arrival, seed: u64) -> Schedule {
        assert!(
            rate > 0.0 && rate.is_finite(),
            "schedule rate must be positive"
        );
        let period_ns = 1e9 / rate;
        let mut s = Schedule {
            start,
            period_ns,
            phase: phase.clamp(0.0, 1.0),
            arrival,
            rng: SmallRng::seed_from_u64(seed),
            n: 0,
            poisson_next_ns: 0.0,
        };
        if arrival == Arrival::Poisson {
            s.poisson_next_ns = s.exp_gap();
        }
        s
    }

    fn exp_gap(&mut self) -> f64 {
        // 1 - U is in (0, 1], so ln never sees 0.
        let u: f64 = self.rng.random();
        -(1.0 - u).ln() * self.period_ns
    }

    /// The intended time of the next request; advances the schedule.
    pub fn next_send(&mut self) -> Instant {
        let offset_ns = match self.arrival {
            Arrival::Uniform => (self.phase + self.n as f64) * self.period_ns,
            Arrival::Poisson => {
                let t = self.poisson_next_ns;
                self.poisson_next_ns += self.exp_gap();
                t
            }
        };
        self.n += 1;
        self.start + Duration::from_nanos(offset_ns as u64)
    }

    /// Requests scheduled so far.
    pub fn scheduled(&self) -> u64 {
        self.n
    }
}

/// True when a send at `actual` for intended time `intended` counts as late.
#[inline]
pub fn is_late(intended: Instant, actual: Instant) -> bool {
    actual.saturating_duration_since(intended) > LATE_THRESHOLD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_has_no_drift() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 3.0, 0.0, Arrival::Uniform, 1);
        let mut last = t0;
        for _ in 0..300_000 {
            last = s.next_send();
        }
        // 300_000 sends at 3/s: the last is intended at 99_999.666… s.
        let want = Duration::from_nanos((299_999.0 * 1e9 / 3.0) as u64);
        let got = last - t0;
        assert!(
            got.abs_diff(want) < Duration::from_micros(1),
            "{got:?} vs {want:?}"
        );
    }

    #[test]
    fn phase_staggers_slots() {
        let t0 = Instant::now();
        let mut a = Schedule::new(t0, 100.0, 0.0, Arrival::Uniform, 1);
        let mut b = Schedule::new(t0, 100.0, 0.5, Arrival::Uniform, 1);
        assert_eq!(a.next_send() - t0, Duration::ZERO);
        assert_eq!(b.next_send() - t0, Duration::from_millis(5));
    }

    #[test]
    fn poisson_mean_rate_and_variance() {
        let t0 = Instant::now();
        let rate = 1000.0;
        let mut s = Schedule::new(t0, rate, 0.0, Arrival::Poisson, 42);
        let n = 200_000;
        let mut prev = t0;
        let mut gaps = Vec::with_capacity(n);
        for _ in 0..n {
            let t = s.next_send();
            gaps.push((t - prev).as_secs_f64());
            prev = t;
        }
        let mean = gaps.iter().sum::<f64>() / n as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
        // Exponential: mean = 1/rate, stdev = mean (coefficient of variation 1).
        assert!((mean * rate - 1.0).abs() < 0.01, "mean gap {mean}");
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.02,
            "cv {}",
            var.sqrt() / mean
        );
    }

    #[test]
    fn lateness_threshold() {
        let t0 = Instant::now();
        assert!(!is_late(t0, t0 + Duration::from_micros(999)));
        assert!(is_late(t0, t0 + Duration::from_micros(1001)));
        assert!(!is_late(t0 + Duration::from_secs(1), t0));
    }
}
