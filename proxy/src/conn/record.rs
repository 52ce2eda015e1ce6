//! A connection's whole life, from accept to its one access line.
//!
//! Owns: [`ConnRecord`] — direction, addresses, workloads and identities, start time, the
//! byte meter — and [`Conns`], what one core keeps for all its records (metric counters,
//! series, the live registry, log limits).
//!
//! Every path (outbound capture, SOCKS5, inbound HBONE, inbound plaintext, passthrough) makes
//! a record when it accepts, fills it in as it learns who and where, and ends it one of two
//! ways:
//! - [`ConnRecord::refuse`] before it was opened (malformed, a loop, unknown source, no
//!   endpoint): a rate-limited `connection failed` line and a `ringmesh_connections_refused`
//!   count, no Istio metric (as ztunnel);
//! - [`ConnRecord::finish`] once opened ([`ConnRecord::open`]: source and destination known):
//!   `closed` (and `failed` unless the flags are `-`) with the outcome's `response_flags`,
//!   and the `connection complete` line.
//!
//! Invariants:
//! - opened and closed always pair: `ringmesh_connections_active` is exact;
//! - a record dropped without either (a task cancelled outside its control) finishes itself
//!   as drained, so nothing leaves without its line and its counts;
//! - bytes reach `/metrics` as they move: from [`ConnRecord::open`] the meter feeds the
//!   series' counters; `received`/`sent` (metrics) and `bytes_sent`/`bytes_recv` (log) are
//!   derived from the meter's two flows here and nowhere else.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use runtime::meter::{Meter, Transferred};

use super::live::{Abort, AbortReason, Grant, Live};
use super::outcome::Outcome;
use crate::config::{Service, Workload};
use crate::identity::Identity;
use crate::telemetry::access::{self, Complete};
use crate::telemetry::metrics::{Refusal, Series, SeriesCache, SeriesRequest, Shard};
use crate::telemetry::ratelimit::{LineKind, LogLimiter};
use crate::telemetry::{Carrier, Reporter, Security};

/// What one core keeps for its connection records. Lives in the core's thread.
#[derive(Debug)]
pub struct Conns {
    pub shard: Arc<Shard>,
    series: RefCell<SeriesCache>,
    pub live: Live,
    pub logs: LogLimiter,
}

impl Conns {
    pub fn new(shard: Arc<Shard>, series: SeriesCache) -> Rc<Conns> {
        Rc::new(Conns {
            shard,
            series: RefCell::new(series),
            live: Live::default(),
            logs: LogLimiter::default(),
        })
    }

    /// Forgets series keys that point into a snapshot being replaced.
    pub fn snapshot_replaced(&self) {
        self.series.borrow_mut().forget_snapshot();
    }

    /// Counts an accepted socket as open until the guard drops (`istio_tcp_sockets_open`).
    pub fn socket(&self, reporter: Reporter) -> SocketGuard {
        self.shard.socket_opened(reporter);
        SocketGuard {
            shard: self.shard.clone(),
            reporter,
        }
    }

    /// A refusal that happens before any record exists (a TLS handshake that failed): counted,
    /// and logged if the limit allows.
    pub fn refused(&self, why: Refusal, kind: LineKind, log: impl FnOnce(u64)) {
        self.shard.refused(why);
        if let Some(suppressed) = self.logs.allow(kind) {
            log(suppressed);
        }
    }
}

/// An accepted socket, counted open until dropped.
#[derive(Debug)]
pub struct SocketGuard {
    shard: Arc<Shard>,
    reporter: Reporter,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.shard.socket_closed(self.reporter);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Accepted,
    Opened,
    Ended,
}

/// One connection, from accept to its access line. See the module docs.
#[derive(Debug)]
pub struct ConnRecord {
    conns: Rc<Conns>,
    id: usize,
    abort: Rc<Abort>,
    reporter: Reporter,
    carrier: Carrier,
    security: Security,
    src: SocketAddr,
    dst: SocketAddr,
    hbone_addr: Option<SocketAddr>,
    source: Option<Arc<Workload>>,
    /// The source's SPIFFE identity: the peer's certificate (inbound) or the local source
    /// workload's (outbound HBONE).
    src_identity: Option<Identity>,
    destination: Option<Arc<Workload>>,
    service: Option<Arc<Service>>,
    started: Instant,
    meter: Meter,
    series: Option<Arc<Series>>,
    state: State,
}

impl ConnRecord {
    /// A connection accepted from `src` for `dst` (its original destination).
    pub fn accept(
        conns: &Rc<Conns>,
        reporter: Reporter,
        carrier: Carrier,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> ConnRecord {
        let (id, abort) = conns.live.register();
        ConnRecord {
            conns: conns.clone(),
            id,
            abort,
            reporter,
            carrier,
            security: Security::Unknown,
            src,
            dst,
            hbone_addr: None,
            source: None,
            src_identity: None,
            destination: None,
            service: None,
            started: Instant::now(),
            meter: Meter::new(),
            series: None,
            state: State::Accepted,
        }
    }

    pub fn reporter(&self) -> Reporter {
        self.reporter
    }

    pub fn src(&self) -> SocketAddr {
        self.src
    }

    pub fn dst(&self) -> SocketAddr {
        self.dst
    }

    pub fn source(&self) -> Option<&Arc<Workload>> {
        self.source.as_ref()
    }

    /// The address the connection really goes to (`dst.addr`): for outbound HBONE the peer
    /// node's `ip:15008`, for a resolved service the endpoint.
    pub fn set_dst(&mut self, dst: SocketAddr) {
        self.dst = dst;
    }

    pub fn set_carrier(&mut self, carrier: Carrier) {
        self.carrier = carrier;
    }

    pub fn set_source(&mut self, source: Option<Arc<Workload>>, identity: Option<Identity>) {
        self.source = source;
        self.src_identity = identity;
    }

    pub fn set_destination(
        &mut self,
        destination: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    ) {
        self.destination = destination;
        self.service = service;
    }

    /// The CONNECT authority of an HBONE hop (`dst.hbone_addr`).
    pub fn set_hbone_addr(&mut self, addr: SocketAddr) {
        self.hbone_addr = Some(addr);
    }

    /// Opens the connection for telemetry: who and where are known (source and destination,
    /// before authorization and the upstream dial, as ztunnel counts). From now on bytes are
    /// counted live and the connection must [`finish`](Self::finish).
    pub fn open(&mut self, security: Security) {
        if self.state != State::Accepted {
            return;
        }
        self.security = security;
        let req = SeriesRequest {
            source: self.source.clone(),
            principal: self.src_identity.clone(),
            destination: self.destination.clone(),
            service: self.service.clone(),
        };
        let series = self
            .conns
            .series
            .borrow_mut()
            .series(self.reporter, security, &req);
        series.opened();
        self.meter = Meter::with_live(series.live_counters());
        self.series = Some(series);
        self.conns.shard.conn_opened(self.reporter, self.carrier);
        self.state = State::Opened;
    }

    /// The connection's byte meter (relays count into it).
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    pub fn transferred(&self) -> Transferred {
        self.meter.transferred()
    }

    /// Completes when the connection is ended from outside (drain deadline, policy change);
    /// give it to the relay as its abort signal.
    pub fn aborted(&self) -> impl Future<Output = ()> + use<> {
        let abort = self.abort.clone();
        async move { abort.aborted().await }
    }

    /// The outcome an abort from outside stands for (call after the relay was aborted).
    pub fn abort_outcome(&self) -> Outcome {
        match self.abort.reason() {
            Some(AbortReason::Revoked(why)) => Outcome::Revoked(why),
            Some(AbortReason::Drain) | None => Outcome::Drained,
        }
    }

    /// Completes when the connection is aborted from outside, or when no byte moved for
    /// `idle` (for relays without an idle timeout of their own, such as the tunnel relay).
    pub fn cut(&self, idle: Option<Duration>) -> Cut<'_> {
        Cut {
            abort: self.abort.clone(),
            meter: &self.meter,
            idle,
            timer: None,
        }
    }

    /// The outcome a [`cut`](Self::cut) that fired stands for.
    pub fn cut_outcome(&self, idle: Option<Duration>) -> Outcome {
        match self.abort.reason() {
            Some(_) => self.abort_outcome(),
            None => Outcome::IdleTimeout(idle.unwrap_or_default()),
        }
    }

    /// Records what the connection was authorized for, so a policy change re-decides it.
    pub fn grant(&self, grant: Grant) {
        self.conns.live.grant(self.id, grant);
    }

    /// Ends a connection refused before it was opened: counted by reason, and a
    /// `connection failed` line if the core's log limit allows.
    pub fn refuse(mut self, why: Refusal, detail: &str) {
        self.state = State::Ended;
        let (reporter, src, dst) = (self.reporter, self.src, self.dst);
        self.conns.refused(why, LineKind::Refused, |suppressed| {
            access::failed(reporter, src, dst, detail, why.label(), suppressed);
        });
    }

    /// Ends an opened connection: counts its close with the outcome's flags and writes its
    /// access line. (A record never opened is refused instead.)
    pub fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        if self.state == State::Ended {
            return;
        }
        if self.state == State::Accepted {
            // Not enough was known to open it: say why as a refusal.
            let why = outcome.error().unwrap_or_default();
            self.state = State::Ended;
            let (reporter, src, dst) = (self.reporter, self.src, self.dst);
            self.conns
                .refused(Refusal::NotServed, LineKind::Refused, |suppressed| {
                    access::failed(
                        reporter,
                        src,
                        dst,
                        &why,
                        Refusal::NotServed.label(),
                        suppressed,
                    )
                });
            return;
        }
        self.state = State::Ended;
        let flags = outcome.response_flags();
        if let Some(series) = &self.series {
            series.closed(flags);
        }
        self.conns.shard.conn_closed(self.reporter, self.carrier);
        let t = self.meter.transferred();
        // The log counts from the node's network side (ztunnel's "unflip" for logs).
        let (bytes_sent, bytes_recv) = match self.reporter {
            Reporter::Source => (t.from_originator, t.toward_originator),
            Reporter::Destination => (t.toward_originator, t.from_originator),
        };
        let mtls = self.security == Security::MutualTls;
        let error = outcome.error();
        access::complete(&Complete {
            reporter: self.reporter,
            src: self.src,
            source: self.source.as_deref(),
            src_identity: self.src_identity.as_ref().filter(|_| mtls),
            dst: self.dst,
            hbone_addr: self.hbone_addr,
            service: self.service.as_deref(),
            destination: self.destination.as_deref(),
            dst_identity: self
                .destination
                .as_ref()
                .map(|w| &w.identity)
                .filter(|_| mtls),
            bytes_sent,
            bytes_recv,
            duration: self.started.elapsed(),
            error: error.as_deref(),
            reset: match &outcome {
                Outcome::Reset(by) => Some(by.label()),
                _ => None,
            },
            outcome: outcome.label(),
        });
    }
}

impl Drop for ConnRecord {
    fn drop(&mut self) {
        // A task dropped mid-way (the runtime going away): the connection is gone with it.
        self.end(Outcome::Drained);
        self.conns.live.unregister(self.id);
    }
}

/// The signal of [`ConnRecord::cut`]: a small `Unpin` future, because a relay keeps it for
/// the connection's whole life. Written out rather than as an `async` block, which held an
/// inline timer (256 B) in every connection's task even with no idle limit (the default).
pub struct Cut<'a> {
    abort: Rc<Abort>,
    meter: &'a Meter,
    idle: Option<Duration>,
    /// Armed only while an idle limit is being waited out.
    timer: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

impl Future for Cut<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.abort.poll_aborted(cx).is_ready() {
            return Poll::Ready(());
        }
        let Some(idle) = this.idle else {
            return Poll::Pending;
        };
        loop {
            if let Some(timer) = this.timer.as_mut() {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timer = None;
            }
            // Bytes may have moved while the timer ran: wait out only what is left.
            let since = this.meter.last_activity().elapsed();
            if since >= idle {
                return Poll::Ready(());
            }
            this.timer = Some(Box::pin(runtime::time::sleep(idle - since)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use runtime::DriverChoice;
    use runtime::meter::{Flow, Meter};

    use super::*;
    use crate::conn::live::AbortReason;

    fn cut<'a>(abort: &Rc<Abort>, meter: &'a Meter, idle: Option<Duration>) -> Cut<'a> {
        Cut {
            abort: abort.clone(),
            meter,
            idle,
            timer: None,
        }
    }

    /// Whether `fut` completes within `within`.
    async fn done_within(fut: impl Future<Output = ()> + Unpin, within: Duration) -> bool {
        runtime::time::timeout(within, fut).await.is_ok()
    }

    #[test]
    fn cut_without_idle_limit_waits_for_abort_only_and_arms_no_timer() {
        for driver in [DriverChoice::IoUring, DriverChoice::Epoll] {
            runtime::block_on(driver, async {
                let abort = Rc::new(Abort::default());
                let meter = Meter::new();
                let mut c = cut(&abort, &meter, None);
                assert!(!done_within(&mut c, Duration::from_millis(50)).await);
                assert!(c.timer.is_none(), "no idle limit, no timer");
                abort.abort(AbortReason::Drain);
                assert!(done_within(&mut c, Duration::from_secs(5)).await);
            })
            .unwrap();
        }
    }

    #[test]
    fn cut_fires_only_after_idle_without_bytes() {
        let idle = Duration::from_millis(200);
        for driver in [DriverChoice::IoUring, DriverChoice::Epoll] {
            runtime::block_on(driver, async {
                let abort = Rc::new(Abort::default());
                let meter = Meter::new();
                let mut c = cut(&abort, &meter, Some(idle));
                // Bytes move halfway through: the timer armed at the start must not fire
                // the cut; it re-arms for what is left.
                assert!(!done_within(&mut c, Duration::from_millis(100)).await);
                meter.add(Flow::FromOriginator, 1);
                let moved = Instant::now();
                assert!(done_within(&mut c, Duration::from_secs(10)).await);
                assert!(
                    moved.elapsed() >= idle,
                    "cut {:?} after the last byte, limit {idle:?}",
                    moved.elapsed()
                );
                assert!(abort.reason().is_none(), "an idle cut is no abort");
            })
            .unwrap();
        }
    }
}
