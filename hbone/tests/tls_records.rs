//! The HBONE record layer (`hbone::tls::TlsStream`) against rustls' own (tokio-rustls) as the
//! peer, and against itself, on loopback sockets with both drivers: bulk bytes both ways
//! through mixed vectored writes, key updates in both directions and on request,
//! close_notify, idle buffers, and records a hostile peer writes on the raw socket after an
//! honest handshake.

mod tunnel_util;

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use hbone::tls;
use runtime::DriverChoice;
use runtime::net::{TcpListener, TcpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_util::{PatternCheck, Pki, deadline, fill_pattern, id, run};

/// Bytes each way in the bulk tests: enough for hundreds of records and, with a key update
/// every few records, dozens of key changes.
const BULK: u64 = 4 << 20;

struct Configs {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

fn configs() -> Configs {
    let pki = Pki::new();
    Configs {
        client: pki.client_tls(&id("client"), &[id("server")]),
        server: pki.server_tls(&id("server")),
    }
}

/// Waits for a spawned task's result (bounded), a panic in it being an error.
async fn join<T, E>(
    what: &str,
    task: impl std::future::Future<Output = std::result::Result<Result<T>, E>>,
) -> Result<T> {
    deadline(what, task)
        .await?
        .map_err(|_| anyhow::anyhow!("{what}: the task panicked"))?
        .context(what.to_string())
}

async fn listener() -> Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

/// Writes `total` bytes of pattern `seed` in vectored writes whose slices mix the shapes h2
/// writes (a 9-byte frame header, a large payload) with odd sizes, then flushes.
async fn send_pattern<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    total: u64,
) -> Result<()> {
    let shapes: [&[usize]; 4] = [
        &[9, 40_000],
        &[9, 300, 3, 70_000],
        &[1],
        &[5000, 17, 16_384],
    ];
    let mut off = 0u64;
    let mut k = 0;
    let mut buf = Vec::new();
    while off < total {
        let sizes = shapes[k % shapes.len()];
        k += 1;
        let len: usize = sizes.iter().sum::<usize>().min((total - off) as usize);
        buf.resize(len, 0);
        fill_pattern(seed, off, &mut buf);
        let mut slices = Vec::new();
        let mut at = 0;
        for &s in sizes {
            let end = (at + s).min(len);
            slices.push(IoSlice::new(&buf[at..end]));
            at = end;
        }
        // write_vectored may take part; go on from where it stopped.
        let mut done = 0;
        while done < len {
            let mut rest = Vec::new();
            let mut skip = done;
            for s in &slices {
                if skip >= s.len() {
                    skip -= s.len();
                    continue;
                }
                rest.push(IoSlice::new(&s[skip..]));
                skip = 0;
            }
            let n = w.write_vectored(&rest).await?;
            ensure!(n > 0, "write_vectored took nothing");
            done += n;
        }
        off += len as u64;
    }
    w.flush().await?;
    Ok(())
}

async fn expect_pattern<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    seed: u64,
    total: u64,
) -> Result<()> {
    let mut check = PatternCheck::new(seed);
    let mut buf = vec![0u8; 50_000];
    while check.offset < total {
        let n = r.read(&mut buf).await?;
        ensure!(n > 0, "EOF after {} of {total} bytes", check.offset);
        check.check(&buf[..n])?;
    }
    Ok(())
}

/// Both ways at once over one stream: `a` writes seed 1 and reads seed 2, `b` the reverse.
async fn both_ways<A, B>(a: A, b: B) -> Result<(A, B)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let t1 = runtime::spawn(async move { send_pattern(&mut aw, 1, BULK).await.map(|_| aw) });
    let t2 = runtime::spawn(async move { send_pattern(&mut bw, 2, BULK).await.map(|_| bw) });
    let t3 = runtime::spawn(async move { expect_pattern(&mut br, 1, BULK).await.map(|_| br) });
    expect_pattern(&mut ar, 2, BULK)
        .await
        .context("a reading")?;
    let aw = join("a writing", t1).await?;
    let bw = join("b writing", t2).await?;
    let br = join("b reading", t3).await?;
    Ok((ar.unsplit(aw), br.unsplit(bw)))
}

fn bulk_against_rustls(driver: DriverChoice) -> Result<()> {
    run(driver, async || {
        let cfg = configs();
        // Ours as the client, rustls as the server. It sends two NewSessionTickets after its
        // Finished, as ztunnel's server does (rustls' default): our client takes them.
        let (l, addr) = listener().await?;
        let mut with_tickets = (*cfg.server).clone();
        with_tickets.send_tls13_tickets = 2;
        let server = Arc::new(with_tickets);
        let accept = runtime::spawn(async move {
            let (tcp, _) = l.accept().await?;
            anyhow::Ok(tokio_rustls::TlsAcceptor::from(server).accept(tcp).await?)
        });
        let mut ours = tls::connect(TcpStream::connect(addr).await?, cfg.client.clone()).await?;
        assert_eq!(ours.session().alpn.as_deref(), Some(&b"h2"[..]));
        // A key change every 7 records: rustls must follow each one.
        ours.update_write_key_every(7);
        let theirs = join("rustls accept", accept).await?;
        let (ours, _theirs) = both_ways(ours, theirs).await?;
        ensure!(
            ours.write_key_updates() > 50,
            "only {} key updates",
            ours.write_key_updates()
        );

        // rustls as the client, ours as the server.
        let (l, addr) = listener().await?;
        let server = cfg.server.clone();
        let accept = runtime::spawn(async move {
            let (tcp, _) = l.accept().await?;
            anyhow::Ok(tls::accept(tcp, server).await?)
        });
        let theirs = tokio_rustls::TlsConnector::from(cfg.client.clone())
            .connect(tls::server_name(), TcpStream::connect(addr).await?)
            .await?;
        let mut ours = join("our accept", accept).await?;
        assert_eq!(
            ours.session().peer_identity.as_ref(),
            Some(&id("client")),
            "the client's SPIFFE identity"
        );
        ours.update_write_key_every(5);
        let (ours, _) = both_ways(ours, theirs).await?;
        ensure!(ours.write_key_updates() > 50);
        Ok(())
    })
}

#[test]
fn bulk_both_ways_against_rustls_io_uring() -> Result<()> {
    bulk_against_rustls(DriverChoice::IoUring)
}

#[test]
fn bulk_both_ways_against_rustls_epoll() -> Result<()> {
    bulk_against_rustls(DriverChoice::Epoll)
}

/// Our stream on both ends: key updates both ways, close_notify ends the peer's reads, and
/// an idle stream holds no buffer.
#[test]
fn ours_on_both_ends_with_key_updates_and_close_notify() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let cfg = configs();
        let (l, addr) = listener().await?;
        let server = cfg.server.clone();
        let accept = runtime::spawn(async move {
            let (tcp, _) = l.accept().await?;
            anyhow::Ok(tls::accept(tcp, server).await?)
        });
        let mut client = tls::connect(TcpStream::connect(addr).await?, cfg.client.clone()).await?;
        let mut server = join("accept", accept).await?;
        client.update_write_key_every(3);
        server.update_write_key_every(4);
        let (mut client, mut server) = both_ways(client, server).await?;

        // A short exchange, then nothing: no buffer is held.
        client.write_all(b"ping").await?;
        client.flush().await?;
        let mut four = [0u8; 4];
        server.read_exact(&mut four).await?;
        assert_eq!(&four, b"ping");
        server.write_all(b"pong").await?;
        server.flush().await?;
        client.read_exact(&mut four).await?;
        // One more read that finds nothing frees the read side.
        let mut one = [0u8; 1];
        let idle =
            runtime::time::timeout(std::time::Duration::from_millis(50), client.read(&mut one))
                .await;
        ensure!(idle.is_err(), "a read on an idle stream returned");
        ensure!(
            client.buffered_capacity() == 0,
            "idle client holds {} bytes of buffer",
            client.buffered_capacity()
        );

        client.shutdown().await?;
        let n = deadline("EOF", server.read(&mut one)).await??;
        assert_eq!(n, 0, "close_notify is the end of the stream");
        // Writes after our close_notify are refused, not sent.
        ensure!(client.write_all(b"late").await.is_err());
        Ok(())
    })
}

/// rustls asks for new keys (KeyUpdate with update_requested): our side moves its read key,
/// answers with its own KeyUpdate and moves its write key, and both ways keep working.
#[test]
fn a_peers_key_update_request_is_answered() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let cfg = configs();
        let (l, addr) = listener().await?;
        let server = cfg.server.clone();
        let accept = runtime::spawn(async move {
            let (tcp, _) = l.accept().await?;
            anyhow::Ok(tokio_rustls::TlsAcceptor::from(server).accept(tcp).await?)
        });
        let mut ours = tls::connect(TcpStream::connect(addr).await?, cfg.client.clone()).await?;
        let mut theirs = join("accept", accept).await?;
        for round in 0..3u8 {
            theirs.get_mut().1.refresh_traffic_keys()?;
            theirs.write_all(&[round; 100]).await?;
            theirs.flush().await?;
            let mut got = [0u8; 100];
            ours.read_exact(&mut got).await?;
            ensure!(
                got == [round; 100],
                "round {round}: data after the peer's key update"
            );
            ensure!(
                ours.write_key_updates() == u64::from(round) + 1,
                "round {round}: {} answers to {} requests",
                ours.write_key_updates(),
                round + 1
            );
            ours.write_all(&[round + 10; 100]).await?;
            ours.flush().await?;
            theirs.read_exact(&mut got).await?;
            ensure!(
                got == [round + 10; 100],
                "round {round}: our data under the new key"
            );
        }
        Ok(())
    })
}

/// A hostile peer: an honest handshake (rustls as the server), then raw bytes on the socket.
/// Each must end our stream's reads with an error that says what was wrong, and never panic.
#[test]
fn records_a_peer_must_not_send_end_the_stream_with_a_reason() -> Result<()> {
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "plaintext handshake record",
            vec![22, 3, 3, 0, 4, 1, 2, 3, 4],
            "unencrypted record",
        ),
        (
            "oversized record",
            vec![23, 3, 3, 0x48, 0x01],
            "above the limit",
        ),
        (
            "record too short for a tag",
            vec![23, 3, 3, 0, 3, 1, 2, 3],
            "cannot hold",
        ),
        (
            "forged record",
            {
                let mut r = vec![23, 3, 3, 0, 40];
                r.extend([0xAB; 40]);
                r
            },
            "failed to decrypt",
        ),
        (
            "record cut by EOF",
            vec![23, 3, 3, 0, 40, 1, 2, 3],
            "inside a record",
        ),
    ];
    run(DriverChoice::Auto, async || {
        let cfg = configs();
        for (what, bytes, expect) in &cases {
            let (l, addr) = listener().await?;
            let server = cfg.server.clone();
            let bytes = bytes.clone();
            let peer = runtime::spawn(async move {
                let (tcp, _) = l.accept().await?;
                let mut tls = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await?;
                let raw = &mut tls.get_mut().0;
                raw.write_all(&bytes).await?;
                raw.flush().await?;
                raw.shutdown().await?;
                // Whatever we answer (an alert), then EOF.
                let mut sink = Vec::new();
                let _ = raw.read_to_end(&mut sink).await;
                anyhow::Ok(sink.len())
            });
            let mut ours =
                tls::connect(TcpStream::connect(addr).await?, cfg.client.clone()).await?;
            let mut buf = [0u8; 64];
            let err = match deadline(what, ours.read(&mut buf)).await? {
                Ok(n) => bail!("{what}: read returned {n} bytes instead of an error"),
                Err(e) => e.to_string(),
            };
            ensure!(
                err.contains(expect),
                "{what}: error {err:?} does not say {expect:?}"
            );
            // The error is final.
            let again = ours.read(&mut buf).await;
            ensure!(again.is_err(), "{what}: a second read succeeded");
            drop(ours);
            join("peer", peer).await?;
        }
        Ok(())
    })
}

/// Handshake bytes a hostile client sends: each ends our accept with a TLS error and an
/// alert on the wire, never a panic (rustls queues one fatal alert; it must not be asked to
/// queue a second).
#[test]
fn a_broken_client_hello_is_refused_with_an_alert() -> Result<()> {
    let cases: [(&str, &[u8]); 3] = [
        ("malformed ClientHello", &[22, 3, 1, 0, 5, 1, 0, 0, 1, 0]),
        ("unknown record type", &[99, 3, 3, 0, 2, 0, 0]),
        ("oversized handshake record", &[22, 3, 1, 0xFF, 0xFF, 1]),
    ];
    run(DriverChoice::Auto, async || {
        let cfg = configs();
        for (what, hello) in cases {
            let (l, addr) = listener().await?;
            let server = cfg.server.clone();
            let accept = runtime::spawn(async move {
                let (tcp, _) = l.accept().await?;
                anyhow::Ok(
                    tls::accept(tcp, server)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                )
            });
            let mut raw = TcpStream::connect(addr).await?;
            raw.write_all(hello).await?;
            raw.flush().await?;
            let res = join(what, accept).await?;
            ensure!(res.is_err(), "{what}: the handshake succeeded");
            let mut answer = Vec::new();
            let _ = deadline(what, raw.read_to_end(&mut answer)).await?;
            ensure!(
                answer.first() == Some(&21),
                "{what}: no alert record came back ({answer:?}); error {res:?}"
            );
        }
        Ok(())
    })
}

/// A server with the wrong identity: our client refuses it mid-handshake (with the server's
/// last flight partly processed), tells it with an alert, and returns the reason.
#[test]
fn a_server_with_another_identity_is_refused_with_an_alert() -> Result<()> {
    run(DriverChoice::Auto, async || {
        let pki = Pki::new();
        let (l, addr) = listener().await?;
        let server = pki.server_tls(&id("server"));
        let peer = runtime::spawn(async move {
            let (tcp, _) = l.accept().await?;
            let res = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await;
            anyhow::Ok(res.map(|_| ()).map_err(|e| e.to_string()))
        });
        let client = pki.client_tls(&id("client"), &[id("someone-else")]);
        let err = match tls::connect(TcpStream::connect(addr).await?, client).await {
            Ok(_) => bail!("the handshake succeeded"),
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains("someone-else") || err.contains("identity"),
            "error: {err}"
        );
        let theirs = join("server", peer).await?;
        let theirs = theirs.err().unwrap_or_default();
        ensure!(
            theirs.contains("alert"),
            "the server saw no alert: {theirs:?}"
        );
        Ok(())
    })
}

/// A socket that counts the writes made to it.
struct CountWrites {
    inner: TcpStream,
    writes: std::rc::Rc<std::cell::Cell<usize>>,
}

impl tokio::io::AsyncRead for CountWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.writes.set(self.writes.get() + 1);
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Two tasks that write and flush short records to one connection in the same turn of the
/// loop (two streams of an HTTP/2 connection answering at once) send them in one write: a
/// flush waits for the turn's end. A full record is not held back.
fn flushes_of_one_turn_share_a_send(driver: DriverChoice) -> Result<()> {
    use std::cell::RefCell;
    use std::rc::Rc;

    run(driver, async || {
        let cfg = configs();
        let (l, addr) = listener().await?;
        let server = cfg.server.clone();
        let accept = runtime::spawn(async move {
            let (tcp, _) = l.accept().await?;
            anyhow::Ok(tls::accept(tcp, server).await?)
        });
        let writes = Rc::new(std::cell::Cell::new(0));
        let io = CountWrites {
            inner: TcpStream::connect(addr).await?,
            writes: writes.clone(),
        };
        let ours = Rc::new(RefCell::new(tls::connect(io, cfg.client.clone()).await?));
        let mut theirs = join("our accept", accept).await?;

        let before = writes.get();
        let mut tasks = Vec::new();
        for part in [&b"first"[..], &b"second"[..]] {
            let s = ours.clone();
            let mut written = false;
            tasks.push(runtime::spawn(std::future::poll_fn(move |cx| {
                let mut s = s.borrow_mut();
                if !written {
                    let n = std::task::ready!(tokio::io::AsyncWrite::poll_write(
                        std::pin::Pin::new(&mut *s),
                        cx,
                        part
                    ))?;
                    assert_eq!(n, part.len());
                    written = true;
                }
                tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut *s), cx)
            })));
        }
        for t in tasks {
            deadline("a flush", t)
                .await?
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        ensure!(
            writes.get() - before == 1,
            "two short records took {} writes",
            writes.get() - before
        );
        let mut got = vec![0u8; 11];
        deadline("the records", theirs.read_exact(&mut got)).await??;
        ensure!(got == b"firstsecond", "{:?}", String::from_utf8_lossy(&got));

        // A full record's worth leaves before any flush.
        let mut ours = Rc::try_unwrap(ours)
            .map_err(|_| anyhow::anyhow!("a writer still holds the stream"))?
            .into_inner();
        let before = writes.get();
        let big = vec![7u8; 20_000];
        let n = ours.write(&big).await?;
        ensure!(writes.get() > before, "{n} bytes queued and not sent");
        ours.flush().await?;
        let mut got = vec![0u8; n];
        deadline("the big write", theirs.read_exact(&mut got)).await??;
        Ok(())
    })
}

#[test]
fn flushes_of_one_turn_share_a_send_io_uring() -> Result<()> {
    flushes_of_one_turn_share_a_send(DriverChoice::IoUring)
}

#[test]
fn flushes_of_one_turn_share_a_send_epoll() -> Result<()> {
    flushes_of_one_turn_share_a_send(DriverChoice::Epoll)
}
