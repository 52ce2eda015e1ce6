//! Relay tests on real loopback sockets, for both copy modes on both drivers. The relay
//! runs on an event loop on the test thread; client and backend are plain blocking threads,
//! so they observe exactly what a peer would.

use std::io::{Read, Write};
use std::net::{
    Shutdown as NetShutdown, SocketAddr, TcpListener as StdListener, TcpStream as StdStream,
};
use std::thread;
use std::time::Duration;

use super::*;
use crate::DriverChoice;
use crate::net::TcpListener;

const DRIVERS: [DriverChoice; 2] = [DriverChoice::IoUring, DriverChoice::Epoll];
const MODES: [CopyMode; 2] = [CopyMode::Splice, CopyMode::Buffered];

/// Accepts one connection on a fresh listener, dials `backend`, relays, returns the result.
fn relay_once<C>(
    driver: DriverChoice,
    opts: RelayOptions,
    backend: SocketAddr,
    client: C,
) -> Result<RelayStats, RelayError>
where
    C: FnOnce(SocketAddr) + Send + 'static,
{
    relay_once_until(driver, opts, backend, client, None).0
}

/// [`relay_once`] with an abort signal after `abort_after`; also returns the meter's figures.
fn relay_once_until<C>(
    driver: DriverChoice,
    opts: RelayOptions,
    backend: SocketAddr,
    client: C,
    abort_after: Option<Duration>,
) -> (Result<RelayStats, RelayError>, RelayStats)
where
    C: FnOnce(SocketAddr) + Send + 'static,
{
    crate::block_on(driver, async move {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = thread::spawn(move || client(addr));
        let (a, _) = listener.accept().await.unwrap();
        let b = TcpStream::connect(backend).await.unwrap();
        let meter = Meter::new();
        let abort = async move {
            match abort_after {
                Some(d) => crate::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let res = relay_metered(a, b, &opts, &meter, abort)
            .await
            .map(|()| meter.transferred());
        // Keep the event loop running while the client finishes: sockets whose readiness
        // waits were cancelled close only once the loop has processed the cancellation.
        while !client.is_finished() {
            crate::time::sleep(Duration::from_millis(5)).await;
        }
        client.join().unwrap();
        (res, meter.transferred())
    })
    .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn moves_bulk_both_ways_intact_in_every_mode_and_driver() {
    const LEN: usize = 8 << 20;
    for driver in DRIVERS {
        for mode in MODES {
            // Backend: reads LEN bytes while sending its own LEN bytes, then checks.
            let backend = StdListener::bind("127.0.0.1:0").unwrap();
            let baddr = backend.local_addr().unwrap();
            let server = thread::spawn(move || {
                let (mut s, _) = backend.accept().unwrap();
                let mut w = s.try_clone().unwrap();
                let sender = thread::spawn(move || {
                    w.write_all(&pattern(LEN, 7)).unwrap();
                    w.shutdown(NetShutdown::Write).unwrap();
                });
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                sender.join().unwrap();
                assert!(got == pattern(LEN, 1), "backend got corrupted data");
            });
            let stats = relay_once(
                driver,
                RelayOptions {
                    mode,
                    idle_timeout: None,
                },
                baddr,
                |addr| {
                    let mut c = StdStream::connect(addr).unwrap();
                    let mut w = c.try_clone().unwrap();
                    let sender = thread::spawn(move || {
                        w.write_all(&pattern(LEN, 1)).unwrap();
                        w.shutdown(NetShutdown::Write).unwrap();
                    });
                    let mut got = Vec::new();
                    c.read_to_end(&mut got).unwrap();
                    sender.join().unwrap();
                    assert!(got == pattern(LEN, 7), "client got corrupted data");
                },
            )
            .unwrap();
            server.join().unwrap();
            assert_eq!(
                stats,
                RelayStats {
                    from_originator: LEN as u64,
                    toward_originator: LEN as u64
                },
                "{driver} {mode}"
            );
        }
    }
}

#[test]
fn half_close_keeps_the_other_direction_flowing() {
    for driver in DRIVERS {
        for mode in MODES {
            let backend = StdListener::bind("127.0.0.1:0").unwrap();
            let baddr = backend.local_addr().unwrap();
            let server = thread::spawn(move || {
                let (mut s, _) = backend.accept().unwrap();
                // The client's FIN arrives first...
                let mut req = Vec::new();
                s.read_to_end(&mut req).unwrap();
                assert_eq!(req, b"request");
                // ...and the answer still flows back afterwards, then our FIN.
                s.write_all(b"response after half-close").unwrap();
                s.shutdown(NetShutdown::Write).unwrap();
            });
            relay_once(
                driver,
                RelayOptions {
                    mode,
                    idle_timeout: None,
                },
                baddr,
                |addr| {
                    let mut c = StdStream::connect(addr).unwrap();
                    c.write_all(b"request").unwrap();
                    c.shutdown(NetShutdown::Write).unwrap();
                    let mut resp = Vec::new();
                    c.read_to_end(&mut resp).unwrap();
                    assert_eq!(resp, b"response after half-close");
                },
            )
            .unwrap();
            server.join().unwrap();
        }
    }
}

#[test]
fn reset_is_propagated_as_reset() {
    for driver in DRIVERS {
        for mode in MODES {
            let backend = StdListener::bind("127.0.0.1:0").unwrap();
            let baddr = backend.local_addr().unwrap();
            let server = thread::spawn(move || {
                let (mut s, _) = backend.accept().unwrap();
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).unwrap();
                // Abort: zero linger turns close into RST.
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            });
            let res = relay_once(
                driver,
                RelayOptions {
                    mode,
                    idle_timeout: None,
                },
                baddr,
                |addr| {
                    let mut c = StdStream::connect(addr).unwrap();
                    c.write_all(b"hello").unwrap();
                    let mut buf = [0u8; 16];
                    let err = c
                        .read(&mut buf)
                        .expect_err("the client must see a reset, not EOF");
                    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
                },
            );
            server.join().unwrap();
            let err = res.expect_err("relay must report the reset");
            assert!(err.is_reset(), "{driver} {mode}: {err}");
        }
    }
}

#[test]
fn idle_timeout_closes_both_sides() {
    for driver in DRIVERS {
        let backend = StdListener::bind("127.0.0.1:0").unwrap();
        let baddr = backend.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = backend.accept().unwrap();
            let mut buf = Vec::new();
            // Returns once the relay closes us.
            let _ = s.read_to_end(&mut buf);
        });
        let opts = RelayOptions {
            mode: CopyMode::Splice,
            idle_timeout: Some(Duration::from_millis(200)),
        };
        let (res, stats) = relay_once_until(
            driver,
            opts,
            baddr,
            |addr| {
                let mut c = StdStream::connect(addr).unwrap();
                c.write_all(b"x").unwrap();
                let mut buf = Vec::new();
                let _ = c.read_to_end(&mut buf);
            },
            None,
        );
        server.join().unwrap();
        match res {
            Err(RelayError::IdleTimeout(_)) => assert_eq!(stats.from_originator, 1),
            other => panic!("{driver}: expected idle timeout, got {other:?}"),
        }
    }
}

#[test]
fn an_abort_resets_both_peers_and_keeps_the_counts() {
    for driver in DRIVERS {
        for mode in MODES {
            let backend = StdListener::bind("127.0.0.1:0").unwrap();
            let baddr = backend.local_addr().unwrap();
            let server = thread::spawn(move || {
                let (mut s, _) = backend.accept().unwrap();
                s.write_all(b"hello").unwrap();
                let mut buf = [0u8; 64];
                // The relay is aborted while we wait for more: a reset, not an end.
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(_) => continue,
                        Err(e) => return Err(e.kind()),
                    }
                }
            });
            let (res, stats) = relay_once_until(
                driver,
                RelayOptions {
                    mode,
                    idle_timeout: None,
                },
                baddr,
                |addr| {
                    let mut c = StdStream::connect(addr).unwrap();
                    c.write_all(b"abc").unwrap();
                    let mut buf = [0u8; 64];
                    let mut got = 0;
                    let end = loop {
                        match c.read(&mut buf) {
                            Ok(0) => break Ok(()),
                            Ok(n) => got += n,
                            Err(e) => break Err(e.kind()),
                        }
                    };
                    assert_eq!(got, 5);
                    assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset));
                },
                Some(Duration::from_millis(300)),
            );
            let backend_end = server.join().unwrap();
            assert!(
                matches!(res, Err(RelayError::Aborted)),
                "{driver} {mode}: {res:?}"
            );
            assert_eq!(
                backend_end,
                Err(std::io::ErrorKind::ConnectionReset),
                "{driver} {mode}"
            );
            assert_eq!(
                stats,
                RelayStats {
                    from_originator: 3,
                    toward_originator: 5
                },
                "{driver} {mode}"
            );
        }
    }
}
