//! A scripted web server for documents a proxy fetches (a JWKS, an OpenID discovery
//! document): plain HTTP or HTTPS with a certificate for its IP from a CA of its own, paths
//! and bodies changeable while it runs, every request counted.
//!
//! One request per connection (`connection: close`), a thread per connection; a path not
//! scripted answers 404.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use hbone::certs::{CaOptions, CertificateAuthority};

/// A running server; stops when dropped.
pub struct WebServer {
    pub addr: SocketAddr,
    /// `http://ADDR` or `https://ADDR`.
    pub base: String,
    docs: Arc<Mutex<HashMap<String, String>>>,
    hits: Arc<Mutex<HashMap<String, u32>>>,
    /// The CA that signed the HTTPS certificate, as PEM (for `SSL_CERT_FILE`).
    pub ca_pem: Option<String>,
    stop: Arc<AtomicBool>,
}

impl WebServer {
    /// Plain HTTP on `addr`.
    pub fn http(addr: SocketAddr) -> Result<WebServer> {
        WebServer::start(addr, None)
    }

    /// HTTPS on `addr`, with a certificate for its IP.
    pub fn https(addr: SocketAddr) -> Result<WebServer> {
        let (config, ca_pem) = tls_for(addr.ip())?;
        let mut s = WebServer::start(addr, Some(config))?;
        s.ca_pem = Some(ca_pem);
        Ok(s)
    }

    fn start(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Result<WebServer> {
        let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let docs: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (d, h, st) = (docs.clone(), hits.clone(), stop.clone());
        accept_threads(listener, st, move |s| {
            let _ = serve(s, tls.clone(), &d, &h);
        });
        Ok(WebServer {
            addr,
            base: format!("{scheme}://{addr}"),
            docs,
            hits,
            ca_pem: None,
            stop,
        })
    }

    /// Serves `body` (JSON) at `path` from now on.
    pub fn set(&self, path: &str, body: &str) {
        self.docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), body.to_string());
    }

    /// Requests for `path` so far.
    pub fn hits(&self, path: &str) -> u32 {
        self.hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    s: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    docs: &Mutex<HashMap<String, String>>,
    hits: &Mutex<HashMap<String, u32>>,
) -> Result<()> {
    match tls {
        None => exchange(s, docs, hits),
        Some(config) => {
            let conn = rustls::ServerConnection::new(config)?;
            exchange(rustls::StreamOwned::new(conn, s), docs, hits)
        }
    }
}

fn exchange(
    mut s: impl Read + Write,
    docs: &Mutex<HashMap<String, String>>,
    hits: &Mutex<HashMap<String, u32>>,
) -> Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if s.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    *hits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(path.clone())
        .or_default() += 1;
    let doc = docs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&path)
        .cloned();
    let (status, body) = match doc {
        Some(b) => ("200 OK", b),
        None => ("404 Not Found", String::new()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes())?;
    s.flush()?;
    Ok(())
}

/// A TLS server config with a certificate for `ip` from a new CA, and that CA as PEM.
pub fn tls_for(ip: std::net::IpAddr) -> Result<(Arc<rustls::ServerConfig>, String)> {
    let (cert, key, ca) = leaf_for(ip)?;
    let chain = vec![cert.der().clone()];
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("key: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    Ok((Arc::new(config), ca))
}

/// [`tls_for`]'s certificate as PEM, for servers that take PEM (tonic's): (certificate,
/// key, the CA's root).
pub fn pem_for(ip: std::net::IpAddr) -> Result<(String, String, String)> {
    let (cert, key, ca) = leaf_for(ip)?;
    Ok((cert.pem(), key.serialize_pem(), ca))
}

/// A certificate for `ip` (its only name) from a new CA of its own; with its key and the
/// CA's root (PEM).
fn leaf_for(ip: std::net::IpAddr) -> Result<(rcgen::Certificate, rcgen::KeyPair, String)> {
    let ca = CertificateAuthority::new_root(&CaOptions::new("web test root"))?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    params.distinguished_name = rcgen::DistinguishedName::new();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca.root_pem(), rcgen::KeyPair::from_pem(ca.key_pem())?)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert, key, ca.root_pem()))
}

/// Accepts on `listener` (non-blocking) until `stop`, and runs `handle` on a thread of its
/// own for each connection (blocking, with a 5 s read timeout).
pub fn accept_threads(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    let handle = handle.clone();
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        handle(s);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
}
