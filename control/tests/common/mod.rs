//! A scripted istiod for the control crate's tests: a TLS gRPC server on 127.0.0.1 (an
//! ephemeral port) whose ADS streams and CA calls are handed to the test to drive.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use control::grpc::{ChannelConfig, RootCa};
use control::pb::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use control::pb::ca::{IstioCertificateRequest, IstioCertificateResponse};
use control::pb::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use control::pb::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// `fut`, or a panic naming `what` after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits until `cond` holds (checked every few milliseconds), or panics naming `what`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A test root and a server certificate for `localhost` only (no IP SAN).
pub struct Pki {
    pub root_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

pub fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // A distinct name per root, so a wrong root is an unknown issuer, not a bad signature.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("ringmesh test root {n}"));
    let root = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        root_pem: root.pem(),
        server_cert_pem: server.pem(),
        server_key_pem: key.serialize_pem(),
    }
}

/// A self-signed certificate for `name` (PEM), for CA answers.
pub fn cert_pem(name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem()
}

/// One ADS stream as the server sees it.
pub struct AdsStream {
    pub metadata: MetadataMap,
    pub requests: Streaming<DeltaDiscoveryRequest>,
    /// Dropping it ends the stream cleanly (status OK); an `Err` ends it with that status.
    pub responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl AdsStream {
    /// The next request from the client.
    pub async fn next(&mut self) -> DeltaDiscoveryRequest {
        within("a request from the client", self.requests.message())
            .await
            .expect("the stream failed")
            .expect("the client closed its side")
    }

    pub async fn send(&self, resp: DeltaDiscoveryResponse) {
        within("room on the response stream", self.responses.send(Ok(resp)))
            .await
            .expect("the client went away");
    }
}

/// What the CA was asked.
pub struct CaCall {
    pub metadata: MetadataMap,
    pub request: IstioCertificateRequest,
}

/// A scripted CA answer.
pub enum CaAnswer {
    Chain(Vec<String>),
    Fail(Status),
    /// Never answers (the client must time out).
    Hang,
}

type Out = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;
type SotwOut = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

struct Ads {
    streams: mpsc::UnboundedSender<AdsStream>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = SotwOut;
    type DeltaAggregatedResourcesStream = Out;

    async fn stream_aggregated_resources(
        &self,
        _req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwOut>, Status> {
        Err(Status::unimplemented("delta only"))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Out>, Status> {
        let metadata = req.metadata().clone();
        let (tx, rx) = mpsc::channel(16);
        let _ = self.streams.send(AdsStream {
            metadata,
            requests: req.into_inner(),
            responses: tx,
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Ca {
    calls: mpsc::UnboundedSender<CaCall>,
    answers: Arc<Mutex<VecDeque<CaAnswer>>>,
}

#[tonic::async_trait]
impl IstioCertificateService for Ca {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let metadata = req.metadata().clone();
        let _ = self.calls.send(CaCall {
            metadata,
            request: req.into_inner(),
        });
        let answer = self.answers.lock().unwrap().pop_front();
        match answer {
            Some(CaAnswer::Chain(cert_chain)) => {
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Some(CaAnswer::Fail(s)) => Err(s),
            Some(CaAnswer::Hang) => {
                std::future::pending::<()>().await;
                Err(Status::internal("unreachable"))
            }
            None => Err(Status::internal("no scripted answer")),
        }
    }
}

/// Both services on one port, routed by the gRPC path (tonic's router needs its `router`
/// feature, which the workspace does not enable).
#[derive(Clone)]
struct Both {
    ads: AggregatedDiscoveryServiceServer<Ads>,
    ca: IstioCertificateServiceServer<Ca>,
}

type BoxFut =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Both {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> BoxFut {
        if req.uri().path().starts_with("/istio.v1.auth.") {
            Box::pin(self.ca.call(req))
        } else {
            Box::pin(self.ads.call(req))
        }
    }
}

/// The scripted istiod. Dropping it stops the server.
pub struct FakeIstiod {
    pub addr: SocketAddr,
    pub streams: mpsc::UnboundedReceiver<AdsStream>,
    pub ca_calls: mpsc::UnboundedReceiver<CaCall>,
    pub ca_answers: Arc<Mutex<VecDeque<CaAnswer>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for FakeIstiod {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl FakeIstiod {
    /// Serves on 127.0.0.1 (a free port) on the current runtime.
    pub async fn start(pki: &Pki) -> FakeIstiod {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let (calls_tx, ca_calls) = mpsc::unbounded_channel();
        let ca_answers = Arc::new(Mutex::new(VecDeque::new()));
        let identity =
            tonic::transport::Identity::from_pem(&pki.server_cert_pem, &pki.server_key_pem);
        let server = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap();
        let both = Both {
            ads: AggregatedDiscoveryServiceServer::new(Ads {
                streams: streams_tx,
            }),
            ca: IstioCertificateServiceServer::new(Ca {
                calls: calls_tx,
                answers: ca_answers.clone(),
            }),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = server
                .serve_with_incoming_shutdown(both, incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeIstiod {
            addr,
            streams,
            ca_calls,
            ca_answers,
            stop: Some(stop),
        }
    }

    /// The next ADS stream a client opened.
    pub async fn stream(&mut self) -> AdsStream {
        within("a client stream", self.streams.recv())
            .await
            .expect("server gone")
    }

    pub async fn ca_call(&mut self) -> CaCall {
        within("a CA call", self.ca_calls.recv())
            .await
            .expect("server gone")
    }

    pub fn answer(&self, a: CaAnswer) {
        self.ca_answers.lock().unwrap().push_back(a);
    }

    /// A channel config reaching this server as `https://localhost:PORT`, trusting `pki`.
    pub fn config(&self, pki: &Pki) -> ChannelConfig {
        ChannelConfig::new(
            &format!("localhost:{}", self.addr.port()),
            RootCa::Pem(pki.root_pem.clone()),
        )
        .unwrap()
    }
}
