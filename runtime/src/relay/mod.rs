//! Bidirectional TCP relay.
//!
//! A relay owns two connected sockets and moves bytes both ways until both directions have
//! ended. Per direction: end of stream on the reading side becomes `shutdown(SHUT_WR)` on
//! the writing side (FIN for FIN) and the other direction keeps flowing; a reset on either
//! side resets the other (RST for RST: zero linger, then close). The relay never decides
//! anything about the bytes (STYLE.md: keep policy out of the copy loop); it only moves and
//! counts them.
//!
//! Two copy modes, chosen per relay:
//! - [`CopyMode::Splice`]: zero-copy through a per-direction kernel pipe, driven by
//!   readiness on the owning core with non-blocking `splice(2)` calls. (io_uring's SPLICE
//!   op is not used: the kernel always runs it in io-wq worker threads, measured at 2–2.5×
//!   the CPU per byte and off the pinned core; DESIGN.md.)
//! - [`CopyMode::Buffered`]: completion I/O (io_uring recv/send, or the epoll driver's
//!   emulation) through a user-space buffer that adapts to the traffic.
//!
//! [`copy_bidirectional`] is the same contract over any poll-style streams (TLS, HTTP/2
//! tunnels), for the paths where one side is not a plain socket.

mod buffered;
mod generic;
mod splice;

use std::cell::Cell;
use std::fmt;
use std::io;
use std::pin::pin;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};

pub use generic::copy_bidirectional;

use crate::net::TcpStream;

/// How a relay moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyMode {
    /// splice(2) through kernel pipes, no user-space copy.
    #[default]
    Splice,
    /// Completion I/O through an adaptive user-space buffer.
    Buffered,
}

impl FromStr for CopyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "splice" => Ok(CopyMode::Splice),
            "buffered" => Ok(CopyMode::Buffered),
            other => Err(format!(
                "unknown copy mode {other:?}: expected splice or buffered"
            )),
        }
    }
}

impl fmt::Display for CopyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyMode::Splice => "splice",
            CopyMode::Buffered => "buffered",
        })
    }
}

/// Options of one relay.
#[derive(Debug, Clone, Default)]
pub struct RelayOptions {
    pub mode: CopyMode,
    /// Close both sides when no byte moved in either direction for this long.
    pub idle_timeout: Option<Duration>,
}

/// Bytes moved by a relay: `a_to_b` were read from `a` and written to `b`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Which way bytes were moving when a relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    AToB,
    BToA,
}

/// Why a relay ended early. Every variant carries the bytes moved until then.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay {direction:?}: {source}")]
    Io {
        direction: Direction,
        #[source]
        source: io::Error,
        stats: RelayStats,
    },
    #[error("relay idle for {0:?}")]
    IdleTimeout(Duration, RelayStats),
    #[error("relay setup: {0}")]
    Setup(#[source] io::Error),
}

impl RelayError {
    pub fn stats(&self) -> RelayStats {
        match self {
            RelayError::Io { stats, .. } | RelayError::IdleTimeout(_, stats) => *stats,
            RelayError::Setup(_) => RelayStats::default(),
        }
    }

    /// True when a peer reset the connection (as opposed to a local failure or timeout).
    pub fn is_reset(&self) -> bool {
        matches!(self, RelayError::Io { source, .. } if is_reset(source))
    }
}

pub(crate) fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// The bytes a relay has moved so far and when it last moved one. Shared by the two
/// directions of one relay (same task, so plain cells); give one to [`relay_metered`] to
/// read the counts even after the relay's future was dropped (a connection revoked from
/// outside).
#[derive(Debug)]
pub struct Progress {
    a_to_b: Cell<u64>,
    b_to_a: Cell<u64>,
    last_activity: Cell<Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            a_to_b: Cell::new(0),
            b_to_a: Cell::new(0),
            last_activity: Cell::new(Instant::now()),
        }
    }

    pub(crate) fn add(&self, dir: Direction, n: usize) {
        let c = match dir {
            Direction::AToB => &self.a_to_b,
            Direction::BToA => &self.b_to_a,
        };
        c.set(c.get() + n as u64);
        self.last_activity.set(Instant::now());
    }

    /// The bytes moved so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            a_to_b: self.a_to_b.get(),
            b_to_a: self.b_to_a.get(),
        }
    }
}

/// Relays between `a` and `b` until both directions end; see the module docs.
pub async fn relay(
    a: TcpStream,
    b: TcpStream,
    opts: &RelayOptions,
) -> Result<RelayStats, RelayError> {
    relay_metered(a, b, opts, &Progress::new()).await
}

/// [`relay`], counting into `progress` as bytes move.
pub async fn relay_metered(
    a: TcpStream,
    b: TcpStream,
    opts: &RelayOptions,
    progress: &Progress,
) -> Result<RelayStats, RelayError> {
    let result = match opts.mode {
        CopyMode::Splice => {
            with_idle(splice::relay(&a, &b, progress), progress, opts.idle_timeout).await
        }
        CopyMode::Buffered => {
            let a = a.into_compio().map_err(RelayError::Setup)?;
            let b = b.into_compio().map_err(RelayError::Setup)?;
            with_idle(
                buffered::relay(&a, &b, progress),
                progress,
                opts.idle_timeout,
            )
            .await
        }
    };
    match result {
        Some(Ok(())) => Ok(progress.stats()),
        Some(Err((direction, source))) => Err(RelayError::Io {
            direction,
            source,
            stats: progress.stats(),
        }),
        None => Err(RelayError::IdleTimeout(
            opts.idle_timeout.unwrap_or_default(),
            progress.stats(),
        )),
    }
}

/// The direction that failed and how.
pub(crate) type DirResult = Result<(), (Direction, io::Error)>;

/// Runs `copy`, or gives up (`None`) once no byte moved for `idle`. Dropping the copy is
/// safe: the splice path only drops readiness waits, and the buffered path's in-flight
/// buffers stay owned by their operations until the kernel completes them.
async fn with_idle<F: Future<Output = DirResult>>(
    copy: F,
    progress: &Progress,
    idle: Option<Duration>,
) -> Option<DirResult> {
    let Some(idle) = idle else {
        return Some(copy.await);
    };
    let copy = pin!(copy);
    let watchdog = pin!(idle_watchdog(progress, idle));
    match select(copy, watchdog).await {
        Either::Left((res, _)) => Some(res),
        Either::Right(((), _)) => None,
    }
}

async fn idle_watchdog(progress: &Progress, idle: Duration) {
    loop {
        let since = progress.last_activity.get().elapsed();
        if since >= idle {
            return;
        }
        compio::time::sleep(idle - since).await;
    }
}

#[cfg(test)]
mod tests;
