//! Mesh certificates for the proxies under test: one root CA and SPIFFE workload leaves
//! signed by it, written as PEM files.
//!
//! Every proxy pair in a run gets certificates from the same kind of root, the same key
//! type (ECDSA P-256, what ringmesh issues) and the same SAN shape as Istio
//! (`spiffe://cluster.local/ns/<ns>/sa/<sa>` as the only URI SAN), so TLS cost is compared
//! like for like. Leaves carry both serverAuth and clientAuth, as mesh certificates do.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Error, Result};

/// Istio's default trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The SPIFFE identity of service account `sa` in namespace `ns`.
pub fn spiffe_id(ns: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

/// PEM files of one workload identity.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    pub spiffe_id: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A root CA kept in memory to sign leaves, and its certificate on disk.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// PEM of the root certificate.
    pub cert_pem: String,
    /// Where the root certificate is written.
    pub cert_path: PathBuf,
    /// PEM of the root's private key (some proxies sign their own leaves from it).
    pub key_pem: String,
    /// Where the root key is written.
    pub key_path: PathBuf,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .finish()
    }
}

impl Ca {
    /// A new root, written to `dir/ca.pem` and `dir/ca-key.pem`.
    pub fn new(dir: &Path) -> Result<Ca> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ringmesh-bench");
        dn.push(DnType::CommonName, "ringmesh-bench root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, key)?;
        let cert_pem = issuer.pem();
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        write(&cert_path, &cert_pem)?;
        write(&key_path, &key_pem)?;
        Ok(Ca {
            issuer,
            cert_pem,
            cert_path,
            key_pem,
            key_path,
        })
    }

    /// A leaf for `spiffe://cluster.local/ns/<ns>/sa/<sa>`, written to `dir/<sa>.pem` and
    /// `dir/<sa>-key.pem`.
    pub fn leaf(&self, dir: &Path, ns: &str, sa: &str) -> Result<LeafFiles> {
        let id = spiffe_id(ns, sa);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ringmesh-bench");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(id.clone().try_into()?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = LeafFiles {
            spiffe_id: id,
            cert: dir.join(format!("{sa}.pem")),
            key: dir.join(format!("{sa}-key.pem")),
        };
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}
