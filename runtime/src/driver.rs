//! Building one compio runtime for one core, with the io_uring → epoll fallback.
//!
//! Invariant: a worker never panics because io_uring is unavailable. `Auto` tries io_uring
//! with a modest ring and falls back to the polling (epoll) driver on any setup error
//! (seccomp's EPERM, an old kernel's ENOSYS, RLIMIT_MEMLOCK's ENOMEM); forcing a driver
//! turns that error into a start-up error that names the driver.

use std::fmt;
use std::str::FromStr;

use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::{Runtime, RuntimeBuilder};

/// Submission queue entries per core. On kernel 6.18 ring memory counts against
/// RLIMIT_MEMLOCK for processes without CAP_IPC_LOCK, and rings of 1024 entries were
/// measured to fail at a 64 KiB memlock limit (DESIGN.md). 256 entries cover a proxy core's
/// in-flight readiness waits (two per relayed connection, submitted in batches) while
/// keeping the ring small; the completion queue is twice that (the kernel default ratio).
pub const RING_ENTRIES: u32 = 256;

/// How an io_uring ring is set up.
///
/// `Tuned` adds `IORING_SETUP_SINGLE_ISSUER` (only the worker's own thread submits, which
/// holds by construction: one runtime per thread; other threads only wake it) and
/// `IORING_SETUP_COOP_TASKRUN` with `TASKRUN_FLAG` (the kernel runs completion task work when
/// the worker next enters the ring instead of interrupting it with an IPI). Measured with
/// `ringmesh-bench run --scenarios ringmesh --workloads http-max,http-1k --pin --repeat 1
/// --duration 8`, interleaved ×2: http-max 23.1k/22.9k → 34.4k/36.7k req/s at 0.043 →
/// 0.027–0.029 proxy CPU-s per 1,000 requests; http-1k unchanged (0.095–0.109 both).
/// `DEFER_TASKRUN` measured the same as COOP_TASKRUN. The flags need kernel 6.0; on an older
/// kernel `Plain` is tried before giving up on io_uring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RingSetup {
    Tuned,
    Plain,
}

/// Which event driver a worker should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverChoice {
    /// io_uring if it can be set up, else epoll (logged).
    #[default]
    Auto,
    /// io_uring or fail to start.
    IoUring,
    /// The polling driver (epoll on Linux).
    Epoll,
}

impl FromStr for DriverChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DriverChoice::Auto),
            "io-uring" | "io_uring" | "iouring" | "uring" => Ok(DriverChoice::IoUring),
            "epoll" | "poll" | "polling" => Ok(DriverChoice::Epoll),
            other => Err(format!(
                "unknown driver {other:?}: expected one of auto, io-uring, epoll"
            )),
        }
    }
}

impl fmt::Display for DriverChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverChoice::Auto => "auto",
            DriverChoice::IoUring => "io-uring",
            DriverChoice::Epoll => "epoll",
        })
    }
}

/// The driver a worker actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    IoUring,
    Epoll,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::IoUring => "io_uring",
            DriverKind::Epoll => "epoll",
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a runtime for the calling thread. Returns the runtime and the driver it runs.
pub fn build(choice: DriverChoice) -> std::io::Result<(Runtime, DriverKind)> {
    let make = |ty: DriverType, setup: RingSetup| -> std::io::Result<Runtime> {
        let mut proactor = ProactorBuilder::new();
        proactor.capacity(RING_ENTRIES).driver_type(ty);
        if setup == RingSetup::Tuned {
            proactor
                .single_issuer(true)
                .coop_taskrun(true)
                .taskrun_flag(true);
        }
        RuntimeBuilder::new().with_proactor(proactor).build()
    };
    let uring = || {
        make(DriverType::IoUring, RingSetup::Tuned).or_else(|e| {
            tracing::debug!(error = %e, "io_uring without SINGLE_ISSUER/COOP_TASKRUN");
            make(DriverType::IoUring, RingSetup::Plain)
        })
    };
    let runtime = match choice {
        DriverChoice::Epoll => make(DriverType::Poll, RingSetup::Plain)?,
        DriverChoice::IoUring => uring().map_err(|e| {
            std::io::Error::new(e.kind(), format!("io_uring driver could not start: {e}"))
        })?,
        DriverChoice::Auto => match uring() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable, falling back to epoll");
                make(DriverType::Poll, RingSetup::Plain)?
            }
        },
    };
    let kind = if runtime.driver_type().is_iouring() {
        DriverKind::IoUring
    } else {
        DriverKind::Epoll
    };
    Ok((runtime, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_driver_names() {
        assert_eq!(
            "io-uring".parse::<DriverChoice>().unwrap(),
            DriverChoice::IoUring
        );
        assert_eq!(
            "epoll".parse::<DriverChoice>().unwrap(),
            DriverChoice::Epoll
        );
        assert_eq!("auto".parse::<DriverChoice>().unwrap(), DriverChoice::Auto);
        let err = "kqueue".parse::<DriverChoice>().unwrap_err();
        assert!(err.contains("kqueue") && err.contains("io-uring"), "{err}");
    }

    #[test]
    fn epoll_is_always_available_and_reported() {
        let (rt, kind) = build(DriverChoice::Epoll).unwrap();
        assert_eq!(kind, DriverKind::Epoll);
        assert_eq!(rt.block_on(async { 7 }), 7);
    }

    #[test]
    fn auto_reports_the_driver_it_got() {
        let (rt, kind) = build(DriverChoice::Auto).unwrap();
        assert_eq!(rt.driver_type().is_iouring(), kind == DriverKind::IoUring);
    }
}
