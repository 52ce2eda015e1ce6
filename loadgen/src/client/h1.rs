//! HTTP/1.1 keep-alive client: one request in flight per connection (no pipelining), the
//! response read with the bounded [`MessageReader`], the status checked.
//!
//! I/O is completion-based (compio's owned-buffer send/recv, re-exported by `runtime`): on
//! io_uring a request costs one SEND and one RECV submitted in the event loop's batch, with
//! no `EAGAIN` round trips; on epoll compio performs the same calls on readiness.
//!
//! Invariants: the request bytes are encoded once and the read buffer allocated once per
//! slot (both are lent to the kernel and handed back by every operation); a response that
//! says `Connection: close` (or runs to EOF) ends the connection after it, and the next
//! request reconnects. If an exchange is abandoned (timeout), the in-flight operation keeps
//! its buffer until the runtime cancels it, so the slot allocates fresh buffers and a new
//! connection.

use std::time::Duration;

use runtime::compio::io::{AsyncRead, AsyncWriteExt};
use runtime::compio::net::TcpStream as RingStream;

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
    stream: Option<RingStream>,
    /// The encoded request (empty while lent to a send).
    request: Vec<u8>,
    /// Unconsumed response bytes are `buf[..len]` (empty while lent to a recv).
    buf: Vec<u8>,
    reader: MessageReader,
}

impl Http1Client {
    pub fn new(cfg: &ClientConfig, spec: &HttpSpec, churn: bool) -> Http1Client {
        let mut c = Http1Client {
            target: cfg.target,
            connect_timeout: cfg.connect_timeout,
            churn,
            spec: spec.clone(),
            stream: None,
            request: Vec::new(),
            buf: Vec::new(),
            reader: MessageReader::response(spec.max_body),
        };
        c.restore_buffers();
        c
    }

    fn restore_buffers(&mut self) {
        if self.request.is_empty() {
            encode_request(
                &mut self.request,
                self.spec.method,
                &self.spec.authority,
                &self.spec.path,
                self.spec.body_size,
            );
        }
        if self.buf.capacity() < READ_BUF {
            self.buf = Vec::with_capacity(READ_BUF);
        }
        self.buf.clear();
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
        self.reader = MessageReader::response(self.spec.max_body);
        self.restore_buffers();
    }

    /// Ok(close) on success; Err((kind, connection still usable)) on failure.
    async fn exchange_inner(&mut self, io: &mut IoTally) -> Result<bool, (ErrorKind, bool)> {
        if self.stream.is_none() {
            let s = connect(self.target, self.connect_timeout, io)
                .await
                .map_err(|k| (k, false))?;
            self.stream = Some(
                s.into_compio()
                    .map_err(|e| (ErrorKind::from_io(&e), false))?,
            );
        }
        let Some(s) = self.stream.as_mut() else {
            return Err((ErrorKind::Other, false));
        };
        let req = std::mem::take(&mut self.request);
        let len = req.len() as u64;
        let res = s.write_all(req).await;
        self.request = res.1;
        res.0.map_err(|e| (ErrorKind::from_io(&e), false))?;
        io.sent += len;
        loop {
            if !self.buf.is_empty() {
                let (used, step) = self
                    .reader
                    .advance(&self.buf)
                    .map_err(|e| (ErrorKind::from_parse(&e), false))?;
                self.buf.drain(..used);
                if let Step::Done(m) = step {
                    if !self.spec.status_ok(m.status) {
                        return Err((ErrorKind::BadStatus, !m.close));
                    }
                    return Ok(m.close);
                }
            }
            // compio reads into the spare capacity after `len` and extends `len`.
            let buf = std::mem::take(&mut self.buf);
            let before = buf.len();
            let res = s.read(buf).await;
            self.buf = res.1;
            let n = res.0.map_err(|e| (ErrorKind::from_io(&e), false))?;
            debug_assert_eq!(self.buf.len(), before + n);
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
        }
    }

    pub fn abort(&mut self) {
        self.reset();
    }
}
