//! The `tcp-relay` scenario: the floor of any two-hop data plane on this machine.
//!
//! client → forwarder 1 → forwarder 2 → backend, where each forwarder is
//! `ringmesh forward --copy buffered --incoming-cpu all`: it reads every byte into user
//! space and writes it out again — what any proxy that encrypts must at least do — with no
//! TLS, no HTTP/2 and no policy, on ringmesh's runtime with a node's cores, listener
//! steering and socket options. Its CPU per request and per GB is what two hops cost for
//! moving the bytes (loopback TCP, wake-ups, copies, and the runtime's event loop); a data
//! plane's figure minus this one is the cost of the data plane itself (the report's "over
//! the floor" table).
//!
//! The forwarders are the `ringmesh` binary's `forward` command, so the scenario needs
//! nothing beyond what the `ringmesh` scenario needs (no root, no iptables).

use std::net::SocketAddr;
use std::time::Duration;

use crate::Result;
use crate::net::{find_program, free_port, wait_accepting};
use crate::procs::Supervisor;
use crate::ringmesh::BUILD_HINT;
use crate::scenario::{Kind, Options, Sut, launch};

/// Start-up deadline of one forwarder.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The command line of one forwarder (without the launcher and the program).
pub fn forwarder_args(listen: SocketAddr, upstream: SocketAddr) -> Vec<String> {
    [
        "forward",
        "--listen",
        &listen.to_string(),
        "--to",
        &upstream.to_string(),
        "--copy",
        "buffered",
        "--incoming-cpu",
        "all",
        "--log",
        "warn",
    ]
    .map(String::from)
    .to_vec()
}

/// Starts the two forwarders in front of `backend`, the inner one first.
pub fn start(opts: &Options, sup: &Supervisor, backend: SocketAddr) -> Result<Sut> {
    let ringmesh = find_program("ringmesh", opts.ringmesh.as_deref(), BUILD_HINT)?;
    let mut group = sup.group(Kind::TcpRelay.name())?;
    let topo = &opts.topology;
    let entry = free_port()?;
    // Forwarder 2 listens where the client side reaches it (side `b`'s address on the veth).
    let middle = SocketAddr::new(topo.server_listen_ip(), free_port()?.port());
    let mut configs = Vec::new();
    let mut pids = Vec::new();
    for (name, listen, upstream, side) in [
        ("forwarder-2", middle, backend, &topo.proxy2),
        ("forwarder-1", entry, middle, &topo.proxy1),
    ] {
        let args = forwarder_args(listen, upstream);
        let mut cmd = launch(&side.launcher, &ringmesh);
        cmd.args(&args);
        let what = format!("tcp-relay {name}");
        let line = format!("{} {}", ringmesh.display(), args.join(" "));
        let proc = side.run(|| {
            let proc = group.spawn(&what, cmd)?;
            wait_accepting(&group, &proc, &what, listen, START_DEADLINE, &line)?;
            Ok(proc)
        })?;
        configs.push((format!("{name}.cmd"), line));
        pids.push(proc.pid);
    }
    // Report order: client side first.
    pids.reverse();
    configs.reverse();
    Ok(Sut {
        kind: Kind::TcpRelay,
        entry,
        proxy_pids: pids,
        configs,
        group: Some(group),
    })
}
