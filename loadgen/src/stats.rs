//! Run counters: what one worker saw during the measured window, and their merge.
//!
//! Invariants:
//! - A request is counted exactly once, at completion: either as a response (with a latency
//!   sample) or under one [`ErrorKind`]. So `requests == responses + errors.total()` always.
//! - Requests whose intended send time falls in the warm-up are not counted anywhere.
//! - Nothing here is shared between threads: each worker owns its `WorkerStats` and hands
//!   it back when it finishes; the control thread merges them.

use std::io;

use serde::{Serialize, Serializer, ser::SerializeMap};

use crate::histogram::LatencyHistogram;
use crate::http1::ParseError;

/// Why a request failed. The names are the JSON keys of `errors`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The connect was refused (RST to the SYN, no listener).
    ConnectRefused,
    /// The connect did not complete within the timeout.
    ConnectTimeout,
    /// A request got no complete response within the timeout.
    Timeout,
    /// The peer reset the connection (or the stream, for HTTP/2).
    Reset,
    /// An HTTP response with an unexpected status (not 2xx, or not the expected one).
    BadStatus,
    /// The peer closed before the full response arrived, or sent a different byte count.
    ShortRead,
    /// Anything else (malformed response, local resource errors).
    Other,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::ConnectRefused,
        ErrorKind::ConnectTimeout,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::BadStatus,
        ErrorKind::ShortRead,
        ErrorKind::Other,
    ];

    /// The JSON key and table label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::BadStatus => "bad_status",
            ErrorKind::ShortRead => "short_read",
            ErrorKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Classifies an I/O error seen while exchanging a request on an open connection.
    pub fn from_io(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
            io::ErrorKind::UnexpectedEof => ErrorKind::ShortRead,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
            _ => ErrorKind::Other,
        }
    }

    /// Classifies an I/O error seen while connecting.
    pub fn from_connect(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
            io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
            _ => ErrorKind::from_io(e),
        }
    }

    /// Classifies an HTTP/1.1 parse failure.
    pub fn from_parse(e: &ParseError) -> ErrorKind {
        match e {
            ParseError::UnexpectedEof => ErrorKind::ShortRead,
            _ => ErrorKind::Other,
        }
    }
}

/// Error counts by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; 7]);

impl ErrorCounts {
    /// Adds one error of `kind`.
    #[inline]
    pub fn add(&mut self, kind: ErrorKind) {
        self.0[kind.index()] += 1;
    }

    /// Count for one kind.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind.index()]
    }

    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

impl Serialize for ErrorCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(ErrorKind::ALL.len()))?;
        for k in ErrorKind::ALL {
            m.serialize_entry(k.as_str(), &self.get(k))?;
        }
        m.end()
    }
}

/// Everything one worker measured in the measured window.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    /// Requests completed (response or error).
    pub requests: u64,
    /// Requests answered as expected.
    pub responses: u64,
    /// Failed requests by kind.
    pub errors: ErrorCounts,
    /// Payload bytes written (request bytes, including HTTP headers).
    pub bytes_sent: u64,
    /// Payload bytes read (response bytes, including HTTP headers).
    pub bytes_received: u64,
    /// Open-loop requests sent more than [`crate::schedule::LATE_THRESHOLD`] after their
    /// intended time.
    pub late_sends: u64,
    /// Connections opened (including reconnects after errors).
    pub connects: u64,
    /// Latency of successful requests.
    pub latency: LatencyHistogram,
}

impl WorkerStats {
    /// Records a successful request.
    #[inline]
    pub fn ok(&mut self, latency: std::time::Duration) {
        self.requests += 1;
        self.responses += 1;
        self.latency.record(latency);
    }

    /// Records a failed request.
    #[inline]
    pub fn err(&mut self, kind: ErrorKind) {
        self.requests += 1;
        self.errors.add(kind);
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &WorkerStats) -> Result<(), crate::Error> {
        self.requests += other.requests;
        self.responses += other.responses;
        self.errors.merge(&other.errors);
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.late_sends += other.late_sends;
        self.connects += other.connects;
        self.latency.merge(&other.latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_add_up_and_merge() {
        let mut a = WorkerStats::default();
        a.ok(Duration::from_micros(100));
        a.err(ErrorKind::Reset);
        let mut b = WorkerStats::default();
        b.ok(Duration::from_micros(300));
        b.err(ErrorKind::BadStatus);
        b.err(ErrorKind::BadStatus);
        a.merge(&b).unwrap();
        assert_eq!(a.requests, 5);
        assert_eq!(a.requests, a.responses + a.errors.total());
        assert_eq!(a.errors.get(ErrorKind::BadStatus), 2);
        assert_eq!(a.latency.len(), 2);
    }

    #[test]
    fn errors_serialize_every_kind() {
        let mut e = ErrorCounts::default();
        e.add(ErrorKind::ConnectRefused);
        let v = serde_json::to_value(e).unwrap();
        for k in ErrorKind::ALL {
            assert!(v.get(k.as_str()).is_some(), "{}", k.as_str());
        }
        assert_eq!(v["connect_refused"], 1);
    }

    #[test]
    fn io_errors_classify() {
        let k = |kind| ErrorKind::from_io(&io::Error::from(kind));
        assert_eq!(k(io::ErrorKind::ConnectionReset), ErrorKind::Reset);
        assert_eq!(k(io::ErrorKind::UnexpectedEof), ErrorKind::ShortRead);
        assert_eq!(
            ErrorKind::from_connect(&io::Error::from(io::ErrorKind::ConnectionRefused)),
            ErrorKind::ConnectRefused
        );
        assert_eq!(
            ErrorKind::from_connect(&io::Error::from(io::ErrorKind::TimedOut)),
            ErrorKind::ConnectTimeout
        );
    }
}
