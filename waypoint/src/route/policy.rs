//! What a rule does around forwarding: its retry policy (conditions on statuses, resets,
//! connect failures and gRPC statuses), its injected faults and its mirror.

use std::time::Duration;

use super::Backend;

/// What is retried, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts after the first.
    pub attempts: u32,
    pub codes: Vec<u16>,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_reset: bool,
    /// An HTTP/2 backend's `REFUSED_STREAM` (the request was not processed; `reset`
    /// covers it too).
    pub on_refused_stream: bool,
    pub on_connect_failure: bool,
    /// gRPC statuses that are worth another attempt when a response's head carries them
    /// (a trailers-only answer), as Envoy's `cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted` and `unavailable` conditions.
    pub grpc_statuses: Vec<u8>,
    pub backoff: Duration,
    pub per_try_timeout: Option<Duration>,
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
}

impl Retry {
    /// Whether a response with `status` is worth another attempt.
    pub fn retries_status(&self, status: u16) -> bool {
        self.codes.contains(&status)
            || (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway_error && matches!(status, 502..=504))
    }

    /// Whether a response head with these headers is worth another attempt: its status, or
    /// the gRPC status a trailers-only answer carries in its head.
    pub fn retries_response(&self, status: u16, headers: &http::HeaderMap) -> bool {
        self.retries_status(status)
            || (!self.grpc_statuses.is_empty()
                && crate::grpc::status_in(headers).is_some_and(|s| self.grpc_statuses.contains(&s)))
    }
}

/// Envoy's gRPC retry conditions and the statuses they name.
pub const GRPC_RETRY_ON: [(&str, u8); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

/// Injected faults (percentages as probabilities in 0..=1).
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(Abort, f64)>,
}

/// An injected abort's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Abort {
    /// The HTTP status (`200` for an abort that gives only a gRPC status, as Envoy's).
    pub status: http::StatusCode,
    /// The gRPC status a gRPC client gets (`grpcStatus`); without it, the one the HTTP
    /// status stands for.
    pub grpc_status: Option<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub backend: Backend,
    /// Probability in 0..=1.
    pub fraction: f64,
}
