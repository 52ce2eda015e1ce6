//! Latency histograms: one [`LatencyHistogram`] per worker, merged once at the end of a run.
//!
//! Invariants:
//! - Values are microseconds, tracked from 1 µs to 60 s with 3 significant figures (the
//!   resolution HdrHistogram users expect; 0.1 % relative error at every magnitude).
//! - A sample is never dropped: sub-microsecond samples count as 1 µs and anything above 60 s
//!   counts as 60 s; how many samples were clamped at the top is kept in `saturated` so a
//!   report can say the maximum is a lower bound.
//! - Merging worker histograms gives exactly the histogram of all their samples (tested
//!   below), so per-worker recording loses nothing.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Error;

/// Lowest trackable latency in µs.
pub const LOWEST_US: u64 = 1;
/// Highest trackable latency in µs: 60 s, longer than any request timeout we allow.
pub const HIGHEST_US: u64 = 60_000_000;
/// Significant figures kept at every magnitude.
pub const SIGFIGS: u8 = 3;

/// A per-worker latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
    saturated: u64,
}

/// The percentiles every report carries, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
    pub min: u64,
    pub stdev: f64,
    pub samples: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram covering 1 µs ..= 60 s at 3 significant figures.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIGS)
            .expect("constant histogram bounds are valid");
        Self { hist, saturated: 0 }
    }

    /// Records one latency sample.
    #[inline]
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.record_us(us);
    }

    /// Records one latency sample given in microseconds (clamped into range).
    #[inline]
    pub fn record_us(&mut self, us: u64) {
        if us > HIGHEST_US {
            self.saturated += 1;
        }
        self.hist.saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
    }

    /// Adds every sample of `other` into `self`.
    pub fn merge(&mut self, other: &LatencyHistogram) -> Result<(), Error> {
        self.hist
            .add(&other.hist)
            .map_err(|e| Error::Histogram(format!("merge: {e:?}")))?;
        self.saturated += other.saturated;
        Ok(())
    }

    /// Number of samples recorded.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// Samples that exceeded 60 s and were recorded as 60 s.
    pub fn saturated(&self) -> u64 {
        self.saturated
    }

    /// The underlying HdrHistogram (for log output).
    pub fn inner(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// Forgets every sample, keeping the allocation.
    pub fn reset(&mut self) {
        self.hist.reset();
        self.saturated = 0;
    }

    /// Latency at quantile `q` (0.0..=1.0) in µs; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            return 0;
        }
        self.hist.value_at_quantile(q)
    }

    /// The report percentiles. HdrHistogram reports the highest value equivalent to the
    /// recorded one, so a percentile is never understated by the bucketing.
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        let h = &self.hist;
        LatencySummary {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: round2(h.mean()),
            min: h.min(),
            stdev: round2(h.stdev()),
            samples: h.len(),
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    #[test]
    fn merge_across_workers_equals_single_histogram() {
        let mut rng = SmallRng::seed_from_u64(7);
        let samples: Vec<u64> = (0..200_000)
            .map(|i| {
                // A heavy tail: mostly tens of µs, some ms, a few beyond the 60 s bound.
                match i % 1000 {
                    0 => rng.random_range(1_000_000..120_000_000),
                    1..=20 => rng.random_range(1_000..50_000),
                    _ => rng.random_range(0..500),
                }
            })
            .collect();
        let mut single = LatencyHistogram::new();
        for &s in &samples {
            single.record_us(s);
        }
        let mut workers = vec![LatencyHistogram::new(); 4];
        for (i, &s) in samples.iter().enumerate() {
            workers[i % 4].record_us(s);
        }
        let mut merged = LatencyHistogram::new();
        for w in &workers {
            merged.merge(w).unwrap();
        }
        assert_eq!(merged.len(), single.len());
        assert_eq!(merged.saturated(), single.saturated());
        assert!(merged.saturated() > 0);
        assert_eq!(merged.inner(), single.inner());
        assert_eq!(merged.summary(), single.summary());
        // Every bucket count matches, not just the summary.
        let a: Vec<_> = merged
            .inner()
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        let b: Vec<_> = single
            .inner()
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn clamps_instead_of_dropping() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_nanos(10));
        h.record(Duration::from_secs(120));
        assert_eq!(h.len(), 2);
        assert_eq!(h.saturated(), 1);
        assert_eq!(h.summary().min, 1);
        assert!(h.summary().max >= HIGHEST_US);
    }

    #[test]
    fn percentiles_within_three_significant_figures() {
        let mut h = LatencyHistogram::new();
        for us in 1..=100_000u64 {
            h.record_us(us);
        }
        let s = h.summary();
        for (got, want) in [
            (s.p50, 50_000u64),
            (s.p90, 90_000),
            (s.p99, 99_000),
            (s.p999, 99_900),
        ] {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= 0.001, "got {got} want {want}");
        }
        assert!((s.mean - 50_000.5).abs() < 50.0);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(LatencyHistogram::new().summary(), LatencySummary::default());
        assert_eq!(LatencyHistogram::new().quantile_us(0.99), 0);
    }
}
