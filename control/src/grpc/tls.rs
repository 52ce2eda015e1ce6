//! TLS toward istiod: the root store, the server-name check (with ztunnel's optional
//! alternate name), and the connector tonic dials through.
//!
//! Owns: the client TLS configuration (TLS 1.3 only, ALPN `h2`, no client certificate, as
//! ztunnel's default) and the TCP socket setup (connect timeout, keepalive). Invariants: the
//! peer is verified against the configured roots every time (a fresh [`Connector`] is built
//! per channel, so a rotated root file is read again on the next reconnect); the alternate
//! name is only tried after the URL host failed the name check, never instead of the chain
//! check.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::RootCa;
use crate::error::{Error, peer_text};

/// TCP connect plus TLS handshake, per attempt. ztunnel gives the TCP connect 5 s; we bound
/// the TLS handshake by the same budget, so a peer that accepts and then stalls cannot hold
/// a reconnect loop forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive: idle time before the first probe, probe interval, probes before the
/// connection is declared dead. Istio's Envoy bootstrap values (300 s / 75 s / 9, the Linux
/// defaults for the last two), which ztunnel copies for its istiod connections.
pub const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(300);
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(75);
pub const TCP_KEEPALIVE_RETRIES: u32 = 9;

fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl RootCa {
    /// What this source is, for error messages.
    pub fn describe(&self) -> String {
        match self {
            RootCa::File(p) => format!("file {}", p.display()),
            RootCa::Pem(_) => "inline PEM".to_string(),
            RootCa::System => "the system's trust store".to_string(),
        }
    }

    /// Reads the roots now (a file is read again on every call).
    pub fn load(&self) -> Result<RootCertStore, Error> {
        let err = |reason: String| Error::Roots {
            from: self.describe(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = match self {
            RootCa::File(path) => {
                let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
                pem_certs(&pem).map_err(err)?
            }
            RootCa::Pem(pem) => pem_certs(pem.as_bytes()).map_err(|reason| {
                err(format!(
                    "{reason} (the value is neither an existing file, `SYSTEM`, nor PEM)"
                ))
            })?,
            RootCa::System => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                    return Err(err(format!("no certificate found ({})", why.join("; "))));
                }
                for e in &found.errors {
                    tracing::warn!(error = %e, "skipped part of the system trust store");
                }
                found.certs
            }
        };
        let total = certs.len();
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(err(format!(
                "none of its {total} certificates is a usable trust anchor"
            )));
        }
        Ok(store)
    }
}

/// Every certificate in a PEM text; an error when there is none or one is malformed.
fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".to_string());
    }
    Ok(certs)
}

/// Checks the chain against the roots and the name against the URL host, then, only if the
/// name did not match, against the alternate name (ztunnel's `ALT_XDS_HOSTNAME` /
/// `ALT_CA_HOSTNAME`).
#[derive(Debug)]
struct AltNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    alt: ServerName<'static>,
}

impl ServerCertVerifier for AltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => self.inner.verify_server_cert(
                end_entity,
                intermediates,
                &self.alt,
                ocsp_response,
                now,
            ),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// TLS 1.3 only (ztunnel allows 1.2 only behind `TLS12_ENABLED`; istiod speaks 1.3), ALPN
/// `h2` (gRPC), no client certificate (istiod authenticates us by the bearer token).
pub(crate) fn client_config(
    roots: RootCertStore,
    alt: Option<ServerName<'static>>,
) -> Result<ClientConfig, Error> {
    let provider = crypto();
    let tls_err = |e: &dyn std::fmt::Display| Error::Roots {
        from: "TLS setup".to_string(),
        reason: e.to_string(),
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(&e))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| tls_err(&e))?;
    let mut config = match alt {
        Some(alt) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AltNameVerifier {
                inner: verifier,
                alt,
            }))
            .with_no_client_auth(),
        None => builder.with_webpki_verifier(verifier).with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Dials istiod: TCP (with keepalive) then TLS, within [`CONNECT_TIMEOUT`]. tonic calls it
/// for every (re)connection of a channel; the URI tonic passes is ignored (the target was
/// fixed when the channel was built).
#[derive(Clone)]
pub(crate) struct Connector {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) tls: Arc<ClientConfig>,
    /// The configured address, for errors.
    pub(crate) address: Arc<str>,
}

impl Connector {
    async fn dial(self) -> Result<TokioIo<TlsStream<TcpStream>>, Error> {
        let unreachable = |reason: String| Error::Unreachable {
            address: self.address.to_string(),
            reason,
        };
        let work = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| unreachable(format!("TCP: {e}")))?;
            set_keepalive(&tcp);
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {}", peer_text(&e.to_string()))))?;
            Ok(TokioIo::new(tls))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(unreachable(format!(
                "no TCP and TLS connection within {CONNECT_TIMEOUT:?}"
            ))),
        }
    }
}

fn set_keepalive(tcp: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_TIME)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        // Keepalive only speeds up noticing a dead peer; HTTP/2 PINGs do that too.
        tracing::debug!(error = %e, "could not set TCP keepalive on the istiod connection");
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().dial())
    }
}
