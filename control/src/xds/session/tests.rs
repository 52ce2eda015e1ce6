use std::sync::Mutex;

use prost::Message;

use super::*;
use crate::pb::discovery::Resource as PbResource;
use crate::pb::workload::{Address, Workload, address};
use crate::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};

/// One handler call: type URL, updated names, removed names.
type Call = (String, Vec<String>, Vec<String>);

/// Records every call; rejects the names in `reject`.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<Call>>>,
    reject: Arc<Mutex<Vec<String>>>,
}

impl Handler for Recorder {
    fn handle(
        &mut self,
        type_url: &str,
        updates: Vec<Update>,
        removed: Vec<String>,
    ) -> Vec<Rejection> {
        let names: Vec<String> = updates.iter().map(|u| u.name.clone()).collect();
        let reject = self.reject.lock().unwrap().clone();
        self.calls
            .lock()
            .unwrap()
            .push((type_url.to_string(), names.clone(), removed));
        names
            .into_iter()
            .filter(|n| reject.contains(n))
            .map(|name| Rejection {
                name,
                reason: "handler says no".into(),
            })
            .collect()
    }
}

fn workload(uid: &str) -> Vec<u8> {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.into(),
            ..Workload::default()
        })),
    }
    .encode_to_vec()
}

fn res(name: &str, version: &str, body: Option<Vec<u8>>) -> PbResource {
    PbResource {
        name: name.into(),
        version: version.into(),
        resource: body.map(|value| prost_types::Any {
            type_url: ADDRESS_TYPE.into(),
            value,
        }),
        ..PbResource::default()
    }
}

fn resp(
    type_url: &str,
    nonce: &str,
    resources: Vec<PbResource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..DeltaDiscoveryResponse::default()
    }
}

fn session(max: usize) -> (Session<Recorder>, Recorder, Arc<XdsStats>) {
    let rec = Recorder::default();
    let stats = Arc::new(XdsStats::default());
    (Session::new(rec.clone(), stats.clone(), max), rec, stats)
}

#[test]
fn initial_requests_carry_node_and_order() {
    let (s, _, _) = session(1024);
    let node = Node {
        id: "ztunnel~1.1.1.1~a.b~b.svc.cluster.local".into(),
        ..Node::default()
    };
    let reqs = s.initial_requests(&node);
    let types: Vec<&str> = reqs.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(types, [ADDRESS_TYPE, AUTHORIZATION_TYPE]);
    for r in &reqs {
        assert_eq!(r.node.as_ref().unwrap().id, node.id);
        assert!(r.resource_names_subscribe.is_empty() && r.resource_names_unsubscribe.is_empty());
        assert!(r.response_nonce.is_empty() && r.initial_resource_versions.is_empty());
    }
}

#[test]
fn bad_resources_are_rejected_alone_and_named() {
    let (mut s, rec, stats) = session(64);
    let r = resp(
        ADDRESS_TYPE,
        "n1",
        vec![
            res("good", "v1", Some(workload("good"))),
            res("garbage", "v1", Some(vec![0xff, 0xff, 0xff])),
            res("empty", "v1", None),
            res("big", "v1", Some(workload(&"x".repeat(100)))),
            res("dup", "v1", Some(workload("dup"))),
            res("dup", "v2", Some(workload("dup"))),
            res("", "v1", Some(workload("anon"))),
            res("refused", "v1", Some(workload("refused"))),
        ],
        &["gone"],
    );
    rec.reject.lock().unwrap().push("refused".into());
    let reply = s.on_response(r);
    assert_eq!(reply.response_nonce, "n1");
    assert_eq!(reply.type_url, ADDRESS_TYPE);
    assert!(reply.node.is_none());
    let err = reply.error_detail.expect("a NACK");
    assert_eq!(err.code, NACK_CODE);
    let m = err.message;
    for part in [
        "garbage: not an istio.workload.Address",
        "empty: no resource body",
        "big: ",
        "over the limit of 64",
        "dup: sent 2 times in one response",
        ": a resource without a name",
        "refused: handler says no",
    ] {
        assert!(m.contains(part), "{part:?} not in {m:?}");
    }
    assert_eq!(m.matches("dup:").count(), 1, "{m}");
    assert!(!m.contains("good"), "{m}");
    // The good one and the handler-refused one reached the handler; removals passed on.
    let calls = rec.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![(
            ADDRESS_TYPE.to_string(),
            vec!["good".to_string(), "refused".to_string()],
            vec!["gone".to_string()]
        )]
    );
    // Only what was accepted is held.
    let held = s.held(ADDRESS_TYPE).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held["good"], "v1");
    assert_eq!((stats.acks(), stats.nacks()), (0, 1));
    assert_eq!(stats.messages(ADDRESS_TYPE), 1);
    assert!(stats.bytes(ADDRESS_TYPE) > 0);
    assert!(!stats.ready(), "a NACK does not count toward readiness");
}

#[test]
fn versions_follow_updates_rejections_and_removals() {
    let (mut s, rec, stats) = session(1 << 20);
    let r = s.on_response(resp(
        ADDRESS_TYPE,
        "a",
        vec![
            res("w1", "1", Some(workload("w1"))),
            res("w2", "1", Some(workload("w2"))),
        ],
        &[],
    ));
    assert!(r.error_detail.is_none());
    // w1's new version is refused: the old one stays held (the handler keeps it).
    rec.reject.lock().unwrap().push("w1".into());
    let r = s.on_response(resp(
        ADDRESS_TYPE,
        "b",
        vec![res("w1", "2", Some(workload("w1")))],
        &["w2"],
    ));
    assert!(r.error_detail.is_some());
    let held = s.held(ADDRESS_TYPE).unwrap().clone();
    assert_eq!(held.len(), 1);
    assert_eq!(held["w1"], "1");
    let node = Node::default();
    let init = s.initial_requests(&node);
    assert_eq!(init[0].initial_resource_versions, held);
    assert!(init[1].initial_resource_versions.is_empty());
    assert!(!stats.ready());
    let r = s.on_response(resp(AUTHORIZATION_TYPE, "c", vec![], &[]));
    assert!(r.error_detail.is_none());
    assert!(stats.ready(), "both types had an ACKed response");
}

#[test]
fn unknown_types_are_acked_and_not_handled() {
    let (mut s, rec, stats) = session(1024);
    let r = s.on_response(resp(
        "type.googleapis.com/istio.workload.Workload",
        "z",
        vec![res("x", "1", Some(vec![1]))],
        &[],
    ));
    assert!(r.error_detail.is_none());
    assert_eq!(r.response_nonce, "z");
    assert!(rec.calls.lock().unwrap().is_empty());
    assert_eq!(stats.messages("anything"), 1);
    assert_eq!(stats.acks(), 1);
}

#[test]
fn nack_message_is_bounded() {
    let many: Vec<Rejection> = (0..10_000)
        .map(|i| Rejection {
            name: format!("ns/resource-{i}"),
            reason: "x".repeat(200),
        })
        .collect();
    let m = nack_message(&many);
    assert!(m.len() <= NACK_MESSAGE_MAX, "{}", m.len());
    assert!(m.ends_with("more"), "{}", &m[m.len() - 40..]);
    let one = nack_message(&[Rejection {
        name: "a\nb".into(),
        reason: "r".into(),
    }]);
    assert_eq!(one, "a\\nb: r");
}
