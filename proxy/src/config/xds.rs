//! istiod's resources turned into the mesh model, and the handler the xDS client calls.
//!
//! Each resource is validated alone: a bad one is rejected (the client NACKs it, naming the
//! resource and the field) and nothing else changes; the good ones of the same response are
//! applied. After every response that changed something, one new [`Snapshot`] is built from
//! the whole [`MeshState`] and published. Defaults follow ztunnel's conversion of the same
//! protos: trust domain `cluster.local`, service account `default`, cluster `Kubernetes`,
//! capacity 1.
//!
//! Where ztunnel silently drops part of a policy it cannot read (a bad CIDR, a string match
//! with no kind), we reject the policy instead: dropping an entry of an allow list widens
//! it, and istiod never sends such policies, so a rejection only ever catches corruption.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use control::pb::security as ps;
use control::pb::workload as pw;
use control::xds::{Rejection, Resource, Update};

use super::build::{DEFAULT_CLUSTER_ID, DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN};
use super::model::{HealthStatus, LoadBalancing, Protocol, Vip};
use super::policy::{
    Action, Authorization, Cidr, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use super::snapshot::{Service, Snapshot, Workload, WorkloadMeta, WorkloadService};
use super::state::MeshState;
use super::types::{
    AppTunnel, AppTunnelProtocol, Gateway, GatewayTarget, HealthPolicy, LocalityLb, LocalityMode,
    LocalityScope, NetworkMode, Visibility,
};
use crate::identity::Identity;
use crate::identity::spiffe::{check_segment, check_trust_domain};

/// The type URLs the node subscribes to, in subscription order.
pub use control::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};

type Result<T> = std::result::Result<T, String>;

fn ip_from_bytes(what: &str, b: &[u8]) -> Result<IpAddr> {
    match b.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        }
        n => Err(format!(
            "{what}: {n} bytes is not an IPv4 (4) or IPv6 (16) address"
        )),
    }
}

fn port(what: &str, p: u32, zero_ok: bool) -> Result<u16> {
    match u16::try_from(p) {
        Ok(0) if !zero_ok => Err(format!("{what}: port 0")),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{what}: {p} is not a port (0-65535)")),
    }
}

fn segment(what: &str, v: &str) -> Result<()> {
    check_segment(v).map_err(|e| format!("{what}: {e}"))
}

fn gateway(what: &str, g: &pw::GatewayAddress) -> Result<Gateway> {
    use pw::gateway_address::Destination;
    let target = match &g.destination {
        Some(Destination::Hostname(h)) => {
            if h.namespace.is_empty() || h.hostname.is_empty() {
                return Err(format!(
                    "{what}.hostname: namespace and hostname must be set"
                ));
            }
            GatewayTarget::Hostname {
                namespace: h.namespace.as_str().into(),
                hostname: h.hostname.as_str().into(),
            }
        }
        Some(Destination::Address(a)) => GatewayTarget::Address {
            network: a.network.as_str().into(),
            ip: ip_from_bytes(&format!("{what}.address.address"), &a.address)?,
        },
        None => return Err(format!("{what}: no destination")),
    };
    Ok(Gateway {
        target,
        hbone_port: port(&format!("{what}.hbone_mtls_port"), g.hbone_mtls_port, true)?,
    })
}

/// An xDS `Workload` as the mesh model.
pub fn workload(w: &pw::Workload) -> Result<Workload> {
    if w.uid.is_empty() {
        return Err("uid: empty".into());
    }
    segment("namespace", &w.namespace)?;
    let sa = if w.service_account.is_empty() {
        DEFAULT_SERVICE_ACCOUNT
    } else {
        &w.service_account
    };
    segment("service_account", sa)?;
    let td = if w.trust_domain.is_empty() {
        DEFAULT_TRUST_DOMAIN
    } else {
        &w.trust_domain
    };
    check_trust_domain(td).map_err(|e| format!("trust_domain: {e}"))?;
    let identity = Identity::new(td, &w.namespace, sa).map_err(|e| e.to_string())?;
    let mut ips = Vec::with_capacity(w.addresses.len());
    for (i, a) in w.addresses.iter().enumerate() {
        ips.push(ip_from_bytes(&format!("addresses[{i}]"), a)?);
    }
    if ips.is_empty() && w.hostname.is_empty() {
        return Err("addresses: empty, and no hostname".into());
    }
    let protocol = match pw::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(pw::TunnelProtocol::None) => Protocol::Tcp,
        Ok(pw::TunnelProtocol::Hbone) => Protocol::Hbone,
        Ok(pw::TunnelProtocol::LegacyIstioMtls) => {
            return Err("tunnel_protocol: LEGACY_ISTIO_MTLS is not supported".into());
        }
        Err(_) => {
            return Err(format!(
                "tunnel_protocol: unknown value {}",
                w.tunnel_protocol
            ));
        }
    };
    let status = match pw::WorkloadStatus::try_from(w.status) {
        Ok(pw::WorkloadStatus::Healthy) => HealthStatus::Healthy,
        Ok(pw::WorkloadStatus::Unhealthy) => HealthStatus::Unhealthy,
        Err(_) => return Err(format!("status: unknown value {}", w.status)),
    };
    let network_mode = match pw::NetworkMode::try_from(w.network_mode) {
        Ok(pw::NetworkMode::Standard) => NetworkMode::Standard,
        Ok(pw::NetworkMode::HostNetwork) => NetworkMode::HostNetwork,
        Err(_) => return Err(format!("network_mode: unknown value {}", w.network_mode)),
    };
    let workload_type = match pw::WorkloadType::try_from(w.workload_type) {
        Ok(pw::WorkloadType::Deployment) => "deployment",
        Ok(pw::WorkloadType::Cronjob) => "cronjob",
        Ok(pw::WorkloadType::Pod) => "pod",
        Ok(pw::WorkloadType::Job) => "job",
        Err(_) => return Err(format!("workload_type: unknown value {}", w.workload_type)),
    };
    let mut services: Vec<WorkloadService> = Vec::with_capacity(w.services.len());
    let mut keys: Vec<&String> = w.services.keys().collect();
    keys.sort();
    for key in keys {
        let what = format!("services[{key:?}]");
        super::build::service_ref(key).map_err(|e| format!("{what}: {e}"))?;
        let mut ports = Vec::new();
        for (i, p) in w.services[key].ports.iter().enumerate() {
            let svc = port(
                &format!("{what}.ports[{i}].service_port"),
                p.service_port,
                false,
            )?;
            let target = port(
                &format!("{what}.ports[{i}].target_port"),
                p.target_port,
                true,
            )?;
            ports.push((svc, target));
        }
        services.push(WorkloadService {
            key: key.as_str().into(),
            ports,
        });
    }
    let application_tunnel = match &w.application_tunnel {
        None => None,
        Some(t) => Some(AppTunnel {
            protocol: match pw::application_tunnel::Protocol::try_from(t.protocol) {
                Ok(pw::application_tunnel::Protocol::None) => AppTunnelProtocol::None,
                Ok(pw::application_tunnel::Protocol::Proxy) => AppTunnelProtocol::Proxy,
                Err(_) => {
                    return Err(format!(
                        "application_tunnel.protocol: unknown value {}",
                        t.protocol
                    ));
                }
            },
            port: match port("application_tunnel.port", t.port, true)? {
                0 => None,
                p => Some(p),
            },
        }),
    };
    let waypoint = w
        .waypoint
        .as_ref()
        .map(|g| gateway("waypoint", g))
        .transpose()?;
    let network_gateway = w
        .network_gateway
        .as_ref()
        .map(|g| gateway("network_gateway", g))
        .transpose()?;
    let or = |v: &str, d: &str| -> Arc<str> { if v.is_empty() { d.into() } else { v.into() } };
    let workload_name = or(&w.workload_name, &w.name);
    let locality = w.locality.clone().unwrap_or_default();
    Ok(Workload {
        uid: w.uid.as_str().into(),
        name: w.name.as_str().into(),
        namespace: w.namespace.as_str().into(),
        service_account: sa.into(),
        ips,
        hostname: w.hostname.as_str().into(),
        network: w.network.as_str().into(),
        node: w.node.as_str().into(),
        protocol,
        network_mode,
        status,
        identity,
        services,
        authorization_policies: w
            .authorization_policies
            .iter()
            .map(|p| Arc::from(p.as_str()))
            .collect(),
        native_tunnel: w.native_tunnel,
        application_tunnel,
        waypoint,
        network_gateway,
        workload_type: workload_type.into(),
        capacity: w.capacity.unwrap_or(1),
        meta: WorkloadMeta {
            canonical_name: or(&w.canonical_name, &workload_name),
            canonical_revision: or(&w.canonical_revision, "latest"),
            workload_name,
            cluster_id: or(&w.cluster_id, DEFAULT_CLUSTER_ID),
            region: locality.region.as_str().into(),
            zone: locality.zone.as_str().into(),
            subzone: locality.subzone.as_str().into(),
        },
        labels: Vec::new(),
    })
}

/// An xDS `Service` as the mesh model. VIPs that are CIDR ranges are left out (logged):
/// ringmesh resolves host VIPs only.
pub fn service(s: &pw::Service) -> Result<Service> {
    segment("namespace", &s.namespace)?;
    if s.hostname.is_empty() || s.hostname.contains('/') {
        return Err(format!("hostname: {:?} is not a hostname", s.hostname));
    }
    let mut vips = Vec::with_capacity(s.addresses.len());
    for (i, a) in s.addresses.iter().enumerate() {
        let ip = ip_from_bytes(&format!("addresses[{i}].address"), &a.address)?;
        let full = if ip.is_ipv4() { 32 } else { 128 };
        match a.length {
            None => {}
            Some(l) if l == full => {}
            Some(l) if l < full => {
                tracing::warn!(service = %format!("{}/{}", s.namespace, s.hostname), vip = %format!("{ip}/{l}"), "a CIDR VIP is not supported; it is left out");
                continue;
            }
            Some(l) => return Err(format!("addresses[{i}].length: {l} is longer than {full}")),
        }
        vips.push(Vip {
            network: a.network.clone(),
            ip,
        });
    }
    let mut ports = Vec::with_capacity(s.ports.len());
    for (i, p) in s.ports.iter().enumerate() {
        let svc = port(&format!("ports[{i}].service_port"), p.service_port, false)?;
        if ports.iter().any(|(seen, _)| *seen == svc) {
            return Err(format!("ports[{i}].service_port: {svc} is listed twice"));
        }
        ports.push((
            svc,
            port(&format!("ports[{i}].target_port"), p.target_port, true)?,
        ));
    }
    let (health_policy, locality_lb) = match &s.load_balancing {
        None => (HealthPolicy::OnlyHealthy, None),
        Some(lb) => {
            let health = match pw::load_balancing::HealthPolicy::try_from(lb.health_policy) {
                Ok(pw::load_balancing::HealthPolicy::OnlyHealthy) => HealthPolicy::OnlyHealthy,
                Ok(pw::load_balancing::HealthPolicy::AllowAll) => HealthPolicy::AllowAll,
                Err(_) => {
                    return Err(format!(
                        "load_balancing.health_policy: unknown value {}",
                        lb.health_policy
                    ));
                }
            };
            use pw::load_balancing::{Mode, Scope as LbScope};
            let mode = match Mode::try_from(lb.mode) {
                Ok(Mode::UnspecifiedMode) => LocalityMode::Standard,
                Ok(Mode::Strict) => LocalityMode::Strict,
                Ok(Mode::Failover) => LocalityMode::Failover,
                Ok(Mode::Passthrough) => LocalityMode::Passthrough,
                Err(_) => return Err(format!("load_balancing.mode: unknown value {}", lb.mode)),
            };
            let mut prefs = Vec::with_capacity(lb.routing_preference.len());
            for (i, &p) in lb.routing_preference.iter().enumerate() {
                prefs.push(match LbScope::try_from(p) {
                    Ok(LbScope::Region) => LocalityScope::Region,
                    Ok(LbScope::Zone) => LocalityScope::Zone,
                    Ok(LbScope::Subzone) => LocalityScope::Subzone,
                    Ok(LbScope::Node) => LocalityScope::Node,
                    Ok(LbScope::Cluster) => LocalityScope::Cluster,
                    Ok(LbScope::Network) => LocalityScope::Network,
                    Ok(LbScope::UnspecifiedScope) | Err(_) => {
                        return Err(format!(
                            "load_balancing.routing_preference[{i}]: {p} is not a scope"
                        ));
                    }
                });
            }
            (
                health,
                Some(LocalityLb {
                    mode,
                    routing_preference: prefs,
                }),
            )
        }
    };
    let waypoint = s
        .waypoint
        .as_ref()
        .map(|g| gateway("waypoint", g))
        .transpose()?;
    let visibility = match pw::service::Visibility::try_from(s.visibility) {
        Ok(pw::service::Visibility::Namespace) => Visibility::Namespace,
        // Unknown values fail open to public, as ztunnel does.
        _ => Visibility::Public,
    };
    Ok(Service {
        name: s.name.as_str().into(),
        namespace: s.namespace.as_str().into(),
        hostname: s.hostname.as_str().into(),
        vips,
        ports,
        load_balancing: LoadBalancing::RoundRobin,
        health_policy,
        locality_lb,
        subject_alt_names: s
            .subject_alt_names
            .iter()
            .map(|n| Arc::from(n.as_str()))
            .collect(),
        waypoint,
        canonical: s.canonical,
        visibility,
        members: Vec::new(),
    })
}

fn string_matches(what: &str, list: &[ps::StringMatch]) -> Result<Vec<StringMatch>> {
    use ps::string_match::MatchType;
    list.iter()
        .enumerate()
        .map(|(i, m)| match &m.match_type {
            Some(MatchType::Exact(s)) => Ok(StringMatch::Exact(s.as_str().into())),
            Some(MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s.as_str().into())),
            Some(MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s.as_str().into())),
            Some(MatchType::Presence(_)) => Ok(StringMatch::Presence),
            None => Err(format!("{what}[{i}]: a string match with no kind")),
        })
        .collect()
}

fn cidrs(what: &str, list: &[ps::Address]) -> Result<Vec<Cidr>> {
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let ip = ip_from_bytes(&format!("{what}[{i}].address"), &a.address)?;
            Cidr::new(ip, a.length).map_err(|e| format!("{what}[{i}].length: {e}"))
        })
        .collect()
}

fn ports(what: &str, list: &[u32]) -> Result<Vec<u16>> {
    list.iter()
        .enumerate()
        .map(|(i, &p)| port(&format!("{what}[{i}]"), p, true))
        .collect()
}

fn one_match(what: &str, m: &ps::Match) -> Result<Match> {
    let sas = |list: &[ps::ServiceAccountMatch]| {
        list.iter()
            .map(|s| ServiceAccountMatch {
                namespace: s.namespace.as_str().into(),
                service_account: s.service_account.as_str().into(),
            })
            .collect()
    };
    Ok(Match {
        namespaces: string_matches(&format!("{what}.namespaces"), &m.namespaces)?,
        not_namespaces: string_matches(&format!("{what}.not_namespaces"), &m.not_namespaces)?,
        principals: string_matches(&format!("{what}.principals"), &m.principals)?,
        not_principals: string_matches(&format!("{what}.not_principals"), &m.not_principals)?,
        service_accounts: sas(&m.service_accounts),
        not_service_accounts: sas(&m.not_service_accounts),
        source_ips: cidrs(&format!("{what}.source_ips"), &m.source_ips)?,
        not_source_ips: cidrs(&format!("{what}.not_source_ips"), &m.not_source_ips)?,
        destination_ips: cidrs(&format!("{what}.destination_ips"), &m.destination_ips)?,
        not_destination_ips: cidrs(
            &format!("{what}.not_destination_ips"),
            &m.not_destination_ips,
        )?,
        destination_ports: ports(&format!("{what}.destination_ports"), &m.destination_ports)?,
        not_destination_ports: ports(
            &format!("{what}.not_destination_ports"),
            &m.not_destination_ports,
        )?,
    })
}

/// An xDS `Authorization` as the mesh model.
pub fn authorization(a: &ps::Authorization) -> Result<Authorization> {
    if a.name.is_empty() {
        return Err("name: empty".into());
    }
    let scope = match ps::Scope::try_from(a.scope) {
        Ok(ps::Scope::Global) => Scope::Global,
        Ok(ps::Scope::Namespace) => Scope::Namespace,
        Ok(ps::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => return Err(format!("scope: unknown value {}", a.scope)),
    };
    let action = match ps::Action::try_from(a.action) {
        Ok(ps::Action::Allow) => Action::Allow,
        Ok(ps::Action::Deny) => Action::Deny,
        Err(_) => return Err(format!("action: unknown value {}", a.action)),
    };
    if scope == Scope::Namespace && a.namespace.is_empty() {
        return Err("namespace: empty for a namespace-scoped policy".into());
    }
    let mut rules = Vec::with_capacity(a.rules.len());
    for (r, rule) in a.rules.iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.clauses.len());
        for (c, clause) in rule.clauses.iter().enumerate() {
            let mut matches = Vec::with_capacity(clause.matches.len());
            for (m, one) in clause.matches.iter().enumerate() {
                matches.push(one_match(
                    &format!("rules[{r}].clauses[{c}].matches[{m}]"),
                    one,
                )?);
            }
            clauses.push(Clause { matches });
        }
        rules.push(Rule { clauses });
    }
    Ok(Authorization {
        name: a.name.as_str().into(),
        namespace: a.namespace.as_str().into(),
        scope,
        action,
        dry_run: a.dry_run,
        rules,
    })
}

/// The mesh state istiod describes, applied one response at a time; `publish` gets a new
/// snapshot after each response that changed anything.
pub struct XdsState {
    state: MeshState,
    node: Option<Arc<str>>,
    generation: u64,
    publish: Box<dyn FnMut(Arc<Snapshot>) + Send>,
}

impl XdsState {
    pub fn new(node: Option<String>, publish: impl FnMut(Arc<Snapshot>) + Send + 'static) -> Self {
        XdsState {
            state: MeshState::new(),
            node: node.map(Arc::from),
            generation: 0,
            publish: Box::new(publish),
        }
    }

    /// The snapshot of the current state (also what a start-up without istiod serves: empty).
    pub fn snapshot(&self) -> Snapshot {
        self.state.snapshot(self.node.clone(), self.generation)
    }

    /// Applies one response's updates and removals; the rejected resources, each with why.
    pub fn apply(
        &mut self,
        type_url: &str,
        updates: Vec<Update>,
        removed: Vec<String>,
    ) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        let mut changed = false;
        for u in updates {
            let outcome = match &u.resource {
                Resource::Address(a) => match &a.r#type {
                    Some(pw::address::Type::Workload(w)) => workload(w).map(|w| {
                        self.state.insert_workload(w);
                    }),
                    Some(pw::address::Type::Service(s)) => service(s).map(|s| {
                        self.state.insert_service(s);
                    }),
                    None => Err("an Address with neither a workload nor a service".into()),
                },
                Resource::Authorization(a) => authorization(a).map(|p| {
                    self.state.insert_policy(p);
                }),
            };
            match outcome {
                Ok(()) => changed = true,
                Err(reason) => {
                    tracing::warn!(type_url, resource = %u.name, %reason, "rejected a resource from istiod (NACK); the previous state of it stays");
                    rejected.push(Rejection {
                        name: u.name,
                        reason,
                    });
                }
            }
        }
        for name in removed {
            let gone = if type_url == AUTHORIZATION_TYPE {
                self.state.remove_policy(&name)
            } else {
                self.state.remove_address(&name)
            };
            if gone {
                changed = true;
            } else {
                tracing::debug!(type_url, resource = %name, "istiod removed a resource this node did not hold");
            }
        }
        if changed {
            self.generation += 1;
            let snap = Arc::new(self.snapshot());
            (self.publish)(snap);
        }
        rejected
    }
}

impl control::xds::Handler for XdsState {
    fn handle(
        &mut self,
        type_url: &str,
        updates: Vec<Update>,
        removed: Vec<String>,
    ) -> Vec<Rejection> {
        self.apply(type_url, updates, removed)
    }
}

/// Runs the decoding and validation of an xDS resource on arbitrary bytes (the `xds` fuzz
/// target and its corpus test call this): the first byte picks Address or Authorization;
/// nothing may panic, and whatever is accepted must turn into a snapshot whose lookups
/// agree with it.
pub fn fuzz_check(data: &[u8]) {
    use prost::Message;
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let mut x = XdsState::new(Some("node-1".into()), |_| {});
    let update = if kind % 2 == 0 {
        let Ok(a) = pw::Address::decode(body) else {
            return;
        };
        Update {
            name: "fuzz".into(),
            version: String::new(),
            resource: Resource::Address(a),
        }
    } else {
        let Ok(a) = ps::Authorization::decode(body) else {
            return;
        };
        Update {
            name: "fuzz".into(),
            version: String::new(),
            resource: Resource::Authorization(a),
        }
    };
    let type_url = match update.resource {
        Resource::Address(_) => ADDRESS_TYPE,
        Resource::Authorization(_) => AUTHORIZATION_TYPE,
    };
    let rejected = x.apply(type_url, vec![update], vec![]);
    let snap = x.snapshot();
    for r in &rejected {
        assert!(
            r.reason.len() < 4096,
            "a reason of {} bytes",
            r.reason.len()
        );
    }
    for w in snap.workloads() {
        for ip in &w.ips {
            if w.network_mode == NetworkMode::Standard {
                assert!(snap.workload_by_ip(*ip).is_some());
            }
        }
    }
    for p in snap.policies() {
        let _ = p.rules_dump();
    }
}

#[cfg(test)]
mod tests;
