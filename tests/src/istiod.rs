//! A fake istiod for end-to-end tests: the workload xDS API (Delta ADS) and the Istio CA on
//! one TLS port, playing by the protocol as istiod does.
//!
//! xDS: each stream's first request per type carries the node and the versions the client
//! holds; the server answers with every resource whose version differs and removes the names
//! it no longer has, then pushes deltas (new versions, removals) as the test changes the
//! state. Every response has a fresh nonce; every ACK or NACK the client sends is recorded
//! (with its `error_detail`), so a test can wait for the one that answers a push.
//!
//! CA: `CreateCertificate` checks the bearer token, signs the CSR with the test CA for the
//! identity in `ImpersonatedIdentity` (as istiod does for a trusted node account), or, with
//! none, for the identity the token belongs to (as istiod does for a dedicated proxy, from
//! its service account token), and answers leaf then root. It can be switched off (`Unavailable`) to play a CA outage.
//!
//! Runs on its own tokio runtime thread; stopping it closes the listener and every stream,
//! and [`FakeIstiod::restart`] serves the same state on the same port again.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use control::pb::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use control::pb::ca::{IstioCertificateRequest, IstioCertificateResponse};
use control::pb::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use control::pb::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use hbone::certs::{CertificateAuthority, Validity};
use hbone::identity::Identity;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub use control::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};

/// What a client sent on a stream, for assertions.
#[derive(Debug, Clone)]
pub struct Received {
    pub type_url: String,
    /// Empty on a stream's first request per type.
    pub nonce: String,
    /// The NACK's message, if it was one.
    pub error: Option<String>,
    pub node_id: Option<String>,
    pub initial_versions: BTreeMap<String, String>,
}

/// One resource as the server holds it.
#[derive(Debug, Clone)]
struct Held {
    version: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// type URL → name → resource.
    resources: HashMap<String, BTreeMap<String, Held>>,
    received: Vec<Received>,
    /// `authorization` values seen, per call.
    tokens: Vec<String>,
    /// `clusterid` values seen.
    cluster_ids: Vec<String>,
    /// Identities the CA was asked for.
    signed: Vec<String>,
    version: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change, so open streams push deltas.
    changed: watch::Sender<u64>,
    ca: CertificateAuthority,
    ca_up: AtomicBool,
    nonce: AtomicU64,
    /// The token a call must carry (`None`: any or none).
    token: Mutex<Option<String>>,
    /// Bearer token → the SPIFFE identity it authenticates (a dedicated proxy's own).
    token_identities: Mutex<HashMap<String, String>>,
    cert_ttl: Mutex<Option<Duration>>,
}

/// A running fake istiod.
pub struct FakeIstiod {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: (String, String),
    server: Option<Server>,
}

struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A server certificate for `127.0.0.1` and `localhost`, signed by `ca`: (cert PEM, key PEM).
pub fn server_cert(ca: &CertificateAuthority) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
    params.distinguished_name = rcgen::DistinguishedName::new();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca.root_pem(), rcgen::KeyPair::from_pem(ca.key_pem())?)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl FakeIstiod {
    /// Serves on a free loopback port with a server certificate from `ca`, which also signs
    /// workload certificates.
    pub fn start(ca: CertificateAuthority) -> Result<FakeIstiod> {
        let tls = server_cert(&ca)?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed,
            ca,
            ca_up: AtomicBool::new(true),
            nonce: AtomicU64::new(0),
            token: Mutex::new(None),
            token_identities: Mutex::new(HashMap::new()),
            cert_ttl: Mutex::new(None),
        });
        let addr: SocketAddr = format!("127.0.0.1:{}", crate::free_port()).parse()?;
        let mut f = FakeIstiod {
            shared,
            addr,
            tls,
            server: None,
        };
        f.restart()?;
        Ok(f)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The root certificate (PEM) that verifies this server and every certificate it signs.
    pub fn root_pem(&self) -> String {
        self.shared.ca.root_pem()
    }

    /// Stops serving: the listener closes and every open stream ends (as istiod going away).
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// Serves again on the same port with the same state (a restarted istiod).
    pub fn restart(&mut self) -> Result<()> {
        self.server = None;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let shared = self.shared.clone();
        let addr = self.addr;
        let (cert, key) = self.tls.clone();
        let thread = std::thread::Builder::new()
            .name("fake-istiod".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    // The port may still be held by the previous run for a moment.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let listener = loop {
                        match tokio::net::TcpListener::bind(addr).await {
                            Ok(l) => break l,
                            Err(e) if Instant::now() < deadline => {
                                let _ = e;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.into()));
                                return;
                            }
                        }
                    };
                    let identity = tonic::transport::Identity::from_pem(cert, key);
                    let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
                    let server = match tonic::transport::Server::builder().tls_config(tls) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let both = Both {
                        ads: AggregatedDiscoveryServiceServer::new(Ads(shared.clone())),
                        ca: IstioCertificateServiceServer::new(Ca(shared)),
                    };
                    let _ = ready_tx.send(Ok(()));
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    // Not a graceful shutdown: that would wait for the xDS streams, which
                    // never end by themselves. Leaving the select drops the listener; the
                    // runtime's drop below cancels every connection (istiod going away).
                    let serve = server.serve_with_incoming_shutdown(
                        both,
                        incoming,
                        std::future::pending::<()>(),
                    );
                    tokio::select! {
                        _ = serve => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels the streams still open.
                drop(rt);
            })?;
        ready_rx
            .recv_timeout(Duration::from_secs(15))
            .context("fake istiod did not start")??;
        self.server = Some(Server {
            stop: Some(stop),
            thread: Some(thread),
        });
        Ok(())
    }

    fn bump(&self, st: &mut State) {
        st.version += 1;
        let v = st.version;
        self.shared.changed.send_replace(v);
    }

    /// Adds or replaces a resource (its version is new) and pushes it.
    pub fn put(&self, type_url: &str, name: &str, body: Vec<u8>) {
        let mut st = self.shared.state.lock().unwrap();
        let version = format!("v{}", st.version + 1);
        st.resources
            .entry(type_url.to_string())
            .or_default()
            .insert(name.to_string(), Held { version, body });
        self.bump(&mut st);
    }

    /// Adds or replaces an Address (workload or service).
    pub fn put_address(&self, name: &str, a: &control::pb::workload::Address) {
        self.put(ADDRESS_TYPE, name, a.encode_to_vec());
    }

    pub fn put_policy(&self, a: &control::pb::security::Authorization) {
        let name = format!("{}/{}", a.namespace, a.name);
        self.put(AUTHORIZATION_TYPE, &name, a.encode_to_vec());
    }

    /// Removes a resource and pushes the removal.
    pub fn remove(&self, type_url: &str, name: &str) {
        let mut st = self.shared.state.lock().unwrap();
        if let Some(m) = st.resources.get_mut(type_url) {
            m.remove(name);
        }
        self.bump(&mut st);
    }

    /// Everything clients sent so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.state.lock().unwrap().received.clone()
    }

    /// Waits until a client sent a request matching `want`; returns it.
    pub fn wait_received(
        &self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&Received) -> bool,
    ) -> Result<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.received().into_iter().find(|r| want(r)) {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!(
                    "fake istiod: no {what} within {timeout:?}; got {:#?}",
                    self.received()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The CA answers `Unavailable` while down.
    pub fn set_ca_up(&self, up: bool) {
        self.shared.ca_up.store(up, Ordering::SeqCst);
    }

    /// Calls must carry `authorization: Bearer <token>`.
    pub fn require_token(&self, token: &str) {
        *self.shared.token.lock().unwrap() = Some(token.to_string());
    }

    /// A call with `token` and no `ImpersonatedIdentity` is signed for `identity` (istiod
    /// reads it from the service account token of a dedicated proxy).
    pub fn token_identity(&self, token: &str, identity: &str) {
        self.shared
            .token_identities
            .lock()
            .unwrap()
            .insert(format!("Bearer {token}"), identity.to_string());
    }

    /// Signs certificates for this long instead of what the CSR asks.
    pub fn set_cert_ttl(&self, ttl: Duration) {
        *self.shared.cert_ttl.lock().unwrap() = Some(ttl);
    }

    /// Identities signed so far, in order.
    pub fn signed(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().signed.clone()
    }

    pub fn tokens(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().tokens.clone()
    }

    pub fn cluster_ids(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().cluster_ids.clone()
    }
}

impl Shared {
    fn check_auth<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let md = req.metadata();
        let auth = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let cluster = md
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        {
            let mut st = self.state.lock().unwrap();
            st.tokens.push(auth.clone());
            st.cluster_ids.push(cluster);
        }
        if let Some(want) = self.token.lock().unwrap().as_ref()
            && auth != format!("Bearer {want}")
        {
            return Err(Status::unauthenticated("request authenticate failure"));
        }
        Ok(())
    }
}

/// Both services on one port, routed by the gRPC path (tonic's router needs its `router`
/// feature, which the workspace does not enable).
#[derive(Clone)]
struct Both {
    ads: AggregatedDiscoveryServiceServer<Ads>,
    ca: IstioCertificateServiceServer<Ca>,
}

type BoxFut = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            > + Send,
    >,
>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Both {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFut;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> BoxFut {
        if req.uri().path().starts_with("/istio.v1.auth.") {
            Box::pin(self.ca.call(req))
        } else {
            Box::pin(self.ads.call(req))
        }
    }
}

struct Ads(Arc<Shared>);

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("use the delta API"))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.0.check_auth(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<DeltaDiscoveryResponse, Status>>(16);
        let shared = self.0.clone();
        tokio::spawn(async move {
            // Per type: what this stream's client holds (name → version).
            let mut sent: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            let mut changed = shared.changed.subscribe();
            loop {
                tokio::select! {
                    msg = inbound.message() => {
                        let Ok(Some(r)) = msg else { return };
                        let first = r.response_nonce.is_empty();
                        let error = r.error_detail.as_ref().map(|e| e.message.clone());
                        shared.state.lock().unwrap().received.push(Received {
                            type_url: r.type_url.clone(),
                            nonce: r.response_nonce.clone(),
                            error,
                            node_id: r.node.as_ref().map(|n| n.id.clone()),
                            initial_versions: r.initial_resource_versions.clone().into_iter().collect(),
                        });
                        if first {
                            let held: BTreeMap<String, String> =
                                r.initial_resource_versions.into_iter().collect();
                            sent.insert(r.type_url.clone(), held);
                            if let Some(resp) = delta(&shared, &r.type_url, sent.get_mut(&r.type_url).unwrap())
                                && tx.send(Ok(resp)).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    res = changed.changed() => {
                        if res.is_err() { return; }
                        let types: Vec<String> = sent.keys().cloned().collect();
                        for t in types {
                            if let Some(resp) = delta(&shared, &t, sent.get_mut(&t).unwrap())
                                && tx.send(Ok(resp)).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The response that brings a client holding `held` up to date, if anything differs;
/// `held` becomes what it will hold.
fn delta(
    shared: &Shared,
    type_url: &str,
    held: &mut BTreeMap<String, String>,
) -> Option<DeltaDiscoveryResponse> {
    let st = shared.state.lock().unwrap();
    let empty = BTreeMap::new();
    let now = st.resources.get(type_url).unwrap_or(&empty);
    let mut resources = Vec::new();
    for (name, h) in now {
        if held.get(name) != Some(&h.version) {
            resources.push(Resource {
                name: name.clone(),
                version: h.version.clone(),
                resource: Some(prost_types::Any {
                    type_url: type_url.to_string(),
                    value: h.body.clone(),
                }),
                ..Resource::default()
            });
        }
    }
    let removed: Vec<String> = held
        .keys()
        .filter(|n| !now.contains_key(*n))
        .cloned()
        .collect();
    if resources.is_empty() && removed.is_empty() && !held.is_empty() {
        return None;
    }
    *held = now
        .iter()
        .map(|(n, h)| (n.clone(), h.version.clone()))
        .collect();
    let nonce = shared.nonce.fetch_add(1, Ordering::SeqCst) + 1;
    Some(DeltaDiscoveryResponse {
        system_version_info: format!("{}", st.version),
        resources,
        type_url: type_url.to_string(),
        nonce: format!("n{nonce}"),
        removed_resources: removed,
    })
}

struct Ca(Arc<Shared>);

#[tonic::async_trait]
impl IstioCertificateService for Ca {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.0.check_auth(&req)?;
        if !self.0.ca_up.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the fake CA is down"));
        }
        let own = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|auth| self.0.token_identities.lock().unwrap().get(auth).cloned());
        let req = req.into_inner();
        let who = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("ImpersonatedIdentity"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .or(own)
            .ok_or_else(|| {
                Status::unauthenticated("no ImpersonatedIdentity and no identity for the token")
            })?;
        let id: Identity = who
            .parse()
            .map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let ttl = self
            .0
            .cert_ttl
            .lock()
            .unwrap()
            .unwrap_or(Duration::from_secs(req.validity_duration.max(1) as u64));
        let mut chain = self
            .0
            .ca
            .sign_csr(&req.csr, &id, Validity::starting_now(ttl))
            .map_err(|e| Status::invalid_argument(format!("bad CSR: {e}")))?;
        chain.push(self.0.ca.root_pem());
        self.0.state.lock().unwrap().signed.push(who);
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}
