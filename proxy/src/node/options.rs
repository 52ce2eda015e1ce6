//! What `ringmesh run` is asked to do, and the checks that refuse a setting that could not
//! work before anything is bound.
//!
//! Owns: [`NodeOptions`] and its validation. Every refusal names the flag (or flags) at
//! fault and says what would work, so a person can act on it; nothing here touches a socket
//! except [`NodeOptions::claim_ports`], which asks the kernel whether another process
//! already serves one of the node's addresses.
//!
//! Invariants after [`NodeOptions::validate`]:
//! - the HBONE and plaintext ports are non-zero and distinct (they are mesh-wide: peers
//!   dial them);
//! - the listeners every core binds with `SO_REUSEPORT` (capture, SOCKS5) have a real port:
//!   port 0 would give each core a different random port;
//! - no two of the node's own endpoints could bind the same address (a wildcard address
//!   overlaps every address of its port and family);
//! - certificate lifetimes lie in [`MIN_CERT_LIFETIME`, `MAX_CERT_LIFETIME`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use runtime::RuntimeConfig;

use super::core::{IncomingCpu, UnknownSource};
use super::listeners::EntryAddrs;
use crate::admin::AdminAddrs;

/// Shortest certificate lifetime accepted. Leaves renew at half-life, so below a few
/// seconds a node spends its time signing and a handshake may race an expiry; 5 s still lets
/// tests watch rotation happen. (A lifetime of 0 s made every inbound handshake fail while the
/// node reported ready and logged 11,000 errors in 0.7 s.)
pub const MIN_CERT_LIFETIME: Duration = Duration::from_secs(5);

/// Longest certificate lifetime accepted: Istio's default `MAX_WORKLOAD_CERT_TTL` (90 days).
/// Longer-lived leaves defeat rotation as the way a compromised key stops working.
pub const MAX_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// Shortest idle time before a pooled HBONE connection is closed. Below a second, pooling
/// stops paying for the handshakes it saves.
pub const MIN_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most connections per peer (per core) that `--hbone-spread` may ask for: a connection
/// holds ~50 KiB of TLS and HTTP/2 state, and past a few per core its gain is gone (the
/// cores, not the connections, are then what is shared).
pub const MAX_HBONE_SPREAD: usize = 64;

/// How long an address in use may take to become free before start-up gives up on it (see
/// [`claim_port`]). Measured: a killed node's listeners were gone 12–35 ms after its exit on
/// an idle machine, and over a second later while the whole test suite loaded both cores
/// (io_uring tears a ring down from a kernel worker, which waits its turn).
pub const CLAIM_GRACE: Duration = Duration::from_secs(3);

/// How often [`claim_port`] probes an address in use again within [`CLAIM_GRACE`]: often
/// enough to start within a few ms of the address coming free, rarely enough (150 probes in
/// the whole grace) to cost nothing.
pub const CLAIM_RETRY: Duration = Duration::from_millis(20);

/// Everything `ringmesh run` needs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The mesh config file (embedded mode); `None` with `cluster.xds_address` set.
    pub config: Option<PathBuf>,
    /// Overrides the config file's `node:` (cluster mode: `NODE_NAME`).
    pub node: Option<String>,
    /// The built-in CA; `None` with `cluster.ca_address` set.
    pub ca_dir: Option<PathBuf>,
    /// istiod, the Istio CA, and ztunnel's environment.
    pub cluster: super::cluster::ClusterSettings,
    pub runtime: RuntimeConfig,
    pub drain_timeout: Duration,
    pub entries: EntryAddrs,
    pub admin: AdminAddrs,
    pub hbone_port: u16,
    pub plaintext_port: u16,
    pub unknown_source: UnknownSource,
    pub incoming_cpu: IncomingCpu,
    pub cert_lifetime: Duration,
    pub pool_idle_timeout: Duration,
    /// Concurrent HBONE streams to one peer (per core) that get a connection each before
    /// streams share one (`hbone::pool::DEFAULT_SPREAD`).
    pub hbone_spread: usize,
    /// Re-read the config file this often (0: never).
    pub watch_interval: Duration,
    /// Per-phase deadlines and per-peer bounds.
    pub limits: super::limits::Limits,
    /// The Istio version `istio_build{tag}` reports (`ISTIO_META_ISTIO_VERSION`).
    pub istio_version: Option<String>,
    /// In-pod mode: pods come from istio-cni over ZDS and are served from inside their
    /// namespaces; the node binds no listener on workload IPs of its own namespace.
    pub inpod: Option<InPodOptions>,
}

/// In-pod mode's settings (ztunnel's `INPOD_UDS`, `PACKET_MARK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPodOptions {
    /// istio-cni's ZDS socket.
    pub uds: PathBuf,
    /// The mark on every socket made in a pod.
    pub mark: u32,
    /// Serve DNS on 127.0.0.1:15053 in every pod (ztunnel's `DNS_CAPTURE`).
    pub dns: bool,
    /// Where queries that are not the mesh's go (the node's resolv.conf by default).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// The cluster's DNS domain (`CLUSTER_DOMAIN`).
    pub cluster_domain: String,
}

/// A setting that cannot work, naming the flag(s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct OptionError {
    /// The flag at fault, e.g. `--plaintext-port`, or two flags joined with " and ".
    pub flag: String,
    pub reason: String,
}

fn refuse(flag: impl Into<String>, reason: impl Into<String>) -> OptionError {
    OptionError {
        flag: flag.into(),
        reason: reason.into(),
    }
}

/// One of the node's own endpoints, for the overlap check.
#[derive(Debug, Clone, Copy)]
struct Endpoint {
    flag: &'static str,
    addr: SocketAddr,
}

/// Whether two listen addresses would claim the same connections: same port and family,
/// and the same IP or one of them the wildcard.
pub fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl NodeOptions {
    /// Checks every setting; the first refusal names its flag.
    pub fn validate(&self) -> Result<(), OptionError> {
        match (&self.config, &self.cluster.xds) {
            (None, None) => {
                return Err(refuse(
                    "--config or --xds-address",
                    "the node needs its mesh: a config file (embedded mode) or istiod's \
                     address (cluster mode; XDS_ADDRESS, or in a cluster istiod's default)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(refuse(
                    "--config and --xds-address",
                    "one source of workloads and policies: a file, or istiod (set \
                     XDS_ADDRESS=\"\" to turn xDS off)",
                ));
            }
            _ => {}
        }
        match (&self.ca_dir, &self.cluster.ca) {
            (None, None) => {
                return Err(refuse(
                    "--ca-dir or --ca-address",
                    "the node needs a CA for workload certificates: the built-in one \
                     (`ringmesh ca init`) or the Istio CA (CA_ADDRESS)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(refuse(
                    "--ca-dir and --ca-address",
                    "one CA signs the node's certificates: the built-in one or the Istio CA",
                ));
            }
            _ => {}
        }
        if self.hbone_port == 0 {
            return Err(refuse(
                "--hbone-port",
                "port 0 is not a port peers can dial; HBONE is 15008 mesh-wide",
            ));
        }
        if self.plaintext_port == 0 {
            return Err(refuse(
                "--plaintext-port",
                "port 0 is not a port traffic can be redirected to (Istio uses 15006)",
            ));
        }
        if self.hbone_port == self.plaintext_port {
            return Err(refuse(
                "--hbone-port and --plaintext-port",
                format!(
                    "both are {}: one port cannot serve mTLS tunnels and plaintext",
                    self.hbone_port
                ),
            ));
        }
        for (flag, addr) in [
            ("--capture", self.entries.capture),
            ("--socks5", self.entries.socks5),
        ] {
            if addr.is_some_and(|a| a.port() == 0) {
                return Err(refuse(
                    flag,
                    "port 0 would bind a different random port on every core; give a port \
                     (or \"none\")",
                ));
            }
        }
        let endpoints: Vec<Endpoint> = [
            ("--capture", self.entries.capture),
            ("--socks5", self.entries.socks5),
            ("--admin", self.admin.admin),
            ("--metrics", self.admin.metrics),
            ("--ready", self.admin.ready),
        ]
        .into_iter()
        .filter_map(|(flag, addr)| addr.map(|addr| Endpoint { flag, addr }))
        .collect();
        for (i, a) in endpoints.iter().enumerate() {
            for b in &endpoints[i + 1..] {
                // Port 0 asks the kernel for a free port, which never collides.
                if a.addr.port() != 0 && overlaps(a.addr, b.addr) {
                    return Err(refuse(
                        format!("{} and {}", a.flag, b.flag),
                        format!("{} and {} are the same listener", a.addr, b.addr),
                    ));
                }
            }
            // The inbound listeners take these two ports on every local workload IP; an
            // entry on the wildcard address (or on a workload IP, checked per snapshot)
            // would share their connections.
            for (flag, port) in [
                ("--hbone-port", self.hbone_port),
                ("--plaintext-port", self.plaintext_port),
            ] {
                if a.addr.port() == port && a.addr.ip().is_unspecified() {
                    return Err(refuse(
                        format!("{} and {flag}", a.flag),
                        format!(
                            "{} takes port {port} on every address, where the inbound \
                             listeners of local workloads must be",
                            a.addr
                        ),
                    ));
                }
            }
        }
        if self.cert_lifetime < MIN_CERT_LIFETIME || self.cert_lifetime > MAX_CERT_LIFETIME {
            return Err(refuse(
                "--cert-lifetime",
                format!(
                    "{:?} is outside {:?}..={} days (certificates renew at half-life; 24h \
                     is Istio's default)",
                    self.cert_lifetime,
                    MIN_CERT_LIFETIME,
                    MAX_CERT_LIFETIME.as_secs() / 86_400
                ),
            ));
        }
        if self.pool_idle_timeout < MIN_POOL_IDLE_TIMEOUT {
            return Err(refuse(
                "--pool-idle-timeout",
                format!(
                    "{:?} is shorter than {MIN_POOL_IDLE_TIMEOUT:?}: connections would close \
                     between requests",
                    self.pool_idle_timeout
                ),
            ));
        }
        if !(1..=MAX_HBONE_SPREAD).contains(&self.hbone_spread) {
            return Err(refuse(
                "--hbone-spread",
                format!(
                    "{} is outside 1..={MAX_HBONE_SPREAD} (1 multiplexes every stream to a peer \
                     on one connection; N gives the first N concurrent streams a connection each)",
                    self.hbone_spread
                ),
            ));
        }
        self.limits.validate()?;
        Ok(())
    }

    /// The addresses every core binds once for the whole node (the entries), with their
    /// flags.
    pub fn shared_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        [
            ("--capture", self.entries.capture),
            ("--socks5", self.entries.socks5),
        ]
        .into_iter()
        .filter_map(|(flag, addr)| addr.map(|a| (flag, a)))
        .collect()
    }
}

/// Refuses to start on an address another process already listens on.
///
/// Every core binds its listeners with `SO_REUSEPORT`, and the kernel lets any process of
/// the same user join such a group: a second node on the same ports used to start "ready"
/// and take a share of every new connection. Binding the address once *without*
/// `SO_REUSEPORT` fails while any other socket listens there, so this probe, made before
/// the cores bind, tells a free address from a served one. (A process that binds between
/// the probe and the cores is not caught: the window is the node's start-up.)
///
/// With `until`, an address in use is probed again every [`CLAIM_RETRY`] until that instant
/// before it counts as served: a node restarted after `kill -9` must not be refused for the
/// listeners its predecessor's io_uring rings still hold for a moment ([`CLAIM_GRACE`]).
/// Without it (a snapshot update on the control thread, which must not stall) the first
/// answer stands.
pub fn claim_port(
    flag: &str,
    addr: SocketAddr,
    until: Option<std::time::Instant>,
) -> Result<(), OptionError> {
    loop {
        let e = match runtime::net::probe_unserved(addr) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let in_use = e.kind() == std::io::ErrorKind::AddrInUse;
        if in_use && until.is_some_and(|t| std::time::Instant::now() < t) {
            std::thread::sleep(CLAIM_RETRY);
            continue;
        }
        let reason = if in_use {
            format!("{addr} is already served by another process (is another node running?)")
        } else {
            format!("cannot listen on {addr}: {e}")
        };
        return Err(refuse(flag, reason));
    }
}

#[cfg(test)]
mod tests;
