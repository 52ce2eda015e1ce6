use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// Chain-verify `leaf` (with `chain[1..]` as intermediates) to `root` for client and server
/// auth, at `now`.
fn verify(
    chain: &[CertificateDer<'_>],
    root: &CertificateDer<'_>,
    now: SystemTime,
) -> std::result::Result<(), webpki::Error> {
    let anchor = anchor_from_trusted_cert(root).unwrap();
    let ee = EndEntityCert::try_from(&chain[0]).unwrap();
    let algs = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    let now = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
        ee.verify_for_usage(
            algs,
            std::slice::from_ref(&anchor),
            &chain[1..],
            now,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

#[test]
fn leaf_is_shaped_like_istio_and_verifies() {
    let ca = CertificateAuthority::new_root(&CaOptions::new("test root")).unwrap();
    let leaf = ca
        .issue(&id("spiffe://td/ns/a/sa/b"), &LeafOptions::default())
        .unwrap();
    assert_eq!(leaf.chain.len(), 1);
    assert_eq!(
        Identity::from_leaf_cert(&leaf.chain[0]).unwrap(),
        leaf.identity
    );
    let (_, x) = X509Certificate::from_der(&leaf.chain[0]).unwrap();
    assert!(!x.is_ca());
    assert!(
        x.subject().iter().next().is_none(),
        "subject should be empty"
    );
    let san = x.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN must be critical with an empty subject");
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let not_after = x.validity().not_after.timestamp();
    let want = (SystemTime::now() + DEFAULT_LEAF_LIFETIME)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((not_after - want).abs() < 60, "{not_after} vs {want}");
    verify(&leaf.chain, ca.root_der(), SystemTime::now()).unwrap();
}

#[test]
fn intermediate_chain_verifies_to_root() {
    let root = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let mid = root.new_intermediate(&CaOptions::new("mid")).unwrap();
    let mid2 = mid.new_intermediate(&CaOptions::new("mid2")).unwrap();
    let leaf = mid2
        .issue(&id("spiffe://td/ns/a/sa/b"), &LeafOptions::default())
        .unwrap();
    assert_eq!(leaf.chain.len(), 3);
    assert_eq!(mid2.root_der(), root.root_der());
    verify(&leaf.chain, root.root_der(), SystemTime::now()).unwrap();
    // Without the intermediates the leaf does not chain.
    assert!(verify(&leaf.chain[..1], root.root_der(), SystemTime::now()).is_err());
}

#[test]
fn rsa_chain_verifies() {
    let opts = CaOptions {
        algorithm: KeyAlgorithm::Rsa2048,
        ..CaOptions::new("rsa root")
    };
    let ca = CertificateAuthority::new_root(&opts).unwrap();
    let leaf = ca
        .issue(
            &id("spiffe://td/ns/a/sa/b"),
            &LeafOptions {
                algorithm: KeyAlgorithm::Rsa2048,
                ..LeafOptions::default()
            },
        )
        .unwrap();
    assert!(leaf.key_pem.contains("BEGIN PRIVATE KEY"));
    verify(&leaf.chain, ca.root_der(), SystemTime::now()).unwrap();
}

#[test]
fn expired_validity_is_honoured() {
    let ca = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let leaf = ca
        .issue(
            &id("spiffe://td/ns/a/sa/b"),
            &LeafOptions {
                validity: Validity::expired(),
                ..LeafOptions::default()
            },
        )
        .unwrap();
    let e = verify(&leaf.chain, ca.root_der(), SystemTime::now()).unwrap_err();
    assert!(matches!(e, webpki::Error::CertExpired { .. }), "{e:?}");
    // ...and it was valid in its window.
    verify(
        &leaf.chain,
        ca.root_der(),
        SystemTime::now() - Duration::from_secs(90 * 60),
    )
    .unwrap();
}

#[test]
fn ca_round_trips_through_pem() {
    let ca = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let loaded = CertificateAuthority::from_pem(&ca.cert_pem(), ca.key_pem()).unwrap();
    let leaf = loaded
        .issue(&id("spiffe://td/ns/a/sa/b"), &LeafOptions::default())
        .unwrap();
    verify(&leaf.chain, ca.root_der(), SystemTime::now()).unwrap();
    assert!(CertificateAuthority::from_pem("garbage", ca.key_pem()).is_err());
}

#[test]
fn to_pem_matches_rcgen_encoding() {
    // rcgen's own PEM encoder is the reference for our base64; try every length mod 3.
    let key = KeyPair::generate().unwrap();
    for n in 0..3 {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "x".repeat(10 + n));
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            to_pem("CERTIFICATE", cert.der()).replace("\r\n", "\n"),
            cert.pem().replace("\r\n", "\n")
        );
    }
}

#[test]
fn pem_bundles_and_keys_load() {
    let a = CertificateAuthority::new_root(&CaOptions::new("a")).unwrap();
    let b = CertificateAuthority::new_root(&CaOptions::new("b")).unwrap();
    let bundle = format!("# two roots\n{}\n{}", a.root_pem(), b.root_pem());
    let roots = certs_from_pem(bundle.as_bytes(), "bundle").unwrap();
    assert_eq!(roots, vec![a.root_der().clone(), b.root_der().clone()]);

    let leaf = a
        .issue(&id("spiffe://td/ns/a/sa/b"), &LeafOptions::default())
        .unwrap();
    let key = key_from_pem(leaf.key_pem.as_bytes(), "key").unwrap();
    assert_eq!(key.secret_der(), leaf.key().secret_der());
    assert_eq!(
        certs_from_pem(leaf.chain_pem.as_bytes(), "chain").unwrap(),
        leaf.chain
    );
}

#[test]
fn pem_errors_name_their_origin() {
    let e = certs_from_pem(b"nothing here", "roots.pem").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("roots.pem: no \"BEGIN CERTIFICATE\""),
        "{e}"
    );
    let e = key_from_pem(b"", "key.pem").unwrap_err();
    assert!(e.to_string().starts_with("key.pem: no private key"), "{e}");
    let bad = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    let e = certs_from_pem(bad.as_bytes(), "chain.pem").unwrap_err();
    assert!(e.to_string().starts_with("chain.pem: bad PEM"), "{e}");
}

#[test]
fn files_load_and_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let mid = ca.new_intermediate(&CaOptions::new("mid")).unwrap();
    let leaf = mid
        .issue(&id("spiffe://td/ns/a/sa/b"), &LeafOptions::default())
        .unwrap();
    let chain_path = dir.path().join("cert-chain.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&chain_path, &leaf.chain_pem).unwrap();
    std::fs::write(&key_path, &leaf.key_pem).unwrap();
    assert_eq!(read_certs(&chain_path).unwrap(), leaf.chain);
    assert_eq!(
        read_key(&key_path).unwrap().secret_der(),
        leaf.key().secret_der()
    );

    let missing = dir.path().join("missing.pem");
    let e = read_certs(&missing).unwrap_err();
    assert!(matches!(e, Error::CertFileIo { .. }));
    assert!(e.to_string().contains("missing.pem"), "{e}");
    // A key file holding only certificates.
    let e = read_key(&chain_path).unwrap_err();
    assert!(
        e.to_string().contains("cert-chain.pem: no private key"),
        "{e}"
    );
}
