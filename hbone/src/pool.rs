//! Per-core pool of HBONE client connections.
//!
//! Owns: the connections one core keeps open to peer nodes, grouped by [`PoolKey`]
//! (source identity, expected destination identities, destination address), and the dials in
//! flight for each key.
//!
//! Invariants:
//! - single-threaded: the pool lives in one core's `Worker` (`Rc`, `RefCell`, no locks); a
//!   `RefCell` borrow is never held across an `.await`;
//! - a connection carries at most `min(max_streams_per_conn, peer's
//!   SETTINGS_MAX_CONCURRENT_STREAMS)` streams (RFC 9113 §5.1.2); a request that finds every
//!   connection of its key full opens another connection;
//! - streams spread before they share: while a key has fewer than `spread` connections
//!   (dials in flight included) and none of them is idle, a request opens a connection of
//!   its own; past that, a request takes the connection with the fewest streams. So up to
//!   `spread` concurrent streams each get their own TCP connection and record stream, and
//!   only more than that are multiplexed;
//! - past `spread`, requests for a key with no free connection share dials: up to that limit
//!   of requests wait on one dial before a second dial starts, so a burst of N requests opens
//!   about `spread` + N / limit connections, not N;
//! - a dial runs in its own task: a request never waits on another key's dial, and a caller
//!   that gives up does not cancel a dial others wait on;
//! - broken connections (GOAWAY received, PING timeout, I/O or protocol error) are never
//!   handed out and are dropped from the pool when seen; idle ones (no stream for
//!   `idle_timeout`) are dropped by a sweep. Dropping the pool's handle lets h2 close the
//!   connection once its last stream ends; streams in flight are never cut by eviction.
//! - the pool does not know about workloads or certificates: TLS client configs come from the
//!   caller's [`TlsSource`], keyed by [`PoolKey`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::client::{self, ClientConn, StreamSlot};
use crate::error::{Error, Result};
use crate::h2conn::H2Settings;
use crate::identity::Identity;
use crate::stream::HboneStream;
use crate::wire::ConnectRequest;

/// Streams per connection, at most. 100 is RFC 9113's recommended minimum for
/// SETTINGS_MAX_CONCURRENT_STREAMS (§6.5.2), Go's default and ztunnel's pool default
/// (`DEFAULT_POOL_MAX_STREAMS_PER_CONNECTION`): any conforming server accepts it, and more
/// streams per connection would make one TCP connection's head-of-line blocking everyone's.
pub const DEFAULT_MAX_STREAMS_PER_CONN: usize = 100;

/// Connections per key (per core) that concurrent streams spread over before they are
/// multiplexed; 1 (always multiplex, as ztunnel) by default. Spreading is a trade, measured
/// with `ringmesh-bench` (interleaved, `--ringmesh-arg=--hbone-spread=8` against the
/// default): eight bulk streams over the veth moved 14 % more bytes at 6 % less CPU per GB
/// on eight connections (13.9 against 12.2 Gbit/s, 0.652 against 0.697 CPU-s/GB: one
/// connection funnels every stream through one HTTP/2 task, one record stream, one TCP
/// flow), but closed-loop small requests lost 13 % of their rate (75.8k against 87.2k req/s
/// at http-max: one connection batches many streams' frames per syscall) and churn cost 11 %
/// more CPU per connection. Nodes set it with `--hbone-spread`.
pub const DEFAULT_SPREAD: usize = 1;

/// A connection with no stream for this long is closed. 5 min as ztunnel
/// (`DEFAULT_POOL_UNUSED_RELEASE_TIMEOUT`): long enough to carry bursty traffic between two
/// nodes without re-handshaking, short enough that departed peers do not pile up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// TCP connect + TLS + HTTP/2 handshake deadline. A peer that has not finished all three in
/// 10 s is black-holed or overloaded; failing lets the caller's request fail fast instead of
/// hanging on the kernel's SYN retries (~2 min).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a pooled connection is for. Two requests share connections only if all fields are
/// equal: the client certificate, the identities the server must prove, the address, and
/// where the socket is made (in in-pod mode, the source pod's namespace: a connection from
/// one pod's address must never carry another pod's streams, as in ztunnel, whose pool
/// keys on the source address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity whose certificate the client presents.
    pub src: Identity,
    /// The server must present one of these (sorted, deduplicated).
    pub dst_ids: Vec<Identity>,
    /// The HBONE server address (peer node, port 15008).
    pub dst: SocketAddr,
    /// Where the TCP socket is made (default: the node's own namespace, no mark).
    pub place: runtime::net::Placement,
}

impl PoolKey {
    /// Builds a key for a socket made in the node's own namespace; `dst_ids` order does not
    /// matter.
    pub fn new(src: Identity, mut dst_ids: Vec<Identity>, dst: SocketAddr) -> PoolKey {
        dst_ids.sort();
        dst_ids.dedup();
        PoolKey {
            src,
            dst_ids,
            dst,
            place: runtime::net::Placement::default(),
        }
    }

    /// The same key with its socket made where `place` says.
    pub fn placed(mut self, place: runtime::net::Placement) -> PoolKey {
        self.place = place;
        self
    }
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} [", self.src, self.dst)?;
        if let Some(ns) = &self.place.netns {
            write!(f, "from {ns}, ")?;
        }
        for (i, id) in self.dst_ids.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{id}")?;
        }
        f.write_str("]")
    }
}

/// Where the pool gets the rustls client config for a new connection: one presenting `key.src`'s
/// certificate and accepting only `key.dst_ids` (see [`crate::tls`]). The proxy implements it
/// over its per-core certificate cache. Called once per dial, never on the request path of a
/// reused connection.
pub trait TlsSource {
    /// The client config for dialing `key`.
    fn client_config(&self, key: &PoolKey) -> Result<Arc<rustls::ClientConfig>>;
}

impl<F> TlsSource for F
where
    F: Fn(&PoolKey) -> Result<Arc<rustls::ClientConfig>>,
{
    fn client_config(&self, key: &PoolKey) -> Result<Arc<rustls::ClientConfig>> {
        self(key)
    }
}

/// Pool parameters.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Upper bound on streams per connection (the peer's SETTINGS may lower it).
    pub max_streams_per_conn: usize,
    /// Connections per key that concurrent streams spread over before any is shared
    /// ([`DEFAULT_SPREAD`]: 1, always multiplex).
    pub spread: usize,
    /// Close connections that have carried no stream for this long.
    pub idle_timeout: Duration,
    /// Deadline for TCP connect + TLS + HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// HTTP/2 settings for the connections.
    pub h2: H2Settings,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_streams_per_conn: DEFAULT_MAX_STREAMS_PER_CONN,
            spread: DEFAULT_SPREAD,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            h2: H2Settings::default(),
        }
    }
}

/// Pool counters (monotonic, except `open`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections dialed successfully.
    pub dials: u64,
    /// Dials that failed (each counted once, however many requests waited on it).
    pub dial_failures: u64,
    /// Requests placed on a connection that was already open (no dial waited for).
    pub reuses: u64,
    /// Requests that waited for a dial.
    pub waited_for_dial: u64,
    /// Requests retried on another connection after the peer refused them unprocessed.
    pub retries: u64,
    /// Connections dropped because they broke (GOAWAY, PING timeout, I/O error).
    pub evicted_broken: u64,
    /// Connections dropped after `idle_timeout` without streams.
    pub evicted_idle: u64,
    /// Connections taken out of service by [`Pool::retire`] (their certificate was replaced).
    pub retired: u64,
    /// Connections currently held by the pool.
    pub open: usize,
}

/// The per-core HBONE connection pool. Clone to share within the core.
#[derive(Clone)]
pub struct Pool {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish()
    }
}

struct Inner {
    cfg: PoolConfig,
    tls: Box<dyn TlsSource>,
    keys: RefCell<HashMap<PoolKey, KeyEntry>>,
    stats: Cell<PoolStats>,
}

#[derive(Default)]
struct KeyEntry {
    conns: Vec<ClientConn>,
    dials: Vec<Rc<Dial>>,
}

/// A dial in flight, shared by the requests waiting for it.
#[derive(Default)]
struct Dial {
    /// Requests waiting on this dial (each will want one stream on the new connection).
    waiters: Cell<usize>,
    /// Set once: `Ok` when the connection joined the pool.
    outcome: RefCell<Option<std::result::Result<(), Arc<Error>>>>,
    wakers: RefCell<Vec<Waker>>,
}

impl Dial {
    fn finish(&self, outcome: std::result::Result<(), Arc<Error>>) {
        *self.outcome.borrow_mut() = Some(outcome);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// A request's place in a dial's wait list; leaving it (also by cancellation) frees the place.
struct DialWait(Rc<Dial>);

impl DialWait {
    fn join(dial: &Rc<Dial>) -> DialWait {
        dial.waiters.set(dial.waiters.get() + 1);
        DialWait(dial.clone())
    }

    async fn outcome(&self) -> std::result::Result<(), Arc<Error>> {
        std::future::poll_fn(|cx| match &*self.0.outcome.borrow() {
            Some(o) => Poll::Ready(o.clone()),
            None => {
                self.0.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for DialWait {
    fn drop(&mut self) {
        self.0.waiters.set(self.0.waiters.get() - 1);
    }
}

impl Pool {
    /// A pool whose connections use `cfg` and get TLS configs from `tls`. Starts the idle sweep
    /// task, so call it on the core that will use the pool (inside its runtime). The sweep
    /// ends when the last clone of the pool is dropped.
    pub fn new(cfg: PoolConfig, tls: impl TlsSource + 'static) -> Pool {
        let sweep_every =
            (cfg.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(30));
        let pool = Pool {
            inner: Rc::new(Inner {
                cfg,
                tls: Box::new(tls),
                keys: RefCell::new(HashMap::new()),
                stats: Cell::new(PoolStats::default()),
            }),
        };
        let weak = Rc::downgrade(&pool.inner);
        runtime::spawn(async move {
            loop {
                runtime::time::sleep(sweep_every).await;
                let Some(inner) = weak.upgrade() else { return };
                Pool { inner }.evict_idle();
            }
        })
        .detach();
        pool
    }

    /// Opens a tunnel for `req` over a pooled connection for `key`, dialing if needed.
    ///
    /// A request the peer refused unprocessed — cut by its GOAWAY (RFC 9113 §6.8: streams above
    /// the GOAWAY's last stream id were not processed) or reset with REFUSED_STREAM (§8.7) — is
    /// retried once on another connection: a peer that is draining does not fail requests.
    /// Nothing has been sent on the tunnel by then, so the retry cannot duplicate payload.
    pub async fn connect(&self, key: &PoolKey, req: &ConnectRequest) -> Result<HboneStream> {
        let mut retried = false;
        loop {
            let (conn, slot) = self.checkout(key).await?;
            match conn.send_connect_in(req, slot).await {
                Err(Error::H2(e)) if !retried && refused_unprocessed(&e) => {
                    debug!(%key, error = %e, "pool: request refused unprocessed; retrying");
                    self.bump(|s| s.retries += 1);
                    retried = true;
                }
                r => return r,
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        let mut s = self.inner.stats.get();
        s.open = self
            .inner
            .keys
            .borrow()
            .values()
            .map(|e| e.conns.len())
            .sum();
        s
    }

    /// Drops connections that are broken or have been idle for `idle_timeout`; returns how
    /// many were dropped. Runs periodically on its own; public for callers that want it now.
    pub fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let idle_timeout = self.inner.cfg.idle_timeout;
        let (mut broken, mut idle) = (0, 0);
        self.inner.keys.borrow_mut().retain(|key, entry| {
            entry.conns.retain(|c| {
                if !c.is_usable() {
                    debug!(%key, "pool: dropping broken connection");
                    broken += 1;
                    false
                } else if c
                    .idle_since()
                    .is_some_and(|t| now.duration_since(t) >= idle_timeout)
                {
                    debug!(%key, "pool: dropping idle connection");
                    idle += 1;
                    false
                } else {
                    true
                }
            });
            !entry.conns.is_empty() || !entry.dials.is_empty()
        });
        self.bump(|s| {
            s.evicted_broken += broken;
            s.evicted_idle += idle;
        });
        (broken + idle) as usize
    }

    /// Takes the connections of every key `which` selects out of service: no new stream is
    /// placed on them, streams already open carry on, and each connection closes when its
    /// last stream ends (the pool held the only other handle). The next request for such a
    /// key dials a new connection with the TLS config its [`TlsSource`] gives then.
    ///
    /// For certificate rotation: a TLS connection keeps the certificate it was established
    /// with, so without this a busy pooled connection would present a replaced, and in the
    /// end an expired, certificate for as long as it lives. A dial already in flight keeps
    /// the config it started with (still valid: leaves are renewed at half-life). Returns
    /// how many connections were retired.
    pub fn retire(&self, mut which: impl FnMut(&PoolKey) -> bool) -> usize {
        let mut n = 0;
        self.inner.keys.borrow_mut().retain(|key, entry| {
            if which(key) {
                n += entry.conns.len();
                if !entry.conns.is_empty() {
                    debug!(%key, conns = entry.conns.len(), "pool: retiring connections");
                }
                entry.conns.clear();
            }
            !entry.conns.is_empty() || !entry.dials.is_empty()
        });
        self.bump(|s| s.retired += n as u64);
        n
    }

    fn bump(&self, f: impl FnOnce(&mut PoolStats)) {
        let mut s = self.inner.stats.get();
        f(&mut s);
        self.inner.stats.set(s);
    }

    /// A connection for `key` with a reserved stream slot.
    async fn checkout(&self, key: &PoolKey) -> Result<(ClientConn, StreamSlot)> {
        let mut waited = false;
        loop {
            let wait = {
                let mut keys = self.inner.keys.borrow_mut();
                let entry = match keys.get_mut(key) {
                    Some(e) => e,
                    None => keys.entry(key.clone()).or_default(),
                };
                let mut broken = 0;
                entry.conns.retain(|c| {
                    let ok = c.is_usable();
                    broken += u64::from(!ok);
                    ok
                });
                let max = self.inner.cfg.max_streams_per_conn;
                let spread = self.inner.cfg.spread.max(1);
                // An idle connection first; then, while the key has fewer than `spread`
                // connections, a new one; then the least loaded with room.
                let idle = entry.conns.iter().find(|c| c.active_streams() == 0);
                let grow = idle.is_none() && entry.conns.len() + entry.dials.len() < spread;
                let found = match idle {
                    Some(c) => c
                        .try_reserve(max.min(c.peer_max_streams()))
                        .map(|s| (c.clone(), s)),
                    None if grow => None,
                    None => entry
                        .conns
                        .iter()
                        .filter(|c| c.active_streams() < max.min(c.peer_max_streams()))
                        .min_by_key(|c| c.active_streams())
                        .and_then(|c| {
                            c.try_reserve(max.min(c.peer_max_streams()))
                                .map(|slot| (c.clone(), slot))
                        }),
                };
                if let Some(found) = found {
                    self.bump(|s| {
                        s.evicted_broken += broken;
                        if waited {
                            s.waited_for_dial += 1;
                        } else {
                            s.reuses += 1;
                        }
                    });
                    return Ok(found);
                }
                self.bump(|s| s.evicted_broken += broken);
                // Spreading: a dial of our own. Else join a dial that will still have room
                // for us, or start one.
                let joinable = if grow {
                    None
                } else {
                    entry.dials.iter().find(|d| d.waiters.get() < max)
                };
                match joinable {
                    Some(d) => DialWait::join(d),
                    None => {
                        let d = Rc::new(Dial::default());
                        entry.dials.push(d.clone());
                        let wait = DialWait::join(&d);
                        self.spawn_dial(key.clone(), d);
                        wait
                    }
                }
            };
            waited = true;
            if let Err(e) = wait.outcome().await {
                return Err(Error::Dial {
                    addr: key.dst,
                    source: e,
                });
            }
            // The connection is in the pool now; take a slot on it (or on any other).
        }
    }

    fn spawn_dial(&self, key: PoolKey, dial: Rc<Dial>) {
        let weak: Weak<Inner> = Rc::downgrade(&self.inner);
        let cfg = self.inner.cfg.clone();
        let tls = self.inner.tls.client_config(&key);
        runtime::spawn(async move {
            debug!(%key, "pool: dialing");
            let res = match tls {
                Ok(tls) => {
                    match runtime::time::timeout(
                        cfg.connect_timeout,
                        client::connect_placed(&key.place, key.dst, tls, &cfg.h2),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(Error::Timeout {
                            what: "HBONE connect (TCP, TLS, HTTP/2 handshake)",
                            after: cfg.connect_timeout,
                        }),
                    }
                }
                Err(e) => Err(e),
            };
            let outcome = match weak.upgrade() {
                Some(inner) => {
                    let mut keys = inner.keys.borrow_mut();
                    let entry = keys.entry(key.clone()).or_default();
                    entry.dials.retain(|d| !Rc::ptr_eq(d, &dial));
                    let mut s = inner.stats.get();
                    let outcome = match res {
                        // A peer allowing no streams at all (SETTINGS_MAX_CONCURRENT_STREAMS
                        // = 0) would have every waiter dial again forever.
                        Ok(conn) if conn.peer_max_streams() == 0 => {
                            s.dial_failures += 1;
                            Err(Arc::new(Error::Unavailable(format!(
                                "HBONE peer {} allows no streams (SETTINGS_MAX_CONCURRENT_STREAMS = 0)",
                                key.dst
                            ))))
                        }
                        Ok(conn) => {
                            s.dials += 1;
                            entry.conns.push(conn);
                            Ok(())
                        }
                        Err(e) => {
                            debug!(%key, error = %e, "pool: dial failed");
                            s.dial_failures += 1;
                            Err(Arc::new(e))
                        }
                    };
                    inner.stats.set(s);
                    outcome
                }
                // The pool is gone; so are its waiters, if any remain they just fail.
                None => Err(Arc::new(res.err().unwrap_or(Error::Unavailable(
                    "HBONE pool dropped during dial".into(),
                )))),
            };
            dial.finish(outcome);
        })
        .detach();
    }
}

/// Whether the peer refused a request without processing it (safe to send again elsewhere).
fn refused_unprocessed(e: &h2::Error) -> bool {
    (e.is_go_away() && e.is_remote()) || e.reason() == Some(h2::Reason::REFUSED_STREAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "ns", sa).unwrap()
    }

    #[test]
    fn key_ignores_order_and_duplicates_of_expected_identities() {
        let dst: SocketAddr = "10.0.0.2:15008".parse().unwrap();
        let a = PoolKey::new(id("src"), vec![id("b"), id("a"), id("b")], dst);
        let b = PoolKey::new(id("src"), vec![id("a"), id("b")], dst);
        assert_eq!(a, b);
        assert_eq!(a.dst_ids.len(), 2);
        // Any field that differs makes another key.
        assert_ne!(a, PoolKey::new(id("other"), vec![id("a"), id("b")], dst));
        assert_ne!(a, PoolKey::new(id("src"), vec![id("a")], dst));
        assert_ne!(
            a,
            PoolKey::new(
                id("src"),
                vec![id("a"), id("b")],
                "10.0.0.3:15008".parse().unwrap()
            )
        );
        assert_eq!(
            a.to_string(),
            "spiffe://cluster.local/ns/ns/sa/src -> 10.0.0.2:15008 \
             [spiffe://cluster.local/ns/ns/sa/a, spiffe://cluster.local/ns/ns/sa/b]"
        );
    }

    #[test]
    fn refused_unprocessed_only_for_goaway_and_refused_stream() {
        assert!(refused_unprocessed(&h2::Error::from(
            h2::Reason::REFUSED_STREAM
        )));
        assert!(!refused_unprocessed(&h2::Error::from(
            h2::Reason::INTERNAL_ERROR
        )));
        assert!(!refused_unprocessed(&h2::Error::from(h2::Reason::CANCEL)));
    }
}
