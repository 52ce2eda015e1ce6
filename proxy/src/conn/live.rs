//! The connections alive on one core, so that something outside a connection's task can end
//! it: the drain deadline (every connection) and a policy change (the inbound connections it
//! now denies).
//!
//! Owns: [`Live`] (the registry) and [`Abort`] (one connection's abort cell).
//!
//! Invariants:
//! - a connection record registers at accept and unregisters when it finishes or drops; the
//!   registry never holds a finished connection;
//! - an abort is a reason set once and a wake-up of the connection's task: the task ends its
//!   relay itself (resetting both sides) and finishes its record with the reason, so a
//!   connection cut from outside still gets its access line and counts.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::identity::Identity;

/// Why a connection was ended from outside its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    /// The node's drain deadline passed.
    Drain,
    /// A new policy denies what the connection was authorized for.
    Revoked(String),
}

/// One connection's abort cell: set once, wakes the connection's task.
#[derive(Debug, Default)]
pub struct Abort {
    reason: RefCell<Option<AbortReason>>,
    waker: RefCell<Option<Waker>>,
}

impl Abort {
    /// Sets the reason (the first one wins) and wakes the connection.
    pub fn abort(&self, reason: AbortReason) {
        {
            let mut r = self.reason.borrow_mut();
            if r.is_some() {
                return;
            }
            *r = Some(reason);
        }
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn reason(&self) -> Option<AbortReason> {
        self.reason.borrow().clone()
    }

    /// Completes once the connection is aborted. Polled on every wake-up of a relay: the
    /// waker is cloned only when the task's waker changed.
    pub async fn aborted(&self) {
        poll_fn(|cx| self.poll_aborted(cx)).await
    }

    /// [`aborted`](Self::aborted) as a poll: ready once aborted, else remembers the task.
    pub fn poll_aborted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.reason.borrow().is_some() {
            return Poll::Ready(());
        }
        let mut waker = self.waker.borrow_mut();
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// What an inbound connection was authorized for, re-decided when policies change.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The peer's verified identity (`None`: plaintext).
    pub peer: Option<Identity>,
    /// The source address the policy saw.
    pub src: SocketAddr,
    /// The local workload address it goes to.
    pub dst: SocketAddr,
}

struct Entry {
    abort: Rc<Abort>,
    /// Boxed: most records (every outbound one) never get a grant, and the registry's slots
    /// are as large as their largest entry.
    grant: Option<Box<Grant>>,
}

/// One core's live connections.
///
/// A slab, not a map keyed by a counter: a slot is 24 B instead of a hash table's ~200 B per
/// live connection at its load factor (measured on a node holding 1,000 connections: one
/// 224 KiB table). A key is reused once its record is gone; each record unregisters
/// exactly once (see [`ConnRecord`](super::ConnRecord)).
#[derive(Default)]
pub struct Live {
    entries: RefCell<slab::Slab<Entry>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("connections", &self.entries.borrow().len())
            .finish()
    }
}

impl Live {
    /// Registers a connection; returns its id and abort cell.
    pub fn register(&self) -> (usize, Rc<Abort>) {
        let abort = Rc::new(Abort::default());
        let id = self.entries.borrow_mut().insert(Entry {
            abort: abort.clone(),
            grant: None,
        });
        (id, abort)
    }

    pub fn unregister(&self, id: usize) {
        self.entries.borrow_mut().try_remove(id);
    }

    /// Records what connection `id` was authorized for.
    pub fn grant(&self, id: usize, grant: Grant) {
        if let Some(e) = self.entries.borrow_mut().get_mut(id) {
            e.grant = Some(Box::new(grant));
        }
    }

    /// Aborts every connection; returns how many.
    pub fn abort_all(&self, reason: AbortReason) -> usize {
        // Collect first: a wake runs nothing now (single thread), but keep borrows short.
        let aborts: Vec<Rc<Abort>> = self
            .entries
            .borrow()
            .iter()
            .map(|(_, e)| e.abort.clone())
            .collect();
        for a in &aborts {
            a.abort(reason.clone());
        }
        aborts.len()
    }

    /// Aborts the authorized connections `deny` now refuses (it returns why); returns how
    /// many.
    pub fn revoke(&self, mut deny: impl FnMut(&Grant) -> Option<String>) -> usize {
        let mut n = 0;
        for (_, e) in self.entries.borrow().iter() {
            let Some(grant) = &e.grant else { continue };
            if e.abort.reason().is_some() {
                continue;
            }
            if let Some(why) = deny(grant) {
                e.abort.abort(AbortReason::Revoked(why));
                n += 1;
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborts_reach_registered_connections_once_and_revocation_only_the_granted() {
        let live = Live::default();
        let (a, abort_a) = live.register();
        let (b, abort_b) = live.register();
        let peer: Identity = "spiffe://td/ns/n/sa/s".parse().unwrap();
        live.grant(
            a,
            Grant {
                peer: Some(peer.clone()),
                src: "10.0.0.1:1".parse().unwrap(),
                dst: "10.0.0.2:80".parse().unwrap(),
            },
        );
        let n = live.revoke(|g| (g.peer.as_ref() == Some(&peer)).then(|| "nope".into()));
        assert_eq!(n, 1);
        assert_eq!(abort_a.reason(), Some(AbortReason::Revoked("nope".into())));
        assert_eq!(abort_b.reason(), None);
        // Already revoked: not counted again; the drain reaches the other one.
        assert_eq!(live.revoke(|_| Some("again".into())), 0);
        assert_eq!(live.abort_all(AbortReason::Drain), 2);
        assert_eq!(abort_a.reason(), Some(AbortReason::Revoked("nope".into())));
        assert_eq!(abort_b.reason(), Some(AbortReason::Drain));
        live.unregister(a);
        live.unregister(b);
        assert!(live.is_empty());
    }
}
