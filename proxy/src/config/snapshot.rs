//! The immutable, validated mesh config and the lookups the data path makes on it.
//!
//! A [`Snapshot`] is built once from a whole file (`build.rs`) and never changes; a new file
//! makes a new snapshot, handed to cores by the control thread. Invariants that hold for
//! every snapshot (checked at build time, so lookups never re-check):
//! - every workload IP belongs to exactly one workload and is not a service VIP;
//! - every VIP belongs to exactly one service; every `VIP:port` key maps to one service port;
//! - every service reference and policy reference resolves;
//! - every workload has a valid SPIFFE identity;
//! - endpoint lists hold only healthy workloads, in file order.
//!
//! Lookups are hash-map reads that do not allocate. Load-balancing state (a counter) belongs
//! to the caller, normally one per core, so picking needs no shared atomics.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::identity::Identity;

pub use super::model::{HealthStatus, LoadBalancing, Protocol, Vip};
use super::policy::{self, Decision, Policy};

/// A workload (pod) of the mesh.
#[derive(Debug)]
pub struct Workload {
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub service_account: Arc<str>,
    pub ips: Vec<IpAddr>,
    pub node: Arc<str>,
    pub protocol: Protocol,
    pub status: HealthStatus,
    /// `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
    pub identity: Identity,
    /// Services it is an endpoint of, as `namespace/hostname`.
    pub services: Vec<Arc<str>>,
    /// Indices into `Snapshot::policies` that apply to this workload.
    pub(crate) policies: Vec<u32>,
    /// What telemetry says of it (Istio's standard labels).
    pub meta: WorkloadMeta,
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
#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub hostname: Arc<str>,
    pub vips: Vec<Vip>,
    /// Service port → target port, in file order.
    pub ports: Vec<(u16, u16)>,
    pub load_balancing: LoadBalancing,
    /// Every member workload (healthy or not), in file order.
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
    if endpoints.is_empty() {
        return None;
    }
    let n = endpoints.len() as u64;
    let i = match lb {
        LoadBalancing::RoundRobin => counter % n,
        LoadBalancing::Random => splitmix64(counter) % n,
    };
    endpoints.get(i as usize)
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

/// The validated mesh config. Immutable; share it with `Arc` (control thread) or `Rc`.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) node: Option<Arc<str>>,
    pub(crate) workloads: Vec<Arc<Workload>>,
    pub(crate) services: Vec<Arc<Service>>,
    pub(crate) policies: Vec<Policy>,
    pub(crate) by_ip: HashMap<IpAddr, Arc<Workload>>,
    pub(crate) by_uid: HashMap<Arc<str>, Arc<Workload>>,
    pub(crate) by_vip_ip: HashMap<IpAddr, Arc<Service>>,
    pub(crate) by_vip: HashMap<SocketAddr, ServicePort>,
    pub(crate) local: Vec<Arc<Workload>>,
    pub(crate) content_hash: u64,
}

impl Snapshot {
    /// This node's name (from the file's `node:` or the override), if any.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    pub fn workloads(&self) -> &[Arc<Workload>] {
        &self.workloads
    }

    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The distinct identities of local workloads: what the identity manager must hold
    /// certificates for.
    pub fn local_identities(&self) -> Vec<Identity> {
        let mut ids: Vec<Identity> = self.local.iter().map(|w| w.identity.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Workloads whose `node` is this node, in file order.
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

    /// The service named `namespace/hostname`.
    pub fn service(&self, namespace: &str, hostname: &str) -> Option<&Arc<Service>> {
        self.services
            .iter()
            .find(|s| &*s.namespace == namespace && &*s.hostname == hostname)
    }

    /// The service an inbound connection to `workload` on `port` was most likely for (Istio's
    /// `destination_service`, guessed as ztunnel does): the first of the workload's services
    /// that maps a port to `port` for this workload.
    pub fn inbound_service(&self, workload: &Arc<Workload>, port: u16) -> Option<&Arc<Service>> {
        workload.services.iter().find_map(|key| {
            let (ns, host) = key.split_once('/')?;
            let svc = self.service(ns, host)?;
            let serves = svc.ports.iter().any(|&(svc_port, target)| {
                let endpoint_port = svc.vips.iter().find_map(|vip| {
                    let sp = self.by_vip.get(&SocketAddr::new(vip.ip, svc_port))?;
                    sp.endpoints
                        .iter()
                        .find(|e| Arc::ptr_eq(&e.workload, workload))
                        .map(|e| e.addr.port())
                });
                endpoint_port.unwrap_or(target) == port
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

    /// L4 authorization of a connection from `src` (None: plaintext) to `dst` on `dst_port`
    /// (the port the workload receives on). See `config::policy` for the rules.
    pub fn decide(&self, src: Option<&Identity>, dst: &Workload, dst_port: u16) -> Decision {
        policy::decide(
            dst.policies.iter().map(|&i| &self.policies[i as usize]),
            src,
            dst_port,
        )
    }

    /// A hash of the file contents this snapshot was parsed from (the watcher's change key).
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
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} workloads, {} services ({} VIP:port), {} policies",
            self.workloads, self.services, self.service_ports, self.policies
        )?;
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
