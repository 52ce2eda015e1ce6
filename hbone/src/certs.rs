//! Development certificates and PEM loading.
//!
//! [`CertificateAuthority`] makes a root CA (and optionally intermediates under it) and issues
//! workload leaves shaped like Istio's: empty subject, one SPIFFE URI SAN, both server- and
//! client-auth usage, so one certificate serves both ends of HBONE. It exists for tests, the
//! demo and benchmarks; it keeps keys in memory and never writes files itself.
//!
//! The loaders ([`certs_from_pem`], [`key_from_pem`], [`read_certs`], [`read_key`]) turn PEM
//! into rustls types; every error names the file (or the in-memory origin) it came from.
//!
//! Invariants: a [`LeafCert`]'s `chain` is leaf first, then each intermediate up to but not
//! including the root; the root is never in a chain (peers get it from their trust bundle).

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};
use crate::identity::Identity;

/// The key type of a generated certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: what Istio issues by default, and cheap to sign with.
    #[default]
    EcdsaP256,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures (for interop tests with RSA meshes).
    Rsa2048,
}

impl KeyAlgorithm {
    fn generate(self) -> Result<KeyPair> {
        let alg = match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        };
        Ok(KeyPair::generate_for(alg)?)
    }
}

/// The validity window of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before this instant.
    pub not_before: SystemTime,
    /// Not valid after this instant.
    pub not_after: SystemTime,
}

/// How far before "now" a fresh certificate's validity starts, so that a peer whose clock runs
/// a little behind ours still accepts it (Istio backdates its certificates the same way).
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

impl Validity {
    /// Valid from [`CLOCK_SKEW_ALLOWANCE`] ago until `lifetime` from now.
    pub fn starting_now(lifetime: Duration) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + lifetime,
        }
    }

    /// A window that ended an hour ago (to test rejection of expired certificates).
    pub fn expired() -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(2 * 3600),
            not_after: now - Duration::from_secs(3600),
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
    }
}

/// Lifetime of a generated CA unless told otherwise: ten years, long enough that a dev setup
/// never sees it expire.
pub const DEFAULT_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated leaf unless told otherwise: 24 h, as Istio issues workload
/// certificates (DESIGN.md "Identity").
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How to make a CA certificate.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Subject common name and organization.
    pub common_name: String,
    /// Key type.
    pub algorithm: KeyAlgorithm,
    /// Validity window.
    pub validity: Validity,
}

impl CaOptions {
    /// A CA named `common_name` with an ECDSA P-256 key, valid for [`DEFAULT_CA_LIFETIME`].
    pub fn new(common_name: &str) -> CaOptions {
        CaOptions {
            common_name: common_name.to_owned(),
            algorithm: KeyAlgorithm::default(),
            validity: Validity::starting_now(DEFAULT_CA_LIFETIME),
        }
    }
}

/// How to make a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafOptions {
    /// Key type.
    pub algorithm: KeyAlgorithm,
    /// Validity window.
    pub validity: Validity,
}

impl Default for LeafOptions {
    /// ECDSA P-256, valid for [`DEFAULT_LEAF_LIFETIME`] from now.
    fn default() -> LeafOptions {
        LeafOptions {
            algorithm: KeyAlgorithm::default(),
            validity: Validity::starting_now(DEFAULT_LEAF_LIFETIME),
        }
    }
}

/// A certificate authority that can issue leaves and intermediates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// This CA's certificate, then its issuers' up to but excluding the root.
    chain: Vec<CertificateDer<'static>>,
    root: CertificateDer<'static>,
    key_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generate a self-signed root CA.
    pub fn new_root(opts: &CaOptions) -> Result<CertificateAuthority> {
        let key = opts.algorithm.generate()?;
        let params = ca_params(opts);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            chain: Vec::new(),
            root: cert.der().clone(),
            key_pem,
        })
    }

    /// Load a CA from its certificate and PKCS#8 key in PEM (as written by [`Self::cert_pem`]
    /// and [`Self::key_pem`]). The certificate is treated as a root.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority> {
        let key = KeyPair::from_pem(key_pem)?;
        let root =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| Error::CertFile {
                origin: "CA certificate PEM".into(),
                reason: e.to_string(),
            })?;
        let issuer = Issuer::from_ca_cert_der(&root, key)?;
        Ok(CertificateAuthority {
            issuer,
            chain: Vec::new(),
            root,
            key_pem: key_pem.to_owned(),
        })
    }

    /// Generate an intermediate CA signed by this one.
    pub fn new_intermediate(&self, opts: &CaOptions) -> Result<CertificateAuthority> {
        let key = opts.algorithm.generate()?;
        let params = ca_params(opts);
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        let key_pem = key.serialize_pem();
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            chain,
            root: self.root.clone(),
            key_pem,
        })
    }

    /// Issue a workload leaf for `identity`.
    pub fn issue(&self, identity: &Identity, opts: &LeafOptions) -> Result<LeafCert> {
        let key = opts.algorithm.generate()?;
        let cert = leaf_params(identity, opts.validity)?.signed_by(&key, &self.issuer)?;

        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(LeafCert {
            identity: identity.clone(),
            chain_pem: chain.iter().map(|c| to_pem("CERTIFICATE", c)).collect(),
            chain,
            key_pem: key.serialize_pem(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            validity: opts.validity,
        })
    }

    /// Signs a PKCS#10 CSR (PEM) as a workload leaf for `identity`, as istiod's CA does: the
    /// CSR's signature is checked and its public key used; its subject and SANs are ignored
    /// (the leaf carries `identity` only). Returns the leaf then this CA's intermediates, one
    /// PEM each.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        validity: Validity,
    ) -> Result<Vec<String>> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = leaf_params(identity, validity)?;
        let cert = csr.signed_by(&self.issuer)?;
        let mut out = vec![to_pem("CERTIFICATE", cert.der())];
        out.extend(self.chain.iter().map(|c| to_pem("CERTIFICATE", c)));
        Ok(out)
    }

    /// The DER of this CA's own certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        self.chain.first().unwrap_or(&self.root)
    }

    /// This CA's own certificate in PEM.
    pub fn cert_pem(&self) -> String {
        to_pem("CERTIFICATE", self.cert_der())
    }

    /// This CA's private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The root at the top of this CA's chain (itself, for a root).
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The root in PEM: the trust bundle peers need.
    pub fn root_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.root)
    }
}

fn ca_params(opts: &CaOptions) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, opts.common_name.as_str());
    dn.push(DnType::CommonName, opts.common_name.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    opts.validity.apply(&mut params);
    params
}

/// A workload certificate: chain and key, in DER and PEM.
#[derive(Debug)]
pub struct LeafCert {
    /// The SPIFFE identity in the leaf's URI SAN.
    pub identity: Identity,
    /// Leaf first, then intermediates; no root.
    pub chain: Vec<CertificateDer<'static>>,
    /// `chain` in PEM, leaf first.
    pub chain_pem: String,
    /// The private key, PKCS#8 DER.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The validity the leaf was issued with.
    pub validity: Validity,
}

impl LeafCert {
    /// The chain as rustls wants it.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    /// The private key as rustls wants it.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl Clone for LeafCert {
    fn clone(&self) -> LeafCert {
        LeafCert {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            chain_pem: self.chain_pem.clone(),
            key: self.key.clone_key(),
            key_pem: self.key_pem.clone(),
            validity: self.validity,
        }
    }
}

/// A workload leaf's parameters, one shape for leaves issued here and CSRs signed here: the
/// identity only in the SAN (with an empty subject RFC 5280 §4.2.1.6 makes the SAN
/// critical, which rcgen does), not a CA, server and client auth.
fn leaf_params(identity: &Identity, validity: Validity) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity.apply(&mut params);
    Ok(params)
}

/// Encode DER as PEM with 64-column lines (RFC 7468 §2).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    // Hand-rolled to avoid another dependency; RFC 4648 base64 with padding.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = match *chunk {
            [a, b, c] => (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c),
            [a, b] => (u32::from(a) << 16) | (u32::from(b) << 8),
            [a] => u32::from(a) << 16,
            _ => unreachable!("chunks(3) yields 1..=3 bytes"),
        };
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                b64.push(ALPHABET[*s as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        // `b64` holds only ASCII from ALPHABET and '='.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every certificate in a PEM bundle (a chain, or several roots), in order. Non-certificate
/// sections are skipped; a bundle with no certificate is an error. `origin` names the source
/// in errors (a path, or e.g. "trust bundle").
pub fn certs_from_pem(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::CertFile {
            origin: origin.to_owned(),
            reason: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::CertFile {
            origin: origin.to_owned(),
            reason: "no \"BEGIN CERTIFICATE\" section found".into(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 RSA or SEC1 EC) in a PEM document.
pub fn key_from_pem(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::CertFile {
        origin: origin.to_owned(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key section (PKCS#8, RSA or EC) found".into()
            }
            e => format!("bad PEM: {e}"),
        },
    })
}

/// Read every certificate in a PEM file (a chain, or a bundle of several roots).
pub fn read_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    let pem = read(path)?;
    certs_from_pem(&pem, &path.display().to_string())
}

/// Read the private key in a PEM file.
pub fn read_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>> {
    let path = path.as_ref();
    let pem = read(path)?;
    key_from_pem(&pem, &path.display().to_string())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::CertFileIo {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
