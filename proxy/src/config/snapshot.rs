//! The immutable mesh view the data path reads, and the lookups it makes on it.
//!
//! A [`Snapshot`] is built from a [`MeshState`](super::state::MeshState) (whatever fed it:
//! the file or istiod) and never changes; a change makes a new snapshot, handed to cores by
//! the control thread as an `Arc` (one copy per node, not per core). Workload and policy
//! objects are shared with the state and with the previous snapshot, so a rebuild copies
//! pointers and index tables, not the mesh. Invariants that hold for every snapshot:
//! - an IP resolves to at most one workload (host-network workloads are not indexed by IP;
//!   on a conflict the most recently applied workload wins, as in ztunnel) and one service;
//! - every `VIP:port` key maps to one service port whose endpoints are the member
//!   workloads its health policy admits, in the order they were applied;
//! - references that do not resolve (a workload naming a service or policy not known yet)
//!   are skipped, and take effect when the referenced object arrives.
//!
//! Lookups are hash-map reads that do not allocate. Load-balancing state (a counter) belongs
//! to the caller, normally one per core, so picking needs no shared atomics.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::identity::Identity;

pub use super::model::{HealthStatus, LoadBalancing, Protocol, Vip};
use super::policy::{self, Authorization, Decision, Request, Scope};
pub use super::types::{
    AppTunnel, AppTunnelProtocol, Gateway, GatewayTarget, HealthPolicy, LocalityLb, NetworkMode,
    Visibility,
};

/// A workload (pod) of the mesh.
#[derive(Debug, Clone)]
pub struct Workload {
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub service_account: Arc<str>,
    /// Empty for a workload known only by `hostname`.
    pub ips: Vec<IpAddr>,
    /// A DNS name to resolve instead of (or besides) `ips`; empty if none.
    pub hostname: Arc<str>,
    /// Empty for the default network.
    pub network: Arc<str>,
    pub node: Arc<str>,
    pub protocol: Protocol,
    pub network_mode: NetworkMode,
    pub status: HealthStatus,
    /// `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
    pub identity: Identity,
    /// Services it is an endpoint of, with its own target ports.
    pub services: Vec<WorkloadService>,
    /// Keys (`namespace/name`) of the selector-scoped policies that protect it.
    pub authorization_policies: Vec<Arc<str>>,
    /// It sends and receives HBONE itself (no tunnelling by the node).
    pub native_tunnel: bool,
    pub application_tunnel: Option<AppTunnel>,
    pub waypoint: Option<Gateway>,
    pub network_gateway: Option<Gateway>,
    /// `deployment`, `pod`, `job`, `cronjob` (lower case, as ztunnel keeps it).
    pub workload_type: Arc<str>,
    /// Relative weight as an endpoint (1 unless told).
    pub capacity: u32,
    /// What telemetry says of it (Istio's standard labels).
    pub meta: WorkloadMeta,
    /// The pod's labels, sorted by key (the file's `labels`; istiod sends none).
    pub labels: Vec<(Arc<str>, Arc<str>)>,
}

impl Workload {
    /// The value of label `key`, for DestinationRule subsets. A workload with no labels of
    /// its own (every workload from istiod, whose workload API carries none) answers for
    /// the labels its canonical names come from: `app` and `version`, and their
    /// `app.kubernetes.io/*` and `service.istio.io/canonical-*` forms.
    pub fn label(&self, key: &str) -> Option<&str> {
        if !self.labels.is_empty() {
            return self
                .labels
                .binary_search_by(|(k, _)| (**k).cmp(key))
                .ok()
                .map(|i| &*self.labels[i].1);
        }
        let v = match key {
            "app" | "app.kubernetes.io/name" | "service.istio.io/canonical-name" => {
                &self.meta.canonical_name
            }
            "version" | "app.kubernetes.io/version" | "service.istio.io/canonical-revision" => {
                &self.meta.canonical_revision
            }
            _ => return None,
        };
        (!v.is_empty()).then_some(&**v)
    }
}

/// A workload's membership of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadService {
    /// `namespace/hostname`.
    pub key: Arc<str>,
    /// Service port → this workload's target port, overriding the service's (0: use the
    /// service's).
    pub ports: Vec<(u16, u16)>,
}

/// A workload's telemetry names: Istio's `*_workload`, `*_canonical_*`, `*_cluster` and
/// locality labels. Empty strings mean unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadMeta {
    /// The controller (Deployment, ...) the pod belongs to.
    pub workload_name: Arc<str>,
    pub canonical_name: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub cluster_id: Arc<str>,
    pub region: Arc<str>,
    pub zone: Arc<str>,
    pub subzone: Arc<str>,
}

/// A service: a hostname with VIPs whose ports map to endpoint target ports.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub hostname: Arc<str>,
    pub vips: Vec<Vip>,
    /// Service port → target port (0: only endpoints that name their own), in order given.
    pub ports: Vec<(u16, u16)>,
    pub load_balancing: LoadBalancing,
    pub health_policy: HealthPolicy,
    /// Locality preferences (istiod's `load_balancing`); kept as given.
    pub locality_lb: Option<LocalityLb>,
    /// Identities to verify instead of each endpoint's own (usually empty).
    pub subject_alt_names: Vec<Arc<str>>,
    pub waypoint: Option<Gateway>,
    pub canonical: bool,
    pub visibility: Visibility,
    /// Every member workload (healthy or not), in the order applied. Filled by the snapshot.
    pub members: Vec<Arc<Workload>>,
}

impl Service {
    /// `namespace/hostname`, the key workloads use to name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// One endpoint of a service port: a workload and the address to reach it on.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    /// The workload IP (same family as the VIP when it has one) and the target port.
    pub addr: SocketAddr,
}

/// What `VIP:port` resolves to.
#[derive(Debug)]
pub struct ServicePort {
    pub service: Arc<Service>,
    pub port: u16,
    /// The service's target port; an endpoint may override it (its `addr` has the port to use).
    pub target_port: u16,
    /// Healthy endpoints, in file order.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Picks an endpoint by the service's rule; see [`pick`].
    pub fn pick(&self, counter: u64) -> Option<&Endpoint> {
        pick(self.service.load_balancing, &self.endpoints, counter)
    }
}

/// Picks an endpoint: round-robin takes `counter % n`; random takes a well-mixed hash of
/// `counter`, so a caller that just increments a counter still gets a random-looking spread.
/// Pure: the caller owns the counter (one per core, no atomics).
pub fn pick(lb: LoadBalancing, endpoints: &[Endpoint], counter: u64) -> Option<&Endpoint> {
    endpoints.get(pick_index(lb, endpoints.len(), counter)?)
}

/// The index [`pick`] takes among `n` candidates; `None` when there are none.
pub fn pick_index(lb: LoadBalancing, n: usize, counter: u64) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let n = n as u64;
    let i = match lb {
        LoadBalancing::RoundRobin => counter % n,
        LoadBalancing::Random => splitmix64(counter) % n,
    };
    Some(i as usize)
}

/// SplitMix64's finalizer: a bijective mix with full avalanche, so consecutive counters
/// land on unrelated indices. (Steele, Lea, Flood 2014; the constants are theirs.)
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where an outbound connection's original destination leads.
#[derive(Debug)]
pub enum Destination<'a> {
    /// A service VIP:port, with the endpoint picked.
    Service {
        port: &'a ServicePort,
        endpoint: &'a Endpoint,
    },
    /// A service VIP:port with no healthy endpoint.
    NoEndpoint { port: &'a ServicePort },
    /// A workload IP, addressed directly (the port is kept).
    Workload {
        workload: &'a Arc<Workload>,
        addr: SocketAddr,
    },
    /// A VIP on a port the service does not expose.
    UnknownServicePort { service: &'a Arc<Service> },
    /// Not in the mesh: passthrough (or reject, as the caller's policy says).
    Unknown,
}

/// The mesh as the data path sees it. Immutable; shared by `Arc`.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) node: Option<Arc<str>>,
    /// Sorted by uid.
    pub(crate) workloads: Vec<Arc<Workload>>,
    /// Sorted by `namespace/hostname`.
    pub(crate) services: Vec<Arc<Service>>,
    /// Sorted by key.
    pub(crate) policies: Vec<Arc<Authorization>>,
    pub(crate) policy_by_key: HashMap<Arc<str>, Arc<Authorization>>,
    pub(crate) global_policies: Vec<Arc<Authorization>>,
    pub(crate) namespace_policies: HashMap<Arc<str>, Vec<Arc<Authorization>>>,
    pub(crate) by_ip: HashMap<IpAddr, Arc<Workload>>,
    pub(crate) by_uid: HashMap<Arc<str>, Arc<Workload>>,
    pub(crate) by_service_key: HashMap<Arc<str>, Arc<Service>>,
    /// Services by name (the waypoint looks up routes' backends by namespace and name, once
    /// per request), each list in `services` order.
    pub(crate) by_name: HashMap<Arc<str>, Vec<Arc<Service>>>,
    /// Services by hostname (a route's `Hostname` backend, a VirtualService's host from the
    /// cluster); of a hostname declared in two namespaces, the first by `namespace/hostname`.
    pub(crate) by_hostname: HashMap<Arc<str>, Arc<Service>>,
    /// Service ports whose VIP another Service took in `by_vip`, by `namespace/hostname`
    /// (empty unless VIPs are shared).
    pub(crate) shadowed: HashMap<Arc<str>, Vec<ServicePort>>,
    pub(crate) by_vip_ip: HashMap<IpAddr, Arc<Service>>,
    pub(crate) by_vip: HashMap<SocketAddr, ServicePort>,
    pub(crate) local: Vec<Arc<Workload>>,
    pub(crate) content_hash: u64,
    /// The waypoint's HTTP routes (empty from xDS: istiod sends those to Envoy waypoints).
    pub(crate) routes: Arc<waypoint::route::RouteTable>,
    /// The waypoint's L7 policies and JWT rules.
    pub(crate) security: Arc<waypoint::security::SecurityTable>,
    /// The waypoint's DestinationRules (subsets and balancing).
    pub(crate) destination_rules: Arc<waypoint::dr::DestinationRules>,
    /// The waypoint's Telemetry objects, checked; merged with the MeshConfig's providers
    /// into a table by the waypoint.
    pub(crate) telemetries: Arc<Vec<waypoint::telemetry::TelemetrySpec>>,
}

impl Snapshot {
    /// This node's name, if any.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    pub fn workloads(&self) -> &[Arc<Workload>] {
        &self.workloads
    }

    /// The compiled HTTP routes (`httpRoutes`).
    pub fn routes(&self) -> &Arc<waypoint::route::RouteTable> {
        &self.routes
    }

    /// The compiled L7 policies and JWT rules.
    pub fn security(&self) -> &Arc<waypoint::security::SecurityTable> {
        &self.security
    }

    /// The Telemetry objects (`telemetries`).
    pub fn telemetries(&self) -> &Arc<Vec<waypoint::telemetry::TelemetrySpec>> {
        &self.telemetries
    }

    /// The DestinationRules, by Service.
    pub fn destination_rules(&self) -> &waypoint::dr::DestinationRules {
        &self.destination_rules
    }

    /// The service `namespace/name` (by name, as routes refer to Services).
    pub fn service_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.by_name
            .get(name)?
            .iter()
            .find(|s| &*s.namespace == namespace)
    }

    /// The service whose hostname is `hostname` (see `by_hostname`).
    pub fn service_by_hostname(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.by_hostname.get(hostname)
    }

    /// The service a route names: by namespace and name, or by hostname.
    pub fn service_for(&self, r: &waypoint::route::ServiceRef) -> Option<&Arc<Service>> {
        match r.host() {
            Some(host) => self.service_by_hostname(host),
            None => self.service_by_name(&r.namespace, &r.name),
        }
    }

    /// Whether another Service has `svc`'s namespace and name (a ServiceEntry's hosts are
    /// each a Service of the entry's namespace and name).
    pub fn name_is_shared(&self, svc: &Service) -> bool {
        self.by_name.get(&svc.name).is_some_and(|all| {
            all.iter()
                .filter(|s| s.namespace == svc.namespace)
                .nth(1)
                .is_some()
        })
    }

    /// How a route's backend names exactly `svc`, when its namespace and name do not (see
    /// [`Snapshot::name_is_shared`]): by hostname, if that finds `svc` itself (a hostname
    /// two namespaces declare does not). `None`: the name is as good as it gets.
    pub fn exact_ref(&self, svc: &Arc<Service>) -> Option<waypoint::route::ServiceRef> {
        let own_host = self
            .by_hostname
            .get(&svc.hostname)
            .is_some_and(|s| Arc::ptr_eq(s, svc));
        (own_host && self.name_is_shared(svc))
            .then(|| waypoint::route::ServiceRef::by_host(&svc.hostname))
    }

    /// The port `port` of `svc` with its endpoints. Found by the Service's VIPs; a VIP that
    /// several Services declare (a ServiceEntry's `addresses` are every one of its hosts')
    /// serves the last of them there, and the others' ports are kept aside for this.
    pub fn service_port_of(&self, svc: &Arc<Service>, port: u16) -> Option<&ServicePort> {
        let by_vip = svc.vips.iter().find_map(|vip| {
            self.by_vip
                .get(&SocketAddr::new(vip.ip, port))
                .filter(|sp| Arc::ptr_eq(&sp.service, svc))
        });
        by_vip.or_else(|| {
            self.shadowed
                .get(&*svc.key())?
                .iter()
                .find(|sp| sp.port == port)
        })
    }

    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    pub fn policies(&self) -> &[Arc<Authorization>] {
        &self.policies
    }

    /// The policy with this key (`namespace/name`).
    pub fn policy(&self, key: &str) -> Option<&Arc<Authorization>> {
        self.policy_by_key.get(key)
    }

    /// The distinct identities of local workloads: what the identity manager must hold
    /// certificates for.
    pub fn local_identities(&self) -> Vec<Identity> {
        let mut ids: Vec<Identity> = self.local.iter().map(|w| w.identity.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Workloads whose `node` is this node, in the order applied.
    pub fn local_workloads(&self) -> &[Arc<Workload>] {
        &self.local
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.by_uid.get(uid)
    }

    /// A local workload owning `ip` (what inbound HBONE's `:authority` must name).
    pub fn local_workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip
            .get(&ip)
            .filter(|w| self.node.as_deref() == Some(&*w.node))
    }

    /// The service owning a VIP, whatever the port.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip_ip.get(&ip)
    }

    /// The service port behind `VIP:port`.
    pub fn service_port(&self, vip: SocketAddr) -> Option<&ServicePort> {
        self.by_vip.get(&vip)
    }

    /// The service with key `namespace/hostname`.
    pub fn service_by_key(&self, key: &str) -> Option<&Arc<Service>> {
        self.by_service_key.get(key)
    }

    /// The service named `namespace/hostname`.
    pub fn service(&self, namespace: &str, hostname: &str) -> Option<&Arc<Service>> {
        self.service_by_key(&format!("{namespace}/{hostname}"))
    }

    /// The service an inbound connection to `workload` on `port` was most likely for (Istio's
    /// `destination_service`, guessed as ztunnel does): the first of the workload's services
    /// that maps a port to `port` for this workload.
    pub fn inbound_service(&self, workload: &Workload, port: u16) -> Option<&Arc<Service>> {
        workload.services.iter().find_map(|membership| {
            let svc = self.service_by_key(&membership.key)?;
            let serves = svc.ports.iter().any(|&(svc_port, target)| {
                let own = membership
                    .ports
                    .iter()
                    .find(|(p, _)| *p == svc_port)
                    .map_or(0, |(_, t)| *t);
                (if own != 0 { own } else { target }) == port
            });
            serves.then_some(svc)
        })
    }

    /// Resolves an outbound original destination; `counter` drives the endpoint pick.
    pub fn resolve(&self, dst: SocketAddr, counter: u64) -> Destination<'_> {
        if let Some(port) = self.by_vip.get(&dst) {
            return match port.pick(counter) {
                Some(endpoint) => Destination::Service { port, endpoint },
                None => Destination::NoEndpoint { port },
            };
        }
        if let Some(service) = self.by_vip_ip.get(&dst.ip()) {
            return Destination::UnknownServicePort { service };
        }
        if let Some(workload) = self.by_ip.get(&dst.ip()) {
            return Destination::Workload {
                workload,
                addr: dst,
            };
        }
        Destination::Unknown
    }

    /// The policies that apply to connections to `dst`: every global policy, every
    /// namespace policy of its namespace, and the selector policies it names (names not
    /// known yet are skipped, as ztunnel does during a push).
    pub fn policies_for<'a>(
        &'a self,
        dst: &'a Workload,
    ) -> impl Iterator<Item = &'a Authorization> + Clone + 'a {
        let namespace = self
            .namespace_policies
            .get(&dst.namespace)
            .map(Vec::as_slice)
            .unwrap_or_default();
        self.global_policies
            .iter()
            .chain(namespace)
            .map(|p| &**p)
            .chain(
                dst.authorization_policies
                    .iter()
                    .filter_map(|k| self.policy_by_key.get(k))
                    .filter(|p| p.scope == Scope::WorkloadSelector)
                    .map(|p| &**p),
            )
    }

    /// L4 authorization of a connection to workload `dst` (see `config::policy`).
    pub fn decide(&self, req: &Request<'_>, dst: &Workload) -> Decision {
        policy::decide(self.policies_for(dst), req)
    }

    /// A hash of what this snapshot was built from (the file's bytes, or the xDS state's
    /// generation): the config dump's change key.
    pub fn content_hash(&self) -> u64 {
        self.content_hash
    }

    /// Counts for `ringmesh config check` and logs.
    pub fn summary(&self) -> Summary {
        Summary {
            node: self.node.as_deref().map(str::to_string),
            workloads: self.workloads.len(),
            local_workloads: self.local.len(),
            services: self.services.len(),
            service_ports: self.by_vip.len(),
            policies: self.policies.len(),
            routes: self.routes.len(),
            destination_rules: self.destination_rules.len(),
            l7_policies: self.security.counts(),
            telemetries: self.telemetries.len(),
        }
    }
}

/// What a valid file holds, in counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub node: Option<String>,
    pub workloads: usize,
    pub local_workloads: usize,
    pub services: usize,
    /// Distinct `VIP:port` keys.
    pub service_ports: usize,
    pub policies: usize,
    /// HTTP routes (HTTPRoutes and VirtualServices) for the waypoint.
    pub routes: usize,
    /// DestinationRules for the waypoint.
    pub destination_rules: usize,
    /// The waypoint's authorization policies and request authentications.
    pub l7_policies: (usize, usize),
    /// The waypoint's Telemetry objects.
    pub telemetries: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} workloads, {} services ({} VIP:port), {} policies",
            self.workloads, self.services, self.service_ports, self.policies
        )?;
        let (authz, authn) = self.l7_policies;
        if self.routes + self.destination_rules + authz + authn + self.telemetries > 0 {
            write!(
                f,
                "; for waypoints: {} routes, {authz} authorization policies, {authn} request authentications",
                self.routes
            )?;
            if self.destination_rules > 0 {
                write!(f, ", {} destination rules", self.destination_rules)?;
            }
            if self.telemetries > 0 {
                write!(f, ", {} telemetries", self.telemetries)?;
            }
        }
        match &self.node {
            Some(node) => write!(
                f,
                "; node {node:?} has {} local workloads",
                self.local_workloads
            ),
            None => write!(f, "; no node set"),
        }
    }
}
