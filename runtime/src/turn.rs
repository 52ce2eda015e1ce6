//! The end of a loop turn, as something a task can wait for.
//!
//! A turn of the worker's loop runs the ready tasks, round after round, until none is left,
//! then polls the ring. A writer that flushes at the end of the turn instead of at once
//! sends in one syscall what several tasks wrote during it: the responses of two streams
//! of one HTTP/2 connection, say, which otherwise leave in two sends, each carrying the
//! receiver's wake-up with it.
//!
//! Invariants:
//! - a deferred waker is woken at the end of the turn it was deferred in, or, when tasks
//!   kept the turn busy to its round limit, before the ring is polled; it never waits for a
//!   quiet turn;
//! - outside a worker loop (a tokio test, the control thread) nothing is deferred:
//!   [`defer`] returns `None` and the caller acts at once.

use std::cell::{Cell, RefCell};
use std::task::Waker;

thread_local! {
    static TURN: Turn = const {
        Turn {
            active: Cell::new(false),
            ended: Cell::new(0),
            deferred: RefCell::new(Vec::new()),
        }
    };
}

struct Turn {
    /// A worker loop runs on this thread.
    active: Cell<bool>,
    /// Turns ended so far (deferred wakers woken).
    ended: Cell<u64>,
    deferred: RefCell<Vec<Waker>>,
}

/// A turn a task deferred to; [`Ticket::is_due`] once it has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl Ticket {
    /// The turn has ended since the ticket was taken.
    pub fn is_due(self) -> bool {
        TURN.with(|t| t.ended.get() > self.0)
    }
}

/// Wakes `waker` when the current turn ends. `None` outside a worker loop, where there is
/// no turn to wait for.
pub fn defer(waker: &Waker) -> Option<Ticket> {
    TURN.with(|t| {
        if !t.active.get() {
            return None;
        }
        let mut deferred = t.deferred.borrow_mut();
        if !deferred.iter().any(|w| w.will_wake(waker)) {
            deferred.push(waker.clone());
        }
        Some(Ticket(t.ended.get()))
    })
}

/// Ends the turn: wakes what was deferred to it. Returns whether anything was.
pub(crate) fn end() -> bool {
    TURN.with(|t| {
        t.ended.set(t.ended.get() + 1);
        let woken = std::mem::take(&mut *t.deferred.borrow_mut());
        let any = !woken.is_empty();
        for w in woken {
            w.wake();
        }
        any
    })
}

/// Marks this thread as running a worker loop while it lives.
pub(crate) struct Active(());

impl Active {
    pub(crate) fn enter() -> Active {
        TURN.with(|t| t.active.set(true));
        Active(())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        TURN.with(|t| {
            t.active.set(false);
            // Nobody will end another turn: wake what waits, so it acts on its own.
            for w in std::mem::take(&mut *t.deferred.borrow_mut()) {
                w.wake();
            }
        });
    }
}
