//! The YAML file's shape: what serde reads, before any cross-reference check.
//!
//! Every struct denies unknown keys, so a typo is an error with its path instead of a
//! silently ignored setting. The schema is a superset of ztunnel's local config file (its
//! `LOCAL_XDS_PATH` YAML: workloads, services and policies with the same camelCase keys,
//! tagged string matches, `network/IP` VIPs), so a ztunnel file loads as it is; ringmesh
//! adds `node`, a short policy form and defaults for identity fields (trust domain
//! `cluster.local`, service account `default`, where ztunnel's file would leave them empty).
//! Values that can be checked alone (IP syntax, port ranges, enum spellings) are checked
//! here, while serde still knows the field's path; everything that needs the whole file
//! (duplicates, references) is checked in `build.rs`.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

pub use super::policy::{Action, Scope};
use super::types::{
    AppTunnelProtocol, HealthPolicy, LocalityMode, LocalityScope, NetworkMode, Visibility,
};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(
    rename = "MeshConfig",
    expecting = "a mesh config: a mapping with `node`, `workloads`, `services`, `policies`, `httpRoutes`, `grpcRoutes`, `virtualServices`, `destinationRules`, `authorizationPolicies`, `requestAuthentications` and `telemetries`",
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
    /// L7 routes for the waypoint (Gateway API HTTPRoute, attached to Services); nodes
    /// carry them but only `ringmesh waypoint` applies them.
    #[serde(default)]
    pub http_routes: Vec<waypoint::route::HttpRouteSpec>,
    /// Gateway API GRPCRoutes, attached to Services as HTTPRoutes are; compiled as the
    /// HTTPRoutes they stand for.
    #[serde(default)]
    pub grpc_routes: Vec<waypoint::route::GrpcRouteSpec>,
    /// Istio VirtualServices (the subset an HTTPRoute can express), translated into
    /// HTTPRoutes whose rules keep their order.
    #[serde(default)]
    pub virtual_services: Vec<waypoint::vs::VirtualServiceSpec>,
    /// Istio DestinationRules: the subsets VirtualService destinations name, and the
    /// waypoint's endpoint balancing per Service.
    #[serde(default)]
    pub destination_rules: Vec<waypoint::dr::DestinationRuleSpec>,
    /// Istio's L7 AuthorizationPolicy, attached to Services by `targetRefs`; enforced by the
    /// waypoint. (`policies` is ztunnel's L4 form, enforced by the nodes.)
    #[serde(default)]
    pub authorization_policies: Vec<waypoint::security::AuthorizationPolicySpec>,
    /// Istio's RequestAuthentication (JWT), attached by `targetRefs`; enforced by the
    /// waypoint.
    #[serde(default)]
    pub request_authentications: Vec<waypoint::security::RequestAuthenticationSpec>,
    /// Istio's Telemetry API (`telemetry.istio.io` Telemetry): the waypoint's spans, access
    /// log and metrics, with the providers of `--mesh-config`.
    #[serde(default)]
    pub telemetries: Vec<waypoint::telemetry::TelemetrySpec>,
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
    /// Required unless `uid` is given (ztunnel's files may omit it).
    #[serde(default)]
    pub name: Option<String>,
    pub namespace: String,
    /// Defaults to `default`, as Kubernetes does for a pod without one.
    #[serde(default)]
    pub service_account: Option<String>,
    /// At least one, unless `hostname` is given.
    #[serde(default, deserialize_with = "ip_list")]
    pub workload_ips: Vec<IpAddr>,
    /// A DNS name for a workload known by name (ztunnel's `hostname`).
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    /// The node it runs on; a workload without one is never local.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub network_mode: NetworkMode,
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// Services this workload is an endpoint of, as `namespace/hostname`.
    #[serde(default)]
    pub services: WorkloadServices,
    /// Selector-scoped policies (`namespace/name`) that protect it.
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    #[serde(default)]
    pub status: HealthStatus,
    /// The workload (controller) this pod belongs to, e.g. the Deployment; Istio's
    /// `source_workload` label. Defaults to `name`.
    #[serde(default)]
    pub workload_name: Option<String>,
    /// `deployment`, `pod`, `job` or `cronjob`; defaults to `pod`.
    #[serde(default)]
    pub workload_type: Option<String>,
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
    #[serde(default)]
    pub native_tunnel: bool,
    #[serde(default)]
    pub application_tunnel: Option<RawAppTunnel>,
    #[serde(default)]
    pub waypoint: Option<RawGateway>,
    #[serde(default)]
    pub network_gateway: Option<RawGateway>,
    /// Relative weight as an endpoint; defaults to 1.
    #[serde(default)]
    pub capacity: Option<u32>,
    /// The pod's labels, for DestinationRule subsets (a ringmesh addition: istiod does not
    /// send labels to node proxies).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// ztunnel's `applicationTunnel`.
#[derive(Debug, Deserialize)]
#[serde(
    rename = "applicationTunnel",
    expecting = "an application tunnel (a mapping with protocol and port)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawAppTunnel {
    #[serde(default)]
    pub protocol: AppTunnelProtocol,
    #[serde(default)]
    pub port: Option<Port>,
}

/// ztunnel's `GatewayAddress`: `destination` is `network/IP` or `namespace/hostname`.
#[derive(Debug, Deserialize)]
#[serde(
    rename = "gateway",
    expecting = "a gateway (a mapping with destination and hboneMtlsPort)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawGateway {
    pub destination: String,
    pub hbone_mtls_port: Port,
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
    /// Empty for a headless service.
    pub vips: Vec<Vip>,
    pub ports: PortMap,
    /// ringmesh's pick among endpoints.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// istiod's locality preferences and health policy (ztunnel's `loadBalancer`).
    #[serde(default)]
    pub load_balancer: Option<RawLocalityLb>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub waypoint: Option<RawGateway>,
    #[serde(default)]
    pub canonical: bool,
    #[serde(default)]
    pub visibility: Visibility,
    /// Members by workload uid, besides those whose `services` name this one (ztunnel's
    /// local files may list them here).
    #[serde(default)]
    pub endpoints: std::collections::BTreeMap<String, RawEndpoint>,
}

/// ztunnel's `loadBalancer`.
#[derive(Debug, Deserialize)]
#[serde(
    rename = "loadBalancer",
    expecting = "a load balancer (a mapping with routingPreferences, mode and healthPolicy)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawLocalityLb {
    #[serde(default)]
    pub routing_preferences: Vec<LocalityScope>,
    pub mode: LocalityMode,
    #[serde(default)]
    pub health_policy: HealthPolicy,
}

/// One entry of a service's `endpoints`.
#[derive(Debug, Deserialize)]
#[serde(
    rename = "endpoint",
    expecting = "an endpoint (a mapping with workloadUid, port and status)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawEndpoint {
    pub workload_uid: String,
    #[serde(default)]
    pub port: PortMap,
    /// Accepted for ztunnel's files and ignored: the workload's own status decides.
    #[serde(default)]
    #[allow(dead_code)]
    pub status: HealthStatus,
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
            // `/IP` is ztunnel's spelling of the default network.
            Ok(ip) => Ok(Vip {
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

/// A target port, 0..=65535: 0 means "decided elsewhere" (a service's 0 lets each endpoint
/// name its own; an endpoint's 0 takes the service's), as in Istio's workload API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetPort(pub u16);

/// Reads a port from a YAML number or a string of digits; `ZERO` allows 0.
struct PortVisitor<const ZERO: bool>;

impl<const ZERO: bool> PortVisitor<ZERO> {
    fn check<E: de::Error>(v: u64) -> Result<u16, E> {
        let range = if ZERO { "0-65535" } else { "1-65535" };
        match u16::try_from(v) {
            Ok(0) if !ZERO => Err(E::custom("port 0 is not allowed (ports are 1-65535)")),
            Ok(p) => Ok(p),
            Err(_) => Err(E::custom(format!(
                "{v} is out of range (ports are {range})"
            ))),
        }
    }
}

impl<const ZERO: bool> Visitor<'_> for PortVisitor<ZERO> {
    type Value = u16;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if ZERO {
            "a port number (0-65535)"
        } else {
            "a port number (1-65535)"
        })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
        Self::check(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
        match u64::try_from(v) {
            Ok(v) => Self::check(v),
            Err(_) => Err(E::custom(format!(
                "{v} is out of range (ports are 1-65535)"
            ))),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u16, E> {
        // YAML keys are often quoted; "8080" is still a port, "http" is not.
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            match v.parse::<u64>() {
                Ok(n) => Self::check(n),
                Err(_) => Err(E::custom(format!(
                    "{v} is out of range (ports are 1-65535)"
                ))),
            }
        } else {
            Err(E::custom(format!("{v:?} is not a port number")))
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u16, E> {
        Err(E::custom(format!("{v} is not a port number")))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<u16, E> {
        Err(E::custom(format!("{v} is not a port number")))
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
        d.deserialize_any(PortVisitor::<false>).map(Port)
    }
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TargetPort, D::Error> {
        d.deserialize_any(PortVisitor::<true>).map(TargetPort)
    }
}

/// A service's `ports`: service port → target port, in file order, no duplicate keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMap(pub Vec<(Port, TargetPort)>);

impl<'de> Deserialize<'de> for PortMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortMap, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = PortMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of service port to target port")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PortMap, A::Error> {
                let mut out: Vec<(Port, TargetPort)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<Port, TargetPort>()? {
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

/// An L4 authorization policy, in either form:
/// - ztunnel's (Istio's `Authorization`): `namespace`, `scope`, `action`, `dryRun` and
///   `rules`, a list (any) of lists (all) of lists (any) of matches;
/// - ringmesh's short one: `action`, optional `destination`, `from` and `ports`.
#[derive(Debug, Deserialize)]
#[serde(
    rename = "policy",
    expecting = "a policy (a mapping)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawPolicy {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub scope: Option<Scope>,
    pub action: Action,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub rules: Option<Vec<Vec<Vec<RawMatch>>>>,
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

/// One match of a rule's clause (ztunnel's `RbacMatch`).
#[derive(Debug, Default, Deserialize)]
#[serde(
    rename = "match",
    expecting = "a match (a mapping)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawMatch {
    #[serde(default)]
    pub namespaces: Vec<RawStringMatch>,
    #[serde(default)]
    pub not_namespaces: Vec<RawStringMatch>,
    #[serde(default)]
    pub principals: Vec<RawStringMatch>,
    #[serde(default)]
    pub not_principals: Vec<RawStringMatch>,
    #[serde(default)]
    pub service_accounts: Vec<RawServiceAccount>,
    #[serde(default)]
    pub not_service_accounts: Vec<RawServiceAccount>,
    #[serde(default)]
    pub source_ips: Vec<String>,
    #[serde(default)]
    pub not_source_ips: Vec<String>,
    #[serde(default)]
    pub destination_ips: Vec<String>,
    #[serde(default)]
    pub not_destination_ips: Vec<String>,
    #[serde(default)]
    pub destination_ports: Vec<Port>,
    #[serde(default)]
    pub not_destination_ports: Vec<Port>,
}

/// A string match as ztunnel's files tag it: `!Exact x`, `!Prefix x`, `!Suffix x`,
/// `!Presence []`.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a tagged string match: !Exact, !Prefix, !Suffix or !Presence")]
pub(crate) enum RawStringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence(de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
#[serde(
    rename = "serviceAccount",
    expecting = "a service account match (a mapping with namespace and serviceAccount)",
    rename_all = "camelCase",
    deny_unknown_fields
)]
pub(crate) struct RawServiceAccount {
    pub namespace: String,
    pub service_account: String,
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
