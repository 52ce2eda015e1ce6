//! The validation pass: from the file's raw shape to a [`Snapshot`], or the first problem
//! with its field path.
//!
//! Order matters only for which error a file with several problems reports first:
//! workloads, then services, then workload→service references, then policies. Nothing is
//! shared with a previous snapshot, so a rejected file changes nothing.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::ConfigError;
use super::model::{HealthStatus, RawConfig, RawPolicy, RawService, RawWorkload};
use super::policy::{Policy, PrincipalMatch, SourceMatch};
use super::snapshot::{Endpoint, Service, ServicePort, Snapshot, Workload, WorkloadMeta};
use crate::identity::Identity;
use crate::identity::spiffe::{check_segment, check_trust_domain};

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The cluster a workload is in when the config does not say: istiod's default cluster id
/// (and ztunnel's `CLUSTER_ID` default).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// Kubernetes' service account for a pod that names none.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    super::invalid_at(&path.into(), &reason.into(), None)
}

fn non_empty(path: &str, v: &str) -> Result<(), ConfigError> {
    if v.trim().is_empty() {
        Err(invalid(path, "must not be empty"))
    } else {
        Ok(())
    }
}

fn segment(path: &str, v: &str) -> Result<(), ConfigError> {
    check_segment(v).map_err(|e| invalid(path, e))
}

/// Splits `namespace/hostname`.
fn service_ref(path: &str, v: &str) -> Result<(String, String), ConfigError> {
    match v.split_once('/') {
        Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {
            Ok((ns.to_string(), host.to_string()))
        }
        _ => Err(invalid(
            path,
            format!("{v:?} is not of the form \"namespace/hostname\""),
        )),
    }
}

pub(crate) fn build(
    raw: RawConfig,
    node_override: Option<&str>,
    content_hash: u64,
) -> Result<Snapshot, ConfigError> {
    let node: Option<Arc<str>> = match node_override {
        Some(n) => {
            non_empty("node (from the command line)", n)?;
            Some(n.into())
        }
        None => match &raw.node {
            Some(n) => {
                non_empty("node", n)?;
                Some(n.as_str().into())
            }
            None => None,
        },
    };

    // Workloads, without service links yet.
    let mut ip_owner: HashMap<IpAddr, usize> = HashMap::new();
    let mut uid_owner: HashMap<String, usize> = HashMap::new();
    let mut workloads: Vec<Workload> = Vec::with_capacity(raw.workloads.len());
    for (i, w) in raw.workloads.iter().enumerate() {
        workloads.push(build_workload(i, w, &mut ip_owner, &mut uid_owner)?);
    }

    // Services and their VIPs.
    let mut vip_owner: HashMap<IpAddr, usize> = HashMap::new();
    let mut svc_index: HashMap<(String, String), usize> = HashMap::new();
    for (i, s) in raw.services.iter().enumerate() {
        check_service(
            i,
            s,
            &ip_owner,
            &mut vip_owner,
            &mut svc_index,
            &raw.workloads,
        )?;
    }

    // Workload → service membership, with any per-workload target ports (ztunnel's map form).
    let mut members: Vec<Vec<Member>> = vec![Vec::new(); raw.services.len()];
    for (i, w) in raw.workloads.iter().enumerate() {
        let mut seen = HashSet::new();
        for (j, (r, overrides)) in w.services.0.iter().enumerate() {
            let path = if w.services.is_map() {
                format!("workloads[{i}].services.{r}")
            } else {
                format!("workloads[{i}].services[{j}]")
            };
            let key = service_ref(&path, r)?;
            let Some(&si) = svc_index.get(&key) else {
                return Err(invalid(
                    path,
                    format!("unknown service {r:?} (no service has this namespace/hostname)"),
                ));
            };
            if !seen.insert(si) {
                return Err(invalid(path, format!("service {r:?} is listed twice")));
            }
            let mut ports = Vec::new();
            for (port, target) in overrides.iter().flat_map(|m| &m.0) {
                if !raw.services[si].ports.0.iter().any(|(p, _)| p == port) {
                    return Err(invalid(
                        path,
                        format!("{} is not a port of service {r:?}", port.0),
                    ));
                }
                ports.push((port.0, target.0));
            }
            members[si].push(Member {
                workload: i,
                target_ports: ports,
            });
        }
    }

    // Policies, and which workloads each applies to.
    let mut policies = Vec::with_capacity(raw.policies.len());
    let mut names = HashSet::new();
    for (pi, p) in raw.policies.iter().enumerate() {
        let base = format!("policies[{pi}]");
        non_empty(&format!("{base}.name"), &p.name)?;
        if !names.insert(p.name.as_str()) {
            return Err(invalid(
                format!("{base}.name"),
                format!("policy {:?} is defined twice", p.name),
            ));
        }
        let targets = policy_targets(&base, p, &raw.workloads, &uid_owner, &svc_index, &members)?;
        for wi in targets {
            workloads[wi].policies.push(pi as u32);
        }
        policies.push(build_policy(&base, p)?);
    }

    // Freeze workloads, then services with their endpoints.
    let workloads: Vec<Arc<Workload>> = workloads.into_iter().map(Arc::new).collect();
    let mut services = Vec::with_capacity(raw.services.len());
    let mut by_vip = HashMap::new();
    let mut by_vip_ip = HashMap::new();
    for (si, s) in raw.services.iter().enumerate() {
        let service = Arc::new(Service {
            name: s.name.as_str().into(),
            namespace: s.namespace.as_str().into(),
            hostname: s.hostname.as_str().into(),
            vips: s.vips.clone(),
            ports: s.ports.0.iter().map(|(p, t)| (p.0, t.0)).collect(),
            load_balancing: s.load_balancing,
            members: members[si]
                .iter()
                .map(|m| workloads[m.workload].clone())
                .collect(),
        });
        for vip in &s.vips {
            by_vip_ip.insert(vip.ip, service.clone());
            for &(port, target_port) in &service.ports {
                let endpoints = members[si]
                    .iter()
                    .map(|m| (&workloads[m.workload], &m.target_ports))
                    .filter(|(w, _)| w.status == HealthStatus::Healthy)
                    .map(|(w, overrides)| {
                        let target = overrides
                            .iter()
                            .find(|(p, _)| *p == port)
                            .map_or(target_port, |(_, t)| *t);
                        Endpoint {
                            workload: w.clone(),
                            addr: SocketAddr::new(endpoint_ip(w, vip.ip), target),
                        }
                    })
                    .collect();
                by_vip.insert(
                    SocketAddr::new(vip.ip, port),
                    ServicePort {
                        service: service.clone(),
                        port,
                        target_port,
                        endpoints,
                    },
                );
            }
        }
        services.push(service);
    }

    let mut by_ip = HashMap::new();
    let mut by_uid = HashMap::new();
    for w in &workloads {
        for ip in &w.ips {
            by_ip.insert(*ip, w.clone());
        }
        by_uid.insert(w.uid.clone(), w.clone());
    }
    let local = match &node {
        Some(n) => workloads.iter().filter(|w| w.node == *n).cloned().collect(),
        None => Vec::new(),
    };

    Ok(Snapshot {
        node,
        workloads,
        services,
        policies,
        by_ip,
        by_uid,
        by_vip_ip,
        by_vip,
        local,
        content_hash,
    })
}

/// A workload's membership in a service.
#[derive(Clone)]
struct Member {
    workload: usize,
    /// Service port → this workload's target port (ztunnel's map form), overriding the service's.
    target_ports: Vec<(u16, u16)>,
}

/// The workload's first IP of the VIP's family, else its first IP.
fn endpoint_ip(w: &Workload, vip: IpAddr) -> IpAddr {
    w.ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == vip.is_ipv4())
        .unwrap_or(w.ips[0])
}

fn build_workload(
    i: usize,
    w: &RawWorkload,
    ip_owner: &mut HashMap<IpAddr, usize>,
    uid_owner: &mut HashMap<String, usize>,
) -> Result<Workload, ConfigError> {
    let base = format!("workloads[{i}]");
    non_empty(&format!("{base}.name"), &w.name)?;
    segment(&format!("{base}.namespace"), &w.namespace)?;
    let sa = w
        .service_account
        .as_deref()
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    segment(&format!("{base}.serviceAccount"), sa)?;
    let td = w.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN);
    check_trust_domain(td).map_err(|e| invalid(format!("{base}.trustDomain"), e))?;
    non_empty(&format!("{base}.node"), &w.node)?;

    let uid = match &w.uid {
        Some(u) => {
            non_empty(&format!("{base}.uid"), u)?;
            u.clone()
        }
        None => format!("{}/{}", w.namespace, w.name),
    };
    if let Some(prev) = uid_owner.insert(uid.clone(), i) {
        return Err(invalid(
            format!("{base}.uid"),
            format!(
                "uid {uid:?} is already used by workloads[{prev}] (an absent uid defaults to namespace/name)"
            ),
        ));
    }

    if w.workload_ips.is_empty() {
        return Err(invalid(
            format!("{base}.workloadIps"),
            "must list at least one IP",
        ));
    }
    for (j, ip) in w.workload_ips.iter().enumerate() {
        let path = format!("{base}.workloadIps[{j}]");
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid(path, format!("{ip} cannot be a workload IP")));
        }
        if let Some(prev) = ip_owner.insert(*ip, i) {
            let whose = if prev == i {
                "this workload".to_string()
            } else {
                format!("workloads[{prev}]")
            };
            return Err(invalid(path, format!("{ip} is already used by {whose}")));
        }
    }

    let identity =
        Identity::new(td, &w.namespace, sa).map_err(|e| invalid(base.clone(), e.to_string()))?;
    Ok(Workload {
        uid: uid.into(),
        name: w.name.as_str().into(),
        namespace: w.namespace.as_str().into(),
        service_account: sa.into(),
        ips: w.workload_ips.clone(),
        node: w.node.as_str().into(),
        protocol: w.protocol,
        status: w.status,
        identity,
        services: w
            .services
            .0
            .iter()
            .map(|(s, _)| s.as_str().into())
            .collect(),
        policies: Vec::new(),
        meta: {
            let workload_name = w.workload_name.clone().unwrap_or_else(|| w.name.clone());
            let locality = w.locality.as_ref();
            WorkloadMeta {
                canonical_name: w.canonical_name.as_deref().unwrap_or(&workload_name).into(),
                workload_name: workload_name.as_str().into(),
                canonical_revision: w.canonical_revision.as_deref().unwrap_or("latest").into(),
                cluster_id: w.cluster_id.as_deref().unwrap_or(DEFAULT_CLUSTER_ID).into(),
                region: locality.map_or("", |l| l.region.as_str()).into(),
                zone: locality.map_or("", |l| l.zone.as_str()).into(),
                subzone: locality.map_or("", |l| l.subzone.as_str()).into(),
            }
        },
    })
}

fn check_service(
    i: usize,
    s: &RawService,
    ip_owner: &HashMap<IpAddr, usize>,
    vip_owner: &mut HashMap<IpAddr, usize>,
    svc_index: &mut HashMap<(String, String), usize>,
    raw_workloads: &[RawWorkload],
) -> Result<(), ConfigError> {
    let base = format!("services[{i}]");
    non_empty(&format!("{base}.name"), &s.name)?;
    segment(&format!("{base}.namespace"), &s.namespace)?;
    non_empty(&format!("{base}.hostname"), &s.hostname)?;
    if s.hostname.contains('/') {
        return Err(invalid(
            format!("{base}.hostname"),
            format!("{:?} must not contain '/'", s.hostname),
        ));
    }
    if let Some(prev) = svc_index.insert((s.namespace.clone(), s.hostname.clone()), i) {
        return Err(invalid(
            format!("{base}.hostname"),
            format!(
                "{}/{} is already defined by services[{prev}]",
                s.namespace, s.hostname
            ),
        ));
    }
    if s.vips.is_empty() {
        return Err(invalid(
            format!("{base}.vips"),
            "must list at least one VIP",
        ));
    }
    for (j, vip) in s.vips.iter().enumerate() {
        let path = format!("{base}.vips[{j}]");
        if let Some(&wi) = ip_owner.get(&vip.ip) {
            let w = &raw_workloads[wi];
            return Err(invalid(
                path,
                format!(
                    "{} is also an IP of workloads[{wi}] ({}/{})",
                    vip.ip, w.namespace, w.name
                ),
            ));
        }
        if let Some(prev) = vip_owner.insert(vip.ip, i) {
            let whose = if prev == i {
                "this service".to_string()
            } else {
                format!("services[{prev}]")
            };
            return Err(invalid(
                path,
                format!("VIP {} is already used by {whose}", vip.ip),
            ));
        }
    }
    if s.ports.0.is_empty() {
        return Err(invalid(
            format!("{base}.ports"),
            "must map at least one port",
        ));
    }
    Ok(())
}

/// Indices of the workloads a policy protects.
fn policy_targets(
    base: &str,
    p: &RawPolicy,
    raw_workloads: &[RawWorkload],
    uid_owner: &HashMap<String, usize>,
    svc_index: &HashMap<(String, String), usize>,
    members: &[Vec<Member>],
) -> Result<Vec<usize>, ConfigError> {
    let Some(d) = &p.destination else {
        return Ok((0..raw_workloads.len()).collect());
    };
    if d.workloads.is_empty() && d.services.is_empty() && d.namespaces.is_empty() {
        return Err(invalid(
            format!("{base}.destination"),
            "names no workloads, services or namespaces (omit `destination` to protect every workload)",
        ));
    }
    let mut out = Vec::new();
    for (j, uid) in d.workloads.iter().enumerate() {
        match uid_owner.get(uid) {
            Some(&wi) => out.push(wi),
            None => {
                return Err(invalid(
                    format!("{base}.destination.workloads[{j}]"),
                    format!("unknown workload uid {uid:?}"),
                ));
            }
        }
    }
    for (j, r) in d.services.iter().enumerate() {
        let path = format!("{base}.destination.services[{j}]");
        let key = service_ref(&path, r)?;
        match svc_index.get(&key) {
            Some(&si) => out.extend(members[si].iter().map(|m| m.workload)),
            None => return Err(invalid(path, format!("unknown service {r:?}"))),
        }
    }
    for (j, ns) in d.namespaces.iter().enumerate() {
        segment(&format!("{base}.destination.namespaces[{j}]"), ns)?;
        out.extend(
            raw_workloads
                .iter()
                .enumerate()
                .filter(|(_, w)| w.namespace == *ns)
                .map(|(wi, _)| wi),
        );
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn build_policy(base: &str, p: &RawPolicy) -> Result<Policy, ConfigError> {
    let mut from = Vec::with_capacity(p.from.len());
    for (j, s) in p.from.iter().enumerate() {
        let fbase = format!("{base}.from[{j}]");
        let principals = |key: &str, list: &[String]| -> Result<Vec<PrincipalMatch>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(k, t)| {
                    PrincipalMatch::parse(t).map_err(|r| invalid(format!("{fbase}.{key}[{k}]"), r))
                })
                .collect()
        };
        let namespaces = |key: &str, list: &[String]| -> Result<Vec<Arc<str>>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(k, n)| {
                    segment(&format!("{fbase}.{key}[{k}]"), n).map(|()| Arc::from(n.as_str()))
                })
                .collect()
        };
        let m = SourceMatch {
            principals: principals("principals", &s.principals)?,
            not_principals: principals("notPrincipals", &s.not_principals)?,
            namespaces: namespaces("namespaces", &s.namespaces)?,
            not_namespaces: namespaces("notNamespaces", &s.not_namespaces)?,
        };
        if m.principals.is_empty()
            && m.not_principals.is_empty()
            && m.namespaces.is_empty()
            && m.not_namespaces.is_empty()
        {
            return Err(invalid(
                fbase,
                "matches nothing in particular: give principals, namespaces, notPrincipals or notNamespaces (omit `from` to match every source)",
            ));
        }
        from.push(m);
    }
    Ok(Policy {
        name: p.name.as_str().into(),
        action: p.action,
        global: p.destination.is_none(),
        from,
        ports: p.ports.iter().map(|p| p.0).collect(),
    })
}
