//! One HBONE tunnel (an HTTP/2 CONNECT stream) as a bidirectional byte stream, and the relay
//! that moves bytes between it and a TCP socket.
//!
//! Owns: the mapping of HTTP/2 stream semantics onto byte-stream semantics.
//! - Reading yields the DATA payloads in order (RFC 9113 §6.1); END_STREAM is end of file
//!   (§8.1). A RST_STREAM with NO_ERROR or CANCEL (§6.4, §7) is also end of file: a peer that
//!   has finished may reset instead of half-closing (§8.1 allows NO_ERROR for exactly this),
//!   and ztunnel treats both the same way. Any other reset or connection error is an error.
//! - Flow-control capacity is released only for bytes the reader has taken (§6.9, §6.9.1):
//!   the peer can never have more than one window of unread data outstanding, and h2 sends
//!   WINDOW_UPDATE as the reader consumes.
//! - Shutting down the write side sends an empty DATA frame with END_STREAM (half-close per
//!   direction; the other direction keeps flowing).
//! - Dropping the stream before its own direction ended resets it with RST_STREAM
//!   CONNECT_ERROR, and so does a relay whose socket was reset: RFC 9113 §8.5 has a proxy
//!   turn a TCP RST (or any error of the TCP connection) into a stream error of type
//!   CONNECT_ERROR, and a stream error back into a TCP RST, so a client can tell a truncated
//!   transfer from a complete one. ztunnel deviates here: it maps a TCP RST to END_STREAM (a
//!   clean end) and aborts with CANCEL, which this side reads as end of stream. Between two
//!   ringmesh nodes a reset therefore reaches the far client as a reset; with a ztunnel peer,
//!   its resets reach us as clean ends (as they do between two ztunnels) and ours reach it
//!   as a stream error.
//! - Byte counts are payload bytes moved through this stream, for telemetry; [`relay`]
//!   counts into a `runtime::meter::Meter` with the directions named from the connection's
//!   originator, as the TCP relay does.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use runtime::meter::{Flow, Meter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::StreamSlot;

/// An established HBONE tunnel: a CONNECT stream that was answered 200.
///
/// Implements tokio's `AsyncRead`/`AsyncWrite`; [`relay`] moves bytes to and from a socket
/// without the intermediate copy a generic copy loop makes.
pub struct HboneStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// The unread rest of the last DATA frame. Its capacity has not been released yet.
    pending: Bytes,
    read_eof: bool,
    write_closed: bool,
    bytes_read: u64,
    bytes_written: u64,
    /// Held for the pool's per-connection stream count; released on drop.
    _slot: Option<StreamSlot>,
}

impl std::fmt::Debug for HboneStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneStream")
            .field("stream_id", &self.stream_id())
            .field("read_eof", &self.read_eof)
            .field("write_closed", &self.write_closed)
            .field("bytes_read", &self.bytes_read)
            .field("bytes_written", &self.bytes_written)
            .finish()
    }
}

impl HboneStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, slot: Option<StreamSlot>) -> Self {
        HboneStream {
            send,
            recv,
            pending: Bytes::new(),
            read_eof: false,
            write_closed: false,
            bytes_read: 0,
            bytes_written: 0,
            _slot: slot,
        }
    }

    /// The HTTP/2 stream identifier (for logs).
    pub fn stream_id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }

    /// This side's address on the TCP socket of the HTTP/2 connection the stream rides on,
    /// when the stream came from a pool's dialled connection; `None` for a server's
    /// streams and connections made over other byte streams.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self._slot.as_ref().and_then(|s| s.local_addr())
    }

    /// Payload bytes read from the peer so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Payload bytes written to the peer so far (accepted by h2 for sending).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Aborts the tunnel with RST_STREAM `reason` (RFC 9113 §6.4) in both directions.
    pub fn reset(mut self, reason: Reason) {
        self.send.send_reset(reason);
        self.finished();
    }

    /// Aborts the tunnel because the TCP connection behind it failed (RFC 9113 §8.5:
    /// RST_STREAM CONNECT_ERROR, which the peer turns into a TCP RST).
    pub fn abort(&mut self) {
        if !self.is_finished() {
            self.send.send_reset(Reason::CONNECT_ERROR);
            self.finished();
        }
    }

    /// Both directions ended (END_STREAM each way), or the stream was reset.
    pub fn is_finished(&self) -> bool {
        self.read_eof && self.write_closed
    }

    fn finished(&mut self) {
        self.read_eof = true;
        self.write_closed = true;
    }

    /// Polls the next chunk of payload without copying it. `None` is end of stream.
    ///
    /// The chunk's flow-control capacity is *not* released: call [`Self::release`] once the
    /// bytes have been passed on, so the peer's window tracks what really left this process.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        loop {
            if self.read_eof {
                return Poll::Ready(Ok(None));
            }
            match ready!(self.recv.poll_data(cx)) {
                None => self.read_eof = true,
                // An empty DATA frame without END_STREAM carries nothing (§6.1); skip it.
                Some(Ok(b)) if b.is_empty() => {}
                Some(Ok(b)) => return Poll::Ready(Ok(Some(b))),
                Some(Err(e)) if is_clean_reset(&e) => self.read_eof = true,
                Some(Err(e)) => {
                    // Reset by the peer (or the connection broke): nothing left to abort.
                    self.finished();
                    return Poll::Ready(Err(h2_to_io(e)));
                }
            }
        }
    }

    /// Gives `n` bytes of receive window back to the peer (they were read and passed on).
    pub fn release(&mut self, n: usize) {
        self.bytes_read += n as u64;
        // Fails only if more is released than was received, which the callers here never do;
        // and then there is nothing better to do than carry on.
        let _ = self.recv.flow_control().release_capacity(n);
    }

    /// Sends a prefix of `data` as far as the peer's windows allow, removing what was sent from
    /// `data`. Returns the number of bytes sent (`0` only for empty `data`).
    pub fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "HBONE stream write side already closed",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_capacity(cx, data.len()))?;
        let chunk = data.split_to(n);
        self.send.send_data(chunk, false).map_err(h2_to_io)?;
        self.bytes_written += n as u64;
        Poll::Ready(Ok(n))
    }

    /// Waits until h2 grants send capacity (peer window and local send buffer), at most `want`.
    fn poll_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(want);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => return Poll::Ready(Ok(n.min(want))),
                // The stream can no longer send: find out why (a reset from the peer, usually).
                Some(Err(_)) | None => return self.poll_send_error(cx),
            }
        }
    }

    fn poll_send_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(match ready!(self.send.poll_reset(cx)) {
            Ok(reason) => io::Error::new(
                reset_kind(reason),
                format!("HBONE stream reset by peer: {reason}"),
            ),
            Err(e) => h2_to_io(e),
        }))
    }

    fn poll_close_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_closed {
            return Poll::Ready(Ok(()));
        }
        // Empty DATA frame with END_STREAM (RFC 9113 §6.1, §8.1); needs no window.
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => {
                self.write_closed = true;
                Poll::Ready(Ok(()))
            }
            Err(_) => match ready!(self.send.poll_reset(cx)) {
                // The peer already finished the stream cleanly: nothing left to close.
                Ok(Reason::NO_ERROR) => {
                    self.write_closed = true;
                    Poll::Ready(Ok(()))
                }
                Ok(reason) => Poll::Ready(Err(io::Error::new(
                    reset_kind(reason),
                    format!("HBONE stream reset by peer: {reason}"),
                ))),
                Err(e) => Poll::Ready(Err(h2_to_io(e))),
            },
        }
    }
}

impl Drop for HboneStream {
    /// A tunnel dropped before its sending direction ended was cut short: say so with
    /// CONNECT_ERROR (h2 would send CANCEL, which peers read as a clean end). One whose own
    /// side finished (END_STREAM sent) is left to h2, which resets what the peer may still
    /// send with NO_ERROR or CANCEL (RFC 9113 §8.1: a complete response may end a stream
    /// before its request has).
    fn drop(&mut self) {
        if !self.write_closed {
            self.abort();
        }
    }
}

impl AsyncRead for HboneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let Some(mut chunk) = ready!(this.poll_chunk(cx))? else {
            return Poll::Ready(Ok(()));
        };
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk[..n]);
        chunk.advance(n);
        // An empty remainder would still pin h2's receive buffer (`advance` keeps the shared
        // allocation alive); keep only a non-empty one.
        if !chunk.is_empty() {
            this.pending = chunk;
        }
        this.release(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HboneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "HBONE stream write side already closed",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // h2 owns what it sends until the frame is written, so the bytes are copied once here
        // ([`relay`] avoids this by reading straight into `Bytes`).
        let n = ready!(this.poll_capacity(cx, buf.len()))?;
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        this.bytes_written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes queued frames as soon as it can; nothing waits here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close_write(cx)
    }
}

/// RST_STREAM codes a finished peer uses (RFC 9113 §8.1 NO_ERROR; CANCEL when it no longer
/// needs the stream): read as end of stream.
fn is_clean_reset(e: &h2::Error) -> bool {
    e.is_reset() && matches!(e.reason(), Some(Reason::NO_ERROR) | Some(Reason::CANCEL))
}

fn reset_kind(reason: Reason) -> io::ErrorKind {
    match reason {
        Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED => io::ErrorKind::BrokenPipe,
        Reason::REFUSED_STREAM => io::ErrorKind::ConnectionRefused,
        _ => io::ErrorKind::ConnectionReset,
    }
}

/// An h2 error as an `io::Error` that keeps the kind a relay acts on.
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    let kind = if e.is_go_away() {
        io::ErrorKind::ConnectionAborted
    } else if let Some(reason) = e.reason() {
        reset_kind(reason)
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

/// Which end of a [`relay`] faces the connection's originator (the client): the socket on
/// the outbound side of a node (a pod's connection), the tunnel on the inbound side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Originator {
    Socket,
    Tunnel,
}

impl Originator {
    /// The flow of bytes going from the socket into the tunnel.
    fn into_tunnel(self) -> Flow {
        match self {
            Originator::Socket => Flow::FromOriginator,
            Originator::Tunnel => Flow::TowardOriginator,
        }
    }
}

/// The socket end of a [`relay`]: one it can reset (its coming close sends RST, so the far
/// end sees an abort and not an end of stream) and wait on before reading.
pub trait Abort {
    fn abort(&self);

    /// Ready when a read may find bytes. The relay allocates its read buffer only then, so an
    /// idle tunnel holds none. The default (always ready) suits sockets that cannot say: the
    /// relay then allocates for each read it tries and drops the buffer when it would block.
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Abort for runtime::net::TcpStream {
    fn abort(&self) {
        // SO_LINGER 0: close sends RST. Failing to set it leaves a FIN, nothing worse.
        let _ = self.set_zero_linger();
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        runtime::net::TcpStream::poll_readable(self, cx)
    }
}

/// Why a [`relay`] ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The tunnel was reset by the peer or its connection broke; the socket was reset.
    #[error("tunnel: {0}")]
    Tunnel(#[source] io::Error),
    /// The socket failed (a reset, usually); the tunnel was aborted with CONNECT_ERROR.
    #[error("socket: {0}")]
    Socket(#[source] io::Error),
    /// The caller's abort signal fired; both ends were reset.
    #[error("aborted")]
    Aborted,
}

impl RelayError {
    /// The underlying I/O error, if any.
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            RelayError::Tunnel(e) | RelayError::Socket(e) => Some(e),
            RelayError::Aborted => None,
        }
    }
}

/// First read buffer of a relay direction, and the size it shrinks back to. Small, because
/// most tunnels carry short messages. A buffer exists only while bytes flow: it is allocated
/// once the socket is readable and dropped when a read would block, so an idle tunnel holds
/// none (DESIGN.md: memory per idle connection is a tracked figure). A read that fills the
/// buffer doubles the next one, so a bulk transfer reaches [`RELAY_BUF_MAX`] within six
/// reads.
const RELAY_BUF_MIN: usize = 4 * 1024;
/// Largest read buffer. ≥ 64 KiB for bulk (DESIGN.md measured 4 KiB copy loops losing 77 % of
/// throughput). Each buffer stays pinned until h2 has sent its last byte, so a bulk stream
/// holds a few of them: 128 KiB instead of 256 KiB, with the send queue at 256 KiB, took an
/// 8-stream bulk node from 22–27 to 11–14 MiB RssAnon at the same CPU per GB
/// (docs/design-notes.md).
const RELAY_BUF_MAX: usize = 128 * 1024;

/// Moves bytes both ways between `tunnel` and `io` until both directions have ended, counting
/// what it writes into `meter` (flows named from `originator`'s side), or until `abort`
/// completes.
///
/// End of stream in one direction is passed on as a half-close (END_STREAM towards the
/// tunnel, `poll_shutdown` towards `io`) while the other direction keeps flowing. A failure
/// of either end resets the other (RFC 9113 §8.5): a socket error aborts the tunnel with
/// CONNECT_ERROR, a tunnel error resets the socket; `abort` resets both. Tunnel payload is
/// written to `io` straight from h2's buffers, and socket reads go straight into the buffers
/// h2 sends from: no copy beyond the kernel's.
///
/// `abort` is `Unpin`: a caller with an `async` signal pins it where it owns it
/// (`std::pin::pin!`) and passes the `Pin<&mut _>`. Taken by value, a signal is stored once
/// more by every `async` layer it passes through, for the life of the tunnel (a node's idle
/// cut, 256 B, was held four times per stream).
pub async fn relay<T>(
    tunnel: &mut HboneStream,
    io: &mut T,
    meter: &Meter,
    originator: Originator,
    mut abort: impl Future<Output = ()> + Unpin,
) -> Result<(), RelayError>
where
    T: AsyncRead + AsyncWrite + Abort + Unpin,
{
    let up_flow = originator.into_tunnel();
    let down_flow = up_flow.reverse();
    let mut down = Down::default();
    let mut up = Up::new();
    let result = std::future::poll_fn(|cx| {
        // Poll both directions every time: each registers its own wake-ups.
        let down_res = if down.done {
            Poll::Ready(Ok(()))
        } else {
            down.poll(cx, tunnel, io, meter, down_flow)
        };
        let up_res = if up.done {
            Poll::Ready(Ok(()))
        } else {
            up.poll(cx, tunnel, io, meter, up_flow)
        };
        match (down_res, up_res) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => match Pin::new(&mut abort).poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(RelayError::Aborted)),
                Poll::Pending => Poll::Pending,
            },
        }
    })
    .await;
    match &result {
        Ok(()) => {}
        // Already aborted toward the tunnel by the direction that failed.
        Err(RelayError::Socket(_)) => {}
        Err(RelayError::Tunnel(_)) => io.abort(),
        Err(RelayError::Aborted) => {
            tunnel.abort();
            io.abort();
        }
    }
    result
}

/// Tunnel → socket.
#[derive(Default)]
struct Down {
    chunk: Bytes,
    /// Something was written to the socket since the last flush.
    unflushed: bool,
    done: bool,
}

impl Down {
    fn poll<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        tunnel: &mut HboneStream,
        io: &mut T,
        meter: &Meter,
        flow: Flow,
    ) -> Poll<Result<(), RelayError>> {
        loop {
            if self.chunk.is_empty() {
                match tunnel.poll_chunk(cx).map_err(RelayError::Tunnel)? {
                    Poll::Ready(Some(c)) => self.chunk = c,
                    Poll::Ready(None) => {
                        ready!(Pin::new(&mut *io).poll_shutdown(cx))
                            .map_err(|e| socket_failed(tunnel, e))?;
                        self.done = true;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Pending => {
                        if self.unflushed {
                            ready!(Pin::new(&mut *io).poll_flush(cx))
                                .map_err(|e| socket_failed(tunnel, e))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.chunk))
                .map_err(|e| socket_failed(tunnel, e))?;
            if n == 0 {
                return Poll::Ready(Err(socket_failed(tunnel, io::ErrorKind::WriteZero.into())));
            }
            self.chunk.advance(n);
            if self.chunk.is_empty() {
                // An emptied `Bytes` still pins h2's receive buffer; an idle tunnel holds none.
                self.chunk = Bytes::new();
            }
            self.unflushed = true;
            tunnel.release(n);
            meter.add(flow, n);
        }
    }
}

/// The socket side of a relay failed (a reset, most often): the tunnel is aborted with
/// CONNECT_ERROR (RFC 9113 §8.5) so the peer resets its end too.
fn socket_failed(tunnel: &mut HboneStream, e: io::Error) -> RelayError {
    tunnel.abort();
    RelayError::Socket(e)
}

/// Socket → tunnel.
struct Up {
    /// Spare read capacity (always empty between reads); filled bytes are split off and
    /// frozen for h2. No capacity while the socket has nothing to read.
    buf: BytesMut,
    /// Size of the next buffer to allocate (adaptive, see [`RELAY_BUF_MIN`]).
    next: usize,
    /// Read from the socket, not yet accepted by h2.
    out: Bytes,
    done: bool,
}

impl Up {
    fn new() -> Up {
        Up {
            buf: BytesMut::new(),
            next: RELAY_BUF_MIN,
            out: Bytes::new(),
            done: false,
        }
    }

    fn poll<T: AsyncRead + Abort + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        tunnel: &mut HboneStream,
        io: &mut T,
        meter: &Meter,
        flow: Flow,
    ) -> Poll<Result<(), RelayError>> {
        loop {
            while !self.out.is_empty() {
                let n = ready!(tunnel.poll_send(cx, &mut self.out)).map_err(RelayError::Tunnel)?;
                meter.add(flow, n);
            }
            if self.buf.capacity() < RELAY_BUF_MIN / 2 {
                // No buffer before the socket may have bytes: an idle tunnel holds none.
                ready!(io.poll_readable(cx)).map_err(|e| socket_failed(tunnel, e))?;
                // Read straight into the memory h2 will send from. The socket reads into
                // uninitialised capacity (`runtime::net::TcpStream` does not zero it first).
                self.buf = BytesMut::with_capacity(self.next);
            }
            let room = self.buf.capacity();
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut self.buf);
            let Poll::Ready(read) = read else {
                // The read would block: give the spare capacity back rather than park it
                // for as long as the socket stays quiet. (Bytes already split off and
                // queued in h2 keep their part of the allocation until sent.)
                self.buf = BytesMut::new();
                return Poll::Pending;
            };
            let n = read.map_err(|e| socket_failed(tunnel, e))?;
            if n == 0 {
                ready!(tunnel.poll_close_write(cx)).map_err(RelayError::Tunnel)?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if n == room && self.next < RELAY_BUF_MAX {
                self.next *= 2;
            } else if n < self.next / 8 && self.next > RELAY_BUF_MIN {
                // Traffic turned small: the next buffer (allocated once this one is used up)
                // shrinks back towards the idle size.
                self.next /= 2;
            }
            self.out = self.buf.split_to(n).freeze();
        }
    }
}

#[cfg(test)]
mod tests;
