//! [`copy_bidirectional`]: the relay contract over any poll-style streams (a TLS stream, an
//! HTTP/2 CONNECT tunnel, a socket), for paths where splice cannot apply.
//!
//! One future polls both directions, so neither stream needs splitting. End of stream on a
//! reader becomes `poll_shutdown` on the other side's writer (for an HBONE tunnel that is
//! END_STREAM), and the other direction keeps flowing until it ends too.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::RelayStats;
use super::buffered::Adaptive;

/// One direction's state: a buffer and the bytes in it not yet written.
struct Half {
    buf: Box<[u8]>,
    sizing: Adaptive,
    start: usize,
    end: usize,
    read_done: bool,
    done: bool,
    total: u64,
}

impl Half {
    fn new() -> Self {
        let sizing = Adaptive::new();
        Half {
            buf: vec![0; sizing.size()].into_boxed_slice(),
            sizing,
            start: 0,
            end: 0,
            read_done: false,
            done: false,
            total: 0,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // Write out what is buffered first.
            while self.start < self.end {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.total += n as u64;
            }
            if self.read_done {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            // Buffer empty: resize to the traffic seen, then read more.
            if self.buf.len() != self.sizing.size() {
                self.buf = vec![0; self.sizing.size()].into_boxed_slice();
            }
            let mut rb = ReadBuf::new(&mut self.buf);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.read_done = true;
                    } else {
                        self.sizing.observe(n);
                        self.start = 0;
                        self.end = n;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read: push out whatever the writer buffers (TLS records).
                    ready!(w.as_mut().poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Copies `a → b` and `b → a` until both directions reached end of stream, propagating each
/// end as a shutdown of the opposite writer. Returns the bytes moved each way.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<RelayStats>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Half::new();
    let mut ba = Half::new();
    poll_fn(|cx| {
        let r1 = ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let r2 = ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        if r1.is_ready() && r2.is_ready() {
            Poll::Ready(Ok::<(), io::Error>(()))
        } else {
            Poll::Pending
        }
    })
    .await?;
    Ok(RelayStats {
        a_to_b: ab.total,
        b_to_a: ba.total,
    })
}
