//! Receive-window tuning (`h2conn::WindowTuner`) on a path with a real round trip: a client
//! and `serve_h2` over plain TCP through a forwarder that holds every chunk for 10 ms each way.
//! At the first 256 KiB window such a path carries ~12 MB/s; the tuner must see the window
//! limiting the transfer and grow it, and both ends must keep carrying bytes in order while
//! the windows change under open streams (RFC 9113 §6.9.2).

mod h2_scripted_util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use h2_scripted_util::run;
use hbone::client::ClientConn;
use hbone::h2conn::{H2Settings, INITIAL_STREAM_WINDOW};
use hbone::server::{self, Incoming};
use hbone::wire::ConnectRequest;
use runtime::DriverChoice;
use runtime::net::{TcpListener, TcpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

#[test]
fn windows_grow_on_a_path_with_delay_and_bytes_arrive_in_order() -> Result<()> {
    for driver in [DriverChoice::IoUring, DriverChoice::Epoll] {
        run(driver, async || {
            let listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
            let server_addr = listener.local_addr()?;
            runtime::spawn(async move {
                let (tcp, _) = listener.accept().await.expect("accept");
                let id = "spiffe://cluster.local/ns/test/sa/server".parse().unwrap();
                let _ = server::serve_h2(
                    tcp,
                    id,
                    &H2Settings::default(),
                    std::future::pending(),
                    |i: Incoming| async move {
                        // Sends TRANSFER bytes of a known pattern, then half-closes.
                        let mut t = i.accept().expect("accept");
                        let chunk: Vec<u8> = (0..64 * 1024).map(pattern).collect();
                        let mut sent = 0;
                        while sent < TRANSFER {
                            t.write_all(&chunk).await.expect("write");
                            sent += chunk.len();
                        }
                        t.shutdown().await.expect("shutdown");
                    },
                )
                .await;
            })
            .detach();

            let link = delay_link(server_addr)?;
            let tcp = TcpStream::connect(link).await?;
            let client = ClientConn::handshake(tcp, link, &H2Settings::default()).await?;
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
            // 20 ms round trips at 256 KiB are window-bound: the tuner must have grown it.
            ensure!(
                client.recv_window() >= 4 * INITIAL_STREAM_WINDOW,
                "receive window still {} after {} MiB over a 20 ms round trip",
                client.recv_window(),
                TRANSFER >> 20
            );
            Ok(())
        })?;
    }
    Ok(())
}
