//! HTTP/1.1 keep-alive client: one request in flight per connection (no pipelining), the
//! response read with the bounded [`MessageReader`], the status checked.
//!
//! Invariants: the request bytes are encoded once; the read buffer is reused; a response
//! that says `Connection: close` (or runs to EOF) ends the connection after it, and the next
//! request reconnects.

use std::time::Duration;

use runtime::net::TcpStream;

use super::{ClientConfig, HttpSpec, IoTally, connect};
use crate::http1::{MessageReader, Step, encode_request};
use crate::stats::ErrorKind;

/// Read buffer per connection. 64 KiB: fits any head (≤ 16 KiB) plus a typical body in one
/// read; bulk bodies stream through it (DESIGN.md: small buffers cost throughput).
const READ_BUF: usize = 64 * 1024;

/// One slot's HTTP/1.1 client.
pub struct Http1Client {
    target: std::net::SocketAddr,
    connect_timeout: Duration,
    churn: bool,
    spec: HttpSpec,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    buf: Vec<u8>,
    filled: usize,
    reader: MessageReader,
}

impl Http1Client {
    pub fn new(cfg: &ClientConfig, spec: &HttpSpec, churn: bool) -> Http1Client {
        let mut request = Vec::new();
        encode_request(
            &mut request,
            spec.method,
            &spec.authority,
            &spec.path,
            spec.body_size,
        );
        Http1Client {
            target: cfg.target,
            connect_timeout: cfg.connect_timeout,
            churn,
            spec: spec.clone(),
            stream: None,
            request,
            buf: vec![0; READ_BUF],
            filled: 0,
            reader: MessageReader::response(spec.max_body),
        }
    }

    pub async fn exchange(&mut self, io: &mut IoTally) -> Result<(), ErrorKind> {
        match self.exchange_inner(io).await {
            Ok(close) => {
                if close || self.churn {
                    self.reset();
                }
                Ok(())
            }
            Err((kind, keep)) => {
                if !keep || self.churn {
                    self.reset();
                }
                Err(kind)
            }
        }
    }

    fn reset(&mut self) {
        self.stream = None;
        self.filled = 0;
        self.reader = MessageReader::response(self.spec.max_body);
    }

    /// Ok(close) on success; Err((kind, connection still usable)) on failure.
    async fn exchange_inner(&mut self, io: &mut IoTally) -> Result<bool, (ErrorKind, bool)> {
        if self.stream.is_none() {
            self.stream = Some(
                connect(self.target, self.connect_timeout, io)
                    .await
                    .map_err(|k| (k, false))?,
            );
        }
        let Some(s) = self.stream.as_ref() else {
            return Err((ErrorKind::Other, false));
        };
        s.write_all(&self.request)
            .await
            .map_err(|e| (ErrorKind::from_io(&e), false))?;
        io.sent += self.request.len() as u64;
        loop {
            if self.filled > 0 {
                let (used, step) = self
                    .reader
                    .advance(&self.buf[..self.filled])
                    .map_err(|e| (ErrorKind::from_parse(&e), false))?;
                if used == self.filled {
                    self.filled = 0;
                } else if used > 0 {
                    self.buf.copy_within(used..self.filled, 0);
                    self.filled -= used;
                }
                if let Step::Done(m) = step {
                    if !self.spec.status_ok(m.status) {
                        return Err((ErrorKind::BadStatus, !m.close));
                    }
                    return Ok(m.close);
                }
            }
            let n = s
                .read(&mut self.buf[self.filled..])
                .await
                .map_err(|e| (ErrorKind::from_io(&e), false))?;
            if n == 0 {
                let m = self
                    .reader
                    .on_eof()
                    .map_err(|e| (ErrorKind::from_parse(&e), false))?;
                if !self.spec.status_ok(m.status) {
                    return Err((ErrorKind::BadStatus, false));
                }
                return Ok(true);
            }
            io.received += n as u64;
            self.filled += n;
        }
    }

    pub fn abort(&mut self) {
        self.reset();
    }
}
