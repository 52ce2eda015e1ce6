//! The pool against scripted HTTP/2 servers over mTLS: a request the peer refuses unprocessed
//! (GOAWAY below its stream id) is retried on a fresh connection, and a peer that allows no
//! streams at all fails the dial instead of being dialed forever.

mod h2_scripted_util;
mod tunnel_util;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Result, bail, ensure};
use h2_scripted_util::{ACK, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, Peer, SETTINGS};
use hbone::Error;
use hbone::pool::{Pool, PoolConfig, PoolKey};
use hbone::wire::ConnectRequest;
use runtime::DriverChoice;
use runtime::net::TcpListener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_util::{Pki, deadline, id, run};

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Accepts connections forever; each is TLS-accepted and handed to `script` with its index.
fn scripted_tls_server<F, Fut>(pki: &Pki, script: F) -> Result<SocketAddr>
where
    F: Fn(usize, Peer) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<()>> + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_tls(&id("server")));
    runtime::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let Ok(peer) = Peer::accept(tls).await else {
                continue;
            };
            runtime::spawn(script(n, peer)).detach();
            n += 1;
        }
    })
    .detach();
    Ok(addr)
}

/// Answers the client's first PING (its wait for our SETTINGS).
async fn answer_first_ping(peer: &mut Peer) -> Result<()> {
    let ping = peer
        .next_where(|f| f.kind == PING && f.flags & ACK == 0)
        .await?;
    peer.send_frame(PING, ACK, 0, &ping.payload).await
}

fn pool(pki: Rc<Pki>) -> Pool {
    Pool::new(
        PoolConfig::default(),
        move |key: &PoolKey| -> hbone::Result<Arc<rustls::ClientConfig>> {
            Ok(pki.client_tls(&key.src, &key.dst_ids))
        },
    )
}

#[test]
fn request_refused_by_goaway_is_retried_on_a_new_connection() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Rc::new(Pki::new());
        let refused = Rc::new(Cell::new(0usize));
        let refused2 = refused.clone();
        let addr = scripted_tls_server(&pki, move |n, mut peer| {
            let refused = refused2.clone();
            async move {
                answer_first_ping(&mut peer).await?;
                let h = peer.next_where(|f| f.kind == HEADERS).await?;
                if n == 0 {
                    // Draining: GOAWAY with last stream 0 — the request was not processed.
                    peer.send_frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0])
                        .await?;
                    refused.set(refused.get() + 1);
                } else {
                    peer.send_frame(HEADERS, END_HEADERS, h.stream, &[0x88])
                        .await?;
                    peer.next_where(|f| f.stream == h.stream && f.flags & END_STREAM != 0)
                        .await?;
                    peer.send_frame(DATA, END_STREAM, h.stream, b"ok").await?;
                }
                loop {
                    peer.next().await?;
                }
            }
        })?;
        let pool = pool(pki);
        let key = PoolKey::new(id("client"), vec![id("server")], addr);
        let req = ConnectRequest::new(SocketAddr::from(([10, 0, 0, 1], 80)));
        let mut t = deadline("connect with retry", pool.connect(&key, &req)).await??;
        t.shutdown().await?;
        let mut got = Vec::new();
        deadline("response body", t.read_to_end(&mut got)).await??;
        ensure!(got == b"ok");
        let s = pool.stats();
        ensure!(refused.get() == 1, "the first connection never refused");
        ensure!(s.retries == 1 && s.dials == 2, "{s:?}");
        Ok(())
    })
}

#[test]
fn peer_allowing_no_streams_fails_the_dial() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Rc::new(Pki::new());
        let addr = scripted_tls_server(&pki, |_, mut peer| async move {
            let mut zero = SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes().to_vec();
            zero.extend_from_slice(&0u32.to_be_bytes());
            peer.send_frame(SETTINGS, 0, 0, &zero).await?;
            answer_first_ping(&mut peer).await?;
            loop {
                peer.next().await?;
            }
        })?;
        let pool = pool(pki);
        let key = PoolKey::new(id("client"), vec![id("server")], addr);
        let req = ConnectRequest::new(SocketAddr::from(([10, 0, 0, 1], 80)));
        match deadline("dial", pool.connect(&key, &req)).await? {
            Err(Error::Dial { source, .. }) => {
                ensure!(source.to_string().contains("allows no streams"), "{source}")
            }
            other => bail!("expected a failed dial, got {other:?}"),
        }
        let s = pool.stats();
        ensure!(s.dial_failures == 1 && s.dials == 0 && s.open == 0, "{s:?}");
        Ok(())
    })
}
