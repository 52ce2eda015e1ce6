//! The HBONE client against a scripted HTTP/2 server (frames by hand over plain TCP on
//! loopback): PING keepalive and its timeout, GOAWAY and non-200 answers, and how resets map
//! onto the tunnel's byte stream (RST_STREAM NO_ERROR/CANCEL as end of stream, others as errors).

mod h2_scripted_util;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use h2_scripted_util::*;
use hbone::Error;
use hbone::client::ClientConn;
use hbone::h2conn::{H2Settings, Keepalive};
use hbone::wire::ConnectRequest;
use runtime::DriverChoice;
use runtime::net::{TcpListener, TcpStream};
use tokio::io::AsyncReadExt;

const INTERNAL_ERROR: u32 = 0x2;
const CANCEL: u32 = 0x8;

type ScriptResult = Rc<RefCell<Option<Result<()>>>>;

/// Serves one connection with `script`, after answering the client's first PING (the one the
/// client waits on to learn the server's SETTINGS).
fn scripted_server<F>(script: F) -> Result<(SocketAddr, ScriptResult)>
where
    F: AsyncFnOnce(&mut Peer) -> Result<()> + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let result = Rc::new(RefCell::new(None));
    let result2 = result.clone();
    runtime::spawn(async move {
        let r = async {
            let (tcp, _) = listener.accept().await?;
            let mut peer = Peer::accept(tcp).await?;
            let ping = peer
                .next_where(|f| f.kind == PING && f.flags & ACK == 0)
                .await?;
            peer.send_frame(PING, ACK, 0, &ping.payload).await?;
            script(&mut peer).await
        }
        .await;
        *result2.borrow_mut() = Some(r);
    })
    .detach();
    Ok((addr, result))
}

async fn client(addr: SocketAddr, keepalive: Option<Keepalive>) -> Result<ClientConn> {
    let tcp = TcpStream::connect(addr).await?;
    let settings = H2Settings {
        keepalive,
        ..H2Settings::default()
    };
    Ok(ClientConn::handshake(tcp, addr, &settings).await?)
}

fn target() -> ConnectRequest {
    ConnectRequest::new(SocketAddr::from(([10, 0, 0, 1], 8080)))
}

#[test]
fn keepalive_pings_and_times_out() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let ka = Keepalive {
            interval: Duration::from_millis(50),
            // Generous against a loaded CI machine stalling the test thread; the test waits for
            // the close with a deadline, so a larger value only costs time.
            timeout: Duration::from_secs(1),
        };
        // Answers keepalive PINGs until told to stop, counting them; then stays silent but
        // keeps reading, like a peer whose process hangs.
        let answered = Rc::new(Cell::new(0usize));
        let stop = Rc::new(Cell::new(false));
        let (answered2, stop2) = (answered.clone(), stop.clone());
        let (addr, _) = scripted_server(async move |peer: &mut Peer| {
            peer.answer_pings = false;
            loop {
                let f = peer
                    .next_where(|f| f.kind == PING && f.flags & ACK == 0)
                    .await?;
                if !stop2.get() {
                    peer.send_frame(PING, ACK, 0, &f.payload).await?;
                    answered2.set(answered2.get() + 1);
                }
            }
        })?;
        let conn = client(addr, Some(ka)).await?;
        wait_until("three keepalive PINGs answered", || answered.get() >= 3).await?;
        ensure!(
            conn.is_usable(),
            "a connection whose PINGs are answered must stay usable"
        );

        stop.set(true);
        let stopped = Instant::now();
        wait_until("PING timeout to close the connection", || !conn.is_usable()).await?;
        ensure!(conn.is_closed(), "driver must end on PING timeout");
        ensure!(
            stopped.elapsed() >= ka.timeout,
            "closed before the timeout ran out: {:?}",
            stopped.elapsed()
        );
        match conn.send_connect(&target()).await {
            Err(_) => Ok(()),
            Ok(_) => bail!("a timed-out connection opened a stream"),
        }
    })
}

#[test]
fn goaway_stops_new_streams_not_open_ones() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let (addr, _) = scripted_server(async |peer: &mut Peer| {
            let h = peer.next_where(|f| f.kind == HEADERS).await?;
            peer.send_frame(HEADERS, END_HEADERS, h.stream, &[0x88])
                .await?;
            // GOAWAY, last stream = this one, NO_ERROR (RFC 9113 §6.8).
            let mut goaway = h.stream.to_be_bytes().to_vec();
            goaway.extend_from_slice(&NO_ERROR.to_be_bytes());
            peer.send_frame(GOAWAY, 0, 0, &goaway).await?;
            // Finish the stream once the client has sent its END_STREAM.
            peer.next_where(|f| f.stream == h.stream && f.flags & END_STREAM != 0)
                .await?;
            peer.send_frame(DATA, END_STREAM, h.stream, b"bye").await?;
            loop {
                peer.next().await?;
            }
        })?;
        let conn = client(addr, None).await?;
        let mut t = conn.send_connect(&target()).await?;
        wait_until("GOAWAY to be seen", || !conn.is_usable()).await?;
        match conn.send_connect(&target()).await {
            Err(Error::H2(e)) => ensure!(e.is_go_away(), "{e}"),
            other => bail!("expected a GOAWAY error, got {other:?}"),
        }
        tokio::io::AsyncWriteExt::shutdown(&mut t).await?;
        let mut got = Vec::new();
        deadline("stream to finish after GOAWAY", t.read_to_end(&mut got)).await??;
        ensure!(got == b"bye", "{got:?}");
        Ok(())
    })
}

#[test]
fn non_200_is_rejected_with_status() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let (addr, _) = scripted_server(async |peer: &mut Peer| {
            let h = peer.next_where(|f| f.kind == HEADERS).await?;
            // `:status: 503` as a literal with the indexed name `:status` (static index 8).
            let mut block = vec![0x08, 3];
            block.extend_from_slice(b"503");
            peer.send_frame(HEADERS, END_HEADERS | END_STREAM, h.stream, &block)
                .await?;
            loop {
                peer.next().await?;
            }
        })?;
        let conn = client(addr, None).await?;
        match conn.send_connect(&target()).await {
            Err(Error::Rejected { status }) => ensure!(status == 503),
            other => bail!("expected Rejected(503), got {other:?}"),
        }
        ensure!(conn.active_streams() == 0, "rejected stream still counted");
        Ok(())
    })
}

#[test]
fn resets_map_to_eof_or_error() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let (addr, done) = scripted_server(async |peer: &mut Peer| {
            // Three streams, each answered 200, sent "abc", then reset with NO_ERROR, CANCEL and
            // INTERNAL_ERROR in turn. h2 hands out data received before a reset first.
            for code in [NO_ERROR, CANCEL, INTERNAL_ERROR] {
                let h = peer.next_where(|f| f.kind == HEADERS).await?;
                peer.send_frame(HEADERS, END_HEADERS, h.stream, &[0x88])
                    .await?;
                peer.send_frame(DATA, 0, h.stream, b"abc").await?;
                peer.send_frame(RST_STREAM, 0, h.stream, &code.to_be_bytes())
                    .await?;
            }
            loop {
                peer.next().await?;
            }
        })?;
        let conn = client(addr, None).await?;
        for (code, clean) in [(NO_ERROR, true), (CANCEL, true), (INTERNAL_ERROR, false)] {
            let mut t = conn.send_connect(&target()).await?;
            let mut got = Vec::new();
            let r = deadline("read to the reset", t.read_to_end(&mut got)).await?;
            ensure!(
                got == b"abc",
                "code {code:#x}: data before the reset lost: {got:?}"
            );
            match (clean, r) {
                (true, Ok(3)) => {}
                (false, Err(e)) => ensure!(
                    e.kind() == std::io::ErrorKind::ConnectionReset,
                    "RST_STREAM INTERNAL_ERROR should read as ConnectionReset, got {e:?}"
                ),
                (clean, other) => {
                    bail!("code {code:#x}: want end of stream={clean}, got {other:?}")
                }
            }
            ensure!(t.bytes_read() == 3);
        }
        ensure!(
            done.borrow().is_none(),
            "script ended early: {:?}",
            done.borrow()
        );
        Ok(())
    })
}
