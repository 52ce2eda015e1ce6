//! Per-core node state: the config snapshot and certificate set this core serves with, the
//! rustls configs built from them, the HBONE connection pool, the connection records' home
//! (`crate::conn::Conns`), the node's own listening addresses, and the limits a peer meets.
//! Lives in the worker's thread only (`Rc`, `RefCell`): nothing here is locked.
//!
//! Invariants:
//! - a new snapshot or certificate set replaces the old one between connections; a
//!   connection reads what it needs once at its start and keeps it (an `Arc`) to its end;
//! - rustls configs are cached per identity and dropped whenever the certificate set
//!   changes, so a renewed certificate is used by the next handshake;
//! - every inbound connection past its authorization is registered with what it was
//!   granted; a new snapshot re-decides each one and revokes those its policies now deny
//!   (DESIGN.md: "a policy change re-checks live connections");
//! - [`Core::admit`] is asked before any work for a new connection: it refuses past this
//!   core's share of the node's connections, past a peer's share, and while the node is
//!   above its memory limit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use hbone::identity::Identity;
use hbone::pool::{Pool, PoolConfig, PoolKey};

use super::guard::OwnListeners;
use super::limits::{Limits, NodeLoad};
use crate::config::{Decision, Request, Snapshot};
use crate::conn::Conns;
use crate::identity::CertSet;
use crate::telemetry::Refusal;

/// A message from the control thread to every core.
#[derive(Debug, Clone)]
pub enum CoreMsg {
    Config(Arc<Snapshot>),
    Certs(Arc<CertSet>),
    /// The local workload IPs whose inbound listeners the node serves (their ports claimed
    /// by the control thread).
    Inbound(Arc<std::collections::HashSet<IpAddr>>),
    /// In-pod mode: a pod to serve from inside its namespace, or one to stop serving.
    Pod(super::inpod::PodMsg),
}

/// Options every core needs, fixed for the process's life.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// The HBONE port on every node (15008).
    pub hbone_port: u16,
    /// The inbound plaintext port on every node (15006).
    pub plaintext_port: u16,
    /// What to do with outbound traffic from an IP that is no local workload.
    pub unknown_source: UnknownSource,
    /// Which listeners keep a new connection on the core that received it.
    pub incoming_cpu: IncomingCpu,
    pub pool: PoolConfig,
    pub limits: Limits,
    /// The node-wide endpoints (entries, admin, metrics, readiness): no path dials them.
    pub endpoints: Vec<SocketAddr>,
    /// The number of workers (a core's share of the node's limits).
    pub workers: usize,
    /// In-pod mode: every local workload also listens on the capture port (in its pod).
    pub inpod: bool,
    /// In-pod mode's DNS proxy (`None`: off).
    pub dns: Option<Arc<super::dns_serve::DnsSettings>>,
}

impl CoreOptions {
    /// The ports every local workload IP listens on.
    pub fn workload_ports(&self) -> Vec<u16> {
        let mut ports = vec![self.hbone_port, self.plaintext_port];
        if self.inpod {
            ports.push(super::inpod::CAPTURE_PORT);
        }
        ports
    }
}

/// Which of a core's listeners take `SO_INCOMING_CPU` (its pinned core), so that the kernel
/// hands each new connection to the worker on the core that processed its SYN instead of
/// hashing it to any worker (`runtime::net::TcpListener::bind_on_core`).
///
/// For a pod on this node that core is the one the pod's thread ran on; for a peer node it
/// is the core of the NIC queue the flow hashed to. Either way the connection, the node's
/// work for it and the wake-ups it causes stay on one core, with no cross-core interrupt.
/// Measured on the 2-core bench (two nodes on loopback, docs/design-notes.md), `All`
/// against `Off`: node CPU per request −35 % at 1,000 req/s, p99 −30 %, closed-loop
/// requests/s +50 %, connection churn +45 %; one bulk stream −10 %, because on one host
/// the sender and both nodes' workers for the stream share one core. `Capture` alone gave
/// from a seventh (full-load requests/s) to two thirds (CPU at 1,000 req/s) of the gains.
/// A node whose NIC spreads flows over fewer queues than it has workers should run
/// `Capture`: inbound connections would otherwise gather on the workers of the queues'
/// cores. `Off` spreads one heavy connection's work over two cores more often, at the cost
/// of every request's cross-core wake-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingCpu {
    /// The kernel's `SO_REUSEPORT` hash for every listener.
    Off,
    /// The outbound entries (capture, SOCKS5), whose peers are pods on this node.
    Capture,
    /// Every listener, inbound HBONE and plaintext too.
    All,
}

impl IncomingCpu {
    /// The core a listener bound on `worker` steers to (`None`: hash), for an outbound
    /// entry (`inbound == false`) or an inbound listener.
    pub fn core<M: 'static>(self, worker: &runtime::Worker<M>, inbound: bool) -> Option<usize> {
        self.steer(worker.core(), inbound)
    }

    /// The flag value (`--incoming-cpu`).
    pub fn as_str(self) -> &'static str {
        match self {
            IncomingCpu::Off => "off",
            IncomingCpu::Capture => "capture",
            IncomingCpu::All => "all",
        }
    }

    fn steer(self, pinned: Option<usize>, inbound: bool) -> Option<usize> {
        let on = match self {
            IncomingCpu::Off => false,
            IncomingCpu::Capture => !inbound,
            IncomingCpu::All => true,
        };
        pinned.filter(|_| on)
    }
}

impl std::str::FromStr for IncomingCpu {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(IncomingCpu::Off),
            "capture" => Ok(IncomingCpu::Capture),
            "all" => Ok(IncomingCpu::All),
            other => Err(format!("{other:?}: expected capture, all or off")),
        }
    }
}

/// Outbound traffic whose source is not a local workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSource {
    /// Forward it as plain TCP to its original destination.
    Passthrough,
    /// Reset it.
    Reject,
}

impl std::str::FromStr for UnknownSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passthrough" => Ok(UnknownSource::Passthrough),
            "reject" => Ok(UnknownSource::Reject),
            other => Err(format!("{other:?}: expected passthrough or reject")),
        }
    }
}

/// Everything one core serves with.
pub struct Core {
    pub options: Rc<CoreOptions>,
    snapshot: RefCell<Arc<Snapshot>>,
    certs: RefCell<Arc<CertSet>>,
    server_tls: RefCell<HashMap<Identity, Arc<rustls::ServerConfig>>>,
    own: RefCell<Rc<OwnListeners>>,
    pub pool: Pool,
    pub conns: Rc<Conns>,
    pub load: Arc<NodeLoad>,
    lb_counter: Cell<u64>,
    /// Inbound HBONE connections open per peer IP.
    peers: RefCell<HashMap<IpAddr, usize>>,
    /// Connections held by [`Admission`]s now.
    admitted: Cell<usize>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

/// A connection let in by [`Core::admit`]; its place is given back on drop.
#[derive(Debug)]
pub struct Admission {
    core: Rc<Core>,
    peer: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.core.admitted.set(self.core.admitted.get() - 1);
        if let Some(ip) = self.peer {
            let mut peers = self.core.peers.borrow_mut();
            if let Some(n) = peers.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    peers.remove(&ip);
                }
            }
        }
    }
}

impl Core {
    pub fn new(
        options: CoreOptions,
        snapshot: Arc<Snapshot>,
        certs: Arc<CertSet>,
        conns: Rc<Conns>,
        load: Arc<NodeLoad>,
    ) -> Rc<Core> {
        let own = OwnListeners::new(&options.endpoints, &snapshot, &options.workload_ports());
        Rc::new_cyclic(|weak: &std::rc::Weak<Core>| {
            let weak = weak.clone();
            // The pool asks for a client config per dial; it reads the core's current
            // certificate set at that moment.
            let tls = move |key: &PoolKey| -> hbone::Result<Arc<rustls::ClientConfig>> {
                let core = weak
                    .upgrade()
                    .ok_or_else(|| hbone::Error::TlsConfig("node core is shutting down".into()))?;
                core.client_tls(key)
            };
            Core {
                pool: Pool::new(options.pool.clone(), tls),
                options: Rc::new(options),
                snapshot: RefCell::new(snapshot),
                certs: RefCell::new(certs),
                server_tls: RefCell::new(HashMap::new()),
                own: RefCell::new(Rc::new(own)),
                conns,
                load,
                lb_counter: Cell::new(0),
                peers: RefCell::new(HashMap::new()),
                admitted: Cell::new(0),
            }
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn certs(&self) -> Arc<CertSet> {
        self.certs.borrow().clone()
    }

    /// The node's own listening addresses under the current snapshot.
    pub fn own_listeners(&self) -> Rc<OwnListeners> {
        self.own.borrow().clone()
    }

    pub fn limits(&self) -> &Limits {
        &self.options.limits
    }

    pub fn apply(&self, msg: CoreMsg) {
        match msg {
            CoreMsg::Config(s) => {
                let own =
                    OwnListeners::new(&self.options.endpoints, &s, &self.options.workload_ports());
                *self.own.borrow_mut() = Rc::new(own);
                *self.snapshot.borrow_mut() = s.clone();
                self.conns.snapshot_replaced();
                self.recheck_live(&s);
            }
            CoreMsg::Certs(c) => {
                let old = std::mem::replace(&mut *self.certs.borrow_mut(), c.clone());
                self.server_tls.borrow_mut().clear();
                // Pooled connections keep the certificate they were made with: retire those
                // whose source certificate (or the trust roots) changed, so new streams use
                // the new one and none outlives its certificate.
                let roots_changed = old.roots() != c.roots();
                let retired = self.pool.retire(|key| {
                    roots_changed
                        || match (old.get(&key.src), c.get(&key.src)) {
                            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                            (None, None) => false,
                            _ => true,
                        }
                });
                if retired > 0 {
                    tracing::info!(
                        retired,
                        "certificates replaced; pooled HBONE connections retired"
                    );
                }
            }
            // The worker's listeners handle them (`listeners::Inbound`, `inpod::PodListeners`).
            CoreMsg::Inbound(_) | CoreMsg::Pod(_) => {}
        }
    }

    /// Lets a new connection in, or says why not. `peer` is the peer IP of an inbound HBONE
    /// connection (counted against [`Limits::max_peer_connections`]).
    pub fn admit(self: &Rc<Self>, peer: Option<IpAddr>) -> Result<Admission, (Refusal, String)> {
        if self.load.over_memory() {
            self.load.count_shed();
            return Err((
                Refusal::Overload,
                format!(
                    "resident memory {} MiB is above --memory-limit; refusing new connections",
                    self.load.rss() >> 20
                ),
            ));
        }
        let limits = &self.options.limits;
        let share = limits.per_core_connections(self.options.workers);
        if self.admitted.get() >= share {
            self.load.count_shed();
            return Err((
                Refusal::Overload,
                format!(
                    "this worker holds its share ({share}) of --max-connections {}",
                    limits.max_connections
                ),
            ));
        }
        if let Some(ip) = peer {
            let mut peers = self.peers.borrow_mut();
            let n = peers.entry(ip).or_default();
            if *n >= limits.max_peer_connections {
                self.load.count_shed();
                return Err((
                    Refusal::Overload,
                    format!(
                        "peer {ip} holds {} connections on this worker (--max-peer-connections)",
                        *n
                    ),
                ));
            }
            *n += 1;
        }
        self.admitted.set(self.admitted.get() + 1);
        Ok(Admission {
            core: self.clone(),
            peer,
        })
    }

    /// Re-decides every authorized inbound connection under `snapshot`; revokes the denied
    /// ones. A destination that is no longer a local workload is left alone (its listener
    /// goes with it; connections end with the pod).
    fn recheck_live(&self, snapshot: &Snapshot) {
        let revoked = self.conns.live.revoke(|grant| {
            let workload = snapshot.local_workload_by_ip(grant.dst.ip())?;
            let req = Request {
                source: grant.peer.as_ref(),
                source_ip: grant.src.ip(),
                destination: grant.dst,
            };
            match snapshot.decide(&req, workload) {
                Decision::Allow => None,
                Decision::Deny(reason) => Some(reason.to_string()),
            }
        });
        if revoked > 0 {
            tracing::info!(
                revoked,
                "policy change: live inbound connections now denied are closed"
            );
        }
    }

    /// The next value of this core's load-balancing counter.
    pub fn next_pick(&self) -> u64 {
        let n = self.lb_counter.get();
        self.lb_counter.set(n.wrapping_add(1));
        n
    }

    /// The server config presenting `identity`'s certificate (inbound HBONE).
    pub fn server_tls(&self, identity: &Identity) -> hbone::Result<Arc<rustls::ServerConfig>> {
        if let Some(cfg) = self.server_tls.borrow().get(identity) {
            return Ok(cfg.clone());
        }
        let certs = self.certs();
        let cert = certs
            .get(identity)
            .ok_or_else(|| hbone::Error::TlsConfig(format!("no certificate for {identity} yet")))?;
        let cfg = hbone::tls::server_config(
            cert.chain.clone(),
            cert.key_der(),
            certs.roots(),
            identity.trust_domain(),
        )?;
        self.server_tls
            .borrow_mut()
            .insert(identity.clone(), cfg.clone());
        Ok(cfg)
    }

    /// The client config presenting `key.src`'s certificate and expecting `key.dst_ids`.
    /// Built per dial (the pool reuses connections, so this is off the per-request path).
    fn client_tls(&self, key: &PoolKey) -> hbone::Result<Arc<rustls::ClientConfig>> {
        let certs = self.certs();
        let cert = certs.get(&key.src).ok_or_else(|| {
            hbone::Error::TlsConfig(format!("no certificate for {} yet", key.src))
        })?;
        hbone::tls::client_config(
            cert.chain.clone(),
            cert.key_der(),
            certs.roots(),
            key.dst_ids.clone(),
        )
    }

    /// Whether this core holds a certificate for `identity` now.
    pub fn has_cert(&self, identity: &Identity) -> bool {
        self.certs.borrow().get(identity).is_some()
    }

    /// The HBONE address of a workload IP on its node.
    pub fn hbone_addr(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.options.hbone_port)
    }
}

#[cfg(test)]
mod tests {
    use super::IncomingCpu;

    #[test]
    fn incoming_cpu_steers_the_listeners_it_names() {
        let cases = [
            ("off", None, None),
            ("capture", Some(3), None),
            ("all", Some(3), Some(3)),
        ];
        for (text, outbound, inbound) in cases {
            let mode: IncomingCpu = text.parse().unwrap();
            assert_eq!(mode.as_str(), text);
            assert_eq!(mode.steer(Some(3), false), outbound, "{text}, outbound");
            assert_eq!(mode.steer(Some(3), true), inbound, "{text}, inbound");
            // An unpinned worker has no core to claim.
            assert_eq!(mode.steer(None, false), None, "{text}, unpinned");
        }
        let err = "cpu".parse::<IncomingCpu>().unwrap_err();
        assert!(err.contains("\"cpu\"") && err.contains("capture"), "{err}");
    }
}
