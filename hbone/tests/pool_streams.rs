//! The per-core HBONE pool against a real HBONE server on loopback: multiplexing limits,
//! connection reuse, shared dials (successful and failed), per-key independence,
//! eviction of idle and GOAWAY'd connections, and retirement on certificate rotation.

mod tunnel_util;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hbone::Error;
use hbone::h2conn::H2Settings;
use hbone::pool::{Pool, PoolConfig, PoolKey};
use hbone::server::ServerConfig;
use hbone::wire::ConnectRequest;
use runtime::DriverChoice;
use runtime::net::TcpListener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_util::*;

fn echo_authority() -> ConnectRequest {
    ConnectRequest::new(SocketAddr::from(([127, 0, 0, 1], ECHO_PORT)))
}

/// A pool whose TLS source issues a fresh client certificate for `key.src` from `pki`.
fn pool(pki: Rc<Pki>, cfg: PoolConfig) -> Pool {
    Pool::new(
        cfg,
        move |key: &PoolKey| -> hbone::Result<Arc<rustls::ClientConfig>> {
            Ok(pki.client_tls(&key.src, &key.dst_ids))
        },
    )
}

/// The pool with spreading off: every stream shares the first connection with room (the
/// tests of multiplexing and of shared dials).
fn multiplexing() -> PoolConfig {
    PoolConfig {
        spread: 1,
        ..PoolConfig::default()
    }
}

/// Opens `n` tunnels at once through `pool`, holds them all open until every one is
/// established (so they are concurrent), then echoes a distinct 1 KiB through each.
async fn batch(pool: &Pool, key: &PoolKey, n: usize) -> Result<()> {
    let opened = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (pool, key, opened) = (pool.clone(), key.clone(), opened.clone());
        tasks.push(runtime::spawn(async move {
            let mut t = pool.connect(&key, &echo_authority()).await?;
            opened.set(opened.get() + 1);
            wait_until("all streams open", || opened.get() == n).await?;
            let mut msg = vec![0u8; 1024];
            fill_pattern(i as u64, 0, &mut msg);
            t.write_all(&msg).await?;
            t.shutdown().await?;
            let mut back = Vec::new();
            t.read_to_end(&mut back).await?;
            ensure!(back == msg, "stream {i}: echo differs");
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        match deadline("batch stream", t).await? {
            Ok(r) => r?,
            Err(_) => bail!("stream task panicked"),
        }
    }
    Ok(())
}

#[test]
fn thousand_concurrent_streams_then_reuse() -> Result<()> {
    for driver in [DriverChoice::IoUring, DriverChoice::Epoll] {
        run(driver, async || {
            let pki = Rc::new(Pki::new());
            let server_id = id("server");
            let server = start_server(&pki, &server_id)?;
            let pool = pool(pki.clone(), PoolConfig::default());
            let key = PoolKey::new(id("client"), vec![server_id.clone()], server.addr);

            batch(&pool, &key, 1000).await?;
            let s = pool.stats();
            // 1000 streams open at once, at most 100 per connection.
            ensure!(
                s.dials == 10,
                "dials {} for 1000 concurrent streams: {s:?}",
                s.dials
            );
            ensure!(
                server.log.accepted.get() == 10,
                "server accepted {}",
                server.log.accepted.get()
            );
            ensure!(s.dial_failures == 0 && s.open == 10, "{s:?}");

            batch(&pool, &key, 1000).await?;
            let s2 = pool.stats();
            ensure!(s2.dials == 10, "second batch dialed again: {s2:?}");
            ensure!(
                server.log.accepted.get() == 10,
                "server accepted {}",
                server.log.accepted.get()
            );
            ensure!(
                s2.reuses >= s.reuses + 1000,
                "second batch not counted as reuse: {s2:?}"
            );
            ensure!(server.log.served.borrow().len() == 2000);
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn peer_stream_limit_below_ours_opens_more_connections() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Rc::new(Pki::new());
        let server_id = id("server");
        let mut cfg = ServerConfig::new(pki.server_tls(&server_id));
        cfg.h2 = H2Settings {
            max_concurrent_streams: 10,
            ..H2Settings::default()
        };
        let server = start_server_with(cfg)?;
        let pool = pool(pki.clone(), multiplexing());
        let key = PoolKey::new(id("client"), vec![server_id], server.addr);
        // 50 streams held open at once against a peer allowing 10 per connection: a pool that
        // ignored the peer's SETTINGS would queue 40 of them forever and the batch would hang.
        batch(&pool, &key, 50).await?;
        let s = pool.stats();
        ensure!(s.dials == 5, "{s:?}");
        Ok(())
    })
}

#[test]
fn failed_dial_is_shared_and_reported() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Rc::new(Pki::new());
        // A port with nobody listening.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0".parse()?)?;
            l.local_addr()?
        };
        let pool = pool(pki, multiplexing());
        let key = PoolKey::new(id("client"), vec![id("server")], closed);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (pool, key) = (pool.clone(), key.clone());
            tasks.push(runtime::spawn(async move {
                pool.connect(&key, &echo_authority()).await
            }));
        }
        for t in tasks {
            match deadline("failed dial", t).await? {
                Ok(Err(Error::Dial { addr, source })) => {
                    ensure!(addr == closed);
                    ensure!(source.to_string().contains("refused"), "cause: {source}");
                }
                Ok(Err(e)) => bail!("unexpected error {e}"),
                Ok(Ok(_)) => bail!("connected to a closed port"),
                Err(_) => bail!("task panicked"),
            }
        }
        let s = pool.stats();
        ensure!(s.dial_failures == 1 && s.dials == 0 && s.open == 0, "{s:?}");
        Ok(())
    })
}

#[test]
fn slow_dial_does_not_block_other_keys() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Rc::new(Pki::new());
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;
        // A tarpit: accepts TCP, never answers the TLS ClientHello.
        let tarpit = TcpListener::bind("127.0.0.1:0".parse()?)?;
        let tarpit_addr = tarpit.local_addr()?;
        let held = Rc::new(std::cell::RefCell::new(Vec::new()));
        let held2 = held.clone();
        runtime::spawn(async move {
            while let Ok((s, _)) = tarpit.accept().await {
                held2.borrow_mut().push(s);
            }
        })
        .detach();

        let connect_timeout = Duration::from_secs(2);
        let pool = pool(
            pki,
            PoolConfig {
                connect_timeout,
                ..PoolConfig::default()
            },
        );
        let slow_key = PoolKey::new(id("client"), vec![server_id.clone()], tarpit_addr);
        let fast_key = PoolKey::new(id("client"), vec![server_id.clone()], server.addr);
        let (p2, k2) = (pool.clone(), slow_key.clone());
        let started = Instant::now();
        let slow = runtime::spawn(async move { p2.connect(&k2, &echo_authority()).await });
        wait_until("tarpit to hold the slow dial", || !held.borrow().is_empty()).await?;

        let mut t = pool.connect(&fast_key, &echo_authority()).await?;
        ensure!(
            started.elapsed() < connect_timeout,
            "the other key's stream waited for the slow dial"
        );
        t.write_all(b"x").await?;
        t.shutdown().await?;
        let mut back = Vec::new();
        t.read_to_end(&mut back).await?;
        ensure!(back == b"x");

        match deadline("slow dial to time out", slow).await? {
            Ok(Err(Error::Dial { source, .. })) if matches!(*source, Error::Timeout { .. }) => {}
            other => bail!("slow dial ended with {other:?}"),
        }
        ensure!(started.elapsed() >= connect_timeout);
        Ok(())
    })
}

#[test]
fn idle_connections_are_evicted_and_closed() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Rc::new(Pki::new());
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;
        let pool = pool(
            pki,
            PoolConfig {
                idle_timeout: Duration::from_millis(200),
                ..multiplexing()
            },
        );
        let key = PoolKey::new(id("client"), vec![server_id], server.addr);
        batch(&pool, &key, 3).await?;
        ensure!(pool.stats().open == 1);
        wait_until("pool to evict the idle connection", || {
            pool.stats().open == 0
        })
        .await?;
        ensure!(pool.stats().evicted_idle == 1, "{:?}", pool.stats());
        // With the pool's handle gone and no streams, h2 closes the connection.
        wait_until("server to see the connection end", || {
            server.log.live.get() == 0
        })
        .await?;
        ensure!(
            server.log.ended.borrow().iter().all(|r| r.is_ok()),
            "{:?}",
            server.log.ended.borrow()
        );
        // A connection in use is not idle: hold a stream past the timeout.
        let mut t = pool.connect(&key, &echo_authority()).await?;
        runtime::time::sleep(Duration::from_millis(500)).await;
        ensure!(
            pool.stats().open == 1,
            "evicted a connection with an open stream"
        );
        t.write_all(b"still").await?;
        t.shutdown().await?;
        let mut back = Vec::new();
        t.read_to_end(&mut back).await?;
        ensure!(back == b"still");
        Ok(())
    })
}

#[test]
fn goaway_evicts_connection_and_next_request_redials() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Rc::new(Pki::new());
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;
        let pool = pool(pki, PoolConfig::default());
        let key = PoolKey::new(id("client"), vec![server_id], server.addr);

        // A stream in flight when the server drains still completes.
        let mut inflight = pool.connect(&key, &echo_authority()).await?;
        server.log.drain.set(true);
        // A GOAWAY'd connection reports unusable; the sweep drops it from the pool.
        wait_until("client to see GOAWAY", || {
            pool.evict_idle();
            pool.stats().open == 0
        })
        .await?;
        inflight.write_all(b"drain").await?;
        inflight.shutdown().await?;
        let mut back = Vec::new();
        inflight.read_to_end(&mut back).await?;
        ensure!(back == b"drain", "in-flight stream cut by drain");
        drop(inflight);
        wait_until("drained server connection to end", || {
            server.log.live.get() == 0
        })
        .await?;
        server.log.drain.set(false);

        batch(&pool, &key, 1).await?;
        let s = pool.stats();
        ensure!(s.dials == 2 && s.evicted_broken == 1, "{s:?}");
        Ok(())
    })
}

#[test]
fn retired_connections_finish_their_streams_and_new_requests_redial() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Rc::new(Pki::new());
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;
        // Counts the TLS configs handed out: one per dial.
        let configs = Rc::new(Cell::new(0usize));
        let (pki2, configs2) = (pki.clone(), configs.clone());
        let pool = Pool::new(
            PoolConfig::default(),
            move |key: &PoolKey| -> hbone::Result<Arc<rustls::ClientConfig>> {
                configs2.set(configs2.get() + 1);
                Ok(pki2.client_tls(&key.src, &key.dst_ids))
            },
        );
        let key = PoolKey::new(id("client"), vec![server_id.clone()], server.addr);
        let other = PoolKey::new(id("other"), vec![server_id], server.addr);
        batch(&pool, &other, 1).await?;

        // A stream open on the connection when its certificate is replaced.
        let mut inflight = pool.connect(&key, &echo_authority()).await?;
        ensure!(configs.get() == 2 && pool.stats().open == 2);
        ensure!(pool.retire(|k| k.src == key.src) == 1);
        ensure!(pool.stats().open == 1, "other key's connection retired too");
        ensure!(pool.stats().retired == 1, "{:?}", pool.stats());

        // The next request dials with a fresh config; the other key's connection is reused.
        batch(&pool, &key, 1).await?;
        batch(&pool, &other, 1).await?;
        ensure!(configs.get() == 3, "{} configs", configs.get());
        ensure!(pool.stats().dials == 3, "{:?}", pool.stats());

        // The retired connection still carries its open stream to the end, then closes.
        ensure!(server.log.live.get() == 3, "live {}", server.log.live.get());
        inflight.write_all(b"rotated").await?;
        inflight.shutdown().await?;
        let mut back = Vec::new();
        inflight.read_to_end(&mut back).await?;
        ensure!(back == b"rotated", "stream on a retired connection cut");
        drop(inflight);
        wait_until("retired connection to close after its last stream", || {
            server.log.live.get() == 2
        })
        .await?;
        Ok(())
    })
}

#[test]
fn concurrent_streams_spread_over_connections_before_they_share() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Rc::new(Pki::new());
        let server_id = id("server");
        let server = start_server(&pki, &server_id)?;
        let spread = PoolConfig {
            spread: 4,
            ..PoolConfig::default()
        };
        let pool = pool(pki.clone(), spread.clone());
        let key = PoolKey::new(id("client"), vec![server_id.clone()], server.addr);
        // Four at once: a connection each.
        batch(&pool, &key, 4).await?;
        let s = pool.stats();
        ensure!(
            s.dials == 4 && s.open == 4,
            "four streams, four connections: {s:?}"
        );
        // Four more once those ended: the idle connections are reused, none is dialled.
        batch(&pool, &key, 4).await?;
        ensure!(
            pool.stats().dials == 4,
            "idle connections reused: {:?}",
            pool.stats()
        );
        // Twelve at once: past the spread they share the four, least loaded first.
        batch(&pool, &key, 12).await?;
        let s = pool.stats();
        ensure!(
            s.dials == 4 && s.open == 4,
            "twelve streams on four connections: {s:?}"
        );

        // A burst to a dead address makes at most `spread` dials, each failure reported to
        // every request that waited on it.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0".parse()?)?;
            l.local_addr()?
        };
        let burst = crate::pool(pki, spread);
        let dead = PoolKey::new(id("client"), vec![server_id], closed);
        let mut tasks = Vec::new();
        for _ in 0..30 {
            let (pool, dead) = (burst.clone(), dead.clone());
            tasks.push(runtime::spawn(async move {
                pool.connect(&dead, &echo_authority()).await
            }));
        }
        for t in tasks {
            match deadline("dead dial", t).await? {
                Ok(Err(Error::Dial { .. })) => {}
                other => bail!("a request to a dead address ended with {other:?}"),
            }
        }
        let s = burst.stats();
        ensure!(s.dial_failures <= 4 && s.dial_failures >= 1, "{s:?}");
        Ok(())
    })
}

/// A pooled stream knows its connection's end of the TCP socket: the same for every stream
/// on one connection, another for a stream on another connection, on both drivers.
#[test]
fn streams_report_their_connections_local_address() -> Result<()> {
    for driver in [DriverChoice::IoUring, DriverChoice::Epoll] {
        run(driver, async || {
            let pki = Rc::new(Pki::new());
            let server_id = id("server");
            let server = start_server(&pki, &server_id)?;
            let pool = pool(pki.clone(), multiplexing());
            let key = PoolKey::new(id("client"), vec![server_id.clone()], server.addr);
            let a = pool.connect(&key, &echo_authority()).await?;
            let b = pool.connect(&key, &echo_authority()).await?;
            let (Some(la), Some(lb)) = (a.local_addr(), b.local_addr()) else {
                bail!("a pooled stream has no local address");
            };
            ensure!(la == lb && la.port() != 0, "{la} {lb}");
            ensure!(la.ip() == server.addr.ip(), "{la} dialled {}", server.addr);
            // Another key (another client identity) gets its own connection.
            let other = PoolKey::new(id("client-2"), vec![server_id], server.addr);
            let c = pool.connect(&other, &echo_authority()).await?;
            let lc = c.local_addr().context("no local address")?;
            ensure!(lc != la, "two connections, one address: {lc}");
            ensure!(pool.stats().dials == 2, "{:?}", pool.stats());
            Ok(())
        })?;
    }
    Ok(())
}
