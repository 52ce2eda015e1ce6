//! Receive-window tuning (`window::WindowTuner`) on a path with a real round trip: a client
//! and `serve_h2` over plain TCP through a forwarder that holds every chunk for 10 ms each way.
//! At the first 256 KiB window such a path carries ~12 MB/s.
//!
//! The forwarder terminates TCP, so the kernel's round-trip figure (a few µs on loopback)
//! knows nothing of the delay, like a PONG handled late by a busy core. Over transports that
//! cannot tell the path's RTT ([`Opaque`]) the tuner must see the window limiting the
//! transfer from its PINGs and grow it; over the real sockets it must trust the kernel and
//! leave the windows alone. Both ways the bytes arrive in order while the windows may change
//! under open streams (RFC 9113 §6.9.2).

mod h2_scripted_util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use h2_scripted_util::run;
use hbone::client::ClientConn;
use hbone::h2conn::{H2Settings, INITIAL_STREAM_WINDOW};
use hbone::server::{self, Incoming};
use hbone::window::PathRtt;
use hbone::wire::ConnectRequest;
use runtime::DriverChoice;
use runtime::net::{TcpListener, TcpStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

const ONE_WAY: Duration = Duration::from_millis(10);
const TRANSFER: usize = 24 << 20;

/// Copies `from` to `to`, delivering each chunk `ONE_WAY` after it was read (a fixed-delay
/// link, order kept). Ends with a write shutdown when `from` ends.
fn delayed_copy(mut from: StdStream, mut to: StdStream) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + ONE_WAY, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// A one-connection forwarder to `upstream` with `ONE_WAY` delay in both directions.
fn delay_link(upstream: SocketAddr) -> Result<SocketAddr> {
    let listener = StdListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        let Ok((down, _)) = listener.accept() else {
            return;
        };
        let Ok(up) = StdStream::connect(upstream) else {
            return;
        };
        let _ = (down.set_nodelay(true), up.set_nodelay(true));
        let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let a = thread::spawn(move || delayed_copy(down, up));
        delayed_copy(u2, d2);
        let _ = a.join();
    });
    Ok(addr)
}

/// A socket that cannot tell its round-trip time, as any transport but a kernel TCP socket.
struct Opaque(TcpStream);

impl PathRtt for Opaque {
    fn rtt_probe(&self) -> Option<runtime::net::RttProbe> {
        None
    }
}

impl AsyncRead for Opaque {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Opaque {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// The server's handler: sends TRANSFER bytes of a known pattern, then half-closes.
async fn send_pattern(i: Incoming) {
    let mut t = i.accept().expect("accept");
    let chunk: Vec<u8> = (0..64 * 1024).map(pattern).collect();
    let mut sent = 0;
    while sent < TRANSFER {
        t.write_all(&chunk).await.expect("write");
        sent += chunk.len();
    }
    t.shutdown().await.expect("shutdown");
}

/// Carries TRANSFER bytes from server to client over the delayed link, checks every byte,
/// and returns the client's receive window at the end.
fn transfer_over_delay(driver: DriverChoice, opaque: bool) -> Result<u32> {
    let mut window = 0;
    run(driver, async || {
        let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
        let server_addr = listener.local_addr()?;
        runtime::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let id: hbone::Identity = "spiffe://cluster.local/ns/test/sa/server".parse().unwrap();
            let settings = H2Settings::default();
            let never = std::future::pending();
            let _ = if opaque {
                server::serve_h2(Opaque(tcp), id, &settings, never, send_pattern).await
            } else {
                server::serve_h2(tcp, id, &settings, never, send_pattern).await
            };
        })
        .detach();

        let link = delay_link(server_addr)?;
        let tcp = TcpStream::connect(link).await?;
        let settings = H2Settings::default();
        let client = if opaque {
            ClientConn::handshake(Opaque(tcp), link, &settings).await?
        } else {
            ClientConn::handshake(tcp, link, &settings).await?
        };
        ensure!(client.recv_window() == INITIAL_STREAM_WINDOW);
        let req = ConnectRequest::new(SocketAddr::from(([10, 0, 0, 1], 8080)));
        let mut tunnel = client.send_connect(&req).await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        loop {
            let n = tunnel.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                ensure!(
                    *b == pattern((got + k) % (64 * 1024)),
                    "byte {} wrong",
                    got + k
                );
            }
            got += n;
        }
        ensure!(got == TRANSFER, "received {got} of {TRANSFER} bytes");
        window = client.recv_window();
        Ok(())
    })?;
    Ok(window)
}

#[test]
fn without_a_kernel_rtt_windows_grow_from_ping_samples() -> Result<()> {
    for driver in [DriverChoice::IoUring, DriverChoice::Epoll] {
        let window = transfer_over_delay(driver, true)?;
        // 20 ms round trips at 256 KiB are window-bound: the tuner must have grown it.
        ensure!(
            window >= 2 * INITIAL_STREAM_WINDOW,
            "{driver:?}: receive window still {window} after {} MiB over a 20 ms round trip",
            TRANSFER >> 20
        );
    }
    Ok(())
}

#[test]
fn the_kernels_rtt_keeps_windows_when_only_pongs_are_late() -> Result<()> {
    // Each TCP hop's kernel RTT is loopback's: whatever delays the PONGs is not the path,
    // so growing the windows would only add memory. (Real node-to-node TCP is end to end,
    // where the kernel's figure is the path's.)
    let window = transfer_over_delay(DriverChoice::Auto, false)?;
    ensure!(
        window == INITIAL_STREAM_WINDOW,
        "receive window grew to {window} on loopback sockets"
    );
    Ok(())
}
