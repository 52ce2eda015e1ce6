//! The built-in CA: a self-signed ECDSA P-256 root kept in a directory, signing SPIFFE
//! leaves for workloads.
//!
//! Files (`ringmesh ca init --dir DIR`): `DIR/root-cert.pem` (0644) and `DIR/root-key.pem`
//! (0600), Istio's `cacerts` names for a root. `init` never overwrites an existing CA
//! unless forced, because replacing the root silently breaks every certificate it signed.
//! Certificate shapes (Istio-style X.509-SVID leaves: empty subject, critical SPIFFE URI
//! SAN, server + client auth, fresh P-256 key per leaf, backdated for clock skew) come from
//! `hbone::certs`; this module adds the files, their permissions and the checks on load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hbone::certs::{CaOptions, CertificateAuthority, LeafOptions, Validity};
use rustls_pki_types::CertificateDer;

use super::{Identity, IdentityError, io_err, write_atomic};

/// A signed leaf: `chain`/`chain_pem` (leaf first), `key`/`key_pem`, `validity`.
pub use hbone::certs::LeafCert as CertifiedKey;

pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Ten years: a root outlives any deployment it is created for; leaves rotate daily.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Istio's default workload certificate lifetime.
pub const DEFAULT_LEAF_LIFETIME: Duration = hbone::certs::DEFAULT_LEAF_LIFETIME;
/// The root's subject (CN and O).
const ROOT_NAME: &str = "ringmesh root CA";

/// The files `init` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loaded CA, ready to sign.
#[derive(Debug)]
pub struct Ca {
    inner: CertificateAuthority,
    root_pem: String,
}

/// Creates a CA in `dir` (created if missing). Refuses if either file exists, unless `force`.
pub fn init(dir: &Path, force: bool) -> Result<CaFiles, IdentityError> {
    let files = CaFiles {
        cert: dir.join(ROOT_CERT_FILE),
        key: dir.join(ROOT_KEY_FILE),
    };
    if !force {
        for p in [&files.cert, &files.key] {
            if p.exists() {
                return Err(IdentityError::CaExists { path: p.clone() });
            }
        }
    }
    let ca = Ca::generate()?;
    // Key first: a cert without its key is useless, a key without a cert is re-creatable.
    write_atomic(&files.key, ca.inner.key_pem().as_bytes(), 0o600)?;
    write_atomic(&files.cert, ca.root_pem.as_bytes(), 0o644)?;
    tracing::info!(cert = %files.cert.display(), key = %files.key.display(), "created a CA");
    Ok(files)
}

/// Loads the CA that `init` wrote in `dir`, checking the key belongs to the certificate,
/// the certificate is a CA, and it is valid now.
pub fn load(dir: &Path) -> Result<Ca, IdentityError> {
    let cert_path = dir.join(ROOT_CERT_FILE);
    let key_path = dir.join(ROOT_KEY_FILE);
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
    let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
    warn_if_readable(&key_path);
    let bad = |path: &Path, reason: String| IdentityError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let inner = CertificateAuthority::from_pem(&cert_pem, &key_pem)
        .map_err(|e| bad(&cert_path, format!("cannot use this CA: {e}")))?;
    let key = rcgen::KeyPair::from_pem(&key_pem)
        .map_err(|e| bad(&key_path, format!("not a private key: {e}")))?;
    let (_, x509) = x509_parser::parse_x509_certificate(inner.root_der())
        .map_err(|e| bad(&cert_path, format!("not an X.509 certificate: {e}")))?;
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(
            &key_path,
            format!("this key does not belong to {}", cert_path.display()),
        ));
    }
    if !x509.is_ca() {
        return Err(bad(&cert_path, "not a CA certificate".into()));
    }
    if !x509.validity().is_valid() {
        return Err(bad(
            &cert_path,
            "the root certificate is expired or not yet valid".into(),
        ));
    }
    let root_pem = inner.root_pem();
    Ok(Ca { inner, root_pem })
}

fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = std::fs::metadata(path) {
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "CA key is readable by others; chmod 600 it");
        }
    }
}

impl Ca {
    /// A fresh root in memory (used by `init`, and by tests that need no files).
    pub fn generate() -> Result<Ca, IdentityError> {
        let opts = CaOptions {
            validity: Validity::starting_now(ROOT_LIFETIME),
            ..CaOptions::new(ROOT_NAME)
        };
        let inner = CertificateAuthority::new_root(&opts)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        let root_pem = inner.root_pem();
        Ok(Ca { inner, root_pem })
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        self.inner.root_der()
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs an ECDSA P-256 leaf for `identity`, valid from a few minutes ago (clock skew)
    /// until `lifetime` from now.
    pub fn sign_leaf(
        &self,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<CertifiedKey, IdentityError> {
        let opts = LeafOptions {
            validity: Validity::starting_now(lifetime),
            ..LeafOptions::default()
        };
        self.inner
            .issue(identity, &opts)
            .map_err(|e| IdentityError::Sign {
                identity: identity.to_string(),
                reason: e.to_string(),
            })
    }
}
