//! The `ringmesh` scenario: two `ringmesh run` nodes on loopback, client → node 1 → HBONE
//! (mTLS + HTTP/2 CONNECT) → node 2 → backend, with the same two-node layout as
//! `ringmesh demo`.
//!
//! The node config format belongs to the `proxy` crate; the only place that knows it here
//! is [`node_config`], so a change of format is a change of that one function. Every port
//! of both nodes is chosen free on loopback, the root CA comes from [`crate::certs`], and
//! a node is ready when its readiness endpoint answers 200 and its entry accepts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::certs::Ca;
use crate::net::{accepts, find_program, free_port, http_get, wait_for};
use crate::procs::Supervisor;
use crate::scenario::{Kind, Options, Sut, launch};
use crate::{Error, Result};

/// How to get the node binary when it is missing.
pub const BUILD_HINT: &str =
    "build it with `cargo build --release -p ringmesh-proxy` (or pass --ringmesh PATH)";

/// Start-up deadline of one node.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The loopback addresses of one node.
#[derive(Debug, Clone)]
pub struct NodePorts {
    /// Plain TCP entry for local clients (node 1's is the client's target).
    pub entry: SocketAddr,
    /// Inbound HBONE (15008 in production).
    pub hbone: SocketAddr,
    /// Admin (15000).
    pub admin: SocketAddr,
    /// Readiness (15021).
    pub ready: SocketAddr,
}

impl NodePorts {
    fn free() -> Result<NodePorts> {
        Ok(NodePorts {
            entry: free_port()?,
            hbone: free_port()?,
            admin: free_port()?,
            ready: free_port()?,
        })
    }
}

/// Everything [`node_config`] needs to write one node's config.
#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: [NodePorts; 2],
    pub backend: SocketAddr,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
}

/// The config file of node `index` (0 = client side, 1 = server side).
pub fn node_config(t: &Topology, index: usize) -> String {
    let me = &t.nodes[index];
    let peer = &t.nodes[1 - index];
    let (name, peer_name) = if index == 0 {
        ("node-1", "node-2")
    } else {
        ("node-2", "node-1")
    };
    format!(
        "# ringmesh-bench: {name} of a two-node loopback mesh
node: {name}
trust_domain: {td}
ca:
  cert: {ca_cert}
  key: {ca_key}
listen:
  hbone: {hbone}
  admin: {admin}
  ready: {ready}
entries:
  - listen: {entry}
    source: client
    destination: {backend}
nodes:
  - name: {peer_name}
    hbone: {peer_hbone}
workloads:
  - name: client
    namespace: default
    service_account: client
    node: node-1
  - name: server
    namespace: default
    service_account: server
    node: node-2
    address: {backend}
",
        td = crate::certs::TRUST_DOMAIN,
        ca_cert = t.ca_cert.display(),
        ca_key = t.ca_key.display(),
        hbone = me.hbone,
        admin = me.admin,
        ready = me.ready,
        entry = me.entry,
        backend = t.backend,
        peer_hbone = peer.hbone,
    )
}

/// Starts the two nodes in front of `backend` and returns node 1's entry.
pub fn start(opts: &Options, sup: &Supervisor, backend: SocketAddr) -> Result<Sut> {
    let binary = find_program("ringmesh", opts.ringmesh.as_deref(), BUILD_HINT)?;
    let mut group = sup.group("ringmesh")?;
    let dir = group.dir().to_path_buf();
    let ca = Ca::new(&dir)?;
    let topo = Topology {
        nodes: [NodePorts::free()?, NodePorts::free()?],
        backend,
        ca_cert: ca.cert_path.clone(),
        ca_key: ca.key_path.clone(),
    };
    let mut pids = Vec::new();
    let mut configs = Vec::new();
    // Server-side node first, so node 1's first dial finds it up.
    for index in [1usize, 0] {
        let text = node_config(&topo, index);
        let name = format!("node-{}", index + 1);
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, &text).map_err(|e| Error::io(&path, e))?;
        let mut cmd = launch(&opts.proxy_launcher, &binary);
        cmd.arg("run").arg("--config").arg(&path);
        let what = format!("ringmesh {name}");
        let proc = group.spawn(&what, cmd)?;
        let ports = &topo.nodes[index];
        let deadline = Instant::now() + START_DEADLINE;
        let ready = wait_for(deadline, || {
            if let Some(status) = group.exited(&proc) {
                return Err(Error::NotReady {
                    what: what.clone(),
                    reason: format!("exited with {status}"),
                    log: group.log_tail(&proc),
                });
            }
            let healthy = matches!(http_get(ports.ready, "/healthz/ready"), Ok((200, _)));
            Ok((healthy && (index == 1 || accepts(ports.entry))).then_some(()))
        })?;
        if ready.is_none() {
            return Err(Error::NotReady {
                what,
                reason: format!("{}/healthz/ready not 200 before the deadline", ports.ready),
                log: group.log_tail(&proc),
            });
        }
        pids.push(proc.pid);
        configs.push((format!("{name}.yaml"), text));
    }
    pids.reverse();
    configs.reverse();
    Ok(Sut {
        kind: Kind::Ringmesh,
        entry: topo.nodes[0].entry,
        proxy_pids: pids,
        configs,
        group: Some(group),
    })
}

/// Where a `ringmesh` binary would be found (for messages).
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    find_program("ringmesh", explicit, BUILD_HINT)
}
