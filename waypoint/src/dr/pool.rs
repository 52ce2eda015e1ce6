//! `trafficPolicy.connectionPool`: the circuit breakers and connection limits of a Service
//! (or subset), as Istio sets them on Envoy's cluster.
//!
//! Meaning, as Envoy's:
//! - `tcp.maxConnections`: upstream connections open to the Service at once. A request that
//!   needs a new connection past the limit waits for one of this core's connections to the
//!   endpoint to come free, as a pending request; a core with no connection to the endpoint
//!   opens one anyway (Envoy's rule, so a pool is never stuck with no way to drain);
//! - `http.http1MaxPendingRequests`: requests waiting for a connection at once; one more is
//!   answered 503 at once (flag `UO`, `x-envoy-overloaded: true`);
//! - `http.http2MaxRequests`: requests in flight to the Service at once, over either HTTP
//!   version; one more is answered the same way;
//! - `http.maxRetries`: retries in flight at once; past it a request is not retried, and the
//!   client gets the answer that would have been retried;
//! - `http.maxRequestsPerConnection`: a connection carries at most this many requests (1
//!   turns keep-alive off), then closes;
//! - `tcp.maxConnectionDuration`: a connection older than this takes no new request;
//! - `http.idleTimeout`: an idle connection older than this is closed, not reused (checked
//!   when the pool next looks at the endpoint's idle list; default 1 h);
//! - `tcp.connectTimeout`: the deadline to reach an endpoint (default 10 s).
//!
//! The four circuit-breaker counts are shared by every core (atomics in the rule, which all
//! cores hold through one snapshot), because a limit an operator sets is the Service's, not
//! a core's: Envoy's are per cluster across its workers too. They cost a cross-core write per
//! request only for Services whose rule sets a `connectionPool`. A new config file starts new
//! counts; requests in flight then finish against the old ones.
//!
//! Refused with the field named, rather than accepted and ignored: `tcp.tcpKeepalive` and
//! `tcp.idleTimeout` (a waypoint's upstream is a stream inside the node pool's HBONE
//! connection, whose TCP socket is not the Service's), `http.h2UpgradePolicy: UPGRADE`,
//! `http.maxConcurrentStreams`. `http.useClientProtocol` is accepted either way: the
//! waypoint always speaks the client's protocol upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::route::{RouteError, err};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSpec {
    #[serde(default)]
    pub tcp: Option<TcpSpec>,
    #[serde(default)]
    pub http: Option<HttpSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSpec {
    #[serde(default)]
    pub max_connections: Option<i64>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    #[serde(default)]
    pub tcp_keepalive: Option<IgnoredAny>,
    #[serde(default)]
    pub idle_timeout: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSpec {
    #[serde(default)]
    pub http1_max_pending_requests: Option<i64>,
    #[serde(default)]
    pub http2_max_requests: Option<i64>,
    #[serde(default)]
    pub max_requests_per_connection: Option<i64>,
    #[serde(default)]
    pub max_retries: Option<i64>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub h2_upgrade_policy: Option<String>,
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    #[serde(default)]
    pub max_concurrent_streams: Option<IgnoredAny>,
}

/// Istio's default connect timeout for a cluster.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Envoy's default idle timeout for upstream HTTP connections.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A compiled `connectionPool`: the limits ([`Limits`] holds the counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPolicy {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// 0: no limit.
    pub max_requests_per_connection: u32,
    pub max_connection_duration: Option<Duration>,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for PoolPolicy {
    /// Istio's defaults: no limit on anything, 10 s to connect, 1 h idle.
    fn default() -> Self {
        PoolPolicy {
            max_connections: u32::MAX,
            max_pending: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
            max_requests_per_connection: 0,
            max_connection_duration: None,
            idle_timeout: IDLE_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

impl PoolPolicy {
    /// Whether a connection that has carried `uses` requests and was opened at `opened`
    /// may take another (the clock is read only when a duration limit is set).
    pub fn reusable(&self, uses: u32, opened: std::time::Instant) -> bool {
        (self.max_requests_per_connection == 0 || uses < self.max_requests_per_connection)
            && self
                .max_connection_duration
                .is_none_or(|d| opened.elapsed() < d)
    }
}

/// A count shared by every core, held against a limit.
#[derive(Debug, Default)]
pub struct Count(AtomicU32);

impl Count {
    /// One more, if that stays within `max`; the slot is given back when the guard drops.
    pub fn try_enter(self: &Arc<Self>, max: u32) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// One more whatever the limit (a core with no connection to an endpoint opens one).
    pub fn enter(self: &Arc<Self>) -> Slot {
        self.0.fetch_add(1, Ordering::AcqRel);
        Slot(self.clone())
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// One unit of a [`Count`], held until dropped.
#[derive(Debug)]
pub struct Slot(Arc<Count>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A Service's (or subset's) limits and the counts held against them, shared by every
/// core. The counts live behind `Arc`s so a [`Slot`] can outlive the snapshot it came from.
#[derive(Debug)]
pub struct Limits {
    pub policy: PoolPolicy,
    pub connections: Arc<Count>,
    pub pending: Arc<Count>,
    pub requests: Arc<Count>,
    pub retries: Arc<Count>,
}

impl PartialEq for Limits {
    fn eq(&self, o: &Self) -> bool {
        self.policy == o.policy
    }
}

impl Eq for Limits {}

impl Limits {
    fn new(policy: PoolPolicy) -> Limits {
        Limits {
            policy,
            connections: Arc::default(),
            pending: Arc::default(),
            requests: Arc::default(),
            retries: Arc::default(),
        }
    }
}

/// Checks and compiles a `connectionPool`, at `at`.
pub fn compile(spec: &ConnectionPoolSpec, at: &str) -> Result<Limits, RouteError> {
    let mut p = PoolPolicy::default();
    let limit = |v: Option<i64>, field: &str, default: u32| -> Result<u32, RouteError> {
        match v {
            None => Ok(default),
            Some(n) if n >= 0 && n <= i64::from(i32::MAX) => Ok(n as u32),
            Some(n) => Err(err(
                format!("{at}.{field}"),
                format!("{n}: must be 0 or more, at most 2147483647 (an int32)"),
            )),
        }
    };
    let duration = |v: &Option<String>, field: &str| -> Result<Option<Duration>, RouteError> {
        v.as_deref()
            .map(|t| crate::route::duration(t, &format!("{at}.{field}")))
            .transpose()
    };
    if let Some(tcp) = &spec.tcp {
        let refuse = |field: &str| {
            err(
                format!("{at}.tcp.{field}"),
                "not supported: the waypoint's upstream is a stream inside its node's HBONE connection, whose socket settings are not the Service's",
            )
        };
        if tcp.tcp_keepalive.is_some() {
            return Err(refuse("tcpKeepalive"));
        }
        if tcp.idle_timeout.is_some() {
            return Err(refuse("idleTimeout"));
        }
        // Istio: 0 means the default (no limit) for every limit below.
        let max = limit(tcp.max_connections, "tcp.maxConnections", 0)?;
        if max > 0 {
            p.max_connections = max;
        }
        if let Some(d) = duration(&tcp.connect_timeout, "tcp.connectTimeout")? {
            p.connect_timeout = d;
        }
        p.max_connection_duration =
            duration(&tcp.max_connection_duration, "tcp.maxConnectionDuration")?;
    }
    if let Some(http) = &spec.http {
        let or_unlimited = |n: u32| if n == 0 { u32::MAX } else { n };
        p.max_pending = or_unlimited(limit(
            http.http1_max_pending_requests,
            "http.http1MaxPendingRequests",
            0,
        )?);
        p.max_requests = or_unlimited(limit(http.http2_max_requests, "http.http2MaxRequests", 0)?);
        p.max_retries = or_unlimited(limit(http.max_retries, "http.maxRetries", 0)?);
        p.max_requests_per_connection = limit(
            http.max_requests_per_connection,
            "http.maxRequestsPerConnection",
            0,
        )?;
        if let Some(d) = duration(&http.idle_timeout, "http.idleTimeout")? {
            p.idle_timeout = d;
        }
        match http.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT" | "DO_NOT_UPGRADE") => {}
            Some("UPGRADE") => {
                return Err(err(
                    format!("{at}.http.h2UpgradePolicy"),
                    "UPGRADE is not supported: the waypoint speaks the client's protocol upstream (HTTP/2 for gRPC)",
                ));
            }
            Some(other) => {
                return Err(err(
                    format!("{at}.http.h2UpgradePolicy"),
                    format!("{other}: use DEFAULT or DO_NOT_UPGRADE"),
                ));
            }
        }
        if http.max_concurrent_streams.is_some() {
            return Err(err(
                format!("{at}.http.maxConcurrentStreams"),
                "not supported: the waypoint keeps one HTTP/2 connection per endpoint and core, limited by the endpoint's own SETTINGS",
            ));
        }
    }
    Ok(Limits::new(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_yaml(yaml: &str) -> Result<Limits, RouteError> {
        compile(&serde_yaml::from_str(yaml).unwrap(), "cp")
    }

    #[test]
    fn limits_follow_istio_with_its_defaults() {
        let l = compile_yaml("{}").unwrap();
        assert_eq!(l.policy, PoolPolicy::default());
        let l = compile_yaml(
            "{tcp: {maxConnections: 1, connectTimeout: 250ms, maxConnectionDuration: 1m},
              http: {http1MaxPendingRequests: 2, http2MaxRequests: 3, maxRetries: 4,
                     maxRequestsPerConnection: 5, idleTimeout: 30s, useClientProtocol: true,
                     h2UpgradePolicy: DO_NOT_UPGRADE}}",
        )
        .unwrap();
        let p = &l.policy;
        assert_eq!(
            (
                p.max_connections,
                p.max_pending,
                p.max_requests,
                p.max_retries
            ),
            (1, 2, 3, 4)
        );
        assert_eq!(p.max_requests_per_connection, 5);
        assert_eq!(p.connect_timeout, Duration::from_millis(250));
        assert_eq!(p.max_connection_duration, Some(Duration::from_secs(60)));
        assert_eq!(p.idle_timeout, Duration::from_secs(30));
        // Zero is Istio's "unset" for the limits.
        let l = compile_yaml("{tcp: {maxConnections: 0}, http: {http2MaxRequests: 0}}").unwrap();
        assert_eq!(
            (l.policy.max_connections, l.policy.max_requests),
            (u32::MAX, u32::MAX)
        );
    }

    #[test]
    fn reuse_stops_at_the_request_count_and_the_age() {
        let p = PoolPolicy {
            max_requests_per_connection: 2,
            max_connection_duration: Some(Duration::from_secs(10)),
            ..PoolPolicy::default()
        };
        let now = std::time::Instant::now();
        let old = now - Duration::from_secs(10);
        assert!(p.reusable(1, now));
        assert!(!p.reusable(2, now));
        assert!(!p.reusable(1, old));
        assert!(PoolPolicy::default().reusable(u32::MAX - 1, old));
    }

    #[test]
    fn counts_hold_their_limits_across_threads() {
        let c: Arc<Count> = Arc::default();
        let slots: Vec<Slot> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..100).filter_map(|_| c.try_enter(50)).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(slots.len(), 50);
        assert_eq!(c.get(), 50);
        drop(slots);
        assert_eq!(c.get(), 0);
        let forced = c.enter();
        assert_eq!(c.get(), 1);
        drop(forced);
        assert_eq!(c.get(), 0);
    }

    #[test]
    fn what_is_not_applied_is_refused_by_name() {
        let e = |yaml: &str| compile_yaml(yaml).unwrap_err().path;
        assert_eq!(
            e("{tcp: {tcpKeepalive: {time: 1s}}}"),
            "cp.tcp.tcpKeepalive"
        );
        assert_eq!(e("{tcp: {idleTimeout: 1s}}"), "cp.tcp.idleTimeout");
        assert_eq!(e("{tcp: {maxConnections: -1}}"), "cp.tcp.maxConnections");
        assert_eq!(e("{tcp: {connectTimeout: soon}}"), "cp.tcp.connectTimeout");
        assert_eq!(
            e("{http: {http2MaxRequests: 3000000000}}"),
            "cp.http.http2MaxRequests"
        );
        assert_eq!(
            e("{http: {h2UpgradePolicy: UPGRADE}}"),
            "cp.http.h2UpgradePolicy"
        );
        assert_eq!(
            e("{http: {h2UpgradePolicy: SOMETIMES}}"),
            "cp.http.h2UpgradePolicy"
        );
        assert_eq!(
            e("{http: {maxConcurrentStreams: 10}}"),
            "cp.http.maxConcurrentStreams"
        );
    }
}
