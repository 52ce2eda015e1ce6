//! The ZDS client against a scripted node agent: real `SOCK_SEQPACKET` sockets in a temp
//! dir, real network-namespace descriptors (`/proc/self/ns/net`), a recording handler.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::pb::zds::{
    AddWorkload, DelWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};
use control::zds::{Handler, ZdsClient, ZdsConfig, wire};
use prost::Message;

/// Long enough for a loaded 2-core CI machine; every wait ends as soon as its condition holds.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Log {
    calls: Vec<String>,
    /// How many upcoming adds fail.
    fail_adds: usize,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Log>>);

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().calls.clone()
    }

    fn fail_next_adds(&self, n: usize) {
        self.0.lock().unwrap().fail_adds = n;
    }
}

impl Handler for Recorder {
    fn add(&mut self, uid: &str, info: &WorkloadInfo, _: BorrowedFd<'_>) -> Result<(), String> {
        let mut log = self.0.lock().unwrap();
        log.calls.push(format!("add {uid} {}", info.name));
        if log.fail_adds > 0 {
            log.fail_adds -= 1;
            return Err("bind 15008: address in use".into());
        }
        Ok(())
    }

    fn del(&mut self, uid: &str) {
        self.0.lock().unwrap().calls.push(format!("del {uid}"));
    }
}

/// Plays istio-cni's node agent: listens, accepts, speaks packets.
struct Agent {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: OwnedFd,
}

impl Agent {
    fn new() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztunnel.sock");
        let listener = wire::listen(&path).unwrap();
        Agent {
            _dir: dir,
            path,
            listener,
        }
    }

    fn config(&self) -> ZdsConfig {
        ZdsConfig {
            retry: Duration::from_millis(100),
            ..ZdsConfig::new(&self.path)
        }
    }

    /// Accepts the client's next connection and checks its hello.
    fn accept(&self) -> Conn {
        assert!(
            wire::wait_readable(self.listener.as_fd(), DEADLINE).unwrap(),
            "no connection"
        );
        let conn = Conn(wire::accept(self.listener.as_fd()).unwrap());
        let (bytes, fds) = conn.recv().expect("a hello, not EOF");
        assert!(fds.is_empty());
        let hello = ZdsHello::decode(&bytes[..]).unwrap();
        assert_eq!(hello.version(), Version::V1);
        conn
    }
}

struct Conn(OwnedFd);

impl Conn {
    fn recv(&self) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
        assert!(
            wire::wait_readable(self.0.as_fd(), DEADLINE).unwrap(),
            "no answer in time"
        );
        wire::recv(self.0.as_fd()).unwrap()
    }

    /// Sends one packet and returns the ack's error text ("" = OK).
    fn raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> String {
        wire::send_packet(self.0.as_fd(), bytes, fds).unwrap();
        let (bytes, fds) = self.recv().expect("an ack, not EOF");
        assert!(fds.is_empty());
        match WorkloadResponse::decode(&bytes[..]).unwrap().payload {
            Some(workload_response::Payload::Ack(ack)) => ack.error,
            None => panic!("response without an ack"),
        }
    }

    fn request(&self, payload: Payload, fd: Option<BorrowedFd<'_>>) -> String {
        let bytes = WorkloadRequest {
            payload: Some(payload),
        }
        .encode_to_vec();
        self.raw(&bytes, fd.as_slice())
    }

    fn add(&self, uid: &str, netns: BorrowedFd<'_>) -> String {
        self.request(add(uid), Some(netns))
    }

    fn snapshot(&self) -> String {
        self.request(Payload::SnapshotSent(SnapshotSent {}), None)
    }

    fn del(&self, uid: &str) -> String {
        self.request(Payload::Del(DelWorkload { uid: uid.into() }), None)
    }

    /// The client dropped the connection.
    fn expect_eof(&self) {
        assert!(self.recv().is_none(), "expected the client to hang up");
    }
}

fn add(uid: &str) -> Payload {
    Payload::Add(AddWorkload {
        uid: uid.into(),
        workload_info: Some(WorkloadInfo {
            name: format!("pod-{uid}"),
            namespace: "default".into(),
            service_account: "sa".into(),
        }),
    })
}

fn own_netns() -> File {
    File::open("/proc/self/ns/net").unwrap()
}

fn start(agent: &Agent) -> (ZdsClient, Recorder) {
    let recorder = Recorder::default();
    (
        ZdsClient::spawn(agent.config(), recorder.clone()).unwrap(),
        recorder,
    )
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn hello_then_add_with_a_netns_is_acked() {
    let agent = Agent::new();
    let (client, handler) = start(&agent);
    let conn = agent.accept();
    let stats = client.stats();
    wait_until("connected", || stats.connected());
    assert!(!stats.ready(), "not ready before the first snapshot");

    assert_eq!(conn.add("a", own_netns().as_fd()), "");
    assert_eq!(handler.calls(), ["add a pod-a"]);
    assert_eq!(conn.snapshot(), "");
    assert!(stats.ready());
    assert_eq!(
        (
            stats.active(),
            stats.started_total(),
            stats.acks(),
            stats.nacks()
        ),
        (1, 1, 2, 0)
    );
}

#[test]
fn add_with_a_regular_file_is_nacked_and_the_connection_kept() {
    let agent = Agent::new();
    let (_client, handler) = start(&agent);
    let conn = agent.accept();
    let file = tempfile::tempfile().unwrap();
    let error = conn.add("a", file.as_fd());
    assert!(
        error.contains("not a network namespace") && error.contains("for a"),
        "{error}"
    );
    assert!(handler.calls().is_empty());
    // Same connection, still in order.
    assert_eq!(conn.add("b", own_netns().as_fd()), "");
    assert_eq!(handler.calls(), ["add b pod-b"]);
}

#[test]
fn add_without_a_descriptor_is_nacked_and_redialled() {
    let agent = Agent::new();
    let (client, handler) = start(&agent);
    let conn = agent.accept();
    let error = conn.request(add("a"), None);
    assert!(
        error.contains("AddWorkload for a without its network namespace descriptor"),
        "{error}"
    );
    conn.expect_eof();
    let again = agent.accept();
    assert_eq!(again.snapshot(), "");
    assert!(handler.calls().is_empty());
    assert_eq!(client.stats().nacks(), 1);
}

#[test]
fn a_descriptor_on_another_message_is_nacked() {
    let agent = Agent::new();
    let (_client, handler) = start(&agent);
    let conn = agent.accept();
    let netns = own_netns();
    let error = conn.request(
        Payload::Del(DelWorkload { uid: "a".into() }),
        Some(netns.as_fd()),
    );
    assert!(
        error.contains("unexpected descriptor with DelWorkload"),
        "{error}"
    );
    conn.expect_eof();
    let two = [netns.as_fd(), netns.as_fd()];
    let conn = agent.accept();
    let error = conn.raw(
        &WorkloadRequest {
            payload: Some(add("a")),
        }
        .encode_to_vec(),
        &two,
    );
    assert!(error.contains("2 descriptors"), "{error}");
    conn.expect_eof();
    assert!(handler.calls().is_empty());
}

#[test]
fn undecodable_bytes_are_nacked_and_redialled() {
    let agent = Agent::new();
    let (_client, handler) = start(&agent);
    let conn = agent.accept();
    let error = conn.raw(&[0xff, 0xff, 0xff, 0xff], &[]);
    assert!(
        error.starts_with("failure to read message: undecodable WorkloadRequest"),
        "{error}"
    );
    conn.expect_eof();
    let again = agent.accept();
    assert_eq!(again.add("a", own_netns().as_fd()), "");
    assert_eq!(handler.calls(), ["add a pod-a"]);
}

#[test]
fn duplicate_add_in_the_same_netns_is_a_no_op() {
    let agent = Agent::new();
    let (client, handler) = start(&agent);
    let conn = agent.accept();
    assert_eq!(conn.add("a", own_netns().as_fd()), "");
    assert_eq!(conn.add("a", own_netns().as_fd()), "");
    assert_eq!(handler.calls(), ["add a pod-a"]);
    assert_eq!(client.stats().active(), 1);
}

#[test]
fn delete_after_the_snapshot_stops_the_pod_and_unknown_is_ok() {
    let agent = Agent::new();
    let (client, handler) = start(&agent);
    let conn = agent.accept();
    assert_eq!(conn.add("a", own_netns().as_fd()), "");
    assert_eq!(conn.snapshot(), "");
    assert_eq!(conn.del("unknown"), "");
    assert_eq!(handler.calls(), ["add a pod-a"]);
    assert_eq!(conn.del("a"), "");
    assert_eq!(handler.calls(), ["add a pod-a", "del a"]);
    let stats = client.stats();
    assert_eq!((stats.active(), stats.stopped_total()), (0, 1));
}

#[test]
fn agent_restart_reconciles_against_the_new_snapshot() {
    let agent = Agent::new();
    let (client, handler) = start(&agent);
    let conn = agent.accept();
    assert_eq!(conn.add("a", own_netns().as_fd()), "");
    assert_eq!(conn.add("b", own_netns().as_fd()), "");
    assert_eq!(conn.snapshot(), "");
    drop(conn);

    // The restarted agent only knows a.
    let conn = agent.accept();
    assert!(
        !client.stats().ready(),
        "a new connection waits for its snapshot"
    );
    assert_eq!(conn.add("a", own_netns().as_fd()), "");
    assert_eq!(
        handler.calls(),
        ["add a pod-a", "add b pod-b"],
        "nothing stops before the snapshot"
    );
    assert_eq!(conn.snapshot(), "");
    assert_eq!(handler.calls(), ["add a pod-a", "add b pod-b", "del b"]);
    let stats = client.stats();
    assert!(stats.ready());
    assert_eq!((stats.active(), stats.stopped_total()), (1, 1));
}

#[test]
fn second_snapshot_is_nacked_and_redialled() {
    let agent = Agent::new();
    let (_client, _handler) = start(&agent);
    let conn = agent.accept();
    assert_eq!(conn.snapshot(), "");
    assert!(conn.snapshot().contains("second SnapshotSent"));
    conn.expect_eof();
    agent.accept();
}

#[test]
fn failed_start_is_nacked_then_retried() {
    let agent = Agent::new();
    let handler = Recorder::default();
    handler.fail_next_adds(1);
    // Long enough that the checks below run before the retry, even on a loaded machine.
    let config = ZdsConfig {
        retry: Duration::from_secs(1),
        ..agent.config()
    };
    let client = ZdsClient::spawn(config, handler.clone()).unwrap();
    let conn = agent.accept();
    let error = conn.add("a", own_netns().as_fd());
    assert_eq!(
        error,
        "failure to start proxy: pod a: bind 15008: address in use"
    );
    assert_eq!(conn.snapshot(), "", "a failed start keeps the connection");
    let stats = client.stats();
    assert_eq!(stats.pending(), 1);
    assert!(!stats.ready(), "not ready while a pod is pending");
    wait_until("the retry", || stats.ready());
    assert_eq!(handler.calls(), ["add a pod-a", "add a pod-a"]);
    assert_eq!((stats.active(), stats.pending(), stats.nacks()), (1, 0, 1));
}

#[test]
fn stopping_the_client_leaves_pods_alone() {
    let agent = Agent::new();
    let (client, handler) = start(&agent);
    let conn = agent.accept();
    assert_eq!(conn.add("a", own_netns().as_fd()), "");
    assert_eq!(conn.snapshot(), "");
    let begun = Instant::now();
    client.stop();
    assert!(
        begun.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        begun.elapsed()
    );
    conn.expect_eof();
    assert_eq!(handler.calls(), ["add a pod-a"]);
}

#[test]
fn client_waits_for_the_agent_to_appear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ztunnel.sock");
    let recorder = Recorder::default();
    let client = ZdsClient::spawn(ZdsConfig::new(&path), recorder).unwrap();
    std::thread::sleep(Duration::from_millis(50)); // let a few connects fail first
    assert!(!client.stats().connected());
    let listener = wire::listen(&path).unwrap();
    assert!(wire::wait_readable(listener.as_fd(), DEADLINE).unwrap());
    let conn = Conn(wire::accept(listener.as_fd()).unwrap());
    let (bytes, _) = conn.recv().unwrap();
    assert_eq!(ZdsHello::decode(&bytes[..]).unwrap().version(), Version::V1);
}

/// A network namespace other than ours, held by an `unshare -n sleep` child we started.
struct OtherNetns {
    child: std::process::Child,
    netns: File,
}

impl OtherNetns {
    fn create() -> OtherNetns {
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "sleep", "60"])
            .spawn()
            .expect("unshare (util-linux)");
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let theirs = format!("/proc/{}/ns/net", child.id());
        // The child enters its namespace before exec'ing sleep; wait for that.
        let end = Instant::now() + DEADLINE;
        while std::fs::read_link(&theirs)
            .ok()
            .is_none_or(|link| link == ours)
        {
            if Instant::now() > end || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("unshare -n did not make a network namespace");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let netns = File::open(&theirs).unwrap();
        OtherNetns { child, netns }
    }
}

impl Drop for OtherNetns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Needs root (a new network namespace); skipped only when not root.
#[test]
fn add_in_a_new_netns_replaces_the_pod() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to create a network namespace");
        return;
    }
    let other = OtherNetns::create();
    let agent = Agent::new();
    let (client, handler) = start(&agent);
    let conn = agent.accept();
    assert_eq!(conn.add("a", own_netns().as_fd()), "");
    assert_eq!(conn.add("a", other.netns.as_fd()), "");
    assert_eq!(handler.calls(), ["add a pod-a", "del a", "add a pod-a"]);
    let stats = client.stats();
    assert_eq!(
        (stats.active(), stats.started_total(), stats.stopped_total()),
        (1, 2, 1)
    );
}
