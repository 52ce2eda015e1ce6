//! This core's listeners: the node-wide entries (15001 capture, 15080 SOCKS5) bound once,
//! and the per-workload inbound listeners (15008 HBONE, 15006 plaintext) reconciled with
//! every config snapshot: a new local workload gets its listeners, a removed one loses them
//! (its live connections go on).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::rc::Rc;

use futures_channel::oneshot;
use futures_util::future::{Either, select};
use runtime::Worker;
use runtime::net::{TcpListener, TcpStream};

use super::core::{Core, CoreMsg};
use super::{inbound, outbound};

/// Accepts on `listener` until `stop` fires (its sender dropped) or the process drains; each
/// connection runs in a task tracked for drain.
fn spawn_accept_loop<H, Fut>(
    worker: &Worker<CoreMsg>,
    listener: TcpListener,
    stop: Option<oneshot::Receiver<()>>,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let w = worker.clone();
    runtime::spawn(async move {
        let local = listener.local_addr().ok();
        let mut stop = pin!(async move {
            match stop {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending::<()>().await,
            }
        });
        loop {
            let accepted = {
                let accept = pin!(listener.accept());
                let draining = pin!(w.shutdown().draining());
                let end = pin!(select(stop.as_mut(), draining));
                match select(accept, end).await {
                    Either::Left((r, _)) => r,
                    Either::Right(_) => break,
                }
            };
            match accepted {
                Ok((stream, peer)) => w.spawn_conn(handler(stream, peer)),
                Err(e) => {
                    tracing::warn!(listener = ?local, error = %e, "accept failed");
                    runtime::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
        tracing::debug!(listener = ?local, "listener closed");
    })
    .detach();
}

/// Node-wide entry points of one core.
#[derive(Debug, Clone, Default)]
pub struct EntryAddrs {
    pub capture: Option<SocketAddr>,
    pub socks5: Option<SocketAddr>,
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
        spawn_accept_loop(worker, l, None, move |s, peer| {
            outbound::serve_captured(core.clone(), s, peer)
        });
    }
    if let Some(addr) = entries.socks5 {
        let l = TcpListener::bind_on_core(addr, steer)?;
        let core = core.clone();
        spawn_accept_loop(worker, l, None, move |s, peer| {
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

    /// Makes the listeners match the current snapshot's local workloads. Returns the bind
    /// errors (at start-up they abort; later they are logged and retried next snapshot).
    pub fn reconcile(&mut self) -> Vec<std::io::Error> {
        let snapshot = self.core.snapshot();
        let want: HashSet<IpAddr> = snapshot
            .local_workloads()
            .iter()
            .flat_map(|w| w.ips.iter().copied())
            .collect();
        self.running.retain(|ip, _| want.contains(ip));
        let mut errors = Vec::new();
        for ip in want {
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
        spawn_accept_loop(&self.worker, hbone, Some(rx_h), move |s, peer| {
            inbound::serve_hbone(core.clone(), worker.clone(), s, peer, ip)
        });
        let core = self.core.clone();
        spawn_accept_loop(&self.worker, plain, Some(rx_p), move |s, peer| {
            inbound::serve_plaintext(core.clone(), s, peer, ip)
        });
        tracing::debug!(worker = self.worker.index(), %ip, "inbound listeners up");
        Ok(vec![stop_h, stop_p])
    }
}
