//! Where the processes of a run live: one host's loopback, or two "nodes" made of network
//! namespaces joined by a veth.
//!
//! - [`Kind::Loopback`] (the default): every process in the harness's own namespace, on
//!   127.0.0.0/8. `--pin` puts the load generator and backend on CPU 0 and the proxies on
//!   the others.
//! - [`Kind::Veth`]: two network namespaces, `a` and `b`, joined by one veth pair, each side
//!   pinned to its own CPUs, as two machines on one link would be:
//!   - side `a` (node 1): the load generator and the client-side proxy, at [`VETH_A`];
//!   - side `b` (node 2): the server-side proxy and the backend, at [`VETH_B`].
//!
//!   Every byte between the client-side and the server-side proxy crosses the veth (a real
//!   device with GRO/TSO and its own softirq work), and the two sides never share a core.
//!
//! A [`Side`] runs a closure on a thread that has entered its namespace: processes spawned
//! there are born in it (a child inherits its parent thread's namespace), and readiness
//! probes (a connect, an admin GET) from that thread reach the side's addresses. So scenario
//! code needs no `ip netns exec` and no route into the namespaces.
//!
//! Invariants: the namespaces and the veth are created once per harness process, named after
//! its PID (two harnesses never meet), and deleted when the [`Topology`] is dropped or on
//! Ctrl-C (the supervisor's undo commands); deleting a namespace deletes its end of the
//! veth, and with it the pair, and every iptables rule inside it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::procs::{Group, Supervisor};
use crate::{Error, Result};

/// Side `a`'s address on the veth: node 1's primary address, the client workload's IP.
pub const VETH_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Side `b`'s address on the veth: node 2's primary address, the server workload's IP,
/// where the backend listens.
pub const VETH_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Secondary addresses for a node proxy's own listeners (admin, capture), kept apart from
/// the workload IPs as a node's IP is apart from its pods'.
pub const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
/// See [`NODE_A`].
pub const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
/// Prefix length of the veth subnet: the service VIP and the node addresses sit inside it,
/// so routing sends a VIP connection out of the veth before the DNAT rule catches it.
pub const PREFIX: u8 = 24;

/// The two layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Loopback,
    Veth,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Loopback => "loopback",
            Kind::Veth => "veth",
        }
    }
}

impl FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Kind> {
        match s {
            "loopback" => Ok(Kind::Loopback),
            "veth" => Ok(Kind::Veth),
            other => Err(Error::invalid(
                "--topology",
                format!("`{other}` is not one of loopback, veth"),
            )),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one role's processes run: a namespace (none: the harness's own) and a launcher
/// prefix (`taskset -c LIST`, or nothing).
#[derive(Debug, Clone, Default)]
pub struct Side {
    /// `/run/netns/NAME` of the side's namespace.
    pub netns: Option<PathBuf>,
    pub launcher: Vec<String>,
}

impl Side {
    /// Runs `f` in this side's namespace: on a thread that entered it (see the module docs),
    /// or directly when the side has none.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let Some(path) = &self.netns else {
            return f();
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| {
                    Error::os(
                        format!("entering network namespace {}", path.display()),
                        e.into(),
                    )
                })?;
                f()
            })
            .join()
            .map_err(|_| Error::invalid("topology", "a namespace thread panicked"))?
        })
    }
}

/// The placement of a run's four roles.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub kind: Kind,
    /// The load generator.
    pub client: Side,
    /// The client-side proxy (ringmesh node 1, the client sidecar, forwarder 1); a one-proxy
    /// external scenario runs here.
    pub proxy1: Side,
    /// The server-side proxy.
    pub proxy2: Side,
    /// The backend.
    pub backend: Side,
    /// Owns the namespaces (their undo commands); `None` on loopback.
    _guard: Option<Arc<Group>>,
}

impl Topology {
    /// Loopback, with the `--pin` launchers (empty for none).
    pub fn loopback(client_launcher: Vec<String>, proxy_launcher: Vec<String>) -> Topology {
        Topology {
            kind: Kind::Loopback,
            client: Side {
                netns: None,
                launcher: client_launcher.clone(),
            },
            proxy1: Side {
                netns: None,
                launcher: proxy_launcher.clone(),
            },
            proxy2: Side {
                netns: None,
                launcher: proxy_launcher,
            },
            backend: Side {
                netns: None,
                launcher: client_launcher,
            },
            _guard: None,
        }
    }

    /// Creates the two namespaces and the veth between them; side `a` on the first half of
    /// the `cores` CPUs, side `b` on the rest. Needs root, `ip` and `taskset`.
    pub fn veth(sup: &Supervisor, cores: usize) -> Result<Topology> {
        check_prerequisites(cores)?;
        let id = std::process::id();
        let (ns_a, ns_b) = (format!("rmbench-{id}-a"), format!("rmbench-{id}-b"));
        // Interface names are at most 15 bytes.
        let (if_a, if_b) = (format!("rmb{id}a"), format!("rmb{id}b"));
        let mut group = sup.group("topology")?;
        let ip = |args: &[&str]| -> Vec<String> {
            std::iter::once("ip")
                .chain(args.iter().copied())
                .map(String::from)
                .collect()
        };
        for ns in [&ns_a, &ns_b] {
            group.change(&ip(&["netns", "add", ns]), ip(&["netns", "del", ns]))?;
        }
        // Deleting a namespace takes its end of the pair with it, and the pair goes too.
        group.change(
            &ip(&[
                "link", "add", &if_a, "netns", &ns_a, "type", "veth", "peer", "name", &if_b,
                "netns", &ns_b,
            ]),
            Vec::new(),
        )?;
        for (ns, ifname, addrs) in [
            (&ns_a, &if_a, [VETH_A, NODE_A]),
            (&ns_b, &if_b, [VETH_B, NODE_B]),
        ] {
            let exec = |args: &[&str]| -> Vec<String> {
                let mut v = ip(&["-n", ns]);
                v.extend(args.iter().map(|s| s.to_string()));
                v
            };
            for a in addrs {
                let cidr = format!("{a}/{PREFIX}");
                group.change(&exec(&["addr", "add", &cidr, "dev", ifname]), Vec::new())?;
            }
            group.change(&exec(&["link", "set", ifname, "up"]), Vec::new())?;
            group.change(&exec(&["link", "set", "lo", "up"]), Vec::new())?;
        }
        let half = (cores / 2).max(1);
        let list = |from: usize, to: usize| {
            if to - from == 1 {
                from.to_string()
            } else {
                format!("{from}-{}", to - 1)
            }
        };
        let taskset = |l: String| vec!["taskset".to_string(), "-c".into(), l];
        let a = Side {
            netns: Some(PathBuf::from(format!("/run/netns/{ns_a}"))),
            launcher: taskset(list(0, half)),
        };
        let b = Side {
            netns: Some(PathBuf::from(format!("/run/netns/{ns_b}"))),
            launcher: taskset(list(half, cores)),
        };
        Ok(Topology {
            kind: Kind::Veth,
            client: a.clone(),
            proxy1: a,
            proxy2: b.clone(),
            backend: b,
            _guard: Some(Arc::new(group)),
        })
    }

    /// The address the backend listens on for a scenario whose loopback backend address is
    /// `loopback`: on the veth, always side `b`'s address.
    pub fn backend_ip(&self, loopback: IpAddr) -> IpAddr {
        match self.kind {
            Kind::Loopback => loopback,
            Kind::Veth => IpAddr::V4(VETH_B),
        }
    }

    /// The address the server-side proxy listens on so that the client side reaches it.
    pub fn server_listen_ip(&self) -> IpAddr {
        match self.kind {
            Kind::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Kind::Veth => IpAddr::V4(VETH_B),
        }
    }

    /// Whether targets lie outside 127.0.0.0/8 (loadgen wants `--allow-remote` for them).
    pub fn remote_targets(&self) -> bool {
        self.kind == Kind::Veth
    }
}

/// What the veth topology needs: root, `ip`, `taskset`, and two CPUs.
pub fn check_prerequisites(cores: usize) -> Result<()> {
    if cores < 2 {
        return Err(Error::invalid(
            "--topology veth",
            format!(
                "puts each side on its own CPUs and needs at least 2, this machine has {cores}"
            ),
        ));
    }
    for (program, package) in [("ip", "iproute2"), ("taskset", "util-linux")] {
        if crate::net::on_path(program).is_none() {
            return Err(Error::MissingProgram {
                program: program.into(),
                hint: format!("--topology veth needs it: `apt-get install {package}`"),
            });
        }
    }
    if !rustix::process::geteuid().is_root() {
        return Err(Error::invalid(
            "user",
            "--topology veth creates network namespaces and a veth, and needs root",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for k in [Kind::Loopback, Kind::Veth] {
            assert_eq!(k.name().parse::<Kind>().unwrap(), k);
        }
        let e = "mesh".parse::<Kind>().unwrap_err().to_string();
        assert!(e.contains("loopback, veth"), "{e}");
    }

    #[test]
    fn loopback_keeps_the_pin_launchers_and_addresses() {
        let t = Topology::loopback(vec!["c".into()], vec!["p".into()]);
        assert_eq!(t.client.launcher, ["c"]);
        assert_eq!(t.backend.launcher, ["c"]);
        assert_eq!(t.proxy1.launcher, ["p"]);
        assert_eq!(t.proxy2.launcher, ["p"]);
        let lo = IpAddr::V4(Ipv4Addr::new(127, 9, 2, 1));
        assert_eq!(t.backend_ip(lo), lo);
        assert!(!t.remote_targets());
        // No namespace: the closure runs right here.
        let here = std::thread::current().id();
        assert_eq!(
            t.proxy1.run(|| Ok(std::thread::current().id())).unwrap(),
            here
        );
    }
}
