//! The node's own listening addresses, so that no path dials one of them.
//!
//! Owns: [`OwnListeners`], the set every dial path checks its destination against.
//!
//! Why: a connection that the node relays to one of its own listeners comes back to the
//! node, which relays it again. One plaintext connection to a workload IP's port 15006 made
//! the node dial its own 15006 again and again: 19,994 of 20,000 file descriptors in under
//! half a second, and a loop that outlived its client by minutes (issue 12). A CONNECT whose
//! authority names a local 15006/15008, or a SOCKS5 request for the node's own admin port,
//! reaches the same hole (the latter would also hand the admin API to any pod).
//!
//! Invariants:
//! - every path checks before it dials: outbound capture and SOCKS5 (the original
//!   destination and the resolved upstream of a plain-TCP route), inbound HBONE (the
//!   CONNECT authority), inbound plaintext (the original destination), passthrough;
//! - the set holds every address the node listens on: the node-wide entries and admin
//!   endpoints, and the HBONE and plaintext ports of every local workload IP (rebuilt with
//!   every snapshot); a wildcard bind (`0.0.0.0:p`) matches port `p` on any address of this
//!   network namespace;
//! - addresses are compared in canonical form, so `::ffff:127.0.0.1` is `127.0.0.1`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use crate::config::Snapshot;

/// Addresses the node listens on.
#[derive(Debug, Clone, Default)]
pub struct OwnListeners {
    exact: HashSet<SocketAddr>,
    /// Ports bound on the wildcard address: (is IPv4, port).
    wildcard: Vec<(bool, u16)>,
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl OwnListeners {
    /// The node-wide endpoints (entries, admin, metrics, readiness) and, on every local
    /// workload IP of `snapshot`, `workload_ports` (HBONE and plaintext; in in-pod mode also
    /// the capture port, which listens inside every pod).
    pub fn new(
        endpoints: &[SocketAddr],
        snapshot: &Snapshot,
        workload_ports: &[u16],
    ) -> OwnListeners {
        let mut own = OwnListeners::default();
        for &addr in endpoints {
            own.add(addr);
        }
        for w in snapshot.local_workloads() {
            for &ip in &w.ips {
                for &port in workload_ports {
                    own.add(SocketAddr::new(ip, port));
                }
            }
        }
        own
    }

    fn add(&mut self, addr: SocketAddr) {
        let addr = canonical(addr);
        if addr.ip().is_unspecified() {
            self.wildcard.push((addr.is_ipv4(), addr.port()));
        } else {
            self.exact.insert(addr);
        }
    }

    /// Whether a connection to `addr` would reach one of the node's own listeners.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let addr = canonical(addr);
        if self.exact.contains(&addr) {
            return true;
        }
        // The unspecified address itself connects to the local host.
        self.wildcard
            .iter()
            .any(|&(v4, port)| port == addr.port() && v4 == addr.is_ipv4())
            && is_local(addr.ip())
    }
}

fn is_local(ip: IpAddr) -> bool {
    runtime::net::is_local_ip(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadOptions, parse};

    fn snapshot() -> Snapshot {
        let yaml = "node: n1\nworkloads:\n  - {name: a, namespace: ns, workloadIps: [\"127.0.9.1\"], node: n1, protocol: HBONE}\n  - {name: b, namespace: ns, workloadIps: [\"127.0.9.2\"], node: n2, protocol: HBONE}\n";
        parse(yaml, &LoadOptions::default()).unwrap()
    }

    #[test]
    fn local_workload_ports_and_endpoints_are_own_and_others_are_not() {
        let admin: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let own = OwnListeners::new(&[admin], &snapshot(), &[15008, 15006]);
        assert!(own.contains("127.0.9.1:15006".parse().unwrap()));
        assert!(own.contains("127.0.9.1:15008".parse().unwrap()));
        assert!(own.contains(admin));
        assert!(own.contains("[::ffff:127.0.0.1]:15000".parse().unwrap()));
        // The application port of a local workload, and a remote workload's HBONE port,
        // are real destinations.
        assert!(!own.contains("127.0.9.1:8080".parse().unwrap()));
        assert!(!own.contains("127.0.9.2:15008".parse().unwrap()));
    }

    #[test]
    fn a_wildcard_bind_covers_every_local_address_of_its_family() {
        let own = OwnListeners::new(
            &["0.0.0.0:15001".parse().unwrap()],
            &snapshot(),
            &[15008, 15006],
        );
        assert!(own.contains("127.0.0.1:15001".parse().unwrap()));
        assert!(own.contains("127.77.0.3:15001".parse().unwrap()));
        assert!(own.contains("0.0.0.0:15001".parse().unwrap()));
        // TEST-NET-1 is never assigned to this host.
        assert!(!own.contains("192.0.2.1:15001".parse().unwrap()));
        assert!(
            !own.contains("[::1]:15001".parse().unwrap()),
            "other family"
        );
        assert!(!own.contains("127.0.0.1:15002".parse().unwrap()));
    }
}
