//! The byte meter every relay counts into, with the two directions of a connection named
//! once: bytes *from* the connection's originator (the client: its request) and bytes
//! *toward* it (the server's response).
//!
//! Owns: [`Meter`], [`Flow`] and [`Transferred`]; the contract the TCP relay here and the
//! HBONE tunnel relay (`hbone::stream`) share.
//!
//! Invariants:
//! - a relay adds to a meter only bytes it has written to the far side (read but unwritten
//!   bytes are not counted), as they move, so a caller that drops a relay early (a revoked
//!   or drained connection) still knows what it carried;
//! - a meter belongs to one connection on one core (plain cells); the optional live
//!   counters it also feeds are atomics written only by that core (telemetry shards), read
//!   by the control thread;
//! - directions are never named by socket ("a to b", "to tunnel", "sent"): what one
//!   telemetry schema calls sent or received is derived from [`Flow`] in one place (the
//!   node's connection record).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Which way bytes moved, relative to the side that opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// From the originator toward the destination (the request direction).
    FromOriginator,
    /// From the destination back toward the originator (the response direction).
    TowardOriginator,
}

impl Flow {
    /// The other direction.
    pub fn reverse(self) -> Flow {
        match self {
            Flow::FromOriginator => Flow::TowardOriginator,
            Flow::TowardOriginator => Flow::FromOriginator,
        }
    }
}

/// Bytes a connection has moved so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub from_originator: u64,
    pub toward_originator: u64,
}

impl Transferred {
    pub fn get(&self, flow: Flow) -> u64 {
        match flow {
            Flow::FromOriginator => self.from_originator,
            Flow::TowardOriginator => self.toward_originator,
        }
    }
}

/// Shared counters a meter also adds to as bytes move (a metrics series), one per flow.
#[derive(Debug, Clone)]
pub struct LiveCounters {
    pub from_originator: Arc<AtomicU64>,
    pub toward_originator: Arc<AtomicU64>,
}

/// One connection's byte counts and when it last moved a byte.
#[derive(Debug)]
pub struct Meter {
    from_originator: Cell<u64>,
    toward_originator: Cell<u64>,
    last_activity: Cell<Instant>,
    live: Option<LiveCounters>,
}

impl Default for Meter {
    fn default() -> Self {
        Meter::new()
    }
}

impl Meter {
    pub fn new() -> Meter {
        Meter {
            from_originator: Cell::new(0),
            toward_originator: Cell::new(0),
            last_activity: Cell::new(Instant::now()),
            live: None,
        }
    }

    /// A meter that also adds every count to `live` as it happens.
    pub fn with_live(live: LiveCounters) -> Meter {
        Meter {
            live: Some(live),
            ..Meter::new()
        }
    }

    /// Counts `n` bytes written toward their destination in direction `flow`.
    pub fn add(&self, flow: Flow, n: usize) {
        let (cell, live) = match flow {
            Flow::FromOriginator => (
                &self.from_originator,
                self.live.as_ref().map(|l| &l.from_originator),
            ),
            Flow::TowardOriginator => (
                &self.toward_originator,
                self.live.as_ref().map(|l| &l.toward_originator),
            ),
        };
        cell.set(cell.get() + n as u64);
        if let Some(live) = live {
            live.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.last_activity.set(Instant::now());
    }

    /// The bytes moved so far.
    pub fn transferred(&self) -> Transferred {
        Transferred {
            from_originator: self.from_originator.get(),
            toward_originator: self.toward_originator.get(),
        }
    }

    /// When a byte last moved (or the meter was made).
    pub fn last_activity(&self) -> Instant {
        self.last_activity.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_flow_and_feeds_live_counters() {
        let live = LiveCounters {
            from_originator: Arc::new(AtomicU64::new(5)),
            toward_originator: Arc::new(AtomicU64::new(0)),
        };
        let m = Meter::with_live(live.clone());
        m.add(Flow::FromOriginator, 100);
        m.add(Flow::TowardOriginator, 3000);
        m.add(Flow::FromOriginator, 1);
        let t = m.transferred();
        assert_eq!(t.from_originator, 101);
        assert_eq!(t.toward_originator, 3000);
        assert_eq!(t.get(Flow::TowardOriginator), 3000);
        assert_eq!(live.from_originator.load(Ordering::Relaxed), 106);
        assert_eq!(live.toward_originator.load(Ordering::Relaxed), 3000);
        assert_eq!(Flow::FromOriginator.reverse(), Flow::TowardOriginator);
    }
}
