//! Counters of the xDS client, shared with whoever exports them (admin, `/metrics`,
//! readiness).
//!
//! Owns: [`XdsStats`], written only by the client's task and read from any thread with
//! relaxed atomics (each figure is independent; nobody needs a consistent cut across them).
//! Invariants: counters only grow; `ready` goes false → true once and stays (readiness
//! means "has had a full view once", and the last good state is kept while istiod is away).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{ADDRESS_TYPE, AUTHORIZATION_TYPE};

/// Why one connection to istiod ended: ztunnel's
/// `istio_xds_connection_terminations_total{reason}` label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Termination {
    /// The channel or the stream could not be opened.
    ConnectionError,
    /// The stream failed with a non-benign status, or we could not send on it.
    Error,
    /// The stream failed with a benign status (istiod restarting, connection recycled).
    Reconnect,
    /// istiod ended the stream cleanly (e.g. its max connection age).
    Complete,
}

impl Termination {
    pub const ALL: [Termination; 4] = [
        Termination::ConnectionError,
        Termination::Error,
        Termination::Reconnect,
        Termination::Complete,
    ];

    /// The metric label, spelled as ztunnel's.
    pub fn label(self) -> &'static str {
        match self {
            Termination::ConnectionError => "ConnectionError",
            Termination::Error => "Error",
            Termination::Reconnect => "Reconnect",
            Termination::Complete => "Complete",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Per-type buckets: the two watched types and everything else. ztunnel labels by the
/// response's type URL as sent; a bucket for the rest keeps a peer from minting label values.
pub const OTHER_TYPE: &str = "other";
const TYPES: [&str; 3] = [ADDRESS_TYPE, AUTHORIZATION_TYPE, OTHER_TYPE];

fn bucket(type_url: &str) -> usize {
    TYPES[..2].iter().position(|t| *t == type_url).unwrap_or(2)
}

/// The xDS client's counters.
#[derive(Debug, Default)]
pub struct XdsStats {
    connected: AtomicBool,
    connects: AtomicU64,
    terminations: [AtomicU64; 4],
    messages: [AtomicU64; 3],
    bytes: [AtomicU64; 3],
    acks: AtomicU64,
    nacks: AtomicU64,
    ready: AtomicBool,
}

impl XdsStats {
    /// A stream to istiod is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Streams opened so far.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Connections that ended for `reason`.
    pub fn terminations(&self, reason: Termination) -> u64 {
        self.terminations[reason.index()].load(Ordering::Relaxed)
    }

    /// Responses received for `type_url` (any unwatched type counts under [`OTHER_TYPE`]).
    pub fn messages(&self, type_url: &str) -> u64 {
        self.messages[bucket(type_url)].load(Ordering::Relaxed)
    }

    /// Resource payload bytes received for `type_url`: the sum of the `Any` values' lengths,
    /// as ztunnel's `istio_xds_message_bytes_total` counts.
    pub fn bytes(&self, type_url: &str) -> u64 {
        self.bytes[bucket(type_url)].load(Ordering::Relaxed)
    }

    /// `(type label, messages, bytes)` for each bucket, for an exporter.
    pub fn per_type(&self) -> [(&'static str, u64, u64); 3] {
        [0, 1, 2].map(|i| {
            (
                TYPES[i],
                self.messages[i].load(Ordering::Relaxed),
                self.bytes[i].load(Ordering::Relaxed),
            )
        })
    }

    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    pub fn nacks(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }

    /// Every watched type has had a response that was ACKed (ztunnel's readiness gate).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        if up {
            self.connects.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn terminated(&self, reason: Termination) {
        self.terminations[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, type_url: &str, bytes: u64) {
        let b = bucket(type_url);
        self.messages[b].fetch_add(1, Ordering::Relaxed);
        self.bytes[b].fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn replied(&self, nack: bool) {
        if nack {
            self.nacks.fetch_add(1, Ordering::Relaxed);
        } else {
            self.acks.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
}
