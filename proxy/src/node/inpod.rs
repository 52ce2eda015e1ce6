//! In-pod mode: pods handed over by istio-cni (ZDS), served from inside their own network
//! namespaces.
//!
//! Owns: the ZDS handler on the control side ([`PodManager`]: validate the namespace, check
//! the pod's ports are free there, tell every core), and each core's pod listeners
//! ([`PodListeners`]: 15001 capture, 15006 plaintext, 15008 HBONE, bound on the wildcard
//! address inside the pod's namespace).
//!
//! Invariants:
//! - every core binds its own listeners for a pod (`SO_REUSEPORT` inside the pod's
//!   namespace, steered to the core like the node's own listeners): a pod's connections
//!   are served on the core that accepted them, with no hand-off;
//! - every socket made for a pod (listeners, and the upstream sockets of its connections)
//!   is made in the pod's namespace with istio-cni's exemption mark ([`INPOD_MARK`]), so the
//!   peer sees the pod's own address and the pod's capture rules let the node's traffic
//!   pass instead of redirecting it back;
//! - enrolling or removing a pod touches only that pod's listeners; removing one stops its
//!   accepts and leaves its open connections to finish (or to the node's drain deadline).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::rc::Rc;
use std::sync::Arc;

use futures_channel::oneshot;
use runtime::net::{Placement, TcpListener};
use runtime::netns::Netns;
use runtime::{Broadcaster, Worker};

use super::core::{Core, CoreMsg};
use super::{inbound, outbound};

/// The packet mark on every socket the node makes in a pod (`PACKET_MARK`; ztunnel's and
/// istio-cni's default, 0x539): the pod's capture rules skip marked packets.
pub const INPOD_MARK: u32 = 1337;

/// The outbound capture port inside a pod (istio-cni redirects the pod's outgoing TCP here).
pub const CAPTURE_PORT: u16 = 15001;

/// A pod the cores are to serve.
#[derive(Debug)]
pub struct PodSpec {
    pub uid: String,
    /// `namespace/name`, for logs.
    pub name: String,
    /// The pod's Kubernetes namespace (the DNS proxy's search domains).
    pub namespace: String,
    /// The pod's name as istio-cni gave it: with the namespace, what its connections'
    /// source workload must be (an IP alone could be claimed by another pod).
    pub pod_name: String,
    /// Where its sockets are made.
    pub place: Placement,
    /// Each core answers here once its listeners are bound (or could not be): the ack to
    /// istio-cni waits for every core, as ztunnel acks once the pod's proxy runs.
    pub bound: std::sync::mpsc::SyncSender<Result<(), String>>,
}

/// How long enrolling a pod waits for the cores to bind its listeners (a core busy with a
/// long task answers late; past this the pod is NACKed and retried). Well under istio-cni's
/// 5 s wait for each ack: an ack later than that would be read as the next request's.
const BIND_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a pod's ports may still be held by a pod just removed from the same namespace.
const PORTS_FREED_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// A change of the pods served, sent to every core.
#[derive(Debug, Clone)]
pub enum PodMsg {
    Up(Arc<PodSpec>),
    Down(Arc<PodDown>),
}

/// A pod to stop serving; each core answers on `closed` once its listeners are closed.
#[derive(Debug)]
pub struct PodDown {
    pub uid: Arc<str>,
    pub closed: std::sync::mpsc::SyncSender<()>,
}

/// The ports a pod's listeners take, in its namespace.
#[derive(Debug, Clone, Copy)]
pub struct PodPorts {
    pub capture: u16,
    pub plaintext: u16,
    pub hbone: u16,
}

impl PodPorts {
    fn all(&self) -> [(&'static str, u16); 3] {
        [
            ("capture", self.capture),
            ("plaintext", self.plaintext),
            ("HBONE", self.hbone),
        ]
    }
}

/// The control side of in-pod mode: what istio-cni says, turned into messages to the cores.
pub struct PodManager {
    broadcaster: Broadcaster<CoreMsg>,
    workers: usize,
    ports: PodPorts,
    mark: u32,
    /// The DNS proxy is on (its TCP port is checked too).
    dns: bool,
}

impl PodManager {
    pub fn new(
        broadcaster: Broadcaster<CoreMsg>,
        workers: usize,
        ports: PodPorts,
        mark: u32,
        dns: bool,
    ) -> PodManager {
        PodManager {
            broadcaster,
            workers,
            ports,
            mark,
            dns,
        }
    }

    /// Checks that the pod's ports are free in its namespace (a listener bound there by
    /// someone else would share connections with ours through `SO_REUSEPORT`).
    fn check_ports(&self, place: &Placement) -> Result<(), String> {
        let mut wanted: Vec<(&str, SocketAddr)> = self
            .ports
            .all()
            .iter()
            .map(|&(what, port)| {
                (
                    what,
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                )
            })
            .collect();
        if self.dns {
            let dns = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), crate::dns::DNS_PORT);
            wanted.push(("DNS", dns));
        }
        for (what, addr) in wanted {
            // A pod just removed from this namespace may still be closing its listeners
            // (each core closes them on its next turn): give it a moment.
            let deadline = std::time::Instant::now() + PORTS_FREED_WAIT;
            loop {
                match runtime::net::probe_unserved_placed(place, addr) {
                    Ok(()) => break,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::AddrInUse
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => {
                        return Err(format!(
                            "the {what} port {addr} in the pod's namespace: {e}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl PodManager {
    /// Tells every core to close the pod's listeners and waits (bounded) until they have:
    /// the pod's ports are free again when istio-cni's next request arrives (a re-add of
    /// the same namespace under another uid, for one).
    fn stop(&self, uid: &str) {
        let (closed, answers) = std::sync::mpsc::sync_channel(self.workers);
        self.broadcaster
            .send(CoreMsg::Pod(PodMsg::Down(Arc::new(PodDown {
                uid: Arc::from(uid),
                closed,
            }))));
        let deadline = std::time::Instant::now() + BIND_WAIT;
        for _ in 0..self.workers {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if answers.recv_timeout(left).is_err() {
                tracing::warn!(
                    uid,
                    "a worker did not confirm closing a pod's listeners in time"
                );
                return;
            }
        }
    }
}

impl control::zds::Handler for PodManager {
    fn add(
        &mut self,
        uid: &str,
        info: &control::pb::zds::WorkloadInfo,
        netns: BorrowedFd<'_>,
    ) -> Result<(), String> {
        let fd = netns
            .try_clone_to_owned()
            .map_err(|e| format!("duplicating the namespace descriptor: {e}"))?;
        let ns = Netns::new(fd).map_err(|e| format!("reading the namespace descriptor: {e}"))?;
        let place = Placement {
            netns: Some(Arc::new(ns)),
            mark: Some(self.mark),
        };
        self.check_ports(&place)?;
        let name = format!("{}/{}", info.namespace, info.name);
        tracing::info!(uid, pod = %name, netns = %place.netns.as_ref().map(|n| n.to_string()).unwrap_or_default(), "pod enrolled: serving it from inside its network namespace");
        let (bound, answers) = std::sync::mpsc::sync_channel(self.workers);
        self.broadcaster
            .send(CoreMsg::Pod(PodMsg::Up(Arc::new(PodSpec {
                uid: uid.to_string(),
                name,
                namespace: info.namespace.clone(),
                pod_name: info.name.clone(),
                place,
                bound,
            }))));
        let deadline = std::time::Instant::now() + BIND_WAIT;
        for _ in 0..self.workers {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let answer = answers
                .recv_timeout(left)
                .map_err(|_| {
                    format!("the workers did not bind the pod's listeners within {BIND_WAIT:?}")
                })
                .and_then(|r| r);
            if let Err(e) = answer {
                // Undo on the cores that did bind; istio-cni is NACKed and we retry.
                self.stop(uid);
                return Err(e);
            }
        }
        Ok(())
    }

    fn del(&mut self, uid: &str) {
        tracing::info!(
            uid,
            "pod removed: its listeners close, its open connections finish"
        );
        self.stop(uid);
    }
}

/// A pod this core serves, and its listeners' stop signals.
type Running = (Arc<PodSpec>, Vec<oneshot::Sender<()>>);

/// One core's listeners for the enrolled pods.
pub struct PodListeners {
    worker: Worker<CoreMsg>,
    core: Rc<Core>,
    ports: PodPorts,
    /// uid → the pod and its listeners' stop signals (dropping them closes).
    running: HashMap<Arc<str>, Running>,
}

impl PodListeners {
    pub fn new(worker: Worker<CoreMsg>, core: Rc<Core>, ports: PodPorts) -> PodListeners {
        PodListeners {
            worker,
            core,
            ports,
            running: HashMap::new(),
        }
    }

    /// The number of pods this core serves.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn apply(&mut self, msg: &PodMsg) {
        match msg {
            PodMsg::Up(spec) => {
                let uid: Arc<str> = Arc::from(spec.uid.as_str());
                // The same pod in a new namespace (its sandbox was recreated) replaces the old.
                self.running.remove(&uid);
                match self.bind(spec) {
                    Ok(stops) => {
                        self.running.insert(uid, (spec.clone(), stops));
                        let _ = spec.bound.try_send(Ok(()));
                    }
                    Err(e) => {
                        tracing::error!(
                            worker = self.worker.index(),
                            uid = %spec.uid,
                            pod = %spec.name,
                            error = %e,
                            "could not bind a pod's listeners in its namespace"
                        );
                        let _ = spec
                            .bound
                            .try_send(Err(format!("worker {}: {e}", self.worker.index())));
                    }
                }
            }
            PodMsg::Down(down) => {
                let uid = &down.uid;
                if let Some((spec, stops)) = self.running.remove(uid) {
                    // Dropping the stop senders wakes each accept loop, which closes its
                    // listener before its next accept.
                    drop(stops);
                    // Its pooled HBONE connections go too (streams in flight finish), so
                    // nothing keeps the pod's namespace open after it left.
                    let retired = self.core.pool.retire(|k| k.place == spec.place);
                    tracing::debug!(worker = self.worker.index(), %uid, retired, "pod listeners closed");
                }
                let _ = down.closed.try_send(());
            }
        }
    }

    fn bind(&self, spec: &Arc<PodSpec>) -> std::io::Result<Vec<oneshot::Sender<()>>> {
        let place = &spec.place;
        let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        let capture_steer = self.core.options.incoming_cpu.core(&self.worker, false);
        let inbound_steer = self.core.options.incoming_cpu.core(&self.worker, true);
        let capture = TcpListener::bind_placed(place, any(self.ports.capture), capture_steer)?;
        let plain = TcpListener::bind_placed(place, any(self.ports.plaintext), inbound_steer)?;
        let hbone = TcpListener::bind_placed(place, any(self.ports.hbone), inbound_steer)?;
        let mut stops = Vec::with_capacity(5);
        if let Some(dns) = &self.core.options.dns {
            stops.extend(super::dns_serve::bind(
                &self.worker,
                &self.core,
                dns,
                &spec.uid,
                &spec.namespace,
                place,
            )?);
        }

        let (stop, rx) = oneshot::channel::<()>();
        stops.push(stop);
        let (core, pod) = (self.core.clone(), spec.clone());
        self.worker
            .spawn_accept(capture, stopped(rx), move |s, peer| {
                outbound::serve_captured(core.clone(), s, peer, Some(pod.clone()))
            });

        let (stop, rx) = oneshot::channel::<()>();
        stops.push(stop);
        let (core, p) = (self.core.clone(), place.clone());
        self.worker
            .spawn_accept(plain, stopped(rx), move |s, peer| {
                let local = local_ip(&s, peer);
                inbound::serve_plaintext(core.clone(), s, peer, local, p.clone())
            });

        let (stop, rx) = oneshot::channel::<()>();
        stops.push(stop);
        let (core, worker, p) = (self.core.clone(), self.worker.clone(), place.clone());
        self.worker
            .spawn_accept(hbone, stopped(rx), move |s, peer| {
                let local = local_ip(&s, peer);
                inbound::serve_hbone(core.clone(), worker.clone(), s, peer, local, p.clone())
            });
        tracing::debug!(worker = self.worker.index(), uid = %spec.uid, pod = %spec.name, "pod listeners up");
        Ok(stops)
    }
}

/// The address a connection reached inside the pod (the pod's IP).
fn local_ip(s: &runtime::net::TcpStream, peer: SocketAddr) -> IpAddr {
    s.local_addr().map(|a| a.ip()).unwrap_or(peer.ip())
}

async fn stopped(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}
