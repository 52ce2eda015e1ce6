//! The xDS client against a scripted istiod over TLS on loopback.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{FakeIstiod, eventually, pki, within};
use control::grpc::{self, RootCa, TokenSource};
use control::pb::discovery::{DeltaDiscoveryResponse, Resource as PbResource};
use control::pb::security::Authorization;
use control::pb::workload::{Address, Workload, address};
use control::xds::{
    ADDRESS_TYPE, AUTHORIZATION_TYPE, Handler, NodeInfo, Rejection, Resource, Termination, Update,
    XdsClient, XdsConfig,
};
use prost::Message;
use prost_types::value::Kind;
use tokio::sync::{mpsc, oneshot};

/// One handler call, as the test sees it.
#[derive(Debug)]
struct Call {
    type_url: String,
    updates: Vec<Update>,
    removed: Vec<String>,
}

/// A handler that reports every call and rejects the names in the shared list.
struct TestHandler {
    reject: Arc<Mutex<Vec<String>>>,
    calls: mpsc::UnboundedSender<Call>,
}

impl Handler for TestHandler {
    fn handle(
        &mut self,
        type_url: &str,
        updates: Vec<Update>,
        removed: Vec<String>,
    ) -> Vec<Rejection> {
        let reject = self.reject.lock().unwrap().clone();
        let out = updates
            .iter()
            .filter(|u| reject.contains(&u.name))
            .map(|u| Rejection {
                name: u.name.clone(),
                reason: "refused by the test".into(),
            })
            .collect();
        let _ = self.calls.send(Call {
            type_url: type_url.to_string(),
            updates,
            removed,
        });
        out
    }
}

fn handler(reject: Arc<Mutex<Vec<String>>>) -> (TestHandler, mpsc::UnboundedReceiver<Call>) {
    let (calls, rx) = mpsc::unbounded_channel();
    (TestHandler { reject, calls }, rx)
}

fn workload(uid: &str) -> Vec<u8> {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.into(),
            namespace: "default".into(),
            ..Workload::default()
        })),
    }
    .encode_to_vec()
}

fn res(name: &str, version: &str, value: Vec<u8>) -> PbResource {
    PbResource {
        name: name.into(),
        version: version.into(),
        resource: Some(prost_types::Any {
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

fn node() -> NodeInfo {
    NodeInfo::from_env(
        [
            ("INSTANCE_IP", "10.1.2.3"),
            ("POD_NAME", "ztunnel-x"),
            ("POD_NAMESPACE", "istio-system"),
            ("NODE_NAME", "node-a"),
            ("ISTIO_META_CLUSTER_ID", "east"),
            ("ISTIO_METAJSON_LABELS", r#"{"app":"ztunnel"}"#),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap()
}

#[tokio::test]
async fn subscribes_acks_nacks_and_resumes_with_held_versions() {
    let pki = pki();
    let mut istiod = FakeIstiod::start(&pki).await;
    let reject = Arc::new(Mutex::new(vec!["refused".to_string()]));
    let (h, mut calls) = handler(reject.clone());
    let client = XdsClient::new(XdsConfig::new(istiod.config(&pki), node().node()), h);
    let stats = client.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(client.run(async {
        let _ = stopped.await;
    }));

    // First stream: Address then Authorization, each with the node, nothing held.
    let mut s = istiod.stream().await;
    let a = s.next().await;
    let b = s.next().await;
    assert_eq!(
        (a.type_url.as_str(), b.type_url.as_str()),
        (ADDRESS_TYPE, AUTHORIZATION_TYPE)
    );
    for r in [&a, &b] {
        let n = r.node.as_ref().expect("initial requests carry the node");
        assert_eq!(
            n.id,
            "ztunnel~10.1.2.3~ztunnel-x.istio-system~istio-system.svc.cluster.local"
        );
        let m = &n.metadata.as_ref().unwrap().fields;
        assert_eq!(
            m["NAMESPACE"].kind,
            Some(Kind::StringValue("istio-system".into()))
        );
        assert_eq!(m["CLUSTER_ID"].kind, Some(Kind::StringValue("east".into())));
        assert!(matches!(m["LABELS"].kind, Some(Kind::StructValue(_))));
        assert!(r.initial_resource_versions.is_empty() && r.response_nonce.is_empty());
        assert!(r.resource_names_subscribe.is_empty());
    }
    // No token configured: neither authorization nor clusterid.
    assert!(s.metadata.get("authorization").is_none() && s.metadata.get("clusterid").is_none());
    eventually("connected", || stats.connected()).await;

    // One good, one garbage, one duplicated, one the handler refuses, one removal.
    s.send(resp(
        ADDRESS_TYPE,
        "n1",
        vec![
            res("good", "v1", workload("good")),
            res("keep", "v1", workload("keep")),
            res("bad", "v1", vec![0x0a, 0xff]),
            res("twice", "v1", workload("twice")),
            res("twice", "v1", workload("twice")),
            res("refused", "v1", workload("refused")),
        ],
        &["old"],
    ))
    .await;
    let nack = s.next().await;
    assert_eq!(nack.response_nonce, "n1");
    assert_eq!(nack.type_url, ADDRESS_TYPE);
    let msg = nack.error_detail.expect("a NACK").message;
    assert!(msg.contains("bad: not an istio.workload.Address"), "{msg}");
    assert!(msg.contains("twice: sent 2 times in one response"), "{msg}");
    assert!(msg.contains("refused: refused by the test"), "{msg}");
    assert!(!msg.contains("good") && !msg.contains("keep"), "{msg}");
    let call = within("the handler call", calls.recv()).await.unwrap();
    assert_eq!(call.type_url, ADDRESS_TYPE);
    let names: Vec<&str> = call.updates.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["good", "keep", "refused"]);
    assert!(matches!(&call.updates[0].resource, Resource::Address(a)
        if matches!(&a.r#type, Some(address::Type::Workload(w)) if w.uid == "good")));
    assert_eq!(call.removed, ["old"]);

    // Authorization: an ACK with the nonce; readiness waits for an ACK of Address too.
    let policy = Authorization {
        name: "p".into(),
        namespace: "default".into(),
        ..Authorization::default()
    };
    let mut p = res("default/p", "", policy.encode_to_vec());
    p.resource.as_mut().unwrap().type_url = AUTHORIZATION_TYPE.into();
    s.send(resp(AUTHORIZATION_TYPE, "n2", vec![p], &[])).await;
    let ack = s.next().await;
    assert_eq!(
        (ack.response_nonce.as_str(), ack.error_detail),
        ("n2", None)
    );
    let call = within("the handler call", calls.recv()).await.unwrap();
    assert!(matches!(&call.updates[0].resource, Resource::Authorization(a) if a.name == "p"));
    assert!(!stats.ready());
    s.send(resp(ADDRESS_TYPE, "n3", vec![], &["keep"])).await;
    let ack = s.next().await;
    assert_eq!(
        (ack.response_nonce.as_str(), ack.error_detail),
        ("n3", None)
    );
    let call = within("the handler call", calls.recv()).await.unwrap();
    assert_eq!(call.removed, ["keep"]);
    eventually("ready", || stats.ready()).await;
    assert_eq!((stats.acks(), stats.nacks()), (2, 1));
    assert_eq!(stats.messages(ADDRESS_TYPE), 2);
    assert_eq!(stats.messages(AUTHORIZATION_TYPE), 1);

    // istiod ends the stream cleanly: the client redials at once and reports what it holds,
    // without what it rejected or what was removed.
    drop(s);
    let mut s = istiod.stream().await;
    let a = s.next().await;
    let b = s.next().await;
    assert_eq!(a.type_url, ADDRESS_TYPE);
    assert_eq!(
        a.initial_resource_versions,
        HashMap::from([("good".to_string(), "v1".to_string())])
    );
    assert_eq!(
        b.initial_resource_versions,
        HashMap::from([("default/p".to_string(), String::new())])
    );
    eventually("second connect", || stats.connects() == 2).await;
    assert_eq!(stats.terminations(Termination::Complete), 1);
    assert!(stats.ready(), "readiness survives a reconnect");

    // A non-benign status: reconnect after a backoff, counted as Error; a benign one as
    // Reconnect.
    s.responses
        .send(Err(tonic::Status::permission_denied("no")))
        .await
        .unwrap();
    let s = istiod.stream().await;
    s.responses
        .send(Err(tonic::Status::unavailable("transport is closing")))
        .await
        .unwrap();
    let mut s = istiod.stream().await;
    let _ = s.next().await;
    eventually("terminations counted", || {
        stats.terminations(Termination::Error) == 1
            && stats.terminations(Termination::Reconnect) == 1
    })
    .await;
    assert!(
        calls.try_recv().is_err(),
        "the handler is not called while reconnecting"
    );

    // Shutdown returns the handler.
    stop.send(()).unwrap();
    let _handler = within("the client to stop", task).await.unwrap();
    assert!(!stats.connected());
}

#[tokio::test]
async fn token_is_reread_per_stream_and_headers_sent() {
    let pki = pki();
    let mut istiod = FakeIstiod::start(&pki).await;
    let mut token = tempfile::NamedTempFile::new().unwrap();
    token.write_all(b"tok-1").unwrap();
    let mut cfg = istiod.config(&pki);
    cfg.token = TokenSource::File(token.path().to_path_buf());
    cfg.cluster_id = "east".into();
    cfg.headers = grpc::headers_from_env(
        "XDS_HEADER_",
        [("XDS_HEADER_TEAM".to_string(), "blue".to_string())],
    );
    let (h, _calls) = handler(Arc::default());
    let client = XdsClient::new(XdsConfig::new(cfg, node().node()), h);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(client.run(async {
        let _ = stopped.await;
    }));

    let s = istiod.stream().await;
    assert_eq!(s.metadata.get("authorization").unwrap(), "Bearer tok-1");
    assert_eq!(s.metadata.get("clusterid").unwrap(), "east");
    assert_eq!(s.metadata.get("team").unwrap(), "blue");

    // Rotated in place, then the stream ends: the next stream carries the new token.
    std::fs::write(token.path(), "tok-2\n").unwrap();
    s.responses
        .send(Ok(resp(ADDRESS_TYPE, "n1", vec![], &[])))
        .await
        .unwrap();
    drop(s);
    let s = istiod.stream().await;
    assert_eq!(s.metadata.get("authorization").unwrap(), "Bearer tok-2");

    // An empty token file: no stream is opened; the failure is a connection error, retried.
    std::fs::write(token.path(), "").unwrap();
    drop(s);
    let e = grpc::connect(&{
        let mut c = istiod.config(&pki);
        c.token = TokenSource::File(token.path().to_path_buf());
        c
    })
    .await
    .unwrap()
    .request(())
    .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    stop.send(()).unwrap();
    let _handler = within("the client to stop", task).await.unwrap();
}

#[tokio::test]
async fn tls_errors_name_the_cause_and_are_retried() {
    let pki = pki();
    let mut istiod = FakeIstiod::start(&pki).await;
    let port = istiod.addr.port();

    // The certificate names `localhost` only: dialing 127.0.0.1 fails the name check.
    let by_ip = control::grpc::ChannelConfig::new(
        &format!("https://127.0.0.1:{port}"),
        RootCa::Pem(pki.root_pem.clone()),
    )
    .unwrap();
    let e = grpc::connect(&by_ip).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, control::Error::Unreachable { .. }), "{text}");
    assert!(
        text.contains("TLS") && text.contains("not valid for name"),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");

    // Another root: an unknown issuer.
    let other = common::pki();
    let mut wrong_root = istiod.config(&pki);
    wrong_root.root = RootCa::Pem(other.root_pem.clone());
    let e = grpc::connect(&wrong_root).await.unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // The xDS client keeps retrying (with backoff) and stays disconnected.
    let (h, _calls) = handler(Arc::default());
    let client = XdsClient::new(XdsConfig::new(by_ip.clone(), node().node()), h);
    let stats = client.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(client.run(async {
        let _ = stopped.await;
    }));
    eventually("retries", || {
        stats.terminations(Termination::ConnectionError) >= 3
    })
    .await;
    assert!(!stats.connected() && stats.connects() == 0);
    stop.send(()).unwrap();
    let _handler = within("the client to stop", task).await.unwrap();

    // The alternate name makes the same address acceptable.
    let mut alt = by_ip;
    alt.alt_hostname = Some("localhost".into());
    let (h, _calls) = handler(Arc::default());
    let client = XdsClient::new(XdsConfig::new(alt, node().node()), h);
    let stats = client.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(client.run(async {
        let _ = stopped.await;
    }));
    let mut s = istiod.stream().await;
    assert_eq!(s.next().await.type_url, ADDRESS_TYPE);
    eventually("connected", || stats.connected()).await;
    stop.send(()).unwrap();
    let _handler = within("the client to stop", task).await.unwrap();
}

#[tokio::test]
async fn oversized_resources_are_rejected_alone() {
    let pki = pki();
    let mut istiod = FakeIstiod::start(&pki).await;
    let mut cfg = XdsConfig::new(istiod.config(&pki), node().node());
    cfg.max_resource_bytes = 64;
    let (h, mut calls) = handler(Arc::default());
    let client = XdsClient::new(cfg, h);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(client.run(async {
        let _ = stopped.await;
    }));
    let mut s = istiod.stream().await;
    let _ = s.next().await;
    let _ = s.next().await;
    s.send(resp(
        ADDRESS_TYPE,
        "n1",
        vec![
            res("small", "1", workload("s")),
            res("huge", "1", workload(&"h".repeat(200))),
        ],
        &[],
    ))
    .await;
    let nack = s.next().await;
    let msg = nack.error_detail.unwrap().message;
    assert!(
        msg.starts_with("huge: ") && msg.contains("over the limit of 64"),
        "{msg}"
    );
    let call = within("the handler call", calls.recv()).await.unwrap();
    assert_eq!(call.updates.len(), 1);
    assert_eq!(call.updates[0].name, "small");
    stop.send(()).unwrap();
    let _handler = within("the client to stop", task).await.unwrap();
}
