//! The HBONE server against a scripted HTTP/2 peer: frames written and parsed by hand in the
//! test (RFC 9113 §4.1 framing, HPACK literals from RFC 7541 §6.2.2), over plain TCP on
//! loopback, with `serve_h2` (the server after TLS) under test. Proves what a client library
//! would hide: WINDOW_UPDATE only as data is consumed, FRAME_SIZE_ERROR for oversized frames,
//! GOAWAY draining in-flight streams, PING answered with ACK.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

mod h2_scripted_util;

use anyhow::{Result, bail, ensure};
use h2_scripted_util::*;
use hbone::h2conn::H2Settings;
use hbone::server::{self, Incoming};
use runtime::DriverChoice;
use runtime::net::TcpListener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn test_settings() -> H2Settings {
    H2Settings {
        // The scripted peer answers PINGs itself; the server's own keepalive and window
        // samples (PINGs of their own) would only add noise.
        keepalive: None,
        max_stream_window: None,
        ..H2Settings::default()
    }
}

fn peer_id() -> hbone::Identity {
    "spiffe://cluster.local/ns/test/sa/scripted"
        .parse()
        .unwrap()
}

/// Set to what `serve_h2` returned, once it has.
type ServeResult = Rc<RefCell<Option<hbone::Result<()>>>>;

/// Binds a listener and serves one connection with `serve_h2` and `handler`; the returned
/// cell is set to the result of `serve_h2` when it returns.
fn serve_one<H, Fut>(
    drain: impl std::future::Future<Output = ()> + 'static,
    handler: H,
) -> Result<(SocketAddr, ServeResult)>
where
    H: Fn(Incoming) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let done = Rc::new(RefCell::new(None));
    let done2 = done.clone();
    runtime::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let r = server::serve_h2(tcp, peer_id(), &test_settings(), drain, handler).await;
        *done2.borrow_mut() = Some(r);
    })
    .detach();
    Ok((addr, done))
}

#[test]
fn ping_is_answered_with_ack() -> Result<()> {
    for driver in [DriverChoice::IoUring, DriverChoice::Epoll] {
        run(driver, async || {
            let (addr, _) = serve_one(std::future::pending(), |_i: Incoming| async {})?;
            let mut peer = Peer::connect(addr).await?;
            let payload = *b"hbone-pg";
            peer.send_frame(PING, 0, 0, &payload).await?;
            let ack = peer.next_where(|f| f.kind == PING).await?;
            ensure!(ack.flags & ACK != 0, "PING answered without ACK flag");
            ensure!(
                ack.payload == payload,
                "PING ACK must echo the payload (RFC 9113 §6.7)"
            );
            ensure!(ack.stream == 0);
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn window_updates_follow_consumption() -> Result<()> {
    run(DriverChoice::Auto, async || {
        // The handler accepts the tunnel but reads only when `go` is set.
        let go = Rc::new(Cell::new(false));
        let consumed = Rc::new(Cell::new(0usize));
        let (go2, consumed2) = (go.clone(), consumed.clone());
        let (addr, _) = serve_one(std::future::pending(), move |i: Incoming| {
            let (go, consumed) = (go2.clone(), consumed2.clone());
            async move {
                let mut t = i.accept().expect("accept");
                wait_until("go", || go.get()).await.expect("go");
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match t.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => consumed.set(consumed.get() + n),
                    }
                }
            }
        })?;
        let mut peer = Peer::connect(addr).await?;
        peer.send_frame(HEADERS, END_HEADERS, 1, &connect_headers("127.0.0.1:9"))
            .await?;
        let resp = peer.next_where(|f| f.kind == HEADERS).await?;
        ensure!(
            resp.stream == 1 && resp.payload.first() == Some(&0x88),
            "expected :status 200, got {resp:?}"
        );

        // One whole stream window in 16 KiB frames (the default SETTINGS_MAX_FRAME_SIZE a
        // client may always use): all a peer may send before the server reads anything.
        let total = test_settings().stream_window as usize;
        let chunk = vec![0xabu8; 16 * 1024];
        let mut out = Vec::new();
        for _ in 0..total / chunk.len() {
            frame(&mut out, DATA, 0, 1, &chunk);
        }
        peer.send(&out).await?;
        let before = peer.sync(1).await?;
        let stream_updates: Vec<_> = before
            .iter()
            .filter(|f| f.kind == WINDOW_UPDATE && f.stream == 1)
            .collect();
        ensure!(
            stream_updates.is_empty(),
            "server opened the stream window before anything was read: {stream_updates:?}"
        );

        go.set(true);
        wait_until("handler to consume all data", || consumed.get() == total).await?;
        // Collect WINDOW_UPDATEs until the stream's increments cover half of what was
        // consumed: h2 returns credit in batches once half the stream window is unclaimed
        // (§6.9 allows any split). The connection window is credited the same way; the
        // 64 MiB tunnel tests cannot pass without that.
        let mut stream_credit = 0u64;
        let start = Instant::now();
        while stream_credit < total as u64 / 2 {
            ensure!(
                start.elapsed() < DEADLINE,
                "stream WINDOW_UPDATE total {stream_credit} after consuming {total}"
            );
            for f in peer.sync(2).await? {
                if f.kind == WINDOW_UPDATE && f.stream == 1 {
                    ensure!(
                        window_increment(&f) > 0,
                        "zero increment is a protocol error (§6.9)"
                    );
                    stream_credit += u64::from(window_increment(&f));
                }
            }
        }
        ensure!(
            stream_credit <= total as u64,
            "credited {stream_credit}, more than consumed"
        );
        Ok(())
    })
}

#[test]
fn oversized_frame_is_frame_size_error() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let (addr, done) = serve_one(std::future::pending(), |_i: Incoming| async {})?;
        let mut peer = Peer::connect(addr).await?;
        peer.send_frame(HEADERS, END_HEADERS, 1, &connect_headers("127.0.0.1:9"))
            .await?;
        // One byte over the 1 MiB SETTINGS_MAX_FRAME_SIZE the server advertised (§4.2).
        let max = test_settings().max_frame_size as usize;
        let big = vec![0u8; max + 1];
        // The server may close while we are still writing; what matters is its GOAWAY.
        let _ = peer.send_frame(DATA, 0, 1, &big).await;
        let f = peer.next_where(|f| f.kind == GOAWAY).await?;
        let (_, code) = goaway_parts(&f);
        ensure!(
            code == FRAME_SIZE_ERROR,
            "GOAWAY code {code:#x}, want FRAME_SIZE_ERROR"
        );
        peer.expect_eof().await?;
        wait_until("serve_h2 to return", || done.borrow().is_some()).await?;
        ensure!(
            done.borrow().as_ref().is_some_and(|r| r.is_err()),
            "serve_h2 must report the protocol error"
        );

        // A frame of exactly the maximum is fine.
        let (addr, _) = serve_one(std::future::pending(), |i: Incoming| async move {
            let mut t = i.accept().expect("accept");
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(n) = t.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })?;
        let mut peer = Peer::connect(addr).await?;
        peer.send_frame(HEADERS, END_HEADERS, 1, &connect_headers("127.0.0.1:9"))
            .await?;
        peer.next_where(|f| f.kind == HEADERS).await?;
        peer.send_frame(DATA, 0, 1, &vec![0u8; max]).await?;
        let seen = peer.sync(3).await?;
        ensure!(
            !seen.iter().any(|f| f.kind == GOAWAY),
            "max-size frame rejected: {seen:?}"
        );
        Ok(())
    })
}

#[test]
fn goaway_drains_in_flight_streams() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let (drain_tx, drain_rx) = futures_channel::oneshot::channel::<()>();
        // Echo handler: answers 200, echoes everything, half-closes at EOF.
        let (addr, done) = serve_one(
            async move {
                let _ = drain_rx.await;
            },
            |i: Incoming| async move {
                let mut t = i.accept().expect("accept");
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match t.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => t.write_all(&buf[..n]).await.expect("echo"),
                        Err(e) => panic!("read: {e}"),
                    }
                }
                t.shutdown().await.expect("END_STREAM");
            },
        )?;
        let mut peer = Peer::connect(addr).await?;
        peer.send_frame(HEADERS, END_HEADERS, 1, &connect_headers("127.0.0.1:9"))
            .await?;
        peer.next_where(|f| f.kind == HEADERS && f.stream == 1)
            .await?;

        drain_tx.send(()).ok();
        // h2's graceful shutdown: GOAWAY(2^31-1), PING, then GOAWAY(last stream) (§6.8).
        // `next_where` ACKs the PING.
        let mut last = u32::MAX;
        let start = Instant::now();
        while last != 1 {
            ensure!(start.elapsed() < DEADLINE, "no final GOAWAY");
            let g = peer.next_where(|f| f.kind == GOAWAY).await?;
            let (l, code) = goaway_parts(&g);
            ensure!(
                code == NO_ERROR,
                "graceful GOAWAY must carry NO_ERROR, got {code:#x}"
            );
            last = l;
        }
        // A stream opened after GOAWAY is not served (§6.8).
        peer.send_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &connect_headers("127.0.0.1:9"),
        )
        .await?;

        // The in-flight stream still works both ways.
        peer.send_frame(DATA, 0, 1, b"still ").await?;
        peer.send_frame(DATA, END_STREAM, 1, b"here").await?;
        let mut echoed = Vec::new();
        loop {
            let f = peer.next().await?;
            if f.kind == PING && f.flags & ACK == 0 {
                peer.send_frame(PING, ACK, 0, &f.payload).await?;
                continue;
            }
            ensure!(
                !(f.kind == HEADERS && f.stream == 3),
                "stream 3 was served after GOAWAY"
            );
            if f.kind == RST_STREAM && f.stream == 1 {
                bail!("in-flight stream reset during drain");
            }
            if f.kind == DATA && f.stream == 1 {
                echoed.extend_from_slice(&f.payload);
                if f.flags & END_STREAM != 0 {
                    break;
                }
            }
        }
        ensure!(
            echoed == b"still here",
            "echo {:?}",
            String::from_utf8_lossy(&echoed)
        );
        // With the last stream done, the server closes the connection and serve_h2 returns Ok.
        peer.expect_eof().await?;
        wait_until("serve_h2 to return", || done.borrow().is_some()).await?;
        let r = done.borrow_mut().take().expect("set");
        ensure!(r.is_ok(), "drain must end cleanly: {r:?}");
        Ok(())
    })
}
