//! Refused tunnels: malformed requests (400), handler refusals (401, 503), and mTLS failures
//! seen through the HBONE client and server. Each must be a clear error on the side that
//! gets it, never a panic, and must not leak the stream or the connection.

mod tunnel_util;

use std::net::SocketAddr;

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use hbone::certs::{CaOptions, CertificateAuthority, LeafOptions};
use hbone::client::{self, ClientConn};
use hbone::h2conn::H2Settings;
use hbone::server::Served;
use hbone::wire::{ConnectRequest, Status};
use hbone::{Error, Identity};
use runtime::DriverChoice;
use runtime::net::{TcpListener, TcpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_util::*;

async fn connect(pki: &Pki, server: &TestServer, server_id: &Identity) -> Result<ClientConn> {
    Ok(client::connect(
        server.addr,
        pki.client_tls(&id("client"), std::slice::from_ref(server_id)),
        &H2Settings::default(),
    )
    .await?)
}

/// A raw h2 client over mTLS, for requests the HBONE client refuses to build.
async fn raw_h2(
    pki: &Pki,
    server: &TestServer,
    server_id: &Identity,
) -> Result<h2::client::SendRequest<Bytes>> {
    let tcp = TcpStream::connect(server.addr).await?;
    let tls = client::tls_connect(
        tcp,
        server.addr,
        pki.client_tls(&id("client"), std::slice::from_ref(server_id)),
    )
    .await?;
    let (send, conn) = h2::client::handshake(tls).await?;
    runtime::spawn(async move {
        let _ = conn.await;
    })
    .detach();
    Ok(send)
}

async fn raw_status(
    send: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> Result<(u16, bool)> {
    let mut send = send.clone().ready().await?;
    let (resp, _stream) = send.send_request(req, false)?;
    let resp = deadline("response", resp).await??;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    // The answer must end the stream (END_STREAM on the HEADERS or an empty DATA after).
    let ended = body.is_end_stream() || deadline("end of stream", body.data()).await?.is_none();
    Ok((status, ended))
}

#[test]
fn handler_refusals_map_to_401_and_503_and_drop_to_503() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Pki::new();
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;
        let conn = connect(&pki, &server, &server_id).await?;

        let denied = conn
            .send_connect(&ConnectRequest::new(SocketAddr::from((
                [127, 0, 0, 1],
                DENY_PORT,
            ))))
            .await;
        match denied {
            Err(e @ Error::Rejected { .. }) => {
                ensure!(e.status() == Status::Unauthorized, "{e}");
                ensure!(
                    e.to_string().contains("401"),
                    "message should name the status: {e}"
                );
            }
            other => bail!("expected 401, got {other:?}"),
        }

        let closed: SocketAddr = {
            let l = TcpListener::bind("127.0.0.1:0".parse()?)?;
            l.local_addr()?
        };
        match conn.send_connect(&ConnectRequest::new(closed)).await {
            Err(e @ Error::Rejected { .. }) => {
                ensure!(e.status() == Status::ServiceUnavailable, "{e}")
            }
            other => bail!("expected 503, got {other:?}"),
        }
        // A handler that drops the request unanswered: the server answers 503 for it.
        match conn
            .send_connect(&ConnectRequest::new(SocketAddr::from((
                [127, 0, 0, 1],
                DROP_PORT,
            ))))
            .await
        {
            Err(Error::Rejected { status }) => ensure!(status == 503, "{status}"),
            other => bail!("expected 503 for a dropped request, got {other:?}"),
        }
        {
            let served = server.log.served.borrow();
            ensure!(
                matches!(
                    served[..],
                    [
                        (Served::Rejected(Status::Unauthorized), _),
                        (Served::Rejected(Status::ServiceUnavailable), _)
                    ]
                ),
                "{served:?}"
            );
        }
        // Nothing leaked: no stream counted, and the connection still serves tunnels.
        ensure!(conn.active_streams() == 0, "rejected streams still counted");
        ensure!(conn.is_usable());
        let echo = start_echo()?;
        let mut t = conn.send_connect(&ConnectRequest::new(echo)).await?;
        t.write_all(b"ok").await?;
        t.shutdown().await?;
        let mut back = Vec::new();
        t.read_to_end(&mut back).await?;
        ensure!(back == b"ok");
        drop(t);
        ensure!(
            server.log.accepted.get() == 1,
            "rejections must not cost the connection"
        );
        drop(conn);
        wait_until("server connection to close", || server.log.live.get() == 0).await?;
        ensure!(
            server.log.ended.borrow()[0].is_ok(),
            "{:?}",
            server.log.ended.borrow()
        );
        Ok(())
    })
}

#[test]
fn non_connect_and_bad_authority_get_400() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Pki::new();
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;
        let mut send = raw_h2(&pki, &server, &server_id).await?;

        let get = http::Request::builder()
            .method("GET")
            .uri("https://127.0.0.1:8080/")
            .body(())?;
        ensure!(
            raw_status(&mut send, get).await? == (400, true),
            "GET must get 400 with END_STREAM"
        );

        let post = http::Request::builder()
            .method("POST")
            .uri("https://127.0.0.1:8080/")
            .body(())?;
        ensure!(raw_status(&mut send, post).await? == (400, true));

        for bad in ["127.0.0.1", "127.0.0.1:99999", "example..com:80"] {
            let req = http::Request::builder()
                .method("CONNECT")
                .uri(bad)
                .body(())?;
            let got = raw_status(&mut send, req).await?;
            ensure!(got == (400, true), "authority {bad:?}: got {got:?}");
        }
        // None of these reached the handler, and the connection is still fine.
        ensure!(server.log.served.borrow().is_empty());
        let echo = start_echo()?;
        let ok = http::Request::builder()
            .method("CONNECT")
            .uri(echo.to_string())
            .body(())?;
        let mut s = send.clone().ready().await?;
        let (resp, _stream) = s.send_request(ok, false)?;
        ensure!(deadline("200", resp).await??.status() == 200);
        ensure!(server.log.accepted.get() == 1);
        Ok(())
    })
}

#[test]
fn tls_failures_are_errors_on_both_sides() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Pki::new();
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;

        // The client expects another identity than the server presents.
        let wrong = client::connect(
            server.addr,
            pki.client_tls(&id("client"), &[id("someone-else")]),
            &H2Settings::default(),
        )
        .await;
        match wrong {
            Err(Error::Tls(e)) => ensure!(
                hbone::tls::describe(&e).contains("someone-else"),
                "client error should name the expected identity: {}",
                hbone::tls::describe(&e)
            ),
            other => bail!("expected a TLS error, got {other:?}"),
        }
        wait_until("server to end the failed handshake", || {
            server.log.ended.borrow().len() == 1
        })
        .await?;
        ensure!(server.log.ended.borrow()[0].is_err());

        // A client whose certificate comes from an untrusted root.
        let rogue = CertificateAuthority::new_root(&CaOptions::new("rogue root"))?;
        let leaf = rogue.issue(&id("client"), &LeafOptions::default())?;
        let rogue_tls = hbone::tls::client_config(
            leaf.chain(),
            leaf.key(),
            &[pki.ca.root_der().clone()],
            vec![server_id.clone()],
        )?;
        let r = client::connect(server.addr, rogue_tls, &H2Settings::default()).await;
        ensure!(r.is_err(), "untrusted client certificate accepted");
        wait_until("server to reject the rogue client", || {
            server.log.ended.borrow().len() == 2
        })
        .await?;
        let ended = server.log.ended.borrow();
        ensure!(
            matches!(&ended[1], Err(m) if m.contains("TLS")),
            "server should report a TLS error: {:?}",
            ended[1]
        );
        ensure!(server.log.live.get() == 0 && server.log.served.borrow().is_empty());
        Ok(())
    })
}
