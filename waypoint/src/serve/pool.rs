//! A core's HTTP/1.1 upstream connections, per endpoint: the idle ones, the requests
//! waiting for one (a Service at its `maxConnections`), and how many are open.
//!
//! Invariants: an idle list holds only connections that may take another request (within
//! `maxRequestsPerConnection` and `maxConnectionDuration` when they came back, at most
//! [`IDLE_PER_BACKEND`] per endpoint); a connection coming back goes to the longest waiting
//! request first; each connection that closes wakes one waiting request, which then opens a
//! connection of its own; the maps hold only endpoints with connections or waiters.

use std::collections::{HashMap, VecDeque};

use futures_channel::oneshot;

use super::*;

/// An HTTP/1.1 connection to an endpoint, with what its reuse depends on.
pub(super) struct Conn {
    pub(super) sender: SendRequest<Body>,
    /// Requests it has carried.
    pub(super) uses: u32,
    pub(super) opened: Instant,
    /// This side's address on its socket (the access log's upstream local address).
    pub(super) local: Option<SocketAddr>,
}

/// What a waiting request is handed: a connection, or `None` when one closed (a new one may
/// be opened now).
type Handoff = oneshot::Sender<Option<Conn>>;

#[derive(Default)]
pub(super) struct PoolState {
    idle: HashMap<Endpoint, Vec<(Conn, Instant)>>,
    waiters: HashMap<Endpoint, VecDeque<Handoff>>,
    open: HashMap<Endpoint, u32>,
}

/// The core's pool, shared by the waypoint, response bodies and connection tasks.
pub(super) type Idle = Rc<RefCell<PoolState>>;

impl PoolState {
    /// An idle connection to `endpoint` that may still be used: not closed, not idle past
    /// `idle_timeout`, not older than the policy allows. Others found on the way are dropped
    /// (which closes them).
    pub(super) fn take(&mut self, endpoint: &Endpoint, policy: &PoolPolicy) -> Option<Conn> {
        let list = self.idle.get_mut(endpoint)?;
        let now = Instant::now();
        let mut found = None;
        while let Some((c, since)) = list.pop() {
            if !c.sender.is_closed()
                && now.duration_since(since) < policy.idle_timeout
                && policy.reusable(c.uses, c.opened)
            {
                found = Some(c);
                break;
            }
        }
        if list.is_empty() {
            self.idle.remove(endpoint);
        }
        found
    }

    /// Takes back a connection whose exchange is over: to the longest waiting request for
    /// the endpoint, else to the idle list. One the policy retires is dropped instead.
    pub(super) fn give_back(&mut self, endpoint: Endpoint, conn: Conn, policy: &PoolPolicy) {
        if !policy.reusable(conn.uses, conn.opened) {
            return;
        }
        let mut conn = conn;
        if let Some(queue) = self.waiters.get_mut(&endpoint) {
            while let Some(tx) = queue.pop_front() {
                // A waiter that gave up (its timeout, its client gone) has dropped its end.
                match tx.send(Some(conn)) {
                    Ok(()) => {
                        if queue.is_empty() {
                            self.waiters.remove(&endpoint);
                        }
                        return;
                    }
                    Err(back) => conn = back.expect("sent a connection"),
                }
            }
            self.waiters.remove(&endpoint);
        }
        let list = self.idle.entry(endpoint).or_default();
        if list.len() < IDLE_PER_BACKEND {
            list.push((conn, Instant::now()));
        }
    }

    /// A place in the queue for the next connection to `endpoint` that comes free.
    pub(super) fn wait(&mut self, endpoint: &Endpoint) -> oneshot::Receiver<Option<Conn>> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .entry(endpoint.clone())
            .or_default()
            .push_back(tx);
        rx
    }

    /// Connections open to `endpoint` on this core.
    pub(super) fn open(&self, endpoint: &Endpoint) -> u32 {
        self.open.get(endpoint).copied().unwrap_or(0)
    }

    pub(super) fn opened(&mut self, endpoint: &Endpoint) {
        *self.open.entry(endpoint.clone()).or_insert(0) += 1;
    }

    /// A connection to `endpoint` ended: one waiting request may open another.
    pub(super) fn closed(&mut self, endpoint: &Endpoint) {
        if let Some(n) = self.open.get_mut(endpoint) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(endpoint);
            }
        }
        if let Some(queue) = self.waiters.get_mut(endpoint) {
            while let Some(tx) = queue.pop_front() {
                if tx.send(None).is_ok() {
                    break;
                }
            }
            if queue.is_empty() {
                self.waiters.remove(endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An open connection over an in-memory pipe; the pipe's other end is returned too,
    /// since a connection whose peer is gone is closed.
    async fn conn(uses: u32) -> (Conn, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(1024);
        let (sender, c) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(a))
            .await
            .unwrap();
        runtime::spawn(async move {
            let _ = c.await;
        })
        .detach();
        let conn = Conn {
            sender,
            uses,
            opened: Instant::now(),
            local: None,
        };
        (conn, b)
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            uid: Arc::from("w"),
            addr: SocketAddr::from(([10, 0, 0, 1], 80)),
        }
    }

    fn run<F: Future<Output = ()>>(f: F) {
        runtime::block_on(runtime::DriverChoice::default(), f).expect("an event loop");
    }

    #[test]
    fn a_returned_connection_goes_to_the_first_waiter_then_to_the_idle_list() {
        run(async {
            let mut pool = PoolState::default();
            let policy = PoolPolicy::default();
            let e = endpoint();
            let gone = pool.wait(&e);
            drop(gone);
            let mut first = pool.wait(&e);
            let mut second = pool.wait(&e);
            let (c, _g1) = conn(1).await;
            pool.give_back(e.clone(), c, &policy);
            assert_eq!(first.try_recv().unwrap().unwrap().unwrap().uses, 1);
            assert!(matches!(second.try_recv(), Ok(None)));
            // A closed connection wakes the next waiter with nothing: open one yourself.
            pool.opened(&e);
            pool.closed(&e);
            assert!(matches!(second.try_recv(), Ok(Some(None))));
            assert_eq!(pool.open(&e), 0);
            // Nobody waits: the next one is kept idle, and taken.
            let (c, _g2) = conn(2).await;
            pool.give_back(e.clone(), c, &policy);
            assert_eq!(pool.take(&e, &policy).map(|c| c.uses), Some(2));
            assert!(pool.take(&e, &policy).is_none());
            assert!(pool.idle.is_empty() && pool.waiters.is_empty());
        });
    }

    #[test]
    fn retired_connections_are_not_kept() {
        run(async {
            let mut pool = PoolState::default();
            let e = endpoint();
            let per_conn = PoolPolicy {
                max_requests_per_connection: 1,
                ..PoolPolicy::default()
            };
            let (c, _g) = conn(1).await;
            pool.give_back(e.clone(), c, &per_conn);
            assert!(pool.take(&e, &per_conn).is_none());
            // Idle too long: dropped when next looked at.
            let short = PoolPolicy {
                idle_timeout: Duration::from_millis(1),
                ..PoolPolicy::default()
            };
            let (c, _g) = conn(0).await;
            pool.give_back(e.clone(), c, &short);
            runtime::time::sleep(Duration::from_millis(5)).await;
            assert!(pool.take(&e, &short).is_none());
            assert!(pool.idle.is_empty());
        });
    }
}
