//! `ringmesh forward` end to end: the real binary, real sockets on loopback, both copy
//! modes on both drivers.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use anyhow::Result;
use e2e::{Proc, bin, checksum, free_addr, wait_for};

const START: Duration = Duration::from_secs(20);

fn forwarder(to: SocketAddr, extra: &[&str]) -> Result<(Proc, SocketAddr)> {
    let listen = free_addr();
    let (l, t) = (listen.to_string(), to.to_string());
    let mut args = vec!["forward", "--listen", &l, "--to", &t];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&bin("ringmesh"), &args)?;
    // Wait for the start-up log line rather than probing the port: a probe connection
    // would itself be forwarded and reach the backend.
    wait_for(START, "forwarder start-up", || {
        p.stderr().contains("forwarding")
    })?;
    Ok((p, listen))
}

/// An echo backend on a thread per connection; returns its address.
fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let _ = std::io::copy(&mut s, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Deterministic pseudo-random bytes (xorshift), generated in chunks.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

#[test]
fn moves_256_mib_both_ways_intact_for_each_copy_mode_and_driver() -> Result<()> {
    const TOTAL: usize = 256 << 20;
    let backend = echo_backend();
    for driver in ["io-uring", "epoll"] {
        for copy in ["splice", "buffered"] {
            let (proc, addr) = forwarder(
                backend,
                &["--cores", "2", "--driver", driver, "--copy", copy],
            )?;
            let mut c = TcpStream::connect(addr)?;
            let mut w = c.try_clone()?;
            let sender = thread::spawn(move || -> std::io::Result<u64> {
                let mut state = 0x9e37_79b9_7f4a_7c15u64;
                let mut buf = vec![0u8; 1 << 20];
                let mut h = Vec::with_capacity(TOTAL / (1 << 20));
                for _ in 0..TOTAL / buf.len() {
                    fill(&mut state, &mut buf);
                    h.push(checksum(&buf));
                    w.write_all(&buf)?;
                }
                w.shutdown(Shutdown::Write)?;
                Ok(checksum(
                    &h.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
                ))
            });
            let mut received = 0usize;
            let mut buf = vec![0u8; 1 << 20];
            let mut filled = 0;
            let mut hashes = Vec::new();
            loop {
                let n = c.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
                received += n;
                if filled == buf.len() {
                    hashes.push(checksum(&buf));
                    filled = 0;
                }
            }
            let sent = sender.join().unwrap()?;
            assert_eq!(received, TOTAL, "{driver}/{copy}: byte count");
            assert_eq!(filled, 0);
            let got = checksum(
                &hashes
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<_>>(),
            );
            assert_eq!(got, sent, "{driver}/{copy}: data corrupted");
            let log = proc.stderr();
            let want = if driver == "io-uring" {
                "driver=io_uring"
            } else {
                "driver=epoll"
            };
            assert!(
                log.contains(want),
                "{driver}: driver not reported in log:\n{log}"
            );
        }
    }
    Ok(())
}

#[test]
fn half_close_in_both_directions() -> Result<()> {
    // Backend reads the whole request (until the client's FIN), then answers and closes.
    let l = TcpListener::bind("127.0.0.1:0")?;
    let backend = l.local_addr()?;
    let server = thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut s, _) = l.accept()?;
        let mut req = Vec::new();
        s.read_to_end(&mut req)?;
        s.write_all(b"late answer")?;
        s.shutdown(Shutdown::Write)?;
        Ok(req)
    });
    let (_proc, addr) = forwarder(backend, &["--cores", "1"])?;
    let mut c = TcpStream::connect(addr)?;
    c.write_all(b"question")?;
    c.shutdown(Shutdown::Write)?;
    let mut resp = Vec::new();
    c.read_to_end(&mut resp)?; // returns only once the server's FIN came through
    assert_eq!(resp, b"late answer");
    assert_eq!(server.join().unwrap()?, b"question");
    Ok(())
}

#[test]
fn a_thousand_concurrent_connections_spread_over_two_workers() -> Result<()> {
    let backend = echo_backend();
    let (proc, addr) = forwarder(
        backend,
        &["--cores", "2", "--log", "info,proxy::forward=debug"],
    )?;
    let mut conns = Vec::new();
    for i in 0..1000u32 {
        let mut c = TcpStream::connect(addr)?;
        c.write_all(&i.to_le_bytes())?;
        conns.push(c);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut b = [0u8; 4];
        c.read_exact(&mut b)?;
        assert_eq!(
            u32::from_le_bytes(b),
            i as u32,
            "connection {i} got another's bytes"
        );
        c.shutdown(Shutdown::Write)?;
    }
    for c in &mut conns {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)?;
        assert!(rest.is_empty());
    }
    wait_for(Duration::from_secs(10), "all connections logged", || {
        proc.stderr().matches("connection done").count() >= 1000
    })?;
    let log = proc.stderr();
    let w0 = log
        .lines()
        .filter(|l| l.contains("connection done") && l.contains("worker=0"))
        .count();
    let w1 = log
        .lines()
        .filter(|l| l.contains("connection done") && l.contains("worker=1"))
        .count();
    assert_eq!(w0 + w1, 1000);
    assert!(
        w0 > 100 && w1 > 100,
        "connections not spread over cores: {w0} vs {w1}"
    );
    Ok(())
}

/// Connects `n` times from a thread pinned to `core`, echoes 4 bytes on each and closes.
fn connect_from_core(addr: SocketAddr, core: usize, n: u32) -> thread::JoinHandle<Result<()>> {
    thread::spawn(move || {
        anyhow::ensure!(
            core_affinity::set_for_current(core_affinity::CoreId { id: core }),
            "cannot pin the client thread to core {core}"
        );
        for i in 0..n {
            let mut c = TcpStream::connect(addr)?;
            c.set_read_timeout(Some(Duration::from_secs(20)))?;
            c.write_all(&i.to_le_bytes())?;
            let mut b = [0u8; 4];
            c.read_exact(&mut b)?;
            anyhow::ensure!(
                u32::from_le_bytes(b) == i,
                "connection {i} got another's bytes"
            );
        }
        Ok(())
    })
}

#[test]
fn incoming_cpu_all_keeps_each_connection_on_the_clients_core() -> Result<()> {
    let cores = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(0);
    if cores < 2 {
        eprintln!("SKIPPED: needs 2 cores, this machine has {cores}");
        return Ok(());
    }
    let backend = echo_backend();
    let (proc, addr) = forwarder(
        backend,
        &[
            "--cores",
            "0,1",
            "--incoming-cpu",
            "all",
            "--log",
            "info,proxy::forward=debug",
        ],
    )?;
    assert!(
        proc.stderr().contains("incoming_cpu=\"all\""),
        "{}",
        proc.stderr()
    );
    // One after the other, so each side's SYNs are processed on its own core.
    for core in [0, 1] {
        connect_from_core(addr, core, 20).join().unwrap()?;
    }
    wait_for(Duration::from_secs(10), "all connections logged", || {
        proc.stderr().matches("connection done").count() >= 40
    })?;
    let log = proc.stderr();
    let on = |w: &str| {
        log.lines()
            .filter(|l| l.contains("connection done") && l.contains(w))
            .count()
    };
    // Loopback processes a SYN on the sending core: with steering, the worker pinned to
    // that core takes every connection (the kernel's hash would split them).
    assert_eq!((on("worker=0"), on("worker=1")), (20, 20), "{log}");
    Ok(())
}

#[test]
fn refused_backend_resets_the_client_and_logs_both_addresses() -> Result<()> {
    let dead = free_addr(); // nothing listens here
    let (proc, addr) = forwarder(dead, &["--cores", "1"])?;
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 1];
    let err = c.read(&mut buf).expect_err("client must be reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    wait_for(Duration::from_secs(5), "dial error logged", || {
        proc.stderr().contains("dial failed")
    })?;
    let log = proc.stderr();
    assert!(
        log.contains(&dead.to_string()),
        "target address missing from log:\n{log}"
    );
    assert!(
        log.contains(&c.local_addr()?.to_string()),
        "client address missing from log:\n{log}"
    );
    Ok(())
}

#[test]
fn idle_forwarder_exits_zero_on_sigterm() -> Result<()> {
    let (mut proc, _addr) = forwarder(echo_backend(), &["--cores", "2"])?;
    proc.signal("TERM")?;
    assert_eq!(proc.wait_exit(Duration::from_secs(10))?, Some(0));
    Ok(())
}

#[test]
fn live_transfer_finishes_within_the_drain_deadline() -> Result<()> {
    let backend = echo_backend();
    let (mut proc, addr) = forwarder(backend, &["--cores", "1", "--drain-timeout", "10s"])?;
    let mut c = TcpStream::connect(addr)?;
    c.write_all(b"before")?;
    let mut b = [0u8; 6];
    c.read_exact(&mut b)?;
    proc.signal("TERM")?;
    // New connections are refused once draining...
    wait_for(Duration::from_secs(5), "listener closed", || {
        TcpStream::connect(addr).is_err()
    })?;
    // ...while the live one keeps working until it ends.
    c.write_all(b"during drain")?;
    let mut b = [0u8; 12];
    c.read_exact(&mut b)?;
    assert_eq!(&b, b"during drain");
    c.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)?;
    assert_eq!(proc.wait_exit(Duration::from_secs(10))?, Some(0));
    Ok(())
}

#[test]
fn drain_deadline_closes_connections_that_do_not_end() -> Result<()> {
    let (mut proc, addr) = forwarder(
        echo_backend(),
        &["--cores", "1", "--drain-timeout", "300ms"],
    )?;
    let mut c = TcpStream::connect(addr)?;
    c.write_all(b"x")?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b)?;
    proc.signal("TERM")?;
    assert_eq!(proc.wait_exit(Duration::from_secs(10))?, Some(0));
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest); // EOF or reset, but not a hang
    Ok(())
}

#[test]
fn bad_flags_are_rejected_with_a_clear_message() -> Result<()> {
    let refused = |flag: &str, value: &str| -> Result<String> {
        let out = std::process::Command::new(bin("ringmesh"))
            .args(["forward", "--listen", "127.0.0.1:1", "--to", "127.0.0.1:2"])
            .args([flag, value])
            .output()?;
        assert!(!out.status.success(), "{flag} {value} was accepted");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let err = refused("--copy", "teleport")?;
    assert!(err.contains("teleport") && err.contains("splice"), "{err}");
    let err = refused("--incoming-cpu", "sideways")?;
    assert!(
        err.contains("--incoming-cpu") && err.contains("sideways"),
        "{err}"
    );
    // A port already in use aborts start-up and names the address.
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let a = taken.local_addr()?.to_string();
    let out = std::process::Command::new(bin("ringmesh"))
        .args(["forward", "--listen", &a, "--to", "127.0.0.1:2"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&a) && err.to_lowercase().contains("in use"),
        "{err}"
    );
    Ok(())
}
