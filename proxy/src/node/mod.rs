//! The node proxy: `ringmesh run`.
//!
//! Threads: the control thread (this module's [`run`]) loads the config, owns the identity
//! manager, the config watcher and the admin endpoints, and publishes immutable snapshots
//! to the cores by message ([`CoreMsg`]); one worker per core serves connections with its
//! own [`Core`] state. Nothing on the data path is shared between cores.

pub mod core;
pub mod inbound;
pub mod listeners;
pub mod outbound;
pub mod socks5;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use hbone::pool::PoolConfig;
use runtime::{Broadcaster, RuntimeConfig, Shutdown};

pub use self::core::{Core, CoreMsg, CoreOptions, IncomingCpu, UnknownSource};
use self::listeners::{EntryAddrs, Inbound};
use crate::admin::{AdminAddrs, AdminSource};
use crate::config::{self, LoadOptions, Snapshot, WatchOptions};
use crate::identity::{CertSet, IdentityManager, ManagerOptions, Signer, ca};
use crate::metrics::Metrics;

/// Everything `ringmesh run` needs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub config: PathBuf,
    /// Overrides the config file's `node:`.
    pub node: Option<String>,
    pub ca_dir: PathBuf,
    pub runtime: RuntimeConfig,
    pub drain_timeout: Duration,
    pub entries: EntryAddrs,
    pub admin: AdminAddrs,
    pub hbone_port: u16,
    pub plaintext_port: u16,
    pub unknown_source: UnknownSource,
    pub incoming_cpu: IncomingCpu,
    pub cert_lifetime: Duration,
    pub pool_idle_timeout: Duration,
    /// Re-read the config file this often (0: never).
    pub watch_interval: Duration,
}

/// How often each core copies its pool counters into its metrics shard. Scrapes come every
/// 15 s or so; a second is fresh enough and costs nothing.
const POOL_STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Replaces the process's log filter (from the admin endpoint); set up by `main`.
pub type LogReload = Box<dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync>;

/// The control thread's view, for the admin endpoints.
struct Control {
    snapshot: Mutex<Arc<Snapshot>>,
    identities: Arc<IdentityManager>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    shutdown: Shutdown,
    drain_timeout: Duration,
    driver: Mutex<String>,
    /// Each worker's pinned core, in worker order (`None`: not pinned).
    cores: Vec<Option<usize>>,
    incoming_cpu: IncomingCpu,
    log_reload: LogReload,
}

impl AdminSource for Control {
    fn config_dump(&self) -> serde_json::Value {
        let snap = self
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let certs = self.identities.current();
        let workloads: Vec<_> = snap
            .workloads()
            .iter()
            .map(|w| {
                serde_json::json!({
                    "uid": &*w.uid, "name": &*w.name, "namespace": &*w.namespace,
                    "identity": w.identity.to_string(), "ips": w.ips, "node": &*w.node,
                    "protocol": format!("{:?}", w.protocol), "local": snap.local_workload_by_ip(w.ips[0]).is_some(),
                })
            })
            .collect();
        let services: Vec<_> = snap
            .services()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": &*s.name, "namespace": &*s.namespace, "hostname": &*s.hostname,
                    "vips": s.vips.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
                    "ports": s.ports, "endpoints": s.members.iter().map(|m| m.uid.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let certificates: Vec<_> = certs
            .iter()
            .map(|(id, c)| {
                serde_json::json!({
                    "identity": id.to_string(),
                    "not_before": humantime_secs(c.not_before),
                    "not_after": humantime_secs(c.not_after),
                })
            })
            .collect();
        serde_json::json!({
            "node": snap.node(),
            "config_hash": format!("{:016x}", snap.content_hash()),
            "runtime": {
                "driver": *self.driver.lock().unwrap_or_else(|p| p.into_inner()),
                "workers": self.cores.len(),
                "cores": self.cores,
                "incoming_cpu": self.incoming_cpu.as_str(),
            },
            "workloads": workloads,
            "services": services,
            "policies": snap.policies().len(),
            "certificates": certificates,
        })
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutdown.is_draining()
    }

    fn metrics(&self) -> String {
        let driver = self
            .driver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let certs = self.identities.current();
        self.metrics.render_prometheus(
            &driver,
            &[("ringmesh_workload_certificates", certs.len() as f64)],
        )
    }

    fn set_log_level(&self, filter: &str) -> std::result::Result<(), String> {
        (self.log_reload)(filter)
    }

    fn drain(&self) {
        self.shutdown.drain(self.drain_timeout);
    }
}

/// Seconds since the Unix epoch (for JSON; exact and unambiguous).
fn humantime_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs a node until SIGTERM/SIGINT (or an admin drain) and its drain are over.
pub fn run(opts: NodeOptions, log_reload: LogReload) -> Result<()> {
    let shutdown = Shutdown::default();
    shutdown.drain_on_signals(opts.drain_timeout)?;

    let load = LoadOptions {
        node: opts.node.clone(),
    };
    let snapshot =
        Arc::new(config::load_file(&opts.config, &load).map_err(|e| anyhow::anyhow!("{e}"))?);
    let node = snapshot.node().unwrap_or("-").to_string();
    let ca = ca::load(&opts.ca_dir)
        .with_context(|| format!("loading the CA from {}", opts.ca_dir.display()))?;
    let signer: Arc<dyn Signer> = Arc::new(ca);

    // Certificates go to the cores once they run; until then the initial set is handed over
    // directly at start-up.
    let broadcaster: Arc<Mutex<Option<Broadcaster<CoreMsg>>>> = Arc::new(Mutex::new(None));
    let publish = {
        let b = broadcaster.clone();
        move |certs: Arc<CertSet>| {
            if let Some(b) = b.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                b.send(CoreMsg::Certs(certs));
            }
        }
    };
    let manager_opts = ManagerOptions {
        lifetime: opts.cert_lifetime,
        ..ManagerOptions::default()
    };
    let identities = Arc::new(IdentityManager::start(signer, manager_opts, publish)?);
    let local = snapshot.local_identities();
    identities.set_identities(local.iter().cloned())?;
    for id in &local {
        identities
            .ensure(id)
            .with_context(|| format!("issuing a certificate for {id}"))?;
    }

    let cores = match &opts.runtime.cores {
        runtime::Cores::All => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        runtime::Cores::Count(n) => *n,
        runtime::Cores::List(l) => l.len(),
    };
    let metrics = Metrics::new(cores);
    let core_opts = CoreOptions {
        hbone_port: opts.hbone_port,
        plaintext_port: opts.plaintext_port,
        unknown_source: opts.unknown_source,
        incoming_cpu: opts.incoming_cpu,
        pool: PoolConfig {
            idle_timeout: opts.pool_idle_timeout,
            ..PoolConfig::default()
        },
    };
    let init_snapshot = snapshot.clone();
    let init_certs = identities.current();
    let init_metrics = metrics.clone();
    let entries = opts.entries.clone();
    let rt = runtime::launch_with(&opts.runtime, shutdown.clone(), move |worker| {
        let core = Core::new(
            core_opts.clone(),
            init_snapshot.clone(),
            init_certs.clone(),
            init_metrics.shard(worker.index()),
        );
        listeners::bind_entries(&worker, &core, &entries)?;
        let mut inbound = Inbound::new(worker.clone(), core.clone());
        if let Some(e) = inbound.reconcile().into_iter().next() {
            return Err(e);
        }
        Ok(worker_main(worker, core, inbound))
    })?;
    *broadcaster.lock().unwrap_or_else(|p| p.into_inner()) = Some(rt.broadcaster());
    // Anything renewed between start-up and now.
    rt.broadcast(CoreMsg::Certs(identities.current()));

    let control = Arc::new(Control {
        snapshot: Mutex::new(snapshot.clone()),
        identities: identities.clone(),
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
        shutdown: shutdown.clone(),
        drain_timeout: opts.drain_timeout,
        driver: Mutex::new(rt.driver().map(|d| d.to_string()).unwrap_or_default()),
        cores: rt.workers().iter().map(|w| w.core).collect(),
        incoming_cpu: opts.incoming_cpu,
        log_reload,
    });
    let _admin = crate::admin::start(&opts.admin, control.clone())?;

    let _watcher = if opts.watch_interval.is_zero() {
        None
    } else {
        let b = rt.broadcaster();
        let control = control.clone();
        let ids = identities.clone();
        let path = opts.config.clone();
        Some(config::watch(
            &opts.config,
            WatchOptions {
                load,
                interval: opts.watch_interval,
                current: Some(snapshot.content_hash()),
            },
            move |res| match res {
                Ok(snap) => {
                    tracing::info!(config = %path.display(), workloads = snap.workloads().len(), services = snap.services().len(), "config reloaded");
                    if let Err(e) = ids.set_identities(snap.local_identities()) {
                        tracing::error!(error = %e, "identity manager refused the new identities");
                    }
                    for id in snap.local_identities() {
                        if let Err(e) = ids.ensure(&id) {
                            tracing::warn!(identity = %id, error = %e, "no certificate yet for new workload");
                        }
                    }
                    b.send(CoreMsg::Certs(ids.current()));
                    b.send(CoreMsg::Config(snap.clone()));
                    *control.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = snap;
                }
                Err(e) => {
                    tracing::error!(error = %e, "config rejected; still serving the previous one")
                }
            },
        )?)
    };

    control.ready.store(true, Ordering::Release);
    tracing::info!(
        node = %node,
        workers = rt.workers().len(),
        driver = %rt.driver().map(|d| d.as_str()).unwrap_or("none"),
        local_workloads = snapshot.local_workloads().len(),
        capture = ?opts.entries.capture,
        socks5 = ?opts.entries.socks5,
        incoming_cpu = opts.incoming_cpu.as_str(),
        "node proxy ready"
    );
    rt.join()?;
    tracing::info!("drained, exiting");
    Ok(())
}

/// A worker's main task: apply control messages until the drain, then wait for the live
/// connections (up to the deadline).
async fn worker_main(worker: runtime::Worker<CoreMsg>, core: Rc<Core>, mut inbound: Inbound) {
    let w = worker.clone();
    let core_for_stats = core.clone();
    let messages = async move {
        while let Ok(msg) = w.messages().recv().await {
            let reconcile = matches!(msg, CoreMsg::Config(_));
            core.apply(msg);
            if reconcile {
                for e in inbound.reconcile() {
                    tracing::error!(worker = w.index(), error = %e, "could not bind an inbound listener for a new workload");
                }
            }
        }
    };
    // Pool figures for /metrics, every few seconds (the pool's own counters are cumulative).
    let (pool_core, w2) = (core_for_stats, worker.clone());
    runtime::spawn(async move {
        while !w2.shutdown().is_draining() {
            let s = pool_core.pool.stats();
            pool_core
                .metrics
                .hbone_pool(s.dials, s.reuses, s.open as u64);
            runtime::time::sleep(POOL_STATS_INTERVAL).await;
        }
    })
    .detach();
    let messages = std::pin::pin!(messages);
    let drain = std::pin::pin!(worker.shutdown().draining());
    futures_util::future::select(messages, drain).await;
    worker.wait_idle().await;
}

/// Addresses for a node whose entries listen on `ip` (tests and the demo).
pub fn entries_on(
    ip: std::net::IpAddr,
    capture_port: Option<u16>,
    socks_port: Option<u16>,
) -> EntryAddrs {
    EntryAddrs {
        capture: capture_port.map(|p| SocketAddr::new(ip, p)),
        socks5: socks_port.map(|p| SocketAddr::new(ip, p)),
    }
}
