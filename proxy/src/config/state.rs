//! The mesh as its source last described it: workloads by uid, services by
//! `namespace/hostname`, policies by `namespace/name`. The file loader fills one whole; the
//! xDS client applies istiod's deltas to one. Either way [`MeshState::snapshot`] turns it
//! into the immutable [`Snapshot`] the cores read.
//!
//! Each entry was validated alone when it arrived; what depends on several entries
//! (service membership, IP ownership, policy references) is resolved at snapshot time, so
//! the order in which istiod sends things does not matter. Every insert gets a sequence
//! number: conflicts (two workloads claiming one IP, two services one VIP) go to the most
//! recently applied, and endpoint order is application order.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::model::HealthStatus;
use super::policy::{Authorization, Scope};
use super::snapshot::{Endpoint, Service, ServicePort, Snapshot, Workload};
use super::types::{HealthPolicy, NetworkMode};

/// Workloads, services and policies by name. Cloning is cheap: the entries are shared.
#[derive(Debug, Clone, Default)]
pub struct MeshState {
    workloads: HashMap<Arc<str>, (u64, Arc<Workload>)>,
    services: HashMap<Arc<str>, (u64, Arc<Service>)>,
    policies: HashMap<Arc<str>, Arc<Authorization>>,
    seq: u64,
}

impl MeshState {
    pub fn new() -> MeshState {
        MeshState::default()
    }

    /// Adds or replaces the workload with this uid; true if it replaced one.
    pub fn insert_workload(&mut self, w: Workload) -> bool {
        self.seq += 1;
        self.workloads
            .insert(w.uid.clone(), (self.seq, Arc::new(w)))
            .is_some()
    }

    /// Adds or replaces the service with this `namespace/hostname`; true if it replaced one.
    pub fn insert_service(&mut self, mut s: Service) -> bool {
        self.seq += 1;
        s.members.clear();
        let key: Arc<str> = s.key().into();
        self.services.insert(key, (self.seq, Arc::new(s))).is_some()
    }

    /// Adds or replaces the policy with this key; true if it replaced one.
    pub fn insert_policy(&mut self, p: Authorization) -> bool {
        self.policies.insert(p.key(), Arc::new(p)).is_some()
    }

    /// Removes an xDS Address by name: a workload uid, else a service's
    /// `namespace/hostname`. False if neither was known.
    pub fn remove_address(&mut self, name: &str) -> bool {
        self.workloads.remove(name).is_some() || self.services.remove(name).is_some()
    }

    pub fn remove_policy(&mut self, key: &str) -> bool {
        self.policies.remove(key).is_some()
    }

    pub fn workload(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid).map(|(_, w)| w)
    }

    pub fn has_service(&self, key: &str) -> bool {
        self.services.contains_key(key)
    }

    pub fn has_policy(&self, key: &str) -> bool {
        self.policies.contains_key(key)
    }

    pub fn len(&self) -> (usize, usize, usize) {
        (
            self.workloads.len(),
            self.services.len(),
            self.policies.len(),
        )
    }

    /// Resolves everything that spans entries into a [`Snapshot`] for `node`.
    pub fn snapshot(&self, node: Option<Arc<str>>, content_hash: u64) -> Snapshot {
        // Workloads in application order: endpoint order, and the winner of IP conflicts
        // (later inserts overwrite).
        let mut ordered: Vec<&(u64, Arc<Workload>)> = self.workloads.values().collect();
        ordered.sort_unstable_by_key(|(seq, _)| *seq);
        let mut by_ip = HashMap::with_capacity(ordered.len());
        let mut by_uid = HashMap::with_capacity(ordered.len());
        for (_, w) in &ordered {
            by_uid.insert(w.uid.clone(), w.clone());
            if w.network_mode == NetworkMode::Standard {
                for ip in &w.ips {
                    by_ip.insert(*ip, w.clone());
                }
            }
        }
        let local: Vec<Arc<Workload>> = match &node {
            Some(n) => ordered
                .iter()
                .filter(|(_, w)| w.node == *n)
                .map(|(_, w)| w.clone())
                .collect(),
            None => Vec::new(),
        };

        // Members of each service, in application order of the workloads.
        let mut members: HashMap<&str, Vec<&Arc<Workload>>> = HashMap::new();
        for (_, w) in &ordered {
            for m in &w.services {
                if self.services.contains_key(&m.key) {
                    members.entry(&m.key).or_default().push(w);
                }
            }
        }

        let mut services_ordered: Vec<_> = self.services.iter().collect();
        services_ordered.sort_unstable_by_key(|(_, (seq, _))| *seq);
        let mut by_service_key = HashMap::with_capacity(services_ordered.len());
        let mut by_vip_ip = HashMap::new();
        let mut by_vip = HashMap::new();
        let mut shadowed: HashMap<Arc<str>, Vec<ServicePort>> = HashMap::new();
        for (key, (_, def)) in services_ordered {
            let mut svc = Service::clone(def);
            let list = members.get(&**key).map(Vec::as_slice).unwrap_or_default();
            svc.members = list.iter().map(|w| Arc::clone(w)).collect();
            let svc = Arc::new(svc);
            by_service_key.insert(key.clone(), svc.clone());
            for vip in &svc.vips {
                by_vip_ip.insert(vip.ip, svc.clone());
                for &(port, target_port) in &svc.ports {
                    let endpoints = svc
                        .members
                        .iter()
                        .filter(|w| {
                            svc.health_policy == HealthPolicy::AllowAll
                                || w.status == HealthStatus::Healthy
                        })
                        .filter_map(|w| endpoint(w, key, vip.ip, port, target_port))
                        .collect();
                    let taken = by_vip.insert(
                        SocketAddr::new(vip.ip, port),
                        ServicePort {
                            service: svc.clone(),
                            port,
                            target_port,
                            endpoints,
                        },
                    );
                    if let Some(old) = taken.filter(|o| !Arc::ptr_eq(&o.service, &svc)) {
                        let key: Arc<str> = old.service.key().into();
                        shadowed.entry(key).or_default().push(old);
                    }
                }
            }
        }

        let mut services: Vec<Arc<Service>> = by_service_key.values().cloned().collect();
        services.sort_unstable_by_key(|s| s.key());
        let mut by_name: HashMap<Arc<str>, Vec<Arc<Service>>> = HashMap::new();
        let mut by_hostname: HashMap<Arc<str>, Arc<Service>> = HashMap::new();
        for s in &services {
            by_name.entry(s.name.clone()).or_default().push(s.clone());
            // The first by `namespace/hostname` keeps a hostname two namespaces declare.
            by_hostname
                .entry(s.hostname.clone())
                .or_insert_with(|| s.clone());
        }
        let mut workloads: Vec<Arc<Workload>> = by_uid.values().cloned().collect();
        workloads.sort_unstable_by(|a, b| a.uid.cmp(&b.uid));

        let mut policies: Vec<Arc<Authorization>> = self.policies.values().cloned().collect();
        policies.sort_unstable_by_key(|p| p.key());
        let mut global_policies = Vec::new();
        let mut namespace_policies: HashMap<Arc<str>, Vec<Arc<Authorization>>> = HashMap::new();
        for p in &policies {
            match p.scope {
                // A global policy applies everywhere, whatever namespace it names.
                Scope::Global => global_policies.push(p.clone()),
                Scope::Namespace => namespace_policies
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(p.clone()),
                Scope::WorkloadSelector => {}
            }
        }
        let policy_by_key = self.policies.clone();

        Snapshot {
            node,
            workloads,
            services,
            policies,
            policy_by_key,
            global_policies,
            namespace_policies,
            by_ip,
            by_uid,
            by_service_key,
            by_name,
            by_hostname,
            shadowed,
            by_vip_ip,
            by_vip,
            local,
            content_hash,
            routes: Arc::default(),
            security: Arc::default(),
            destination_rules: Arc::default(),
            telemetries: Arc::default(),
        }
    }
}

/// The endpoint of workload `w` for `service_port` of the service `key` reached through a
/// VIP of `vip`'s family: its own target port if it names one, else the service's; none if
/// neither does (or it has no IP).
fn endpoint(
    w: &Arc<Workload>,
    key: &str,
    vip: IpAddr,
    service_port: u16,
    target_port: u16,
) -> Option<Endpoint> {
    let own = w
        .services
        .iter()
        .find(|m| &*m.key == key)
        .and_then(|m| m.ports.iter().find(|(p, _)| *p == service_port))
        .map_or(0, |(_, t)| *t);
    let port = if own != 0 { own } else { target_port };
    if port == 0 {
        return None;
    }
    let ip = w
        .ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == vip.is_ipv4())
        .or_else(|| w.ips.first().copied())?;
    Some(Endpoint {
        workload: w.clone(),
        addr: SocketAddr::new(ip, port),
    })
}
