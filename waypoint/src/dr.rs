//! Istio `DestinationRule`, the part a waypoint applies: named **subsets** of a Service's
//! endpoints, chosen by workload labels, that VirtualService destinations name
//! (`destination: {host: reviews, subset: v2}`), and the endpoint **load-balancing** rule
//! for the Service or for one subset.
//!
//! Two layers, as in [`crate::route`]: the `*Spec` types serde reads from the mesh config's
//! `destinationRules` list, and [`DestinationRules::build`], which checks them (each error
//! names the rule and the field) and keys them by Service.
//!
//! Meaning, as Istio's:
//! - a subset is the Service's endpoints whose workload labels include every one of the
//!   subset's labels (no labels: every endpoint);
//! - the endpoint is picked per request: least-request (Istio's default), or what
//!   `loadBalancer.simple` says, or by a hash of the request (`consistentHash`, in
//!   [`hash`]), a subset's `trafficPolicy` overriding the rule's;
//! - `outlierDetection` ejects an endpoint after consecutive errors (5xx, or gateway
//!   errors; connect failures, resets and timeouts count as both), for the base time
//!   times the number of its ejections, at most `maxEjectionPercent` of the pool but
//!   always one; a pool with fewer than `minHealthPercent` of its endpoints left ignores
//!   ejections (Envoy's panic threshold; 0 by default, as Istio's). Counted per core, like
//!   everything else of the data path;
//! - `tls.mode: ISTIO_MUTUAL` is accepted and changes nothing: the waypoint reaches mesh
//!   endpoints over HBONE, which is always mutual TLS;
//! - `connectionPool` sets the Service's circuit breakers and connection limits ([`pool`]),
//!   shared by every core;
//! - `loadBalancer.localityLbSetting`, and Istio's default locality failover for a Service
//!   with outlier detection, prefer endpoints near the waypoint ([`locality`]);
//! - `portLevelSettings` override the policy for one Service port. Each part (the load
//!   balancer as a whole, outlier detection, the connection pool) comes from the most
//!   specific level that sets it: the subset's port level, the subset's policy, the rule's
//!   port level, the rule's policy ([`DestinationRules::effective`]);
//! - `warmupDurationSecs` / `warmup` slow-start new endpoints ([`warmup`]).
//!
//! Not supported, and refused with the field named rather than accepted and ignored:
//! `PASSTHROUGH` load balancing, `failoverPriority` together with `failover`, slow start
//! (`warmupDurationSecs`, `warmup`) with `RANDOM` or `consistentHash`, split local-origin
//! errors, `tunnel`, `proxyProtocol`, TLS modes
//! other than `ISTIO_MUTUAL`, `exportTo` and `workloadSelector`. One rule per Service
//! (Istio would merge several).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::route::{RouteError, ServiceRef, err};

pub mod hash;
mod labels;
pub mod locality;
pub mod pool;
mod spec;
pub mod warmup;

pub use hash::{Affinity, HashPolicy};
pub use labels::{label_key, label_value};
pub use locality::{Locality, LocalityPolicy};
pub use pool::{Limits, PoolPolicy};
pub use spec::*;

/// Outlier detection, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// 0: off.
    pub consecutive_5xx: u32,
    /// 0: off.
    pub consecutive_gateway: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

impl Outlier {
    /// The longest an ejection lasts: Envoy's `max_ejection_time` default (300 s), or the
    /// base time if that is longer.
    pub fn max_ejection(&self) -> Duration {
        self.base_ejection.max(MAX_EJECTION)
    }

    /// The `n`-th ejection's length (n ≥ 1): the base time n times, capped.
    pub fn ejection(&self, n: u32) -> Duration {
        self.base_ejection
            .saturating_mul(n.max(1))
            .min(self.max_ejection())
    }

    /// Whether one more endpoint of a pool of `pool`, `ejected` of them out already, may
    /// be ejected: within the percentage, and always the first (Envoy's rule).
    pub fn may_eject(&self, pool: u32, ejected: u32) -> bool {
        ejected == 0
            || u64::from(ejected + 1) * 100
                <= u64::from(self.max_ejection_percent) * u64::from(pool)
    }
}

/// Envoy's default `max_ejection_time`.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// How a waypoint picks an endpoint for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    RoundRobin,
    Random,
    /// Envoy's least-request with equal weights: of two endpoints drawn at random, the one
    /// with fewer requests in flight. Istio's default, so the waypoint's without a rule.
    #[default]
    LeastRequest,
    /// By a hash of the request ([`HashPolicy`]); at random for a request without its key.
    ConsistentHash,
}

impl Balance {
    /// The index of the endpoint to use among `n` candidates (`None` if there are none).
    /// `counter` advances once per pick (one per core: no shared state); `load(i)` is the
    /// requests in flight to candidate `i`, read only by least-request.
    pub fn choose(self, n: usize, counter: u64, load: impl Fn(usize) -> u32) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let n64 = n as u64;
        Some(match self {
            Balance::RoundRobin => (counter % n64) as usize,
            Balance::Random | Balance::ConsistentHash => (splitmix64(counter) % n64) as usize,
            Balance::LeastRequest if n == 1 => 0,
            Balance::LeastRequest => {
                // Two distinct candidates, uniformly: the second is drawn from the n-1 others.
                let r = splitmix64(counter);
                let a = (r % n64) as usize;
                let mut b = ((r >> 32) % (n64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                if load(b) < load(a) { b } else { a }
            }
        })
    }
}

impl Balance {
    /// [`Balance::choose`] with weights (0..=1, slow start's): round robin becomes a draw in
    /// proportion to weight; least-request keeps, of two drawn candidates, the one with the
    /// most weight per request in flight (`weight / (load + 1)`, Envoy's weighted
    /// least-request with its default bias of 1).
    pub fn choose_weighted(
        self,
        n: usize,
        counter: u64,
        load: impl Fn(usize) -> u32,
        weight: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        if n <= 1 || !matches!(self, Balance::RoundRobin | Balance::LeastRequest) {
            return self.choose(n, counter, load);
        }
        let r = splitmix64(counter);
        if self == Balance::LeastRequest {
            let n64 = n as u64;
            let a = (r % n64) as usize;
            let mut b = ((r >> 32) % (n64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
            let score = |i: usize| weight(i) / (f64::from(load(i)) + 1.0);
            return Some(if score(b) > score(a) { b } else { a });
        }
        let total: f64 = (0..n).map(&weight).sum();
        if total <= 0.0 {
            return self.choose(n, counter, load);
        }
        // A uniform draw in [0, total) from the top 53 bits.
        let mut x = (r >> 11) as f64 / (1u64 << 53) as f64 * total;
        for i in 0..n {
            let w = weight(i);
            if x < w {
                return Some(i);
            }
            x -= w;
        }
        Some(n - 1)
    }
}

/// SplitMix64's finalizer (Steele, Lea, Flood 2014; their constants): consecutive counters
/// land on unrelated values, so a per-core counter serves as the random source.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A load balancer, as one unit (Istio replaces a `loadBalancer` whole, never field by
/// field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lb {
    pub balance: Balance,
    /// `Some` when `balance` is [`Balance::ConsistentHash`].
    pub hash: Option<Arc<HashPolicy>>,
    pub locality: Option<Arc<LocalityPolicy>>,
    /// Slow start for new endpoints (round robin and least-request only).
    pub warmup: Option<warmup::Warmup>,
}

/// What one traffic policy (a rule's, a subset's, or one port's of either) sets; `None`:
/// not set at this level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    pub lb: Option<Lb>,
    pub outlier: Option<Arc<Outlier>>,
    pub limits: Option<Arc<Limits>>,
}

/// A traffic policy and its `portLevelSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    pub base: Layer,
    pub ports: BTreeMap<u16, Layer>,
}

/// One subset: the labels an endpoint must carry, and its own policy if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    /// Sorted by key; every one must be among the endpoint's labels.
    pub labels: Vec<(String, String)>,
    pub policy: Policies,
}

impl Subset {
    /// Whether a workload whose labels `label` looks up belongs to this subset.
    pub fn admits<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| label(k) == Some(v.as_str()))
    }
}

/// One Service's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRule {
    /// `namespace/name` of the DestinationRule, for messages.
    pub name: String,
    pub policy: Policies,
    pub subsets: BTreeMap<String, Subset>,
}

/// The policy in force for requests to a Service port (and subset): each part from the
/// most specific level that sets it, in Istio's order: the subset's port-level settings,
/// the subset's policy, the rule's port-level settings, the rule's policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Effective<'a> {
    pub lb: Option<&'a Lb>,
    pub outlier: Option<&'a Arc<Outlier>>,
    pub limits: Option<&'a Arc<Limits>>,
}

/// Every DestinationRule of the config, by the Service it applies to.
#[derive(Debug, Clone, Default)]
pub struct DestinationRules {
    by_service: HashMap<ServiceRef, ServiceRule>,
    /// The keys of rules whose `host` stayed a hostname ([`ServiceRef::by_host`]: from the
    /// cluster, a ServiceEntry's host), by that hostname; and of the others by name: either
    /// found from a request's Service without building a key.
    hosts: HashMap<Arc<str>, ServiceRef>,
    names: HashMap<Arc<str>, Vec<ServiceRef>>,
}

impl DestinationRules {
    /// Checks and keys the rules; `resolve(namespace, host)` turns a rule's `host` into the
    /// Service it names, seen from the rule's namespace.
    pub fn build(
        specs: &[DestinationRuleSpec],
        resolve: &dyn Fn(&str, &str) -> Option<ServiceRef>,
    ) -> Result<DestinationRules, RouteError> {
        let mut by_service: HashMap<ServiceRef, ServiceRule> = HashMap::new();
        let mut hosts = HashMap::new();
        let mut names: HashMap<Arc<str>, Vec<ServiceRef>> = HashMap::new();
        for spec in specs {
            let at = format!("destinationRules[{}/{}]", spec.namespace, spec.name);
            if spec.export_to.is_some() {
                return Err(err(
                    format!("{at}.exportTo"),
                    "not supported: a waypoint applies every rule in its config",
                ));
            }
            if spec.workload_selector.is_some() {
                return Err(err(
                    format!("{at}.workloadSelector"),
                    "not supported: it selects sidecars, which a waypoint is not",
                ));
            }
            let service = resolve(&spec.namespace, &spec.host)
                .ok_or_else(|| err(format!("{at}.host"), crate::route::no_service(&spec.host)))?;
            if let Some(other) = by_service.get(&service) {
                return Err(err(
                    format!("{at}.host"),
                    format!(
                        "{service} already has DestinationRule {}: give a Service one rule",
                        other.name
                    ),
                ));
            }
            let policy = match &spec.traffic_policy {
                Some(p) => policies(p, &format!("{at}.trafficPolicy"))?,
                None => Policies::default(),
            };
            let mut subsets = BTreeMap::new();
            for (i, s) in spec.subsets.iter().enumerate() {
                let at = format!("{at}.subsets[{i}]");
                if s.name.is_empty() {
                    return Err(err(format!("{at}.name"), "must not be empty"));
                }
                let mut labels = Vec::with_capacity(s.labels.len());
                for (k, v) in &s.labels {
                    label_key(k).map_err(|m| err(format!("{at}.labels.{k}"), m))?;
                    label_value(v).map_err(|m| err(format!("{at}.labels.{k}"), m))?;
                    labels.push((k.clone(), v.clone()));
                }
                let policy = match &s.traffic_policy {
                    Some(p) => policies(p, &format!("{at}.trafficPolicy"))?,
                    None => Policies::default(),
                };
                let subset = Subset { labels, policy };
                if subsets.insert(s.name.clone(), subset).is_some() {
                    return Err(err(
                        format!("{at}.name"),
                        format!("another subset is named {:?}", s.name),
                    ));
                }
            }
            match service.host() {
                Some(host) => {
                    hosts.insert(host.into(), service.clone());
                }
                None => names
                    .entry(service.name.clone())
                    .or_default()
                    .push(service.clone()),
            }
            by_service.insert(
                service,
                ServiceRule {
                    name: format!("{}/{}", spec.namespace, spec.name),
                    policy,
                    subsets,
                },
            );
        }
        Ok(DestinationRules {
            by_service,
            hosts,
            names,
        })
    }

    /// Whether a request to the Service `named` may find its rule under another key
    /// ([`DestinationRules::key_for`]): some rule exists, none is kept under `named`, and
    /// `named` is a hostname or some rule is kept by one. False for nearly every request,
    /// which then asks the registry nothing.
    pub fn keys_otherwise(&self, named: &ServiceRef) -> bool {
        !self.by_service.is_empty()
            && !self.by_service.contains_key(named)
            && (named.host().is_some() || !self.hosts.is_empty())
    }

    /// The key the rule of a request's Service is kept under, when it is not `named` (how
    /// the route named the Service): the Service's `hostname`, or its name (`namespace`,
    /// `name`) when `own_name` (no other Service shares it: a rule by a ServiceEntry's name
    /// would not say which of its hosts it means), whichever a rule was given for. `None`:
    /// the rule, if any, is `named`'s. Allocates nothing (the keys are the table's own).
    pub fn key_for(
        &self,
        named: &ServiceRef,
        (namespace, name, hostname): (&str, &str, &str),
        own_name: bool,
    ) -> Option<ServiceRef> {
        if !self.keys_otherwise(named) {
            return None;
        }
        if let Some(k) = self.hosts.get(hostname).filter(|k| *k != named) {
            return Some(k.clone());
        }
        if !own_name || named.host().is_none() {
            return None;
        }
        self.names
            .get(name)?
            .iter()
            .find(|k| &*k.namespace == namespace)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.by_service.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_service.is_empty()
    }

    /// The rule for `service`, if one names it.
    pub fn get(&self, service: &ServiceRef) -> Option<&ServiceRule> {
        self.by_service.get(service)
    }

    /// The subset `name` of `service`.
    pub fn subset(&self, service: &ServiceRef, name: &str) -> Option<&Subset> {
        self.get(service)?.subsets.get(name)
    }

    /// The policy in force for requests to `service`:`port` (and `subset`): see
    /// [`Effective`]. Every part `None` without a rule.
    pub fn effective(
        &self,
        service: &ServiceRef,
        subset: Option<&str>,
        port: u16,
    ) -> Effective<'_> {
        let Some(rule) = self.get(service) else {
            return Effective::default();
        };
        let sub = subset.and_then(|s| rule.subsets.get(s)).map(|s| &s.policy);
        let levels = [
            sub.and_then(|p| p.ports.get(&port)),
            sub.map(|p| &p.base),
            rule.policy.ports.get(&port),
            Some(&rule.policy.base),
        ];
        let first = |f: &dyn Fn(&Layer) -> bool| levels.iter().flatten().copied().find(|l| f(l));
        Effective {
            lb: first(&|l| l.lb.is_some()).and_then(|l| l.lb.as_ref()),
            outlier: first(&|l| l.outlier.is_some()).and_then(|l| l.outlier.as_ref()),
            limits: first(&|l| l.limits.is_some()).and_then(|l| l.limits.as_ref()),
        }
    }

    /// The balancing in force (see [`DestinationRules::effective`]); `None`: least-request.
    pub fn balance(
        &self,
        service: &ServiceRef,
        subset: Option<&str>,
        port: u16,
    ) -> Option<Balance> {
        self.effective(service, subset, port)
            .lb
            .map(|lb| lb.balance)
    }

    /// The consistent hashing in force, if the balancing is that.
    pub fn hash(
        &self,
        service: &ServiceRef,
        subset: Option<&str>,
        port: u16,
    ) -> Option<&Arc<HashPolicy>> {
        self.effective(service, subset, port)
            .lb
            .and_then(|lb| lb.hash.as_ref())
    }

    /// The outlier detection in force.
    pub fn outlier(
        &self,
        service: &ServiceRef,
        subset: Option<&str>,
        port: u16,
    ) -> Option<&Arc<Outlier>> {
        self.effective(service, subset, port).outlier
    }

    /// The connection pool limits in force. Limits set at a level count apart from every
    /// other level's (Istio makes each subset, and each port, a cluster of its own).
    pub fn limits(
        &self,
        service: &ServiceRef,
        subset: Option<&str>,
        port: u16,
    ) -> Option<&Arc<Limits>> {
        self.effective(service, subset, port).limits
    }
}

/// A traffic policy and its port-level settings, compiled.
fn policies(p: &TrafficPolicySpec, at: &str) -> Result<Policies, RouteError> {
    let unsupported = [
        ("tunnel", p.tunnel.is_some()),
        ("proxyProtocol", p.proxy_protocol.is_some()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(err(
            format!("{at}.{field}"),
            "not supported by the ringmesh waypoint; remove it (the waypoint would not apply it)",
        ));
    }
    let base = layer(
        p.load_balancer.as_ref(),
        p.connection_pool.as_ref(),
        p.outlier_detection.as_ref(),
        p.tls.as_ref(),
        at,
    )?;
    let mut ports = BTreeMap::new();
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let at = format!("{at}.portLevelSettings[{i}]");
        let port = u16::try_from(pl.port.number)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                err(
                    format!("{at}.port.number"),
                    format!("{}: a port is 1 to 65535", pl.port.number),
                )
            })?;
        let l = layer(
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
            &at,
        )?;
        if ports.insert(port, l).is_some() {
            return Err(err(
                format!("{at}.port.number"),
                format!("port {port} has settings already"),
            ));
        }
    }
    Ok(Policies { base, ports })
}

/// One level of traffic policy, compiled.
fn layer(
    lb: Option<&LoadBalancerSpec>,
    connection_pool: Option<&pool::ConnectionPoolSpec>,
    outlier_detection: Option<&OutlierDetectionSpec>,
    tls: Option<&TlsSpec>,
    at: &str,
) -> Result<Layer, RouteError> {
    let limits = match connection_pool {
        Some(c) => Some(Arc::new(pool::compile(c, &format!("{at}.connectionPool"))?)),
        None => None,
    };
    let outlier = match outlier_detection {
        Some(o) => Some(Arc::new(outlier(o, &format!("{at}.outlierDetection"))?)),
        None => None,
    };
    if let Some(tls) = tls {
        match tls.mode.as_deref() {
            Some("ISTIO_MUTUAL") => {}
            other => {
                return Err(err(
                    format!("{at}.tls.mode"),
                    format!(
                        "{}: only ISTIO_MUTUAL, which HBONE always is; the waypoint reaches mesh endpoints over HBONE",
                        other.unwrap_or("(none)")
                    ),
                ));
            }
        }
    }
    let Some(lb) = lb else {
        return Ok(Layer {
            lb: None,
            outlier,
            limits,
        });
    };
    let at = format!("{at}.loadBalancer");
    let warmup = warmup::compile(lb.warmup_duration_secs.as_deref(), lb.warmup.as_ref(), &at)?;
    let locality = match &lb.locality_lb_setting {
        Some(l) => Some(Arc::new(locality::compile(
            l,
            &format!("{at}.localityLbSetting"),
        )?)),
        None => None,
    };
    let slow_start_refused = |with: &str| {
        err(
            format!("{at}.warmup"),
            format!(
                "slow start applies to ROUND_ROBIN and LEAST_REQUEST only, not {with} (as in Envoy)"
            ),
        )
    };
    if let Some(ch) = &lb.consistent_hash {
        if warmup.is_some() {
            return Err(slow_start_refused("consistentHash"));
        }
        if lb.simple.is_some() {
            return Err(err(
                format!("{at}.consistentHash"),
                "set together with simple: a load balancer is one or the other",
            ));
        }
        let policy = hash::compile(ch, &format!("{at}.consistentHash"))?;
        return Ok(Layer {
            lb: Some(Lb {
                balance: Balance::ConsistentHash,
                hash: Some(Arc::new(policy)),
                locality,
                warmup: None,
            }),
            outlier,
            limits,
        });
    }
    let balance = match lb.simple.as_deref() {
        None | Some("UNSPECIFIED") => Balance::LeastRequest,
        Some("ROUND_ROBIN") => Balance::RoundRobin,
        Some("RANDOM") => Balance::Random,
        // LEAST_CONN is Istio's deprecated name for the same thing.
        Some("LEAST_REQUEST" | "LEAST_CONN") => Balance::LeastRequest,
        Some(other) => {
            return Err(err(
                format!("{at}.simple"),
                format!(
                    "{other}: use LEAST_REQUEST (the default), ROUND_ROBIN, RANDOM or UNSPECIFIED"
                ),
            ));
        }
    };
    if balance == Balance::Random && warmup.is_some() {
        return Err(slow_start_refused("RANDOM"));
    }
    Ok(Layer {
        lb: Some(Lb {
            balance,
            hash: None,
            locality,
            warmup,
        }),
        outlier,
        limits,
    })
}

/// Istio's `OutlierDetection`, with Istio's defaults.
fn outlier(o: &OutlierDetectionSpec, at: &str) -> Result<Outlier, RouteError> {
    if o.consecutive_errors.is_some() {
        return Err(err(
            format!("{at}.consecutiveErrors"),
            "deprecated by Istio and not supported: use consecutive5xxErrors",
        ));
    }
    if o.consecutive_local_origin_failures.is_some() || o.split_external_local_origin_errors {
        return Err(err(
            format!("{at}.splitExternalLocalOriginErrors"),
            "not supported: connect failures, resets and timeouts count as 5xx and gateway errors",
        ));
    }
    let percent = |v: Option<i64>, default: u32, field: &str| match v {
        None => Ok(default),
        Some(p @ 0..=100) => Ok(p as u32),
        Some(p) => Err(err(
            format!("{at}.{field}"),
            format!("{p}: a percentage is 0 to 100"),
        )),
    };
    if let Some(i) = &o.interval {
        crate::route::duration(i, &format!("{at}.interval"))?;
    }
    let base_ejection = match &o.base_ejection_time {
        None => Duration::from_secs(30),
        Some(t) => crate::route::duration(t, &format!("{at}.baseEjectionTime"))?,
    };
    if base_ejection.is_zero() {
        return Err(err(format!("{at}.baseEjectionTime"), "must be more than 0"));
    }
    Ok(Outlier {
        consecutive_5xx: o.consecutive_5xx_errors.unwrap_or(5),
        consecutive_gateway: o.consecutive_gateway_errors.unwrap_or(0),
        base_ejection,
        max_ejection_percent: percent(o.max_ejection_percent, 10, "maxEjectionPercent")?,
        min_health_percent: percent(o.min_health_percent, 0, "minHealthPercent")?,
    })
}

#[cfg(test)]
mod tests;
