//! This core's listeners: the node-wide entries (15001 capture, 15080 SOCKS5) bound once,
//! and the per-workload inbound listeners (15008 HBONE, 15006 plaintext) reconciled with
//! every plan the control thread sends: a new local workload gets its listeners, a removed
//! one loses them (its live connections go on).
//!
//! Invariant: a core binds only addresses the control thread has claimed for the node
//! (`options::claim_port`), so a port another process serves is never shared through
//! `SO_REUSEPORT`. Every listener runs the runtime's one accept loop
//! (`runtime::Worker::spawn_accept`).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use futures_channel::oneshot;
use runtime::Worker;
use runtime::net::{Placement, TcpListener};

use super::core::{Core, CoreMsg};
use super::{inbound, outbound};

/// Node-wide entry points of one core.
#[derive(Debug, Clone, Default)]
pub struct EntryAddrs {
    pub capture: Option<SocketAddr>,
    pub socks5: Option<SocketAddr>,
}

/// A future that completes when `rx`'s sender is dropped (a listener's stop signal).
async fn stopped(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

/// Binds the node-wide entries; errors abort start-up.
pub fn bind_entries(
    worker: &Worker<CoreMsg>,
    core: &Rc<Core>,
    entries: &EntryAddrs,
) -> std::io::Result<()> {
    let steer = core.options.incoming_cpu.core(worker, false);
    if let Some(addr) = entries.capture {
        let l = TcpListener::bind_on_core(addr, steer)?;
        let core = core.clone();
        worker.spawn_accept(l, std::future::pending(), move |s, peer| {
            outbound::serve_captured(core.clone(), s, peer, None)
        });
    }
    if let Some(addr) = entries.socks5 {
        let l = TcpListener::bind_on_core(addr, steer)?;
        let core = core.clone();
        worker.spawn_accept(l, std::future::pending(), move |s, peer| {
            outbound::serve_socks5(core.clone(), s, peer)
        });
    }
    Ok(())
}

/// The per-workload inbound listeners of one core.
pub struct Inbound {
    worker: Worker<CoreMsg>,
    core: Rc<Core>,
    /// Dropping a sender closes that IP's listeners.
    running: HashMap<IpAddr, Vec<oneshot::Sender<()>>>,
}

impl Inbound {
    pub fn new(worker: Worker<CoreMsg>, core: Rc<Core>) -> Inbound {
        Inbound {
            worker,
            core,
            running: HashMap::new(),
        }
    }

    /// Makes the listeners match `plan` (the local workload IPs the node serves). Returns
    /// the bind errors (at start-up they abort; later they are logged and retried with the
    /// next plan).
    pub fn reconcile(&mut self, plan: &HashSet<IpAddr>) -> Vec<std::io::Error> {
        self.running.retain(|ip, _| plan.contains(ip));
        let mut errors = Vec::new();
        for &ip in plan {
            if self.running.contains_key(&ip) {
                continue;
            }
            match self.bind(ip) {
                Ok(stops) => {
                    self.running.insert(ip, stops);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    fn bind(&self, ip: IpAddr) -> std::io::Result<Vec<oneshot::Sender<()>>> {
        let opts = &self.core.options;
        let steer = opts.incoming_cpu.core(&self.worker, true);
        let hbone = TcpListener::bind_on_core(SocketAddr::new(ip, opts.hbone_port), steer)?;
        let plain = TcpListener::bind_on_core(SocketAddr::new(ip, opts.plaintext_port), steer)?;
        let (stop_h, rx_h) = oneshot::channel();
        let (stop_p, rx_p) = oneshot::channel();
        let (core, worker) = (self.core.clone(), self.worker.clone());
        self.worker
            .spawn_accept(hbone, stopped(rx_h), move |s, peer| {
                inbound::serve_hbone(
                    core.clone(),
                    worker.clone(),
                    s,
                    peer,
                    ip,
                    Placement::default(),
                )
            });
        let core = self.core.clone();
        self.worker
            .spawn_accept(plain, stopped(rx_p), move |s, peer| {
                inbound::serve_plaintext(core.clone(), s, peer, ip, Placement::default())
            });
        tracing::debug!(worker = self.worker.index(), %ip, "inbound listeners up");
        Ok(vec![stop_h, stop_p])
    }
}
