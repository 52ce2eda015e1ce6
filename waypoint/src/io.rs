//! The glue between hyper and this runtime: an executor that spawns hyper's HTTP/2 stream
//! tasks on the current core, and the protocol sniff that tells HTTP/2 prior knowledge from
//! HTTP/1.1 on a fresh tunnel (hyper's own I/O adapter, `TokioIo`, does the rest).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Spawns hyper's tasks on the current worker (they never leave the core; no `Send`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        runtime::spawn(fut).detach();
    }
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Rewind<T> {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Which HTTP a tunnel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// Prior knowledge: the client opened with the preface.
    Http2,
}

/// Reads until the first bytes either are the HTTP/2 preface or cannot be. At most 24
/// bytes are read; they are handed back in front of the stream. `None`: the client closed
/// before sending anything.
pub async fn sniff<T: AsyncRead + Unpin>(mut io: T) -> io::Result<Option<(Protocol, Rewind<T>)>> {
    let mut buf = [0u8; 24];
    let mut have = 0;
    loop {
        let n = io.read(&mut buf[have..]).await?;
        if n == 0 {
            if have == 0 {
                return Ok(None);
            }
            // A short request line cut off by EOF: HTTP/1.1's parser will say what is wrong.
            let prefix = Bytes::copy_from_slice(&buf[..have]);
            return Ok(Some((Protocol::Http1, Rewind::new(prefix, io))));
        }
        have += n;
        let is_preface_so_far = buf[..have] == H2_PREFACE[..have];
        if !is_preface_so_far || have == H2_PREFACE.len() {
            let proto = if is_preface_so_far {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            let prefix = Bytes::copy_from_slice(&buf[..have]);
            return Ok(Some((proto, Rewind::new(prefix, io))));
        }
    }
}
