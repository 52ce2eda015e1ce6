//! Building one compio runtime for one core, with the io_uring → epoll fallback.
//!
//! Invariant: a worker never panics because io_uring is unavailable. `Auto` tries io_uring
//! with a modest ring and falls back to the polling (epoll) driver on any setup error
//! (seccomp's EPERM, an old kernel's ENOSYS, RLIMIT_MEMLOCK's ENOMEM); forcing a driver
//! turns that error into a start-up error that names the driver.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

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

/// Rounds of woken tasks a loop turn runs before it looks at the ring again.
///
/// compio's `block_on` runs one round of the tasks that are ready, then polls the ring,
/// then runs the next round. A task woken by the last task of a round waits for that poll,
/// a syscall that finds nothing when the wake was local. One request through the
/// waypoint wakes a chain of three tasks (the tunnel's HTTP/2 connection, the stream's HTTP
/// server, the upstream's connection), so each wake-up cost four `io_uring_enter`s where two
/// do (one to submit what the turn queued, one to sleep); the trace is in the design notes.
/// Eight rounds let such chains finish within one turn, and bound how long completions
/// wait behind tasks that keep waking themselves (a relay at the end of its cooperative
/// budget): at most eight rounds of at most compio's 61 tasks each.
const ROUNDS_PER_TURN: u32 = 8;

/// Runs `fut` to completion on `rt`: the worker's loop. It is `Runtime::block_on`'s, except
/// that tasks woken by tasks run before the ring is polled (see [`ROUNDS_PER_TURN`]), and
/// that the turn's end wakes what was deferred to it ([`crate::turn`]).
pub(crate) fn block_on<F: Future>(rt: Runtime, fut: F) -> F::Output {
    let turned = catch_unwind(AssertUnwindSafe(|| {
        let _turns = crate::turn::Active::enter();
        rt.enter(|| {
            let waker = rt.waker();
            let mut cx = Context::from_waker(&waker);
            let mut fut = std::pin::pin!(fut);
            loop {
                if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                    rt.run();
                    return out;
                }
                let mut ready = true;
                let mut rounds = 0;
                while ready && rounds < ROUNDS_PER_TURN {
                    ready = rt.run();
                    rounds += 1;
                    // Nothing left to run: the turn ends, and what waited for it runs.
                    if !ready && crate::turn::end() {
                        ready = true;
                    }
                }
                if ready {
                    // Tasks still want to run: what waits for the turn's end does not wait
                    // longer, and the ring is looked at without sleeping.
                    crate::turn::end();
                    rt.poll_with(Some(Duration::ZERO));
                } else {
                    rt.poll();
                }
            }
        })
    }));
    // On a panic, the runtime (and the tasks it drops) goes after the unwind has ended, as
    // in compio's `block_on`.
    drop(rt);
    match turned {
        Ok(out) => out,
        Err(payload) => resume_unwind(payload),
    }
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

    /// The drivers this machine can run: epoll always, io_uring when it starts.
    fn drivers() -> Vec<DriverChoice> {
        let mut v = vec![DriverChoice::Epoll];
        if build(DriverChoice::IoUring).is_ok() {
            v.push(DriverChoice::IoUring);
        }
        v
    }

    /// A chain of tasks, each woken by the one before it (a request crossing the tunnel's
    /// connection, the HTTP server and the upstream's connection), runs in one turn of the
    /// loop: the future the loop blocks on is polled once per turn, so it counts turns.
    #[test]
    fn a_chain_of_local_wakes_runs_within_one_turn() {
        use std::cell::Cell;
        use std::rc::Rc;

        const LINKS: usize = 6;
        for driver in drivers() {
            let (rt, _) = build(driver).unwrap();
            let turns = Rc::new(Cell::new(0u32));
            let counted = turns.clone();
            let done = block_on(rt, async move {
                let (first_tx, mut rx) = async_channel::bounded::<usize>(1);
                for _ in 0..LINKS {
                    let (tx, next_rx) = async_channel::bounded::<usize>(1);
                    let prev = std::mem::replace(&mut rx, next_rx);
                    crate::spawn(async move {
                        let n = prev.recv().await.unwrap();
                        tx.try_send(n + 1).unwrap();
                    })
                    .detach();
                }
                let end = rx.recv();
                let mut end = std::pin::pin!(end);
                let mut first = Some(first_tx);
                std::future::poll_fn(move |cx| {
                    counted.set(counted.get() + 1);
                    if let Some(tx) = first.take() {
                        tx.try_send(0).unwrap();
                    }
                    end.as_mut().poll(cx).map(Result::unwrap)
                })
                .await
            });
            assert_eq!(done, LINKS);
            // One poll that starts the chain, one after the turn that ran it (compio's own
            // loop takes a turn per link: seven polls here).
            assert!(turns.get() <= 3, "{driver:?}: {} turns", turns.get());
        }
    }

    /// A task that wakes itself on every poll does not keep the loop from the ring: a timer
    /// still fires while it spins.
    #[test]
    fn a_task_that_keeps_waking_itself_does_not_starve_timers() {
        use std::cell::Cell;
        use std::rc::Rc;

        const SPIN_LIMIT: u64 = 50_000_000;
        for driver in drivers() {
            let (rt, _) = build(driver).unwrap();
            let spins = Rc::new(Cell::new(0u64));
            let stop = Rc::new(Cell::new(false));
            let (s, st) = (spins.clone(), stop.clone());
            let at_timer = block_on(rt, async move {
                crate::spawn(std::future::poll_fn(move |cx| {
                    if st.get() || s.get() >= SPIN_LIMIT {
                        return Poll::Ready(());
                    }
                    s.set(s.get() + 1);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }))
                .detach();
                crate::time::sleep(Duration::from_millis(20)).await;
                stop.set(true);
                spins.get()
            });
            assert!(at_timer > 0, "{driver:?}: the spinning task never ran");
            assert!(
                at_timer < SPIN_LIMIT,
                "{driver:?}: the timer waited for the spinner"
            );
        }
    }

    /// A task deferred to the turn's end runs after the tasks woken during the turn, and in
    /// the same turn; outside a worker loop nothing is deferred.
    #[test]
    fn the_turn_ends_after_its_tasks() {
        use std::cell::RefCell;
        use std::rc::Rc;

        let waker = std::task::Waker::noop();
        assert_eq!(crate::turn::defer(waker), None, "no loop on this thread");
        for driver in drivers() {
            let (rt, _) = build(driver).unwrap();
            let log = Rc::new(RefCell::new(Vec::new()));
            let l = log.clone();
            block_on(rt, async move {
                let (l1, l2) = (l.clone(), l.clone());
                let mut ticket = None;
                let deferred = crate::spawn(std::future::poll_fn(move |cx| match ticket {
                    None => {
                        ticket = crate::turn::defer(cx.waker());
                        assert!(ticket.is_some());
                        l1.borrow_mut().push("deferred");
                        Poll::Pending
                    }
                    Some(t) if !t.is_due() => Poll::Pending,
                    Some(_) => {
                        l1.borrow_mut().push("turn ended");
                        Poll::Ready(())
                    }
                }));
                let (tx, rx) = async_channel::bounded::<()>(1);
                let other = crate::spawn(async move {
                    rx.recv().await.unwrap();
                    l2.borrow_mut().push("woken in the turn");
                });
                tx.try_send(()).unwrap();
                deferred.await.unwrap();
                other.await.unwrap();
            });
            assert_eq!(
                *log.borrow(),
                ["deferred", "woken in the turn", "turn ended"],
                "{driver:?}"
            );
            // The loop has ended: nothing can be deferred any more.
            assert_eq!(crate::turn::defer(waker), None);
        }
    }

    /// A task that keeps the turn busy to its round limit does not hold a deferred task
    /// back: it is woken before the ring is polled.
    #[test]
    fn a_busy_turn_still_ends() {
        use std::cell::Cell;
        use std::rc::Rc;

        for driver in drivers() {
            let (rt, _) = build(driver).unwrap();
            let stop = Rc::new(Cell::new(false));
            let st = stop.clone();
            let spins = block_on(rt, async move {
                let spins = Rc::new(Cell::new(0u64));
                let s = spins.clone();
                crate::spawn(std::future::poll_fn(move |cx| {
                    if st.get() || s.get() > 10_000_000 {
                        return Poll::Ready(());
                    }
                    s.set(s.get() + 1);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }))
                .detach();
                let mut ticket = None;
                std::future::poll_fn(|cx| match ticket {
                    None => {
                        ticket = crate::turn::defer(cx.waker());
                        Poll::Pending
                    }
                    Some(t) if t.is_due() => Poll::Ready(()),
                    Some(_) => Poll::Pending,
                })
                .await;
                stop.set(true);
                spins.get()
            });
            assert!(
                spins < 100,
                "{driver:?}: the deferred task waited {spins} spins"
            );
        }
    }
}
