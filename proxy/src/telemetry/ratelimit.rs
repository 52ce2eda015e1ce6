//! Rate limits for the log lines a peer can cause: refused connections, failed handshakes,
//! floods. An operator needs to see them at a visible level; a peer must not be able to make
//! the node write thousands of lines a second (a self-dial loop once wrote 6,000/s).
//!
//! Owns: [`LogLimiter`], one token bucket per kind of line, per core (no sharing).
//!
//! Invariant: at most [`BURST`] lines of a kind at once and [`PER_SECOND`] a second after
//! that, per core; the first line let through after some were held back says how many
//! (`suppressed=N`), so nothing disappears without a trace. Access lines of opened
//! connections are never limited: they are the record.

use std::cell::Cell;
use std::time::Instant;

/// Lines of one kind a core writes at once before limiting.
pub const BURST: f64 = 20.0;
/// Lines of one kind a core writes per second when limited.
pub const PER_SECOND: f64 = 5.0;

/// The kinds of line that are limited separately (a flood of one never hides another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// `connection failed` access lines (refused before opening).
    Refused,
    /// TLS handshakes that failed or timed out.
    Handshake,
    /// HTTP/2 protocol errors and floods from a peer.
    Protocol,
    /// Load shed by a limit.
    Overload,
}

const KINDS: usize = 4;

#[derive(Debug)]
struct Bucket {
    tokens: Cell<f64>,
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            tokens: Cell::new(BURST),
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }
}

/// One core's log budget.
#[derive(Debug, Default)]
pub struct LogLimiter {
    buckets: [Bucket; KINDS],
}

impl LogLimiter {
    /// `Some(suppressed)` if a line of `kind` may be written now (`suppressed` lines of the
    /// kind were held back since the last one written); `None` to hold this one back.
    pub fn allow(&self, kind: LineKind) -> Option<u64> {
        self.allow_at(kind, Instant::now())
    }

    fn allow_at(&self, kind: LineKind, now: Instant) -> Option<u64> {
        let b = &self.buckets[kind as usize];
        if let Some(last) = b.last.get() {
            let refill = now.saturating_duration_since(last).as_secs_f64() * PER_SECOND;
            b.tokens.set((b.tokens.get() + refill).min(BURST));
        }
        b.last.set(Some(now));
        if b.tokens.get() >= 1.0 {
            b.tokens.set(b.tokens.get() - 1.0);
            Some(b.suppressed.replace(0))
        } else {
            b.suppressed.set(b.suppressed.get() + 1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_a_steady_rate_and_the_count_of_what_was_held_back() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        let passed = (0..1000)
            .filter(|_| l.allow_at(LineKind::Refused, t0).is_some())
            .count();
        assert_eq!(passed, BURST as usize);
        // Other kinds have their own budget.
        assert_eq!(l.allow_at(LineKind::Handshake, t0), Some(0));
        // A second later, five more; the first says how many were held back.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.allow_at(LineKind::Refused, t1), Some(1000 - BURST as u64));
        let more = (0..100)
            .filter(|_| l.allow_at(LineKind::Refused, t1).is_some())
            .count();
        assert_eq!(more, PER_SECOND as usize - 1);
    }
}
