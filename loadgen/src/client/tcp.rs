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
        s.write_all(&self.out)
            .await
            .map_err(|e| ErrorKind::from_io(&e))?;
        io.sent += self.out.len() as u64;
        let mut got = 0;
        while got < self.inbuf.len() {
            match s.read(&mut self.inbuf[got..]).await {
                Ok(0) => return Err(ErrorKind::ShortRead),
                Ok(n) => {
                    got += n;
                    io.received += n as u64;
                }
                Err(e) => return Err(ErrorKind::from_io(&e)),
            }
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
