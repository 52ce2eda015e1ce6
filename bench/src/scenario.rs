//! Systems under test: what sits between the load generator and the backend.
//!
//! [`start`] builds one scenario in front of an already-listening backend and returns a
//! [`Sut`]: the address the client targets, the PIDs of the proxy processes to sample, and
//! the generated configs. The `Sut` owns a [`Group`], so dropping it stops every process
//! it started and removes its temporary directory (configs, certificates, logs).
//!
//! Invariant: `start` returns only once every proxy is ready to carry traffic (its entry
//! accepts connections, Envoy reports LIVE), or an error naming the process and its log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use crate::certs::Ca;
use crate::procs::{Group, Supervisor};
use crate::topology::Topology;
use crate::workload::Protocol;
use crate::{Error, Result, envoy, external, ringmesh, tcp_relay, ztunnel};

/// The data planes compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Client → backend, no proxy: the latency floor every other scenario is compared with.
    Direct,
    /// Two plain TCP forwarders on ringmesh's runtime (no TLS, no HTTP/2): the cost of two
    /// hops that copy the bytes through user space, which the report subtracts to show
    /// each two-proxy data plane's own cost.
    TcpRelay,
    /// Client → ringmesh node 1 → HBONE (mTLS, HTTP/2 CONNECT) → node 2 → backend.
    Ringmesh,
    /// Two Envoy sidecars, `tcp_proxy` with mTLS between them.
    EnvoySidecarTcp,
    /// Two Envoy sidecars, HTTP connection managers with HTTP/2 mTLS between them.
    EnvoySidecarHttp,
    /// Any proxy (pair) from `--external-cmd` templates.
    External,
    /// Two of Istio's ztunnels in place of ringmesh's nodes (`--ztunnel PATH`, veth only).
    Ztunnel,
    /// Client → node 1 → HBONE → `ringmesh waypoint` (HTTP routed, with a retry policy and
    /// an authorization policy) → HBONE → node 2 → backend: ambient mode with L7.
    RingmeshWaypoint,
    /// The same with Envoy as the waypoint, configured as Istio configures one (HBONE in,
    /// internal listeners, HCM with the same route, retry and RBAC, HBONE out).
    EnvoyWaypoint,
}

impl Kind {
    /// Every scenario, in report order.
    pub const ALL: [Kind; 9] = [
        Kind::Direct,
        Kind::TcpRelay,
        Kind::Ringmesh,
        Kind::EnvoySidecarTcp,
        Kind::EnvoySidecarHttp,
        Kind::External,
        Kind::Ztunnel,
        Kind::RingmeshWaypoint,
        Kind::EnvoyWaypoint,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::TcpRelay => "tcp-relay",
            Kind::Ringmesh => "ringmesh",
            Kind::EnvoySidecarTcp => "envoy-sidecar-tcp",
            Kind::EnvoySidecarHttp => "envoy-sidecar-http",
            Kind::External => "external",
            Kind::Ztunnel => "ztunnel",
            Kind::RingmeshWaypoint => "ringmesh-waypoint",
            Kind::EnvoyWaypoint => "envoy-waypoint",
        }
    }

    /// Whether this data plane can carry traffic of `protocol` (an HTTP connection manager
    /// cannot carry raw TCP streams).
    pub fn carries(self, protocol: Protocol) -> bool {
        !(matches!(self, Kind::EnvoySidecarHttp | Kind::RingmeshWaypoint)
            && protocol == Protocol::Tcp)
    }
}

impl FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                Error::invalid(
                    "scenario",
                    format!("`{s}` is not one of {}", names.join(", ")),
                )
            })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How scenarios are launched.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The `envoy` binary (found on PATH when `None`).
    pub envoy: Option<PathBuf>,
    /// Worker threads per Envoy sidecar.
    pub envoy_concurrency: u32,
    /// The `ringmesh` binary, for the `ringmesh` nodes and the `tcp-relay` forwarders.
    pub ringmesh: Option<PathBuf>,
    /// Extra arguments for both `ringmesh run` nodes (`--ringmesh-arg`).
    pub ringmesh_args: Vec<String>,
    /// `--external-cmd` templates: one proxy, or a client-side and a server-side proxy.
    pub external_cmds: Vec<String>,
    /// The `ztunnel` binary (`--ztunnel`); the ztunnel scenario runs only with one.
    pub ztunnel: Option<PathBuf>,
    /// Where each role runs: loopback (with the `--pin` launchers) or two namespaces
    /// joined by a veth.
    pub topology: Topology,
}

/// A started system under test.
#[derive(Debug)]
pub struct Sut {
    pub kind: Kind,
    /// Where the client connects.
    pub entry: SocketAddr,
    /// The proxy processes whose CPU and memory are the scenario's cost.
    pub proxy_pids: Vec<u32>,
    /// Generated configuration files: (name, text), for `--show-config`.
    pub configs: Vec<(String, String)>,
    /// Owns the processes and the temporary directory; `None` for `direct`.
    pub group: Option<Group>,
}

/// Where the backend of `kind` must listen. On loopback: the server workload's IP for
/// `ringmesh` (node 2 dials the workload's own address), 127.0.0.1 for every other
/// scenario. On the veth: side `b`'s address for all.
pub fn backend_ip(kind: Kind, topology: &Topology) -> std::net::IpAddr {
    topology.backend_ip(match kind {
        Kind::Ringmesh | Kind::Ztunnel | Kind::RingmeshWaypoint | Kind::EnvoyWaypoint => {
            ringmesh::backend_ip()
        }
        _ => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    })
}

/// A command running `program` under `launcher` (e.g. `["taskset", "-c", "1"]`), if any.
pub fn launch(launcher: &[String], program: &Path) -> Command {
    match launcher.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
    }
}

/// Starts scenario `kind` in front of `backend` (which must already accept connections).
pub fn start(
    kind: Kind,
    opts: &Options,
    sup: &Supervisor,
    backend: SocketAddr,
    protocol: Protocol,
) -> Result<Sut> {
    if !kind.carries(protocol) {
        return Err(Error::invalid(
            "scenario",
            format!("{kind} cannot carry {protocol:?} traffic"),
        ));
    }
    match kind {
        Kind::Direct => Ok(Sut {
            kind,
            entry: backend,
            proxy_pids: Vec::new(),
            configs: Vec::new(),
            group: None,
        }),
        Kind::EnvoySidecarTcp | Kind::EnvoySidecarHttp => {
            let mode = if kind == Kind::EnvoySidecarTcp {
                envoy::Mode::Tcp
            } else {
                envoy::Mode::Http
            };
            start_envoy_pair(kind, mode, opts, sup, backend)
        }
        Kind::Ringmesh => ringmesh::start(opts, sup, backend, ringmesh::Waypoint::None),
        Kind::RingmeshWaypoint => ringmesh::start(opts, sup, backend, ringmesh::Waypoint::Ringmesh),
        Kind::EnvoyWaypoint => ringmesh::start(opts, sup, backend, ringmesh::Waypoint::Envoy),
        Kind::External => external::start(opts, sup, backend),
        Kind::TcpRelay => tcp_relay::start(opts, sup, backend),
        Kind::Ztunnel => ztunnel::start(opts, sup, backend),
    }
}

fn start_envoy_pair(
    kind: Kind,
    mode: envoy::Mode,
    opts: &Options,
    sup: &Supervisor,
    backend: SocketAddr,
) -> Result<Sut> {
    let binary = match &opts.envoy {
        Some(p) => p.clone(),
        None => envoy::find()?,
    };
    let mut group = sup.group(kind.name())?;
    let dir = group.dir().to_path_buf();
    let ca = Ca::new(&dir)?;
    let server_leaf = ca.leaf(&dir, "default", "server")?;
    let client_leaf = ca.leaf(&dir, "default", "client")?;
    let tls = |leaf: &crate::certs::LeafFiles| envoy::Tls {
        ca: ca.cert_path.clone(),
        cert: leaf.cert.clone(),
        key: leaf.key.clone(),
    };
    let concurrency = opts.envoy_concurrency.max(1);

    let topo = &opts.topology;
    let server_cfg =
        envoy::server_config(mode, backend, &tls(&server_leaf), topo.server_listen_ip());
    let server = topo.proxy2.run(|| {
        envoy::start(
            &mut group,
            &binary,
            "server-sidecar",
            &server_cfg,
            concurrency,
            &topo.proxy2.launcher,
        )
    })?;
    let client_cfg = envoy::client_config(
        mode,
        server.listener,
        &tls(&client_leaf),
        &server_leaf.spiffe_id,
    );
    let client = topo.proxy1.run(|| {
        envoy::start(
            &mut group,
            &binary,
            "client-sidecar",
            &client_cfg,
            concurrency,
            &topo.proxy1.launcher,
        )
    })?;
    Ok(Sut {
        kind,
        entry: client.listener,
        proxy_pids: vec![client.proc.pid, server.proc.pid],
        configs: vec![
            ("client-sidecar.yaml".into(), client_cfg),
            ("server-sidecar.yaml".into(), server_cfg),
        ],
        group: Some(group),
    })
}
