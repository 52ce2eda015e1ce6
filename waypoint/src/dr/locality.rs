//! Locality-aware balancing: `loadBalancer.localityLbSetting`, and Istio's default locality
//! failover.
//!
//! Meaning, as Istio sets Envoy up for a waypoint:
//! - **Failover** (the default, `enabled` unless set false) applies only to a Service whose
//!   rule has `outlierDetection`, as in Istio (without health information, failing over
//!   would only shift load). Endpoints are ranked against the waypoint's own locality:
//!   same region, zone and subzone first, then same zone, then same region, then the
//!   region `failover` names for the waypoint's region, then the rest. Traffic goes to the
//!   best rank with endpoints; a rank with only part of its endpoints healthy keeps
//!   `1.4 × healthy share` of the traffic and spills the rest to the next (Envoy's
//!   overprovisioning factor).
//! - **Distribute** (`distribute`, which excludes `failover`) splits the traffic from the
//!   waypoint's locality over localities by weight, whatever the outlier settings. A
//!   locality with no healthy endpoint takes nothing; its share goes to the others.
//!
//! - **Failover priority** (`failoverPriority`, instead of `failover`) ranks by labels
//!   instead: an endpoint whose first n labels match the waypoint's (a `key`, compared with
//!   the waypoint's own value, or `key=value`, compared with that value) is rank N - n.
//!   The topology keys `topology.kubernetes.io/region`, `topology.kubernetes.io/zone`,
//!   `topology.istio.io/subzone` and `topology.istio.io/network` read the workloads'
//!   locality and network.
//!
//! Localities are `region/zone/subzone`; a pattern may end in `*` (any below). A workload
//! or waypoint without a locality is in the empty one, which matches only itself and `*`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::route::{RouteError, err};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSpec {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub distribute: Vec<DistributeSpec>,
    #[serde(default)]
    pub failover: Vec<FailoverSpec>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DistributeSpec {
    pub from: String,
    pub to: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailoverSpec {
    pub from: String,
    pub to: String,
}

/// Where something runs. Empty fields: unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Locality<'a> {
    pub region: &'a str,
    pub zone: &'a str,
    pub subzone: &'a str,
}

/// A locality pattern: up to three fields; `None` past a `*` (anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    parts: [Option<String>; 3],
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, String> {
        let fields: Vec<&str> = s.split('/').collect();
        if s.is_empty() || fields.len() > 3 {
            return Err(format!(
                "{s:?}: a locality is region, region/zone or region/zone/subzone, optionally ending in *"
            ));
        }
        let mut parts: [Option<String>; 3] = Default::default();
        let mut wild = false;
        for (i, f) in fields.iter().enumerate() {
            if wild {
                return Err(format!("{s:?}: '*' may only be the last part"));
            }
            match *f {
                "*" => wild = true,
                "" => return Err(format!("{s:?}: an empty part")),
                f if f.contains('*') => {
                    return Err(format!("{s:?}: '*' stands alone, as a whole part"));
                }
                f => parts[i] = Some(f.to_string()),
            }
        }
        // `region` alone means every zone of it, as `region/*` does.
        Ok(Pattern { parts })
    }

    /// Whether `l` is in the pattern: each given part equal, the rest anything.
    pub fn matches(&self, l: Locality<'_>) -> bool {
        let fields = [l.region, l.zone, l.subzone];
        self.parts
            .iter()
            .zip(fields)
            .all(|(p, f)| p.as_deref().is_none_or(|p| p == f))
    }
}

/// A compiled `localityLbSetting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityPolicy {
    /// `false`: no locality preference at all.
    pub enabled: bool,
    /// Per source pattern, the weights of destination patterns (summing to 100).
    pub distribute: Vec<(Pattern, Vec<(Pattern, u32)>)>,
    /// Region → the region to fail over to first.
    pub failover: Vec<(String, String)>,
    /// Labels that rank endpoints instead of the locality: a key (the waypoint's value) or
    /// a key and a value.
    pub failover_priority: Vec<(String, Option<String>)>,
}

impl Default for LocalityPolicy {
    /// Istio's mesh default: failover on (where outlier detection is set).
    fn default() -> Self {
        LocalityPolicy {
            enabled: true,
            distribute: Vec::new(),
            failover: Vec::new(),
            failover_priority: Vec::new(),
        }
    }
}

/// The highest failover rank (every other region).
pub const LAST_RANK: u8 = 4;

/// The most `failoverPriority` labels (each adds a rank; Envoy's priorities are bounded).
pub const MAX_PRIORITY_LABELS: usize = 8;

/// Envoy's default overprovisioning factor (1.4), as a percentage.
const OVERPROVISION_PERCENT: u64 = 140;

impl LocalityPolicy {
    /// The weights for traffic from `me`: the first `distribute` entry whose `from` matches.
    pub fn weights_for(&self, me: Locality<'_>) -> Option<&[(Pattern, u32)]> {
        if !self.enabled {
            return None;
        }
        self.distribute
            .iter()
            .find(|(from, _)| from.matches(me))
            .map(|(_, to)| to.as_slice())
    }

    /// The `failoverPriority` rank of an endpoint whose labels `ep` looks up, for a
    /// waypoint whose labels `me` looks up: the number of labels, less how many of them
    /// match in order before the first that does not.
    pub fn priority_rank<'a>(
        &self,
        me: impl Fn(&str) -> Option<&'a str>,
        ep: impl Fn(&str) -> Option<&'a str>,
    ) -> u8 {
        let matched = self
            .failover_priority
            .iter()
            .take_while(|(key, value)| {
                let want = match value {
                    Some(v) => Some(v.as_str()),
                    None => me(key),
                };
                want.is_some() && ep(key) == want
            })
            .count();
        (self.failover_priority.len() - matched) as u8
    }

    /// The failover rank of an endpoint at `ep` for a waypoint at `me`: 0 is the best.
    pub fn rank(&self, me: Locality<'_>, ep: Locality<'_>) -> u8 {
        if me.region == ep.region {
            if me.zone == ep.zone {
                if me.subzone == ep.subzone { 0 } else { 1 }
            } else {
                2
            }
        } else if self
            .failover
            .iter()
            .any(|(from, to)| from == me.region && to == ep.region)
        {
            3
        } else {
            LAST_RANK
        }
    }
}

/// Which rank takes a request, given per rank (index) the endpoints there and how many of
/// them are healthy, and a uniform draw `r` in 0..10,000: each rank keeps `1.4 × healthy
/// share` of what reaches it (at most all), the rest spills to the next rank with healthy
/// endpoints (Envoy's priority load). `None` when no rank has a healthy endpoint.
pub fn rank_for(per_rank: &[(u32, u32)], r: u64) -> Option<usize> {
    let mut left: u64 = 10_000;
    let mut last_healthy = None;
    let mut r = r % 10_000;
    for (i, &(total, healthy)) in per_rank.iter().enumerate() {
        if total == 0 || healthy == 0 {
            continue;
        }
        last_healthy = Some(i);
        let keep = (u64::from(healthy) * OVERPROVISION_PERCENT * 100 / u64::from(total))
            .min(10_000)
            * left
            / 10_000;
        if r < keep {
            return Some(i);
        }
        r -= keep;
        left -= keep;
    }
    // What spilled past the last rank with healthy endpoints stays with it.
    last_healthy
}

/// Checks and compiles a `localityLbSetting`, at `at`.
pub fn compile(spec: &LocalityLbSpec, at: &str) -> Result<LocalityPolicy, RouteError> {
    if !spec.failover_priority.is_empty() && !spec.failover.is_empty() {
        return Err(err(
            format!("{at}.failoverPriority"),
            "set together with failover: the ringmesh waypoint ranks by one of them; keep failoverPriority, or failover",
        ));
    }
    if spec.failover_priority.len() > MAX_PRIORITY_LABELS {
        return Err(err(
            format!("{at}.failoverPriority"),
            format!("at most {MAX_PRIORITY_LABELS} labels"),
        ));
    }
    let mut failover_priority = Vec::with_capacity(spec.failover_priority.len());
    for (i, l) in spec.failover_priority.iter().enumerate() {
        let (key, value) = match l.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (l.as_str(), None),
        };
        crate::dr::label_key(key).map_err(|m| err(format!("{at}.failoverPriority[{i}]"), m))?;
        if let Some(v) = &value {
            crate::dr::label_value(v).map_err(|m| err(format!("{at}.failoverPriority[{i}]"), m))?;
        }
        failover_priority.push((key.to_string(), value));
    }
    if !spec.distribute.is_empty() && !spec.failover.is_empty() {
        return Err(err(
            at,
            "sets both distribute and failover: Istio allows one of them",
        ));
    }
    let mut distribute = Vec::with_capacity(spec.distribute.len());
    for (i, d) in spec.distribute.iter().enumerate() {
        let at = format!("{at}.distribute[{i}]");
        let from = Pattern::parse(&d.from).map_err(|m| err(format!("{at}.from"), m))?;
        let mut to = Vec::with_capacity(d.to.len());
        let mut sum = 0u64;
        for (loc, w) in &d.to {
            let p = Pattern::parse(loc).map_err(|m| err(format!("{at}.to.{loc}"), m))?;
            sum += u64::from(*w);
            to.push((p, *w));
        }
        if sum != 100 {
            return Err(err(
                format!("{at}.to"),
                format!("the weights add up to {sum}: they must add up to 100"),
            ));
        }
        distribute.push((from, to));
    }
    let mut failover = Vec::with_capacity(spec.failover.len());
    for (i, f) in spec.failover.iter().enumerate() {
        let at = format!("{at}.failover[{i}]");
        for (field, v) in [("from", &f.from), ("to", &f.to)] {
            if v.is_empty() || v.contains('/') || v.contains('*') {
                return Err(err(
                    format!("{at}.{field}"),
                    format!("{v:?}: failover names a region (no zone, no '*')"),
                ));
            }
        }
        if f.from == f.to {
            return Err(err(
                format!("{at}.to"),
                "the same region as from: failover goes to another region",
            ));
        }
        failover.push((f.from.clone(), f.to.clone()));
    }
    Ok(LocalityPolicy {
        enabled: spec.enabled.unwrap_or(true),
        distribute,
        failover,
        failover_priority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc<'a>(region: &'a str, zone: &'a str, subzone: &'a str) -> Locality<'a> {
        Locality {
            region,
            zone,
            subzone,
        }
    }

    fn spec(yaml: &str) -> LocalityLbSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn ranks_follow_region_zone_subzone_and_failover() {
        let p = compile(&spec("failover: [{from: us-east, to: us-west}]"), "l").unwrap();
        let me = loc("us-east", "a", "1");
        assert_eq!(p.rank(me, loc("us-east", "a", "1")), 0);
        assert_eq!(p.rank(me, loc("us-east", "a", "2")), 1);
        assert_eq!(p.rank(me, loc("us-east", "b", "1")), 2);
        assert_eq!(p.rank(me, loc("us-west", "a", "1")), 3);
        assert_eq!(p.rank(me, loc("eu", "a", "1")), LAST_RANK);
        // Without the failover entry, another region is just another region.
        assert_eq!(
            LocalityPolicy::default().rank(me, loc("us-west", "a", "1")),
            LAST_RANK
        );
        // Unknown localities are equal to each other only.
        assert_eq!(p.rank(loc("", "", ""), loc("", "", "")), 0);
    }

    #[test]
    fn traffic_stays_in_the_best_rank_while_it_is_healthy_enough() {
        let share = |per_rank: &[(u32, u32)]| -> Vec<u32> {
            let mut n = vec![0; per_rank.len()];
            for r in 0..10_000 {
                if let Some(i) = rank_for(per_rank, r) {
                    n[i] += 1;
                }
            }
            n
        };
        // All healthy: everything local.
        assert_eq!(share(&[(2, 2), (2, 2)]), [10_000, 0]);
        // Half healthy: 1.4 × 50 % = 70 % stays, 30 % spills.
        assert_eq!(share(&[(2, 1), (2, 2)]), [7_000, 3_000]);
        // 3 of 4 healthy: 1.4 × 75 % > 100 %, nothing spills.
        assert_eq!(share(&[(4, 3), (2, 2)]), [10_000, 0]);
        // No local endpoint (or none healthy): the next rank with one takes it all.
        assert_eq!(share(&[(0, 0), (2, 0), (1, 1)]), [0, 0, 10_000]);
        // Spill with nowhere to go stays with the last healthy rank.
        assert_eq!(share(&[(2, 1), (2, 0)]), [10_000, 0]);
        assert_eq!(rank_for(&[(2, 0)], 5), None);
    }

    #[test]
    fn failover_priority_ranks_by_leading_label_matches() {
        let p = compile(
            &spec("failoverPriority: [topology.istio.io/network, topology.kubernetes.io/zone, tier=gold]"),
            "l",
        )
        .unwrap();
        let me = |k: &str| match k {
            "topology.istio.io/network" => Some("n1"),
            "topology.kubernetes.io/zone" => Some("a"),
            _ => None,
        };
        let ep = |net: &'static str, zone: &'static str, tier: Option<&'static str>| {
            move |k: &str| match k {
                "topology.istio.io/network" => Some(net),
                "topology.kubernetes.io/zone" => Some(zone),
                "tier" => tier,
                _ => None,
            }
        };
        assert_eq!(p.priority_rank(me, ep("n1", "a", Some("gold"))), 0);
        assert_eq!(p.priority_rank(me, ep("n1", "a", None)), 1);
        assert_eq!(p.priority_rank(me, ep("n1", "b", Some("gold"))), 2);
        // A later label counts only after the earlier ones matched.
        assert_eq!(p.priority_rank(me, ep("n2", "a", Some("gold"))), 3);
    }

    #[test]
    fn distribute_picks_weights_by_source() {
        let p = compile(
            &spec("distribute: [{from: us-east/a/*, to: {us-east/a/*: 80, us-east/b/*: 20}}, {from: '*', to: {us-west: 100}}]"),
            "l",
        )
        .unwrap();
        let w = p.weights_for(loc("us-east", "a", "9")).unwrap();
        assert_eq!(w.len(), 2);
        assert!(w[0].0.matches(loc("us-east", "a", "3")) && w[0].1 == 80);
        assert!(!w[0].0.matches(loc("us-east", "b", "3")));
        let other = p.weights_for(loc("eu", "x", "y")).unwrap();
        assert!(other[0].0.matches(loc("us-west", "q", "r")));
        let off = compile(
            &spec("{enabled: false, distribute: [{from: '*', to: {a: 100}}]}"),
            "l",
        )
        .unwrap();
        assert!(off.weights_for(loc("a", "", "")).is_none());
    }

    #[test]
    fn bad_settings_are_named() {
        let e = |yaml: &str| compile(&spec(yaml), "l").unwrap_err().path;
        assert_eq!(
            e("{failoverPriority: [topology.kubernetes.io/zone], failover: [{from: a, to: b}]}"),
            "l.failoverPriority"
        );
        assert_eq!(e("failoverPriority: ['Bad Key']"), "l.failoverPriority[0]");
        assert_eq!(
            e("failoverPriority: [a, b, c, d, e, f, g, h, i]"),
            "l.failoverPriority"
        );
        assert_eq!(
            e("{distribute: [{from: a, to: {a: 100}}], failover: [{from: a, to: b}]}"),
            "l"
        );
        assert_eq!(
            e("distribute: [{from: a, to: {a: 60, b: 30}}]"),
            "l.distribute[0].to"
        );
        assert_eq!(
            e("distribute: [{from: 'a/*/c', to: {a: 100}}]"),
            "l.distribute[0].from"
        );
        assert_eq!(
            e("distribute: [{from: a, to: {'a*': 100}}]"),
            "l.distribute[0].to.a*"
        );
        assert_eq!(e("failover: [{from: a/b, to: c}]"), "l.failover[0].from");
        assert_eq!(e("failover: [{from: a, to: a}]"), "l.failover[0].to");
    }
}
