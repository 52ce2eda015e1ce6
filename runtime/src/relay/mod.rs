//! Bidirectional TCP relay.
//!
//! A relay owns two connected sockets — `a`, the originator's, and `b`, the destination's —
//! and moves bytes both ways until both directions have ended, counting each write into a
//! [`Meter`] ([`Flow::FromOriginator`] for `a` → `b`). Per direction: end of stream on the reading side becomes `shutdown(SHUT_WR)` on
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
//! The HBONE tunnel relay (`hbone::stream::relay`) keeps the same contract, meter and
//! vocabulary for the paths where one side is an HTTP/2 stream.

mod buffered;
mod splice;

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::str::FromStr;
use std::time::Duration;

use futures_util::future::{Either, select};

pub use crate::meter::{Flow, Meter};
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

/// Bytes moved by a relay (the meter's figures): `a` is the originator's side.
pub use crate::meter::Transferred as RelayStats;

/// Which of the relay's two sockets failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `a`: the connection's originator (the client).
    Originator,
    /// `b`: the destination.
    Upstream,
}

/// Why a relay ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A socket failed while bytes moved in `flow`; `side` is the socket at fault.
    #[error("{}: {source}", match side { Side::Originator => "downstream", Side::Upstream => "upstream" })]
    Io {
        flow: Flow,
        side: Side,
        #[source]
        source: io::Error,
    },
    #[error("no byte moved for {0:?}")]
    IdleTimeout(Duration),
    /// The caller's abort signal fired; both sockets were reset.
    #[error("aborted")]
    Aborted,
    #[error("relay setup: {0}")]
    Setup(#[source] io::Error),
}

impl RelayError {
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

/// Relays between `a` (the originator's socket) and `b` until both directions end; see the
/// module docs.
pub async fn relay(
    a: TcpStream,
    b: TcpStream,
    opts: &RelayOptions,
) -> Result<RelayStats, RelayError> {
    let meter = Meter::new();
    relay_metered(a, b, opts, &meter, std::future::pending())
        .await
        .map(|()| meter.transferred())
}

/// [`relay`], counting into `meter` as bytes move, until both directions end, a socket
/// fails, the idle timeout passes, or `abort` completes. On abort (and on idle timeout) both
/// sockets are closed with a reset, so neither peer mistakes the cut for a complete stream.
pub async fn relay_metered(
    a: TcpStream,
    b: TcpStream,
    opts: &RelayOptions,
    meter: &Meter,
    abort: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let abort = pin!(abort);
    match opts.mode {
        CopyMode::Splice => {
            let r = watch(
                splice::relay(&a, &b, meter),
                meter,
                opts.idle_timeout,
                abort,
            )
            .await;
            if r.is_err() {
                reset_both(&a, &b);
            }
            r
        }
        CopyMode::Buffered => {
            let a = a.into_compio().map_err(RelayError::Setup)?;
            let b = b.into_compio().map_err(RelayError::Setup)?;
            let r = watch(
                buffered::relay(&a, &b, meter),
                meter,
                opts.idle_timeout,
                abort,
            )
            .await;
            if r.is_err() {
                for s in [&a, &b] {
                    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                }
            }
            r
        }
    }
}

fn reset_both(a: &TcpStream, b: &TcpStream) {
    let _ = a.set_zero_linger();
    let _ = b.set_zero_linger();
}

/// A direction that failed: its flow, the socket at fault, and how.
pub(crate) type DirResult = Result<(), (Flow, Side, io::Error)>;

/// Runs `copy` until it ends, no byte moved for `idle`, or `abort` fires. Dropping the copy
/// is safe: the splice path only drops readiness waits, and the buffered path's in-flight
/// buffers stay owned by their operations until the kernel completes them.
async fn watch<F: Future<Output = DirResult>>(
    copy: F,
    meter: &Meter,
    idle: Option<Duration>,
    abort: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), RelayError> {
    let copy = pin!(copy);
    let watchdog = pin!(idle_watchdog(meter, idle));
    let stop = select(watchdog, abort);
    match select(copy, stop).await {
        Either::Left((Ok(()), _)) => Ok(()),
        Either::Left((Err((flow, side, source)), _)) => Err(RelayError::Io { flow, side, source }),
        Either::Right((Either::Left(_), _)) => {
            Err(RelayError::IdleTimeout(idle.unwrap_or_default()))
        }
        Either::Right((Either::Right(_), _)) => Err(RelayError::Aborted),
    }
}

async fn idle_watchdog(meter: &Meter, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let since = meter.last_activity().elapsed();
        if since >= idle {
            return;
        }
        compio::time::sleep(idle - since).await;
    }
}

#[cfg(test)]
mod tests;
