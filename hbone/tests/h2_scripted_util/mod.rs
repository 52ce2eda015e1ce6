//! A hand-written HTTP/2 peer for protocol tests: RFC 9113 §4.1 framing, HPACK literals from
//! RFC 7541 §6.2.2, over a loopback `TcpStream` (or TLS over one). Either side: [`Peer::connect`] speaks the
//! client preface, [`Peer::accept`] the server's.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use runtime::DriverChoice;
use runtime::net::TcpStream;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Any byte stream the peer can speak over.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

pub use hbone::wire::frame::{
    ACK, DATA, END_HEADERS, END_STREAM, FRAME_SIZE_ERROR, GOAWAY, HEADERS, NO_ERROR, PING,
    RST_STREAM, RawFrame as Frame, SETTINGS, WINDOW_UPDATE, connect_block as connect_headers,
    encode as frame,
};

/// Upper bound on any single wait in these tests; they finish in milliseconds when healthy.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The client side of a hand-scripted connection.
pub struct Peer {
    io: Box<dyn Io>,
    rbuf: Vec<u8>,
    /// Answer the other side's PINGs while skipping frames (on by default).
    pub answer_pings: bool,
}

impl Peer {
    pub fn new(io: impl Io + 'static) -> Peer {
        Peer {
            io: Box::new(io),
            rbuf: Vec::new(),
            answer_pings: true,
        }
    }

    /// The server side: reads the client preface, sends an empty SETTINGS.
    pub async fn accept(io: impl Io + 'static) -> Result<Peer> {
        let mut p = Peer::new(io);
        let mut preface = [0u8; 24];
        runtime::time::timeout(DEADLINE, p.io.read_exact(&mut preface))
            .await
            .context("timed out waiting for the client preface")??;
        ensure!(
            &preface == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "bad client preface"
        );
        p.send_frame(SETTINGS, 0, 0, &[]).await?;
        Ok(p)
    }
    /// Connects, sends the preface and an empty SETTINGS, and ACKs the server's SETTINGS.
    pub async fn connect(addr: SocketAddr) -> Result<Peer> {
        let tcp = TcpStream::connect(addr).await?;
        let mut p = Peer::new(tcp);
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frame(&mut out, SETTINGS, 0, 0, &[]);
        p.send(&out).await?;
        let f = p
            .next_where(|f| f.kind == SETTINGS && f.flags & ACK == 0)
            .await?;
        ensure!(f.stream == 0);
        p.send_frame(SETTINGS, ACK, 0, &[]).await?;
        Ok(p)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    pub async fn send_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> Result<()> {
        let mut out = Vec::with_capacity(9 + payload.len());
        frame(&mut out, kind, flags, stream, payload);
        self.send(&out).await
    }

    /// The next frame, or an error at EOF or after [`DEADLINE`].
    pub async fn next(&mut self) -> Result<Frame> {
        runtime::time::timeout(DEADLINE, self.next_inner())
            .await
            .context("timed out waiting for a frame")?
    }

    pub async fn next_inner(&mut self) -> Result<Frame> {
        loop {
            if let Some((f, used)) = Frame::split(&self.rbuf) {
                self.rbuf.drain(..used);
                return Ok(f);
            }
            let mut buf = vec![0u8; 64 * 1024];
            let n = self.io.read(&mut buf).await?;
            if n == 0 {
                bail!("connection closed by server");
            }
            self.rbuf.extend_from_slice(&buf[..n]);
        }
    }

    /// Skips frames until one matches; PINGs from the server are answered on the way.
    pub async fn next_where(&mut self, want: impl Fn(&Frame) -> bool) -> Result<Frame> {
        loop {
            let f = self.next().await?;
            if want(&f) {
                return Ok(f);
            }
            if f.kind == PING && f.flags & ACK == 0 && self.answer_pings {
                self.send_frame(PING, ACK, 0, &f.payload).await?;
            }
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                self.send_frame(SETTINGS, ACK, 0, &[]).await?;
            }
        }
    }

    /// Sends a PING and collects every frame up to its ACK: since the server handles frames in
    /// order, everything it did in response to earlier frames is in the returned list.
    pub async fn sync(&mut self, tag: u8) -> Result<Vec<Frame>> {
        self.send_frame(PING, 0, 0, &[tag; 8]).await?;
        let mut seen = Vec::new();
        loop {
            let f = self.next().await?;
            if f.kind == PING && f.flags & ACK != 0 && f.payload == [tag; 8] {
                return Ok(seen);
            }
            if f.kind == PING && f.flags & ACK == 0 {
                self.send_frame(PING, ACK, 0, &f.payload).await?;
            }
            seen.push(f);
        }
    }

    pub async fn expect_eof(&mut self) -> Result<()> {
        let mut buf = [0u8; 1024];
        runtime::time::timeout(DEADLINE, async {
            loop {
                match self.io.read(&mut buf).await {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {}
                }
            }
        })
        .await
        .context("server did not close the connection")?
    }
}

pub fn window_increment(f: &Frame) -> u32 {
    f.window_increment()
}

pub fn goaway_parts(f: &Frame) -> (u32, u32) {
    f.goaway()
}

pub async fn wait_until(what: &str, cond: impl Fn() -> bool) -> Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            bail!("timed out waiting for {what}");
        }
        runtime::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

pub fn run(driver: DriverChoice, f: impl AsyncFnOnce() -> Result<()>) -> Result<()> {
    runtime::block_on(driver, f())?
}

/// Bounds a test step by [`DEADLINE`].
pub async fn deadline<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T> {
    match runtime::time::timeout(DEADLINE, f).await {
        Ok(v) => Ok(v),
        Err(_) => bail!("timed out: {what}"),
    }
}
