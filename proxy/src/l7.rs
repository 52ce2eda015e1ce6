//! `ringmesh waypoint`: the L7 proxy process of ambient mode, on the node's runtime.
//!
//! Owns the waypoint's process: its own workload (IP and identity, from the mesh config),
//! its certificate (the same [`IdentityManager`] and CA as a node), one HBONE listener per
//! core on `<waypoint IP>:15008`, the mapping from each CONNECT's authority to the Service
//! it addressed, and the [`Upstreams`] that turn a Service port into an HBONE stream to one
//! of its endpoints (or plain TCP for an endpoint outside the mesh). HTTP, routing and
//! resilience are the `waypoint` crate's.
//!
//! Why a subcommand of `ringmesh` and not a binary of its own: it shares the config file,
//! its checks, the CA and the identity manager with the node, and an operator deploys one
//! image; the node's paths are not linked into the waypoint's work (DESIGN.md's border).
//!
//! Invariants:
//! - a CONNECT is answered 200 only for a Service VIP:port (or a workload IP:port) the
//!   mesh knows, 400 for an authority that is not IP:port and 503 for one the mesh does not
//!   know (as a node answers a CONNECT to no local workload);
//! - a config change applies to the next request; a rejected config changes nothing;
//! - certificates renew in the background and reach every core by message.

use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use hbone::pool::{Pool, PoolConfig, PoolKey};
use hbone::server::ServerConfig;
use hbone::stream::HboneStream;
use hbone::wire::{ConnectRequest, Status};
use runtime::net::{TcpListener, TcpStream};
use runtime::{Broadcaster, RuntimeConfig, Shutdown, Worker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use waypoint::route::ServiceRef;

mod gateway;
mod jwks;
pub mod kube;
mod metrics;
mod telemetry;
mod upstreams;

pub use metrics::render_istio;
use metrics::serve_metrics;
use telemetry::TelemetrySource;

use gateway::gateway_of;
use upstreams::{MeshUpstreams, Ups};
use waypoint::security::Peer;
use waypoint::serve::{
    Endpoint, Host, Picked, Target, Upstream, UpstreamError, Upstreams, Waypoint,
};
use waypoint::stats::{Snapshot as StatsSnapshot, Stats};

use crate::config::snapshot::ServicePort;
use crate::config::{self, LoadOptions, Protocol, Snapshot, WatchOptions};
use crate::identity::ca;
use crate::identity::manager::{CertSet, IdentityManager, ManagerOptions, Signer};

/// Everything `ringmesh waypoint` takes.
#[derive(Debug, Clone)]
pub struct WaypointOptions {
    /// The mesh config file: the mesh and the waypoint's kinds; only the waypoint's kinds
    /// when the mesh comes from istiod; only the mesh when the kinds come from Kubernetes.
    /// `None` only with both istiod and Kubernetes.
    pub config: Option<PathBuf>,
    /// Where to read the waypoint's kinds from the cluster, instead of the file.
    pub kube: Option<control::kube::KubeApi>,
    /// Where the waypoint's certificate comes from.
    pub ca: CaSource,
    /// The waypoint's own workload: its uid (`namespace/name` by default).
    pub workload: String,
    pub hbone_port: u16,
    /// `/metrics` and `/healthz/ready`; `None`: not served.
    pub metrics: Option<SocketAddr>,
    pub cert_lifetime: Duration,
    pub watch_interval: Duration,
    pub pool_idle_timeout: Duration,
    pub runtime: RuntimeConfig,
    pub drain_timeout: Duration,
    /// Spans over OTLP (`--otlp-endpoint`); `None`: none, unless a Telemetry names a
    /// provider.
    pub tracing: Option<waypoint::trace::TraceConfig>,
    /// Istio's MeshConfig (`--mesh-config`): the Telemetry API's providers. Watched.
    pub mesh_config: Option<PathBuf>,
    /// Roots for `https://` trace collectors (`--otlp-ca`); `None`: the system's.
    pub otlp_ca: Option<PathBuf>,
    /// Client connections' deadlines.
    pub conn_limits: waypoint::serve::ConnLimits,
    /// How often fetched JWKS are fetched again.
    pub jwks_refresh: Duration,
    /// `--gateway`: the waypoint's Gateway, `NAME` or `NAMESPACE/NAME`; `None`: from the
    /// workload (see [`gateway_of`]).
    pub gateway: Option<String>,
}

/// The certificate authority that signs the waypoint's certificate: the same two a node
/// can use.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// The built-in CA (`ringmesh ca init`).
    Dir(PathBuf),
    /// The Istio CA (istiod), as a dedicated proxy: its own token names its identity.
    Istio(Box<crate::node::cluster::ClusterSettings>),
}

/// What the control thread sends the cores.
#[derive(Clone)]
enum Msg {
    Certs(Arc<CertSet>),
    /// The mesh: workloads and Services (from the file, or from istiod).
    Config(Arc<Snapshot>),
    /// The waypoint's own kinds: routes, DestinationRules, L7 security (from the file).
    L7(Arc<Snapshot>),
    /// The Telemetry API's plans, per Service.
    Telemetry(Arc<waypoint::telemetry::TelemetryTable>),
    /// Each core answers with its counters.
    Stats(std::sync::mpsc::Sender<StatsSnapshot>),
}

/// One core's state.
struct Core {
    /// The mesh the endpoints are picked from.
    snapshot: RefCell<Arc<Snapshot>>,
    /// The snapshot the routes, DestinationRules and L7 security came from (the same as
    /// `snapshot` when the file holds the mesh too).
    l7: RefCell<Arc<Snapshot>>,
    certs: Rc<RefCell<Arc<CertSet>>>,
    identity: hbone::Identity,
    hbone_port: u16,
    /// The waypoint's own workload uid (its locality ranks endpoints).
    workload: Arc<str>,
    /// When each workload IP joined the mesh, for slow start; the IPs there at start are
    /// not in it (not new). Only IPs still in the mesh are kept.
    arrivals: RefCell<std::collections::HashMap<IpAddr, std::time::Instant>>,
}

impl Core {
    /// A new mesh snapshot: IPs it has that the last one had not arrive now.
    fn set_snapshot(&self, new: Arc<Snapshot>) {
        note_arrivals(
            &mut self.arrivals.borrow_mut(),
            &self.snapshot.borrow(),
            &new,
            std::time::Instant::now(),
        );
        *self.snapshot.borrow_mut() = new;
    }
}

/// Records in `arrivals` the workload IPs `new` has and `old` had not, as arrived `now`,
/// and forgets IPs `new` no longer has.
fn note_arrivals(
    arrivals: &mut std::collections::HashMap<IpAddr, std::time::Instant>,
    old: &Snapshot,
    new: &Snapshot,
    now: std::time::Instant,
) {
    let ips = |s: &Snapshot| -> std::collections::HashSet<IpAddr> {
        s.workloads()
            .iter()
            .flat_map(|w| w.ips.iter().copied())
            .collect()
    };
    let (known, present) = (ips(old), ips(new));
    arrivals.retain(|ip, _| present.contains(ip));
    for ip in present.difference(&known) {
        arrivals.insert(*ip, now);
    }
}

impl Core {
    fn server_tls(&self) -> hbone::Result<Arc<rustls::ServerConfig>> {
        let certs = self.certs.borrow();
        let cert = certs.get(&self.identity).ok_or_else(|| {
            hbone::Error::TlsConfig(format!("no certificate for {} yet", self.identity))
        })?;
        hbone::tls::server_config(
            cert.chain.clone(),
            cert.key_der(),
            certs.roots(),
            self.identity.trust_domain(),
        )
    }
}

/// The Service (or workload) a CONNECT authority names: a Service VIP:port, or a workload
/// IP:port whose workload is the endpoint of exactly the Service that port serves.
fn target_of(snapshot: &Snapshot, authority: SocketAddr) -> Result<Target, Status> {
    if let Some(sp) = snapshot.service_port(authority) {
        return Ok(Target {
            service: ServiceRef::new(&sp.service.namespace, &sp.service.name),
            upstream: snapshot.exact_ref(&sp.service),
            host: sp.service.hostname.clone(),
            port: sp.port,
            peer: Peer::default(),
            local: Some(authority),
        });
    }
    if let Some(w) = snapshot.workload_by_ip(authority.ip())
        && let Some(svc) = snapshot.inbound_service(w, authority.port())
    {
        // Addressed to a pod: the route of the Service behind that port applies, and the
        // request goes to that Service (Istio routes workload-addressed traffic likewise).
        let port = svc
            .ports
            .iter()
            .find(|(_, t)| *t == authority.port())
            .map_or(authority.port(), |(p, _)| *p);
        return Ok(Target {
            service: ServiceRef::new(&svc.namespace, &svc.name),
            upstream: snapshot.exact_ref(svc),
            host: svc.hostname.clone(),
            port,
            peer: Peer::default(),
            local: Some(authority),
        });
    }
    Err(Status::ServiceUnavailable)
}

/// How long a waypoint that takes its mesh from istiod waits for istiod to name its own
/// workload before it gives up: the node proxies' readiness wait, with room for a slow
/// first push at scale.
const XDS_FIRST_WAIT: Duration = Duration::from_secs(60);

/// Runs the waypoint until SIGTERM/SIGINT (then drains).
pub fn run(opts: WaypointOptions) -> Result<()> {
    let shutdown = Shutdown::default();
    shutdown.drain_on_signals(opts.drain_timeout)?;
    let jwks = waypoint::security::JwksRegistry::default();
    // With istiod's xDS, the mesh comes from istiod and the file holds the L7 kinds only.
    let from_istiod = match &opts.ca {
        CaSource::Istio(s) if s.xds.is_some() => Some(s.clone()),
        _ => None,
    };
    let load = LoadOptions {
        node: None,
        jwks: jwks.clone(),
        l7_only: from_istiod.is_some(),
    };
    let file = match &opts.config {
        Some(path) => Some(Arc::new(
            config::load_file(path, &load).map_err(|e| anyhow!("{e}"))?,
        )),
        None => None,
    };
    let broadcaster: Arc<Mutex<Option<Broadcaster<Msg>>>> = Arc::new(Mutex::new(None));
    let control_rt = crate::node::control_plane::runtime()?;
    // The waypoint's kinds: from the file, or from Kubernetes (then the file, if any, holds
    // only the mesh).
    let latest_l7: Arc<Mutex<Option<Arc<Snapshot>>>> = Arc::default();
    // The Telemetry API's table, once built (after the waypoint knows its Gateway).
    let telemetry_slot: Arc<std::sync::OnceLock<Arc<TelemetrySource>>> = Arc::default();
    let mut _kube = None;
    let l7 = match (&opts.kube, &file) {
        (None, Some(f)) => f.clone(),
        (None, None) => anyhow::bail!(
            "--config is needed: the waypoint's routes and policies come from it (or from Kubernetes, --kube)"
        ),
        (Some(_), Some(_)) if from_istiod.is_some() => anyhow::bail!(
            "--config and --kube both give the waypoint's routes and policies, and istiod the mesh: leave out --config"
        ),
        (Some(api), f) => {
            if let Some(f) = f
                && (!f.routes().is_empty()
                    || f.security().counts() != (0, 0)
                    || !f.destination_rules().is_empty()
                    || !f.telemetries().is_empty())
            {
                anyhow::bail!(
                    "{}: holds routes, DestinationRules, L7 policies or Telemetries, but with --kube they come from Kubernetes: remove them from the file",
                    opts.config
                        .as_deref()
                        .unwrap_or(std::path::Path::new(""))
                        .display()
                );
            }
            anyhow::ensure!(
                f.is_some() || from_istiod.is_some(),
                "--config is needed for the mesh (workloads and Services), unless istiod gives it (--xds-address)"
            );
            let (b, latest, tele) = (
                broadcaster.clone(),
                latest_l7.clone(),
                telemetry_slot.clone(),
            );
            let apply = move |snap: Arc<Snapshot>| {
                // Under the broadcaster's lock: the cores get the newest, never an older
                // one after it.
                let b = b.lock().unwrap_or_else(|p| p.into_inner());
                *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap.clone());
                if let Some(t) = tele.get() {
                    t.set_telemetries(snap.telemetries().clone());
                }
                if let Some(b) = b.as_ref() {
                    b.send(Msg::L7(snap));
                }
            };
            let (first, rebuilder) = kube::sync(&control_rt, api, &jwks, apply)?;
            _kube = Some(rebuilder);
            first
        }
    };
    // The mesh snapshot in force (for /metrics' labels), and the first one istiod sends.
    let current = Arc::new(Mutex::new(file.clone().unwrap_or_else(|| l7.clone())));
    let mut _control_plane = None;
    let snapshot = match &from_istiod {
        None => file.clone().unwrap_or_else(|| l7.clone()),
        Some(settings) => {
            let first = Arc::new((Mutex::new(None::<Arc<Snapshot>>), std::sync::Condvar::new()));
            let (b, cur, f) = (broadcaster.clone(), current.clone(), first.clone());
            let publish = move |snap: Arc<Snapshot>| {
                *cur.lock().unwrap_or_else(|p| p.into_inner()) = snap.clone();
                if let Some(b) = b.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    b.send(Msg::Config(snap.clone()));
                }
                *f.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap);
                f.1.notify_all();
            };
            let cp = crate::node::control_plane::ControlPlane::new(&control_rt, settings);
            cp.start_xds(settings, None, shutdown.clone(), publish)?;
            _control_plane = Some(cp);
            let deadline = std::time::Instant::now() + XDS_FIRST_WAIT;
            let mut seen = first.0.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(s) = seen.as_ref()
                    && s.workload_by_uid(&opts.workload).is_some()
                {
                    break s.clone();
                }
                let now = std::time::Instant::now();
                if now >= deadline {
                    let workloads = seen.as_ref().map_or(0, |s| s.workloads().len());
                    anyhow::bail!(
                        "--workload {}: istiod has not named this workload within {XDS_FIRST_WAIT:?} ({workloads} workloads received); istiod's uids are <cluster>//Pod/<namespace>/<name>",
                        opts.workload
                    );
                }
                seen = first
                    .1
                    .wait_timeout(seen, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    };
    *current.lock().unwrap_or_else(|p| p.into_inner()) = snapshot.clone();
    let me = snapshot.workload_by_uid(&opts.workload).cloned().ok_or_else(|| {
        anyhow!(
            "--workload {}: no workload with this uid in {} (a workload's uid defaults to namespace/name)",
            opts.workload,
            opts.config.as_deref().unwrap_or(std::path::Path::new("the mesh")).display()
        )
    })?;
    let ip: IpAddr = *me.ips.first().ok_or_else(|| {
        anyhow!(
            "--workload {}: the workload has no IP to listen on",
            opts.workload
        )
    })?;
    let identity = me.identity.clone();
    let gateway = gateway_of(opts.gateway.as_deref(), &me)?;
    tracing::debug!(%gateway, "the waypoint's Gateway, for policies that target it");

    // The Istio CA, istiod's xDS and the JWKS servers are called from a control thread of
    // its own (tokio), never from a core.
    let signer: Arc<dyn Signer> = match &opts.ca {
        CaSource::Dir(dir) => Arc::new(
            ca::load(dir).with_context(|| format!("loading the CA from {}", dir.display()))?,
        ),
        CaSource::Istio(settings) => {
            crate::node::control_plane::istio_ca_signer(&control_rt, settings)?
        }
    };
    jwks::start(
        &control_rt,
        jwks,
        control::grpc::RootCa::System,
        opts.jwks_refresh,
    );
    let publish = {
        let b = broadcaster.clone();
        move |certs: Arc<CertSet>| {
            if let Some(b) = b.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                b.send(Msg::Certs(certs));
            }
        }
    };
    let identities = IdentityManager::start(
        signer,
        ManagerOptions {
            lifetime: opts.cert_lifetime,
            ..ManagerOptions::default()
        },
        publish,
    )?;
    identities.set_identities([identity.clone()])?;
    identities
        .ensure(&identity)
        .map_err(|e| anyhow!("certificate for {identity}: {e}"))?;

    let tracing = match &opts.tracing {
        Some(cfg) => Some(
            waypoint::trace::Tracing::start(cfg).map_err(|e| anyhow!("--otlp-endpoint: {e}"))?,
        ),
        None => None,
    };
    let telemetry = TelemetrySource::start(
        opts.mesh_config.clone(),
        &gateway,
        tracing
            .clone()
            .map(|t| (t, opts.tracing.as_ref().map_or(0.01, |c| c.sampling))),
        opts.otlp_ca.clone(),
        l7.telemetries().clone(),
    )?;
    let _ = telemetry_slot.set(telemetry.clone());
    telemetry.watch(&control_rt, opts.watch_interval);
    let init_telemetry = telemetry.current();
    let conn_limits = opts.conn_limits;
    let listen = SocketAddr::new(ip, opts.hbone_port);
    let init_certs = identities.current();
    let init_snapshot = snapshot.clone();
    let init_l7 = l7.clone();
    let pool_cfg = PoolConfig {
        idle_timeout: opts.pool_idle_timeout,
        ..PoolConfig::default()
    };
    let hbone_port = opts.hbone_port;
    let init_identity = identity.clone();
    let own_uid: Arc<str> = Arc::from(opts.workload.as_str());
    let rt = runtime::launch_with(
        &opts.runtime,
        shutdown.clone(),
        move |worker: Worker<Msg>| {
            let listener = TcpListener::bind_on_core(listen, worker.core())?;
            let certs = Rc::new(RefCell::new(init_certs.clone()));
            let core = Rc::new(Core {
                snapshot: RefCell::new(init_snapshot.clone()),
                l7: RefCell::new(init_l7.clone()),
                certs: certs.clone(),
                identity: init_identity.clone(),
                hbone_port,
                workload: own_uid.clone(),
                arrivals: RefCell::default(),
            });
            let tls_certs = certs.clone();
            let pool = Pool::new(pool_cfg.clone(), move |key: &PoolKey| {
                let certs = tls_certs.borrow();
                let cert = certs.get(&key.src).ok_or_else(|| {
                    hbone::Error::TlsConfig(format!("no certificate for {} yet", key.src))
                })?;
                hbone::tls::client_config(
                    cert.chain.clone(),
                    cert.key_der(),
                    certs.roots(),
                    key.dst_ids.clone(),
                )
            });
            let upstreams = Rc::new(MeshUpstreams {
                core: core.clone(),
                pool,
                counter: std::cell::Cell::new(worker.index() as u64),
            });
            let stats = Rc::new(Stats::default());
            let wp = Waypoint::new(
                init_l7.routes().clone(),
                init_l7.security().clone(),
                Ups(upstreams),
                stats.clone(),
                init_telemetry.clone(),
                conn_limits,
                Some(gateway.clone()),
            );
            Ok(worker_main(worker, listener, core, wp))
        },
    )?;
    {
        // Under the broadcaster's lock, so a certificate or a snapshot published meanwhile
        // reaches the cores after these, never before.
        let mut b = broadcaster.lock().unwrap_or_else(|p| p.into_inner());
        *b = Some(rt.broadcaster());
        rt.broadcast(Msg::Certs(identities.current()));
        if from_istiod.is_some() {
            // What istiod sent while the cores were starting.
            let latest = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
            rt.broadcast(Msg::Config(latest));
        }
        // What Kubernetes changed while the cores were starting.
        if let Some(l) = latest_l7.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            telemetry.set_telemetries(l.telemetries().clone());
            rt.broadcast(Msg::L7(l));
        }
        let tb = rt.broadcaster();
        telemetry.set_publisher(move |t| tb.send(Msg::Telemetry(t)));
        rt.broadcast(Msg::Telemetry(telemetry.current()));
    }

    let _watcher = match (&opts.config, &file) {
        (Some(path), Some(file)) if !opts.watch_interval.is_zero() => {
            let b = rt.broadcaster();
            let current = current.clone();
            let shown = path.clone();
            let mesh_too = from_istiod.is_none();
            let l7_too = opts.kube.is_none();
            let tele = telemetry.clone();
            Some(config::watch(
                path,
                WatchOptions {
                    load,
                    interval: opts.watch_interval,
                    current: Some(file.content_hash()),
                },
                move |res| {
                    // A rejected file was logged by the watcher; the previous config serves
                    // on.
                    let Ok(snap) = res else { return };
                    tracing::info!(config = %shown.display(), routes = snap.routes().len(), "config applied");
                    if mesh_too {
                        *current.lock().unwrap_or_else(|p| p.into_inner()) = snap.clone();
                        b.send(Msg::Config(snap.clone()));
                    }
                    if l7_too {
                        tele.set_telemetries(snap.telemetries().clone());
                        b.send(Msg::L7(snap));
                    }
                },
            )?)
        }
        _ => None,
    };
    if let Some(addr) = opts.metrics {
        serve_metrics(
            addr,
            rt.broadcaster(),
            rt.workers().len(),
            current.clone(),
            telemetry.clone(),
        )?;
    }
    tracing::info!(
        workload = %opts.workload,
        identity = %identity,
        listen = %listen,
        routes = l7.routes().len(),
        mesh = if from_istiod.is_some() { "istiod" } else { "file" },
        l7 = if opts.kube.is_some() { "kubernetes" } else { "file" },
        workers = rt.workers().len(),
        "waypoint ready"
    );
    rt.join()?;
    if let Some(t) = &tracing {
        t.shutdown();
    }
    telemetry.shutdown();
    tracing::info!("drained, exiting");
    Ok(())
}

async fn worker_main(
    worker: Worker<Msg>,
    listener: TcpListener,
    core: Rc<Core>,
    wp: Rc<Waypoint<Ups>>,
) {
    let (w, msg_core, msg_wp) = (worker.clone(), core.clone(), wp.clone());
    runtime::spawn(async move {
        while let Ok(msg) = w.messages().recv().await {
            match msg {
                Msg::Certs(c) => *msg_core.certs.borrow_mut() = c,
                Msg::Config(s) => msg_core.set_snapshot(s),
                Msg::L7(s) => {
                    msg_wp.set_config(s.routes().clone(), s.security().clone());
                    *msg_core.l7.borrow_mut() = s;
                }
                Msg::Telemetry(t) => msg_wp.set_telemetry(t),
                Msg::Stats(reply) => {
                    let _ = reply.send(msg_wp.stats.snapshot());
                }
            }
        }
    })
    .detach();
    let evict = (wp.clone(), worker.clone());
    runtime::spawn(async move {
        while !evict.1.shutdown().is_draining() {
            runtime::time::sleep(Duration::from_secs(10)).await;
            evict.0.upstreams().0.pool.evict_idle();
        }
    })
    .detach();
    worker
        .serve(listener, move |stream, peer| {
            serve_tunnel_conn(core.clone(), wp.clone(), stream, peer)
        })
        .await;
}

/// One HBONE connection from a node proxy: TLS with the waypoint's certificate, then each
/// CONNECT served as an HTTP connection of its own.
async fn serve_tunnel_conn(
    core: Rc<Core>,
    wp: Rc<Waypoint<Ups>>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let tls = match core.server_tls() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "HBONE connection refused");
            return;
        }
    };
    let cfg = ServerConfig::new(tls);
    let handler = move |incoming: hbone::server::Incoming| {
        let (core, wp) = (core.clone(), wp.clone());
        async move {
            let Some(authority) = incoming.request().authority.socket_addr() else {
                let _ = incoming.reject(Status::BadRequest);
                return;
            };
            let snapshot = core.snapshot.borrow().clone();
            let mut target = match target_of(&snapshot, authority) {
                Ok(t) => t,
                Err(status) => {
                    tracing::debug!(%peer, %authority, "CONNECT to no known service");
                    let _ = incoming.reject(status);
                    return;
                }
            };
            drop(snapshot);
            let source = incoming.peer_identity().clone();
            let client = incoming
                .request()
                .forwarded
                .as_ref()
                .and_then(|f| f.client_addr());
            let workload = client.and_then(|a| {
                core.snapshot
                    .borrow()
                    .workload_by_ip(a.ip())
                    .map(|w| w.uid.clone())
            });
            target.peer = Peer {
                principal: Some(source.principal().into()),
                namespace: Some(source.namespace().into()),
                workload,
                // Without a usable `Forwarded`, the tunnel's own peer (Envoy's direct remote
                // has an address always): an address policy never sees "unknown".
                addr: client.or(Some(peer)),
                dest: target.local.map(|a| a.ip()),
            };
            let stream = match incoming.accept() {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "CONNECT could not be answered");
                    return;
                }
            };
            if let Err(e) = wp.serve_connection(stream, target.clone()).await {
                tracing::debug!(%peer, %source, service = %target.service, error = %e, "HTTP connection ended with an error");
            }
        }
    };
    if let Err(e) = hbone::server::serve_tls(stream, &cfg, std::future::pending(), handler).await {
        tracing::debug!(%peer, error = %e, "HBONE connection ended");
    }
}

#[cfg(test)]
mod tests;
