//! HBONE tunnels end to end on loopback: client (TCP + mTLS + HTTP/2 CONNECT) → HBONE server
//! (whose handler dials the authority) → TCP backend. Bulk data in both directions at once on
//! both event-loop drivers, and half-close in each direction.

mod tunnel_util;

use anyhow::{Result, ensure};
use hbone::client::{self, ClientConn};
use hbone::h2conn::H2Settings;
use hbone::server::Served;
use hbone::wire::ConnectRequest;
use runtime::DriverChoice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_util::*;

const BULK: u64 = 64 * 1024 * 1024;

fn bulk_both_ways(driver: DriverChoice) -> Result<()> {
    run(driver, async || {
        let pki = Pki::new();
        let (client_id, server_id) = (id("client"), id("server"));
        let server = start_server(&pki, &server_id)?;
        let (backend, backend_result) = start_bulk_backend(1, 2, BULK)?;

        let conn: ClientConn = client::connect(
            server.addr,
            pki.client_tls(&client_id, std::slice::from_ref(&server_id)),
            &H2Settings::default(),
        )
        .await?;
        let tunnel = conn.send_connect(&ConnectRequest::new(backend)).await?;
        let (mut rd, mut wr) = tokio::io::split(tunnel);
        let (sent, got) = deadline(
            "64 MiB each way",
            futures_util::future::join(send_pattern(&mut wr, 1, BULK), recv_pattern(&mut rd, 2)),
        )
        .await?;
        sent?;
        ensure!(got? == BULK, "client received a short stream");
        let tunnel = rd.unsplit(wr);
        ensure!(
            tunnel.bytes_written() == BULK && tunnel.bytes_read() == BULK,
            "{tunnel:?}"
        );

        wait_until("backend to finish", || backend_result.borrow().is_some()).await?;
        let backend_got = backend_result.borrow_mut().take().expect("set");
        ensure!(backend_got == Ok(BULK), "backend: {backend_got:?}");

        wait_until("server relay to finish", || {
            !server.log.served.borrow().is_empty()
        })
        .await?;
        match &server.log.served.borrow()[0] {
            (Served::Relayed, stats) => {
                ensure!(
                    stats.toward_originator == BULK && stats.from_originator == BULK,
                    "{stats:?}"
                )
            }
            other => anyhow::bail!("server relay ended with {other:?}"),
        }
        ensure!(
            server.log.peers.borrow()[0] == client_id,
            "server saw the wrong peer identity"
        );
        Ok(())
    })
}

#[test]
fn bulk_64mib_each_way_io_uring() -> Result<()> {
    bulk_both_ways(DriverChoice::IoUring)
}

#[test]
fn bulk_64mib_each_way_epoll() -> Result<()> {
    bulk_both_ways(DriverChoice::Epoll)
}

#[test]
fn half_close_client_first() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Pki::new();
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;
        let echo = start_echo()?;
        let conn = client::connect(
            server.addr,
            pki.client_tls(&id("client"), std::slice::from_ref(&server_id)),
            &H2Settings::default(),
        )
        .await?;
        let mut t = conn.send_connect(&ConnectRequest::new(echo)).await?;
        t.write_all(b"ping").await?;
        // END_STREAM from the client: the backend sees EOF, echoes, and half-closes back.
        t.shutdown().await?;
        let mut got = Vec::new();
        deadline("echo after half-close", t.read_to_end(&mut got)).await??;
        ensure!(got == b"ping", "echoed {:?}", String::from_utf8_lossy(&got));
        wait_until("server relay to finish", || {
            !server.log.served.borrow().is_empty()
        })
        .await?;
        ensure!(
            matches!(server.log.served.borrow()[0], (Served::Relayed, s) if s.toward_originator == 4 && s.from_originator == 4),
            "{:?}",
            server.log.served.borrow()[0]
        );
        Ok(())
    })
}

#[test]
fn half_close_server_first() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Pki::new();
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;
        // The backend sends 1 MiB and half-closes at once, while the client has sent nothing;
        // then it still receives everything the client sends afterwards.
        const DOWN: u64 = 1024 * 1024;
        const UP: u64 = 3 * 1024 * 1024;
        let (backend, backend_result) = start_bulk_backend(7, 8, DOWN)?;
        let conn = client::connect(
            server.addr,
            pki.client_tls(&id("client"), std::slice::from_ref(&server_id)),
            &H2Settings::default(),
        )
        .await?;
        let mut t = conn.send_connect(&ConnectRequest::new(backend)).await?;
        let got = deadline("server-first half-close", recv_pattern(&mut t, 8)).await??;
        ensure!(got == DOWN);
        // Our read side is at EOF; the write side still works.
        deadline("upload after peer half-close", send_pattern(&mut t, 7, UP)).await??;
        wait_until("backend to finish", || backend_result.borrow().is_some()).await?;
        let r = backend_result.borrow_mut().take().expect("set");
        ensure!(r == Ok(UP), "backend: {r:?}");
        Ok(())
    })
}

/// A backend that reads one connection until EOF or error and reports which, with the byte
/// count so far.
fn start_reading_backend() -> Result<(std::net::SocketAddr, ReadEnd)> {
    let listener = runtime::net::TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let state: ReadEnd = Default::default();
    let s2 = state.clone();
    runtime::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => {
                    s2.borrow_mut().1 = Some(Ok(()));
                    return;
                }
                Ok(n) => s2.borrow_mut().0 += n,
                Err(e) => {
                    s2.borrow_mut().1 = Some(Err(e.kind()));
                    return;
                }
            }
        }
    })
    .detach();
    Ok((addr, state))
}

/// Bytes read so far, and how reading ended (`Ok` = EOF).
type ReadEnd = std::rc::Rc<std::cell::RefCell<(usize, Option<Result<(), std::io::ErrorKind>>)>>;

#[test]
fn tunnel_reset_and_drop_reach_upstream_as_rst_cancel_as_eof() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Pki::new();
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;
        let conn = client::connect(
            server.addr,
            pki.client_tls(&id("client"), std::slice::from_ref(&server_id)),
            &H2Settings::default(),
        )
        .await?;
        // RST_STREAM INTERNAL_ERROR from the client: an abort, so the pod must see a reset.
        let (backend, state) = start_reading_backend()?;
        let mut t = conn.send_connect(&ConnectRequest::new(backend)).await?;
        t.write_all(&[7u8; 1000]).await?;
        wait_until("backend to get the bytes", || state.borrow().0 == 1000).await?;
        t.reset(h2::Reason::INTERNAL_ERROR);
        wait_until("backend read to end", || state.borrow().1.is_some()).await?;
        let end = state.borrow().1;
        ensure!(
            end == Some(Err(std::io::ErrorKind::ConnectionReset)),
            "backend saw {end:?} after the tunnel was reset"
        );
        wait_until("server relay to finish", || {
            !server.log.served.borrow().is_empty()
        })
        .await?;
        ensure!(
            matches!(&server.log.served.borrow()[0], (Served::RelayFailed(_), s) if s.from_originator == 1000),
            "{:?}",
            server.log.served.borrow()[0]
        );

        // RST_STREAM CANCEL is what ztunnel sends when it drops a stream early, finished or
        // not: HBONE reads it as end of stream, and the pod sees a FIN.
        let (backend, state) = start_reading_backend()?;
        let mut t = conn.send_connect(&ConnectRequest::new(backend)).await?;
        t.write_all(&[7u8; 10]).await?;
        wait_until("backend to get the bytes", || state.borrow().0 == 10).await?;
        t.reset(h2::Reason::CANCEL);
        wait_until("backend read to end", || state.borrow().1.is_some()).await?;
        let end = state.borrow().1;
        ensure!(end == Some(Ok(())), "backend saw {end:?} after CANCEL");

        // Dropping an unfinished stream is an abort (RFC 9113 §8.5: CONNECT_ERROR), which
        // the server turns into a TCP RST toward the pod.
        let (backend, state) = start_reading_backend()?;
        let mut t = conn.send_connect(&ConnectRequest::new(backend)).await?;
        t.write_all(&[7u8; 10]).await?;
        wait_until("backend to get the bytes", || state.borrow().0 == 10).await?;
        drop(t);
        wait_until("backend read to end", || state.borrow().1.is_some()).await?;
        let end = state.borrow().1;
        ensure!(
            end == Some(Err(std::io::ErrorKind::ConnectionReset)),
            "backend saw {end:?} after the tunnel was dropped unfinished"
        );
        Ok(())
    })
}
