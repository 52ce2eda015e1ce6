//! mTLS for HBONE: rustls client and server configs that authenticate peers by SPIFFE identity.
//!
//! What is fixed here, as Istio's ztunnel does it (`src/tls/{lib,certificate,workload}.rs`), so
//! that a ringmesh node and a ztunnel node handshake with each other in either direction:
//! - TLS 1.3 only; cipher suites TLS13_AES_128_GCM_SHA256 and TLS13_AES_256_GCM_SHA384 (ztunnel
//!   offers exactly these two; the order only sets preference); the provider's default key
//!   exchange groups;
//! - ALPN `h2` on both sides;
//! - the client sends no SNI and names the server `0.0.0.0` ([`server_name`]): identity is the
//!   URI SAN, never a DNS name; the client does not resume sessions (ztunnel disables it);
//! - the server requires a client certificate, verifies it to the trust roots for client-auth
//!   usage and requires its SPIFFE identity in the server's trust domain; it sends no CA names
//!   in its CertificateRequest (ztunnel sends none);
//! - the client verifies the server chain to the roots for server-auth usage, ignoring DNS
//!   names, and requires one of the leaf's SPIFFE identities to be among the expected ones.
//!
//! # Crypto provider: aws-lc-rs
//! Chosen over ring for bulk AES-GCM speed. Measured on this machine (2-core Xeon with AES-NI,
//! VAES, AVX-512; other builds running, so best of 3 one-second rounds, both providers
//! interleaved) with `cargo bench -p ringmesh-hbone --bench crypto_aead`, MB/s of plaintext
//! sealed or opened in place per TLS record:
//!
//! | op   | suite       | record | aws-lc-rs | ring  | aws-lc / ring |
//! |------|-------------|--------|-----------|-------|---------------|
//! | seal | AES-128-GCM | 16 KiB | 16 690    | 9 793 | 1.70          |
//! | seal | AES-256-GCM | 16 KiB | 15 684    | 9 991 | 1.57          |
//! | open | AES-128-GCM | 16 KiB | 15 250    | 11 513 | 1.32         |
//! | open | AES-256-GCM | 16 KiB | 13 493    | 10 025 | 1.35         |
//! | seal | AES-128-GCM | 1 KiB  | 7 007     | 6 269 | 1.12          |
//! | seal | AES-256-GCM | 1 KiB  | 7 090     | 6 543 | 1.08          |
//!
//! Bulk records (what a tunnel carries) seal 1.6–1.7× faster with aws-lc-rs; small records
//! are within noise. AES-128-GCM is offered first: through rustls' whole record layer
//! (`--bench crypto_record`: seal + open + copies) it moves ~10 % more bytes per CPU-second
//! than AES-256-GCM (2 201 vs 2 004 MB/s under load), and ztunnel accepts either.
//!
//! After the handshake the connection leaves rustls: [`connect`] and [`accept`] drive the
//! handshake through rustls' unbuffered API and hand its secrets to this crate's own TLS 1.3
//! record layer ([`record`], [`TlsStream`]), which seals from the caller's buffer and opens in
//! place; rustls keeps the key schedule (key updates, session tickets). Every config built
//! here enables secret extraction for that hand-off.
//!
//! Invariants: every config built here uses [`provider()`]; a handshake that completes has a
//! verified peer chain and an identity check passed, so [`peer_identity`] after a completed
//! server handshake always returns `Some`.

mod handshake;
pub mod record;
mod stream;
mod verify;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs;
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{Error, Result};
use crate::identity::Identity;

pub use handshake::{accept, connect};
pub use stream::{READ_SIZE, Session, TX_HIGH, TlsStream};
pub use verify::{SpiffeClientVerifier, SpiffeServerVerifier, verifier_error};

/// The one ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// TLS 1.3 only (DESIGN.md "HBONE wire facts"; ztunnel's default).
static TLS_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The crypto provider every HBONE config uses: aws-lc-rs, limited to the two TLS 1.3 AES-GCM
/// suites, AES-128 first (faster, see the module doc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
        ..aws_lc_rs::default_provider()
    })
}

/// The server name to pass to a client connection: SNI is disabled and the server's identity
/// is checked by URI SAN, so this is a placeholder, the unspecified IPv4 address as ztunnel uses.
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
}

/// A root store from DER roots; errors name the position of a root that does not parse.
pub fn root_store(roots: &[CertificateDer<'_>]) -> Result<Arc<RootCertStore>> {
    if roots.is_empty() {
        return Err(Error::TlsConfig("no trust roots given".into()));
    }
    let mut store = RootCertStore::empty();
    for (i, root) in roots.iter().enumerate() {
        store
            .add(root.clone().into_owned())
            .map_err(|e| Error::TlsConfig(format!("trust root #{i} is not usable: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// Server config for inbound HBONE (port 15008): presents `chain`/`key`, requires a client
/// certificate that chains to `roots` and whose SPIFFE identity is in `trust_domain`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: &[CertificateDer<'_>],
    trust_domain: &str,
) -> Result<Arc<ServerConfig>> {
    check_trust_domain(trust_domain)?;
    let provider = provider();
    let verifier = SpiffeClientVerifier::new(root_store(roots)?, trust_domain, provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS_VERSIONS)
        .map_err(config_error)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(check_chain(chain)?, key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Our clients and ztunnel's never resume, so session tickets would be wasted bytes and
    // CPU on every handshake.
    config.send_tls13_tickets = 0;
    // After the handshake the secrets go to this crate's record layer (`record`).
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// Client config for outbound HBONE: presents `chain`/`key`, verifies the server chain to
/// `roots` and requires the server's SPIFFE identity to be one of `expected`.
///
/// Connect with [`server_name()`] (or any name: it is neither sent nor checked).
pub fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: &[CertificateDer<'_>],
    expected: Vec<Identity>,
) -> Result<Arc<ClientConfig>> {
    if expected.is_empty() {
        return Err(Error::TlsConfig(
            "no expected server identities given: every server would be rejected".into(),
        ));
    }
    let provider = provider();
    let verifier = SpiffeServerVerifier::new(root_store(roots)?, expected, provider.clone());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS_VERSIONS)
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(check_chain(chain)?, key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// The SPIFFE identity of the peer of a connection whose handshake completed: the first URI
/// SAN of its leaf certificate that parses (the one the server verifier checked against the
/// trust domain). `None` before the handshake or if the peer sent no certificate.
pub fn peer_identity(conn: &CommonState) -> Option<Identity> {
    let leaf = conn.peer_certificates()?.first()?;
    Identity::from_leaf_cert(leaf).ok()
}

/// Whether the negotiated ALPN is `h2` (always true after a completed handshake with configs
/// built here: rustls aborts a handshake whose ALPN does not overlap).
pub fn negotiated_h2(conn: &CommonState) -> bool {
    conn.alpn_protocol() == Some(ALPN_H2)
}

fn check_chain(chain: Vec<CertificateDer<'static>>) -> Result<Vec<CertificateDer<'static>>> {
    if chain.is_empty() {
        return Err(Error::TlsConfig("certificate chain is empty".into()));
    }
    Ok(chain)
}

fn check_trust_domain(td: &str) -> Result<()> {
    // Reuse identity validation so that a trust domain that could never match is caught here.
    Identity::new(td, "ns", "sa")
        .map(|_| ())
        .map_err(|e| Error::TlsConfig(format!("trust domain {td:?} is not valid: {e}")))
}

fn config_error(e: rustls::Error) -> Error {
    Error::TlsConfig(e.to_string())
}

/// A readable message for a rustls error, unwrapping this crate's verifier errors (rustls would
/// print them with `Debug`).
pub fn describe(e: &rustls::Error) -> String {
    use rustls::{CertificateError, OtherError};
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            format!("invalid peer certificate: {inner}")
        }
        rustls::Error::Other(OtherError(inner)) => inner.to_string(),
        e => e.to_string(),
    }
}
