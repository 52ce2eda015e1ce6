//! The Istio CA client against a scripted CA over TLS on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CaAnswer, FakeIstiod, cert_pem, pki, within};
use control::Error;
use control::ca::{CaClient, IMPERSONATED_IDENTITY, split_chain};
use control::grpc::{RootCa, TokenSource};
use control::runtime::ControlRuntime;
use prost_types::value::Kind;

const ID: &str = "spiffe://cluster.local/ns/default/sa/app";

#[tokio::test]
async fn impersonates_and_returns_the_chain() {
    let pki = pki();
    let mut istiod = FakeIstiod::start(&pki).await;
    let mut cfg = istiod.config(&pki);
    cfg.token = TokenSource::Static("node-token".into());
    cfg.headers = vec![("x-ca".into(), "1".into())];
    let ca = CaClient::new(cfg, Duration::from_secs(5));
    let (leaf, root) = (cert_pem("leaf"), cert_pem("root"));
    istiod.answer(CaAnswer::Chain(vec![leaf.clone(), root.clone()]));

    let chain = within(
        "the CA",
        ca.create_certificate("CSR PEM", Duration::from_secs(86400), Some(ID)),
    )
    .await
    .unwrap();
    let call = istiod.ca_call().await;
    assert_eq!(call.request.csr, "CSR PEM");
    assert_eq!(call.request.validity_duration, 86400);
    let md = call.request.metadata.expect("impersonation metadata");
    assert_eq!(md.fields.len(), 1);
    assert_eq!(
        md.fields[IMPERSONATED_IDENTITY].kind,
        Some(Kind::StringValue(ID.into()))
    );
    assert_eq!(
        call.metadata.get("authorization").unwrap(),
        "Bearer node-token"
    );
    assert_eq!(call.metadata.get("clusterid").unwrap(), "Kubernetes");
    assert_eq!(call.metadata.get("x-ca").unwrap(), "1");
    assert!(
        call.metadata.get("grpc-timeout").is_some(),
        "the deadline is sent"
    );
    let split = split_chain(chain).unwrap();
    assert_eq!(split.leaf.trim(), leaf.trim());
    assert_eq!(split.roots.len(), 1);

    // Dedicated mode: no metadata.
    istiod.answer(CaAnswer::Chain(vec![leaf, root]));
    within(
        "the CA",
        ca.create_certificate("CSR", Duration::from_secs(60), None),
    )
    .await
    .unwrap();
    assert!(istiod.ca_call().await.request.metadata.is_none());
}

#[tokio::test]
async fn failures_are_typed() {
    let pki = pki();
    let istiod = FakeIstiod::start(&pki).await;
    let ca = CaClient::new(istiod.config(&pki), Duration::from_millis(500));
    let ask = || ca.create_certificate("CSR", Duration::from_secs(60), Some(ID));

    istiod.answer(CaAnswer::Fail(tonic::Status::unauthenticated(
        "request authenticate failure",
    )));
    let e = within("the CA", ask()).await.unwrap_err();
    assert!(
        matches!(&e, Error::Status { code: tonic::Code::Unauthenticated, message, .. }
            if message == "request authenticate failure"),
        "{e}"
    );

    istiod.answer(CaAnswer::Chain(vec![]));
    assert!(matches!(
        within("the CA", ask()).await,
        Err(Error::EmptyChain)
    ));
    istiod.answer(CaAnswer::Chain(vec![cert_pem("leaf")]));
    assert!(matches!(within("the CA", ask()).await, Err(Error::NoRoot)));

    istiod.answer(CaAnswer::Hang);
    let e = within("the CA", ask()).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");

    // Nobody listening.
    let port = istiod.addr.port();
    drop(istiod);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    assert_ne!(closed, port);
    let gone = CaClient::new(
        control::grpc::ChannelConfig::new(
            &format!("localhost:{closed}"),
            RootCa::Pem(pki.root_pem.clone()),
        )
        .unwrap(),
        Duration::from_secs(5),
    );
    let e = within(
        "the CA",
        gone.create_certificate("CSR", Duration::from_secs(60), None),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("localhost:{closed}")),
        "{e}"
    );

    // A token file that is gone: the call is not made and the error names the file.
    let mut cfg =
        control::grpc::ChannelConfig::new("localhost:1", RootCa::Pem(pki.root_pem)).unwrap();
    cfg.token = TokenSource::File("/nonexistent/istio-token".into());
    let e = within(
        "the CA",
        CaClient::new(cfg, Duration::from_secs(5)).create_certificate(
            "CSR",
            Duration::from_secs(1),
            None,
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, Error::Token { path, .. } if path.ends_with("istio-token")),
        "{e}"
    );
}

/// As the proxy calls it: from a plain thread, through the control runtime.
#[test]
fn works_through_the_control_runtime() {
    let rt = ControlRuntime::start("control-ca-test").unwrap();
    let pki = pki();
    let istiod = rt.block_on(async move {
        let istiod = FakeIstiod::start(&pki).await;
        let cfg = istiod.config(&pki);
        (istiod, cfg)
    });
    let (istiod, cfg) = istiod.unwrap();
    istiod.answer(CaAnswer::Chain(vec![cert_pem("leaf"), cert_pem("root")]));
    let ca = Arc::new(CaClient::new(cfg, Duration::from_secs(5)));
    let chain = rt
        .block_on(async move {
            ca.create_certificate("CSR", Duration::from_secs(60), Some(ID))
                .await
        })
        .unwrap()
        .unwrap();
    assert_eq!(chain.len(), 2);
    drop(istiod);
}

/// A rotated root file is read on the next call: a new channel verifies with the new roots.
#[tokio::test]
async fn root_file_changes_rebuild_the_channel() {
    let pki = pki();
    let istiod = FakeIstiod::start(&pki).await;
    let roots = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(roots.path(), &pki.root_pem).unwrap();
    let mut cfg = istiod.config(&pki);
    cfg.root = RootCa::File(roots.path().to_path_buf());
    let ca = CaClient::new(cfg, Duration::from_secs(5));
    let ask = || ca.create_certificate("CSR", Duration::from_secs(60), None);

    istiod.answer(CaAnswer::Chain(vec![cert_pem("l"), cert_pem("r")]));
    within("the CA", ask()).await.unwrap();

    // Someone else's root: the next call dials anew and fails verification.
    std::fs::write(roots.path(), common::pki().root_pem).unwrap();
    let e = within("the CA", ask()).await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // The right root again.
    std::fs::write(roots.path(), &pki.root_pem).unwrap();
    istiod.answer(CaAnswer::Chain(vec![cert_pem("l"), cert_pem("r")]));
    within("the CA", ask()).await.unwrap();
}

/// Generated clients built outside the crate get the headers through the interceptor.
#[tokio::test]
async fn the_interceptor_adds_the_headers() {
    use control::pb::ca::IstioCertificateRequest;
    use control::pb::ca::istio_certificate_service_client::IstioCertificateServiceClient;

    let pki = pki();
    let mut istiod = FakeIstiod::start(&pki).await;
    let mut cfg = istiod.config(&pki);
    cfg.token = TokenSource::Static("t".into());
    cfg.cluster_id = "west".into();
    let channel = control::grpc::connect(&cfg).await.unwrap();
    istiod.answer(CaAnswer::Chain(vec![cert_pem("l"), cert_pem("r")]));
    let mut client = IstioCertificateServiceClient::new(channel.intercepted());
    within(
        "the CA",
        client.create_certificate(IstioCertificateRequest::default()),
    )
    .await
    .unwrap();
    let call = istiod.ca_call().await;
    assert_eq!(call.metadata.get("authorization").unwrap(), "Bearer t");
    assert_eq!(call.metadata.get("clusterid").unwrap(), "west");
}
