//! `/config_dump` in the shape `istioctl ztunnel-config` reads (ztunnel's `ConfigDump`):
//! `workloads`, `services` (with `endpoints`), `policies`, `certificates` (PEM chain, serial
//! number, validity), plus ringmesh's own `config` (node, driver, workers, listeners).
//!
//! Owns: the JSON document. Invariants: object keys are sorted (serde_json's map, as
//! ztunnel's output); every field istioctl models has the type it decodes (a mismatch is fatal
//! for istioctl); certificate `pem` is the base64 of the PEM text, `serialNumber` a decimal
//! string, and times RFC 3339 to the second (docs/design-notes.md "istioctl").

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::config::snapshot::{AppTunnelProtocol, Gateway, HealthPolicy, NetworkMode, Visibility};
use crate::config::{Action, HealthStatus, Protocol, Snapshot, Workload};
use crate::identity::CertSet;
use crate::telemetry::format::rfc3339_secs;

/// What the dump says about the node beyond the mesh config.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Option<String>,
    pub driver: String,
    pub cores: Vec<Option<usize>>,
    pub incoming_cpu: &'static str,
    pub listeners: BTreeMap<&'static str, Option<SocketAddr>>,
    pub hbone_port: u16,
    pub plaintext_port: u16,
    pub config_hash: u64,
}

/// The whole document.
pub fn config_dump(snapshot: &Snapshot, certs: &CertSet, node: &NodeInfo) -> Value {
    let mut workloads: Vec<&std::sync::Arc<Workload>> = snapshot.workloads().iter().collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut services: Vec<_> = snapshot.services().iter().collect();
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    json!({
        "workloads": workloads.iter().map(|w| workload(w)).collect::<Vec<_>>(),
        "services": services.iter().map(|s| service(s)).collect::<Vec<_>>(),
        "policies": policies(snapshot),
        "certificates": certificates(certs),
        "stagedServices": {},
        "staticConfig": {"workloads": [], "services": [], "policies": []},
        "version": {
            "version": env!("CARGO_PKG_VERSION"),
            "buildProfile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "cryptoProvider": "aws-lc-rs",
        },
        "config": {
            "node": node.node,
            "configHash": format!("{:016x}", node.config_hash),
            "driver": node.driver,
            "workers": node.cores.len(),
            "cores": node.cores,
            "incomingCpu": node.incoming_cpu,
            "listeners": node.listeners,
            "hbonePort": node.hbone_port,
            "plaintextPort": node.plaintext_port,
        },
    })
}

/// `network/IP`, with the empty network of a flat mesh (`/10.0.0.1`).
fn net_addr(network: &str, ip: IpAddr) -> String {
    format!("{network}/{ip}")
}

fn gateway(g: &Gateway) -> Value {
    json!({"destination": g.target.to_string(), "hboneMtlsPort": g.hbone_port})
}

fn workload(w: &Workload) -> Value {
    let mut v = json!({
        "uid": &*w.uid,
        "name": &*w.name,
        "namespace": &*w.namespace,
        "workloadIps": w.ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "protocol": match w.protocol { Protocol::Hbone => "HBONE", Protocol::Tcp => "TCP" },
        "networkMode": match w.network_mode { NetworkMode::Standard => "Standard", NetworkMode::HostNetwork => "HostNetwork" },
        "network": &*w.network,
        "trustDomain": w.identity.trust_domain(),
        "serviceAccount": &*w.service_account,
        "workloadName": &*w.meta.workload_name,
        "workloadType": &*w.workload_type,
        "canonicalName": &*w.meta.canonical_name,
        "canonicalRevision": &*w.meta.canonical_revision,
        "node": &*w.node,
        "status": match w.status { HealthStatus::Healthy => "Healthy", HealthStatus::Unhealthy => "Unhealthy" },
        "clusterId": &*w.meta.cluster_id,
        "capacity": w.capacity,
        "nativeTunnel": w.native_tunnel,
    });
    let obj = v.as_object_mut().expect("a JSON object");
    if !w.services.is_empty() {
        obj.insert(
            "services".into(),
            json!(w.services.iter().map(|s| &*s.key).collect::<Vec<_>>()),
        );
    }
    if !w.hostname.is_empty() {
        obj.insert("hostname".into(), json!(&*w.hostname));
    }
    if let Some(g) = &w.waypoint {
        obj.insert("waypoint".into(), gateway(g));
    }
    if let Some(g) = &w.network_gateway {
        obj.insert("networkGateway".into(), gateway(g));
    }
    if let Some(t) = &w.application_tunnel {
        let protocol = match t.protocol {
            AppTunnelProtocol::None => "NONE",
            AppTunnelProtocol::Proxy => "PROXY",
        };
        obj.insert(
            "applicationTunnel".into(),
            json!({"protocol": protocol, "port": t.port}),
        );
    }
    let m = &w.meta;
    if !(m.region.is_empty() && m.zone.is_empty() && m.subzone.is_empty()) {
        obj.insert(
            "locality".into(),
            json!({"region": &*m.region, "zone": &*m.zone, "subzone": &*m.subzone}),
        );
    }
    let policies: Vec<&str> = w.authorization_policies.iter().map(|k| &**k).collect();
    if !policies.is_empty() {
        obj.insert("authorizationPolicies".into(), json!(policies));
    }
    v
}

fn service(s: &crate::config::Service) -> Value {
    let ports: BTreeMap<String, u16> = s.ports.iter().map(|&(p, t)| (p.to_string(), t)).collect();
    let key = s.key();
    let mut endpoints = serde_json::Map::new();
    for w in &s.members {
        // The workload's own target ports (0 or absent: the service's).
        let own = w.services.iter().find(|m| *m.key == *key);
        let mut port = BTreeMap::new();
        for &(svc_port, target) in &s.ports {
            let overridden = own
                .and_then(|m| m.ports.iter().find(|(p, _)| *p == svc_port))
                .map(|(_, t)| *t)
                .filter(|t| *t != 0);
            port.insert(svc_port.to_string(), overridden.unwrap_or(target));
        }
        endpoints.insert(
            w.uid.to_string(),
            json!({
                "workloadUid": &*w.uid,
                "port": port,
                "status": match w.status { HealthStatus::Healthy => "Healthy", HealthStatus::Unhealthy => "Unhealthy" },
            }),
        );
    }
    let mut v = json!({
        "name": &*s.name,
        "namespace": &*s.namespace,
        "hostname": &*s.hostname,
        "vips": s.vips.iter().map(|v| net_addr(&v.network, v.ip)).collect::<Vec<_>>(),
        "ports": ports,
        "endpoints": endpoints,
        "subjectAltNames": s.subject_alt_names.iter().map(|n| &**n).collect::<Vec<_>>(),
        "canonical": s.canonical,
        "visibility": match s.visibility { Visibility::Public => "Public", Visibility::Namespace => "Namespace" },
    });
    let obj = v.as_object_mut().expect("a JSON object");
    if let Some(g) = &s.waypoint {
        obj.insert("waypoint".into(), gateway(g));
    }
    if let Some(lb) = &s.locality_lb {
        obj.insert(
            "loadBalancer".into(),
            json!({
                "routingPreferences": lb.routing_preference.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "mode": lb.mode.to_string(),
                "healthPolicy": match s.health_policy { HealthPolicy::OnlyHealthy => "OnlyHealthy", HealthPolicy::AllowAll => "AllowAll" },
            }),
        );
    }
    v
}

fn policies(snapshot: &Snapshot) -> Vec<Value> {
    snapshot
        .policies()
        .iter()
        .map(|p| {
            json!({
                "name": &*p.name,
                "namespace": &*p.namespace,
                "scope": p.scope.to_string(),
                "action": match p.action { Action::Allow => "Allow", Action::Deny => "Deny" },
                "rules": p.rules_dump(),
                "dryRun": p.dry_run,
            })
        })
        .collect()
}

fn certificates(certs: &CertSet) -> Vec<Value> {
    let roots: Vec<Value> = certs.roots().iter().map(|r| cert(r)).collect();
    certs
        .iter()
        .map(|(id, c)| {
            json!({
                "identity": id.to_string(),
                "state": "Available",
                "certChain": c.chain.iter().map(|der| cert(der)).collect::<Vec<_>>(),
                "rootCerts": roots,
            })
        })
        .collect()
}

/// One certificate as istioctl reads it.
fn cert(der: &[u8]) -> Value {
    let pem = pem_of(der);
    let pem_b64 = base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => {
            let validity = c.validity();
            let t = |ts: i64| {
                rfc3339_secs(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(ts.max(0) as u64),
                )
            };
            json!({
                "pem": pem_b64,
                "serialNumber": c.tbs_certificate.serial.to_string(),
                "validFrom": t(validity.not_before.timestamp()),
                "expirationTime": t(validity.not_after.timestamp()),
            })
        }
        Err(_) => {
            json!({"pem": pem_b64, "serialNumber": "0", "validFrom": "", "expirationTime": ""})
        }
    }
}

/// A certificate's PEM text (64-column base64 body).
fn pem_of(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}
