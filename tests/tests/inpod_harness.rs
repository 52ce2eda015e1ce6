//! The in-pod harness itself (`e2e::inpod`), without a node proxy: pod namespaces and their
//! veth, istio-cni's in-pod rules (redirects, and the mark that bypasses them), and the
//! fake istio-cni's ZDS side against a tiny client written here. The namespace tests need
//! root and skip with a message otherwise (under CI they fail instead); the ZDS test runs
//! anywhere.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use control::pb::zds::{Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello};
use control::pb::zds::{workload_request::Payload, workload_response::Payload as RespPayload};
use e2e::echo_once;
use e2e::inpod::{
    FakeCni, INPOD_MARK, PodNet, in_netns, supported, zds_connect, zds_recv, zds_send,
};
use prost::Message;

fn tag(test: &str) -> String {
    format!("rmh{test}-{}", std::process::id())
}

/// Accepts one connection within 5 s (a redirect that went elsewhere fails, not hangs).
fn accept_within(l: &TcpListener) -> Result<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match l.accept() {
            Ok(c) => return Ok(c),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!("no connection on {} within 5 s", l.local_addr()?);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn original_dst(s: &TcpStream) -> Result<SocketAddr> {
    socket2::SockRef::from(s)
        .original_dst_v4()?
        .as_socket()
        .context("SO_ORIGINAL_DST is not an inet address")
}

fn netns_id(path: &Path) -> Result<(u64, u64)> {
    let st = rustix::fs::stat(path)?;
    Ok((st.st_dev, st.st_ino))
}

#[test]
fn pods_reach_each_other_and_are_deleted_on_drop() -> Result<()> {
    if !supported("pods_reach_each_other_and_are_deleted_on_drop")? {
        return Ok(());
    }
    let home = netns_id(Path::new("/proc/thread-self/ns/net"))?;
    let net = PodNet::pair(&tag("d"), 11)?;
    let paths = [net.a.netns_path.clone(), net.b.netns_path.clone()];
    assert!(paths.iter().all(|p| p.exists()));
    assert_ne!(netns_id(&net.a.netns_path)?, home);

    let echo = net.b.echo(8080)?;
    let s = net.a.connect(SocketAddr::new(net.b.ip, 8080))?;
    assert_eq!(echo_once(s, b"hello")?, b"hello");
    let peers: Vec<_> = echo.peers().iter().map(SocketAddr::ip).collect();
    assert_eq!(peers, vec![net.a.ip], "B saw A's own IP");

    // in_netns runs in the pod and comes back, also after a panic inside.
    let inside = in_netns(&net.a.netns_path, || {
        netns_id(Path::new("/proc/thread-self/ns/net"))
    })??;
    assert_eq!(inside, netns_id(&net.a.netns_path)?);
    assert_eq!(netns_id(Path::new("/proc/thread-self/ns/net"))?, home);
    // (resume_unwind unwinds without the panic hook's message and backtrace.)
    let caught = std::panic::catch_unwind(|| {
        in_netns(&net.b.netns_path, || {
            std::panic::resume_unwind(Box::new("inside"))
        })
    });
    assert!(caught.is_err());
    assert_eq!(netns_id(Path::new("/proc/thread-self/ns/net"))?, home);
    // The host has no route to the pods' subnet: nothing leaked out of the namespaces.
    let host_routes = std::process::Command::new("ip").args(["route"]).output()?;
    assert!(!String::from_utf8_lossy(&host_routes.stdout).contains("10.231.11."));

    drop(echo);
    drop(net);
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    Ok(())
}

#[test]
fn istio_cni_rules_redirect_and_the_mark_bypasses_them() -> Result<()> {
    if !supported("istio_cni_rules_redirect_and_the_mark_bypasses_them")? {
        return Ok(());
    }
    let net = PodNet::pair(&tag("r"), 12)?;
    let (a, b) = (&net.a, &net.b);
    let echo = b.echo(8080)?;
    let b8080 = SocketAddr::new(b.ip, 8080);
    let a8080 = SocketAddr::new(a.ip, 8080);

    a.install_istio_cni_rules(true)?;
    let save = a.iptables_save()?;
    for want in [
        "--to-ports 15001",
        "--to-ports 15006",
        "--to-ports 15053",
        "CT --zone 1",
    ] {
        ensure!(
            save.contains(want),
            "no {want:?} in the pod's rules:\n{save}"
        );
    }
    let rules = a.exec(&["ip", "rule", "show"])?;
    ensure!(rules.contains("32764:") && rules.contains("fwmark 0x111/0xfff lookup 100"));
    let table = a.exec(&["ip", "route", "show", "table", "100"])?;
    ensure!(table.contains("local default dev lo"), "table 100: {table}");

    // Outbound from the pod goes to its 15001, where nothing listens yet.
    let err = a.connect(b8080).expect_err("redirected to a closed 15001");
    let io = err.root_cause().downcast_ref::<std::io::Error>();
    assert_eq!(
        io.map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionRefused),
        "{err:#}"
    );
    assert_eq!(echo.count(), 0);

    // The node proxy's mark bypasses the redirect.
    let s = a.connect_marked(b8080, Some(INPOD_MARK))?;
    assert_eq!(echo_once(s, b"marked")?, b"marked");
    assert_eq!(echo.count(), 1);

    // With a listener on 15001 the redirected connection lands there, original dst intact.
    let l15001 = a.listen("0.0.0.0:15001".parse()?)?;
    let _client = a.connect(b8080)?;
    let (conn, peer) = accept_within(&l15001)?;
    assert_eq!(original_dst(&conn)?, b8080);
    assert_eq!(peer.ip(), a.ip);

    // Inbound to the pod goes to its 15006, except HBONE's 15008.
    let l15006 = a.listen("0.0.0.0:15006".parse()?)?;
    let l15008 = a.listen("0.0.0.0:15008".parse()?)?;
    let _client = b.connect(a8080)?;
    let (conn, peer) = accept_within(&l15006)?;
    assert_eq!(original_dst(&conn)?, a8080);
    assert_eq!(peer.ip(), b.ip);
    let _client = b.connect(SocketAddr::new(a.ip, 15008))?;
    let (conn, _) = accept_within(&l15008)?;
    assert_eq!(conn.local_addr()?, SocketAddr::new(a.ip, 15008));

    // DNS over UDP to any server goes to the pod's 127.0.0.1:15053.
    let dns = in_netns(&a.netns_path, || UdpSocket::bind("127.0.0.1:15053"))??;
    dns.set_read_timeout(Some(Duration::from_secs(5)))?;
    let query = in_netns(&a.netns_path, || UdpSocket::bind("0.0.0.0:0"))??;
    query.send_to(b"query", SocketAddr::new(b.ip, 53))?;
    let mut buf = [0u8; 16];
    let (n, from) = dns.recv_from(&mut buf).context("redirected DNS query")?;
    assert_eq!(&buf[..n], b"query");
    assert_eq!(from.ip(), a.ip);

    // Un-enrolled, the pod reaches B directly again.
    a.remove_istio_cni_rules()?;
    let rules = a.exec(&["ip", "rule", "show"])?;
    ensure!(!rules.contains("0x111"), "ip rule left: {rules}");
    let s = a.connect(b8080)?;
    assert_eq!(echo_once(s, b"direct")?, b"direct");
    assert_eq!(echo.count(), 2);

    // Without DNS capture there is no raw table and no :53 redirect.
    a.install_istio_cni_rules(false)?;
    let save = a.iptables_save()?;
    ensure!(
        !save.contains("15053") && !save.contains("CT --zone"),
        "{save}"
    );
    ensure!(save.contains("--to-ports 15001"));
    Ok(())
}

/// A minimal node proxy: connects, says hello, answers every request with `reply(req)`,
/// and on a request it cannot decode NACKs and hangs up (as ztunnel does). Returns what it
/// saw.
fn tiny_node(
    path: &Path,
    reply: fn(&Payload) -> &'static str,
) -> std::thread::JoinHandle<Result<Vec<String>>> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let fd = zds_connect(&path)?;
        let hello = ZdsHello {
            version: Version::V1.into(),
        };
        zds_send(fd.as_fd(), &hello.encode_to_vec(), &[])?;
        let ack = |error: &str| {
            let resp = WorkloadResponse {
                payload: Some(RespPayload::Ack(Ack {
                    error: error.into(),
                })),
            };
            zds_send(fd.as_fd(), &resp.encode_to_vec(), &[])
        };
        let mut seen = Vec::new();
        while let Some((bytes, fds)) = zds_recv(fd.as_fd(), Duration::from_secs(20))? {
            let Ok(WorkloadRequest { payload: Some(p) }) = WorkloadRequest::decode(&bytes[..])
            else {
                ack("failure to read message : bad request")?;
                seen.push("garbage".to_string());
                break;
            };
            let line = match &p {
                Payload::Add(a) => {
                    ensure!(fds.len() == 1, "add with {} fds", fds.len());
                    let got = rustix::fs::fstat(&fds[0])?;
                    let want = rustix::fs::stat("/proc/self/ns/net")?;
                    ensure!((got.st_dev, got.st_ino) == (want.st_dev, want.st_ino));
                    let info = a.workload_info.clone().unwrap_or_default();
                    format!(
                        "add {} {}/{} {}",
                        a.uid, info.namespace, info.name, info.service_account
                    )
                }
                Payload::Keep(k) => format!("keep {}", k.uid),
                Payload::Del(d) => format!("del {}", d.uid),
                Payload::SnapshotSent(_) => "snapshot".to_string(),
            };
            if !matches!(p, Payload::Add(_)) {
                ensure!(fds.is_empty(), "{line} with an fd");
            }
            seen.push(line);
            ack(reply(&p))?;
        }
        Ok(seen)
    })
}

#[test]
fn fake_cni_speaks_zds() -> Result<()> {
    let cni = FakeCni::start()?;
    assert!(!cni.connected());
    let node = tiny_node(cni.path(), |p| match p {
        Payload::Keep(_) => "keep refused",
        _ => "",
    });
    cni.accept(Duration::from_secs(5))?;
    assert_eq!(cni.hello().map(|h| h.version), Some(Version::V1 as i32));
    assert!(cni.connected());
    assert_eq!(cni.accepted(), 1);

    let own_netns = Path::new("/proc/self/ns/net");
    assert_eq!(cni.add("uid-1", "pod-1", "ns1", "sa1", own_netns)?, "");
    assert_eq!(cni.keep("uid-2")?, "keep refused");
    assert_eq!(cni.snapshot_sent()?, "");
    assert_eq!(cni.del("uid-1")?, "");
    cni.quiet_for(Duration::from_millis(100))?;

    // Garbage: the node NACKs, then hangs up; further requests fail instead of hanging.
    let nack = cni.send_raw(&[0xff, 0xff], None)?;
    assert!(nack.starts_with("failure to read message"), "{nack}");
    cni.wait_closed(Duration::from_secs(5))?;
    assert!(cni.del("uid-1").is_err());
    let seen = node.join().unwrap()?;
    assert_eq!(
        seen,
        [
            "add uid-1 ns1/pod-1 sa1",
            "keep uid-2",
            "snapshot",
            "del uid-1",
            "garbage"
        ]
    );

    // A second node connects after a restart of the agent's side.
    let node = tiny_node(cni.path(), |_| "");
    cni.restart();
    cni.accept(Duration::from_secs(5))?;
    assert_eq!(cni.accepted(), 2);
    assert_eq!(cni.add("uid-3", "pod-3", "ns3", "sa3", own_netns)?, "");
    // Closing our side ends the node's loop (it reads end of stream).
    cni.restart();
    assert!(!cni.connected());
    let seen = node.join().unwrap()?;
    assert_eq!(seen, ["add uid-3 ns3/pod-3 sa3"]);

    // Nobody connecting is a timeout, not a hang.
    let start = Instant::now();
    assert!(cni.accept(Duration::from_millis(200)).is_err());
    assert!(start.elapsed() < Duration::from_secs(2));
    Ok(())
}
