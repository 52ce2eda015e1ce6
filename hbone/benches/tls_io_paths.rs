//! Which I/O path should rustls (and h2 above it) run on: readiness or completion?
//!
//! rustls and h2 want poll-style streams. On a completion runtime there are two ways to
//! give them one: a readiness stream (non-blocking syscalls, waiting on POLL_ADD/epoll only
//! on EAGAIN: `runtime::net::TcpStream`), or compio's compat adapter, which runs completion
//! reads and writes into its own buffers and copies between them and the caller's
//! (`compio::io::compat::AsyncStream`). This bench moves the same bytes through mutual TLS
//! 1.3 (hbone::tls configs) over one loopback connection both ways and compares throughput
//! and the process's CPU per GB (both ends).
//!
//! Run: `cargo bench -p ringmesh-hbone --bench tls_io_paths -- [--mib N] [--reps N]`.
//! Modes alternate within each repetition; the median is reported.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

use anyhow::{Context, Result};
use hbone::Identity;
use hbone::certs::{CaOptions, CertificateAuthority, LeafOptions};
use runtime::DriverChoice;
use runtime::net::{TcpListener, TcpStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::compat::FuturesAsyncReadCompatExt;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHUNK: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Readiness,
    Completion,
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime + stime, in clock ticks of 1/100 s (USER_HZ on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

/// Either kind of stream, as rustls wants it.
async fn wrap(s: TcpStream, mode: Mode) -> Result<Pin<Box<dyn Io>>> {
    Ok(match mode {
        Mode::Readiness => Box::pin(s),
        Mode::Completion => {
            let c = s.into_compio()?;
            Box::pin(runtime::compio::io::compat::AsyncStream::new(c).compat())
        }
    })
}

trait Io: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> Io for T {}

fn main() -> Result<()> {
    let mut mib = 1024u64;
    let mut reps = 3usize;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--mib" => mib = args.get(i + 1).context("--mib N")?.parse()?,
            "--reps" => reps = args.get(i + 1).context("--reps N")?.parse()?,
            "--bench" => {
                i += 1;
                continue;
            }
            other => anyhow::bail!("unknown option {other}"),
        }
        i += 2;
    }
    let ca = CertificateAuthority::new_root(&CaOptions::new("bench root"))?;
    let server_id: Identity = "spiffe://cluster.local/ns/b/sa/server".parse()?;
    let client_id: Identity = "spiffe://cluster.local/ns/b/sa/client".parse()?;
    let s_leaf = ca.issue(&server_id, &LeafOptions::default())?;
    let c_leaf = ca.issue(&client_id, &LeafOptions::default())?;
    let roots = vec![ca.root_der().clone()];
    let server_cfg =
        hbone::tls::server_config(s_leaf.chain(), s_leaf.key(), &roots, "cluster.local")?;
    let client_cfg =
        hbone::tls::client_config(c_leaf.chain(), c_leaf.key(), &roots, vec![server_id])?;

    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let (mode_tx, mode_rx) = std::sync::mpsc::channel::<Option<Mode>>();
    let server = std::thread::spawn(move || -> Result<()> {
        runtime::block_on(DriverChoice::IoUring, async move {
            let l = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
            addr_tx.send(l.local_addr()?)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
            while let Ok(Some(mode)) = mode_rx.recv() {
                let (s, _) = l.accept().await?;
                let mut tls = acceptor.accept(wrap(s, mode).await?).await?;
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                loop {
                    let n = tls.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                tls.write_all(&total.to_be_bytes()).await?;
                tls.shutdown().await?;
            }
            Ok::<(), anyhow::Error>(())
        })?
    });
    let addr = addr_rx.recv()?;
    let connector = tokio_rustls::TlsConnector::from(client_cfg);
    let bytes = mib << 20;
    let mut results: Vec<(Mode, f64, f64)> = Vec::new();
    for rep in 0..reps {
        for mode in [Mode::Readiness, Mode::Completion] {
            mode_tx.send(Some(mode))?;
            let (secs, cpu) = runtime::block_on(DriverChoice::IoUring, async {
                let s = TcpStream::connect(addr).await?;
                let cpu0 = cpu_seconds();
                let t0 = Instant::now();
                let mut tls = connector
                    .connect(hbone::tls::server_name(), wrap(s, mode).await?)
                    .await?;
                let chunk = vec![0x5au8; CHUNK];
                let mut sent = 0u64;
                while sent < bytes {
                    tls.write_all(&chunk).await?;
                    sent += CHUNK as u64;
                }
                tls.shutdown().await?;
                let mut count = [0u8; 8];
                tls.read_exact(&mut count).await?;
                anyhow::ensure!(
                    u64::from_be_bytes(count) == bytes,
                    "server counted a different byte total"
                );
                Ok::<_, anyhow::Error>((t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0))
            })??;
            let gbit = bytes as f64 * 8.0 / secs / 1e9;
            let cpu_gb = cpu / (bytes as f64 / 1e9);
            eprintln!(
                "rep {}/{reps} {mode:?}: {gbit:.2} Gbit/s, {cpu_gb:.3} CPU-s/GB",
                rep + 1
            );
            results.push((mode, gbit, cpu_gb));
        }
    }
    mode_tx.send(None)?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    println!("| TLS over | Gbit/s (median) | CPU-s per GB, both ends (median) |");
    println!("|---|---|---|");
    for mode in [Mode::Readiness, Mode::Completion] {
        let mut g: Vec<f64> = results
            .iter()
            .filter(|r| r.0 == mode)
            .map(|r| r.1)
            .collect();
        let mut c: Vec<f64> = results
            .iter()
            .filter(|r| r.0 == mode)
            .map(|r| r.2)
            .collect();
        g.sort_by(f64::total_cmp);
        c.sort_by(f64::total_cmp);
        println!(
            "| {mode:?} | {:.2} | {:.3} |",
            g[g.len() / 2],
            c[c.len() / 2]
        );
    }
    Ok(())
}
