//! The admin CPU profile (`GET /debug/pprof/profile`, as ztunnel serves it): a real node
//! under a little traffic answers with a pprof protobuf that pprof's own types decode, with
//! samples; bad lengths get 400, a second profile while one runs gets 503, and other
//! methods 405.
//!
//! Address plan: 127.242.0.0/16.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::{MeshDir, Node, http_request, ip4};
use pprof::protos::Message as _;

/// A raw GET returning (status, body bytes).
fn get(addr: SocketAddr, target: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, raw[split + 4..].to_vec()))
}

#[test]
fn a_cpu_profile_is_pprof_protobuf_with_samples() -> Result<()> {
    let mesh = MeshDir::new("workloads: []\n")?;
    let node = Node::start(&mesh, "node-1", ip4(242, 0, 1), &[])?;
    let admin = node.admin();

    // Keep the node busy in its own code while it is sampled: rendering /metrics (the
    // profiler drops samples taken inside libc, as ztunnel's does, so relaying bytes,
    // which is mostly syscalls, leaves few).
    let metrics = SocketAddr::new(ip4(242, 0, 1), 15020);
    let hammer = |ms: u64| {
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_millis(ms);
            while std::time::Instant::now() < until {
                let _ = http_request(metrics, "GET", "/metrics");
            }
        })
    };
    let second = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        get(admin, "/debug/pprof/profile?seconds=1")
    });
    // A sampler at 99 Hz over a few seconds of light work: retried (bounded) until a
    // profile holds samples, so a loaded machine does not make this flaky.
    let mut profile = None;
    for _ in 0..3 {
        let busy = [hammer(2500), hammer(2500)];
        let (status, body) = get(admin, "/debug/pprof/profile?seconds=3")?;
        for b in busy {
            let _ = b.join();
        }
        ensure!(
            status == 200,
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
        let p = pprof::protos::Profile::decode(body.as_slice())?;
        if !p.sample.is_empty() {
            profile = Some(p);
            break;
        }
    }
    let profile = profile.context("three profiles with no samples")?;
    ensure!(!profile.string_table.is_empty());
    let (status, _) = second.join().map_err(|_| anyhow::anyhow!("panicked"))??;
    ensure!(status == 503, "a concurrent profile got {status}");

    for bad in ["0", "61", "ten", "-1"] {
        let (status, body) = get(admin, &format!("/debug/pprof/profile?seconds={bad}"))?;
        ensure!(status == 400, "seconds={bad}: {status}");
        ensure!(String::from_utf8_lossy(&body).contains("seconds"));
    }
    let (status, _) = http_request(admin, "POST", "/debug/pprof/profile")?;
    ensure!(status == 405);
    Ok(())
}
