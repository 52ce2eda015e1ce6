//! One-shot HTTP(S) GETs from the control runtime: what the waypoint needs to fetch a
//! JWKS (`jwksUri`) or an issuer's OpenID discovery document, as istiod does for Envoy.
//!
//! Owns: the URL check, the connect (DNS, TCP, TLS 1.2 or 1.3 with ALPN `http/1.1`, the
//! server verified against the given roots), one HTTP/1.1 exchange, and the body read.
//! Invariants: every GET ends within its timeout, whatever the server does; a body larger
//! than the caller's limit is refused, not truncated or buffered; only a `200` is success,
//! and redirects are not followed (a JWKS location is configuration, not something a server
//! may move).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::grpc::RootCa;

/// What went wrong with a GET, in words that name the URL's part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GET {url}: {reason}")]
pub struct FetchError {
    pub url: String,
    pub reason: String,
}

/// Checks that `url` is an absolute `http` or `https` URL with a host, as a config check
/// would; the same rules [`get`] applies.
pub fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{url:?}: only http:// and https:// URLs can be fetched"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(uri)
}

/// GETs `url` and returns its body; `limit` bounds the body, `timeout` the whole exchange.
/// HTTPS servers are verified against `roots`.
pub async fn get(
    url: &str,
    roots: &RootCa,
    timeout: Duration,
    limit: usize,
) -> Result<Vec<u8>, FetchError> {
    let fail = |reason: String| FetchError {
        url: url.to_string(),
        reason,
    };
    let uri = check_url(url).map_err(fail)?;
    match tokio::time::timeout(timeout, exchange(&uri, roots, limit)).await {
        Ok(r) => r.map_err(fail),
        Err(_) => Err(fail(format!("no complete answer within {timeout:?}"))),
    }
}

async fn exchange(uri: &Uri, roots: &RootCa, limit: usize) -> Result<Vec<u8>, String> {
    let (resp, conn) = open(uri, roots, &[]).await?;
    let status = resp.status();
    if status != StatusCode::OK {
        conn.abort();
        return Err(format!("the server answered {status}"));
    }
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("the body is larger than {limit} bytes")
            } else {
                format!("reading the body: {e}")
            }
        })?;
    conn.abort();
    Ok(body.to_bytes().to_vec())
}

/// A GET of `uri` with extra `headers`, up to the response head: the response (its body
/// still to read) and the connection's task, which the caller aborts when done. HTTPS
/// servers are verified against `roots`. No deadline of its own: callers bound it.
pub(crate) async fn open(
    uri: &Uri,
    roots: &RootCa,
    headers: &[(http::HeaderName, String)],
) -> Result<
    (
        http::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or_default();
    // `[::1]` in a URL is `::1` to the resolver and to the certificate check.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let mut req = Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "ringmesh");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    if https {
        let config = tls_config(roots)?;
        let name = ServerName::try_from(bare.to_string())
            .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        send(TokioIo::new(tls), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<T>(
    io: T,
    req: Request<Empty<bytes::Bytes>>,
) -> Result<
    (
        http::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<()>,
    ),
    String,
>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP/1.1: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    match sender.send_request(req).await {
        Ok(resp) => Ok((resp, conn)),
        Err(e) => {
            conn.abort();
            Err(format!("HTTP/1.1: {e}"))
        }
    }
}

/// TLS 1.2 or 1.3 (public JWKS endpoints still offer 1.2), ALPN `http/1.1`, no client
/// certificate.
fn tls_config(roots: &RootCa) -> Result<ClientConfig, String> {
    let store = roots.load().map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://issuer.example/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:8080/keys").is_ok());
        for bad in ["ftp://x/y", "/keys", "https://", "not a url"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    /// A scripted server: answers each connection with `response`, once.
    async fn serve(response: &'static [u8]) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if !response.is_empty() {
                    let _ = s.write_all(response).await;
                }
                // An empty script holds the connection open without answering.
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_get_takes_only_a_whole_200_within_its_limits() {
        let ok = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"keys\":[]}").await;
        let body = get(
            &format!("http://{ok}/jwks"),
            &RootCa::System,
            Duration::from_secs(2),
            1024,
        )
        .await
        .unwrap();
        assert_eq!(body, b"{\"keys\":[]}");

        let big = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"keys\":[]}").await;
        let e = get(
            &format!("http://{big}/"),
            &RootCa::System,
            Duration::from_secs(2),
            5,
        )
        .await
        .unwrap_err();
        assert!(e.reason.contains("larger than 5 bytes"), "{e}");

        let moved = serve(b"HTTP/1.1 302 Found\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n").await;
        let e = get(
            &format!("http://{moved}/"),
            &RootCa::System,
            Duration::from_secs(2),
            1024,
        )
        .await
        .unwrap_err();
        assert!(e.reason.contains("302"), "{e}");

        let silent = serve(b"").await;
        let e = get(
            &format!("http://{silent}/"),
            &RootCa::System,
            Duration::from_millis(300),
            1024,
        )
        .await
        .unwrap_err();
        assert!(e.reason.contains("within"), "{e}");
    }
}
