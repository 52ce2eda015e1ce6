//! The optional `ztunnel` scenario: two of Istio's own node proxies in place of ringmesh's
//! nodes, on the veth topology only, entered and configured the way the `ringmesh` scenario
//! is (`crate::ringmesh`): client → VIP → iptables DNAT → ztunnel 1's outbound capture
//! (15001) → HBONE (mTLS, HTTP/2 CONNECT) → ztunnel 2 (15008) → backend.
//!
//! It runs only when given a ztunnel binary (`--ztunnel PATH`), built from Istio's public
//! source; nothing in CI needs one. What the binary must be, read from istio/ztunnel
//! (docs/design-notes.md, "The ztunnel scenario: what it needs"):
//! - a build with `--features testing`: a release build cannot start without a CA server,
//!   and `FAKE_CA=true` (both ztunnels sign with the same compiled-in test root, so they
//!   trust each other) exists only in that build. The data path is the release path;
//! - its ports are fixed (15001, 15006, 15008, 15000, 15020, 15021), so each ztunnel needs
//!   its own network namespace: the veth topology gives it one per side.
//!
//! Each ztunnel reads the same local workload file (`LOCAL_XDS_PATH`, camelCase as its xDS
//! types) and proxies for one workload (`PROXY_MODE=dedicated`, `PROXY_WORKLOAD_INFO`): the
//! client on side `a`, the server on side `b`. `ENABLE_ORIG_SRC=false` (as root it would
//! dial the backend from the client's address), one worker thread per CPU of its side (as
//! ringmesh's nodes), and `RUST_LOG=warn`: no per-connection access log, as for the others.

use std::net::SocketAddr;
use std::path::Path;

use crate::net::find_program;
use crate::procs::Supervisor;
use crate::ringmesh::{self, Net};
use crate::scenario::{Kind, Options, Sut, launch};
use crate::topology::Kind as TopologyKind;
use crate::{Error, Result};

/// How to get the binary.
pub const BUILD_HINT: &str = "build it from istio/ztunnel with `cargo build --release \
     --no-default-features -F tls-ring,jemalloc,testing` (needs protoc) and pass --ztunnel PATH";

/// ztunnel's fixed ports (`src/config.rs`).
const OUTBOUND_PORT: u16 = 15001;
const READY_PORT: u16 = 15021;

/// The local config both ztunnels load: the same two workloads and service as the ringmesh
/// scenario's mesh config, in ztunnel's own shape.
pub fn local_config(net: Net, backend: SocketAddr) -> String {
    format!(
        "# Written by ringmesh-bench: client on node-1, server (HBONE) on node-2.
workloads:
- uid: Kubernetes//v1/Pod/bench/client
  name: client
  namespace: bench
  serviceAccount: client
  trustDomain: cluster.local
  workloadIps: [\"{client}\"]
  protocol: HBONE
  node: node-1
  network: \"\"
  services: {{}}
- uid: Kubernetes//v1/Pod/bench/server
  name: server
  namespace: bench
  serviceAccount: server
  trustDomain: cluster.local
  workloadIps: [\"{server}\"]
  protocol: HBONE
  node: node-2
  network: \"\"
  services:
    \"bench/server.bench.svc.cluster.local\":
      {port}: {target}
services:
- name: server
  namespace: bench
  hostname: server.bench.svc.cluster.local
  vips: [\"/{vip}\"]
  ports:
    {port}: {target}
  subjectAltNames: [\"spiffe://cluster.local/ns/bench/sa/server\"]
",
        client = net.client(),
        server = backend.ip(),
        vip = net.vip().ip(),
        port = net.vip().port(),
        target = backend.port(),
    )
}

/// The environment of the ztunnel proxying for `workload` (`NAMESPACE/NAME/SERVICE_ACCOUNT`).
fn env(config: &Path, workload: &str, node: &str, workers: usize) -> Vec<(String, String)> {
    [
        ("XDS_ADDRESS", ""),
        ("FAKE_CA", "true"),
        ("PROXY_MODE", "dedicated"),
        ("PROXY_WORKLOAD_INFO", workload),
        ("NODE_NAME", node),
        ("ENABLE_ORIG_SRC", "false"),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([
        ("LOCAL_XDS_PATH".to_string(), config.display().to_string()),
        ("ZTUNNEL_WORKER_THREADS".to_string(), workers.to_string()),
    ])
    .collect()
}

/// CPUs in a `taskset -c LIST` launcher (`0`, `1-3`); 1 when there is none.
fn cpus_of(launcher: &[String]) -> usize {
    let Some(list) = launcher
        .last()
        .filter(|_| launcher.first().is_some_and(|p| p == "taskset"))
    else {
        return 1;
    };
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum()
}

/// Starts the two ztunnels in front of `backend` (side `b`'s address) and returns the
/// service VIP as the entry.
pub fn start(opts: &Options, sup: &Supervisor, backend: SocketAddr) -> Result<Sut> {
    let Some(explicit) = opts.ztunnel.as_deref() else {
        return Err(Error::invalid(
            "scenario",
            format!("the ztunnel scenario runs only when given a ztunnel binary: {BUILD_HINT}"),
        ));
    };
    let binary = find_program("ztunnel", Some(explicit), BUILD_HINT)?;
    let topo = &opts.topology;
    if topo.kind != TopologyKind::Veth {
        return Err(Error::invalid(
            "scenario",
            "the ztunnel scenario needs --topology veth: ztunnel's ports are fixed, so each \
             of the two needs its own network namespace",
        ));
    }
    let net = Net::for_topology(topo);
    if backend.ip() != net.server() {
        return Err(Error::invalid(
            "ztunnel backend",
            format!("must listen on {} (got {backend})", net.server()),
        ));
    }
    ringmesh::check_prerequisites()?;
    let mut group = sup.group("ztunnel")?;
    let dir = group.dir().to_path_buf();
    let config = local_config(net, backend);
    let config_path = dir.join("local.yaml");
    std::fs::write(&config_path, &config).map_err(|e| Error::io(&config_path, e))?;

    let capture = SocketAddr::new(net.node(0), OUTBOUND_PORT);
    let rule = ringmesh::dnat_rule(net, capture);
    let ns = topo.client.netns.as_deref();
    group.change(
        &ringmesh::iptables_in(ns, "-A", &rule),
        ringmesh::iptables_in(ns, "-D", &rule),
    )?;

    let mut pids = Vec::new();
    let mut configs = vec![("local.yaml".to_string(), config)];
    // Server side first, so the client side's first dial finds it up.
    for (index, workload) in [(1usize, "bench/server/server"), (0, "bench/client/client")] {
        let side = if index == 0 {
            &topo.proxy1
        } else {
            &topo.proxy2
        };
        let node = format!("node-{}", index + 1);
        let vars = env(&config_path, workload, &node, cpus_of(&side.launcher));
        let mut cmd = launch(&side.launcher, &binary);
        cmd.current_dir(&dir);
        for (k, v) in &vars {
            cmd.env(k, v);
        }
        let what = format!("ztunnel {node}");
        let ready = SocketAddr::new(net.node(index), READY_PORT);
        let proc = side.run(|| {
            let proc = group.spawn(&what, cmd)?;
            ringmesh::wait_ready(&group, &proc, ready)?;
            Ok(proc)
        })?;
        pids.push(proc.pid);
        let shown: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        configs.push((format!("{node}.env"), shown.join(" ")));
    }
    pids.reverse();
    configs.push((
        "iptables.rule".into(),
        ringmesh::iptables_in(ns, "-A", &rule).join(" "),
    ));
    Ok(Sut {
        kind: Kind::Ztunnel,
        entry: net.vip(),
        proxy_pids: pids,
        configs,
        group: Some(group),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{VETH_A, VETH_B};
    use std::net::IpAddr;

    fn veth_net() -> Net {
        let mut topo = crate::topology::Topology::default();
        topo.kind = TopologyKind::Veth;
        Net::for_topology(&topo)
    }

    #[test]
    fn the_local_config_names_both_workloads_and_the_service() {
        let backend = SocketAddr::new(IpAddr::V4(VETH_B), 41000);
        let cfg = local_config(veth_net(), backend);
        assert!(
            cfg.contains(&format!("workloadIps: [\"{VETH_A}\"]")),
            "{cfg}"
        );
        assert!(
            cfg.contains(&format!("workloadIps: [\"{VETH_B}\"]")),
            "{cfg}"
        );
        assert!(cfg.contains("vips: [\"/10.77.0.100\"]"), "{cfg}");
        assert!(cfg.contains("80: 41000"), "{cfg}");
        assert!(
            cfg.contains("\"bench/server.bench.svc.cluster.local\":"),
            "{cfg}"
        );
    }

    #[test]
    fn workers_follow_the_sides_cpus() {
        let ts = |l: &str| vec!["taskset".to_string(), "-c".into(), l.into()];
        assert_eq!(cpus_of(&ts("0")), 1);
        assert_eq!(cpus_of(&ts("2-5")), 4);
        assert_eq!(cpus_of(&ts("0,2-3")), 3);
        assert_eq!(cpus_of(&[]), 1);
    }

    #[test]
    fn the_environment_turns_off_xds_and_uses_the_fake_ca() {
        let vars = env(
            Path::new("/x/local.yaml"),
            "bench/client/client",
            "node-1",
            2,
        );
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("XDS_ADDRESS"), Some(""));
        assert_eq!(get("FAKE_CA"), Some("true"));
        assert_eq!(get("LOCAL_XDS_PATH"), Some("/x/local.yaml"));
        assert_eq!(get("PROXY_WORKLOAD_INFO"), Some("bench/client/client"));
        assert_eq!(get("ZTUNNEL_WORKER_THREADS"), Some("2"));
        assert_eq!(get("ENABLE_ORIG_SRC"), Some("false"));
    }
}
