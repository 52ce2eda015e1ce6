//! TCP bulk streaming for throughput (`loadgen tcp --bulk`): each connection writes chunks
//! of the payload pattern as fast as the peer takes them (upload; against `sink` or `echo`)
//! or only reads (download; against `source`), for the run's duration.
//!
//! Invariants:
//! - Whatever comes back is checked against the pattern at its stream offset (the chunk is a
//!   whole number of 26-byte pattern cycles, so the pattern is continuous across chunks); a
//!   mismatch is an `other` error and ends the connection.
//! - In bulk mode a "request" is one chunk written (upload) or one read (download); its
//!   latency is how long that call took, i.e. back-pressure. The figure that matters is
//!   bytes/s.

use std::cell::Cell;
use std::time::{Duration, Instant};

use futures_util::future::join;
use runtime::net::TcpStream;

use crate::http1::pattern;
use crate::stats::ErrorKind;

/// Rounds a requested chunk size to whole pattern cycles (at least one).
pub fn chunk_len(size: usize) -> usize {
    (size / 26).max(1) * 26
}

/// Events reported to the caller's stats.
pub trait BulkSink {
    /// One chunk written (upload) or read (download) — counted as a request.
    fn chunk(&self, latency: Duration, sent: u64, received: u64);
    /// Echoed bytes received during an upload (not a request of their own).
    fn received(&self, n: u64);
    fn error(&self, kind: ErrorKind);
}

/// Streams on `s` until `end` (or `quota` chunks); returns when both directions finished.
pub async fn stream(
    s: &TcpStream,
    chunk: usize,
    download: bool,
    end: Option<Instant>,
    hard_end: Option<Instant>,
    quota: Option<u64>,
    sink: &impl BulkSink,
) {
    let out: Vec<u8> = pattern(chunk_len(chunk)).collect();
    let failed = Cell::new(false);
    let writer = async {
        if download {
            return;
        }
        let mut n = 0u64;
        loop {
            let t0 = Instant::now();
            if end.is_some_and(|e| t0 >= e) || quota.is_some_and(|q| n >= q) || failed.get() {
                break;
            }
            match s.write_all(&out).await {
                Ok(()) => {
                    n += 1;
                    sink.chunk(t0.elapsed(), out.len() as u64, 0);
                }
                Err(e) => {
                    failed.set(true);
                    sink.error(ErrorKind::from_io(&e));
                    return;
                }
            }
        }
        let _ = s.shutdown_write();
    };
    let reader = async {
        let mut buf = vec![0u8; 64 * 1024];
        // Two cycles of the pattern so any offset has a contiguous reference slice.
        let reference: Vec<u8> = pattern(buf.len() + 26).collect();
        let mut offset = 0usize;
        let mut reads = 0u64;
        loop {
            let t0 = Instant::now();
            if download && (end.is_some_and(|e| t0 >= e) || quota.is_some_and(|q| reads >= q)) {
                return;
            }
            let left = hard_end
                .map(|h| h.saturating_duration_since(t0))
                .unwrap_or(Duration::from_secs(3600));
            let n = match runtime::time::timeout(left, s.read(&mut buf)).await {
                Err(_) => return,
                Ok(Ok(0)) => {
                    if download {
                        sink.error(ErrorKind::ShortRead);
                    }
                    return;
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    if !failed.get() {
                        failed.set(true);
                        sink.error(ErrorKind::from_io(&e));
                    }
                    return;
                }
            };
            let start = offset % 26;
            if buf[..n] != reference[start..start + n] {
                failed.set(true);
                sink.error(ErrorKind::Other);
                return;
            }
            offset += n;
            reads += 1;
            if download {
                sink.chunk(t0.elapsed(), 0, n as u64);
            } else {
                sink.received(n as u64);
            }
        }
    };
    join(writer, reader).await;
}
