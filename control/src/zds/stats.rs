//! Counters and gauges of the ZDS client, shared with whoever exports them (admin,
//! `/metrics`, readiness).
//!
//! Owns: [`ZdsStats`], written only by the client's thread and read from any thread with
//! relaxed atomics (each figure stands alone; nobody needs a consistent cut across them).
//! Invariants: `*_total`, `acks` and `nacks` only grow; `active` and `pending` mirror the
//! client's maps after every message and every retry round.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The ZDS client's counters.
#[derive(Debug, Default)]
pub struct ZdsStats {
    connected: AtomicBool,
    snapshot_received: AtomicBool,
    active: AtomicU64,
    pending: AtomicU64,
    started_total: AtomicU64,
    stopped_total: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
}

impl ZdsStats {
    /// A connection to the node agent is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The current (or, while reconnecting, the last) connection delivered its whole
    /// snapshot and no pod is waiting for a retry. False until the first snapshot; a new
    /// connection makes it false again until its snapshot completes, as in ztunnel.
    pub fn ready(&self) -> bool {
        self.snapshot_received.load(Ordering::Relaxed) && self.pending() == 0
    }

    /// Pods being served.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Pods whose start failed and is retried.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Pods started so far (including restarts with a new netns and successful retries).
    pub fn started_total(&self) -> u64 {
        self.started_total.load(Ordering::Relaxed)
    }

    /// Pods stopped so far (deleted, replaced, or left out of a snapshot).
    pub fn stopped_total(&self) -> u64 {
        self.stopped_total.load(Ordering::Relaxed)
    }

    /// Requests answered with an empty error.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Requests answered with an error.
    pub fn nacks(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }

    pub(super) fn set_connected(&self, on: bool) {
        self.connected.store(on, Ordering::Relaxed);
    }

    pub(super) fn set_snapshot_received(&self, on: bool) {
        self.snapshot_received.store(on, Ordering::Relaxed);
    }

    pub(super) fn set_gauges(&self, active: usize, pending: usize) {
        self.active.store(active as u64, Ordering::Relaxed);
        self.pending.store(pending as u64, Ordering::Relaxed);
    }

    pub(super) fn count_started(&self) {
        self.started_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_stopped(&self) {
        self.stopped_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_answer(&self, ok: bool) {
        let counter = if ok { &self.acks } else { &self.nacks };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
