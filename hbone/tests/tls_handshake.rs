//! HBONE mTLS handshakes between configs from `hbone::tls`, pumped in memory (no sockets, no
//! runtime): the accepted cases and every rejection, each checked on both sides.

use std::sync::Arc;

use hbone::Identity;
use hbone::certs::{
    CaOptions, CertificateAuthority, KeyAlgorithm, LeafCert, LeafOptions, Validity, certs_from_pem,
    read_certs,
};
use hbone::tls;
use rustls::{AlertDescription, CertificateError, ClientConfig, Connection, ServerConfig};
use rustls_pki_types::CertificateDer;

const TD: &str = "cluster.local";

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn client_id() -> Identity {
    id("spiffe://cluster.local/ns/client/sa/curl")
}

fn server_id() -> Identity {
    id("spiffe://cluster.local/ns/server/sa/httpbin")
}

fn root(name: &str) -> CertificateAuthority {
    CertificateAuthority::new_root(&CaOptions::new(name)).unwrap()
}

fn leaf(ca: &CertificateAuthority, who: &Identity) -> LeafCert {
    ca.issue(who, &LeafOptions::default()).unwrap()
}

fn server_cfg(leaf: &LeafCert, roots: &[CertificateDer<'_>]) -> Arc<ServerConfig> {
    tls::server_config(leaf.chain(), leaf.key(), roots, TD).unwrap()
}

fn client_cfg(
    leaf: &LeafCert,
    roots: &[CertificateDer<'_>],
    expect: &Identity,
) -> Arc<ClientConfig> {
    tls::client_config(leaf.chain(), leaf.key(), roots, vec![expect.clone()]).unwrap()
}

/// Both ends of one handshake after it ran to completion or failure.
struct Outcome {
    client: Connection,
    server: Connection,
    client_err: Option<rustls::Error>,
    server_err: Option<rustls::Error>,
}

/// Move bytes between the two connections until neither has anything to send; a side that
/// failed still sends its alert but is fed nothing more.
fn handshake(client_cfg: Arc<ClientConfig>, server_cfg: Arc<ServerConfig>) -> Outcome {
    let mut client: Connection = rustls::ClientConnection::new(client_cfg, tls::server_name())
        .unwrap()
        .into();
    let mut server: Connection = rustls::ServerConnection::new(server_cfg).unwrap().into();
    let (mut client_err, mut server_err) = (None, None);
    // A TLS 1.3 handshake is two flights each way; 16 rounds is far more than any needs.
    for _ in 0..16 {
        let a = transfer(&mut client, &mut server, &mut server_err);
        let b = transfer(&mut server, &mut client, &mut client_err);
        if !a && !b {
            break;
        }
    }
    Outcome {
        client,
        server,
        client_err,
        server_err,
    }
}

/// Send everything `from` has queued to `to`; returns whether any bytes moved.
fn transfer(
    from: &mut Connection,
    to: &mut Connection,
    to_err: &mut Option<rustls::Error>,
) -> bool {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    if buf.is_empty() {
        return false;
    }
    if to_err.is_some() {
        return true;
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        if to.read_tls(&mut rd).unwrap() == 0 {
            break;
        }
        if let Err(e) = to.process_new_packets() {
            *to_err = Some(e);
            break;
        }
    }
    true
}

impl Outcome {
    fn assert_ok(&mut self) {
        assert!(self.client_err.is_none(), "client: {:?}", self.client_err);
        assert!(self.server_err.is_none(), "server: {:?}", self.server_err);
        assert!(!self.client.is_handshaking());
        assert!(!self.server.is_handshaking());
        // Application data flows both ways.
        use std::io::{Read, Write};
        self.client.writer().write_all(b"ping").unwrap();
        let mut none = None;
        transfer(&mut self.client, &mut self.server, &mut none);
        let mut got = [0u8; 4];
        self.server.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        self.server.writer().write_all(b"pong").unwrap();
        transfer(&mut self.server, &mut self.client, &mut none);
        self.client.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        assert!(none.is_none(), "{none:?}");
    }

    /// The client failed with `client`, and the server saw the client's alert `alert`.
    fn assert_client_rejected(&self, alert: AlertDescription) -> &rustls::Error {
        let c = self.client_err.as_ref().expect("client should have failed");
        let s = self.server_err.as_ref().expect("server should have failed");
        assert_eq!(s, &rustls::Error::AlertReceived(alert), "server saw {s:?}");
        c
    }

    /// The server failed, and the client saw the server's alert `alert`.
    fn assert_server_rejected(&self, alert: AlertDescription) -> &rustls::Error {
        let c = self.client_err.as_ref().expect("client should have failed");
        let s = self.server_err.as_ref().expect("server should have failed");
        assert_eq!(c, &rustls::Error::AlertReceived(alert), "client saw {c:?}");
        s
    }
}

/// The message a caller would log, through the crate's error type.
fn message(e: &rustls::Error) -> String {
    hbone::Error::Tls(e.clone()).to_string()
}

#[test]
fn identities_both_ways() {
    let ca = root("root");
    let (c, s) = (leaf(&ca, &client_id()), leaf(&ca, &server_id()));
    let roots = [ca.root_der().clone()];
    let mut out = handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots));
    out.assert_ok();
    assert_eq!(tls::peer_identity(&out.server), Some(client_id()));
    assert_eq!(tls::peer_identity(&out.client), Some(server_id()));
    for conn in [&out.client, &out.server] {
        assert!(tls::negotiated_h2(conn));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            conn.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
    let Connection::Server(server) = &out.server else {
        unreachable!()
    };
    assert_eq!(server.server_name(), None, "client must send no SNI");
}

#[test]
fn server_accepts_any_expected_identity() {
    let ca = root("root");
    let (c, s) = (leaf(&ca, &client_id()), leaf(&ca, &server_id()));
    let roots = [ca.root_der().clone()];
    let expected = vec![id("spiffe://cluster.local/ns/other/sa/x"), server_id()];
    let cc = tls::client_config(c.chain(), c.key(), &roots, expected).unwrap();
    handshake(cc, server_cfg(&s, &roots)).assert_ok();
}

#[test]
fn client_rejects_untrusted_server_root() {
    let (ca, rogue) = (root("root"), root("rogue"));
    let (c, s) = (leaf(&ca, &client_id()), leaf(&rogue, &server_id()));
    let roots = [ca.root_der().clone()];
    let out = handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots));
    let e = out.assert_client_rejected(AlertDescription::UnknownCA);
    assert_eq!(
        e,
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert!(message(e).contains("UnknownIssuer"), "{}", message(e));
}

#[test]
fn server_rejects_untrusted_client_root() {
    let (ca, rogue) = (root("root"), root("rogue"));
    let (c, s) = (leaf(&rogue, &client_id()), leaf(&ca, &server_id()));
    let roots = [ca.root_der().clone()];
    let out = handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots));
    let e = out.assert_server_rejected(AlertDescription::UnknownCA);
    assert_eq!(
        e,
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[test]
fn client_rejects_wrong_server_san() {
    let ca = root("root");
    let impostor = id("spiffe://cluster.local/ns/server/sa/impostor");
    let (c, s) = (leaf(&ca, &client_id()), leaf(&ca, &impostor));
    let roots = [ca.root_der().clone()];
    let out = handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots));
    let e = out.assert_client_rejected(AlertDescription::CertificateUnknown);
    match tls::verifier_error(e) {
        Some(hbone::Error::UnexpectedPeerIdentity {
            expected,
            presented,
        }) => {
            assert_eq!(expected, &vec![server_id()]);
            assert_eq!(presented, &vec![impostor.clone()]);
        }
        other => panic!("expected an identity mismatch, got {other:?} from {e:?}"),
    }
    let m = message(e);
    assert!(
        m.contains("peer identity mismatch")
            && m.contains(&server_id().to_string())
            && m.contains(&impostor.to_string()),
        "{m}"
    );
}

#[test]
fn server_requires_client_certificate() {
    let ca = root("root");
    let s = leaf(&ca, &server_id());
    let roots = [ca.root_der().clone()];
    let verifier = tls::SpiffeServerVerifier::new(
        tls::root_store(&roots).unwrap(),
        vec![server_id()],
        tls::provider(),
    );
    let mut anonymous = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    let out = handshake(Arc::new(anonymous), server_cfg(&s, &roots));
    let e = out.assert_server_rejected(AlertDescription::CertificateRequired);
    assert_eq!(e, &rustls::Error::NoCertificatesPresented);
    assert!(message(e).contains("no certificates"), "{}", message(e));
}

#[test]
fn server_rejects_client_in_other_trust_domain() {
    let ca = root("root");
    let foreign = id("spiffe://other.domain/ns/client/sa/curl");
    let (c, s) = (leaf(&ca, &foreign), leaf(&ca, &server_id()));
    let roots = [ca.root_der().clone()];
    let out = handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots));
    let e = out.assert_server_rejected(AlertDescription::CertificateUnknown);
    match tls::verifier_error(e) {
        Some(hbone::Error::WrongTrustDomain {
            trust_domain,
            presented,
        }) => {
            assert_eq!(trust_domain, TD);
            assert_eq!(presented, &vec![foreign.clone()]);
        }
        other => panic!("expected a trust-domain rejection, got {other:?} from {e:?}"),
    }
    let m = message(e);
    assert!(m.contains("outside trust domain \"cluster.local\""), "{m}");
    assert!(m.contains("spiffe://other.domain/ns/client/sa/curl"), "{m}");
}

#[test]
fn server_rejects_client_without_spiffe_identity() {
    // A certificate from the trusted CA whose only URI SAN is not a SPIFFE ID.
    let ca = root("root");
    let s = leaf(&ca, &server_id());
    let roots = [ca.root_der().clone()];
    let pem = format!("{}{}", ca.cert_pem(), ca.key_pem());
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&pem, rcgen::KeyPair::from_pem(ca.key_pem()).unwrap())
            .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "https://example.com/".try_into().unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let verifier = tls::SpiffeServerVerifier::new(
        tls::root_store(&roots).unwrap(),
        vec![server_id()],
        tls::provider(),
    );
    let mut cc = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    cc.alpn_protocols = vec![b"h2".to_vec()];
    let out = handshake(Arc::new(cc), server_cfg(&s, &roots));
    let e = out.assert_server_rejected(AlertDescription::CertificateUnknown);
    assert!(
        matches!(tls::verifier_error(e), Some(hbone::Error::WrongTrustDomain { presented, .. }) if presented.is_empty()),
        "{e:?}"
    );
}

fn expired_leaf(ca: &CertificateAuthority, who: &Identity) -> LeafCert {
    ca.issue(
        who,
        &LeafOptions {
            validity: Validity::expired(),
            ..LeafOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn client_rejects_expired_server_certificate() {
    let ca = root("root");
    let (c, s) = (leaf(&ca, &client_id()), expired_leaf(&ca, &server_id()));
    let roots = [ca.root_der().clone()];
    let out = handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots));
    let e = out.assert_client_rejected(AlertDescription::CertificateExpired);
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{e:?}"
    );
    assert!(message(e).contains("certificate expired"), "{}", message(e));
}

#[test]
fn server_rejects_expired_client_certificate() {
    let ca = root("root");
    let (c, s) = (expired_leaf(&ca, &client_id()), leaf(&ca, &server_id()));
    let roots = [ca.root_der().clone()];
    let out = handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots));
    let e = out.assert_server_rejected(AlertDescription::CertificateExpired);
    assert!(message(e).contains("certificate expired"), "{}", message(e));
}

/// The aws-lc-rs provider with its TLS 1.2 suites, limited to TLS 1.2.
fn tls12_only() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[test]
fn server_rejects_tls12_only_client() {
    let ca = root("root");
    let (c, s) = (leaf(&ca, &client_id()), leaf(&ca, &server_id()));
    let roots = [ca.root_der().clone()];
    let verifier = tls::SpiffeServerVerifier::new(
        tls::root_store(&roots).unwrap(),
        vec![server_id()],
        tls::provider(),
    );
    let mut old = ClientConfig::builder_with_provider(tls12_only())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(c.chain(), c.key())
        .unwrap();
    old.alpn_protocols = vec![b"h2".to_vec()];
    let out = handshake(Arc::new(old), server_cfg(&s, &roots));
    let e = out.assert_server_rejected(AlertDescription::ProtocolVersion);
    assert!(matches!(e, rustls::Error::PeerIncompatible(_)), "{e:?}");
    assert!(
        message(e).to_lowercase().contains("peer is incompatible"),
        "{}",
        message(e)
    );
}

#[test]
fn client_rejects_tls12_only_server() {
    let ca = root("root");
    let (c, s) = (leaf(&ca, &client_id()), leaf(&ca, &server_id()));
    let roots = [ca.root_der().clone()];
    let mut old = ServerConfig::builder_with_provider(tls12_only())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(s.chain(), s.key())
        .unwrap();
    old.alpn_protocols = vec![b"h2".to_vec()];
    let out = handshake(client_cfg(&c, &roots, &server_id()), Arc::new(old));
    // The TLS 1.2 server finds no common version in our TLS 1.3-only hello and says so.
    let e = out.assert_server_rejected(AlertDescription::ProtocolVersion);
    assert!(matches!(e, rustls::Error::PeerIncompatible(_)), "{e:?}");
}

#[test]
fn server_rejects_client_without_h2_alpn() {
    let ca = root("root");
    let (c, s) = (leaf(&ca, &client_id()), leaf(&ca, &server_id()));
    let roots = [ca.root_der().clone()];
    let mut cc = (*client_cfg(&c, &roots, &server_id())).clone();
    cc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let out = handshake(Arc::new(cc), server_cfg(&s, &roots));
    let e = out.assert_server_rejected(AlertDescription::NoApplicationProtocol);
    assert_eq!(e, &rustls::Error::NoApplicationProtocol);
}

#[test]
fn rsa_chains_both_ways() {
    let rsa = CaOptions {
        algorithm: KeyAlgorithm::Rsa2048,
        ..CaOptions::new("rsa root")
    };
    let ca = CertificateAuthority::new_root(&rsa).unwrap();
    let rsa_leaf = LeafOptions {
        algorithm: KeyAlgorithm::Rsa2048,
        ..LeafOptions::default()
    };
    let c = ca.issue(&client_id(), &rsa_leaf).unwrap();
    // An ECDSA leaf under the RSA root: mixed chains work too.
    let s = leaf(&ca, &server_id());
    let roots = [ca.root_der().clone()];
    let mut out = handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots));
    out.assert_ok();
    assert_eq!(tls::peer_identity(&out.server), Some(client_id()));
    // And an RSA server leaf.
    let s = ca.issue(&server_id(), &rsa_leaf).unwrap();
    handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots)).assert_ok();
}

#[test]
fn intermediate_chains_both_ways() {
    let ca = root("root");
    let mid = ca.new_intermediate(&CaOptions::new("mid")).unwrap();
    let (c, s) = (leaf(&mid, &client_id()), leaf(&mid, &server_id()));
    assert_eq!(c.chain.len(), 2);
    let roots = [ca.root_der().clone()];
    let mut out = handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots));
    out.assert_ok();
    assert_eq!(tls::peer_identity(&out.server), Some(client_id()));
    assert_eq!(tls::peer_identity(&out.client), Some(server_id()));

    // A leaf sent without its intermediate does not chain.
    let bare = LeafCert {
        chain: c.chain[..1].to_vec(),
        ..c.clone()
    };
    let out = handshake(
        client_cfg(&bare, &roots, &server_id()),
        server_cfg(&s, &roots),
    );
    let e = out.assert_server_rejected(AlertDescription::UnknownCA);
    assert_eq!(
        e,
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[test]
fn bundle_with_several_roots() {
    let (a, b) = (root("root a"), root("root b"));
    let (c, s) = (leaf(&a, &client_id()), leaf(&b, &server_id()));
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("root-cert.pem");
    std::fs::write(&bundle, format!("{}{}", a.root_pem(), b.root_pem())).unwrap();
    let roots = read_certs(&bundle).unwrap();
    assert_eq!(roots.len(), 2);
    let mut out = handshake(client_cfg(&c, &roots, &server_id()), server_cfg(&s, &roots));
    out.assert_ok();
    assert_eq!(tls::peer_identity(&out.server), Some(client_id()));

    // With only one of the two roots, the other side's chain is rejected.
    let only_a = certs_from_pem(a.root_pem().as_bytes(), "a").unwrap();
    let out = handshake(
        client_cfg(&c, &only_a, &server_id()),
        server_cfg(&s, &roots),
    );
    out.assert_client_rejected(AlertDescription::UnknownCA);
}
