//! TLS record-layer throughput of the HBONE configs (`hbone::tls`), in memory: how many bytes
//! per second one core can push through rustls (seal on the client, open on the server) with
//! each of the two negotiated suites. No sockets, so this is the crypto + framing cost alone,
//! the floor under any HBONE tunnel's CPU per byte.
//!
//! The same bytes then go through this crate's own record layer (`hbone::tls::record`, what
//! HBONE streams use after the handshake): sealed from the caller's slice into the output,
//! opened in place and copied once into the reader's buffer, as `TlsStream` does for h2.
//!
//! Run: `cargo bench -p ringmesh-hbone --bench crypto_record` (`-- --quick` for a short run).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::certs::{CaOptions, CertificateAuthority, LeafOptions};
use hbone::tls;
use rustls::{ClientConnection, Connection, ServerConnection, SupportedCipherSuite};

/// Application writes of 64 KiB, the relay's bulk buffer size (DESIGN.md "Buffer size
/// dominates copy loops"); rustls cuts them into 16 KiB records.
const CHUNK: usize = 64 * 1024;

fn pump(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets().unwrap();
    }
}

fn run(suite: SupportedCipherSuite, budget: Duration) -> f64 {
    let ca = CertificateAuthority::new_root(&CaOptions::new("bench root")).unwrap();
    let cid = "spiffe://cluster.local/ns/a/sa/client".parse().unwrap();
    let sid: hbone::Identity = "spiffe://cluster.local/ns/b/sa/server".parse().unwrap();
    let c = ca.issue(&cid, &LeafOptions::default()).unwrap();
    let s = ca.issue(&sid, &LeafOptions::default()).unwrap();
    let roots = [ca.root_der().clone()];
    let server_cfg = tls::server_config(s.chain(), s.key(), &roots, "cluster.local").unwrap();

    // The HBONE client config, but offering only `suite`, so the server must pick it.
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..(*tls::provider()).clone()
    });
    let verifier = tls::SpiffeServerVerifier::new(
        tls::root_store(&roots).unwrap(),
        vec![sid],
        provider.clone(),
    );
    let mut client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(c.chain(), c.key())
        .unwrap();
    client_cfg.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
    client_cfg.enable_sni = false;

    let mut client: Connection = ClientConnection::new(Arc::new(client_cfg), tls::server_name())
        .unwrap()
        .into();
    let mut server: Connection = ServerConnection::new(server_cfg).unwrap().into();
    let mut buf = Vec::with_capacity(2 * CHUNK);
    while client.is_handshaking() || server.is_handshaking() {
        pump(&mut client, &mut server, &mut buf);
        pump(&mut server, &mut client, &mut buf);
    }
    assert_eq!(
        client.negotiated_cipher_suite().map(|s| s.suite()),
        Some(suite.suite())
    );

    let data = vec![0x5au8; CHUNK];
    let mut sink = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut bytes = 0u64;
    // Bounded by time and by volume (64 GiB).
    while start.elapsed() < budget && bytes < 64 << 30 {
        for _ in 0..16 {
            client.writer().write_all(&data).unwrap();
            buf.clear();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            // Feed record by record, draining plaintext as we go (rustls bounds how much
            // decrypted data it holds unread).
            let (mut rd, mut got) = (&buf[..], 0);
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
                loop {
                    match server.reader().read(&mut sink) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            assert_eq!(got, CHUNK);
            bytes += CHUNK as u64;
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// The same work through `hbone::tls::record`: records sealed from the application's slice,
/// opened in place, content copied to the reader. AES-256-GCM (rustls makes a 16-byte
/// `AeadKey` only inside its crate), so compare with the AES-256 row.
fn ours(budget: Duration) -> f64 {
    use hbone::tls::record::{ContentType, Direction, MAX_PLAINTEXT, OVERHEAD, record_len};
    use rustls::crypto::cipher::{AeadKey, Iv};
    let secrets = || rustls::ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from([7; 32]),
        iv: Iv::new([3; 12]),
    };
    let (mut tx, mut rx) = (
        Direction::new(&secrets(), 0).unwrap(),
        Direction::new(&secrets(), 0).unwrap(),
    );
    let data = vec![0x5au8; CHUNK];
    let mut wire = vec![0u8; CHUNK + 4 * OVERHEAD];
    let mut sink = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < budget && bytes < 64 << 30 {
        for _ in 0..16 {
            let mut at = 0;
            for chunk in data.chunks(MAX_PLAINTEXT) {
                at += tx.seal_to(ContentType::ApplicationData, chunk, &mut wire[at..]);
            }
            let (mut rd, mut got) = (0, 0);
            while rd < at {
                let len = record_len(&wire[rd..]).unwrap();
                let (_, range) = rx.open(&mut wire[rd..rd + len]).unwrap();
                let n = range.len();
                sink[got..got + n].copy_from_slice(&wire[rd + range.start..rd + range.end]);
                got += n;
                rd += len;
            }
            assert_eq!(got, CHUNK);
            bytes += CHUNK as u64;
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 300 } else { 1500 });
    let rounds = if quick { 1 } else { 3 };
    println!("rustls record layer through hbone::tls configs, client seal + server open, one core");
    println!("MB/s of application data (best of {rounds} rounds of {budget:?})");
    let suites = [
        (
            "TLS13_AES_128_GCM_SHA256",
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            "TLS13_AES_256_GCM_SHA384",
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ),
    ];
    let mut best = [0f64; 2];
    let mut own = 0f64;
    for _ in 0..rounds {
        for (i, (_, suite)) in suites.iter().enumerate() {
            best[i] = best[i].max(run(*suite, budget));
        }
        own = own.max(ours(budget));
    }
    for (i, (name, _)) in suites.iter().enumerate() {
        println!("{name:<26} {:>8.0}", best[i]);
    }
    println!("{:<26} {own:>8.0}", "hbone::tls::record AES-256");
}
