//! The waypoint's upstreams: how a request's Service (or subset) becomes an endpoint, and
//! how that endpoint is dialled (HBONE through the core's pool to the endpoint's node, or
//! plain TCP for a workload outside the mesh). Implements [`waypoint::serve::Upstreams`]
//! on a core's snapshot.
//!
//! The pick runs once per request, on the core, without allocating: the Service port's
//! healthy endpoints, less those outside the subset or ejected by outlier detection, by
//! the DestinationRule's balancing (least-request by default).

use super::*;
use waypoint::dr::{Locality, LocalityPolicy};

/// The waypoint's way to a Service: an endpoint picked by the Service's load balancing,
/// reached over HBONE at its node (or plain TCP outside the mesh).
pub(super) struct MeshUpstreams {
    pub(super) core: Rc<Core>,
    pub(super) pool: Pool,
    pub(super) counter: std::cell::Cell<u64>,
}

/// An upstream stream: HBONE, or TCP for an endpoint outside the mesh.
pub(super) enum Io {
    Hbone(Box<HboneStream>),
    Tcp(TcpStream),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Hbone(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Hbone(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Hbone(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Hbone(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Where `service`:`port` leads right now: the endpoint to dial, as a route.
enum Dial {
    Hbone(Box<PoolKey>, Box<ConnectRequest>),
    Tcp(SocketAddr),
}

impl MeshUpstreams {
    /// See [`Upstreams::pick`].
    fn pick(&self, to: &Upstream, host: &dyn Fn(SocketAddr) -> Host) -> Result<Picked, String> {
        let snapshot = self.core.snapshot.borrow();
        let (service, port) = (&to.service, to.port);
        let svc = snapshot
            .service_for(service)
            .ok_or_else(|| format!("no service {service}"))?;
        if svc.vips.is_empty() {
            return Err(format!("service {service} has no VIP (headless)"));
        }
        let Some(sp) = snapshot.service_port_of(svc, port) else {
            return Err(format!("service {service} does not expose port {port}"));
        };
        let n = self.counter.get();
        self.counter.set(n.wrapping_add(1));
        let l7 = self.core.l7.borrow();
        let keyed = keyed(l7.destination_rules(), to, svc, &snapshot);
        let (to, service) = (&*keyed, &keyed.service);
        // Only a DestinationRule brings locality balancing: look up where the waypoint runs
        // only for a Service that has one.
        let me = match l7.destination_rules().get(service) {
            Some(_) => snapshot.workload_by_uid(&self.core.workload).map(|w| &**w),
            None => None,
        };
        // What the waypoint knows of each endpoint, and when it joined the mesh.
        let arrivals = self.core.arrivals.borrow();
        let now = std::time::Instant::now();
        let host = |addr: SocketAddr| Host {
            age: arrivals.get(&addr.ip()).map(|t| now.duration_since(*t)),
            ..host(addr)
        };
        pick_endpoint(l7.destination_rules(), sp, to, n, me, &host)
    }

    /// `to` keyed for its DestinationRule (see [`keyed`]); the registry is asked only when
    /// the rule may be kept under another key.
    fn keyed_for<'a>(
        &self,
        rules: &waypoint::dr::DestinationRules,
        to: &'a Upstream,
    ) -> std::borrow::Cow<'a, Upstream> {
        if !rules.keys_otherwise(&to.service) {
            return std::borrow::Cow::Borrowed(to);
        }
        let snapshot = self.core.snapshot.borrow();
        match snapshot.service_for(&to.service) {
            Some(svc) => keyed(rules, to, svc, &snapshot),
            None => std::borrow::Cow::Borrowed(to),
        }
    }

    /// How to reach `endpoint` right now: HBONE to its node for a mesh workload, TCP
    /// otherwise.
    fn dial_for(&self, endpoint: &Endpoint) -> Result<Dial, UpstreamError> {
        let snapshot = self.core.snapshot.borrow();
        let workload = snapshot.workload_by_uid(&endpoint.uid).ok_or_else(|| {
            UpstreamError::NoEndpoint(format!("endpoint {} is gone", endpoint.uid))
        })?;
        let addr = endpoint.addr;
        Ok(match workload.protocol {
            Protocol::Hbone => Dial::Hbone(
                Box::new(PoolKey::new(
                    self.core.identity.clone(),
                    vec![workload.identity.clone()],
                    SocketAddr::new(addr.ip(), self.core.hbone_port),
                )),
                Box::new(ConnectRequest::new(addr)),
            ),
            Protocol::Tcp => Dial::Tcp(addr),
        })
    }
}

/// `to`, its Service named as its DestinationRule names it when the route named it the
/// other way (a hostname for a name, or the reverse): see `DestinationRules::key_for`.
fn keyed<'a>(
    rules: &waypoint::dr::DestinationRules,
    to: &'a Upstream,
    svc: &config::snapshot::Service,
    snapshot: &Snapshot,
) -> std::borrow::Cow<'a, Upstream> {
    if !rules.keys_otherwise(&to.service) {
        return std::borrow::Cow::Borrowed(to);
    }
    let at = (&*svc.namespace, &*svc.name, &*svc.hostname);
    match rules.key_for(&to.service, at, !snapshot.name_is_shared(svc)) {
        None => std::borrow::Cow::Borrowed(to),
        Some(service) => std::borrow::Cow::Owned(Upstream {
            service,
            ..to.clone()
        }),
    }
}

/// The endpoint of `sp` for a request to `to`: among the healthy endpoints, those of `to`'s
/// subset, less those outlier detection ejected, by the DestinationRule's balancing,
/// least-request without one (Istio's default for Envoy, so for waypoints). When fewer than
/// `minHealthPercent` of the pool are left, ejections are ignored (Envoy's panic threshold,
/// which Istio's field sets). Filters in place, without allocating: this runs once per
/// request, and a Service's endpoints are a short list.
fn pick_endpoint(
    rules: &waypoint::dr::DestinationRules,
    sp: &ServicePort,
    to: &Upstream,
    counter: u64,
    me: Option<&config::snapshot::Workload>,
    host: &dyn Fn(SocketAddr) -> Host,
) -> Result<Picked, String> {
    let service = &to.service;
    let subset = match &to.subset {
        None => None,
        // The route was checked against the rules it came with; a later file may have
        // dropped the subset while a request was in flight.
        Some(name) => Some(rules.subset(service, name).ok_or_else(|| {
            format!("service {service} has no subset {name:?} in its DestinationRule")
        })?),
    };
    let policy = rules.effective(service, to.subset.as_deref(), to.port);
    let balance = policy.lb.map(|lb| lb.balance).unwrap_or_default();
    let outlier = policy.outlier.cloned();
    let limits = policy.limits.cloned();
    let in_subset =
        |e: &&config::snapshot::Endpoint| subset.is_none_or(|s| s.admits(|k| e.workload.label(k)));
    let pool = match subset {
        None => sp.endpoints.len(),
        Some(_) => sp.endpoints.iter().filter(in_subset).count(),
    };
    let ejected = match &outlier {
        Some(_) => sp
            .endpoints
            .iter()
            .filter(in_subset)
            .filter(|e| host(e.addr).ejected)
            .count(),
        None => 0,
    };
    let min_health = outlier.as_ref().map_or(0, |o| o.min_health_percent);
    // Fewer left than `minHealthPercent`: every member takes traffic again (Envoy's panic
    // mode, which Istio's field sets; off by default).
    let skip_ejected = ejected > 0 && (pool - ejected) * 100 >= pool * min_health as usize;
    let admitted_anywhere =
        |e: &&config::snapshot::Endpoint| in_subset(e) && !(skip_ejected && host(e.addr).ejected);
    // Locality: a distribution by weight, or failover by rank (Istio's default where
    // outlier detection is set), narrows the candidates to one locality or rank.
    let near = near_filter(
        policy.lb.and_then(|lb| lb.locality.as_deref()),
        outlier.is_some(),
        me,
        sp,
        &in_subset,
        &|e| !host(e.addr).ejected,
        counter,
    );
    let admitted = |e: &&config::snapshot::Endpoint| {
        admitted_anywhere(e) && near.as_ref().is_none_or(|n| n.keeps(e))
    };
    let count = match &near {
        None if skip_ejected => pool - ejected,
        None => pool,
        Some(_) => sp.endpoints.iter().filter(admitted).count(),
    };
    let nth = |i: usize| sp.endpoints.iter().filter(admitted).nth(i);
    let chosen = match (balance, to.hash) {
        (waypoint::dr::Balance::ConsistentHash, Some(key)) => waypoint::dr::hash::rendezvous(
            key,
            sp.endpoints.iter().filter(admitted).map(|e| e.addr),
        ),
        _ => {
            let load = |i: usize| nth(i).map_or(u32::MAX, |e| host(e.addr).load);
            let warmup = policy.lb.and_then(|lb| lb.warmup.as_ref());
            // Slow start: weights only while some candidate is new (no cost otherwise).
            match warmup {
                Some(w)
                    if sp
                        .endpoints
                        .iter()
                        .filter(admitted)
                        .any(|e| host(e.addr).age.is_some_and(|a| a < w.window)) =>
                {
                    balance.choose_weighted(count, counter, load, |i| {
                        w.weight(nth(i).and_then(|e| host(e.addr).age))
                    })
                }
                _ => balance.choose(count, counter, load),
            }
        }
    };
    let Some(e) = chosen.and_then(nth) else {
        return Err(match &to.subset {
            Some(name) => format!(
                "service {service} has no healthy endpoint in subset {name:?} for port {}",
                sp.port
            ),
            None => format!(
                "service {service} has no healthy endpoint for port {}",
                sp.port
            ),
        });
    };
    Ok(Picked {
        endpoint: Endpoint {
            uid: e.workload.uid.clone(),
            addr: e.addr,
        },
        outlier,
        pool: pool as u32,
        ejected: ejected as u32,
        limits,
    })
}

/// Where a workload runs, as locality balancing compares it.
fn locality_of(w: &config::snapshot::Workload) -> Locality<'_> {
    Locality {
        region: &w.meta.region,
        zone: &w.meta.zone,
        subzone: &w.meta.subzone,
    }
}

/// Locality's say in a pick, as a filter on endpoints: `distribute`'s weighted choice of a
/// locality for traffic from `me`, or failover's choice of a rank (when the Service has
/// outlier detection and locality balancing is not turned off). `None`: every endpoint
/// (no setting applies, or no locality has a healthy endpoint). `healthy` says whether an
/// endpoint is not ejected.
fn near_filter<'a>(
    policy: Option<&'a LocalityPolicy>,
    has_outlier: bool,
    me: Option<&'a config::snapshot::Workload>,
    sp: &'a ServicePort,
    in_subset: &dyn Fn(&&config::snapshot::Endpoint) -> bool,
    healthy: &dyn Fn(&config::snapshot::Endpoint) -> bool,
    counter: u64,
) -> Option<Near<'a>> {
    static DEFAULT: std::sync::LazyLock<LocalityPolicy> =
        std::sync::LazyLock::new(LocalityPolicy::default);
    let policy = policy.unwrap_or(&DEFAULT);
    if !policy.enabled {
        return None;
    }
    // A draw independent of the balancer's (which mixes the bare counter).
    let draw = waypoint::dr::splitmix64(counter ^ 0x6c6f_6361_6c69_7479);
    let members = || sp.endpoints.iter().filter(|e| in_subset(e));
    let here = me.map(locality_of).unwrap_or_default();
    if let Some(weights) = policy.weights_for(here) {
        // Each endpoint belongs to the first pattern it matches; a locality with no
        // healthy endpoint takes nothing.
        let bucket = |e: &config::snapshot::Endpoint| {
            weights
                .iter()
                .position(|(p, _)| p.matches(locality_of(&e.workload)))
        };
        // Weights of localities with a healthy endpoint (computed twice rather than kept:
        // no allocation per request).
        let live = |i: usize, w: u32| {
            let any = members().any(|e| healthy(e) && bucket(e) == Some(i));
            if any { u64::from(w) } else { 0 }
        };
        let total: u64 = weights
            .iter()
            .enumerate()
            .map(|(i, (_, w))| live(i, *w))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = draw % total;
        let chosen = weights.iter().enumerate().position(|(i, (_, w))| {
            let w = live(i, *w);
            if r < w {
                true
            } else {
                r -= w;
                false
            }
        })?;
        return Some(Near::Bucket { weights, chosen });
    }
    if !has_outlier {
        return None;
    }
    let mut per_rank = [(0u32, 0u32); RANKS];
    for e in members() {
        let r = &mut per_rank[rank_of(policy, me, &e.workload)];
        r.0 += 1;
        r.1 += u32::from(healthy(e));
    }
    let rank = waypoint::dr::locality::rank_for(&per_rank, draw)?;
    Some(Near::Rank { policy, me, rank })
}

/// The endpoints locality balancing keeps for one pick (no allocation: it runs per
/// request).
enum Near<'a> {
    /// Those whose first matching `distribute` pattern is the chosen one.
    Bucket {
        weights: &'a [(waypoint::dr::locality::Pattern, u32)],
        chosen: usize,
    },
    /// Those of one failover rank.
    Rank {
        policy: &'a LocalityPolicy,
        me: Option<&'a config::snapshot::Workload>,
        rank: usize,
    },
}

/// Ranks a pick can have: locality's five, or `failoverPriority`'s labels plus one.
const RANKS: usize = {
    let locality = waypoint::dr::locality::LAST_RANK as usize + 1;
    let labels = waypoint::dr::locality::MAX_PRIORITY_LABELS + 1;
    if locality > labels { locality } else { labels }
};

/// The failover rank of `ep` for the waypoint `me`: by `failoverPriority`'s labels when
/// it has some, else by locality.
fn rank_of(
    policy: &LocalityPolicy,
    me: Option<&config::snapshot::Workload>,
    ep: &config::snapshot::Workload,
) -> usize {
    if policy.failover_priority.is_empty() {
        let here = me.map(locality_of).unwrap_or_default();
        return usize::from(policy.rank(here, locality_of(ep)));
    }
    usize::from(policy.priority_rank(
        |k| me.and_then(|w| topology_label(w, k)),
        |k| topology_label(ep, k),
    ))
}

/// A workload's label `key`, with Istio's topology keys read from its locality and network.
fn topology_label<'a>(w: &'a config::snapshot::Workload, key: &str) -> Option<&'a str> {
    let v = match key {
        "topology.kubernetes.io/region" => Some(&*w.meta.region),
        "topology.kubernetes.io/zone" => Some(&*w.meta.zone),
        "topology.istio.io/subzone" => Some(&*w.meta.subzone),
        "topology.istio.io/network" => Some(&*w.network),
        _ => w.label(key),
    };
    v.filter(|v| !v.is_empty())
}

impl Near<'_> {
    fn keeps(&self, e: &config::snapshot::Endpoint) -> bool {
        let at = locality_of(&e.workload);
        match self {
            Near::Bucket { weights, chosen } => {
                weights.iter().position(|(p, _)| p.matches(at)) == Some(*chosen)
            }
            Near::Rank { policy, me, rank } => rank_of(policy, *me, &e.workload) == *rank,
        }
    }
}

/// Deadline for a plain TCP connect to an endpoint outside the mesh.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The core's [`MeshUpstreams`], shared by its waypoint and its housekeeping.
#[derive(Clone)]
pub(super) struct Ups(pub(super) Rc<MeshUpstreams>);

impl Upstreams for Ups {
    type Io = Io;

    fn pick(
        &self,
        to: &Upstream,
        host: &dyn Fn(SocketAddr) -> Host,
    ) -> Result<Picked, UpstreamError> {
        self.0.pick(to, host).map_err(UpstreamError::NoEndpoint)
    }

    fn limits(&self, to: &Upstream) -> Option<Arc<waypoint::dr::Limits>> {
        let l7 = self.0.core.l7.borrow();
        let rules = l7.destination_rules();
        let to = self.0.keyed_for(rules, to);
        rules
            .limits(&to.service, to.subset.as_deref(), to.port)
            .cloned()
    }

    fn hash_policy(&self, to: &Upstream) -> Option<Arc<waypoint::dr::HashPolicy>> {
        let l7 = self.0.core.l7.borrow();
        let rules = l7.destination_rules();
        let to = self.0.keyed_for(rules, to);
        rules
            .hash(&to.service, to.subset.as_deref(), to.port)
            .cloned()
    }

    fn cluster_name(&self, to: &Upstream) -> Option<String> {
        let snapshot = self.0.core.snapshot.borrow();
        let svc = snapshot.service_for(&to.service)?;
        // Bound to this waypoint: the backend's waypoint is this workload, by address or
        // as a member of the Service its hostname names (istiod's test: the backend is
        // one of this waypoint's Services).
        let me = snapshot.workload_by_uid(&self.0.core.workload);
        let bound = match (svc.waypoint.as_ref().map(|g| &g.target), me) {
            (Some(config::types::GatewayTarget::Address { ip, .. }), Some(me)) => {
                me.ips.contains(ip)
            }
            (
                Some(config::types::GatewayTarget::Hostname {
                    namespace,
                    hostname,
                }),
                Some(me),
            ) => snapshot
                .service(namespace, hostname)
                .is_some_and(|gw| gw.members.iter().any(|w| w.uid == me.uid)),
            _ => false,
        };
        Some(waypoint::serve::cluster_name(
            to.port,
            to.subset.as_deref(),
            &svc.hostname,
            bound,
        ))
    }

    fn local_addr(io: &Io) -> Option<SocketAddr> {
        match io {
            Io::Hbone(s) => s.local_addr(),
            Io::Tcp(s) => s.local_addr().ok(),
        }
    }

    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> Pin<Box<dyn Future<Output = Result<Io, UpstreamError>>>> {
        let dial = self.0.dial_for(endpoint);
        let me = self.0.clone();
        Box::pin(async move {
            match dial? {
                Dial::Hbone(key, req) => me
                    .pool
                    .connect(&key, &req)
                    .await
                    .map(|s| Io::Hbone(Box::new(s)))
                    .map_err(|e| UpstreamError::Connect(e.to_string())),
                Dial::Tcp(addr) => {
                    match runtime::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(addr))
                        .await
                    {
                        Ok(Ok(s)) => Ok(Io::Tcp(s)),
                        Ok(Err(e)) => Err(UpstreamError::Connect(format!("connect {addr}: {e}"))),
                        Err(_) => Err(UpstreamError::Connect(format!(
                            "connect {addr}: no answer in {TCP_CONNECT_TIMEOUT:?}"
                        ))),
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
