//! Mesh value types shared by both sources (the file and istiod's xDS): the parts of
//! Istio's workload API that are more than a string or a number.
//!
//! Spellings of the YAML forms follow ztunnel's local config file (`HostNetwork`,
//! `OnlyHealthy`, `Failover`, ...), so its files load as they are.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

/// How a workload's IP identifies it (Istio's `NetworkMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum NetworkMode {
    /// The IP is the workload's own.
    #[default]
    Standard,
    /// The IP is the node's, shared with other pods: never looked up by IP.
    HostNetwork,
}

/// Which endpoints of a service may be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum HealthPolicy {
    /// Only healthy workloads (Istio's default).
    #[default]
    OnlyHealthy,
    /// Every member, healthy or not.
    AllowAll,
}

/// Who may reach a service (Istio's `Service.Visibility`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Visibility {
    #[default]
    Public,
    /// Only clients in the service's namespace.
    Namespace,
}

/// A waypoint or network gateway: where to send a workload's or service's traffic instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub target: GatewayTarget,
    /// The HBONE port on it (15008 for a waypoint).
    pub hbone_port: u16,
}

/// A gateway's address: an IP, or a service (or workload) looked up by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayTarget {
    Address {
        network: Arc<str>,
        ip: IpAddr,
    },
    Hostname {
        namespace: Arc<str>,
        hostname: Arc<str>,
    },
}

impl fmt::Display for GatewayTarget {
    /// ztunnel's text form: `network/IP` or `namespace/hostname`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayTarget::Address { network, ip } => write!(f, "{network}/{ip}"),
            GatewayTarget::Hostname {
                namespace,
                hostname,
            } => write!(f, "{namespace}/{hostname}"),
        }
    }
}

/// How the last hop reaches the application (Istio's `ApplicationTunnel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppTunnel {
    pub protocol: AppTunnelProtocol,
    /// The port to send to after the last node hop, if not the target port.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AppTunnelProtocol {
    /// Bytes as they are.
    #[default]
    #[serde(rename = "NONE")]
    None,
    /// A PROXY protocol v2 header first.
    #[serde(rename = "PROXY")]
    Proxy,
}

/// istiod's locality-aware load balancing for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityLb {
    pub mode: LocalityMode,
    /// Most specific last is not required: the order given is the order of preference.
    pub routing_preference: Vec<LocalityScope>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LocalityMode {
    /// Preferences ignored.
    Standard,
    /// Only endpoints that match every preference.
    Strict,
    /// Best match first, then drop preferences from the end.
    Failover,
    /// No endpoint selection: the original destination is used.
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LocalityScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

impl fmt::Display for LocalityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for LocalityScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
