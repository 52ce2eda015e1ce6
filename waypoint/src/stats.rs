//! What the waypoint counts on one core: requests by Service, route and response, and the
//! resilience events (retries, faults, mirrors). Shards are summed by the caller.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use std::sync::Arc;

use crate::route::ServiceRef;

/// How a request ended, Envoy's response flag in parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The backend answered (`-`).
    Forwarded,
    /// No route matched (`NR`).
    NoRoute,
    /// An injected abort (`FI`).
    FaultAbort,
    /// No endpoint (`UH`).
    NoHealthyUpstream,
    /// The endpoint could not be reached (`UF`).
    ConnectFailure,
    /// The connection broke before the response head (`UC`).
    Reset,
    /// The route's or the last try's deadline passed (`UT`).
    Timeout,
    /// The client's request could not be read (`DPE`).
    ClientError,
    /// An authorization policy refused it (`RBAC`).
    Denied,
    /// A CUSTOM policy's provider refused it (`UAEX`).
    ExtAuthzDenied,
    /// A CUSTOM policy's provider gave no usable answer (`UAEX`).
    ExtAuthzError,
    /// A bad JWT (`-`, as Envoy's jwt_authn sets no flag; the code says 401).
    Unauthenticated,
    /// The route answered with a redirect (`-`, as Envoy's router).
    Redirect,
    /// The Service's `connectionPool` limits were reached (`UO`).
    Overflow,
    /// The body was longer than a CUSTOM provider's `maxRequestBytes` takes (413, `-`).
    TooLarge,
    /// A CORS preflight the waypoint answered (200, `-`).
    CorsPreflight,
}

impl Outcome {
    /// Envoy's `%RESPONSE_CODE_DETAILS%` for it (a denial and a bad JWT give their own).
    pub fn details(self) -> &'static str {
        match self {
            Outcome::Forwarded => "via_upstream",
            Outcome::NoRoute => "route_not_found",
            Outcome::FaultAbort => "fault_filter_abort",
            Outcome::NoHealthyUpstream => "no_healthy_upstream",
            Outcome::ConnectFailure => "upstream_reset_before_response_started{connection_failure}",
            Outcome::Reset => "upstream_reset_before_response_started{connection_termination}",
            Outcome::Timeout => "response_timeout",
            Outcome::ClientError => "codec_error",
            Outcome::Denied => "rbac_access_denied_matched_policy[none]",
            Outcome::ExtAuthzDenied => "ext_authz_denied",
            Outcome::ExtAuthzError => "ext_authz_error",
            Outcome::Unauthenticated => "jwt_authn_access_denied",
            Outcome::Redirect => "direct_response",
            Outcome::Overflow => "upstream_reset_before_response_started{overflow}",
            Outcome::TooLarge => "request_payload_too_large",
            Outcome::CorsPreflight => "cors_response",
        }
    }

    /// Envoy's response flag, as Istio's `response_flags` label has it.
    pub fn flag(self) -> &'static str {
        match self {
            Outcome::Forwarded => "-",
            Outcome::NoRoute => "NR",
            Outcome::FaultAbort => "FI",
            Outcome::NoHealthyUpstream => "UH",
            Outcome::ConnectFailure => "UF",
            Outcome::Reset => "UC",
            Outcome::Timeout => "UT",
            Outcome::ClientError => "DPE",
            Outcome::Denied => "RBAC",
            Outcome::ExtAuthzDenied | Outcome::ExtAuthzError => "UAEX",
            Outcome::Overflow => "UO",
            Outcome::Unauthenticated
            | Outcome::Redirect
            | Outcome::TooLarge
            | Outcome::CorsPreflight => "-",
        }
    }
}

/// One series: what Istio's request metrics are labelled by, in the waypoint's terms (the
/// caller turns uids into workload labels).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The Service the request addressed: by name, or by hostname when other Services
    /// share its name ([`ServiceRef::by_host`]: a ServiceEntry's hosts).
    pub service: ServiceRef,
    /// `namespace/name` of the route, `-` for none.
    pub route: Arc<str>,
    pub code: u16,
    pub outcome: Outcome,
    /// The source workload's uid.
    pub source: Option<Arc<str>>,
    /// The tunnel peer's principal.
    pub source_principal: Option<Arc<str>>,
    /// The endpoint workload's uid (none when no endpoint answered).
    pub endpoint: Option<Arc<str>>,
    /// `application/grpc*` (Istio's `request_protocol="grpc"`).
    pub grpc: bool,
    /// A gRPC request's status (Istio's `grpc_response_status`): the response's
    /// `grpc-status`, or the one its HTTP code stands for; `None` for plain HTTP.
    pub grpc_status: Option<u8>,
    /// Labels a Telemetry `UPSERT`s, by name, with this request's values (usually none).
    pub tags: Vec<(Arc<str>, String)>,
}

/// What Istio's gRPC message counters are labelled by: the peers and the Service. No code,
/// flag or protocol: a stream's messages count while it is open, before its status is
/// known (Envoy labels them so too).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub service: ServiceRef,
    pub source: Option<Arc<str>>,
    pub source_principal: Option<Arc<str>>,
    pub endpoint: Option<Arc<str>>,
    /// `UPSERT` labels, with the values they had when the response head went out.
    pub tags: Vec<(Arc<str>, String)>,
}

/// A gRPC stream's message counts so far, shared by its two bodies (which count) and,
/// while the stream is open, by its core's [`Stats`] (so a scrape sees open streams).
#[derive(Debug, Default)]
pub struct Messages {
    pub request: Cell<u64>,
    pub response: Cell<u64>,
}

/// Messages each way, summed over streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageTally {
    pub request: u64,
    pub response: u64,
}

impl MessageTally {
    fn add(&mut self, request: u64, response: u64) {
        self.request += request;
        self.response += response;
    }
}

/// Istio's request-duration buckets (Envoy's default histogram buckets), in ms.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's request and response size buckets, in bytes.
pub const BYTES_BUCKETS: [f64; 9] = [
    1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 5000000.0, 10000000.0,
];

/// A histogram over fixed bounds: counts per bucket (not cumulative), the count and sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Hist<const N: usize> {
    pub buckets: [u64; N],
    pub count: u64,
    pub sum: f64,
}

impl<const N: usize> Default for Hist<N> {
    fn default() -> Self {
        Hist {
            buckets: [0; N],
            count: 0,
            sum: 0.0,
        }
    }
}

impl<const N: usize> Hist<N> {
    pub fn observe(&mut self, v: f64, bounds: &[f64; N]) {
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }

    pub fn add(&mut self, o: &Hist<N>) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.count += o.count;
        self.sum += o.sum;
    }

    /// Prometheus' cumulative `le` counts, then `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().scan(0, |acc, b| {
            *acc += b;
            Some(*acc)
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub requests: u64,
    pub duration_ms: Hist<19>,
    pub request_bytes: Hist<9>,
    pub response_bytes: Hist<9>,
}

/// One core's counters.
#[derive(Debug, Default)]
pub struct Stats {
    by_key: RefCell<HashMap<Key, Tally>>,
    /// gRPC messages of the streams that ended.
    messages: RefCell<HashMap<StreamKey, MessageTally>>,
    /// The gRPC streams open on this core whose response head went out, by id: their
    /// counts so far join every snapshot, and move to `messages` when they end. Bounded
    /// by the streams in flight.
    open_streams: RefCell<HashMap<u64, (StreamKey, Rc<Messages>)>>,
    next_stream: Cell<u64>,
    pub retries: Cell<u64>,
    pub retries_over_budget: Cell<u64>,
    /// Retries not sent because the Service had its `maxRetries` in flight.
    pub retries_overflow: Cell<u64>,
    pub delays: Cell<u64>,
    pub aborts: Cell<u64>,
    pub mirrors: Cell<u64>,
    pub mirror_failures: Cell<u64>,
    /// Client connections closed by their deadlines (slow head, idle).
    pub connections_timed_out: Cell<u64>,
    /// WebSocket handshakes the backend accepted (101).
    pub websockets: Cell<u64>,
    /// Endpoints ejected by outlier detection.
    pub ejections: Cell<u64>,
}

/// A plain copy of [`Stats`], for summing over cores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub requests: HashMap<Key, Tally>,
    /// gRPC messages, of ended streams and of open ones so far.
    pub messages: HashMap<StreamKey, MessageTally>,
    pub retries: u64,
    pub retries_over_budget: u64,
    pub retries_overflow: u64,
    pub delays: u64,
    pub aborts: u64,
    pub mirrors: u64,
    pub mirror_failures: u64,
    pub connections_timed_out: u64,
    pub websockets: u64,
    pub ejections: u64,
}

impl Stats {
    /// One finished request. Series are bounded by what the config and the mesh hold
    /// (Services, routes, workloads), codes and flags, never by request contents.
    pub fn record(&self, key: Key, took: Duration, request_bytes: u64, response_bytes: u64) {
        let mut map = self.by_key.borrow_mut();
        let t = map.entry(key).or_default();
        t.requests += 1;
        t.duration_ms
            .observe(took.as_secs_f64() * 1e3, &DURATION_BUCKETS_MS);
        t.request_bytes
            .observe(request_bytes as f64, &BYTES_BUCKETS);
        t.response_bytes
            .observe(response_bytes as f64, &BYTES_BUCKETS);
    }

    /// How many series this core holds.
    pub fn series(&self) -> usize {
        self.by_key.borrow().len() + self.messages.borrow().len()
    }

    /// A gRPC stream whose response head went out: its messages count under `key` from
    /// now on, while it is open. Returns its id for [`Stats::close_stream`].
    pub fn open_stream(&self, key: StreamKey, messages: Rc<Messages>) -> u64 {
        let id = self.next_stream.get();
        self.next_stream.set(id.wrapping_add(1));
        self.open_streams.borrow_mut().insert(id, (key, messages));
        id
    }

    /// The stream ended: its final counts join the ended streams'.
    pub fn close_stream(&self, id: u64) {
        let Some((key, m)) = self.open_streams.borrow_mut().remove(&id) else {
            return;
        };
        self.messages
            .borrow_mut()
            .entry(key)
            .or_default()
            .add(m.request.get(), m.response.get());
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut messages = self.messages.borrow().clone();
        for (key, m) in self.open_streams.borrow().values() {
            messages
                .entry(key.clone())
                .or_default()
                .add(m.request.get(), m.response.get());
        }
        Snapshot {
            requests: self.by_key.borrow().clone(),
            messages,
            retries: self.retries.get(),
            retries_over_budget: self.retries_over_budget.get(),
            retries_overflow: self.retries_overflow.get(),
            delays: self.delays.get(),
            aborts: self.aborts.get(),
            mirrors: self.mirrors.get(),
            mirror_failures: self.mirror_failures.get(),
            connections_timed_out: self.connections_timed_out.get(),
            websockets: self.websockets.get(),
            ejections: self.ejections.get(),
        }
    }
}

impl Snapshot {
    pub fn add(&mut self, other: &Snapshot) {
        for (k, t) in &other.requests {
            let e = self.requests.entry(k.clone()).or_default();
            e.requests += t.requests;
            e.duration_ms.add(&t.duration_ms);
            e.request_bytes.add(&t.request_bytes);
            e.response_bytes.add(&t.response_bytes);
        }
        for (k, m) in &other.messages {
            self.messages
                .entry(k.clone())
                .or_default()
                .add(m.request, m.response);
        }
        self.retries += other.retries;
        self.retries_over_budget += other.retries_over_budget;
        self.retries_overflow += other.retries_overflow;
        self.delays += other.delays;
        self.aborts += other.aborts;
        self.mirrors += other.mirrors;
        self.mirror_failures += other.mirror_failures;
        self.connections_timed_out += other.connections_timed_out;
        self.websockets += other.websockets;
        self.ejections += other.ejections;
    }

    /// Prometheus text: the waypoint's own series, by Service, route, code and flag (one
    /// line per label set: series that differ only in source or endpoint are summed), and
    /// its resilience counters. Istio's labelled series are the caller's (it knows the
    /// workloads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP ringmesh_waypoint_requests_total Requests the waypoint answered.\n# TYPE ringmesh_waypoint_requests_total counter\n");
        let mut by: std::collections::BTreeMap<(String, &str, u16, &str), u64> =
            std::collections::BTreeMap::new();
        for (k, t) in &self.requests {
            *by.entry((k.service.to_string(), &*k.route, k.code, k.outcome.flag()))
                .or_default() += t.requests;
        }
        for ((service, route, code, flag), n) in by {
            let _ = writeln!(
                out,
                "ringmesh_waypoint_requests_total{{destination_service=\"{service}\",route=\"{route}\",response_code=\"{code}\",response_flags=\"{flag}\"}} {n}"
            );
        }
        for (name, help, v) in [
            ("retries", "Retries sent.", self.retries),
            (
                "retries_over_budget",
                "Retries not sent because the retry budget was spent.",
                self.retries_over_budget,
            ),
            (
                "retries_overflow",
                "Retries not sent because the Service's DestinationRule maxRetries were in flight.",
                self.retries_overflow,
            ),
            ("fault_delays", "Injected delays.", self.delays),
            ("fault_aborts", "Injected aborts.", self.aborts),
            ("mirrors", "Mirrored copies sent.", self.mirrors),
            (
                "mirror_failures",
                "Mirrored copies that failed, timed out, or were cut for falling behind the request.",
                self.mirror_failures,
            ),
            (
                "connections_timed_out",
                "Client connections closed by their deadlines (slow request head, idle).",
                self.connections_timed_out,
            ),
            (
                "websockets",
                "WebSocket upgrades the backend accepted.",
                self.websockets,
            ),
            (
                "outlier_ejections",
                "Endpoints ejected by outlier detection (each core ejects on its own).",
                self.ejections,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP ringmesh_waypoint_{name}_total {help}\n# TYPE ringmesh_waypoint_{name}_total counter\nringmesh_waypoint_{name}_total {v}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(endpoint: &str) -> Key {
        Key {
            service: ServiceRef::new("demo", "echo"),
            route: Arc::from("demo/echo"),
            code: 200,
            outcome: Outcome::Forwarded,
            source: None,
            source_principal: None,
            endpoint: Some(Arc::from(endpoint)),
            grpc: false,
            grpc_status: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn open_streams_count_in_snapshots_and_move_when_they_end() {
        let s = Stats::default();
        let key = StreamKey {
            service: ServiceRef::new("demo", "echo"),
            source: None,
            source_principal: None,
            endpoint: Some(Arc::from("v1")),
            tags: Vec::new(),
        };
        let a = Rc::new(Messages::default());
        let b = Rc::new(Messages::default());
        let ia = s.open_stream(key.clone(), a.clone());
        let ib = s.open_stream(key.clone(), b.clone());
        a.request.set(3);
        b.response.set(2);
        let tally = |s: &Stats| s.snapshot().messages.get(&key).copied().unwrap_or_default();
        assert_eq!(
            tally(&s),
            MessageTally {
                request: 3,
                response: 2
            }
        );
        a.response.set(4);
        s.close_stream(ia);
        s.close_stream(ia);
        assert_eq!(
            tally(&s),
            MessageTally {
                request: 3,
                response: 6
            },
            "closing twice counts once"
        );
        b.request.set(1);
        s.close_stream(ib);
        assert_eq!(
            tally(&s),
            MessageTally {
                request: 4,
                response: 6
            }
        );
        assert!(s.open_streams.borrow().is_empty());
    }

    #[test]
    fn series_differing_only_in_endpoint_render_as_one_line() {
        let s = Stats::default();
        s.record(key("v1"), Duration::from_millis(3), 0, 10);
        s.record(key("v2"), Duration::from_millis(3), 0, 10);
        s.record(key("v1"), Duration::from_millis(3), 0, 10);
        let text = s.snapshot().render();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ringmesh_waypoint_requests_total{"))
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].ends_with(" 3"), "{text}");
    }

    #[test]
    fn histograms_bucket_and_sum() {
        let mut h: Hist<9> = Hist::default();
        for v in [0.0, 1.0, 5.0, 5_000_000.0, 2e10] {
            h.observe(v, &BYTES_BUCKETS);
        }
        let cum: Vec<u64> = h.cumulative().collect();
        assert_eq!(cum, vec![2, 3, 3, 3, 3, 3, 3, 4, 4]);
        // Above the last bound: only in the count (+Inf).
        assert_eq!(h.count, 5);
        assert_eq!(h.sum, 2e10 + 5_000_006.0);
    }
}
