//! Live progress counters, the one piece of state a load run shares between threads.
//!
//! Each worker owns one [`ProgressShard`] (its own cache line) and stores its running totals
//! into it with relaxed stores; the control thread only reads them to print the progress
//! line. Nothing on the request path waits on another thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One worker's running totals, padded to a cache line so workers never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ProgressShard {
    requests: AtomicU64,
    errors: AtomicU64,
}

impl ProgressShard {
    /// Publishes the worker's totals (single writer: the owning worker).
    #[inline]
    pub fn publish(&self, requests: u64, errors: u64) {
        self.requests.store(requests, Ordering::Relaxed);
        self.errors.store(errors, Ordering::Relaxed);
    }
}

/// All shards of a run.
#[derive(Debug, Clone)]
pub struct Progress {
    shards: Arc<[ProgressShard]>,
}

impl Progress {
    /// One shard per worker.
    pub fn new(workers: usize) -> Progress {
        Progress {
            shards: (0..workers).map(|_| ProgressShard::default()).collect(),
        }
    }

    /// The shard of worker `index`.
    pub fn shard(&self, index: usize) -> &ProgressShard {
        &self.shards[index]
    }

    /// Sum of (requests, errors) over all workers.
    pub fn totals(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(r, e), s| {
            (
                r + s.requests.load(Ordering::Relaxed),
                e + s.errors.load(Ordering::Relaxed),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_shards() {
        let p = Progress::new(3);
        p.shard(0).publish(10, 1);
        p.shard(2).publish(5, 0);
        assert_eq!(p.totals(), (15, 1));
        assert_eq!(std::mem::align_of::<ProgressShard>(), 64);
    }
}
