//! The `destinationRules` list as serde reads it: every struct denies unknown keys, so a
//! typo is an error with its path; [`super::DestinationRules::build`] checks the rest.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    pub name: String,
    pub namespace: String,
    /// The Service: its hostname, or a short form (`reviews`, `reviews.demo`) seen from the
    /// rule's namespace.
    pub host: String,
    #[serde(default)]
    pub subsets: Vec<SubsetSpec>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
    #[serde(default)]
    pub export_to: Option<IgnoredAny>,
    #[serde(default)]
    pub workload_selector: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubsetSpec {
    pub name: String,
    /// Workload labels an endpoint must carry, all of them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    #[serde(default)]
    pub connection_pool: Option<pool::ConnectionPoolSpec>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicySpec>,
    #[serde(default)]
    pub tunnel: Option<IgnoredAny>,
    #[serde(default)]
    pub proxy_protocol: Option<IgnoredAny>,
}

/// A traffic policy for one Service port: the same fields, minus the ones that only make
/// sense for the whole Service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicySpec {
    pub port: PortSpec,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default)]
    pub connection_pool: Option<pool::ConnectionPoolSpec>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    pub number: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// `LEAST_REQUEST` (or its old name `LEAST_CONN`), `ROUND_ROBIN`, `RANDOM`, or
    /// `UNSPECIFIED` (least-request).
    #[serde(default)]
    pub simple: Option<String>,
    #[serde(default)]
    pub consistent_hash: Option<hash::ConsistentHashSpec>,
    #[serde(default)]
    pub locality_lb_setting: Option<locality::LocalityLbSpec>,
    /// Slow start's window (Istio's older field).
    #[serde(default)]
    pub warmup_duration_secs: Option<String>,
    #[serde(default)]
    pub warmup: Option<warmup::WarmupSpec>,
}

/// Istio's `OutlierDetection`: passive health checking by consecutive errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    /// 5xx answers (and connect failures, resets, timeouts) in a row that eject an
    /// endpoint; default 5, 0 turns it off.
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// 502, 503, 504 (and connect failures, resets, timeouts) in a row; default 0, off.
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// Accepted for Istio's files: ejections here happen on the error that trips them,
    /// and end when their time is up, so there is no sweep to time.
    #[serde(default)]
    pub interval: Option<String>,
    /// How long a first ejection lasts; the n-th lasts n times as long, at most 300 s or
    /// this, whichever is longer. Default 30 s.
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// The share of a pool that may be ejected at once, 0 to 100; default 10. One endpoint
    /// may always be ejected.
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
    /// Below this share of endpoints not ejected, ejections are ignored; default 0.
    #[serde(default)]
    pub min_health_percent: Option<i64>,
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<IgnoredAny>,
    /// Istio's deprecated field.
    #[serde(default)]
    pub consecutive_errors: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    #[serde(default)]
    pub mode: Option<String>,
}
