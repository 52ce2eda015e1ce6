//! In-pod mode end to end: pods are network namespaces joined by a veth, with istio-cni's
//! in-pod iptables rules installed in them (`e2e::inpod`), enrolled over ZDS by the test
//! playing istio-cni; two `ringmesh run` nodes serve them from inside their namespaces.
//!
//! Covers: pod → pod across nodes over HBONE, the destination application seeing the
//! source pod's own IP, and a `sourceIps` deny on the destination refusing that pod by IP;
//! enrolling a pod with a connection open (untouched) and new ones captured; un-enrolling
//! (open connections finish, new ones go direct); istio-cni restarting (no connection lost,
//! the pod kept); hostile ZDS input NACKed with the node still serving; the DNS proxy
//! answering service names, forwarding others from inside the pod, and FORMERR for garbage.
//!
//! Needs root (namespaces, iptables inside them); skipped otherwise, CI runs as root.
//! Both drivers carry pod traffic (the last test runs the epoll driver).
//! Address plan: pods 10.231.{41..45}.{2,3} (inside their own namespaces only); node
//! endpoints on 127.240.{41..45}.{1,2}.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use e2e::inpod::{FakeCni, Pod, PodNet, in_netns, supported};
use e2e::{MeshDir, Node, ip4, ping, wait_for};

const WAIT: Duration = Duration::from_secs(15);

fn workload(name: &str, ip: IpAddr, node: &str, services: &str) -> String {
    format!(
        "  - name: {name}\n    namespace: test\n    serviceAccount: {name}\n    workloadIps: [\"{ip}\"]\n    node: {node}\n    protocol: HBONE\n    services: [{services}]\n"
    )
}

/// The mesh: pod `a` (sa client) on node-1, pod `b` (sa echo) on node-2, the echo service
/// with a VIP; `extra` is appended (policies).
fn config(net: &PodNet, extra: &str) -> String {
    format!(
        "workloads:\n{}{}services:\n  - name: echo\n    namespace: test\n    hostname: echo.test.svc.cluster.local\n    vips: [\"10.96.41.10\"]\n    ports:\n      80: 8080\n{extra}",
        workload("client", net.a.ip, "node-1", ""),
        workload(
            "echo",
            net.b.ip,
            "node-2",
            "\"test/echo.test.svc.cluster.local\""
        ),
    )
}

/// Two nodes, each with its own fake istio-cni, and the two pods enrolled (or not).
struct Mesh {
    net: PodNet,
    mesh: MeshDir,
    cni1: FakeCni,
    /// Held for the node's life (its ZDS peer).
    _cni2: FakeCni,
    n1: Node,
    n2: Node,
}

/// Starts node `name` on `ip` with in-pod mode on `cni`'s socket, answering istio-cni's
/// part (hello, the pods in `pods`, the end of the snapshot) while it starts.
fn start_node(
    mesh: &MeshDir,
    name: &str,
    ip: IpAddr,
    cni: &FakeCni,
    pods: &[(&str, &Pod)],
    extra: &[&str],
) -> Result<Node> {
    let uds = cni.path().to_string_lossy().into_owned();
    let mut args = vec!["--inpod-uds", uds.as_str()];
    args.extend_from_slice(extra);
    let node = Node::spawn(mesh, name, ip, &args)?;
    cni.accept(WAIT)?;
    for (uid, pod) in pods {
        let sa = if pod.name.ends_with("-a") {
            "client"
        } else {
            "echo"
        };
        let ack = cni.add(uid, sa, "test", sa, &pod.netns_path)?;
        ensure!(ack.is_empty(), "{name} NACKed {uid}: {ack}");
    }
    let ack = cni.snapshot_sent()?;
    ensure!(ack.is_empty(), "{name} NACKed the snapshot's end: {ack}");
    node.wait_ready()
}

impl Mesh {
    /// `enroll_a`: whether pod `a` is handed to node-1 at start (with its rules).
    fn start(subnet: u8, enroll_a: bool, extra_config: &str, node_args: &[&str]) -> Result<Mesh> {
        let net = PodNet::pair(&format!("rmp{subnet}-{}", std::process::id()), subnet)?;
        net.b.install_istio_cni_rules(true)?;
        if enroll_a {
            net.a.install_istio_cni_rules(true)?;
        }
        let mesh = MeshDir::new(&config(&net, extra_config))?;
        let (cni1, cni2) = (FakeCni::start()?, FakeCni::start()?);
        let a_pods: Vec<(&str, &Pod)> = if enroll_a {
            vec![("uid-a", &net.a)]
        } else {
            vec![]
        };
        let n1 = start_node(
            &mesh,
            "node-1",
            ip4(240, subnet, 1),
            &cni1,
            &a_pods,
            node_args,
        )?;
        let n2 = start_node(
            &mesh,
            "node-2",
            ip4(240, subnet, 2),
            &cni2,
            &[("uid-b", &net.b)],
            node_args,
        )?;
        Ok(Mesh {
            net,
            mesh,
            cni1,
            _cni2: cni2,
            n1,
            n2,
        })
    }

    fn echo_target(&self) -> SocketAddr {
        SocketAddr::new(self.net.b.ip, 8080)
    }
}

/// Access-log lines of `node` in `direction` so far.
fn lines(node: &Node, direction: &str) -> usize {
    node.access_logs()
        .iter()
        .filter(|l| l.get("direction") == direction)
        .count()
}

/// Runs `f` on the mesh; on failure the error carries both nodes' logs.
fn with_logs(m: &Mesh, f: impl FnOnce(&Mesh) -> Result<()>) -> Result<()> {
    f(m).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n--- node-1 log:\n{}\n--- node-2 log:\n{}\n--- sockets in a:\n{}\n--- in b:\n{}",
            m.n1.proc.stderr(),
            m.n2.proc.stderr(),
            m.net.a.exec(&["ss", "-ltnu"]).unwrap_or_default(),
            m.net.b.exec(&["ss", "-ltnu"]).unwrap_or_default(),
        )
    })
}

#[test]
fn pod_to_pod_over_hbone_keeps_the_pod_ip_and_a_source_ip_deny_holds() -> Result<()> {
    if !supported("node_inpod")? {
        return Ok(());
    }
    let m = Mesh::start(41, true, "", &[])?;
    with_logs(&m, pod_to_pod)
}

fn pod_to_pod(m: &Mesh) -> Result<()> {
    let echo = m.net.b.echo(8080)?;

    let mut c = m.net.a.connect(m.echo_target())?;
    ping(&mut c, b"from pod a, through both nodes")?;
    drop(c);
    // The application saw pod a's own address (sockets made in the pods' namespaces, the
    // last hop transparent).
    ensure!(
        echo.peers().last().map(|p| p.ip()) == Some(m.net.a.ip),
        "echo saw {:?}, not {}",
        echo.peers(),
        m.net.a.ip
    );
    let out = m.n1.wait_access(WAIT, "node-1's outbound line", |l| {
        l.get("direction") == "outbound" && l.complete()
    })?;
    ensure!(
        out.get("src.addr").starts_with(&m.net.a.ip.to_string()),
        "{out:?}"
    );
    let inb = m.n2.wait_access(WAIT, "node-2's inbound line", |l| {
        l.get("direction") == "inbound" && l.complete()
    })?;
    ensure!(
        inb.get("src.addr").starts_with(&m.net.a.ip.to_string()),
        "{inb:?}"
    );
    ensure!(inb.get("src.identity").contains("sa/client"), "{inb:?}");
    // Through the service VIP as well (the pod's own route sends it to eth0: captured).
    let mut v = m
        .net
        .a
        .connect(SocketAddr::new("10.96.41.10".parse()?, 80))?;
    ping(&mut v, b"via the VIP")?;
    drop(v);

    // A deny by source IP on node-2 refuses pod a: its peer address is the pod's.
    let deny = format!(
        "policies:\n  - name: no-pod-a\n    namespace: test\n    scope: Namespace\n    action: Deny\n    rules:\n    - - - sourceIps: [\"{}/32\"]\n",
        m.net.a.ip
    );
    m.mesh.write_config(&config(&m.net, &deny))?;
    wait_for(WAIT, "the deny to take hold", || {
        m.net
            .a
            .connect(m.echo_target())
            .and_then(|mut s| ping(&mut s, b"x"))
            .is_err()
    })?;
    // (The loop may have ended on a connection revoked mid-flight; a new one is denied.)
    ensure!(
        m.net
            .a
            .connect(m.echo_target())
            .and_then(|mut s| ping(&mut s, b"y"))
            .is_err(),
        "pod a still reaches pod b after the deny"
    );
    let denied = m.n2.wait_access(WAIT, "node-2's denied line", |l| {
        l.get("direction") == "inbound" && l.outcome() == "denied"
    })?;
    ensure!(
        denied.get("src.addr").starts_with(&m.net.a.ip.to_string()),
        "{denied:?}"
    );
    let metrics = m.n1.metrics()?;
    ensure!(
        metrics.contains("workload_manager_active_proxy_count 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("workload_manager"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[test]
fn pod_to_pod_on_the_epoll_driver() -> Result<()> {
    if !supported("node_inpod")? {
        return Ok(());
    }
    let m = Mesh::start(45, true, "", &["--driver", "epoll"])?;
    with_logs(&m, |m| {
        let echo = m.net.b.echo(8080)?;
        let mut c = m.net.a.connect(m.echo_target())?;
        ping(&mut c, b"from pod a, epoll")?;
        drop(c);
        ensure!(echo.peers().last().map(|p| p.ip()) == Some(m.net.a.ip));
        Ok(())
    })
}

#[test]
fn enrolling_leaves_open_connections_alone_and_removing_lets_them_finish() -> Result<()> {
    if !supported("node_inpod")? {
        return Ok(());
    }
    let m = Mesh::start(42, false, "", &[])?;
    with_logs(&m, enroll_and_remove)
}

fn enroll_and_remove(m: &Mesh) -> Result<()> {
    let _echo = m.net.b.echo(8080)?;

    // Connection tracking on in the pod first, as on a cluster node (its CNI's rules use
    // it): a connection that conntrack never saw would be picked up mid-stream as new when
    // the capture rules arrive, and its replies redirected.
    // (A rule with no target: it only counts.)
    let warm = [
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
    ];
    m.net.a.exec(&warm)?;
    // Before enrollment: direct, node-1 sees nothing.
    let mut before = m.net.a.connect(m.echo_target())?;
    ping(&mut before, b"direct").context("direct")?;

    m.net.a.install_istio_cni_rules(true)?;
    let ack = m
        .cni1
        .add("uid-a", "client", "test", "client", &m.net.a.netns_path)?;
    ensure!(ack.is_empty(), "NACK: {ack}");
    // The open connection goes on, untouched; a new one is captured.
    ping(&mut before, b"still direct").context("still direct")?;
    let outbound_before = lines(&m.n1, "outbound");
    let mut captured = m.net.a.connect(m.echo_target())?;
    ping(&mut captured, b"captured").context("captured")?;
    wait_for(WAIT, "node-1 to carry the new connection", || {
        m.n1.metrics().is_ok_and(|t| {
            e2e::metric_sum(
                &t,
                "istio_tcp_connections_opened_total",
                &["reporter=\"source\""],
            ) >= 1.0
        })
    })?;

    // istio-cni restarts: the node reconnects, the pod is re-sent with the same namespace,
    // the open captured connection goes on, nothing is restarted.
    m.cni1.restart();
    m.cni1.accept(WAIT)?;
    let ack = m
        .cni1
        .add("uid-a", "client", "test", "client", &m.net.a.netns_path)?;
    ensure!(ack.is_empty(), "NACK after restart: {ack}");
    ensure!(m.cni1.snapshot_sent()?.is_empty());
    ping(&mut captured, b"after istio-cni restarted").context("after istio-cni restarted")?;
    let metrics = m.n1.metrics()?;
    ensure!(
        metrics.contains("workload_manager_proxies_started_total 1"),
        "the pod was restarted: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("workload_manager"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Removed: the open captured connection finishes; new ones go direct.
    ensure!(m.cni1.del("uid-a")?.is_empty());
    m.net.a.remove_istio_cni_rules()?;
    ping(&mut captured, b"after removal").context("after removal")?;
    drop(captured);
    m.n1.wait_access(WAIT, "the captured connection's line", |l| {
        l.get("direction") == "outbound" && l.complete()
    })?;
    let outbound_after = lines(&m.n1, "outbound");
    let mut direct = m.net.a.connect(m.echo_target())?;
    ping(&mut direct, b"direct again").context("direct again")?;
    drop(direct);
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        lines(&m.n1, "outbound") == outbound_after,
        "node-1 still captured a new connection after removal"
    );
    ensure!(outbound_after > outbound_before);
    ping(&mut before, b"the first one, still").context("the first one, still")?;
    Ok(())
}

#[test]
fn hostile_zds_input_is_nacked_and_the_node_keeps_serving() -> Result<()> {
    if !supported("node_inpod")? {
        return Ok(());
    }
    let m = Mesh::start(43, true, "", &[])?;
    let _echo = m.net.b.echo(8080)?;
    let cni = &m.cni1;

    // A descriptor that is no network namespace.
    let file = std::fs::File::open("/proc/self/stat")?;
    let req = control::pb::zds::WorkloadRequest {
        payload: Some(control::pb::zds::workload_request::Payload::Add(
            control::pb::zds::AddWorkload {
                uid: "uid-file".into(),
                workload_info: Some(control::pb::zds::WorkloadInfo {
                    name: "x".into(),
                    namespace: "test".into(),
                    service_account: "x".into(),
                }),
            },
        )),
    };
    let ack = cni.send_raw(&prost::Message::encode_to_vec(&req), Some(file.as_fd()))?;
    ensure!(ack.contains("network namespace"), "{ack:?}");
    // A duplicate of a served pod (same namespace) and the removal of an unknown one: OK.
    ensure!(
        cni.add("uid-a", "client", "test", "client", &m.net.a.netns_path)?
            .is_empty()
    );
    ensure!(cni.del("uid-nobody")?.is_empty());
    // Bytes that are no protobuf: NACKed, and the node reconnects.
    let ack = cni.send_raw(&[0xff, 0xff, 0xff, 0x0f, 0x01], None)?;
    ensure!(!ack.is_empty(), "garbage was acked");
    cni.accept(WAIT)
        .context("the node did not reconnect after garbage")?;
    ensure!(
        cni.add("uid-a", "client", "test", "client", &m.net.a.netns_path)?
            .is_empty()
    );
    ensure!(cni.snapshot_sent()?.is_empty());

    // Through all that, pod a is served.
    let mut c = m.net.a.connect(m.echo_target())?;
    ping(&mut c, b"still in the mesh")?;
    drop(c);
    let (status, body) = m.n1.readiness()?;
    ensure!(status == 200, "{status} {body}");

    // The same namespace handed over as another pod: its connections do not get pod a's
    // identity by their address (nor leave in plaintext); they are refused.
    ensure!(cni.del("uid-a")?.is_empty());
    ensure!(
        cni.add("uid-x", "impostor", "test", "client", &m.net.a.netns_path)?
            .is_empty()
    );
    let refused = m
        .net
        .a
        .connect(m.echo_target())
        .and_then(|mut s| ping(&mut s, b"who am I"));
    ensure!(
        refused.is_err(),
        "an impostor pod's connection went through"
    );
    wait_for(WAIT, "the refusal naming the pod", || {
        m.n1.proc.stderr().contains("is not pod test/impostor")
    })?;
    Ok(())
}

/// A DNS query for `name` (type `qtype`) as bytes.
fn query(id: u16, name: &str, qtype: hickory_proto::rr::RecordType) -> Vec<u8> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    let mut m = Message::new();
    m.set_id(id);
    m.set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// Sends `q` over UDP from inside `pod` to `server` and returns the parsed reply.
fn ask(pod: &Pod, server: SocketAddr, q: &[u8]) -> Result<hickory_proto::op::Message> {
    let sock = in_netns(&pod.netns_path, || UdpSocket::bind("0.0.0.0:0"))??;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    sock.send_to(q, server)?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).context("no DNS reply")?;
    Ok(hickory_proto::op::Message::from_vec(&buf[..n])?)
}

/// The stand-in upstream's answer to `query`: every question gets A 192.0.2.7.
fn upstream_answer(query: &[u8]) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{RData, Record, rdata::A};
    let q = Message::from_vec(query).ok()?;
    let mut r = Message::new();
    r.set_id(q.id());
    r.set_message_type(MessageType::Response);
    r.set_response_code(ResponseCode::NoError);
    for question in q.queries() {
        r.add_query(question.clone());
        r.add_answer(Record::from_rdata(
            question.name().clone(),
            60,
            RData::A(A::new(192, 0, 2, 7)),
        ));
    }
    r.to_vec().ok()
}

/// A stand-in upstream resolver in `pod` at `addr`, over UDP and TCP (for a minute).
fn fake_upstream(pod: &Pod, addr: SocketAddr) -> Result<()> {
    let sock = in_netns(&pod.netns_path, || UdpSocket::bind(addr))??;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < until {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if let Some(bytes) = upstream_answer(&buf[..n]) {
                let _ = sock.send_to(&bytes, from);
            }
        }
    });
    let listener = pod.listen(addr)?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        while std::time::Instant::now() < until {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if s.read_exact(&mut q).is_err() {
                continue;
            }
            if let Some(a) = upstream_answer(&q) {
                let mut framed = (a.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&a);
                let _ = s.write_all(&framed);
            }
        }
    });
    Ok(())
}

/// One query over TCP from inside `pod` to `server`.
fn ask_tcp(pod: &Pod, server: SocketAddr, q: &[u8]) -> Result<hickory_proto::op::Message> {
    let mut t = pod.connect(server)?;
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    t.write_all(&framed)?;
    let mut len = [0u8; 2];
    t.read_exact(&mut len)?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    t.read_exact(&mut body)?;
    Ok(hickory_proto::op::Message::from_vec(&body)?)
}

#[test]
fn the_dns_proxy_answers_service_names_and_forwards_the_rest() -> Result<()> {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{RData, RecordType};
    if !supported("node_inpod")? {
        return Ok(());
    }
    // The upstream lives in pod b; node-1's forwarding socket is made in pod a's namespace.
    let subnet = 44;
    let upstream = SocketAddr::new(
        IpAddr::V4(std::net::Ipv4Addr::new(10, 231, subnet, 3)),
        5353,
    );
    let up_arg = upstream.to_string();
    let m = Mesh::start(subnet, true, "", &["--dns-upstream", &up_arg])?;
    fake_upstream(&m.net.b, upstream)?;
    // Any resolver address: istio-cni's rules redirect port 53 to 127.0.0.1:15053.
    let resolver: SocketAddr = "10.0.0.10:53".parse()?;

    let r = ask(
        &m.net.a,
        resolver,
        &query(7, "echo.test.svc.cluster.local.", RecordType::A),
    )?;
    ensure!(
        r.id() == 7 && r.response_code() == ResponseCode::NoError,
        "{r:?}"
    );
    let ips: Vec<String> = r
        .answers()
        .iter()
        .filter_map(|a| match a.data() {
            RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect();
    ensure!(ips == ["10.96.41.10"], "{r:?}");
    // The short name, with the pod's namespace.
    let r = ask(&m.net.a, resolver, &query(8, "echo.", RecordType::A))?;
    ensure!(
        r.answers()
            .iter()
            .any(|a| matches!(a.data(), RData::A(ip) if ip.to_string() == "10.96.41.10")),
        "{r:?}"
    );
    // Not the mesh's: forwarded from inside the pod, the upstream's answer returned.
    let r = ask(&m.net.a, resolver, &query(9, "example.org.", RecordType::A))?;
    ensure!(
        r.answers()
            .iter()
            .any(|a| matches!(a.data(), RData::A(ip) if ip.to_string() == "192.0.2.7")),
        "{r:?}"
    );
    // Garbage: FORMERR, and the proxy answers the next query.
    let sock = in_netns(&m.net.a.netns_path, || UdpSocket::bind("0.0.0.0:0"))??;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    sock.send_to(
        &[
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x07,
        ],
        resolver,
    )?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).context("no reply to garbage")?;
    let r = hickory_proto::op::Message::from_vec(&buf[..n])?;
    ensure!(r.response_code() == ResponseCode::FormErr, "{r:?}");
    let r = ask(&m.net.a, resolver, &query(10, "echo.test.", RecordType::A))?;
    ensure!(!r.answers().is_empty(), "{r:?}");
    // Over TCP too: a service name, and a forwarded name (upstream over TCP as well).
    let r = ask_tcp(
        &m.net.a,
        resolver,
        &query(11, "echo.test.svc.cluster.local.", RecordType::A),
    )?;
    ensure!(r.id() == 11 && !r.answers().is_empty(), "{r:?}");
    let r = ask_tcp(
        &m.net.a,
        resolver,
        &query(12, "example.org.", RecordType::A),
    )?;
    ensure!(
        r.id() == 12
            && r.answers()
                .iter()
                .any(|a| matches!(a.data(), RData::A(ip) if ip.to_string() == "192.0.2.7")),
        "{r:?}"
    );

    let metrics = m.n1.metrics()?;
    if !metrics
        .contains("istio_dns_requests_total{request_query_type=\"a\",request_protocol=\"udp\"")
    {
        bail!("no DNS request counter: {metrics}");
    }
    ensure!(metrics.contains("istio_dns_upstream_requests_total"));
    ensure!(
        metrics
            .contains("istio_dns_upstream_request_duration_seconds_count{request_query_type=\"a\""),
        "no upstream latency histogram"
    );
    Ok(())
}
