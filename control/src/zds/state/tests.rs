//! The pod bookkeeping without sockets: requests as bytes, a recording handler.

use std::fs::File;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::*;
use crate::pb::zds::{DelWorkload, KeepWorkload, SnapshotSent};

#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
    fail: Option<String>,
}

impl Handler for Recorder {
    fn add(&mut self, uid: &str, _: &WorkloadInfo, _: BorrowedFd<'_>) -> Result<(), String> {
        self.calls.push(format!("add {uid}"));
        match &self.fail {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn del(&mut self, uid: &str) {
        self.calls.push(format!("del {uid}"));
    }
}

fn pods() -> Pods {
    let mut pods = Pods::new(Duration::from_millis(50), Arc::default());
    pods.on_connect();
    pods
}

fn netns() -> Vec<OwnedFd> {
    vec![File::open("/proc/self/ns/net").unwrap().into()]
}

fn encode(payload: Payload) -> Vec<u8> {
    WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

fn add(uid: &str) -> Vec<u8> {
    encode(Payload::Add(AddWorkload {
        uid: uid.into(),
        workload_info: Some(WorkloadInfo {
            name: "p".into(),
            ..Default::default()
        }),
    }))
}

fn del(uid: &str) -> Vec<u8> {
    encode(Payload::Del(DelWorkload { uid: uid.into() }))
}

fn keep(uid: &str) -> Vec<u8> {
    encode(Payload::Keep(KeepWorkload { uid: uid.into() }))
}

fn snapshot() -> Vec<u8> {
    encode(Payload::SnapshotSent(SnapshotSent {}))
}

#[test]
fn snapshot_reconciles_running_pods() {
    let (mut pods, mut h) = (pods(), Recorder::default());
    assert!(pods.handle(&add("a"), netns(), &mut h).is_ok());
    assert!(pods.handle(&add("b"), netns(), &mut h).is_ok());
    assert!(pods.handle(&add("c"), netns(), &mut h).is_ok());
    assert!(pods.handle(&snapshot(), vec![], &mut h).is_ok());
    assert!(pods.stats.ready());
    h.calls.clear();

    // The agent restarts: a keeps, b re-added (same netns), c deleted before the snapshot.
    pods.on_connect();
    assert!(!pods.stats.ready());
    assert!(pods.handle(&keep("a"), vec![], &mut h).is_ok());
    assert!(pods.handle(&add("b"), netns(), &mut h).is_ok());
    assert!(pods.handle(&del("c"), vec![], &mut h).is_ok());
    assert!(
        h.calls.is_empty(),
        "nothing stops before the snapshot: {:?}",
        h.calls
    );
    assert!(pods.handle(&snapshot(), vec![], &mut h).is_ok());
    assert_eq!(h.calls, ["del c"]);
    assert_eq!(pods.stats.active(), 2);
    assert!(pods.stats.ready());
}

#[test]
fn out_of_order_messages_reconnect() {
    let (mut pods, mut h) = (pods(), Recorder::default());
    assert!(pods.handle(&snapshot(), vec![], &mut h).is_ok());
    let second = pods.handle(&snapshot(), vec![], &mut h);
    assert!(
        second.reconnect && second.error.contains("second SnapshotSent"),
        "{second:?}"
    );
    let late_keep = pods.handle(&keep("x"), vec![], &mut h);
    assert!(late_keep.reconnect && late_keep.error.contains("KeepWorkload for x after"));
    let no_info = encode(Payload::Add(AddWorkload {
        uid: "y".into(),
        workload_info: None,
    }));
    let answer = pods.handle(&no_info, netns(), &mut h);
    assert!(answer.reconnect && answer.error.contains("y without workload_info"));
    let empty = pods.handle(&[], vec![], &mut h);
    assert!(empty.reconnect && empty.error.contains("without a payload"));
    assert!(h.calls.is_empty());
}

#[test]
fn descriptor_shape_is_checked() {
    let (mut pods, mut h) = (pods(), Recorder::default());
    let none = pods.handle(&add("a"), vec![], &mut h);
    assert!(
        none.error
            .contains("AddWorkload for a without its network namespace descriptor")
    );
    let mut two = netns();
    two.extend(netns());
    let answer = pods.handle(&add("a"), two, &mut h);
    assert!(
        answer.reconnect && answer.error.contains("2 descriptors"),
        "{answer:?}"
    );
    let answer = pods.handle(&del("a"), netns(), &mut h);
    assert!(
        answer.reconnect
            && answer
                .error
                .contains("unexpected descriptor with DelWorkload")
    );
    assert!(h.calls.is_empty());
}

#[test]
fn failed_start_is_pending_and_retried() {
    let (mut pods, mut h) = (
        pods(),
        Recorder {
            fail: Some("bind: in use".into()),
            ..Default::default()
        },
    );
    let answer = pods.handle(&add("a"), netns(), &mut h);
    assert_eq!(answer.error, "failure to start proxy: pod a: bind: in use");
    assert!(!answer.reconnect);
    assert!(pods.handle(&snapshot(), vec![], &mut h).is_ok());
    assert_eq!((pods.stats.pending(), pods.stats.ready()), (1, false));

    // Not due yet: nothing happens.
    pods.retry_pending(Instant::now(), &mut h);
    assert_eq!(h.calls, ["add a"]);
    h.fail = None;
    pods.retry_pending(Instant::now() + Duration::from_secs(1), &mut h);
    assert_eq!(h.calls, ["add a", "add a"]);
    assert_eq!(
        (
            pods.stats.pending(),
            pods.stats.active(),
            pods.stats.ready()
        ),
        (0, 1, true)
    );
    assert!(pods.next_retry_in(Instant::now()).is_none());
}

#[test]
fn delete_drops_a_pending_pod() {
    let (mut pods, mut h) = (
        pods(),
        Recorder {
            fail: Some("no".into()),
            ..Default::default()
        },
    );
    assert!(pods.handle(&snapshot(), vec![], &mut h).is_ok());
    assert!(!pods.handle(&add("a"), netns(), &mut h).is_ok());
    assert!(pods.handle(&del("a"), vec![], &mut h).is_ok());
    assert_eq!(pods.stats.pending(), 0);
    assert_eq!(h.calls, ["add a"], "a pod never started is not stopped");
}

#[test]
fn errors_are_bounded() {
    let long = "é".repeat(2 * MAX_ERROR_BYTES);
    let (mut pods, mut h) = (
        pods(),
        Recorder {
            fail: Some(long),
            ..Default::default()
        },
    );
    let answer = pods.handle(&add("a"), netns(), &mut h);
    assert!(answer.error.len() <= MAX_ERROR_BYTES && answer.error.starts_with("failure to start"));
    assert_eq!(bounded("abc".into(), 2), "ab");
    assert_eq!(bounded("é".into(), 1), "");
}
