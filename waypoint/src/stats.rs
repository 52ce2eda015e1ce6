//! What the waypoint counts on one core: requests by Service, route and response, and the
//! resilience events (retries, faults, mirrors). Shards are summed by the caller.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use http::StatusCode;

use crate::route::{Rule, ServiceRef};

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
}

impl Outcome {
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub service: ServiceRef,
    pub route: String,
    pub code: u16,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub requests: u64,
    pub duration_ms_sum: f64,
}

/// One core's counters.
#[derive(Debug, Default)]
pub struct Stats {
    by_key: RefCell<HashMap<Key, Tally>>,
    pub retries: Cell<u64>,
    pub retries_over_budget: Cell<u64>,
    pub delays: Cell<u64>,
    pub aborts: Cell<u64>,
    pub mirrors: Cell<u64>,
    pub mirror_failures: Cell<u64>,
}

/// A plain copy of [`Stats`], for summing over cores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub requests: HashMap<Key, Tally>,
    pub retries: u64,
    pub retries_over_budget: u64,
    pub delays: u64,
    pub aborts: u64,
    pub mirrors: u64,
    pub mirror_failures: u64,
}

impl Stats {
    pub fn record(
        &self,
        service: &ServiceRef,
        rule: Option<&Rule>,
        status: StatusCode,
        outcome: Outcome,
        took: Duration,
    ) {
        let key = Key {
            service: service.clone(),
            route: rule.map_or_else(|| "-".to_string(), |r| r.route.to_string()),
            code: status.as_u16(),
            outcome,
        };
        let mut map = self.by_key.borrow_mut();
        let t = map.entry(key).or_default();
        t.requests += 1;
        t.duration_ms_sum += took.as_secs_f64() * 1e3;
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.by_key.borrow().clone(),
            retries: self.retries.get(),
            retries_over_budget: self.retries_over_budget.get(),
            delays: self.delays.get(),
            aborts: self.aborts.get(),
            mirrors: self.mirrors.get(),
            mirror_failures: self.mirror_failures.get(),
        }
    }
}

impl Snapshot {
    pub fn add(&mut self, other: &Snapshot) {
        for (k, t) in &other.requests {
            let e = self.requests.entry(k.clone()).or_default();
            e.requests += t.requests;
            e.duration_ms_sum += t.duration_ms_sum;
        }
        self.retries += other.retries;
        self.retries_over_budget += other.retries_over_budget;
        self.delays += other.delays;
        self.aborts += other.aborts;
        self.mirrors += other.mirrors;
        self.mirror_failures += other.mirror_failures;
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP ringmesh_waypoint_requests_total Requests the waypoint answered.\n# TYPE ringmesh_waypoint_requests_total counter\n");
        let mut keys: Vec<&Key> = self.requests.keys().collect();
        keys.sort();
        for k in &keys {
            let _ = writeln!(
                out,
                "ringmesh_waypoint_requests_total{{destination_service=\"{}\",route=\"{}\",response_code=\"{}\",response_flags=\"{}\"}} {}",
                k.service,
                k.route,
                k.code,
                k.outcome.flag(),
                self.requests[*k].requests
            );
        }
        for (name, help, v) in [
            ("retries", "Retries sent.", self.retries),
            (
                "retries_over_budget",
                "Retries not sent because the retry budget was spent.",
                self.retries_over_budget,
            ),
            ("fault_delays", "Injected delays.", self.delays),
            ("fault_aborts", "Injected aborts.", self.aborts),
            ("mirrors", "Mirrored copies sent.", self.mirrors),
            (
                "mirror_failures",
                "Mirrored copies that failed or timed out.",
                self.mirror_failures,
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
