//! The node proxy: `ringmesh run`.
//!
//! Threads: the control thread (this module's [`run`]) validates the options, claims the
//! node's ports, loads the config, owns the identity manager, the config watcher, the memory
//! sampler and the admin endpoints, and publishes immutable snapshots to the cores by message
//! ([`CoreMsg`]); one worker per core serves connections with its own [`Core`] state.
//! Nothing on the data path is shared between cores but the load-shedding flag
//! ([`limits::NodeLoad`]).
//!
//! Drain: on SIGTERM, SIGINT, `POST /quitquitquit` or `POST /drain`, listeners stop
//! accepting and HBONE connections get GOAWAY; live connections run until the drain
//! deadline; then every one still open is reset on both sides and logged as
//! `connection closed due to connection drain`, and the process exits.

pub mod cluster;
pub mod control_plane;
pub mod core;
pub mod dns_serve;
pub mod dump;
pub mod guard;
pub mod inbound;
pub mod inpod;
pub mod limits;
pub mod listeners;
pub mod options;
pub mod outbound;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hbone::pool::PoolConfig;
use runtime::{Broadcaster, Shutdown};

pub use self::core::{Core, CoreMsg, CoreOptions, IncomingCpu, UnknownSource};
use self::limits::NodeLoad;
use self::listeners::{EntryAddrs, Inbound};
pub use self::options::NodeOptions;
use crate::admin::AdminSource;
use crate::config::{self, LoadOptions, Snapshot, WatchOptions};
use crate::conn::{AbortReason, Conns};
use crate::identity::{CertSet, IdentityManager, ManagerOptions, Signer, ca};
use crate::telemetry::{Extras, Metrics};

/// How often each core copies its pool counters into its metrics shard. Scrapes come every
/// 15 s or so; a second is fresh enough and costs nothing.
const POOL_STATS_INTERVAL: Duration = Duration::from_secs(1);

/// How often a worker returns the memory its allocator holds free to the OS. mimalloc purges
/// freed pages only when the thread allocates again, so a worker that goes quiet after a
/// flood would keep its peak (a 4-stream flood kept 275 MB after it closed); a collect per
/// second costs microseconds on an idle heap.
const COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// After the drain deadline, how long the reset connections get to log and close.
const DRAIN_ABORT_GRACE: Duration = Duration::from_secs(2);

/// Replaces the process's log filter (from the admin endpoint); set up by `main`.
pub type LogReload = Box<dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync>;

/// The log filter as `main` set it up, and how to change it.
pub struct LogControl {
    /// The filter at start (`--log`, `RINGMESH_LOG` or `RUST_LOG`), which `reset` restores.
    pub default: String,
    pub reload: LogReload,
}

/// The control thread's view, for the admin endpoints.
struct Control {
    snapshot: Mutex<Arc<Snapshot>>,
    identities: Arc<IdentityManager>,
    metrics: Arc<Metrics>,
    load: Arc<NodeLoad>,
    /// The listeners are up.
    ready: AtomicBool,
    /// Cluster mode: istiod's xDS state.
    control_plane: Option<control_plane::ControlPlane>,
    /// In-pod mode: the ZDS link to istio-cni (set once it starts).
    zds: Mutex<Option<Arc<control::zds::ZdsStats>>>,
    /// In-pod mode's DNS proxy counters.
    dns: Option<Arc<dns_serve::DnsStats>>,
    shutdown: Shutdown,
    drain_timeout: Duration,
    info: Mutex<dump::NodeInfo>,
    log: LogControl,
    log_filter: Mutex<String>,
    istio_version: Option<String>,
}

impl AdminSource for Control {
    fn config_dump(&self) -> serde_json::Value {
        let snap = self
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let info = self.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
        dump::config_dump(&snap, &self.identities.current(), &info)
    }

    fn ready(&self) -> std::result::Result<(), String> {
        if self.shutdown.is_draining() {
            return Err("draining".into());
        }
        let mut pending = Vec::new();
        if !self.ready.load(Ordering::Acquire) {
            pending.push("proxy");
        }
        if self.control_plane.as_ref().is_some_and(|c| !c.xds_ready()) {
            pending.push("xds");
        }
        // istio-cni's first snapshot, and no pod whose listeners could not start.
        if self
            .zds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|z| !z.ready())
        {
            pending.push("pods");
        }
        // Every local workload's certificate: without it, its inbound handshakes fail.
        let snap = self
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let certs = self.identities.current();
        if snap
            .local_identities()
            .iter()
            .any(|id| certs.get(id).is_none())
        {
            pending.push("certificates");
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending.join(", "))
        }
    }

    fn metrics(&self) -> String {
        let driver = self
            .info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .driver
            .clone();
        let certs = self.identities.current();
        let fds = open_fds();
        let extras = Extras {
            driver,
            istio_version: self.istio_version.clone(),
            gauges: vec![
                (
                    "ringmesh_workload_certificates",
                    "Workload certificates the node holds.",
                    certs.len() as f64,
                ),
                (
                    "ringmesh_resident_memory_bytes",
                    "The node's resident memory at the last sample (what --memory-limit is checked against).",
                    self.load.rss() as f64,
                ),
                (
                    "process_open_fds",
                    "Number of open file descriptors",
                    fds.0 as f64,
                ),
                (
                    "process_max_fds",
                    "Maximum number of file descriptors",
                    fds.1 as f64,
                ),
            ],
            counters: vec![(
                "ringmesh_load_shed_total",
                "Connections and tunnels refused by a limit (memory, connections per node or per peer).",
                self.load.shed() as f64,
            )],
            families: String::new(),
        };
        let mut extras = extras;
        extras.families = self
            .control_plane
            .as_ref()
            .map(|c| c.render_metrics())
            .unwrap_or_default();
        if let Some(d) = &self.dns {
            extras.families.push_str(&d.render());
        }
        if let Some(z) = self.zds.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            // ztunnel's in-pod families (its root registry, so no `istio_` prefix).
            extras.gauges.extend([
                (
                    "workload_manager_active_proxy_count",
                    "The total number current workloads with active proxies (unstable)",
                    z.active() as f64,
                ),
                (
                    "workload_manager_pending_proxy_count",
                    "The total number current workloads with pending proxies (unstable)",
                    z.pending() as f64,
                ),
                (
                    "ringmesh_zds_connected",
                    "Whether the node holds a connection to istio-cni's ZDS socket.",
                    f64::from(u8::from(z.connected())),
                ),
            ]);
            extras.counters.extend([
                (
                    "workload_manager_proxies_started_total",
                    "The total number of proxies that were started (unstable)",
                    z.started_total() as f64,
                ),
                (
                    "workload_manager_proxies_stopped_total",
                    "The total number of proxies that were stopped (unstable)",
                    z.stopped_total() as f64,
                ),
            ]);
        }
        self.metrics.render_prometheus(&extras)
    }

    fn log_filter(&self) -> String {
        self.log_filter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn default_log_filter(&self) -> String {
        self.log.default.clone()
    }

    fn set_log_filter(&self, filter: &str) -> std::result::Result<(), String> {
        (self.log.reload)(filter)?;
        *self.log_filter.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_string();
        Ok(())
    }

    fn drain(&self) {
        self.shutdown.drain(self.drain_timeout);
    }
}

/// Open descriptors (`/proc/self/fd`) and the soft limit (`/proc/self/limits`).
fn open_fds() -> (usize, u64) {
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0);
    let max = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    (open, max)
}

/// The local workload IPs whose inbound listeners the node serves under `snapshot`: the ones
/// already served, and the new ones whose two ports no other process listens on. Each
/// refusal names the workload and the address.
///
/// `claim_until` is the start-up grace for addresses a killed predecessor still holds (see
/// [`options::claim_port`]); `None` on snapshot updates.
fn plan_inbound(
    snapshot: &Snapshot,
    opts: &NodeOptions,
    served: &HashSet<IpAddr>,
    claim_until: Option<Instant>,
) -> (HashSet<IpAddr>, Vec<String>) {
    let mut plan = HashSet::new();
    let mut errors = Vec::new();
    if opts.inpod.is_some() {
        // Pods are served inside their own namespaces (`inpod`), never on this one's IPs.
        return (plan, errors);
    }
    let entries = opts.shared_listeners();
    for w in snapshot.local_workloads() {
        'ip: for &ip in &w.ips {
            if served.contains(&ip) {
                plan.insert(ip);
                continue;
            }
            for (flag, port) in [
                ("--hbone-port", opts.hbone_port),
                ("--plaintext-port", opts.plaintext_port),
            ] {
                let addr = SocketAddr::new(ip, port);
                if let Some((entry, at)) =
                    entries.iter().find(|(_, at)| options::overlaps(*at, addr))
                {
                    errors.push(format!(
                        "workload {} ({ip}): {flag} {addr} is the {entry} listener {at}",
                        w.uid
                    ));
                    continue 'ip;
                }
                if let Err(e) = options::claim_port(flag, addr, claim_until) {
                    errors.push(format!("workload {} ({ip}): {e}", w.uid));
                    continue 'ip;
                }
            }
            plan.insert(ip);
        }
    }
    (plan, errors)
}

/// What a new snapshot sets in motion, whatever produced it (the file watcher, istiod):
/// certificates for new local identities, inbound listeners for new local workload IPs, the
/// cores' copy, the live connections' policy re-check, the admin view.
/// Whether [`Publisher::publish`] waits for new local workloads' certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Certs {
    Wait,
    Async,
}

#[derive(Clone)]
struct Publisher {
    broadcaster: Broadcaster<CoreMsg>,
    control: Arc<Control>,
    identities: Arc<IdentityManager>,
    opts: Arc<NodeOptions>,
    served: Arc<Mutex<HashSet<IpAddr>>>,
}

impl Publisher {
    /// Sends `snap` to every core. With `Certs::Wait` the certificates of new local
    /// workloads are issued first, so a core never serves a workload it holds no
    /// certificate for (file reloads). `Certs::Async` only asks for them: the identity
    /// manager publishes each as it arrives. The xDS client must use it, because it runs
    /// on the control thread, and the Istio CA signer needs that same thread to answer
    /// (waiting there would deadlock).
    fn publish(&self, snap: Arc<Snapshot>, certs: Certs) {
        if let Err(e) = self.identities.set_identities(snap.local_identities()) {
            tracing::error!(error = %e, "identity manager refused the new identities");
        }
        if certs == Certs::Wait {
            for id in snap.local_identities() {
                if let Err(e) = self.identities.ensure(&id) {
                    tracing::warn!(identity = %id, error = %e, "no certificate yet for a local workload (retrying)");
                }
            }
        }
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let (plan, errors) = plan_inbound(&snap, &self.opts, &served, None);
        for e in errors {
            tracing::error!("not serving inbound traffic: {e}");
        }
        *served = plan.clone();
        drop(served);
        let b = &self.broadcaster;
        b.send(CoreMsg::Certs(self.identities.current()));
        b.send(CoreMsg::Config(snap.clone()));
        b.send(CoreMsg::Inbound(Arc::new(plan)));
        self.control
            .info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config_hash = snap.content_hash();
        *self
            .control
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = snap;
    }
}

/// Runs a node until SIGTERM/SIGINT (or an admin drain) and its drain are over.
pub fn run(opts: NodeOptions, log: LogControl) -> Result<()> {
    opts.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = Arc::new(opts);
    let shutdown = Shutdown::default();
    shutdown.drain_on_signals(opts.drain_timeout)?;

    // Cluster mode's gRPC runs on its own thread (tokio), never on a core.
    let needs_control_plane = opts.cluster.xds.is_some() || opts.ca_dir.is_none();
    let control_rt = if needs_control_plane {
        Some(control_plane::runtime()?)
    } else {
        None
    };

    let load = LoadOptions {
        node: opts.node.clone(),
        ..LoadOptions::default()
    };
    let snapshot = match &opts.config {
        Some(path) => Arc::new(config::load_file(path, &load).map_err(|e| anyhow::anyhow!("{e}"))?),
        // istiod fills it once connected; until then the node serves no workload.
        None => {
            Arc::new(config::MeshState::new().snapshot(opts.node.as_deref().map(Into::into), 0))
        }
    };
    let node = snapshot.node().unwrap_or("-").to_string();

    // Ports first: a node must not start on ports another process serves. One grace for
    // all of them: a killed predecessor's rings let go of its listeners together.
    let claim_until = Some(Instant::now() + options::CLAIM_GRACE);
    for (flag, addr) in opts.shared_listeners() {
        options::claim_port(flag, addr, claim_until).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let (plan, errors) = plan_inbound(&snapshot, &opts, &HashSet::new(), claim_until);
    if let Some(e) = errors.first() {
        anyhow::bail!("{e}");
    }
    let plan = Arc::new(plan);

    let signer: Arc<dyn Signer> = match (&opts.ca_dir, &control_rt) {
        (Some(dir), _) => {
            let ca =
                ca::load(dir).with_context(|| format!("loading the CA from {}", dir.display()))?;
            Arc::new(ca)
        }
        (None, Some(rt)) => control_plane::istio_ca_signer(rt, &opts.cluster)?,
        (None, None) => unreachable!("validate() requires a CA"),
    };

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
        // A CA that is down now is retried with backoff; readiness waits for it.
        if let Err(e) = identities.ensure(id) {
            tracing::error!(identity = %id, error = %e, "no certificate at start-up; retrying (the node is not ready until it has one)");
        }
    }

    let workers = match &opts.runtime.cores {
        runtime::Cores::All => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        runtime::Cores::Count(n) => *n,
        runtime::Cores::List(l) => l.len(),
    };
    let metrics = Metrics::new(workers);
    let node_load = NodeLoad::new();
    let endpoints: Vec<SocketAddr> = [
        opts.entries.capture,
        opts.entries.socks5,
        opts.admin.admin,
        opts.admin.metrics,
        opts.admin.ready,
    ]
    .into_iter()
    .flatten()
    .collect();
    let dns_settings = opts.inpod.as_ref().filter(|p| p.dns).map(|p| {
        Arc::new(dns_serve::DnsSettings {
            upstreams: p.dns_upstreams.clone(),
            cluster_domain: p.cluster_domain.clone(),
            stats: Arc::default(),
        })
    });
    let core_opts = CoreOptions {
        hbone_port: opts.hbone_port,
        plaintext_port: opts.plaintext_port,
        unknown_source: opts.unknown_source,
        incoming_cpu: opts.incoming_cpu,
        pool: PoolConfig {
            idle_timeout: opts.pool_idle_timeout,
            spread: opts.hbone_spread,
            ..PoolConfig::default()
        },
        limits: opts.limits.clone(),
        endpoints,
        workers,
        inpod: opts.inpod.is_some(),
        dns: dns_settings.clone(),
    };
    let init_snapshot = snapshot.clone();
    let init_certs = identities.current();
    let init_metrics = metrics.clone();
    let init_plan = plan.clone();
    let init_load = node_load.clone();
    let entries = opts.entries.clone();
    let pod_ports = inpod::PodPorts {
        capture: inpod::CAPTURE_PORT,
        plaintext: opts.plaintext_port,
        hbone: opts.hbone_port,
    };
    let rt = runtime::launch_with(&opts.runtime, shutdown.clone(), move |worker| {
        let i = worker.index();
        let conns = Conns::new(init_metrics.shard(i), init_metrics.series_cache(i));
        let core = Core::new(
            core_opts.clone(),
            init_snapshot.clone(),
            init_certs.clone(),
            conns,
            init_load.clone(),
        );
        listeners::bind_entries(&worker, &core, &entries)?;
        let mut inbound = Inbound::new(worker.clone(), core.clone());
        if let Some(e) = inbound.reconcile(&init_plan).into_iter().next() {
            return Err(e);
        }
        let pods = inpod::PodListeners::new(worker.clone(), core.clone(), pod_ports);
        Ok(worker_main(worker, core, inbound, pods))
    })?;
    *broadcaster.lock().unwrap_or_else(|p| p.into_inner()) = Some(rt.broadcaster());
    // Anything renewed between start-up and now.
    rt.broadcast(CoreMsg::Certs(identities.current()));

    let driver = rt.driver().map(|d| d.to_string()).unwrap_or_default();
    let info = dump::NodeInfo {
        node: snapshot.node().map(str::to_string),
        driver: driver.clone(),
        cores: rt.workers().iter().map(|w| w.core).collect(),
        incoming_cpu: opts.incoming_cpu.as_str(),
        listeners: [
            ("capture", opts.entries.capture),
            ("socks5", opts.entries.socks5),
            ("admin", opts.admin.admin),
            ("metrics", opts.admin.metrics),
            ("ready", opts.admin.ready),
        ]
        .into_iter()
        .collect(),
        hbone_port: opts.hbone_port,
        plaintext_port: opts.plaintext_port,
        config_hash: snapshot.content_hash(),
    };
    let control_plane = control_rt
        .as_ref()
        .map(|rt| control_plane::ControlPlane::new(rt, &opts.cluster));
    let control = Arc::new(Control {
        snapshot: Mutex::new(snapshot.clone()),
        identities: identities.clone(),
        metrics: metrics.clone(),
        load: node_load.clone(),
        ready: AtomicBool::new(false),
        control_plane,
        zds: Mutex::new(None),
        dns: dns_settings.as_ref().map(|d| d.stats.clone()),
        shutdown: shutdown.clone(),
        drain_timeout: opts.drain_timeout,
        info: Mutex::new(info),
        log_filter: Mutex::new(log.default.clone()),
        log,
        istio_version: opts.istio_version.clone(),
    });
    let _admin = crate::admin::start(&opts.admin, control.clone())?;
    let _sampler = spawn_memory_sampler(node_load, opts.limits.memory_limit, shutdown.clone());

    let publisher = Publisher {
        broadcaster: rt.broadcaster(),
        control: control.clone(),
        identities: identities.clone(),
        opts: opts.clone(),
        served: Arc::new(Mutex::new((*plan).clone())),
    };
    let _watcher = match &opts.config {
        Some(path) if !opts.watch_interval.is_zero() => {
            let publisher = publisher.clone();
            let shown = path.clone();
            Some(config::watch(
                path,
                WatchOptions {
                    load,
                    interval: opts.watch_interval,
                    current: Some(snapshot.content_hash()),
                },
                move |res| {
                    // An error was logged by the watcher (with the file and the field path);
                    // the previous config keeps serving.
                    let Ok(snap) = res else { return };
                    tracing::info!(config = %shown.display(), workloads = snap.workloads().len(), services = snap.services().len(), "config applied");
                    publisher.publish(snap, Certs::Wait);
                },
            )?)
        }
        _ => None,
    };
    if let (Some(cp), Some(_)) = (&control.control_plane, &opts.cluster.xds) {
        let publisher = publisher.clone();
        cp.start_xds(
            &opts.cluster,
            opts.node.clone(),
            shutdown.clone(),
            move |snap| publisher.publish(snap, Certs::Async),
        )?;
    }

    // In-pod mode: istio-cni hands over the pods; each core serves them in their namespaces.
    let _zds = match &opts.inpod {
        Some(inpod_opts) => {
            let manager = inpod::PodManager::new(
                rt.broadcaster(),
                rt.workers().len(),
                pod_ports,
                inpod_opts.mark,
                inpod_opts.dns,
            );
            let config = control::zds::ZdsConfig::new(inpod_opts.uds.clone());
            let client = control::zds::ZdsClient::spawn(config, manager)
                .context("starting the ZDS client (in-pod mode)")?;
            *control.zds.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.stats());
            tracing::info!(socket = %inpod_opts.uds.display(), mark = inpod_opts.mark, "in-pod mode: pods come from istio-cni");
            Some(client)
        }
        None => None,
    };

    control.ready.store(true, Ordering::Release);
    tracing::info!(
        node = %node,
        workers = rt.workers().len(),
        driver = %driver,
        mode = if opts.cluster.xds.is_some() { "cluster" } else { "embedded" },
        inpod = opts.inpod.is_some(),
        local_workloads = snapshot.local_workloads().len(),
        capture = ?opts.entries.capture,
        socks5 = ?opts.entries.socks5,
        incoming_cpu = opts.incoming_cpu.as_str(),
        "node proxy ready"
    );
    rt.join()?;
    tracing::info!("drained, exiting");
    drop(control_rt);
    Ok(())
}

/// Samples the resident set every [`limits::MEMORY_SAMPLE_INTERVAL`] and flips the
/// load-shedding flag across the limit (logged once per crossing).
fn spawn_memory_sampler(
    load: Arc<NodeLoad>,
    limit: Option<u64>,
    shutdown: Shutdown,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ringmesh-memory".into())
        .spawn(move || {
            while !shutdown.is_draining() {
                if let Some(rss) = limits::resident_bytes() {
                    match load.observe(rss, limit) {
                        Some(true) => tracing::error!(
                            rss_mib = rss >> 20,
                            limit_mib = limit.unwrap_or(0) >> 20,
                            resume_below_mib = limits::resume_below(limit.unwrap_or(0)) >> 20,
                            "memory above --memory-limit: refusing new connections until it falls"
                        ),
                        Some(false) => tracing::warn!(
                            rss_mib = rss >> 20,
                            "memory back under --memory-limit: accepting new connections"
                        ),
                        None => {}
                    }
                }
                std::thread::sleep(limits::MEMORY_SAMPLE_INTERVAL);
            }
        })
}

/// A worker's main task: apply control messages until the drain, wait for the live
/// connections until the deadline, then reset the rest (each logs its line).
async fn worker_main(
    worker: runtime::Worker<CoreMsg>,
    core: Rc<Core>,
    mut inbound: Inbound,
    mut pods: inpod::PodListeners,
) {
    let w = worker.clone();
    let msg_core = core.clone();
    let messages = async move {
        while let Ok(msg) = w.messages().recv().await {
            match &msg {
                CoreMsg::Inbound(plan) => {
                    for e in inbound.reconcile(plan) {
                        tracing::error!(worker = w.index(), error = %e, "could not bind an inbound listener for a new workload");
                    }
                }
                CoreMsg::Pod(p) => pods.apply(p),
                _ => {}
            }
            msg_core.apply(msg);
        }
    };
    // Pool figures for /metrics, and the allocator's free memory back to the OS.
    let (house_core, w2) = (core.clone(), worker.clone());
    runtime::spawn(async move {
        let mut last_collect = Instant::now();
        while !w2.shutdown().is_draining() {
            let s = house_core.pool.stats();
            house_core
                .conns
                .shard
                .hbone_pool(s.dials, s.reuses, s.open as u64);
            if last_collect.elapsed() >= COLLECT_INTERVAL {
                runtime::alloc::collect();
                last_collect = Instant::now();
            }
            runtime::time::sleep(POOL_STATS_INTERVAL).await;
        }
    })
    .detach();
    let messages = std::pin::pin!(messages);
    let drain = std::pin::pin!(worker.shutdown().draining());
    futures_util::future::select(messages, drain).await;
    worker.wait_idle().await;
    if worker.live_connections() > 0 {
        let n = core.conns.live.abort_all(AbortReason::Drain);
        tracing::info!(
            worker = worker.index(),
            reset = n,
            "drain deadline passed: resetting the connections still open"
        );
        let until = Instant::now() + DRAIN_ABORT_GRACE;
        while !core.conns.live.is_empty() && Instant::now() < until {
            runtime::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Addresses for a node whose entries listen on `ip` (tests and the demo).
pub fn entries_on(ip: IpAddr, capture_port: Option<u16>, socks_port: Option<u16>) -> EntryAddrs {
    EntryAddrs {
        capture: capture_port.map(|p| SocketAddr::new(ip, p)),
        socks5: socks_port.map(|p| SocketAddr::new(ip, p)),
    }
}

/// Re-exported for `main`.
pub use self::limits::Limits;
