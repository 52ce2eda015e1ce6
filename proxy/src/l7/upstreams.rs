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
            .service_by_name(&service.namespace, &service.name)
            .ok_or_else(|| format!("no service {service}"))?;
        let vip = svc
            .vips
            .first()
            .ok_or_else(|| format!("service {service} has no VIP (headless)"))?;
        let Some(sp) = snapshot.service_port(SocketAddr::new(vip.ip, port)) else {
            return Err(format!("service {service} does not expose port {port}"));
        };
        let n = self.counter.get();
        self.counter.set(n.wrapping_add(1));
        let l7 = self.core.l7.borrow();
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
        l7.destination_rules()
            .limits(&to.service, to.subset.as_deref(), to.port)
            .cloned()
    }

    fn hash_policy(&self, to: &Upstream) -> Option<Arc<waypoint::dr::HashPolicy>> {
        let l7 = self.0.core.l7.borrow();
        l7.destination_rules()
            .hash(&to.service, to.subset.as_deref(), to.port)
            .cloned()
    }

    fn cluster_name(&self, to: &Upstream) -> Option<String> {
        let snapshot = self.0.core.snapshot.borrow();
        let svc = snapshot.service_by_name(&to.service.namespace, &to.service.name)?;
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
mod tests {
    use super::*;

    /// `reviews` has three endpoints: r1 and r2 labelled v1 (r2 unhealthy), r3 with no labels
    /// of its own and canonical revision v2 (as a workload from istiod would be).
    const MESH: &str = r#"
workloads:
  - {name: r1, namespace: demo, workloadIps: ["10.0.0.1"], protocol: HBONE, labels: {version: v1, app: reviews}, services: [demo/reviews.demo.svc.cluster.local]}
  - {name: r2, namespace: demo, workloadIps: ["10.0.0.2"], protocol: HBONE, labels: {version: v1}, status: Unhealthy, services: [demo/reviews.demo.svc.cluster.local]}
  - {name: r3, namespace: demo, workloadIps: ["10.0.0.3"], protocol: HBONE, canonicalRevision: v2, services: [demo/reviews.demo.svc.cluster.local]}
  - {name: r4, namespace: demo, workloadIps: ["10.0.0.4"], protocol: HBONE, labels: {version: v1, app: reviews}, services: [demo/reviews.demo.svc.cluster.local]}
services:
  - {name: reviews, namespace: demo, hostname: reviews.demo.svc.cluster.local, vips: ["/10.1.0.1"], ports: {80: 9080}}
destinationRules:
  - name: reviews
    namespace: demo
    host: reviews
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
      - {name: v3, labels: {version: v3}}
      - {name: random, labels: {app: reviews}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
      - {name: least, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}
      - {name: guarded, labels: {version: v1}, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 2}}}
      - {name: panicky, labels: {version: v1}, trafficPolicy: {outlierDetection: {minHealthPercent: 60}}}
      - {name: slow-rr, labels: {app: reviews}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 100s}}}
      - {name: slow-lr, labels: {app: reviews}, trafficPolicy: {loadBalancer: {warmup: {duration: 100s, minimumPercent: 10}}}}
      - {name: sticky, labels: {app: reviews}, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}, outlierDetection: {consecutive5xxErrors: 2}}}
"#;

    fn picks(snapshot: &Snapshot, subset: Option<&str>, n: u64) -> Result<Vec<String>, String> {
        picks_loaded(snapshot, subset, n, &|_| 0)
    }

    fn picks_loaded(
        snapshot: &Snapshot,
        subset: Option<&str>,
        n: u64,
        load: &dyn Fn(SocketAddr) -> u32,
    ) -> Result<Vec<String>, String> {
        picks_with(snapshot, subset, n, &|a| Host {
            load: load(a),
            ejected: false,
            ..Host::default()
        })
    }

    fn picks_with(
        snapshot: &Snapshot,
        subset: Option<&str>,
        n: u64,
        host: &dyn Fn(SocketAddr) -> Host,
    ) -> Result<Vec<String>, String> {
        let sp = snapshot
            .service_port(SocketAddr::from(([10, 1, 0, 1], 80)))
            .expect("service port");
        let to = Upstream {
            service: ServiceRef::new("demo", "reviews"),
            subset: subset.map(Arc::from),
            port: 80,
            hash: None,
        };
        (0..n)
            .map(|i| {
                pick_endpoint(snapshot.destination_rules(), sp, &to, i, None, host).map(|p| {
                    let w = snapshot
                        .workload_by_uid(&p.endpoint.uid)
                        .expect("a workload");
                    w.name.to_string()
                })
            })
            .collect()
    }

    #[test]
    fn subsets_pick_only_their_healthy_endpoints() {
        let snap = config::parse(MESH, &LoadOptions::default()).unwrap();
        // Round robin over the whole Service's healthy endpoints.
        assert_eq!(picks(&snap, None, 3).unwrap(), ["r1", "r3", "r4"]);
        // v1: r1 and r4 (r2 is unhealthy), in turn.
        assert_eq!(
            picks(&snap, Some("v1"), 4).unwrap(),
            ["r1", "r4", "r1", "r4"]
        );
        // v2: r3 has no labels; its canonical revision answers for `version`.
        assert_eq!(picks(&snap, Some("v2"), 2).unwrap(), ["r3", "r3"]);
        // A subset no endpoint belongs to is an error, never another subset's endpoint.
        let e = picks(&snap, Some("v3"), 1).unwrap_err();
        assert!(e.contains("no healthy endpoint in subset \"v3\""), "{e}");
        let e = picks(&snap, Some("gone"), 1).unwrap_err();
        assert!(e.contains("no subset \"gone\""), "{e}");
        // The subset's own balancing (random) still keeps to its members.
        let random = picks(&snap, Some("random"), 64).unwrap();
        assert!(random.iter().all(|w| w == "r1" || w == "r4"), "{random:?}");
        assert!(random.iter().any(|w| w == "r1") && random.iter().any(|w| w == "r4"));
        assert_ne!(random, picks(&snap, Some("v1"), 64).unwrap());
        // Least-request: r1 busy, so its subset's other member takes every request.
        let busy = |a: SocketAddr| u32::from(a.ip() == IpAddr::from([10, 0, 0, 1])) * 3;
        let least = picks_loaded(&snap, Some("least"), 32, &busy).unwrap();
        assert!(least.iter().all(|w| w == "r4"), "{least:?}");
        let idle = picks(&snap, Some("least"), 64).unwrap();
        assert!(idle.iter().any(|w| w == "r1") && idle.iter().any(|w| w == "r4"));
    }

    #[test]
    fn a_hash_keeps_to_one_endpoint_until_it_is_ejected() {
        let snap = config::parse(MESH, &LoadOptions::default()).unwrap();
        let sp = snap
            .service_port(SocketAddr::from(([10, 1, 0, 1], 80)))
            .unwrap();
        let pick = |hash: Option<u64>, n: u64, host: &dyn Fn(SocketAddr) -> Host| {
            let to = Upstream {
                service: ServiceRef::new("demo", "reviews"),
                subset: Some(Arc::from("sticky")),
                port: 80,
                hash,
            };
            pick_endpoint(snap.destination_rules(), sp, &to, n, None, host)
                .unwrap()
                .endpoint
                .addr
        };
        let healthy = |_| Host::default();
        // Whatever the counter (the core's turn), one key goes to one endpoint; keys
        // spread over both members of the subset (r1 and r4).
        let mut seen = std::collections::HashSet::new();
        for key in 0..64u64 {
            let first = pick(Some(key), 0, &healthy);
            assert!((1..8).all(|n| pick(Some(key), n, &healthy) == first));
            seen.insert(first);
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        // The endpoint a key prefers is ejected: the key goes to the other, and back after.
        let key = 7;
        let home = pick(Some(key), 0, &healthy);
        let out = |a: SocketAddr| Host {
            load: 0,
            ejected: a == home,
            ..Host::default()
        };
        assert_ne!(pick(Some(key), 0, &out), home);
        assert_eq!(pick(Some(key), 0, &healthy), home);
        // No key: spread at random over the subset.
        let keyless: std::collections::HashSet<_> =
            (0..64).map(|n| pick(None, n, &healthy)).collect();
        assert_eq!(keyless.len(), 2);
    }

    /// `near` has three endpoints: one in the waypoint's zone, one in another zone of its
    /// region, one in the failover region.
    const NEAR: &str = r#"
workloads:
  - {name: wp, namespace: demo, workloadIps: ["10.0.9.9"], protocol: HBONE, locality: {region: us-east, zone: a, subzone: "1"}}
  - {name: l1, namespace: demo, workloadIps: ["10.0.0.1"], protocol: HBONE, locality: {region: us-east, zone: a, subzone: "1"}, services: [demo/near.demo.svc.cluster.local]}
  - {name: l2, namespace: demo, workloadIps: ["10.0.0.2"], protocol: HBONE, locality: {region: us-east, zone: b, subzone: "1"}, services: [demo/near.demo.svc.cluster.local]}
  - {name: l3, namespace: demo, workloadIps: ["10.0.0.3"], protocol: HBONE, locality: {region: us-west, zone: a, subzone: "1"}, services: [demo/near.demo.svc.cluster.local]}
services:
  - {name: near, namespace: demo, hostname: near.demo.svc.cluster.local, vips: ["/10.1.0.2"], ports: {80: 9080}}
destinationRules:
  - name: near
    namespace: demo
    host: near
    trafficPolicy:
      outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100}
      loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {failover: [{from: us-east, to: us-west}]}}
    subsets:
      - name: none
        trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: false}}}
      - name: prio
        trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {failoverPriority: [topology.kubernetes.io/zone]}}}
      - name: split
        trafficPolicy:
          loadBalancer:
            simple: ROUND_ROBIN
            localityLbSetting: {distribute: [{from: us-east/a/*, to: {us-east/a/*: 80, us-west/*: 20}}]}
"#;

    #[test]
    fn locality_keeps_traffic_near_and_fails_over_in_rank_order() {
        let snap = config::parse(NEAR, &LoadOptions::default()).unwrap();
        let sp = snap
            .service_port(SocketAddr::from(([10, 1, 0, 2], 80)))
            .unwrap();
        let wp = snap
            .workload_by_uid("demo/wp")
            .expect("the waypoint's workload");
        let me = Some(&**wp);
        let counts = |subset: Option<&str>, out: &[u8]| {
            let mut n = std::collections::BTreeMap::<String, u32>::new();
            let to = Upstream {
                service: ServiceRef::new("demo", "near"),
                subset: subset.map(Arc::from),
                port: 80,
                hash: None,
            };
            let host = |a: SocketAddr| Host {
                load: 0,
                ejected: matches!(a.ip(), IpAddr::V4(ip) if out.contains(&ip.octets()[3])),
                ..Host::default()
            };
            for i in 0..1000 {
                let p = pick_endpoint(snap.destination_rules(), sp, &to, i, me, &host).unwrap();
                let w = snap.workload_by_uid(&p.endpoint.uid).unwrap();
                *n.entry(w.name.to_string()).or_default() += 1;
            }
            n
        };
        let only = |name: &str| std::collections::BTreeMap::from([(name.to_string(), 1000)]);
        // All healthy: the waypoint's own zone takes everything.
        assert_eq!(counts(None, &[]), only("l1"));
        // l1 out: its region's other zone; then the failover region.
        assert_eq!(counts(None, &[1]), only("l2"));
        assert_eq!(counts(None, &[1, 2]), only("l3"));
        // Turned off: round robin over all three.
        let off = counts(Some("none"), &[]);
        assert_eq!(off.values().copied().collect::<Vec<_>>(), [334, 333, 333]);
        // Distribute: 80 % to the waypoint's zone, 20 % to us-west (l2 matches neither).
        let split = counts(Some("split"), &[]);
        let (l1, l3) = (split["l1"], split["l3"]);
        assert!(!split.contains_key("l2"), "{split:?}");
        assert!((740..=860).contains(&l1) && l1 + l3 == 1000, "{split:?}");
        // A locality with nothing healthy takes nothing: us-west gets all.
        assert_eq!(counts(Some("split"), &[1]), only("l3"));
        // failoverPriority by zone: l1 and l3 share the waypoint's zone name, whatever the
        // region; l2 only when both are out.
        let prio = counts(Some("prio"), &[]);
        assert_eq!(
            (prio.get("l1"), prio.get("l2"), prio.get("l3")),
            (Some(&500), None, Some(&500))
        );
        assert_eq!(counts(Some("prio"), &[1, 3]), only("l2"));
    }

    #[test]
    fn a_new_endpoint_starts_slow_and_takes_its_full_share_after_the_window() {
        let snap = config::parse(MESH, &LoadOptions::default()).unwrap();
        let r4 = IpAddr::from([10, 0, 0, 4]);
        // r4 joined 10 s ago (weight 0.1 of 100 s), or 60 s ago (0.6), or long ago.
        let aged = |secs: Option<u64>, r1_load: u32| {
            move |a: SocketAddr| Host {
                load: if a.ip() == r4 { 0 } else { r1_load },
                age: secs.filter(|_| a.ip() == r4).map(Duration::from_secs),
                ..Host::default()
            }
        };
        let share = |subset: &str, host: &dyn Fn(SocketAddr) -> Host| {
            let v = picks_with(&snap, Some(subset), 2000, host).unwrap();
            v.iter().filter(|w| *w == "r4").count()
        };
        // Round robin: in proportion to weight, 0.1/1.1 and 0.6/1.6 of 2,000.
        let young = share("slow-rr", &aged(Some(10), 0));
        assert!((120..=250).contains(&young), "{young}");
        let older = share("slow-rr", &aged(Some(60), 0));
        assert!((650..=850).contains(&older), "{older}");
        assert_eq!(share("slow-rr", &aged(Some(100), 0)), 1000);
        assert_eq!(share("slow-rr", &aged(None, 0)), 1000);
        // Least-request: weight over requests in flight; r1 idle wins every draw, r1 with
        // 12 in flight (1/13 < 0.1) loses them all.
        assert_eq!(share("slow-lr", &aged(Some(10), 0)), 0);
        assert_eq!(share("slow-lr", &aged(Some(10), 12)), 2000);
    }

    #[test]
    fn ejected_endpoints_are_left_out_while_enough_remain() {
        let snap = config::parse(MESH, &LoadOptions::default()).unwrap();
        let r1 = IpAddr::from([10, 0, 0, 1]);
        let r1_out = |a: SocketAddr| Host {
            load: 0,
            ejected: a.ip() == r1,
            ..Host::default()
        };
        let all_out = |_| Host {
            load: 0,
            ejected: true,
            ..Host::default()
        };
        let both = |v: &[String]| v.iter().any(|w| w == "r1") && v.iter().any(|w| w == "r4");
        // With outlier detection, an ejected endpoint takes nothing.
        let v = picks_with(&snap, Some("guarded"), 32, &r1_out).unwrap();
        assert!(v.iter().all(|w| w == "r4"), "{v:?}");
        // What the waypoint is told, to judge the answer: the policy and the pool.
        let sp = snap
            .service_port(SocketAddr::from(([10, 1, 0, 1], 80)))
            .unwrap();
        let to = Upstream {
            service: ServiceRef::new("demo", "reviews"),
            subset: Some(Arc::from("guarded")),
            port: 80,
            hash: None,
        };
        let p = pick_endpoint(snap.destination_rules(), sp, &to, 0, None, &r1_out).unwrap();
        assert_eq!((p.pool, p.ejected), (2, 1));
        assert_eq!(p.outlier.map(|o| o.consecutive_5xx), Some(2));
        // Everyone ejected: no healthy upstream (Istio's default panic threshold, 0).
        let e = picks_with(&snap, Some("guarded"), 1, &all_out).unwrap_err();
        assert!(e.contains("no healthy endpoint"), "{e}");
        // minHealthPercent 60: one of two left is too few, so ejections are ignored.
        assert!(both(
            &picks_with(&snap, Some("panicky"), 64, &r1_out).unwrap()
        ));
        // No outlier detection for the subset: the flag means nothing.
        assert!(both(&picks_with(&snap, Some("v1"), 64, &r1_out).unwrap()));
    }
}
