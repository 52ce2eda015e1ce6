//! TCP request/response against an echo server: write `size` bytes of the payload pattern,
//! read exactly `size` bytes back and check they are the same bytes.
//!
//! Invariant: a reply that differs from what was sent (corrupted, shifted, truncated) is a
//! failure, never a success: `short_read` when the peer closed early, `other` when bytes
//! differ.

use std::time::Duration;

use runtime::net::TcpStream;

use super::{ClientConfig, IoTally, connect};
use crate::http1::pattern;
use crate::stats::ErrorKind;

/// Requests up to this size are written, then read; larger ones are written and read
/// concurrently. 64 KiB: far below loopback's socket buffers, so a sequential echo cannot
/// stall, and small requests skip the cost of polling a read that cannot succeed yet.
const SEQUENTIAL_MAX: usize = 64 * 1024;

/// Reads exactly `buf.len()` bytes; on failure also says how many arrived.
async fn read_full(s: &TcpStream, buf: &mut [u8]) -> Result<usize, (ErrorKind, usize)> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]).await {
            Ok(0) => return Err((ErrorKind::ShortRead, got)),
            Ok(n) => got += n,
            Err(e) => return Err((ErrorKind::from_io(&e), got)),
        }
    }
    Ok(got)
}

/// One slot's TCP echo client (kept-alive, or a fresh connection per request for churn).
pub struct EchoClient {
    target: std::net::SocketAddr,
    connect_timeout: Duration,
    churn: bool,
    stream: Option<TcpStream>,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

impl EchoClient {
    pub fn new(cfg: &ClientConfig, size: usize, churn: bool) -> EchoClient {
        EchoClient {
            target: cfg.target,
            connect_timeout: cfg.connect_timeout,
            churn,
            stream: None,
            out: pattern(size).collect(),
            inbuf: vec![0; size],
        }
    }

    pub async fn exchange(&mut self, io: &mut IoTally) -> Result<(), ErrorKind> {
        let res = self.exchange_inner(io).await;
        if res.is_err() || self.churn {
            self.stream = None;
        }
        res
    }

    async fn exchange_inner(&mut self, io: &mut IoTally) -> Result<(), ErrorKind> {
        if self.stream.is_none() {
            self.stream = Some(connect(self.target, self.connect_timeout, io).await?);
        }
        let Some(s) = self.stream.as_ref() else {
            return Err(ErrorKind::Other);
        };
        if self.out.is_empty() {
            return Ok(());
        }
        if self.out.len() <= SEQUENTIAL_MAX {
            s.write_all(&self.out)
                .await
                .map_err(|e| ErrorKind::from_io(&e))?;
            io.sent += self.out.len() as u64;
            // The echo cannot be there yet: wait for readiness rather than pay for an EAGAIN.
            std::future::poll_fn(|cx| s.poll_read_ready(cx))
                .await
                .map_err(|e| ErrorKind::from_io(&e))?;
            let got = read_full(s, &mut self.inbuf).await;
            io.received += got.as_ref().map_or_else(|(_, n)| *n, |n| *n) as u64;
            got.map_err(|(kind, _)| kind)?;
        } else {
            // Larger than the socket buffers may hold: write and read at once, or the echo
            // would stall with both sides' buffers full.
            let (out, inbuf) = (&self.out, &mut self.inbuf);
            let write = async { s.write_all(out).await.map_err(|e| ErrorKind::from_io(&e)) };
            let (w, r) = futures_util::future::join(write, read_full(s, inbuf)).await;
            if w.is_ok() {
                io.sent += out.len() as u64;
            }
            io.received += r.as_ref().map_or_else(|(_, n)| *n, |n| *n) as u64;
            w?;
            r.map_err(|(kind, _)| kind)?;
        }
        if self.inbuf != self.out {
            return Err(ErrorKind::Other);
        }
        Ok(())
    }

    pub fn abort(&mut self) {
        self.stream = None;
    }
}
