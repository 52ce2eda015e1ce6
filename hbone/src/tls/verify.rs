//! The two certificate verifiers: server-side (checks clients) and client-side (checks servers).
//!
//! Both verify the chain with webpki through rustls (signatures, validity window, key usage,
//! intermediates, any of several roots) before looking at identities, so an identity is only
//! ever read from a chain already proven to come from a trusted CA. Identity failures are
//! returned as `CertificateError::Other` wrapping this crate's [`Error`], so the caller can get
//! the structured reason back with [`verifier_error`]; the peer receives a `certificate_unknown`
//! alert.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::debug;

use crate::error::{Error, Result};
use crate::identity::{Identity, cert_identities};

/// Server side: requires a client certificate chaining to the roots whose SPIFFE identity (the
/// first URI SAN that parses, the one [`super::peer_identity`] returns) is in the server's
/// trust domain. The exact identity is left to authorization.
pub struct SpiffeClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl SpiffeClientVerifier {
    /// A verifier for clients chaining to `roots` with identities in `trust_domain`.
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<SpiffeClientVerifier> {
        let chain = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| Error::TlsConfig(format!("client certificate verifier: {e}")))?;
        Ok(SpiffeClientVerifier {
            chain,
            trust_domain: trust_domain.to_owned(),
        })
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // ztunnel sends no certificate_authorities hint; neither do we (the list would only
        // grow every CertificateRequest, and clients hold one certificate anyway).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| debug!(error = %e, "client certificate chain rejected"))?;
        let ids = identities(end_entity)?;
        match ids.first() {
            Some(id) if id.trust_domain() == self.trust_domain => Ok(verified),
            _ => {
                let err = Error::WrongTrustDomain {
                    trust_domain: self.trust_domain.clone(),
                    presented: ids,
                };
                debug!(error = %err, "client certificate rejected");
                Err(failure(err))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Client side: requires the server chain to verify to the roots (server-auth usage; DNS names
/// and the `ServerName` are ignored) and one of the leaf's SPIFFE identities to be expected.
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    /// A verifier for servers chaining to `roots` and presenting one of `expected`.
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: Vec<Identity>,
        provider: Arc<CryptoProvider>,
    ) -> SpiffeServerVerifier {
        SpiffeServerVerifier {
            roots,
            expected,
            provider,
        }
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .inspect_err(|e| debug!(error = %e, "server certificate chain rejected"))?;
        let ids = identities(end_entity)?;
        if ids.iter().any(|id| self.expected.contains(id)) {
            return Ok(ServerCertVerified::assertion());
        }
        let err = Error::UnexpectedPeerIdentity {
            expected: self.expected.clone(),
            presented: ids,
        };
        debug!(error = %err, "server certificate rejected");
        Err(failure(err))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// All SPIFFE identities of a leaf; a leaf that does not parse is a `BadEncoding`.
fn identities(der: &CertificateDer<'_>) -> std::result::Result<Vec<Identity>, rustls::Error> {
    match cert_identities(der) {
        Ok((ids, _)) => Ok(ids),
        Err(e) => {
            debug!(error = %e, "peer leaf certificate does not parse");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ))
        }
    }
}

/// Wraps a crate error so rustls' `Debug`-based messages print it readably.
struct VerifyFailure(Error);

impl fmt::Debug for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for VerifyFailure {}

fn failure(err: Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        VerifyFailure(err),
    ))))
}

/// The identity failure behind a rustls error raised by one of these verifiers
/// ([`Error::UnexpectedPeerIdentity`] or [`Error::WrongTrustDomain`]), if that is what it is.
pub fn verifier_error(e: &rustls::Error) -> Option<&Error> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<VerifyFailure>().map(|f| &f.0)
        }
        _ => None,
    }
}
