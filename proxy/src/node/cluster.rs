//! Cluster mode's settings: what ztunnel's chart gives ztunnel, read with the same names and
//! meanings (ztunnel's `src/config.rs`), so the same DaemonSet can run ringmesh.
//!
//! Owns: reading the environment (and the flags that override it) into
//! [`ClusterSettings`], with ztunnel's defaults and a message naming the variable for every
//! value that cannot work. Nothing here connects anywhere.

use std::path::Path;
use std::time::Duration;

use control::grpc::{self, ChannelConfig, RootCa, TokenSource};
use control::xds::NodeInfo;

/// istiod's address inside a cluster (ztunnel's default when `KUBERNETES_SERVICE_HOST` is set).
pub const IN_CLUSTER_ISTIOD: &str = "https://istiod.istio-system.svc:15012";
/// Where the chart mounts the mesh root certificate (`istio-ca-root-cert`), relative to the
/// working directory (`/` in the container), as ztunnel reads it.
pub const DEFAULT_ROOT_CA: &str = "./var/run/secrets/istio/root-cert.pem";
/// Where the chart mounts the projected service account token (audience `istio-ca`).
pub const DEFAULT_TOKEN: &str = "./var/run/secrets/tokens/istio-token";
/// Istio's default certificate lifetime (`SECRET_TTL`).
pub const DEFAULT_SECRET_TTL: Duration = Duration::from_secs(24 * 3600);

/// How the node holds workload identities (ztunnel's `PROXY_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// One proxy for every pod of the node: certificates are asked for on the pods' behalf
    /// (`ImpersonatedIdentity`).
    #[default]
    Shared,
    /// A proxy for one workload, whose own token identifies it.
    Dedicated,
}

impl std::str::FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<ProxyMode, String> {
        match s.to_ascii_lowercase().as_str() {
            "shared" => Ok(ProxyMode::Shared),
            "dedicated" => Ok(ProxyMode::Dedicated),
            _ => Err(format!("{s:?} is not a proxy mode (shared or dedicated)")),
        }
    }
}

/// Everything cluster mode needs from the environment and flags.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// How to reach istiod's xDS; `None`: no xDS.
    pub xds: Option<ChannelConfig>,
    /// How to reach the Istio CA; `None`: no Istio CA.
    pub ca: Option<ChannelConfig>,
    /// Who this node is to istiod (node id and metadata).
    pub node: NodeInfo,
    pub proxy_mode: ProxyMode,
    /// Requested certificate lifetime (`SECRET_TTL`).
    pub secret_ttl: Duration,
}

/// Values from flags, which win over the environment.
#[derive(Debug, Clone, Default)]
pub struct ClusterFlags {
    pub xds_address: Option<String>,
    pub ca_address: Option<String>,
    pub xds_root_ca: Option<String>,
    pub ca_root_ca: Option<String>,
    pub auth_token: Option<String>,
    pub cluster_id: Option<String>,
    pub node_name: Option<String>,
    pub proxy_mode: Option<ProxyMode>,
    pub secret_ttl: Option<Duration>,
    /// A mesh config file was given (the embedded source); no in-cluster xDS default then.
    pub has_config_file: bool,
    /// The built-in CA was given; no Istio CA default then.
    pub has_ca_dir: bool,
}

/// A duration as ztunnel's env writes them: `5s`, `250ms`, `1m`, `24h`, or seconds.
pub fn parse_env_duration(var: &str, v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{var}: {v:?} is not a duration like 5s or 24h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("{var}: {v:?}: unknown unit {unit:?}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{var}: {v:?} is out of range"))
}

impl ClusterSettings {
    /// The settings `env` (pairs, as `std::env::vars()` gives them) and `flags` describe;
    /// a value that cannot work is an error naming its variable or flag.
    pub fn from_env(
        env: impl IntoIterator<Item = (String, String)>,
        flags: &ClusterFlags,
    ) -> Result<ClusterSettings, String> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let in_cluster = get("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());

        // xDS: a flag or XDS_ADDRESS (empty disables); in a cluster without a config file,
        // istiod's in-cluster address.
        let xds_address = match flags.xds_address.clone().or_else(|| get("XDS_ADDRESS")) {
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(v),
            None if in_cluster && !flags.has_config_file => Some(IN_CLUSTER_ISTIOD.into()),
            None => None,
        };
        // The CA: a flag or CA_ADDRESS; by default the xDS address (as ztunnel), unless the
        // built-in CA was asked for.
        let ca_address = match flags.ca_address.clone().or_else(|| get("CA_ADDRESS")) {
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(v),
            None if !flags.has_ca_dir => xds_address.clone(),
            None => None,
        };
        let token = TokenSource::parse(
            flags
                .auth_token
                .clone()
                .or_else(|| get("AUTH_TOKEN"))
                .as_deref(),
            Path::new(DEFAULT_TOKEN),
        );
        let cluster_id = flags
            .cluster_id
            .clone()
            .or_else(|| get("ISTIO_META_CLUSTER_ID"))
            .or_else(|| get("CLUSTER_ID"))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| crate::config::DEFAULT_CLUSTER_ID.into());
        let channel = |var: &str,
                       address: Option<String>,
                       root: Option<String>,
                       alt: &str,
                       headers: &str|
         -> Result<Option<ChannelConfig>, String> {
            let Some(address) = address else {
                return Ok(None);
            };
            let root = RootCa::parse(&root.unwrap_or_else(|| DEFAULT_ROOT_CA.into()));
            let mut c = ChannelConfig::new(&address, root).map_err(|e| format!("{var}: {e}"))?;
            c.alt_hostname = get(alt).filter(|v| !v.is_empty());
            c.token = token.clone();
            c.cluster_id = cluster_id.clone();
            c.headers = grpc::headers_from_env(headers, env.iter().cloned());
            Ok(Some(c))
        };
        let xds = channel(
            "XDS_ADDRESS (--xds-address)",
            xds_address,
            flags.xds_root_ca.clone().or_else(|| get("XDS_ROOT_CA")),
            "ALT_XDS_HOSTNAME",
            "XDS_HEADER_",
        )?;
        let ca = channel(
            "CA_ADDRESS (--ca-address)",
            ca_address,
            flags.ca_root_ca.clone().or_else(|| get("CA_ROOT_CA")),
            "ALT_CA_HOSTNAME",
            "CA_HEADER_",
        )?;
        if let Some(v) = get("INSTANCE_IP").filter(|v| !v.is_empty()) {
            v.parse::<std::net::IpAddr>()
                .map_err(|_| format!("INSTANCE_IP: {v:?} is not an IP address"))?;
        }
        let mut node = NodeInfo::from_env(env.iter().cloned()).map_err(|e| e.to_string())?;
        if let Some(n) = &flags.node_name {
            node.node_name = n.clone();
        }
        let proxy_mode = match flags.proxy_mode {
            Some(m) => m,
            None => match get("PROXY_MODE").filter(|v| !v.is_empty()) {
                Some(v) => v.parse().map_err(|e| format!("PROXY_MODE: {e}"))?,
                None => ProxyMode::Shared,
            },
        };
        let secret_ttl = match flags.secret_ttl {
            Some(t) => t,
            None => match get("SECRET_TTL").filter(|v| !v.is_empty()) {
                Some(v) => parse_env_duration("SECRET_TTL", &v)?,
                None => DEFAULT_SECRET_TTL,
            },
        };
        Ok(ClusterSettings {
            xds,
            ca,
            node,
            proxy_mode,
            secret_ttl,
        })
    }
}

/// ztunnel's worker count from `ZTUNNEL_WORKER_THREADS`: a count, a percentage of the CPUs
/// (`50%`), or 0 for all of them; at least one.
pub fn worker_threads(v: &str, cpus: usize) -> Result<usize, String> {
    let v = v.trim();
    let n = if let Some(pct) = v.strip_suffix('%') {
        let p: f64 = pct
            .parse()
            .map_err(|_| format!("ZTUNNEL_WORKER_THREADS: {v:?} is not a percentage"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!(
                "ZTUNNEL_WORKER_THREADS: {v:?} is not within 0-100%"
            ));
        }
        ((cpus as f64) * p / 100.0).ceil() as usize
    } else {
        match v.parse::<usize>() {
            Ok(0) => cpus,
            Ok(n) => n,
            Err(_) => {
                return Err(format!(
                    "ZTUNNEL_WORKER_THREADS: {v:?} is not a count or a percentage"
                ));
            }
        }
    };
    Ok(n.clamp(1, cpus.max(1)))
}

/// The drain deadline ztunnel derives from `TERMINATION_GRACE_PERIOD_SECONDS` when
/// `CONNECTION_TERMINATION_DEADLINE` is unset: 5 s less than the grace period when it is
/// over 10 s, else 1 s less; at least 1 s.
pub fn drain_from_grace(v: &str) -> Result<Duration, String> {
    let grace: u64 = v.trim().parse().map_err(|_| {
        format!("TERMINATION_GRACE_PERIOD_SECONDS: {v:?} is not a number of seconds")
    })?;
    let secs = if grace > 10 {
        grace - 5
    } else {
        grace.saturating_sub(1)
    };
    Ok(Duration::from_secs(secs.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ztunnel_defaults_and_names() {
        let s = ClusterSettings::from_env(
            env(&[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("POD_NAME", "ztunnel-abc"),
                ("POD_NAMESPACE", "istio-system"),
                ("INSTANCE_IP", "10.0.0.7"),
                ("NODE_NAME", "worker-1"),
                ("ISTIO_META_CLUSTER_ID", "east"),
                ("CLUSTER_ID", "ignored"),
                ("XDS_HEADER_X_TENANT", "blue"),
            ]),
            &ClusterFlags::default(),
        )
        .unwrap();
        let xds = s.xds.as_ref().unwrap();
        assert_eq!(xds.address, IN_CLUSTER_ISTIOD);
        assert_eq!(s.ca.as_ref().unwrap().address, xds.address);
        assert_eq!(xds.cluster_id, "east");
        assert_eq!(xds.headers, [("x_tenant".to_string(), "blue".to_string())]);
        assert_eq!(s.proxy_mode, ProxyMode::Shared);
        assert_eq!(s.secret_ttl, DEFAULT_SECRET_TTL);
        assert_eq!(
            s.node.id(),
            "ztunnel~10.0.0.7~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
        );
        assert_eq!(s.node.node_name, "worker-1");
    }

    #[test]
    fn outside_a_cluster_nothing_is_assumed() {
        let s = ClusterSettings::from_env(env(&[]), &ClusterFlags::default()).unwrap();
        assert!(s.xds.is_none());
        assert!(s.ca.is_none());
        // A config file in a cluster: no xDS default either; XDS_ADDRESS="" disables.
        let flags = ClusterFlags {
            has_config_file: true,
            ..ClusterFlags::default()
        };
        let s =
            ClusterSettings::from_env(env(&[("KUBERNETES_SERVICE_HOST", "x")]), &flags).unwrap();
        assert!(s.xds.is_none());
        let s = ClusterSettings::from_env(
            env(&[("KUBERNETES_SERVICE_HOST", "x"), ("XDS_ADDRESS", "")]),
            &ClusterFlags::default(),
        )
        .unwrap();
        assert!(s.xds.is_none());
    }

    #[test]
    fn flags_win_and_bad_values_name_the_variable() {
        let flags = ClusterFlags {
            xds_address: Some("127.0.0.1:15012".into()),
            has_ca_dir: true,
            ..ClusterFlags::default()
        };
        let s = ClusterSettings::from_env(env(&[("XDS_ADDRESS", "other:1")]), &flags).unwrap();
        assert_eq!(s.xds.unwrap().address, "https://127.0.0.1:15012");
        assert!(s.ca.is_none(), "the built-in CA was asked for");
        for (pairs, want) in [
            (vec![("XDS_ADDRESS", "http://istiod:15010")], "XDS_ADDRESS"),
            (vec![("INSTANCE_IP", "ten")], "INSTANCE_IP"),
            (vec![("PROXY_MODE", "sidecar")], "PROXY_MODE"),
            (vec![("SECRET_TTL", "forever")], "SECRET_TTL"),
            (vec![("ISTIO_METAJSON_X", "{")], "ISTIO_METAJSON_X"),
        ] {
            let err = ClusterSettings::from_env(env(&pairs), &ClusterFlags::default()).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn workers_and_drain_as_ztunnel() {
        assert_eq!(worker_threads("2", 8), Ok(2));
        assert_eq!(worker_threads("0", 8), Ok(8));
        assert_eq!(worker_threads("50%", 6), Ok(3));
        assert_eq!(worker_threads("1%", 6), Ok(1));
        assert_eq!(worker_threads("64", 4), Ok(4));
        assert!(worker_threads("lots", 4).is_err());
        assert_eq!(drain_from_grace("30"), Ok(Duration::from_secs(25)));
        assert_eq!(drain_from_grace("5"), Ok(Duration::from_secs(4)));
        assert_eq!(drain_from_grace("1"), Ok(Duration::from_secs(1)));
        assert!(drain_from_grace("x").is_err());
    }
}
