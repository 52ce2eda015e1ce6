//! HBONE mTLS over real loopback sockets (std threads, no runtime), and config-building errors.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use hbone::certs::{CaOptions, CertificateAuthority, LeafOptions};
use hbone::{Error, Identity, tls};
use rustls_pki_types::CertificateDer;

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

#[test]
fn tunnel_bytes_over_loopback_tcp() {
    let ca = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let mid = ca.new_intermediate(&CaOptions::new("mid")).unwrap();
    let (cid, sid) = (
        id("spiffe://cluster.local/ns/a/sa/client"),
        id("spiffe://cluster.local/ns/b/sa/server"),
    );
    let c = mid.issue(&cid, &LeafOptions::default()).unwrap();
    let s = ca.issue(&sid, &LeafOptions::default()).unwrap();
    let roots = [ca.root_der().clone()];
    let server_cfg = tls::server_config(s.chain(), s.key(), &roots, "cluster.local").unwrap();
    let client_cfg = tls::client_config(c.chain(), c.key(), &roots, vec![sid.clone()]).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // 1 MiB echoed: many records each way, including a record split across reads.
    const LEN: usize = 1 << 20;
    let server = std::thread::spawn(move || -> anyhow::Result<Option<Identity>> {
        let (sock, _) = listener.accept()?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        let conn = rustls::ServerConnection::new(server_cfg)?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut buf = vec![0u8; LEN];
        tls.read_exact(&mut buf)?;
        tls.write_all(&buf)?;
        tls.conn.send_close_notify();
        tls.flush()?;
        Ok(tls::peer_identity(&tls.conn))
    });

    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let conn = rustls::ClientConnection::new(client_cfg, tls::server_name()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let data: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
    tls.write_all(&data).unwrap();
    let mut back = vec![0u8; LEN];
    tls.read_exact(&mut back).unwrap();
    assert!(back == data, "echoed bytes differ");
    assert_eq!(tls::peer_identity(&tls.conn), Some(sid));
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(server.join().unwrap().unwrap(), Some(cid));
}

#[test]
fn handshake_failure_over_tcp_is_an_error_on_both_sides() {
    let ca = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let c = ca
        .issue(&id("spiffe://td/ns/a/sa/c"), &LeafOptions::default())
        .unwrap();
    let s = ca
        .issue(&id("spiffe://td/ns/a/sa/s"), &LeafOptions::default())
        .unwrap();
    let roots = [ca.root_der().clone()];
    let server_cfg = tls::server_config(s.chain(), s.key(), &roots, "td").unwrap();
    let wrong = vec![id("spiffe://td/ns/a/sa/somebody-else")];
    let client_cfg = tls::client_config(c.chain(), c.key(), &roots, wrong).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut sock, _) = listener.accept()?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut conn = rustls::ServerConnection::new(server_cfg).unwrap();
        conn.complete_io(&mut sock).map(|_| ())
    });
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut conn = rustls::ClientConnection::new(client_cfg, tls::server_name()).unwrap();
    let client_err = conn.complete_io(&mut sock).unwrap_err();
    let server_err = server.join().unwrap().unwrap_err();
    assert!(
        client_err.to_string().contains("peer identity mismatch"),
        "client: {client_err}"
    );
    assert!(
        server_err.to_string().contains("CertificateUnknown"),
        "server: {server_err}"
    );
}

fn material() -> (hbone::certs::LeafCert, Vec<CertificateDer<'static>>) {
    let ca = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let leaf = ca
        .issue(&id("spiffe://td/ns/a/sa/b"), &LeafOptions::default())
        .unwrap();
    (leaf, vec![ca.root_der().clone()])
}

fn config_err(r: hbone::Result<impl Sized>) -> String {
    match r {
        Err(e @ Error::TlsConfig(_)) => e.to_string(),
        Err(e) => panic!("expected a TlsConfig error, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn config_errors_say_what_is_wrong() {
    let (leaf, roots) = material();
    let sid = vec![id("spiffe://td/ns/a/sa/b")];

    let e = config_err(tls::client_config(leaf.chain(), leaf.key(), &roots, vec![]));
    assert!(e.contains("no expected server identities"), "{e}");
    let e = config_err(tls::client_config(
        leaf.chain(),
        leaf.key(),
        &[],
        sid.clone(),
    ));
    assert!(e.contains("no trust roots"), "{e}");
    let e = config_err(tls::server_config(leaf.chain(), leaf.key(), &[], "td"));
    assert!(e.contains("no trust roots"), "{e}");
    let junk = [roots[0].clone(), CertificateDer::from(vec![1u8, 2, 3])];
    let e = config_err(tls::server_config(leaf.chain(), leaf.key(), &junk, "td"));
    assert!(e.contains("trust root #1"), "{e}");
    let e = config_err(tls::server_config(
        leaf.chain(),
        leaf.key(),
        &roots,
        "Bad Domain",
    ));
    assert!(e.contains("trust domain \"Bad Domain\""), "{e}");
    let e = config_err(tls::client_config(vec![], leaf.key(), &roots, sid.clone()));
    assert!(e.contains("certificate chain is empty"), "{e}");

    // A key that does not belong to the certificate.
    let (other, _) = material();
    let e = config_err(tls::server_config(leaf.chain(), other.key(), &roots, "td"));
    assert!(e.to_lowercase().contains("key"), "{e}");
    let e = config_err(tls::client_config(leaf.chain(), other.key(), &roots, sid));
    assert!(e.to_lowercase().contains("key"), "{e}");
}

#[test]
fn provider_offers_exactly_the_two_aes_gcm_suites() {
    let p = tls::provider();
    let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
    assert_eq!(
        suites,
        [
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        ]
    );
    let (leaf, roots) = material();
    let cc = tls::client_config(
        leaf.chain(),
        leaf.key(),
        &roots,
        vec![leaf.identity.clone()],
    )
    .unwrap();
    assert!(!cc.enable_sni);
    assert_eq!(cc.alpn_protocols, vec![b"h2".to_vec()]);
    let sc = tls::server_config(leaf.chain(), leaf.key(), &roots, "td").unwrap();
    assert_eq!(sc.alpn_protocols, vec![b"h2".to_vec()]);
}
