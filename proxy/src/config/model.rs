//! The YAML file's shape: what serde reads, before any cross-reference check.
//!
//! Every struct denies unknown keys, so a typo is an error with its path instead of a
//! silently ignored setting. Key names follow ztunnel's local config file where the two
//! overlap (`uid`, `name`, `namespace`, `serviceAccount`, `workloadIps`, `node`, `protocol`,
//! `trustDomain`, `services`, `hostname`, `vips`, `ports`), so a ztunnel user feels at home.
//! Values that can be checked alone (IP syntax, port ranges, enum spellings) are checked
//! here, while serde still knows the field's path; everything that needs the whole file
//! (duplicates, references) is checked in `snapshot.rs`.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(
    rename = "MeshConfig",
    expecting = "a mesh config: a mapping with `node`, `workloads`, `services` and `policies`",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawConfig {
    /// This node's name; the CLI may override it.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub workloads: Vec<RawWorkload>,
    #[serde(default)]
    pub services: Vec<RawService>,
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(
    rename = "workload",
    expecting = "a workload (a mapping)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawWorkload {
    /// Defaults to `<namespace>/<name>`.
    #[serde(default)]
    pub uid: Option<String>,
    pub name: String,
    pub namespace: String,
    /// Defaults to `default`, as Kubernetes does for a pod without one.
    #[serde(default)]
    pub service_account: Option<String>,
    #[serde(deserialize_with = "ip_list")]
    pub workload_ips: Vec<IpAddr>,
    pub node: String,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// Services this workload is an endpoint of, as `namespace/hostname`.
    #[serde(default)]
    pub services: WorkloadServices,
    #[serde(default)]
    pub status: HealthStatus,
    /// The workload (controller) this pod belongs to, e.g. the Deployment; Istio's
    /// `source_workload` label. Defaults to `name`.
    #[serde(default)]
    pub workload_name: Option<String>,
    /// Istio's canonical service (`service.istio.io/canonical-name`, else `app`). Defaults to
    /// the workload name.
    #[serde(default)]
    pub canonical_name: Option<String>,
    /// Istio's canonical revision (`service.istio.io/canonical-revision`, else `version`).
    /// Defaults to `latest`, as istiod does.
    #[serde(default)]
    pub canonical_revision: Option<String>,
    /// The cluster the workload runs in. Defaults to `Kubernetes`, istiod's default.
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub locality: Option<RawLocality>,
}

/// Where a workload runs (ztunnel's `locality`).
#[derive(Debug, Default, Deserialize)]
#[serde(
    rename = "locality",
    expecting = "a locality (a mapping with region, zone, subzone)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawLocality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub subzone: String,
}

/// A list of IP addresses whose errors quote the bad text.
fn ip_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    struct Ip(IpAddr);
    impl<'de> Deserialize<'de> for Ip {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ip, D::Error> {
            let s = String::deserialize(d)?;
            s.parse()
                .map(Ip)
                .map_err(|_| de::Error::custom(format!("{s:?} is not an IP address")))
        }
    }
    Ok(Vec::<Ip>::deserialize(d)?
        .into_iter()
        .map(|ip| ip.0)
        .collect())
}

/// How a workload receives mesh traffic (ztunnel's `protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Protocol {
    /// mTLS + HTTP/2 CONNECT to the workload's node proxy on port 15008.
    #[serde(rename = "HBONE")]
    Hbone,
    /// Plain TCP straight to the workload (not in the mesh); ztunnel's default too.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
}

/// Whether a workload may be picked as a service endpoint (ztunnel's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Debug, Deserialize)]
#[serde(
    rename = "service",
    expecting = "a service (a mapping)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawService {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<Vip>,
    pub ports: PortMap,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
}

/// How a service spreads connections over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    Random,
}

/// A service VIP: `IP` or `network/IP` (ztunnel's `NetworkAddress` text form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// Empty for the default network. ringmesh runs one flat network: the network is
    /// kept for display, and an IP may be a VIP of one service only, whatever its network.
    pub network: String,
    pub ip: IpAddr,
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.network.is_empty() {
            write!(f, "{}", self.ip)
        } else {
            write!(f, "{}/{}", self.network, self.ip)
        }
    }
}

impl<'de> Deserialize<'de> for Vip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Vip, D::Error> {
        let s = String::deserialize(d)?;
        let (network, ip) = match s.split_once('/') {
            Some((net, ip)) => (net, ip),
            None => ("", s.as_str()),
        };
        match ip.parse::<IpAddr>() {
            Ok(ip) if !(s.contains('/') && network.is_empty()) => Ok(Vip {
                network: network.to_string(),
                ip,
            }),
            _ => Err(de::Error::custom(format!(
                "{s:?} is not an IP address or \"network/IP\""
            ))),
        }
    }
}

/// A TCP port, 1..=65535, written as a YAML number or a string of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u16);

impl Port {
    fn from_u64<E: de::Error>(v: u64) -> Result<Port, E> {
        match u16::try_from(v) {
            Ok(0) => Err(E::custom("port 0 is not allowed (ports are 1-65535)")),
            Ok(p) => Ok(Port(p)),
            Err(_) => Err(E::custom(format!(
                "{v} is out of range (ports are 1-65535)"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                Port::from_u64(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                match u64::try_from(v) {
                    Ok(v) => Port::from_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "{v} is out of range (ports are 1-65535)"
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
                // YAML keys are often quoted; "8080" is still a port, "http" is not.
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    match v.parse::<u64>() {
                        Ok(n) => Port::from_u64(n),
                        Err(_) => Err(E::custom(format!(
                            "{v} is out of range (ports are 1-65535)"
                        ))),
                    }
                } else {
                    Err(E::custom(format!("{v:?} is not a port number")))
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Port, E> {
                Err(E::custom(format!("{v} is not a port number")))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Port, E> {
                Err(E::custom(format!("{v} is not a port number")))
            }
        }
        d.deserialize_any(PortVisitor)
    }
}

/// A service's `ports`: service port → target port, in file order, no duplicate keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMap(pub Vec<(Port, Port)>);

impl<'de> Deserialize<'de> for PortMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortMap, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = PortMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of service port to target port")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PortMap, A::Error> {
                let mut out: Vec<(Port, Port)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<Port, Port>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format!(
                            "service port {} is listed twice",
                            k.0
                        )));
                    }
                    out.push((k, v));
                }
                Ok(PortMap(out))
            }
        }
        d.deserialize_map(MapVisitor)
    }
}

/// A workload's `services`, in either form:
/// - a list of `namespace/hostname`;
/// - ztunnel's local-config map `namespace/hostname: {servicePort: targetPort}`, whose
///   ports override the service's target ports for this workload (`{}` for none).
#[derive(Debug, Default)]
pub(crate) struct WorkloadServices(pub Vec<(String, Option<PortMap>)>);

impl WorkloadServices {
    /// Whether it was written as a map (paths then name the key, not an index).
    pub fn is_map(&self) -> bool {
        self.0.first().is_some_and(|(_, ports)| ports.is_some())
    }
}

impl<'de> Deserialize<'de> for WorkloadServices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WorkloadServices, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WorkloadServices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a list of \"namespace/hostname\", or a map of \"namespace/hostname\" to {servicePort: targetPort}",
                )
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<WorkloadServices, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    out.push((name, None));
                }
                Ok(WorkloadServices(out))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<WorkloadServices, A::Error> {
                let mut out = Vec::new();
                while let Some((name, ports)) = map.next_entry::<String, Option<PortMap>>()? {
                    out.push((name, Some(ports.unwrap_or_default())));
                }
                Ok(WorkloadServices(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// An L4 authorization policy.
#[derive(Debug, Deserialize)]
#[serde(
    rename = "policy",
    expecting = "a policy (a mapping)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawPolicy {
    pub name: String,
    pub action: Action,
    /// Which workloads it protects; absent means every workload in the mesh.
    #[serde(default)]
    pub destination: Option<RawDestination>,
    /// Sources it matches (any entry); empty means every source.
    #[serde(default)]
    pub from: Vec<RawSource>,
    /// Destination (target) ports it matches; empty means every port.
    #[serde(default)]
    pub ports: Vec<Port>,
}

/// What a matching policy does (ztunnel's `RbacAction` spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(
    rename = "destination",
    expecting = "a destination (a mapping)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawDestination {
    /// Workload uids.
    #[serde(default)]
    pub workloads: Vec<String>,
    /// Services as `namespace/hostname`: the policy protects their endpoints.
    #[serde(default)]
    pub services: Vec<String>,
    /// Every workload in these namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// One source match; every list given must match (lists are ORs inside).
#[derive(Debug, Deserialize)]
#[serde(
    rename = "source",
    expecting = "a source match (a mapping)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawSource {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
}
