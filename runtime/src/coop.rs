//! Cooperative scheduling: a budget of I/O operations per task wake-up, so that one busy
//! connection yields its core to the others (tokio's coop budget, for this runtime).
//!
//! Owns: the per-thread budget of the task being polled.
//!
//! Why: a socket that always has data (a peer flooding PINGs or SETTINGS, a bulk stream on
//! a fast link) lets a poll-style stack (rustls, h2, the relays) loop inside one `poll`
//! for as long as the kernel has bytes. The event loop runs other tasks, and reaps the
//! completions of other sockets, only between polls, so one flooding peer delayed the
//! handshakes of every other connection on its core by seconds (issue 12: p50 1.4–2.4 s,
//! max 4.9 s, against 3 ms normally).
//!
//! Invariants:
//! - a task spawned with [`crate::spawn`] or [`crate::Worker::spawn_conn`] gets
//!   [`BUDGET_PER_POLL`] units at the start of each poll; every I/O operation of this
//!   crate's sockets that makes progress (a read or write that moved bytes, an accepted
//!   connection, a splice) spends one;
//! - once the budget is spent, the next operation returns `Pending` after waking its own
//!   task: the task is polled again after the executor has run the other ready tasks and
//!   polled the driver once, and nothing is lost (no byte was taken from the kernel);
//! - outside a budgeted task (a test's `block_on`, a tool's loop) there is no budget and
//!   nothing ever yields here;
//! - nested budgeted futures keep the outer budget: the innermost scope does not refill
//!   it, so wrapping twice cannot double a task's share.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::task::{Context, Poll};

/// I/O operations a task may complete per poll before it yields. tokio's value (128), which
/// it measured as enough to amortise a wake-up over a burst while bounding the time one
/// task holds a core: an operation here moves at most one socket read (rustls asks for
/// 4 KiB, the relays for up to 128 KiB) or write, so a poll of a flooding HTTP/2 peer ends
/// after about half a MiB of records.
pub const BUDGET_PER_POLL: u16 = 128;

thread_local! {
    /// `None`: not inside a budgeted task (unlimited).
    static BUDGET: Cell<Option<u16>> = const { Cell::new(None) };
}

/// Restores the budget a poll found when it ends (also on unwind).
struct Scope {
    prev: Option<u16>,
}

impl Scope {
    fn enter() -> Scope {
        let prev = BUDGET.with(|b| b.get());
        if prev.is_none() {
            BUDGET.with(|b| b.set(Some(BUDGET_PER_POLL)));
        }
        Scope { prev }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if self.prev.is_none() {
            BUDGET.with(|b| b.set(None));
        }
    }
}

/// Runs `fut` with a fresh budget at each of its polls.
///
/// `fut` is boxed rather than held inline: an `async fn` that takes a future and awaits it
/// stores both the argument and the awaited copy (rustc does not overlap them), so each
/// such wrapper doubled the task. Measured (`-Zprint-type-sizes`): a node's per-stream
/// HBONE task was 17 KiB around a 4.3 KiB handler, a SOCKS5 connection's 14 KiB around
/// 3.6 KiB, and that memory is held for as long as the connection is open, idle or not.
/// One small extra allocation per task buys that back.
pub fn budgeted<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let mut fut = Box::pin(fut);
    poll_fn(move |cx| {
        let _scope = Scope::enter();
        fut.as_mut().poll(cx)
    })
}

/// `Ready` if the current task may do one more operation; otherwise wakes the task and
/// returns `Pending` (the caller returns `Pending` too, having consumed nothing).
pub fn poll_proceed(cx: &mut Context<'_>) -> Poll<()> {
    BUDGET.with(|b| match b.get() {
        Some(0) => {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        _ => Poll::Ready(()),
    })
}

/// Spends one unit: call after an operation made progress.
pub fn spend() {
    BUDGET.with(|b| {
        if let Some(n) = b.get() {
            b.set(Some(n.saturating_sub(1)));
        }
    })
}

/// Yields if the budget is spent (for loops that make progress without a socket of this
/// crate in between, such as the splice relay).
pub async fn proceed() {
    poll_fn(poll_proceed).await
}

/// What remains of the current task's budget (`None`: unbudgeted). For tests.
pub fn remaining() -> Option<u16> {
    BUDGET.with(|b| b.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_spent_budget_yields_and_wakes_the_task_and_the_next_poll_refills_it() {
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        // Outside a budgeted task nothing yields.
        assert_eq!(remaining(), None);
        assert!(poll_proceed(&mut cx).is_ready());

        let polls = Cell::new(0);
        let done = Cell::new(0u32);
        let fut = budgeted(poll_fn(|cx| {
            polls.set(polls.get() + 1);
            loop {
                if poll_proceed(cx).is_pending() {
                    return Poll::Pending;
                }
                spend();
                done.set(done.get() + 1);
                if done.get() == 300 {
                    return Poll::Ready(());
                }
            }
        }));
        {
            let mut fut = std::pin::pin!(fut);
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert!(
                flag.0.load(std::sync::atomic::Ordering::SeqCst),
                "the task woke itself"
            );
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert!(fut.as_mut().poll(&mut cx).is_ready());
        }
        // 300 operations at 128 per poll: three polls.
        assert_eq!(polls.get(), 3);
        assert_eq!(done.get(), 300);
        assert_eq!(remaining(), None, "the scope restored 'unbudgeted'");
    }

    #[test]
    fn nested_scopes_share_the_outer_budget() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let outer = budgeted(async {
            for _ in 0..100 {
                spend();
            }
            let inner = budgeted(async { remaining() }).await;
            (inner, remaining())
        });
        let mut outer = std::pin::pin!(outer);
        let Poll::Ready((inner, after)) = outer.as_mut().poll(&mut cx) else {
            panic!("no I/O, so no yield")
        };
        assert_eq!(inner, Some(BUDGET_PER_POLL - 100));
        assert_eq!(after, Some(BUDGET_PER_POLL - 100));
    }
}
