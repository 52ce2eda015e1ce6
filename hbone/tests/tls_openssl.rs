//! Interop of the HBONE TLS configs with an independent TLS stack: OpenSSL's `s_client` and
//! `s_server`, configured like an HBONE peer (TLS 1.3 only, ALPN h2, no SNI, client
//! certificate required, chains verified to the mesh root). Real processes on loopback.
//!
//! Skipped (with a message) when no `openssl` binary is on PATH; CI images have one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hbone::certs::{CaOptions, CertificateAuthority, LeafCert, LeafOptions};
use hbone::{Identity, tls};

const TIMEOUT: Duration = Duration::from_secs(20);

fn openssl_available() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: no openssl binary on PATH");
    }
    ok
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// A started `openssl` process, killed and reaped when dropped (even if the test panics).
struct Proc {
    child: Child,
    // Held open until drop: closing stdin could end the tool before the test is done.
    _stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str], stdin: &[u8]) -> Proc {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start openssl");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child,
            _stdin: input,
            lines,
        }
    }

    /// Wait (bounded) for a line containing `needle`; returns it. Panics with everything
    /// seen so far if it does not come.
    fn wait_for(&self, needle: &str) -> String {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "openssl never printed {needle:?}; output:\n{}",
            seen.join("\n")
        );
    }

    /// All output until the process exits (bounded by [`TIMEOUT`]).
    fn output_until_exit(&mut self) -> String {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("openssl did not exit; output so far:\n{}", seen.join("\n"))
                }
            }
        }
        seen.join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Files {
    _dir: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
}

impl Files {
    fn new(ca: &CertificateAuthority) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root-cert.pem");
        std::fs::write(&root, ca.root_pem()).unwrap();
        Files {
            dir: dir.path().to_owned(),
            _dir: dir,
            root,
        }
    }

    /// Write a leaf's chain and key; returns (chain path, key path).
    fn leaf(&self, name: &str, leaf: &LeafCert) -> (PathBuf, PathBuf) {
        let chain = self.dir.join(format!("{name}-chain.pem"));
        let key = self.dir.join(format!("{name}-key.pem"));
        std::fs::write(&chain, &leaf.chain_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        (chain, key)
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Our HBONE server config on a loopback listener in a thread: echoes one line back prefixed
/// with "echo:", then closes. Returns the address and a handle giving the peer identity or
/// the handshake error.
fn rustls_server(
    leaf: &LeafCert,
    ca: &CertificateAuthority,
) -> (
    SocketAddr,
    std::thread::JoinHandle<Result<Option<Identity>, std::io::Error>>,
) {
    let cfg = tls::server_config(
        leaf.chain(),
        leaf.key(),
        &[ca.root_der().clone()],
        "cluster.local",
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept()?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        let mut conn = rustls::ServerConnection::new(cfg).unwrap();
        conn.complete_io(&mut sock)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        let peer = tls::peer_identity(&conn);
        let mut stream = rustls::Stream::new(&mut conn, &mut sock);
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            stream.read_exact(&mut byte)?;
            line.push(byte[0]);
        }
        stream.write_all(b"echo:")?;
        stream.write_all(&line)?;
        stream.conn.send_close_notify();
        stream.flush()?;
        Ok(peer)
    });
    (addr, handle)
}

#[test]
fn openssl_client_to_hbone_server() {
    if !openssl_available() {
        return;
    }
    let ca = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let cid = id("spiffe://cluster.local/ns/client/sa/openssl");
    let client = ca.issue(&cid, &LeafOptions::default()).unwrap();
    let server = ca
        .issue(
            &id("spiffe://cluster.local/ns/server/sa/hbone"),
            &LeafOptions::default(),
        )
        .unwrap();
    let files = Files::new(&ca);
    let (cchain, ckey) = files.leaf("client", &client);
    let (addr, handle) = rustls_server(&server, &ca);

    let connect = addr.to_string();
    let mut s_client = Proc::spawn(
        &[
            "s_client",
            "-connect",
            &connect,
            "-tls1_3",
            "-alpn",
            "h2",
            "-noservername",
            "-cert",
            p(&cchain),
            "-key",
            p(&ckey),
            "-CAfile",
            p(&files.root),
            "-verify_return_error",
            "-ign_eof",
        ],
        b"hello from openssl\n",
    );
    let out = s_client.output_until_exit();
    let peer = handle.join().unwrap().expect("server side");
    assert_eq!(peer, Some(cid));
    assert!(out.contains("echo:hello from openssl"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
}

#[test]
fn openssl_client_without_certificate_is_refused() {
    if !openssl_available() {
        return;
    }
    let ca = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let server = ca
        .issue(
            &id("spiffe://cluster.local/ns/server/sa/hbone"),
            &LeafOptions::default(),
        )
        .unwrap();
    let files = Files::new(&ca);
    let (addr, handle) = rustls_server(&server, &ca);
    let connect = addr.to_string();
    let mut s_client = Proc::spawn(
        &[
            "s_client",
            "-connect",
            &connect,
            "-tls1_3",
            "-alpn",
            "h2",
            "-noservername",
            "-CAfile",
            p(&files.root),
            "-ign_eof",
        ],
        b"hello\n",
    );
    let out = s_client.output_until_exit();
    let err = handle.join().unwrap().expect_err("server must refuse");
    assert!(
        err.to_string().contains("no certificates"),
        "server error: {err}"
    );
    assert!(out.contains("certificate required"), "{out}");
    assert!(!out.contains("echo:"), "{out}");
}

/// `openssl s_server` set up as an HBONE server: TLS 1.3, ALPN h2, client cert required and
/// verified to the root; `-rev` echoes each line reversed.
fn s_server(files: &Files, leaf: &LeafCert, name: &str) -> (Proc, SocketAddr) {
    let (chain, key) = files.leaf(name, leaf);
    let proc = Proc::spawn(
        &[
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-naccept",
            "1",
            "-tls1_3",
            "-alpn",
            "h2",
            "-cert",
            p(&chain),
            "-key",
            p(&key),
            "-CAfile",
            p(&files.root),
            "-Verify",
            "1",
            "-verify_return_error",
            "-rev",
        ],
        b"",
    );
    let line = proc.wait_for("ACCEPT");
    let addr = line
        .trim()
        .trim_start_matches("ACCEPT ")
        .parse()
        .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    (proc, addr)
}

#[test]
fn hbone_client_to_openssl_server() {
    if !openssl_available() {
        return;
    }
    let ca = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let sid = id("spiffe://cluster.local/ns/server/sa/openssl");
    let server = ca.issue(&sid, &LeafOptions::default()).unwrap();
    let client = ca
        .issue(
            &id("spiffe://cluster.local/ns/client/sa/hbone"),
            &LeafOptions::default(),
        )
        .unwrap();
    let files = Files::new(&ca);
    let (mut proc, addr) = s_server(&files, &server, "server");

    let cfg = tls::client_config(
        client.chain(),
        client.key(),
        &[ca.root_der().clone()],
        vec![sid.clone()],
    )
    .unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, tls::server_name()).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    assert_eq!(tls::peer_identity(&conn), Some(sid));
    assert!(tls::negotiated_h2(&conn));
    let mut stream = rustls::Stream::new(&mut conn, &mut sock);
    stream.write_all(b"hbone\n").unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        stream.read_exact(&mut byte).unwrap();
        got.push(byte[0]);
    }
    assert_eq!(String::from_utf8_lossy(&got).trim(), "enobh");
    drop(sock);
    let out = proc.output_until_exit();
    // OpenSSL's view: TLS 1.3, h2, and our client certificate verified to the root.
    assert!(out.contains("Protocol version: TLSv1.3"), "{out}");
    assert!(out.contains("ALPN protocols selected: h2"), "{out}");
    assert!(out.contains("Verification: OK"), "{out}");
}

#[test]
fn hbone_client_refuses_openssl_server_with_wrong_identity() {
    if !openssl_available() {
        return;
    }
    let ca = CertificateAuthority::new_root(&CaOptions::new("root")).unwrap();
    let server = ca
        .issue(
            &id("spiffe://cluster.local/ns/server/sa/impostor"),
            &LeafOptions::default(),
        )
        .unwrap();
    let client = ca
        .issue(
            &id("spiffe://cluster.local/ns/client/sa/hbone"),
            &LeafOptions::default(),
        )
        .unwrap();
    let files = Files::new(&ca);
    let (mut proc, addr) = s_server(&files, &server, "server");
    let expected = id("spiffe://cluster.local/ns/server/sa/real");
    let cfg = tls::client_config(
        client.chain(),
        client.key(),
        &[ca.root_der().clone()],
        vec![expected],
    )
    .unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, tls::server_name()).unwrap();
    let err = loop {
        match conn.complete_io(&mut sock) {
            Err(e) => break e,
            Ok(_) if !conn.is_handshaking() => panic!("handshake must fail"),
            Ok(_) => {}
        }
    };
    assert!(err.to_string().contains("peer identity mismatch"), "{err}");
    drop(sock);
    let out = proc.output_until_exit();
    assert!(out.contains("certificate unknown"), "{out}");
}
