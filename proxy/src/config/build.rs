//! The file's validation pass: from the raw shape to a [`MeshState`] and its [`Snapshot`],
//! or the first problem with its field path.
//!
//! A file is the whole mesh, so it is held to more than istiod's deltas: duplicate uids,
//! IPs, VIPs and names, and references to services or policies it does not define, are
//! errors here (from istiod they are transient and tolerated). Order matters only for which
//! error a file with several problems reports first: workloads, then services, then
//! workload→service references, then policies. A rejected file changes nothing.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::ConfigError;
use super::model::{
    RawConfig, RawGateway, RawMatch, RawPolicy, RawService, RawSource, RawStringMatch, RawWorkload,
};
use super::policy::{
    Authorization, Cidr, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use super::snapshot::{Service, Snapshot, Workload, WorkloadMeta, WorkloadService};
use super::state::MeshState;
use super::types::{AppTunnel, Gateway, GatewayTarget, LocalityLb};
use crate::identity::Identity;
use crate::identity::spiffe::{check_segment, check_trust_domain};

mod l7;

pub(crate) use l7::build_l7_only;
use l7::{Names, build_routes, build_security, build_telemetries};

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The cluster a workload is in when the config does not say: istiod's default cluster id
/// (and ztunnel's `CLUSTER_ID` default).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// Kubernetes' service account for a pod that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

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
pub(crate) fn service_ref(v: &str) -> Result<(&str, &str), String> {
    match v.split_once('/') {
        Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {
            Ok((ns, host))
        }
        _ => Err(format!("{v:?} is not of the form \"namespace/hostname\"")),
    }
}

/// A gateway's `destination`: `network/IP` first, then `namespace/hostname` (ztunnel's order).
pub(crate) fn gateway_target(dest: &str) -> Result<GatewayTarget, String> {
    if let Some((network, ip)) = dest.split_once('/')
        && let Ok(ip) = ip.parse::<IpAddr>()
    {
        return Ok(GatewayTarget::Address {
            network: network.into(),
            ip,
        });
    }
    let (namespace, hostname) = service_ref(dest)
        .map_err(|_| format!("{dest:?} is neither \"network/IP\" nor \"namespace/hostname\""))?;
    Ok(GatewayTarget::Hostname {
        namespace: namespace.into(),
        hostname: hostname.into(),
    })
}

fn gateway(path: &str, g: &Option<RawGateway>) -> Result<Option<Gateway>, ConfigError> {
    let Some(g) = g else { return Ok(None) };
    let target =
        gateway_target(&g.destination).map_err(|e| invalid(format!("{path}.destination"), e))?;
    Ok(Some(Gateway {
        target,
        hbone_port: g.hbone_mtls_port.0,
    }))
}

pub(crate) fn build(
    raw: RawConfig,
    node_override: Option<&str>,
    content_hash: u64,
    jwks: &waypoint::security::JwksRegistry,
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

    let mut ip_owner: HashMap<IpAddr, usize> = HashMap::new();
    let mut uid_owner: HashMap<String, usize> = HashMap::new();
    let mut workloads: Vec<Workload> = Vec::with_capacity(raw.workloads.len());
    for (i, w) in raw.workloads.iter().enumerate() {
        workloads.push(build_workload(i, w, &mut ip_owner, &mut uid_owner)?);
    }

    let mut vip_owner: HashMap<IpAddr, usize> = HashMap::new();
    let mut svc_index: HashMap<(String, String), usize> = HashMap::new();
    let mut services = Vec::with_capacity(raw.services.len());
    for (i, s) in raw.services.iter().enumerate() {
        services.push(build_service(
            i,
            s,
            &ip_owner,
            &mut vip_owner,
            &mut svc_index,
            &raw.workloads,
        )?);
    }

    // Workload → service membership: the workloads' own lists, checked against the
    // services, then the services' `endpoints` lists (ztunnel's other spelling).
    for (i, w) in raw.workloads.iter().enumerate() {
        let mut seen = HashSet::new();
        for (j, (r, overrides)) in w.services.0.iter().enumerate() {
            let path = if w.services.is_map() {
                format!("workloads[{i}].services.{r}")
            } else {
                format!("workloads[{i}].services[{j}]")
            };
            let (ns, host) = service_ref(r).map_err(|e| invalid(&path, e))?;
            let Some(&si) = svc_index.get(&(ns.to_string(), host.to_string())) else {
                return Err(invalid(
                    path,
                    format!("unknown service {r:?} (no service has this namespace/hostname)"),
                ));
            };
            if !seen.insert(si) {
                return Err(invalid(path, format!("service {r:?} is listed twice")));
            }
            for (port, _) in overrides.iter().flat_map(|m| &m.0) {
                if !raw.services[si].ports.0.iter().any(|(p, _)| p == port) {
                    return Err(invalid(
                        path,
                        format!("{} is not a port of service {r:?}", port.0),
                    ));
                }
            }
        }
    }
    for (si, s) in raw.services.iter().enumerate() {
        let key: Arc<str> = format!("{}/{}", s.namespace, s.hostname).into();
        for (uid, e) in &s.endpoints {
            let path = format!("services[{si}].endpoints.{uid}");
            if e.workload_uid != *uid {
                return Err(invalid(
                    format!("{path}.workloadUid"),
                    format!("{:?} differs from the key {uid:?}", e.workload_uid),
                ));
            }
            let Some(&wi) = uid_owner.get(uid) else {
                return Err(invalid(path, format!("unknown workload uid {uid:?}")));
            };
            let ports: Vec<(u16, u16)> = e.port.0.iter().map(|(p, t)| (p.0, t.0)).collect();
            let w = &mut workloads[wi];
            match w.services.iter_mut().find(|m| m.key == key) {
                Some(m) if m.ports.is_empty() => m.ports = ports,
                Some(_) => {}
                None => w.services.push(WorkloadService {
                    key: key.clone(),
                    ports,
                }),
            }
        }
    }

    // Policies, and which workloads each short-form policy protects.
    let mut state = MeshState::new();
    let mut policies = Vec::with_capacity(raw.policies.len());
    let mut keys = HashSet::new();
    for (pi, p) in raw.policies.iter().enumerate() {
        let base = format!("policies[{pi}]");
        let policy = build_policy(&base, p)?;
        let key = policy.key();
        if !keys.insert(key.clone()) {
            return Err(invalid(
                format!("{base}.name"),
                format!("policy {key:?} is defined twice"),
            ));
        }
        if p.rules.is_none() && p.destination.is_some() {
            for wi in policy_targets(&base, p, &raw.workloads, &uid_owner, &svc_index, &raw)? {
                workloads[wi].authorization_policies.push(key.clone());
            }
        }
        policies.push(policy);
    }
    for (i, w) in workloads.iter().enumerate() {
        for (j, key) in w.authorization_policies.iter().enumerate() {
            if !keys.contains(key) {
                return Err(invalid(
                    format!("workloads[{i}].authorizationPolicies[{j}]"),
                    format!("unknown policy {key:?} (no policy has this namespace/name)"),
                ));
            }
        }
    }

    for w in workloads {
        state.insert_workload(w);
    }
    for s in services {
        state.insert_service(s);
    }
    for p in policies {
        state.insert_policy(p);
    }
    let (routes, destination_rules) = build_routes(&raw, Names::File)?;
    let security = build_security(&raw, jwks, Names::File)?;
    let telemetries = build_telemetries(&raw, Names::File)?;
    let mut snapshot = state.snapshot(node, content_hash);
    snapshot.telemetries = Arc::new(telemetries);
    snapshot.routes = Arc::new(routes);
    snapshot.destination_rules = Arc::new(destination_rules);
    snapshot.security = Arc::new(security);
    Ok(snapshot)
}

fn build_workload(
    i: usize,
    w: &RawWorkload,
    ip_owner: &mut HashMap<IpAddr, usize>,
    uid_owner: &mut HashMap<String, usize>,
) -> Result<Workload, ConfigError> {
    let base = format!("workloads[{i}]");
    segment(&format!("{base}.namespace"), &w.namespace)?;
    let uid = match (&w.uid, &w.name) {
        (Some(u), _) => {
            non_empty(&format!("{base}.uid"), u)?;
            u.clone()
        }
        (None, Some(name)) => {
            non_empty(&format!("{base}.name"), name)?;
            format!("{}/{}", w.namespace, name)
        }
        (None, None) => return Err(invalid(base, "give a `uid` or a `name`")),
    };
    let name = w.name.clone().unwrap_or_default();
    let sa = w
        .service_account
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    segment(&format!("{base}.serviceAccount"), sa)?;
    let td = w
        .trust_domain
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_TRUST_DOMAIN);
    check_trust_domain(td).map_err(|e| invalid(format!("{base}.trustDomain"), e))?;
    if let Some(n) = &w.node {
        non_empty(&format!("{base}.node"), n)?;
    }
    if let Some(prev) = uid_owner.insert(uid.clone(), i) {
        return Err(invalid(
            format!("{base}.uid"),
            format!(
                "uid {uid:?} is already used by workloads[{prev}] (an absent uid defaults to namespace/name)"
            ),
        ));
    }

    let hostname = w.hostname.clone().unwrap_or_default();
    if w.workload_ips.is_empty() && hostname.is_empty() {
        return Err(invalid(
            format!("{base}.workloadIps"),
            "must list at least one IP (or give a hostname)",
        ));
    }
    for (j, ip) in w.workload_ips.iter().enumerate() {
        let path = format!("{base}.workloadIps[{j}]");
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid(path, format!("{ip} cannot be a workload IP")));
        }
        if w.network_mode == super::types::NetworkMode::HostNetwork {
            continue;
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
    let mut policies = Vec::with_capacity(w.authorization_policies.len());
    for (j, p) in w.authorization_policies.iter().enumerate() {
        let path = format!("{base}.authorizationPolicies[{j}]");
        non_empty(&path, p)?;
        policies.push(Arc::from(p.as_str()));
    }
    let workload_type = w
        .workload_type
        .as_deref()
        .unwrap_or("pod")
        .to_ascii_lowercase();
    if !matches!(
        workload_type.as_str(),
        "pod" | "deployment" | "job" | "cronjob"
    ) {
        return Err(invalid(
            format!("{base}.workloadType"),
            format!("{workload_type:?} is not one of deployment, pod, job, cronjob"),
        ));
    }
    let mut labels = Vec::with_capacity(w.labels.len());
    for (k, v) in &w.labels {
        let path = format!("{base}.labels.{k}");
        waypoint::dr::label_key(k).map_err(|e| invalid(&path, e))?;
        waypoint::dr::label_value(v).map_err(|e| invalid(&path, e))?;
        labels.push((Arc::from(k.as_str()), Arc::from(v.as_str())));
    }

    let identity =
        Identity::new(td, &w.namespace, sa).map_err(|e| invalid(base.clone(), e.to_string()))?;
    let workload_name = w
        .workload_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.clone());
    let locality = w.locality.as_ref();
    Ok(Workload {
        uid: uid.into(),
        name: name.as_str().into(),
        namespace: w.namespace.as_str().into(),
        service_account: sa.into(),
        ips: w.workload_ips.clone(),
        hostname: hostname.into(),
        network: w.network.as_deref().unwrap_or("").into(),
        node: w.node.as_deref().unwrap_or("").into(),
        protocol: w.protocol,
        network_mode: w.network_mode,
        status: w.status,
        identity,
        services: w
            .services
            .0
            .iter()
            .map(|(s, ports)| WorkloadService {
                key: s.as_str().into(),
                ports: ports
                    .iter()
                    .flat_map(|m| &m.0)
                    .map(|(p, t)| (p.0, t.0))
                    .collect(),
            })
            .collect(),
        authorization_policies: policies,
        native_tunnel: w.native_tunnel,
        application_tunnel: w.application_tunnel.as_ref().map(|t| AppTunnel {
            protocol: t.protocol,
            port: t.port.map(|p| p.0),
        }),
        waypoint: gateway(&format!("{base}.waypoint"), &w.waypoint)?,
        network_gateway: gateway(&format!("{base}.networkGateway"), &w.network_gateway)?,
        workload_type: workload_type.into(),
        capacity: w.capacity.unwrap_or(1),
        meta: WorkloadMeta {
            canonical_name: w
                .canonical_name
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or(&workload_name)
                .into(),
            workload_name: workload_name.as_str().into(),
            canonical_revision: w
                .canonical_revision
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or("latest")
                .into(),
            cluster_id: w
                .cluster_id
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_CLUSTER_ID)
                .into(),
            region: locality.map_or("", |l| l.region.as_str()).into(),
            zone: locality.map_or("", |l| l.zone.as_str()).into(),
            subzone: locality.map_or("", |l| l.subzone.as_str()).into(),
        },
        labels,
    })
}

fn build_service(
    i: usize,
    s: &RawService,
    ip_owner: &HashMap<IpAddr, usize>,
    vip_owner: &mut HashMap<IpAddr, usize>,
    svc_index: &mut HashMap<(String, String), usize>,
    raw_workloads: &[RawWorkload],
) -> Result<Service, ConfigError> {
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
    for (j, vip) in s.vips.iter().enumerate() {
        let path = format!("{base}.vips[{j}]");
        if let Some(&wi) = ip_owner.get(&vip.ip) {
            let w = &raw_workloads[wi];
            return Err(invalid(
                path,
                format!(
                    "{} is also an IP of workloads[{wi}] ({}/{})",
                    vip.ip,
                    w.namespace,
                    w.name.as_deref().or(w.uid.as_deref()).unwrap_or("")
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
    let mut sans = Vec::with_capacity(s.subject_alt_names.len());
    for (j, san) in s.subject_alt_names.iter().enumerate() {
        san.parse::<Identity>()
            .map_err(|e| invalid(format!("{base}.subjectAltNames[{j}]"), e.to_string()))?;
        sans.push(Arc::from(san.as_str()));
    }
    let lb = s.load_balancer.as_ref();
    Ok(Service {
        name: s.name.as_str().into(),
        namespace: s.namespace.as_str().into(),
        hostname: s.hostname.as_str().into(),
        vips: s.vips.clone(),
        ports: s.ports.0.iter().map(|(p, t)| (p.0, t.0)).collect(),
        load_balancing: s.load_balancing,
        health_policy: lb.map(|l| l.health_policy).unwrap_or_default(),
        locality_lb: lb.map(|l| LocalityLb {
            mode: l.mode,
            routing_preference: l.routing_preferences.clone(),
        }),
        subject_alt_names: sans,
        waypoint: gateway(&format!("{base}.waypoint"), &s.waypoint)?,
        canonical: s.canonical,
        visibility: s.visibility,
        members: Vec::new(),
    })
}

/// Indices of the workloads a short-form policy's `destination` names.
fn policy_targets(
    base: &str,
    p: &RawPolicy,
    raw_workloads: &[RawWorkload],
    uid_owner: &HashMap<String, usize>,
    svc_index: &HashMap<(String, String), usize>,
    raw: &RawConfig,
) -> Result<Vec<usize>, ConfigError> {
    let Some(d) = &p.destination else {
        return Ok(Vec::new());
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
        let (ns, host) = service_ref(r).map_err(|e| invalid(&path, e))?;
        let Some(&si) = svc_index.get(&(ns.to_string(), host.to_string())) else {
            return Err(invalid(path, format!("unknown service {r:?}")));
        };
        let s = &raw.services[si];
        for (wi, w) in raw_workloads.iter().enumerate() {
            let listed = w.services.0.iter().any(|(k, _)| k == r);
            let endpoint = s
                .endpoints
                .keys()
                .any(|uid| uid_owner.get(uid) == Some(&wi));
            if listed || endpoint {
                out.push(wi);
            }
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

fn build_policy(base: &str, p: &RawPolicy) -> Result<Authorization, ConfigError> {
    non_empty(&format!("{base}.name"), &p.name)?;
    let namespace = p.namespace.clone().unwrap_or_default();
    if !namespace.is_empty() {
        segment(&format!("{base}.namespace"), &namespace)?;
    }
    let Some(rules) = &p.rules else {
        return short_policy(base, p, namespace);
    };
    for (key, used) in [
        ("destination", p.destination.is_some()),
        ("from", !p.from.is_empty()),
        ("ports", !p.ports.is_empty()),
    ] {
        if used {
            return Err(invalid(
                format!("{base}.{key}"),
                "cannot be combined with `rules` (write the condition as a match of a rule)",
            ));
        }
    }
    let Some(scope) = p.scope else {
        return Err(invalid(
            format!("{base}.scope"),
            "a policy with `rules` needs a scope: Global, Namespace or WorkloadSelector",
        ));
    };
    if scope != Scope::Global && namespace.is_empty() {
        return Err(invalid(
            format!("{base}.namespace"),
            format!("a {scope} policy needs its namespace"),
        ));
    }
    let mut out = Vec::with_capacity(rules.len());
    for (r, rule) in rules.iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.len());
        for (c, clause) in rule.iter().enumerate() {
            let mut matches = Vec::with_capacity(clause.len());
            for (m, raw) in clause.iter().enumerate() {
                matches.push(build_match(&format!("{base}.rules[{r}][{c}][{m}]"), raw)?);
            }
            clauses.push(Clause { matches });
        }
        out.push(Rule { clauses });
    }
    Ok(Authorization {
        name: p.name.as_str().into(),
        namespace: namespace.into(),
        scope,
        action: p.action,
        dry_run: p.dry_run,
        rules: out,
    })
}

fn build_match(base: &str, m: &RawMatch) -> Result<Match, ConfigError> {
    let strings = |l: &[RawStringMatch]| -> Vec<StringMatch> {
        l.iter()
            .map(|s| match s {
                RawStringMatch::Exact(v) => StringMatch::Exact(v.as_str().into()),
                RawStringMatch::Prefix(v) => StringMatch::Prefix(v.as_str().into()),
                RawStringMatch::Suffix(v) => StringMatch::Suffix(v.as_str().into()),
                RawStringMatch::Presence(_) => StringMatch::Presence,
            })
            .collect()
    };
    let sas = |l: &[super::model::RawServiceAccount]| {
        l.iter()
            .map(|s| ServiceAccountMatch {
                namespace: s.namespace.as_str().into(),
                service_account: s.service_account.as_str().into(),
            })
            .collect()
    };
    let cidrs = |key: &str, l: &[String]| -> Result<Vec<Cidr>, ConfigError> {
        l.iter()
            .enumerate()
            .map(|(k, c)| {
                c.parse()
                    .map_err(|e: String| invalid(format!("{base}.{key}[{k}]"), e))
            })
            .collect()
    };
    let ports = |l: &[super::model::Port]| l.iter().map(|p| p.0).collect();
    let out = Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        service_accounts: sas(&m.service_accounts),
        not_service_accounts: sas(&m.not_service_accounts),
        source_ips: cidrs("sourceIps", &m.source_ips)?,
        not_source_ips: cidrs("notSourceIps", &m.not_source_ips)?,
        destination_ips: cidrs("destinationIps", &m.destination_ips)?,
        not_destination_ips: cidrs("notDestinationIps", &m.not_destination_ips)?,
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
    };
    Ok(out)
}

/// ringmesh's short form as a full policy: one rule whose clauses are "any `from` entry"
/// and "one of `ports`" (each only when given); global without `destination`, else scoped
/// to the workloads `destination` names.
fn short_policy(
    base: &str,
    p: &RawPolicy,
    namespace: String,
) -> Result<Authorization, ConfigError> {
    if let Some(scope) = p.scope {
        return Err(invalid(
            format!("{base}.scope"),
            format!("scope {scope} needs `rules`; the short form's scope is its `destination`"),
        ));
    }
    let mut clauses = Vec::new();
    if !p.from.is_empty() {
        let mut matches = Vec::with_capacity(p.from.len());
        for (j, s) in p.from.iter().enumerate() {
            matches.push(source_match(&format!("{base}.from[{j}]"), s)?);
        }
        clauses.push(Clause { matches });
    }
    if !p.ports.is_empty() {
        clauses.push(Clause {
            matches: vec![Match {
                destination_ports: p.ports.iter().map(|p| p.0).collect(),
                ..Match::default()
            }],
        });
    }
    Ok(Authorization {
        name: p.name.as_str().into(),
        namespace: namespace.into(),
        scope: if p.destination.is_some() {
            Scope::WorkloadSelector
        } else {
            Scope::Global
        },
        action: p.action,
        dry_run: p.dry_run,
        rules: vec![Rule { clauses }],
    })
}

fn source_match(base: &str, s: &RawSource) -> Result<Match, ConfigError> {
    let principals = |key: &str, list: &[String]| -> Result<Vec<StringMatch>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(k, t)| principal(t).map_err(|r| invalid(format!("{base}.{key}[{k}]"), r)))
            .collect()
    };
    let namespaces = |key: &str, list: &[String]| -> Result<Vec<StringMatch>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(k, n)| {
                segment(&format!("{base}.{key}[{k}]"), n)
                    .map(|()| StringMatch::Exact(n.as_str().into()))
            })
            .collect()
    };
    let m = Match {
        principals: principals("principals", &s.principals)?,
        not_principals: principals("notPrincipals", &s.not_principals)?,
        namespaces: namespaces("namespaces", &s.namespaces)?,
        not_namespaces: namespaces("notNamespaces", &s.not_namespaces)?,
        ..Match::default()
    };
    if m.is_empty() {
        return Err(invalid(
            base,
            "matches nothing in particular: give principals, namespaces, notPrincipals or notNamespaces (omit `from` to match every source)",
        ));
    }
    Ok(m)
}

/// A principal as the short form writes it: `spiffe://td/ns/x/sa/y`, `td/ns/x/sa/y`,
/// `prefix*`, `*suffix` or `*`; an exact one must be a valid identity.
fn principal(text: &str) -> Result<StringMatch, String> {
    let bare = text.strip_prefix("spiffe://").unwrap_or(text);
    match bare.matches('*').count() {
        0 => format!("spiffe://{bare}")
            .parse::<Identity>()
            .map(|id| StringMatch::Exact(id.principal().into()))
            .map_err(|e| e.to_string()),
        1 if bare == "*" || (bare.len() > 1 && (bare.starts_with('*') || bare.ends_with('*'))) => {
            Ok(StringMatch::from_istio(bare))
        }
        _ => Err(format!(
            "{text:?} is not a principal (an identity like cluster.local/ns/NS/sa/SA, \
             optionally with one '*' at the start or end, or '*')"
        )),
    }
}
