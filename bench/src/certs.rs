//! Mesh certificates for the proxies under test: one root CA and SPIFFE workload leaves
//! signed by it, written as PEM files, made by `hbone::certs` — the same code that makes
//! ringmesh's own development certificates.
//!
//! Every proxy pair in a run gets certificates of the same shape: ECDSA P-256 keys, an
//! empty subject and one URI SAN `spiffe://cluster.local/ns/<ns>/sa/<sa>` (as Istio
//! issues them), serverAuth + clientAuth, 24 h lifetime. So TLS cost is compared like for
//! like across data planes.

use std::path::{Path, PathBuf};

use hbone::certs::{CaOptions, CertificateAuthority, LeafOptions};
use hbone::identity::Identity;

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
    /// The leaf's chain (leaf first; the root is not included).
    pub cert: PathBuf,
    /// Its PKCS#8 private key.
    pub key: PathBuf,
}

/// A root CA kept in memory to sign leaves, and its certificate and key on disk.
pub struct Ca {
    ca: CertificateAuthority,
    /// PEM of the root certificate.
    pub cert_pem: String,
    /// Where the root certificate is written.
    pub cert_path: PathBuf,
    /// Where the root key is written (for proxies that sign their own leaves).
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
        let ca = CertificateAuthority::new_root(&CaOptions::new("ringmesh-bench root CA"))?;
        let cert_pem = ca.root_pem();
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        write(&cert_path, &cert_pem)?;
        write(&key_path, ca.key_pem())?;
        Ok(Ca {
            ca,
            cert_pem,
            cert_path,
            key_path,
        })
    }

    /// A leaf for `spiffe://cluster.local/ns/<ns>/sa/<sa>`, written to `dir/<sa>.pem` and
    /// `dir/<sa>-key.pem`.
    pub fn leaf(&self, dir: &Path, ns: &str, sa: &str) -> Result<LeafFiles> {
        let id = Identity::new(TRUST_DOMAIN, ns, sa)?;
        let leaf = self.ca.issue(&id, &LeafOptions::default())?;
        let files = LeafFiles {
            spiffe_id: id.to_string(),
            cert: dir.join(format!("{sa}.pem")),
            key: dir.join(format!("{sa}-key.pem")),
        };
        write(&files.cert, &leaf.chain_pem)?;
        write(&files.key, &leaf.key_pem)?;
        Ok(files)
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_carries_the_spiffe_id_and_chains_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path()).unwrap();
        let leaf = ca.leaf(dir.path(), "default", "server").unwrap();
        assert_eq!(leaf.spiffe_id, spiffe_id("default", "server"));
        let pem = std::fs::read(&leaf.cert).unwrap();
        let der = hbone::certs::certs_from_pem(&pem, "leaf").unwrap();
        let id = Identity::from_leaf_cert(&der[0]).unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/server"
        );
        assert!(
            std::fs::read_to_string(&leaf.key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        assert!(ca.cert_pem.contains("BEGIN CERTIFICATE"));
    }
}
