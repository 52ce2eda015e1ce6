//! Slow start: `loadBalancer.warmupDurationSecs` (or `warmup`), Envoy's `slow_start_config`.
//! An endpoint that joined a Service less than the window ago takes a growing share of the
//! requests: its weight is `max(minimumPercent, (age / window) ^ (1 / aggression))`, so
//! linearly from 10 % by default, and full weight once the window has passed.
//!
//! Who is new is the caller's knowledge (a core records when each endpoint appeared in the
//! mesh; the endpoints there when the waypoint started are not new, as Envoy does not slow
//! start a cluster's first hosts). Weights apply to round robin (a weighted draw) and
//! least-request (the two drawn candidates compared by weight over requests in flight, as
//! Envoy's weighted least-request does); Envoy offers slow start for those two only, so a
//! rule asking it of `RANDOM` or `consistentHash` is refused.

use std::time::Duration;

use serde::Deserialize;

use crate::route::{RouteError, err};

/// Istio's `warmup`: the window, the weight a new endpoint starts at, and the curve.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupSpec {
    pub duration: String,
    /// Percent, 0 to 100; default 10.
    #[serde(default)]
    pub minimum_percent: Option<f64>,
    /// Above 0; default 1.0 (linear).
    #[serde(default)]
    pub aggression: Option<f64>,
}

/// A compiled slow start.
#[derive(Debug, Clone, PartialEq)]
pub struct Warmup {
    pub window: Duration,
    /// 0..=1.
    pub min_weight: f64,
    pub aggression: f64,
}

impl Eq for Warmup {}

/// Envoy's default minimum weight during slow start.
const MIN_PERCENT: f64 = 10.0;

impl Warmup {
    /// The weight (0..=1) of an endpoint that appeared `age` ago (`None`: long known).
    pub fn weight(&self, age: Option<Duration>) -> f64 {
        let Some(age) = age else { return 1.0 };
        if age >= self.window {
            return 1.0;
        }
        let factor = age.as_secs_f64() / self.window.as_secs_f64();
        factor.powf(1.0 / self.aggression).max(self.min_weight)
    }
}

/// Checks and compiles Istio's two spellings: `warmupDurationSecs` (a duration; the other
/// settings at their defaults) or `warmup`.
pub fn compile(
    duration_secs: Option<&str>,
    spec: Option<&WarmupSpec>,
    at: &str,
) -> Result<Option<Warmup>, RouteError> {
    let (duration, min, aggression, field) = match (duration_secs, spec) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{at}.warmup"),
                "set together with warmupDurationSecs: keep warmup (the newer field)",
            ));
        }
        (Some(d), None) => (d, None, None, "warmupDurationSecs"),
        (None, Some(w)) => (
            w.duration.as_str(),
            w.minimum_percent,
            w.aggression,
            "warmup.duration",
        ),
    };
    let window = crate::route::duration(duration, &format!("{at}.{field}"))?;
    let min = min.unwrap_or(MIN_PERCENT);
    if !(0.0..=100.0).contains(&min) {
        return Err(err(
            format!("{at}.warmup.minimumPercent"),
            format!("{min}: a percentage is 0 to 100"),
        ));
    }
    let aggression = aggression.unwrap_or(1.0);
    if !(aggression > 0.0 && aggression.is_finite()) {
        return Err(err(
            format!("{at}.warmup.aggression"),
            format!("{aggression}: must be more than 0"),
        ));
    }
    Ok(Some(Warmup {
        window,
        min_weight: min / 100.0,
        aggression,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_grows_over_the_window_from_the_minimum() {
        let w = compile(Some("100s"), None, "lb").unwrap().unwrap();
        let at = |s: u64| w.weight(Some(Duration::from_secs(s)));
        assert_eq!(w.weight(None), 1.0);
        assert_eq!(at(0), 0.1);
        assert_eq!(at(5), 0.1);
        assert!((at(50) - 0.5).abs() < 1e-9);
        assert_eq!(at(100), 1.0);
        assert_eq!(at(1000), 1.0);
        // Aggression 2: the square root, so faster at first.
        let spec = WarmupSpec {
            duration: "100s".into(),
            minimum_percent: Some(0.0),
            aggression: Some(2.0),
        };
        let w = compile(None, Some(&spec), "lb").unwrap().unwrap();
        assert!((w.weight(Some(Duration::from_secs(25))) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn bad_settings_are_named() {
        let e =
            |d: Option<&str>, w: Option<WarmupSpec>| compile(d, w.as_ref(), "lb").unwrap_err().path;
        let spec = |min: Option<f64>, aggression: Option<f64>| WarmupSpec {
            duration: "1m".into(),
            minimum_percent: min,
            aggression,
        };
        assert_eq!(e(Some("soon"), None), "lb.warmupDurationSecs");
        assert_eq!(e(Some("1m"), Some(spec(None, None))), "lb.warmup");
        assert_eq!(
            e(None, Some(spec(Some(120.0), None))),
            "lb.warmup.minimumPercent"
        );
        assert_eq!(e(None, Some(spec(None, Some(0.0)))), "lb.warmup.aggression");
        assert_eq!(compile(None, None, "lb").unwrap(), None);
    }
}
