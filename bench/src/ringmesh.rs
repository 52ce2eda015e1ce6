//! The `ringmesh` scenario: two `ringmesh run` nodes on loopback, client → node 1 → HBONE
//! (mTLS + HTTP/2 CONNECT) → node 2 → backend — the layout of `ringmesh demo`, entered the
//! way ambient mode enters it: the client connects to a service VIP, and an iptables DNAT
//! rule (nat OUTPUT) sends the connection to node 1's outbound capture listener, which
//! reads the VIP back with SO_ORIGINAL_DST.
//!
//! Addresses, all inside one 127.X.0.0/16 chosen per harness process (X in 192..=247, so
//! it never meets the demo's 64..=191):
//! - node 1 at 127.X.0.1 (capture 15001, admin 15000, metrics 15020, ready 15021),
//!   node 2 at 127.X.0.2 (same ports, no capture);
//! - the client workload is 127.0.0.1 (the source address the kernel picks for loopback
//!   connections, so loadgen needs no source binding), on node 1;
//! - the server workload is 127.X.2.1 on node 2; the backend listens there
//!   ([`backend_ip`]);
//! - service VIP 127.X.100.1:80 → the backend's port. HBONE and inbound-plaintext ports
//!   are chosen free (they are bound on every workload IP, 127.0.0.1 included).
//!
//! Needs root and `iptables` for the DNAT rule; the rule is deleted when the scenario
//! stops, also on Ctrl-C. Nodes log at `warn`: no per-connection access log, as Istio
//! sidecars ship with access logging off. The config is written by [`mesh_config`] only,
//! so a config-format change is a change of that one function.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::net::{find_program, free_port, http_get, on_path, wait_for};
use crate::procs::{Group, Supervisor};
use crate::scenario::{Kind, Options, Sut, launch};
use crate::topology::{self, Kind as TopologyKind, Topology};
use crate::{Error, Result};

/// How to get the node binary when it is missing.
pub const BUILD_HINT: &str =
    "build it with `cargo build --release -p ringmesh-proxy` (or pass --ringmesh PATH)";

/// Start-up deadline of one node.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The service port the client dials on the VIP.
const SERVICE_PORT: u16 = 80;

/// The scenario's addresses: on loopback, one 127.X.0.0/16 per harness process (see the
/// module docs); on the veth, the topology's (`crate::topology`): client workload and node 1
/// on side `a`, server workload and node 2 on side `b`, the VIP inside the veth subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    client: IpAddr,
    nodes: [IpAddr; 2],
    server: IpAddr,
    vip: SocketAddr,
}

impl Net {
    /// The loopback block for this process: stable for its lifetime, so the backend
    /// (started before the scenario) and the scenario agree on it.
    pub fn for_process() -> Net {
        let x = 192 + (std::process::id() % 56) as u8;
        let ip = |c: u8, d: u8| IpAddr::V4(Ipv4Addr::new(127, x, c, d));
        Net {
            client: CLIENT_IP,
            nodes: [ip(0, 1), ip(0, 2)],
            server: ip(2, 1),
            vip: SocketAddr::new(ip(100, 1), SERVICE_PORT),
        }
    }

    /// The addresses on `topology`.
    pub fn for_topology(topology: &Topology) -> Net {
        match topology.kind {
            TopologyKind::Loopback => Net::for_process(),
            TopologyKind::Veth => Net {
                client: IpAddr::V4(topology::VETH_A),
                nodes: [IpAddr::V4(topology::NODE_A), IpAddr::V4(topology::NODE_B)],
                server: IpAddr::V4(topology::VETH_B),
                vip: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100)), SERVICE_PORT),
            },
        }
    }

    /// Node `i`'s own address (0 = node 1).
    pub fn node(self, i: usize) -> IpAddr {
        self.nodes[i]
    }

    /// The server workload's IP, where the backend listens.
    pub fn server(self) -> IpAddr {
        self.server
    }

    /// The client workload's IP: the source address the kernel picks for the client.
    pub fn client(self) -> IpAddr {
        self.client
    }

    /// The service VIP the client dials.
    pub fn vip(self) -> SocketAddr {
        self.vip
    }

    /// The waypoint's address on loopback (127.X.3.1).
    pub fn waypoint(self) -> IpAddr {
        match self.server {
            IpAddr::V4(v4) => {
                let [a, b, _, _] = v4.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, 3, 1))
            }
            v6 => v6,
        }
    }
}

/// Where the backend must listen for the ringmesh scenario (the server workload's IP).
pub fn backend_ip() -> IpAddr {
    Net::for_process().server()
}

/// The client workload's IP: the kernel's source address for loopback connections.
pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Port of the waypoint's `/metrics` and `/healthz/ready` (15020 is node 2's on the veth,
/// where the waypoint shares node 2's address).
const WAYPOINT_METRICS_PORT: u16 = 15120;

/// The waypoint's workload entry (a pod of service account `waypoint`).
fn waypoint_workload(waypoint: IpAddr) -> String {
    format!(
        "  - uid: bench/waypoint
    name: waypoint
    namespace: bench
    serviceAccount: waypoint
    workloadIps: [\"{waypoint}\"]
    node: waypoints
    protocol: HBONE
"
    )
}

/// What the waypoint applies to the server Service: a route with a timeout and a retry
/// policy (Envoy's HTTP sidecars in the same bench route with their own default retry
/// policy, see `envoy.rs`), and an authorization policy checked on every request.
pub const WAYPOINT_POLICIES: &str = "httpRoutes:
  - name: server
    namespace: bench
    parentRefs: [{name: server}]
    rules:
      - matches: [{path: {type: PathPrefix, value: /}}]
        backendRefs: [{name: server, port: 80}]
        timeouts: {request: 15s}
        retry: {attempts: 2, codes: [503], retryOn: [connect-failure, reset]}
authorizationPolicies:
  - name: server
    namespace: bench
    targetRefs: [{name: server}]
    rules:
      - from: [{source: {namespaces: [bench]}}]
        to: [{operation: {methods: [GET, POST]}}]
";

/// The mesh config both nodes load (`--node` picks which one each is).
pub fn mesh_config(net: Net, backend: SocketAddr) -> String {
    mesh_config_with(net, backend, None, 0)
}

/// [`mesh_config`]; with `waypoint`, the server Service names the waypoint there (HBONE on
/// `hbone_port`, the mesh-wide port), and the waypoint's workload and policies follow.
fn mesh_config_with(
    net: Net,
    backend: SocketAddr,
    waypoint: Option<IpAddr>,
    hbone_port: u16,
) -> String {
    let Some(w) = waypoint else {
        return mesh_config_base(net, backend, "");
    };
    format!(
        "{}    waypoint: {{destination: \"/{w}\", hboneMtlsPort: {hbone_port}}}\n{WAYPOINT_POLICIES}",
        mesh_config_base(net, backend, &waypoint_workload(w))
    )
}

fn mesh_config_base(net: Net, backend: SocketAddr, extra_workloads: &str) -> String {
    format!(
        "# Written by ringmesh-bench: client on node-1, server (HBONE) on node-2.
workloads:
  - uid: bench/client
    name: client
    namespace: bench
    serviceAccount: client
    workloadIps: [\"{client}\"]
    node: node-1
    protocol: HBONE
  - uid: bench/server
    name: server
    namespace: bench
    serviceAccount: server
    workloadIps: [\"{server}\"]
    node: node-2
    protocol: HBONE
    services: [\"bench/server.bench.svc.cluster.local\"]
{extra_workloads}services:
  - name: server
    namespace: bench
    hostname: server.bench.svc.cluster.local
    vips: [\"{vip}\"]
    ports: {{{port}: {target}}}
",
        client = net.client(),
        server = backend.ip(),
        vip = net.vip().ip(),
        port = SERVICE_PORT,
        target = backend.port(),
    )
}

/// The iptables rule (without the -A/-D verb) that sends the VIP to node 1's capture.
pub(crate) fn dnat_rule(net: Net, capture: SocketAddr) -> Vec<String> {
    let vip = net.vip();
    [
        "-t",
        "nat",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        &vip.ip().to_string(),
        "--dport",
        &vip.port().to_string(),
        "-j",
        "DNAT",
        "--to-destination",
        &capture.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// `iptables` in network namespace `netns` (a `/run/netns/NAME` path) when given.
pub(crate) fn iptables_in(netns: Option<&Path>, verb: &str, rule: &[String]) -> Vec<String> {
    let mut argv = Vec::new();
    if let Some(name) = netns.and_then(|p| p.file_name()) {
        argv.extend(["ip", "netns", "exec"].map(String::from));
        argv.push(name.to_string_lossy().into_owned());
    }
    // `-w`: wait for the xtables lock instead of failing when another tool holds it.
    argv.extend(["iptables", "-w", "5"].map(String::from));
    argv.extend(rule[..2].iter().cloned());
    argv.push(verb.to_string());
    argv.extend(rule[2..].iter().cloned());
    argv
}

/// What the scenario needs beyond the binary: `iptables` and root (for the DNAT entry).
pub fn check_prerequisites() -> Result<()> {
    if on_path("iptables").is_none() {
        return Err(Error::MissingProgram {
            program: "iptables".into(),
            hint: "the ringmesh scenario redirects the client to node 1 with an iptables DNAT rule, as ambient mode does: `apt-get install iptables`, run as root".into(),
        });
    }
    if !rustix::process::geteuid().is_root() {
        return Err(Error::invalid(
            "user",
            "the ringmesh scenario adds an iptables DNAT rule and needs root",
        ));
    }
    Ok(())
}

/// Which waypoint, if any, the server Service sends its traffic through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waypoint {
    None,
    /// `ringmesh waypoint`.
    Ringmesh,
    /// Envoy configured as Istio configures a waypoint (`envoy_waypoint.yaml`).
    Envoy,
}

/// Envoy as a waypoint, as Istio's waypoint config has it for one Service with one endpoint
/// (listener `connect_terminate`, internal listeners `main_internal` and
/// `connect_originate`, the route, retry policy and RBAC of [`WAYPOINT_POLICIES`]). Each
/// `{placeholder}` is replaced literally (the YAML has literal `{}` too).
const ENVOY_WAYPOINT: &str = include_str!("envoy_waypoint.yaml");

/// The Envoy waypoint's bootstrap.
fn envoy_waypoint_config(vars: &[(&str, String)]) -> String {
    let mut cfg = ENVOY_WAYPOINT.to_string();
    for (k, v) in vars {
        cfg = cfg.replace(&format!("{{{k}}}"), v);
    }
    cfg
}

/// Starts the two nodes in front of `backend` (which must listen on [`backend_ip`]) and
/// returns the service VIP as the entry; with a `waypoint`, also that waypoint beside node 2
/// (same side, same cores), and the Service sends its traffic through it.
pub fn start(
    opts: &Options,
    sup: &Supervisor,
    backend: SocketAddr,
    which: Waypoint,
) -> Result<Sut> {
    let waypoint = which != Waypoint::None;
    let binary = find_program("ringmesh", opts.ringmesh.as_deref(), BUILD_HINT)?;
    let topo = &opts.topology;
    let net = Net::for_topology(topo);
    if backend.ip() != net.server() {
        return Err(Error::invalid(
            "ringmesh backend",
            format!("must listen on {} (got {backend})", net.server()),
        ));
    }
    check_prerequisites()?;
    let mut group = sup.group("ringmesh")?;
    let dir = group.dir().to_path_buf();
    let ca_dir = dir.join("ca");
    let out = Command::new(&binary)
        .args(["ca", "init", "--dir"])
        .arg(&ca_dir)
        .output()
        .map_err(|e| Error::os(format!("running {} ca init", binary.display()), e))?;
    if !out.status.success() {
        return Err(Error::NotReady {
            what: "ringmesh ca init".into(),
            reason: format!("exited with {}", out.status),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    // Bound on 127.0.0.1 (the client workload) and 127.X.2.1: a port free on 127.0.0.1
    // is free on 127.X.2.1 too, which only this harness uses.
    let hbone_port = free_port()?.port();
    // The waypoint: its own loopback address, or node 2's on the veth (a pod on node 2).
    let waypoint_ip = waypoint.then(|| match topo.kind {
        TopologyKind::Loopback => net.waypoint(),
        TopologyKind::Veth => net.node(1),
    });
    let config = mesh_config_with(net, backend, waypoint_ip, hbone_port);
    let config_path = dir.join("mesh.yaml");
    std::fs::write(&config_path, &config).map_err(|e| Error::io(&config_path, e))?;
    let plaintext_port = free_port()?.port();
    let capture = SocketAddr::new(net.node(0), 15001);

    // The rule lives where the client runs (side `a`'s namespace on the veth).
    let rule = dnat_rule(net, capture);
    let ns = topo.client.netns.as_deref();
    group.change(&iptables_in(ns, "-A", &rule), iptables_in(ns, "-D", &rule))?;

    let mut pids = Vec::new();
    let mut cmdlines = Vec::new();
    // Server-side node first, so node 1's first dial finds it up.
    for index in [1usize, 0] {
        let ip = net.node(index);
        let at = |port: u16| SocketAddr::new(ip, port).to_string();
        let name = format!("node-{}", index + 1);
        let mut args: Vec<String> = vec!["run".into(), "--config".into()];
        args.push(config_path.display().to_string());
        args.extend(["--ca-dir".into(), ca_dir.display().to_string()]);
        args.extend(["--node".into(), name.clone()]);
        args.extend(["--log".into(), "warn".into()]);
        let capture_arg = if index == 0 {
            capture.to_string()
        } else {
            "none".into()
        };
        args.extend(["--capture".into(), capture_arg]);
        args.extend(["--socks5".into(), "none".into()]);
        args.extend(["--admin".into(), at(15000)]);
        args.extend(["--metrics".into(), at(15020)]);
        args.extend(["--ready".into(), at(15021)]);
        args.extend(["--hbone-port".into(), hbone_port.to_string()]);
        args.extend(["--plaintext-port".into(), plaintext_port.to_string()]);
        args.extend(opts.ringmesh_args.iter().cloned());
        let side = if index == 0 {
            &topo.proxy1
        } else {
            &topo.proxy2
        };
        let mut cmd = launch(&side.launcher, &binary);
        cmd.args(&args);
        let what = format!("ringmesh {name}");
        let proc = side.run(|| {
            let proc = group.spawn(&what, cmd)?;
            wait_ready(&group, &proc, SocketAddr::new(ip, 15021))?;
            Ok(proc)
        })?;
        pids.push(proc.pid);
        cmdlines.push((
            format!("{name}.cmd"),
            format!("ringmesh {}", args.join(" ")),
        ));
    }
    pids.reverse();
    cmdlines.reverse();
    if let (Some(ip), Waypoint::Envoy) = (waypoint_ip, which) {
        let envoy_bin = match &opts.envoy {
            Some(p) => p.clone(),
            None => crate::envoy::find()?,
        };
        // The waypoint's certificate, from the nodes' CA.
        let read = |name: &str| {
            let path = ca_dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
        };
        let ca = hbone::certs::CertificateAuthority::from_pem(
            &read("root-cert.pem")?,
            &read("root-key.pem")?,
        )
        .map_err(|e| Error::invalid("the nodes' CA", e.to_string()))?;
        let id = hbone::Identity::new("cluster.local", "bench", "waypoint")
            .map_err(|e| Error::invalid("waypoint identity", e.to_string()))?;
        let leaf = ca
            .issue(&id, &hbone::certs::LeafOptions::default())
            .map_err(|e| Error::invalid("waypoint certificate", e.to_string()))?;
        let (cert, key) = (dir.join("waypoint.pem"), dir.join("waypoint-key.pem"));
        std::fs::write(&cert, &leaf.chain_pem).map_err(|e| Error::io(&cert, e))?;
        std::fs::write(&key, &leaf.key_pem).map_err(|e| Error::io(&key, e))?;
        let cfg = envoy_waypoint_config(&[
            ("listen_ip", ip.to_string()),
            ("listen_port", hbone_port.to_string()),
            ("hbone_port", hbone_port.to_string()),
            ("upstream_endpoint_ip", backend.ip().to_string()),
            ("target_port", backend.port().to_string()),
            ("ca", ca_dir.join("root-cert.pem").display().to_string()),
            ("cert", cert.display().to_string()),
            ("key", key.display().to_string()),
            (
                "peer_spiffe_id",
                "spiffe://cluster.local/ns/bench/sa/server".to_string(),
            ),
        ]);
        let running = topo.proxy2.run(|| {
            crate::envoy::start(
                &mut group,
                &envoy_bin,
                "waypoint",
                &cfg,
                opts.envoy_concurrency.max(1),
                &topo.proxy2.launcher,
            )
        })?;
        pids.push(running.proc.pid);
        cmdlines.push(("envoy-waypoint.yaml".into(), cfg));
    }
    if let (Some(ip), Waypoint::Ringmesh) = (waypoint_ip, which) {
        let metrics = SocketAddr::new(ip, WAYPOINT_METRICS_PORT);
        let args: Vec<String> = [
            "waypoint",
            "--config",
            &config_path.display().to_string(),
            "--ca-dir",
            &ca_dir.display().to_string(),
            "--workload",
            "bench/waypoint",
            "--hbone-port",
            &hbone_port.to_string(),
            "--metrics",
            &metrics.to_string(),
            "--log",
            "warn",
        ]
        .map(String::from)
        .to_vec();
        let mut cmd = launch(&topo.proxy2.launcher, &binary);
        cmd.args(&args);
        let proc = topo.proxy2.run(|| {
            let proc = group.spawn("ringmesh waypoint", cmd)?;
            wait_ready(&group, &proc, metrics)?;
            Ok(proc)
        })?;
        pids.push(proc.pid);
        cmdlines.push((
            "waypoint.cmd".into(),
            format!("ringmesh {}", args.join(" ")),
        ));
    }
    let mut configs = vec![("mesh.yaml".to_string(), config)];
    configs.extend(cmdlines);
    configs.push((
        "iptables.rule".into(),
        iptables_in(ns, "-A", &rule).join(" "),
    ));
    Ok(Sut {
        kind: match which {
            Waypoint::None => Kind::Ringmesh,
            Waypoint::Ringmesh => Kind::RingmeshWaypoint,
            Waypoint::Envoy => Kind::EnvoyWaypoint,
        },
        entry: net.vip(),
        proxy_pids: pids,
        configs,
        group: Some(group),
    })
}

/// Waits until `proc` answers 200 on `ready`/healthz/ready (ringmesh's and ztunnel's
/// readiness path), failing with its log if it exits or [`START_DEADLINE`] passes.
pub(crate) fn wait_ready(
    group: &Group,
    proc: &crate::procs::Proc,
    ready: SocketAddr,
) -> Result<()> {
    let deadline = Instant::now() + START_DEADLINE;
    let ok = wait_for(deadline, || {
        if let Some(status) = group.exited(proc) {
            return Err(Error::NotReady {
                what: proc.what.clone(),
                reason: format!("exited with {status}"),
                log: group.log_tail(proc),
            });
        }
        Ok(matches!(http_get(ready, "/healthz/ready"), Ok((200, _))).then_some(()))
    })?;
    ok.ok_or_else(|| Error::NotReady {
        what: proc.what.clone(),
        reason: format!("{ready}/healthz/ready not 200 before the deadline"),
        log: group.log_tail(proc),
    })
}

/// Where a `ringmesh` binary would be found (for messages).
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    find_program("ringmesh", explicit, BUILD_HINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waypoint_config_loads_and_names_the_waypoint() {
        let net = Net::for_process();
        let backend = SocketAddr::new(backend_ip(), 41000);
        let cfg = mesh_config_with(net, backend, Some(net.waypoint()), 41008);
        assert!(
            cfg.contains(&format!(
                "waypoint: {{destination: \"/{}\", hboneMtlsPort: 41008}}",
                net.waypoint()
            )),
            "{cfg}"
        );
        assert!(
            cfg.contains("uid: bench/waypoint") && cfg.contains("httpRoutes:"),
            "{cfg}"
        );
        // The node's own parser takes it, routes and policy included.
        let load = proxy::config::LoadOptions::default();
        let snap = proxy::config::parse(&cfg, &load).unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        assert_eq!(snap.routes().len(), 1);
        assert_eq!(snap.security().counts(), (1, 0));
        let svc = snap
            .service_by_name("bench", "server")
            .expect("the server Service");
        assert!(svc.waypoint.is_some());
        assert!(snap.workload_by_uid("bench/waypoint").is_some());
    }

    #[test]
    fn the_envoy_waypoint_template_has_every_placeholder_filled() {
        let vars: Vec<(&str, String)> = [
            "listen_ip",
            "listen_port",
            "hbone_port",
            "upstream_endpoint_ip",
            "target_port",
            "ca",
            "cert",
            "key",
            "peer_spiffe_id",
        ]
        .iter()
        .map(|k| (*k, "X".to_string()))
        .collect();
        let cfg = envoy_waypoint_config(&vars);
        for (k, _) in &vars {
            assert!(!cfg.contains(&format!("{{{k}}}")), "{k} left in");
        }
        // No `{name}` placeholder of any kind is left (only the YAML's own maps).
        let left: Vec<&str> = cfg
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(inside, _)| inside))
            .filter(|inside| {
                !inside.is_empty() && inside.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn addresses_and_config_agree() {
        let net = Net::for_process();
        let backend = SocketAddr::new(backend_ip(), 41000);
        let cfg = mesh_config(net, backend);
        assert!(cfg.contains(&format!("workloadIps: [\"{}\"]", net.server())));
        assert!(cfg.contains("workloadIps: [\"127.0.0.1\"]"));
        assert!(cfg.contains(&format!("vips: [\"{}\"]", net.vip().ip())));
        assert!(cfg.contains("ports: {80: 41000}"));
        let rule = dnat_rule(net, SocketAddr::new(net.node(0), 15001));
        let add = iptables_in(None, "-A", &rule).join(" ");
        assert!(
            add.starts_with("iptables -w 5 -t nat -A OUTPUT -p tcp -d 127."),
            "{add}"
        );
        assert!(
            add.ends_with(&format!("--to-destination {}:15001", net.node(0))),
            "{add}"
        );
    }
}
