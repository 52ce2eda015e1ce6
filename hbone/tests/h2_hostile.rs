//! The HBONE server against scripted hostile peers: a peer that completes its transport and
//! then says nothing, one that opens a connection and never uses it, PING and SETTINGS
//! floods, HEADERS-then-RST floods, and tiny DATA frames on a stream nobody reads. Each must
//! be cut off within its bound (deadline, frame budget, token bucket) with the error that
//! names it, and nothing may pile up.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

mod h2_scripted_util;

use anyhow::{Result, bail, ensure};
use h2_scripted_util::*;
use hbone::h2conn::H2Settings;
use hbone::server::{self, Incoming, Served};
use runtime::DriverChoice;
use runtime::meter::Meter;
use runtime::net::{TcpListener, TcpStream};

/// Deadlines short enough for a test, long enough for a loaded machine.
const HANDSHAKE: Duration = Duration::from_millis(300);
const IDLE: Duration = Duration::from_millis(300);

const ENHANCE_YOUR_CALM: u32 = 0xb;

fn settings() -> H2Settings {
    H2Settings {
        keepalive: None,
        max_stream_window: None,
        handshake_timeout: HANDSHAKE,
        idle_timeout: Some(IDLE),
        ..H2Settings::default()
    }
}

fn peer_id() -> hbone::Identity {
    "spiffe://cluster.local/ns/test/sa/hostile".parse().unwrap()
}

type Ended = Rc<std::cell::RefCell<Option<(hbone::Result<()>, Instant)>>>;

/// Serves one connection with `serve_h2`; the cell gets its result and when it came.
fn serve_one<H, Fut>(handler: H) -> Result<(SocketAddr, Ended)>
where
    H: Fn(Incoming) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let done: Ended = Rc::default();
    let done2 = done.clone();
    runtime::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let r =
            server::serve_h2(tcp, peer_id(), &settings(), std::future::pending(), handler).await;
        *done2.borrow_mut() = Some((r, Instant::now()));
    })
    .detach();
    Ok((addr, done))
}

async fn ended(done: &Ended) -> Result<(String, Instant)> {
    wait_until("serve_h2 to return", || done.borrow().is_some()).await?;
    let (r, at) = done.borrow_mut().take().expect("set");
    Ok((
        match r {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        },
        at,
    ))
}

#[test]
fn a_peer_that_never_sends_its_preface_or_settings_is_closed_at_the_deadline() -> Result<()> {
    for driver in [DriverChoice::IoUring, DriverChoice::Epoll] {
        run(driver, async || {
            // Nothing at all after the transport handshake.
            let (addr, done) = serve_one(|_i: Incoming| async {})?;
            let started = Instant::now();
            let mut silent = Peer::new(TcpStream::connect(addr).await?);
            let (why, at) = ended(&done).await?;
            ensure!(why.contains("preface"), "{why}");
            let took = at - started;
            ensure!(took >= HANDSHAKE && took < HANDSHAKE * 5, "{took:?}");
            silent.expect_eof().await?;

            // The preface, and then no SETTINGS.
            let (addr, done) = serve_one(|_i: Incoming| async {})?;
            let started = Instant::now();
            let tcp = TcpStream::connect(addr).await?;
            tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
            let (why, at) = ended(&done).await?;
            ensure!(why.contains("SETTINGS"), "{why}");
            ensure!(at - started < HANDSHAKE * 5, "{:?}", at - started);
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn a_connection_without_streams_gets_goaway_after_the_idle_timeout_and_not_before() -> Result<()> {
    run(DriverChoice::Auto, async || {
        // A stream held open keeps the connection; once it ends, the idle clock starts.
        let release = Rc::new(Cell::new(false));
        let r2 = release.clone();
        let (addr, done) = serve_one(move |i: Incoming| {
            let release = r2.clone();
            async move {
                let _t = i.accept().expect("accept");
                wait_until("release", || release.get())
                    .await
                    .expect("release");
            }
        })?;
        let mut peer = Peer::connect(addr).await?;
        peer.send_frame(HEADERS, END_HEADERS, 1, &connect_headers("127.0.0.1:9"))
            .await?;
        peer.next_where(|f| f.kind == HEADERS).await?;
        // Three idle timeouts with a stream open: no GOAWAY.
        let quiet = peer.sync(1).await?;
        runtime::time::sleep(IDLE * 3).await;
        let more = peer.sync(2).await?;
        ensure!(
            quiet.iter().chain(&more).all(|f| f.kind != GOAWAY),
            "GOAWAY while a stream was open"
        );
        release.set(true);
        let released = Instant::now();
        let goaway = peer.next_where(|f| f.kind == GOAWAY).await?;
        let (_, code) = goaway_parts(&goaway);
        ensure!(code == NO_ERROR, "GOAWAY code {code}");
        ensure!(released.elapsed() >= IDLE, "{:?}", released.elapsed());
        let (why, _) = ended(&done).await?;
        ensure!(why == "ok", "{why}");
        Ok(())
    })
}

#[test]
fn ping_and_settings_floods_end_the_connection_as_floods() -> Result<()> {
    for (kind, payload, name) in [(PING, vec![7u8; 8], "PING"), (SETTINGS, vec![], "SETTINGS")] {
        run(DriverChoice::Auto, async || {
            let (addr, done) = serve_one(|_i: Incoming| async {})?;
            let mut peer = Peer::connect(addr).await?;
            peer.answer_pings = false;
            let mut burst = Vec::new();
            for _ in 0..5_000 {
                frame(&mut burst, kind, 0, 0, &payload);
            }
            // The server may close while we write: the cut is what we are after.
            let _ = peer.send(&burst).await;
            let (why, _) = ended(&done).await?;
            ensure!(
                why.contains("control-frame flood") && why.contains(name),
                "{name}: {why}"
            );
            peer.expect_eof().await?;
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn streams_reset_before_their_dial_finishes_end_their_dials() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let (started, cancelled, dropped) = (
            Rc::new(Cell::new(0usize)),
            Rc::new(Cell::new(0usize)),
            Rc::new(Cell::new(0usize)),
        );
        /// Counts dials dropped before they finished.
        struct Dial(Rc<Cell<usize>>);
        impl Drop for Dial {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let (s2, c2, d2) = (started.clone(), cancelled.clone(), dropped.clone());
        let (addr, _done) = serve_one(move |i: Incoming| {
            let (started, cancelled, dropped) = (s2.clone(), c2.clone(), d2.clone());
            async move {
                // A dial that never finishes: only the peer's reset ends the wait.
                let guard = Dial(dropped);
                let never = async move {
                    let _guard = guard;
                    std::future::pending::<Result<TcpStream, hbone::wire::Status>>().await
                };
                started.set(started.get() + 1);
                let meter = Meter::new();
                if let Served::Cancelled = i.serve(never, &meter, std::future::pending()).await {
                    cancelled.set(cancelled.get() + 1);
                }
            }
        })?;
        let mut peer = Peer::connect(addr).await?;
        // Streams the handler has started on, then reset: (h2 itself answers a flood of
        // HEADERS-then-RST that never reach a handler with ENHANCE_YOUR_CALM.)
        const STREAMS: u32 = 150;
        for batch in 0..3u32 {
            let ids: Vec<u32> = (0..STREAMS / 3).map(|n| 1 + 2 * (batch * 50 + n)).collect();
            let mut heads = Vec::new();
            for &id in &ids {
                frame(
                    &mut heads,
                    HEADERS,
                    END_HEADERS,
                    id,
                    &connect_headers("127.0.0.1:9"),
                );
            }
            peer.send(&heads).await?;
            let want = ((batch + 1) * STREAMS / 3) as usize;
            wait_until("the handlers to start dialling", || started.get() == want).await?;
            let mut resets = Vec::new();
            for &id in &ids {
                frame(&mut resets, RST_STREAM, 0, id, &0x8u32.to_be_bytes());
            }
            peer.send(&resets).await?;
            wait_until("the dials to be dropped", || {
                cancelled.get() == want && dropped.get() == want
            })
            .await?;
        }
        Ok(())
    })
}

#[test]
fn tiny_data_frames_on_a_stream_nobody_reads_exhaust_the_frame_budget() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let (addr, done) = serve_one(|i: Incoming| async move {
            // Accept and never read: every frame stays buffered in h2.
            let _t = i.accept().expect("accept");
            std::future::pending::<()>().await;
        })?;
        let mut peer = Peer::connect(addr).await?;
        peer.send_frame(HEADERS, END_HEADERS, 1, &connect_headers("127.0.0.1:9"))
            .await?;
        peer.next_where(|f| f.kind == HEADERS).await?;
        // One-byte DATA frames: 10 bytes on the wire each. Without a frame budget 262,000 of
        // them held 129 MB; the default budget (half the 1 MiB connection window, 255 bytes
        // per tiny frame) allows about 2,000.
        let mut burst = Vec::new();
        for _ in 0..20_000 {
            frame(&mut burst, DATA, 0, 1, &[0x61]);
        }
        let _ = peer.send(&burst).await;
        let goaway = match peer.next_where(|f| f.kind == GOAWAY).await {
            Ok(f) => f,
            Err(e) => bail!("no GOAWAY for a tiny-frame flood: {e}"),
        };
        let (_, code) = goaway_parts(&goaway);
        ensure!(code == ENHANCE_YOUR_CALM, "GOAWAY code {code}");
        let (why, _) = ended(&done).await?;
        ensure!(why != "ok", "{why}");
        Ok(())
    })
}
