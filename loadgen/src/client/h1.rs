//! HTTP/1.1 keep-alive client: one request in flight per connection (no pipelining), the
//! response read with the bounded [`MessageReader`], the status checked.
//!
//! I/O style follows the worker's driver, each the cheaper one there (measured with
//! `bench.sh`): on io_uring, completion I/O (compio's owned-buffer SEND/RECV, re-exported by
//! `runtime`) — one SEND and one RECV per request, submitted in the event loop's batch, no
//! `EAGAIN` round trips; on epoll, readiness I/O on `runtime::net::TcpStream` — plain
//! `send`/`recv` syscalls, waiting for readiness only when the kernel says `EAGAIN`.
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
use runtime::net::TcpStream;

use super::{ClientConfig, HttpSpec, IoTally, connect};
use crate::http1::{MessageReader, Step, encode_request};
use crate::stats::ErrorKind;

/// Read buffer per connection. 64 KiB: fits any head (≤ 16 KiB) plus a typical body in one
/// read; bulk bodies stream through it (DESIGN.md: small buffers cost throughput).
const READ_BUF: usize = 64 * 1024;

/// Ok(close after this response) or Err((kind, connection still usable)).
type Outcome = Result<bool, (ErrorKind, bool)>;

/// One slot's HTTP/1.1 client.
pub struct Http1Client {
    target: std::net::SocketAddr,
    connect_timeout: Duration,
    churn: bool,
    spec: HttpSpec,
    completion_io: bool,
    stream: Option<Conn>,
    /// The encoded request (empty while lent to a send).
    request: Vec<u8>,
    /// Unconsumed response bytes are `buf[..len]` (empty while lent to a recv).
    buf: Vec<u8>,
    /// Readiness path: the read buffer (always `READ_BUF` long) and how much of it is data.
    rbuf: Box<[u8]>,
    rfilled: usize,
    reader: MessageReader,
}

enum Conn {
    Ring(RingStream),
    Ready(TcpStream),
}

impl Http1Client {
    /// `completion_io`: use owned-buffer completion I/O (io_uring workers) instead of
    /// readiness I/O (epoll workers).
    pub fn new(
        cfg: &ClientConfig,
        spec: &HttpSpec,
        churn: bool,
        completion_io: bool,
    ) -> Http1Client {
        let mut c = Http1Client {
            target: cfg.target,
            connect_timeout: cfg.connect_timeout,
            churn,
            spec: spec.clone(),
            completion_io,
            stream: None,
            request: Vec::new(),
            buf: Vec::new(),
            rbuf: if completion_io {
                Box::default()
            } else {
                vec![0; READ_BUF].into_boxed_slice()
            },
            rfilled: 0,
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
        if self.completion_io && self.buf.capacity() < READ_BUF {
            self.buf = Vec::with_capacity(READ_BUF);
        }
        self.buf.clear();
        self.rfilled = 0;
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
    async fn exchange_inner(&mut self, io: &mut IoTally) -> Outcome {
        if self.stream.is_none() {
            let s = connect(self.target, self.connect_timeout, io)
                .await
                .map_err(|k| (k, false))?;
            self.stream = Some(if self.completion_io {
                Conn::Ring(
                    s.into_compio()
                        .map_err(|e| (ErrorKind::from_io(&e), false))?,
                )
            } else {
                Conn::Ready(s)
            });
        }
        match self.stream.take() {
            Some(Conn::Ring(mut s)) => {
                let res = self.exchange_ring(&mut s, io).await;
                self.stream = Some(Conn::Ring(s));
                res
            }
            Some(Conn::Ready(s)) => {
                let res = self.exchange_ready(&s, io).await;
                self.stream = Some(Conn::Ready(s));
                res
            }
            None => Err((ErrorKind::Other, false)),
        }
    }

    /// Parses buffered bytes; `Some` once the response is complete (or failed).
    fn parse(&mut self, data: &[u8]) -> (usize, Option<Outcome>) {
        match self.reader.advance(data) {
            Err(e) => (0, Some(Err((ErrorKind::from_parse(&e), false)))),
            Ok((used, Step::NeedMore)) => (used, None),
            Ok((used, Step::Done(m))) if !self.spec.status_ok(m.status) => {
                (used, Some(Err((ErrorKind::BadStatus, !m.close))))
            }
            Ok((used, Step::Done(m))) => (used, Some(Ok(m.close))),
        }
    }

    fn on_eof(&mut self) -> Outcome {
        let m = self
            .reader
            .on_eof()
            .map_err(|e| (ErrorKind::from_parse(&e), false))?;
        if !self.spec.status_ok(m.status) {
            return Err((ErrorKind::BadStatus, false));
        }
        Ok(true)
    }

    async fn exchange_ring(&mut self, s: &mut RingStream, io: &mut IoTally) -> Outcome {
        let req = std::mem::take(&mut self.request);
        let len = req.len() as u64;
        let res = s.write_all(req).await;
        self.request = res.1;
        res.0.map_err(|e| (ErrorKind::from_io(&e), false))?;
        io.sent += len;
        loop {
            if !self.buf.is_empty() {
                let buf = std::mem::take(&mut self.buf);
                let (used, done) = self.parse(&buf);
                self.buf = buf;
                self.buf.drain(..used);
                if let Some(r) = done {
                    return r;
                }
            }
            // compio reads into the spare capacity after `len` and extends `len`.
            let buf = std::mem::take(&mut self.buf);
            let res = s.read(buf).await;
            self.buf = res.1;
            let n = res.0.map_err(|e| (ErrorKind::from_io(&e), false))?;
            if n == 0 {
                return self.on_eof();
            }
            io.received += n as u64;
        }
    }

    async fn exchange_ready(&mut self, s: &TcpStream, io: &mut IoTally) -> Outcome {
        s.write_all(&self.request)
            .await
            .map_err(|e| (ErrorKind::from_io(&e), false))?;
        io.sent += self.request.len() as u64;
        if self.rfilled == 0 {
            // The response cannot be there yet: wait for readiness instead of paying for a
            // recv that returns EAGAIN (wrk does the same; it showed in syscall counts).
            std::future::poll_fn(|cx| s.poll_read_ready(cx))
                .await
                .map_err(|e| (ErrorKind::from_io(&e), false))?;
        }
        loop {
            if self.rfilled > 0 {
                let buf = std::mem::take(&mut self.rbuf);
                let (used, done) = self.parse(&buf[..self.rfilled]);
                self.rbuf = buf;
                self.rbuf.copy_within(used..self.rfilled, 0);
                self.rfilled -= used;
                if let Some(r) = done {
                    return r;
                }
            }
            let n = s
                .read(&mut self.rbuf[self.rfilled..])
                .await
                .map_err(|e| (ErrorKind::from_io(&e), false))?;
            if n == 0 {
                return self.on_eof();
            }
            io.received += n as u64;
            self.rfilled += n;
        }
    }

    pub fn abort(&mut self) {
        self.reset();
    }
}
