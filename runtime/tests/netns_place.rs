//! Sockets made in another network namespace (root only; skipped otherwise): a listener
//! made for a namespace is seen there and not here, and a marked connection made there
//! reaches a peer in that namespace from the namespace's own address.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use runtime::DriverChoice;
use runtime::net::{Placement, TcpListener, TcpStream};
use runtime::netns::Netns;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn netns(name: &str) -> Option<Ns> {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
    let ok = Command::new("ip")
        .args(["netns", "add", name])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot create a network namespace (needs root)");
        return None;
    }
    let ns = Ns(name.to_string());
    Command::new("ip")
        .args(["-n", name, "link", "set", "lo", "up"])
        .status()
        .ok()?;
    Some(ns)
}

fn listening_in(ns: &str, port: u16) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-ltnH"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!(":{port}"))
}

fn run(driver: DriverChoice) {
    let name = format!("rm-rt-{}-{}", std::process::id(), driver);
    let Some(_ns) = netns(&name) else { return };
    let place = Placement {
        netns: Some(Arc::new(
            Netns::open(std::path::Path::new(&format!("/run/netns/{name}"))).unwrap(),
        )),
        mark: Some(1337),
    };
    runtime::block_on(driver, async {
        let addr: SocketAddr = "127.0.0.1:15999".parse().unwrap();
        let l = TcpListener::bind_placed(&place, addr, None).unwrap();
        assert!(
            listening_in(&name, 15999),
            "not listening inside the namespace"
        );
        // Not here: this namespace's 15999 is free.
        assert!(runtime::net::probe_unserved(addr).is_ok());
        let (accepted, dialed) = futures_util::future::join(l.accept(), async {
            TcpStream::connect_placed(&place, None, addr).await
        })
        .await;
        let (_s, peer) = accepted.unwrap();
        dialed.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.1");
    })
    .unwrap();
}

#[test]
fn sockets_are_made_in_the_namespace_on_io_uring() {
    run(DriverChoice::IoUring);
}

#[test]
fn sockets_are_made_in_the_namespace_on_epoll() {
    run(DriverChoice::Epoll);
}
