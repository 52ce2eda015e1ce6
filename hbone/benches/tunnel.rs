//! HBONE tunnel cost on loopback, side by side with a plain TLS 1.3 pair and plain TCP.
//!
//! Run: `cargo bench -p ringmesh-hbone --bench tunnel` (release profile). Options after `--`:
//! `--mib N` bytes per bulk run (default 1024), `--reps N` bulk runs per mode (default 3,
//! the median is reported), `--rtt N` round trips per latency run (default 20000),
//! `--idle N` idle connections and tunnels for the memory figure (default 1000, 0 skips),
//! `--driver auto|io-uring|epoll`, `--only tcp|tls|hbone|hbone-io|hbone-relay` (one bulk mode, no latency runs;
//! for profiling), `--only rtt` (latency runs only).
//!
//! Two threads, each with its own event loop, stand for the two nodes: the client side
//! (source) and the server side (HBONE server, TLS server, TCP server, each consuming what
//! arrives in-process). So all three modes carry the same payload across one loopback TCP
//! connection, differing only in protocol:
//! - `tcp`: bytes as written;
//! - `tls`: TLS 1.3 AES-128-GCM with mutual authentication (hbone::tls configs);
//! - `hbone`: the same TLS, plus HTTP/2 CONNECT framing and flow control (hbone client and
//!   server, one stream), moving payload with the zero-copy calls the relay uses
//!   (`HboneStream::poll_send` of `Bytes`, `poll_chunk` + `release`);
//! - `hbone-io`: the same through `AsyncWrite`/`AsyncRead`, which copies once more per side;
//! - `hbone-relay`: `hbone`, but the server side relays the tunnel to the TCP sink with
//!   `Incoming::serve` (`stream::relay`), the inbound path of a node proxy: one more loopback
//!   TCP hop than the other modes.
//!
//! The process allocator is mimalloc, as in the `ringmesh` binary (with glibc malloc, h2's
//! large frame buffers go through mmap/munmap and page faults dominate the profile).
//!
//! Bulk: the client writes `--mib` MiB in 256 KiB writes, half-closes, and waits for the
//! server's byte count; throughput is payload over that time, CPU is the whole process's
//! user+system CPU (both sides) per GB of payload. Latency: 64-byte request/response round
//! trips on one established stream (HBONE stream taken from a `Pool`), plus the time to open a
//! new stream on the pooled connection and do one round trip (`hbone-open`). Memory: resident
//! set growth per idle HBONE connection (TLS + HTTP/2, both ends) and per idle tunnel on it
//! (one stream each, both ends; the server side waits in `poll_chunk`, holding no buffer).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hbone::certs::{CaOptions, CertificateAuthority, LeafOptions};
use hbone::pool::{Pool, PoolConfig, PoolKey};
use hbone::server::{Incoming, ServerConfig};
use hbone::stream::HboneStream;
use hbone::wire::ConnectRequest;
use hbone::{Identity, client};
use runtime::DriverChoice;
use runtime::net::{TcpListener, TcpStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRUST_DOMAIN: &str = "cluster.local";
const CHUNK: usize = 256 * 1024;
const MSG: usize = 64;
/// HBONE authorities the bench server understands (the handler is in-process).
const SINK_PORT: u16 = 9;
/// Like [`SINK_PORT`], consuming through `AsyncRead` (one copy more).
const SINK_IO_PORT: u16 = 10;
const ECHO_PORT: u16 = 7;

struct Opts {
    mib: u64,
    reps: usize,
    rtt: usize,
    idle: usize,
    driver: DriverChoice,
    only: Option<String>,
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        mib: 1024,
        reps: 3,
        rtt: 20_000,
        idle: 1000,
        driver: DriverChoice::Auto,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--mib" => o.mib = val()?.parse()?,
            "--reps" => o.reps = val()?.parse()?,
            "--rtt" => o.rtt = val()?.parse()?,
            "--idle" => o.idle = val()?.parse()?,
            "--driver" => o.driver = val()?.parse().map_err(anyhow::Error::msg)?,
            "--only" => o.only = Some(val()?),
            "--bench" => {}
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    client_id: Identity,
    server_id: Identity,
}

fn tls() -> Result<Tls> {
    let ca = CertificateAuthority::new_root(&CaOptions::new("bench root"))?;
    let client_id = Identity::new(TRUST_DOMAIN, "bench", "client")?;
    let server_id = Identity::new(TRUST_DOMAIN, "bench", "server")?;
    let roots = [ca.root_der().clone()];
    let s = ca.issue(&server_id, &LeafOptions::default())?;
    let c = ca.issue(&client_id, &LeafOptions::default())?;
    Ok(Tls {
        server: hbone::tls::server_config(s.chain(), s.key(), &roots, TRUST_DOMAIN)?,
        client: hbone::tls::client_config(c.chain(), c.key(), &roots, vec![server_id.clone()])?,
        client_id,
        server_id,
    })
}

#[derive(Clone, Copy)]
struct Addrs {
    tcp_sink: SocketAddr,
    tcp_echo: SocketAddr,
    tls_sink: SocketAddr,
    tls_echo: SocketAddr,
    hbone: SocketAddr,
}

/// Reads to EOF, then answers the byte count (8 bytes, big endian) and closes.
async fn sink<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    s.write_all(&total.to_be_bytes()).await?;
    s.shutdown().await
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return s.shutdown().await;
        }
        s.write_all(&buf[..n]).await?;
    }
}

fn serve_plain(l: TcpListener, echo_mode: bool) {
    runtime::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            runtime::spawn(async move {
                let _ = if echo_mode {
                    echo(s).await
                } else {
                    sink(s).await
                };
            })
            .detach();
        }
    })
    .detach();
}

fn serve_tls(l: TcpListener, cfg: Arc<rustls::ServerConfig>, echo_mode: bool) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    runtime::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            runtime::spawn(async move {
                let Ok(s) = acceptor.accept(s).await else {
                    return;
                };
                let _ = if echo_mode {
                    echo(s).await
                } else {
                    sink(s).await
                };
            })
            .detach();
        }
    })
    .detach();
}

async fn hbone_handler(i: Incoming) {
    let authority = i.request().authority.clone();
    match authority.port() {
        ECHO_PORT | SINK_IO_PORT | SINK_PORT => {}
        _ => {
            // Any other authority is a real address: dial it and relay, as a node proxy does.
            let meter = runtime::meter::Meter::new();
            let _ = i
                .serve(
                    async move {
                        let addr = authority
                            .socket_addr()
                            .ok_or(hbone::wire::Status::BadRequest)?;
                        TcpStream::connect(addr)
                            .await
                            .map_err(|_| hbone::wire::Status::ServiceUnavailable)
                    },
                    &meter,
                    std::future::pending(),
                )
                .await;
            return;
        }
    }
    let Ok(t) = i.accept() else { return };
    let _ = match authority.port() {
        ECHO_PORT => echo(t).await,
        SINK_IO_PORT => sink(t).await,
        _ => sink_chunks(t).await,
    };
}

/// [`sink`] without copying: takes h2's buffers and gives the window back.
async fn sink_chunks(mut t: HboneStream) -> std::io::Result<()> {
    let mut total = 0u64;
    while let Some(chunk) = std::future::poll_fn(|cx| t.poll_chunk(cx)).await? {
        total += chunk.len() as u64;
        t.release(chunk.len());
    }
    t.write_all(&total.to_be_bytes()).await?;
    t.shutdown().await
}

/// [`upload`] without copying: hands h2 slices of one shared buffer.
async fn upload_chunks(mut t: HboneStream, bytes: u64) -> Result<()> {
    let buf = Bytes::from(vec![0x5au8; CHUNK]);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        let mut b = buf.slice(..n);
        while !b.is_empty() {
            std::future::poll_fn(|cx| t.poll_send(cx, &mut b)).await?;
        }
        left -= n as u64;
    }
    t.shutdown().await?;
    let mut ack = [0u8; 8];
    t.read_exact(&mut ack).await?;
    if u64::from_be_bytes(ack) != bytes {
        bail!(
            "server counted {} of {bytes} bytes",
            u64::from_be_bytes(ack)
        );
    }
    Ok(())
}

async fn server_side(
    tls: Arc<rustls::ServerConfig>,
    tx: std::sync::mpsc::Sender<Addrs>,
) -> Result<()> {
    let bind = || TcpListener::bind("127.0.0.1:0".parse().expect("addr"));
    let (ts, te, ls, le, hb) = (bind()?, bind()?, bind()?, bind()?, bind()?);
    tx.send(Addrs {
        tcp_sink: ts.local_addr()?,
        tcp_echo: te.local_addr()?,
        tls_sink: ls.local_addr()?,
        tls_echo: le.local_addr()?,
        hbone: hb.local_addr()?,
    })?;
    serve_plain(ts, false);
    serve_plain(te, true);
    serve_tls(ls, tls.clone(), false);
    serve_tls(le, tls.clone(), true);
    let cfg = ServerConfig::new(tls);
    while let Ok((s, _)) = hb.accept().await {
        let cfg = cfg.clone();
        runtime::spawn(async move {
            let _ = hbone::server::serve_tls(s, &cfg, std::future::pending(), hbone_handler).await;
        })
        .detach();
    }
    Ok(())
}

/// Resident set size from /proc/self/statm, in KiB (4 KiB pages).
fn rss_kib() -> Result<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .context("statm format")?
        .parse()?;
    Ok(pages * 4.0)
}

/// KiB of resident memory per idle connection and per idle tunnel (both ends counted).
async fn idle_memory(a: Addrs, tls: &Tls, n: usize) -> Result<(f64, f64)> {
    // Let the allocator and the event loops reach a steady state first.
    let warm = client::connect(a.hbone, tls.client.clone(), &Default::default()).await?;
    drop(warm);
    let rss0 = rss_kib()?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(client::connect(a.hbone, tls.client.clone(), &Default::default()).await?);
    }
    let rss1 = rss_kib()?;
    let sink = ConnectRequest::new(SocketAddr::from(([127, 0, 0, 1], SINK_PORT)));
    let mut tunnels = Vec::with_capacity(n);
    for c in &conns {
        tunnels.push(c.send_connect(&sink).await?);
    }
    // The server's handler tasks start as the 200s go out; give them a moment to park.
    runtime::time::sleep(Duration::from_millis(200)).await;
    let rss2 = rss_kib()?;
    drop(tunnels);
    drop(conns);
    Ok(((rss1 - rss0) / n as f64, (rss2 - rss1) / n as f64))
}

/// Process CPU time (user + system) from /proc/self/stat, in seconds.
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // USER_HZ is 100 on Linux for every architecture this runs on (getconf CLK_TCK).
    Ok(ticks as f64 / 100.0)
}

async fn upload<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, bytes: u64) -> Result<()> {
    let buf = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).await?;
    if u64::from_be_bytes(ack) != bytes {
        bail!(
            "server counted {} of {bytes} bytes",
            u64::from_be_bytes(ack)
        );
    }
    Ok(())
}

struct Bulk {
    gbit_s: f64,
    cpu_s_per_gb: f64,
}

async fn bulk(mode: &str, a: Addrs, tls: &Tls, bytes: u64) -> Result<Bulk> {
    let cpu0 = cpu_seconds()?;
    let t0 = Instant::now();
    match mode {
        "tcp" => upload(TcpStream::connect(a.tcp_sink).await?, bytes).await?,
        "tls" => {
            let tcp = TcpStream::connect(a.tls_sink).await?;
            let s = tokio_rustls::TlsConnector::from(tls.client.clone())
                .connect(hbone::tls::server_name(), tcp)
                .await?;
            upload(s, bytes).await?
        }
        "hbone" | "hbone-io" | "hbone-relay" => {
            let conn = client::connect(a.hbone, tls.client.clone(), &Default::default()).await?;
            let target = match mode {
                "hbone" => SocketAddr::from(([127, 0, 0, 1], SINK_PORT)),
                "hbone-io" => SocketAddr::from(([127, 0, 0, 1], SINK_IO_PORT)),
                _ => a.tcp_sink,
            };
            let t = conn.send_connect(&ConnectRequest::new(target)).await?;
            if mode != "hbone-io" {
                upload_chunks(t, bytes).await?
            } else {
                upload(t, bytes).await?
            }
        }
        _ => unreachable!(),
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu0;
    let gb = bytes as f64 / 1e9;
    Ok(Bulk {
        gbit_s: gb * 8.0 / secs,
        cpu_s_per_gb: cpu / gb,
    })
}

async fn round_trips<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    n: usize,
) -> Result<Vec<Duration>> {
    let msg = [0x42u8; MSG];
    let mut back = [0u8; MSG];
    let mut out = Vec::with_capacity(n);
    // Warm-up, not recorded.
    for _ in 0..n / 10 {
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
    }
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn latency(mode: &str, a: Addrs, tls: &Tls, n: usize) -> Result<Vec<Duration>> {
    match mode {
        "tcp" => round_trips(&mut TcpStream::connect(a.tcp_echo).await?, n).await,
        "tls" => {
            let tcp = TcpStream::connect(a.tls_echo).await?;
            let mut s = tokio_rustls::TlsConnector::from(tls.client.clone())
                .connect(hbone::tls::server_name(), tcp)
                .await?;
            round_trips(&mut s, n).await
        }
        "hbone" | "hbone-open" => {
            let client_tls = tls.client.clone();
            let pool = Pool::new(PoolConfig::default(), move |_: &PoolKey| {
                Ok(client_tls.clone())
            });
            let key = PoolKey::new(tls.client_id.clone(), vec![tls.server_id.clone()], a.hbone);
            let req = ConnectRequest::new(SocketAddr::from(([127, 0, 0, 1], ECHO_PORT)));
            if mode == "hbone" {
                let mut t = pool.connect(&key, &req).await?;
                return round_trips(&mut t, n).await;
            }
            // A fresh stream per round trip on the pooled connection.
            let mut out = Vec::with_capacity(n / 10);
            for _ in 0..n / 10 {
                let t0 = Instant::now();
                let mut t = pool.connect(&key, &req).await?;
                t.write_all(&[1u8; MSG]).await?;
                let mut back = [0u8; MSG];
                t.read_exact(&mut back).await?;
                out.push(t0.elapsed());
            }
            Ok(out)
        }
        _ => unreachable!(),
    }
}

fn main() -> Result<()> {
    let o = parse_opts()?;
    let t = tls()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let server_tls = t.server.clone();
    let driver = o.driver;
    // The server side runs until the process exits.
    std::thread::spawn(move || runtime::block_on(driver, server_side(server_tls, tx)));
    let addrs = rx
        .recv_timeout(Duration::from_secs(10))
        .context("server side did not start")?;

    runtime::block_on(o.driver, async {
        println!(
            "driver={} payload={} MiB reps={} (median)",
            o.driver, o.mib, o.reps
        );
        println!("{:<12} {:>10} {:>12}", "mode", "Gbit/s", "CPU-s/GB");
        for mode in ["tcp", "tls", "hbone", "hbone-io", "hbone-relay"] {
            if o.only.as_deref().is_some_and(|m| m != mode) {
                // `--only rtt` skips every bulk mode.
                continue;
            }
            let mut runs = Vec::new();
            for _ in 0..o.reps {
                runs.push(bulk(mode, addrs, &t, o.mib << 20).await?);
            }
            runs.sort_by(|a, b| a.gbit_s.total_cmp(&b.gbit_s));
            let m = &runs[runs.len() / 2];
            println!("{mode:<12} {:>10.2} {:>12.2}", m.gbit_s, m.cpu_s_per_gb);
        }
        if o.only.as_deref().is_some_and(|m| m != "rtt") {
            return Ok(());
        }
        println!();
        println!(
            "{:<11} {:>8} {:>9} {:>9} {:>9}",
            "rtt", "n", "p50 us", "p90 us", "p99 us"
        );
        for mode in ["tcp", "tls", "hbone", "hbone-open"] {
            let mut d = latency(mode, addrs, &t, o.rtt).await?;
            d.sort();
            println!(
                "{mode:<11} {:>8} {:>9.1} {:>9.1} {:>9.1}",
                d.len(),
                pct(&d, 0.5),
                pct(&d, 0.9),
                pct(&d, 0.99)
            );
        }
        if o.idle > 0 {
            let (conn, tunnel) = idle_memory(addrs, &t, o.idle).await?;
            println!();
            println!(
                "idle memory (n={}): {conn:.1} KiB per HBONE connection, {tunnel:.1} KiB per tunnel \
                 (client + server side)",
                o.idle
            );
        }
        Ok::<_, anyhow::Error>(())
    })??;
    Ok(())
}
