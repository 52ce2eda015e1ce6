//! The built-in CA: files and permissions, refusal to overwrite, loading checks, and leaves
//! that verify against the root with webpki and carry the workload's SPIFFE identity.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use proxy::identity::{Identity, IdentityError, ca};
use rustls_pki_types::{CertificateDer, UnixTime};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// Verifies `leaf` chains to `root` for both TLS client and server use, now.
fn verify(leaf: &CertificateDer<'_>, root: &CertificateDer<'_>) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(root)?;
    let cert = webpki::EndEntityCert::try_from(leaf)?;
    let now = UnixTime::now();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &[],
            now,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

#[test]
fn init_writes_root_with_private_key_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let files = ca::init(&ca_dir, false).unwrap();
    assert_eq!(files.cert, ca_dir.join("root-cert.pem"));
    assert_eq!(files.key, ca_dir.join("root-key.pem"));
    assert_eq!(mode(&files.key), 0o600);
    assert_eq!(mode(&files.cert), 0o644);
    let pem = std::fs::read_to_string(&files.cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    // The root is an ECDSA P-256 CA valid for about ten years.
    let ca = ca::load(&ca_dir).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(ca.root_der()).unwrap();
    assert!(x509.is_ca());
    let years = (x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp())
        as f64
        / (365.0 * 86400.0);
    assert!((9.9..10.1).contains(&years), "root lifetime {years} years");
    assert_eq!(
        x509.public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string()),
        Some("1.2.840.10045.3.1.7".to_string()),
        "not P-256"
    );
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    ca::init(dir.path(), false).unwrap();
    let before = std::fs::read(dir.path().join("root-cert.pem")).unwrap();

    let err = ca::init(dir.path(), false).unwrap_err();
    assert!(matches!(err, IdentityError::CaExists { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("root-cert.pem")).unwrap(),
        before,
        "refusal changed the file"
    );

    // Only the key left over still counts as an existing CA.
    std::fs::remove_file(dir.path().join("root-cert.pem")).unwrap();
    assert!(matches!(
        ca::init(dir.path(), false),
        Err(IdentityError::CaExists { .. })
    ));

    ca::init(dir.path(), true).unwrap();
    assert_ne!(
        std::fs::read(dir.path().join("root-cert.pem")).unwrap(),
        before,
        "force did not replace the root"
    );
    assert_eq!(mode(&dir.path().join("root-key.pem")), 0o600);
}

#[test]
fn force_tightens_a_loose_key_file() {
    let dir = tempfile::tempdir().unwrap();
    ca::init(dir.path(), false).unwrap();
    let key = dir.path().join("root-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    ca::init(dir.path(), true).unwrap();
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn leaf_verifies_against_root_and_carries_identity() {
    let dir = tempfile::tempdir().unwrap();
    ca::init(dir.path(), false).unwrap();
    let ca = ca::load(dir.path()).unwrap();
    let who = id("spiffe://cluster.local/ns/demo/sa/client");
    let leaf = ca.sign_leaf(&who, ca::DEFAULT_LEAF_LIFETIME).unwrap();

    assert_eq!(leaf.chain.len(), 1, "built-in CA chains are leaf only");
    verify(&leaf.chain[0], ca.root_der()).expect("leaf verifies against its root");
    assert_eq!(Identity::from_leaf_cert(&leaf.chain[0]).unwrap(), who);

    // 24 h from now (give or take the test's own runtime), backdated for clock skew.
    let left = leaf
        .validity
        .not_after
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(24 * 3600 - 60) && left <= Duration::from_secs(24 * 3600),
        "{left:?}"
    );
    assert!(leaf.validity.not_before < SystemTime::now());

    // ECDSA P-256 leaf key, PKCS#8.
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
    assert!(!x509.is_ca());
    assert_eq!(
        x509.public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string()),
        Some("1.2.840.10045.3.1.7".to_string())
    );
    assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));

    // A different root does not verify it.
    let other = ca::Ca::generate().unwrap();
    assert!(verify(&leaf.chain[0], other.root_der()).is_err());
}

#[test]
fn load_rejects_a_key_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ca::init(&a, false).unwrap();
    ca::init(&b, false).unwrap();
    std::fs::copy(b.join("root-key.pem"), a.join("root-key.pem")).unwrap();
    let err = ca::load(&a).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");

    let missing = ca::load(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(missing, IdentityError::Io { .. }), "{missing:?}");
    assert!(missing.to_string().contains("root-cert.pem"), "{missing}");
}
