//! Cluster mode end to end: nodes with no config file and no CA directory, fed only by a
//! fake istiod (`e2e::istiod`: Delta ADS + Istio CA on one TLS port, playing by the
//! protocol), configured through ztunnel's environment variables.
//!
//! Covers: two nodes carry HBONE traffic with workloads, services and certificates from
//! istiod (node id, token, cluster id and impersonation as ztunnel sends them); a pushed
//! policy denies a new connection and closes a live one; istiod restarting mid-traffic
//! breaks nothing and the node resubscribes with the versions it holds; a malformed
//! resource is NACKed by name while the last good state keeps serving; certificates rotate
//! from the CA while traffic flows; a CA that is down at start-up keeps the node not ready
//! (saying why) until it comes back.
//!
//! Address plan: 127.231.0.0/16 and 127.232.0.0/16, a /24 block per test (`Plan`).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use control::pb::security as ps;
use control::pb::workload as pw;
use e2e::istiod::{ADDRESS_TYPE, AUTHORIZATION_TYPE, FakeIstiod};
use e2e::{Node, echo_once, ip4, socks_connect, socks_reply_code, spawn_echo, wait_for};
use hbone::certs::{CaOptions, CertificateAuthority};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "test-token-for-istiod";

/// One test's addresses: nodes on .B.1/.B.2, the client workload on .B+1.1, the echo
/// workload on .B+2.1, the echo service's VIP on .B+3.1.
struct Plan {
    x: u8,
    b: u8,
}

impl Plan {
    fn node(&self, n: u8) -> IpAddr {
        ip4(self.x, self.b, n)
    }
    fn client(&self) -> IpAddr {
        ip4(self.x, self.b + 1, 1)
    }
    fn echo(&self) -> IpAddr {
        ip4(self.x, self.b + 2, 1)
    }
    fn vip(&self) -> SocketAddr {
        SocketAddr::new(ip4(self.x, self.b + 3, 1), 80)
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn workload(uid: &str, sa: &str, ip: IpAddr, node: &str, services: &[&str]) -> pw::Address {
    pw::Address {
        r#type: Some(pw::address::Type::Workload(pw::Workload {
            uid: uid.into(),
            name: uid.rsplit('/').next().unwrap_or(uid).into(),
            namespace: "demo".into(),
            service_account: sa.into(),
            addresses: vec![ip_bytes(ip)],
            node: node.into(),
            tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
            workload_name: sa.into(),
            canonical_name: sa.into(),
            canonical_revision: "v1".into(),
            cluster_id: "Kubernetes".into(),
            services: services
                .iter()
                .map(|s| {
                    (
                        s.to_string(),
                        pw::PortList {
                            ports: vec![pw::Port {
                                service_port: 80,
                                target_port: 8080,
                                app_protocol: 0,
                            }],
                        },
                    )
                })
                .collect(),
            ..pw::Workload::default()
        })),
    }
}

fn echo_service(vip: SocketAddr) -> pw::Address {
    pw::Address {
        r#type: Some(pw::address::Type::Service(pw::Service {
            name: "echo".into(),
            namespace: "demo".into(),
            hostname: "echo.demo.svc.cluster.local".into(),
            addresses: vec![pw::NetworkAddress {
                network: String::new(),
                address: ip_bytes(vip.ip()),
                length: None,
            }],
            ports: vec![pw::Port {
                service_port: u32::from(vip.port()),
                target_port: 8080,
                app_protocol: 0,
            }],
            ..pw::Service::default()
        })),
    }
}

const ECHO_UID: &str = "Kubernetes//Pod/demo/echo-0";
const CLIENT_UID: &str = "Kubernetes//Pod/demo/client-0";
const ECHO_SVC: &str = "demo/echo.demo.svc.cluster.local";

/// A fake istiod holding the two workloads and the service, the files nodes read (root
/// certificate, token), and the echo backend.
struct Cluster {
    istiod: FakeIstiod,
    dir: tempfile::TempDir,
    plan: Plan,
}

impl Cluster {
    fn new(plan: Plan) -> Result<Cluster> {
        let ca = CertificateAuthority::new_root(&CaOptions::new("fake istiod root"))?;
        let istiod = FakeIstiod::start(ca)?;
        istiod.require_token(TOKEN);
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("root-cert.pem"), istiod.root_pem())?;
        std::fs::write(dir.path().join("istio-token"), TOKEN)?;
        istiod.put_address(
            CLIENT_UID,
            &workload(CLIENT_UID, "client", plan.client(), "node-1", &[]),
        );
        istiod.put_address(
            ECHO_UID,
            &workload(ECHO_UID, "echo", plan.echo(), "node-2", &[ECHO_SVC]),
        );
        istiod.put_address(ECHO_SVC, &echo_service(plan.vip()));
        spawn_echo(SocketAddr::new(plan.echo(), 8080))?;
        Ok(Cluster { istiod, dir, plan })
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// ztunnel's environment for node `n`.
    fn env(&self, n: u8) -> Vec<(String, String)> {
        vec![
            ("XDS_ADDRESS".into(), self.istiod.address()),
            ("XDS_ROOT_CA".into(), self.file("root-cert.pem")),
            ("CA_ROOT_CA".into(), self.file("root-cert.pem")),
            ("AUTH_TOKEN".into(), self.file("istio-token")),
            ("POD_NAME".into(), format!("ztunnel-{n}")),
            ("POD_NAMESPACE".into(), "istio-system".into()),
            ("INSTANCE_IP".into(), self.plan.node(n).to_string()),
            ("ISTIO_META_CLUSTER_ID".into(), "Kubernetes".into()),
        ]
    }

    fn start(&self, n: u8, extra: &[&str]) -> Result<Node> {
        let env = self.env(n);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Node::start_cluster(&format!("node-{n}"), self.plan.node(n), &env, extra)
    }

    fn spawn(&self, n: u8, extra: &[&str]) -> Result<Node> {
        let env = self.env(n);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Node::spawn_cluster(&format!("node-{n}"), self.plan.node(n), &env, extra)
    }

    /// A connection from the client workload through node-1's SOCKS5 to `target`.
    fn connect(&self, node1: &Node, target: SocketAddr) -> Result<TcpStream> {
        socks_connect(self.plan.client(), node1.socks(), target)
    }

    /// Waits for the ACK or NACK of the first response after `since` requests were seen.
    fn wait_answer(&self, type_url: &str, since: usize) -> Result<e2e::istiod::Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.istiod.received();
            if let Some(r) = got
                .iter()
                .skip(since)
                .find(|r| r.type_url == type_url && !r.nonce.is_empty())
            {
                return Ok(r.clone());
            }
            if Instant::now() > deadline {
                bail!("no ACK/NACK for {type_url} after request {since}: {got:#?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn round_trip(mut s: TcpStream, msg: &[u8]) -> Result<()> {
    let back = echo_once(s.try_clone()?, msg)?;
    ensure!(
        back == msg,
        "echoed {} bytes, not {}",
        back.len(),
        msg.len()
    );
    let _ = s.flush();
    Ok(())
}

/// Writes `msg` and reads it back on a long-lived connection.
fn ping(s: &mut TcpStream, msg: &[u8]) -> Result<()> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    ensure!(back == msg, "echo mismatch");
    Ok(())
}

#[test]
fn two_nodes_fed_only_by_istiod_carry_hbone_traffic() -> Result<()> {
    let c = Cluster::new(Plan { x: 231, b: 0 })?;
    let n2 = c.start(2, &[])?;
    let n1 = c.start(1, &[])?;

    // Through the service VIP and to the pod IP, both over HBONE.
    round_trip(c.connect(&n1, c.plan.vip())?, b"via the VIP")?;
    round_trip(
        c.connect(&n1, SocketAddr::new(c.plan.echo(), 8080))?,
        b"to the pod",
    )?;
    let line = n2.wait_access(WAIT, "inbound HBONE log line", |l| {
        l.get("direction") == "inbound" && l.complete()
    })?;
    ensure!(
        line.get("src.identity").contains("ns/demo/sa/client"),
        "{line:?}"
    );

    // What istiod saw: ztunnel's node id, the token, the cluster, impersonation.
    let first = c
        .istiod
        .wait_received("node-1's first Address request", WAIT, |r| {
            r.type_url == ADDRESS_TYPE
                && r.node_id
                    .as_deref()
                    .is_some_and(|id| id.contains("ztunnel-1"))
        })?;
    let want = format!(
        "ztunnel~{}~ztunnel-1.istio-system~istio-system.svc.cluster.local",
        c.plan.node(1)
    );
    ensure!(first.node_id.as_deref() == Some(want.as_str()), "{first:?}");
    ensure!(
        c.istiod
            .received()
            .iter()
            .any(|r| r.type_url == AUTHORIZATION_TYPE),
        "no Authorization subscription"
    );
    ensure!(
        c.istiod
            .tokens()
            .iter()
            .all(|t| t == &format!("Bearer {TOKEN}")),
        "{:?}",
        c.istiod.tokens()
    );
    ensure!(
        c.istiod.cluster_ids().iter().all(|t| t == "Kubernetes"),
        "{:?}",
        c.istiod.cluster_ids()
    );
    let signed = c.istiod.signed();
    for id in [
        "spiffe://cluster.local/ns/demo/sa/client",
        "spiffe://cluster.local/ns/demo/sa/echo",
    ] {
        ensure!(
            signed.iter().any(|s| s == id),
            "{id} not signed: {signed:?}"
        );
    }
    // The dump shows istiod's state.
    let dump = n1.config_dump()?;
    let uids: Vec<&str> = dump["workloads"]
        .as_array()
        .context("workloads")?
        .iter()
        .filter_map(|w| w["uid"].as_str())
        .collect();
    ensure!(
        uids.contains(&ECHO_UID) && uids.contains(&CLIENT_UID),
        "{uids:?}"
    );
    Ok(())
}

fn deny_client_policy() -> ps::Authorization {
    ps::Authorization {
        name: "deny-client".into(),
        namespace: "demo".into(),
        scope: ps::Scope::Namespace as i32,
        action: ps::Action::Deny as i32,
        rules: vec![ps::Rule {
            clauses: vec![ps::Clause {
                matches: vec![ps::Match {
                    principals: vec![ps::StringMatch {
                        match_type: Some(ps::string_match::MatchType::Exact(
                            "cluster.local/ns/demo/sa/client".into(),
                        )),
                    }],
                    ..ps::Match::default()
                }],
            }],
        }],
        ..ps::Authorization::default()
    }
}

#[test]
fn a_pushed_policy_denies_new_connections_and_closes_live_ones() -> Result<()> {
    let c = Cluster::new(Plan { x: 231, b: 10 })?;
    let n2 = c.start(2, &[])?;
    let n1 = c.start(1, &[])?;
    let mut live = c.connect(&n1, c.plan.vip())?;
    ping(&mut live, b"before")?;

    let since = c.istiod.received().len();
    c.istiod.put_policy(&deny_client_policy());
    // Both nodes ACK the push.
    let ack = c.wait_answer(AUTHORIZATION_TYPE, since)?;
    ensure!(ack.error.is_none(), "NACK: {ack:?}");

    // The live connection is closed by node-2's re-check.
    live.set_read_timeout(Some(WAIT))?;
    let mut buf = [0u8; 16];
    let closed = match live.write_all(b"after").and_then(|_| live.read(&mut buf)) {
        Ok(0) | Err(_) => true,
        Ok(_) => false,
    };
    ensure!(closed, "the live connection survived the deny");
    // A new one is refused.
    wait_for(WAIT, "a new connection refused", || {
        socks_reply_code(c.plan.client(), n1.socks(), c.plan.vip()).is_ok_and(|code| code != 0)
    })?;
    n2.wait_access(WAIT, "the denial in node-2's log", |l| {
        l.get("error").contains("deny-client")
    })?;

    // Removing the policy opens the path again.
    c.istiod.remove(AUTHORIZATION_TYPE, "demo/deny-client");
    wait_for(WAIT, "the path open again", || {
        c.connect(&n1, c.plan.vip())
            .and_then(|s| round_trip(s, b"open"))
            .is_ok()
    })?;
    Ok(())
}

#[test]
fn istiod_restarting_mid_traffic_breaks_nothing() -> Result<()> {
    let mut c = Cluster::new(Plan { x: 231, b: 20 })?;
    let _n2 = c.start(2, &[])?;
    let n1 = c.start(1, &[])?;
    let mut live = c.connect(&n1, c.plan.vip())?;
    ping(&mut live, b"one")?;

    c.istiod.stop();
    // istiod is away: the last good state keeps serving, old and new connections.
    for i in 0..5 {
        ping(&mut live, format!("away {i}").as_bytes())?;
        round_trip(c.connect(&n1, c.plan.vip())?, b"new while away")?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = c.istiod.received().len();
    c.istiod.restart()?;
    // The node comes back with the versions it holds.
    let resub = c
        .istiod
        .wait_received("a resubscription with versions", WAIT, |r| {
            r.type_url == ADDRESS_TYPE && r.nonce.is_empty() && !r.initial_versions.is_empty()
        })?;
    ensure!(
        resub.initial_versions.contains_key(ECHO_UID),
        "{:?}",
        resub.initial_versions
    );
    ensure!(c.istiod.received().len() > before);
    ping(&mut live, b"after")?;

    // And takes new pushes: a second VIP for the echo service.
    let vip2 = SocketAddr::new(ip4(231, 23, 2), 80);
    let mut svc = echo_service(c.plan.vip());
    if let Some(pw::address::Type::Service(s)) = &mut svc.r#type {
        s.addresses.push(pw::NetworkAddress {
            network: String::new(),
            address: ip_bytes(vip2.ip()),
            length: None,
        });
    }
    c.istiod.put_address(ECHO_SVC, &svc);
    wait_for(WAIT, "the new VIP", || {
        c.connect(&n1, vip2)
            .and_then(|s| round_trip(s, b"vip2"))
            .is_ok()
    })?;
    Ok(())
}

#[test]
fn a_malformed_resource_is_nacked_and_the_last_good_state_kept() -> Result<()> {
    let c = Cluster::new(Plan { x: 232, b: 0 })?;
    let _n2 = c.start(2, &[])?;
    let n1 = c.start(1, &[])?;

    // A new workload with a 5-byte address, and a broken update of the echo workload.
    let since = c.istiod.received().len();
    let mut bad = workload(
        "Kubernetes//Pod/demo/bad",
        "bad",
        ip4(232, 9, 9),
        "node-2",
        &[],
    );
    if let Some(pw::address::Type::Workload(w)) = &mut bad.r#type {
        w.addresses = vec![vec![1, 2, 3, 4, 5]];
    }
    c.istiod.put_address("Kubernetes//Pod/demo/bad", &bad);
    let nack = c.wait_answer(ADDRESS_TYPE, since)?;
    let msg = nack.error.context("expected a NACK")?;
    ensure!(
        msg.contains("Kubernetes//Pod/demo/bad") && msg.contains("addresses[0]"),
        "{msg}"
    );

    let since = c.istiod.received().len();
    let mut broken = workload(ECHO_UID, "echo", c.plan.echo(), "node-2", &[ECHO_SVC]);
    if let Some(pw::address::Type::Workload(w)) = &mut broken.r#type {
        w.tunnel_protocol = 9;
    }
    c.istiod.put_address(ECHO_UID, &broken);
    let nack = c.wait_answer(ADDRESS_TYPE, since)?;
    ensure!(
        nack.error.as_deref().is_some_and(|m| m.contains(ECHO_UID)),
        "{nack:?}"
    );
    // The previous echo workload still serves.
    round_trip(c.connect(&n1, c.plan.vip())?, b"still here")?;
    let dump = n1.config_dump()?;
    ensure!(
        !dump.to_string().contains("Kubernetes//Pod/demo/bad"),
        "the rejected workload is in the dump"
    );
    Ok(())
}

#[test]
fn certificates_rotate_from_the_ca_while_traffic_flows() -> Result<()> {
    let c = Cluster::new(Plan { x: 232, b: 10 })?;
    // 6 s certificates renew every 3 s.
    let _n2 = c.start(2, &["--cert-lifetime", "6s"])?;
    let n1 = c.start(1, &["--cert-lifetime", "6s"])?;
    let echo_id = "spiffe://cluster.local/ns/demo/sa/echo";
    let count = |id: &str| c.istiod.signed().iter().filter(|s| *s == id).count();
    let start = count(echo_id);
    let mut live = c.connect(&n1, c.plan.vip())?;
    let until = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while Instant::now() < until {
        ping(&mut live, format!("ping {i}").as_bytes())?;
        round_trip(c.connect(&n1, c.plan.vip())?, b"fresh handshake")?;
        i += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    ensure!(
        count(echo_id) >= start + 2,
        "echo's certificate was signed {} times in 10 s (from {start})",
        count(echo_id)
    );
    Ok(())
}

#[test]
fn a_ca_down_at_start_up_keeps_the_node_not_ready_until_it_returns() -> Result<()> {
    let c = Cluster::new(Plan { x: 232, b: 20 })?;
    c.istiod.set_ca_up(false);
    let n1 = c.spawn(1, &[])?;
    // Not ready, and says what it waits for.
    wait_for(WAIT, "readiness saying certificates", || {
        n1.readiness()
            .is_ok_and(|(code, body)| code == 500 && body.contains("certificates"))
    })?;
    wait_for(WAIT, "a log line naming the CA failure", || {
        n1.proc.stderr().contains("Unavailable") || n1.proc.stderr().contains("the fake CA is down")
    })
    .with_context(|| n1.proc.stderr())?;
    c.istiod.set_ca_up(true);
    wait_for(Duration::from_secs(40), "ready once the CA is back", || {
        n1.readiness().is_ok_and(|(code, _)| code == 200)
    })
    .with_context(|| n1.proc.stderr())?;
    Ok(())
}
