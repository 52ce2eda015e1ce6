//! An mTLS byte stream after its handshake (`super::handshake`): this crate's record layer
//! ([`super::record`]) on the socket.
//!
//! Owns: [`TlsStream`], the `AsyncRead + AsyncWrite` that h2 runs on. rustls keeps the key
//! schedule (`Kernel`): a key update, ours or the peer's, asks it for the next secret.
//!
//! Invariants:
//! - bytes that arrived with the peer's last handshake flight are given out first, in order;
//! - the write side seals from the caller's slices into one queue of whole records and
//!   accepts no more once [`TX_HIGH`] bytes are queued, so a peer that stops reading holds at
//!   most that much of ours; the read side holds at most one record beyond what the caller
//!   has not taken ([`READ_SIZE`] + [`record::MAX_RECORD`]);
//! - queued records go to the socket once a record's worth is queued, or on flush; inside a
//!   worker loop a flush of less waits for the end of the loop's turn (`runtime::turn`), so
//!   the streams of one connection that write in the same turn share one send;
//! - buffers exist only while bytes move: the read buffer is freed whenever it is empty and
//!   the socket has nothing more, the write queue once a short exchange has been flushed (a
//!   bulk writer keeps its queue until its next short write, to avoid zeroing a new one per
//!   write);
//! - the write key is replaced (a KeyUpdate) before it seals more records than the suite's
//!   confidentiality limit allows; a peer's KeyUpdate replaces the read key at its record's
//!   end, and one that requests it is answered before our next record;
//! - a fatal error is final: the alert it names is sent when the socket takes it, and every
//!   later read or write returns the same error. close_notify from the peer is the end of
//!   the stream; [`TlsStream::poll_shutdown`] sends ours.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::record::{
    self, ContentType, Direction, HEADER_LEN, MAX_PLAINTEXT, OVERHEAD, RecordError, alert,
};
use crate::error::{Error, Result};
use crate::identity::Identity;

/// Ciphertext read per syscall, at most: four full records. A bulk tunnel's socket usually
/// has that much waiting, so one read feeds four records to h2; an idle one frees it.
pub const READ_SIZE: usize = 4 * record::MAX_RECORD;

/// Sealed bytes the write queue holds before a write waits for the socket: four full
/// records, what one 64 KiB relay chunk becomes.
pub const TX_HIGH: usize = 4 * (MAX_PLAINTEXT + OVERHEAD);

/// A slice shorter than this is copied into a record with its neighbours instead of being
/// sealed from where it lies: h2 writes each DATA frame as its 9-byte header (and any
/// control frames) and then the payload, and a record of its own costs a short slice an
/// AEAD call and 22 bytes on the wire, more than copying it.
const SMALL_SLICE: usize = 1024;

/// A write queue that carried less than this between two empty states is freed once
/// flushed: a short exchange (a request, a PING) allocates what it needs and returns it;
/// a bulk writer keeps its queue (see the module invariants).
const FREE_BELOW: usize = 16 * 1024;

/// Records sealed with one key before it is replaced: rustls' limit for the suite (2^24
/// for AES-GCM, RFC 8446 §5.5), less a margin so that the KeyUpdate itself stays within it.
const KEY_UPDATE_MARGIN: u64 = 1024;

/// The most bytes of one post-handshake message (KeyUpdate is 5, NewSessionTicket at most a
/// few hundred) buffered across records.
const POST_HANDSHAKE_MAX: usize = 16 * 1024;

/// Handshake message types this layer handles after the handshake (RFC 8446 §4).
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

/// rustls' half of a connection after the handshake: what computes the next traffic
/// secret on a key update.
pub(super) enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn update_tx(&mut self) -> std::result::Result<Direction, String> {
        let (seq, secrets) = match self {
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::Server(k) => k.update_tx_secret(),
        }
        .map_err(|e| format!("updating the write key: {e}"))?;
        Direction::new(&secrets, seq)
    }

    fn update_rx(&mut self) -> std::result::Result<Direction, String> {
        let (seq, secrets) = match self {
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::Server(k) => k.update_rx_secret(),
        }
        .map_err(|e| format!("updating the read key: {e}"))?;
        Direction::new(&secrets, seq)
    }

    fn confidentiality_limit(&self) -> u64 {
        let suite = match self {
            Kernel::Client(k) => k.negotiated_cipher_suite(),
            Kernel::Server(k) => k.negotiated_cipher_suite(),
        };
        suite
            .tls13()
            .map_or(1 << 24, |s| s.common.confidentiality_limit)
    }
}

/// What the handshake settled, for the caller's checks.
#[derive(Debug, Clone)]
pub struct Session {
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The peer's SPIFFE identity (its leaf's first URI SAN that parses), when it sent a
    /// certificate.
    pub peer_identity: Option<Identity>,
}

/// An mTLS connection after its handshake (see the module doc).
pub struct TlsStream<T> {
    io: T,
    session: Session,
    kernel: Kernel,
    tx: Direction,
    rx: Direction,
    /// `tx.seq()` at which the write key is replaced.
    key_update_at: u64,
    write_key_updates: u64,
    /// Sealed records: `out[out_start..out_end]` is still to be written; `out.len()` is what
    /// has been initialised, never shrunk but by freeing the whole buffer.
    out: Vec<u8>,
    out_start: usize,
    out_end: usize,
    /// Bytes queued since the queue was last empty.
    out_batch: usize,
    /// Ciphertext read and not yet taken; while `opened` is set its first record has been
    /// opened in place.
    inb: BytesMut,
    /// The opened record at the front of `inb`: its content still to give out, and its
    /// whole length.
    opened: Option<(std::ops::Range<usize>, usize)>,
    /// Application data that arrived with the handshake.
    early: Vec<u8>,
    early_pos: usize,
    /// A post-handshake message split over records.
    post_handshake: Vec<u8>,
    read_closed: bool,
    close_sent: bool,
    /// The error that ended the connection, returned again by every later call.
    failed: Option<(io::ErrorKind, String)>,
    /// A flush waiting for the end of the loop's turn, so that what other tasks write to
    /// this connection during the turn leaves in the same send.
    flush_at: Option<runtime::turn::Ticket>,
}

impl<T> std::fmt::Debug for TlsStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("session", &self.session)
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish_non_exhaustive()
    }
}

impl<T> TlsStream<T> {
    /// The stream over `io` once a handshake has completed: its secrets, the bytes read
    /// after its last record (`inb`) and application data rustls opened with it (`early`).
    pub(super) fn after_handshake(
        io: T,
        session: Session,
        kernel: Kernel,
        secrets: &rustls::ExtractedSecrets,
        mut inb: BytesMut,
        early: Vec<u8>,
    ) -> Result<TlsStream<T>> {
        let tx = Direction::new(&secrets.tx.1, secrets.tx.0).map_err(Error::TlsConfig)?;
        let rx = Direction::new(&secrets.rx.1, secrets.rx.0).map_err(Error::TlsConfig)?;
        let key_update_at = kernel
            .confidentiality_limit()
            .saturating_sub(KEY_UPDATE_MARGIN)
            .max(1);
        if inb.is_empty() {
            inb = BytesMut::new();
        }
        Ok(TlsStream {
            io,
            session,
            kernel,
            tx,
            rx,
            key_update_at,
            write_key_updates: 0,
            out: Vec::new(),
            out_start: 0,
            out_end: 0,
            out_batch: 0,
            inb,
            opened: None,
            early,
            early_pos: 0,
            post_handshake: Vec::new(),
            read_closed: false,
            close_sent: false,
            failed: None,
            flush_at: None,
        })
    }

    /// What the handshake settled.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The socket under the stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Replaces the write key every `records` records instead of at the suite's limit, so
    /// that tests can watch key updates happen (the limit is 2^24 records, 256 GiB).
    #[doc(hidden)]
    pub fn update_write_key_every(&mut self, records: u64) {
        self.key_update_at = records.max(1);
    }

    /// Write keys this stream has moved to since its handshake (ours or on the peer's request).
    pub fn write_key_updates(&self) -> u64 {
        self.write_key_updates
    }

    /// Bytes of buffer the stream holds now (read buffer and write queue): 0 on an idle
    /// connection.
    pub fn buffered_capacity(&self) -> usize {
        self.inb.capacity()
            + self.out.capacity()
            + self.early.capacity()
            + self.post_handshake.capacity()
    }

    fn pending_out(&self) -> usize {
        self.out_end - self.out_start
    }

    fn error(&self) -> Option<io::Error> {
        self.failed
            .as_ref()
            .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }

    /// Room for `len` more bytes at the end of the write queue; returns where they go.
    fn reserve_out(&mut self, len: usize) -> usize {
        if self.out_start == self.out_end {
            self.out_start = 0;
            self.out_end = 0;
        } else if self.out_end + len > self.out.len() && self.out_start > 0 {
            self.out.copy_within(self.out_start..self.out_end, 0);
            self.out_end -= self.out_start;
            self.out_start = 0;
        }
        if self.out_end + len > self.out.len() {
            self.out.resize(self.out_end + len, 0);
        }
        let at = self.out_end;
        self.out_end += len;
        self.out_batch += len;
        at
    }

    /// Replaces the write key when it has sealed as many records as it may: a KeyUpdate
    /// sealed with the old key, then the new one.
    fn maybe_update_tx(&mut self) -> io::Result<()> {
        // `key_update_at` counts records since the last key change; a test may set it low.
        if self.tx.seq() >= self.key_update_at {
            self.queue_key_update(false)?;
        }
        Ok(())
    }

    fn queue_key_update(&mut self, request: bool) -> io::Result<()> {
        let msg = [HS_KEY_UPDATE, 0, 0, 1, u8::from(request)];
        self.queue_content(ContentType::Handshake, &msg);
        self.tx = self.kernel.update_tx().map_err(io::Error::other)?;
        self.write_key_updates += 1;
        Ok(())
    }

    /// Seals a short record of `typ` (an alert, a handshake message) into the queue.
    fn queue_content(&mut self, typ: ContentType, content: &[u8]) {
        let at = self.reserve_out(content.len() + OVERHEAD);
        let record = &mut self.out[at..at + content.len() + OVERHEAD];
        record[HEADER_LEN..HEADER_LEN + content.len()].copy_from_slice(content);
        self.tx.seal_in_place(typ, record, content.len());
    }

    /// Seals as much of `bufs` as the queue has room for; returns the bytes taken.
    fn seal_slices(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let room = TX_HIGH
            .saturating_sub(self.pending_out())
            .max(MAX_PLAINTEXT);
        let mut taken = 0;
        let mut i = 0;
        while i < bufs.len() && taken < room {
            if bufs[i].is_empty() {
                i += 1;
                continue;
            }
            if bufs[i].len() >= SMALL_SLICE {
                // Sealed from where it lies, a record at a time.
                let slice: &[u8] = &bufs[i];
                let want = slice.len().min(room - taken);
                for chunk in slice[..want].chunks(MAX_PLAINTEXT) {
                    self.maybe_update_tx()?;
                    let at = self.reserve_out(chunk.len() + OVERHEAD);
                    self.tx.seal_to(
                        ContentType::ApplicationData,
                        chunk,
                        &mut self.out[at..at + chunk.len() + OVERHEAD],
                    );
                }
                taken += want;
                if want < slice.len() {
                    break;
                }
                i += 1;
                continue;
            }
            // A run of short slices, copied into one record.
            let mut len = 0;
            let mut j = i;
            while j < bufs.len()
                && bufs[j].len() < SMALL_SLICE
                && len + bufs[j].len() <= MAX_PLAINTEXT
            {
                len += bufs[j].len();
                j += 1;
            }
            self.maybe_update_tx()?;
            let at = self.reserve_out(len + OVERHEAD);
            let mut pos = at + HEADER_LEN;
            for b in &bufs[i..j] {
                self.out[pos..pos + b.len()].copy_from_slice(b);
                pos += b.len();
            }
            self.tx.seal_in_place(
                ContentType::ApplicationData,
                &mut self.out[at..at + len + OVERHEAD],
                len,
            );
            taken += len;
            i = j;
        }
        Ok(taken)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> TlsStream<T> {
    /// Writes queued records until the queue is empty or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_start < self.out_end {
            let n = ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_start..self.out_end])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_start += n;
        }
        self.out_start = 0;
        self.out_end = 0;
        if self.out_batch < FREE_BELOW {
            self.out = Vec::new();
        }
        self.out_batch = 0;
        Poll::Ready(Ok(()))
    }

    /// Ends the connection for `e`: the alert it names is queued and given one chance to go
    /// out, and every later call returns the error.
    fn fail(&mut self, cx: &mut Context<'_>, e: RecordError) -> io::Error {
        if self.failed.is_none() && !self.close_sent {
            self.queue_content(ContentType::Alert, &[2, e.alert]);
            self.close_sent = true;
            let _ = self.poll_drain(cx);
        }
        let err = io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        self.failed = Some((err.kind(), err.to_string()));
        err
    }

    /// Handles the content of a handshake record after the handshake.
    fn on_handshake(
        &mut self,
        cx: &mut Context<'_>,
        content: &[u8],
        record_end: bool,
    ) -> io::Result<()> {
        if self.post_handshake.len() + content.len() > POST_HANDSHAKE_MAX {
            return Err(self.fail(
                cx,
                RecordError::new(alert::UNEXPECTED_MESSAGE, "post-handshake message too long"),
            ));
        }
        self.post_handshake.extend_from_slice(content);
        loop {
            let buf = &self.post_handshake[..];
            if buf.len() < 4 {
                break;
            }
            let len = usize::from(buf[1]) << 16 | usize::from(buf[2]) << 8 | usize::from(buf[3]);
            if buf.len() < 4 + len {
                break;
            }
            let typ = buf[0];
            let body = buf[4..4 + len].to_vec();
            self.post_handshake.drain(..4 + len);
            match typ {
                HS_KEY_UPDATE => {
                    let request = match body[..] {
                        [0] => false,
                        [1] => true,
                        _ => {
                            return Err(self.fail(
                                cx,
                                RecordError::new(alert::ILLEGAL_PARAMETER, "malformed KeyUpdate"),
                            ));
                        }
                    };
                    // RFC 8446 §5.1: a key change must fall on a record boundary.
                    if !self.post_handshake.is_empty() || !record_end {
                        return Err(self.fail(
                            cx,
                            RecordError::new(
                                alert::UNEXPECTED_MESSAGE,
                                "KeyUpdate not at the end of its record",
                            ),
                        ));
                    }
                    self.rx = match self.kernel.update_rx() {
                        Ok(rx) => rx,
                        Err(e) => {
                            return Err(self.fail(cx, RecordError::new(alert::INTERNAL_ERROR, e)));
                        }
                    };
                    if request && !self.close_sent {
                        self.queue_key_update(false)?;
                        let _ = self.poll_drain(cx)?;
                    }
                }
                HS_NEW_SESSION_TICKET => {
                    let res = match &mut self.kernel {
                        Kernel::Client(k) => k.handle_new_session_ticket(&body).map_err(|e| {
                            RecordError::new(alert::DECODE_ERROR, format!("NewSessionTicket: {e}"))
                        }),
                        Kernel::Server(_) => Err(RecordError::new(
                            alert::UNEXPECTED_MESSAGE,
                            "NewSessionTicket from a client",
                        )),
                    };
                    if let Err(e) = res {
                        return Err(self.fail(cx, e));
                    }
                }
                other => {
                    return Err(self.fail(
                        cx,
                        RecordError::new(
                            alert::UNEXPECTED_MESSAGE,
                            format!("handshake message of type {other} after the handshake"),
                        ),
                    ));
                }
            }
        }
        if self.post_handshake.is_empty() {
            self.post_handshake = Vec::new();
        }
        Ok(())
    }

    /// Opens the record at the front of `inb` if it is all there. `Ok(false)`: more bytes
    /// are needed.
    fn open_next(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        if self.inb.len() < HEADER_LEN {
            return Ok(false);
        }
        let len = match record::record_len(&self.inb[..HEADER_LEN]) {
            Ok(len) => len,
            Err(e) => return Err(self.fail(cx, e)),
        };
        if self.inb.len() < len {
            return Ok(false);
        }
        let (typ, range) = match self.rx.open(&mut self.inb[..len]) {
            Ok(v) => v,
            Err(e) => return Err(self.fail(cx, e)),
        };
        if typ != ContentType::Handshake && !self.post_handshake.is_empty() {
            return Err(self.fail(
                cx,
                RecordError::new(
                    alert::UNEXPECTED_MESSAGE,
                    "handshake message cut by another record",
                ),
            ));
        }
        match typ {
            ContentType::ApplicationData if !range.is_empty() => {
                self.opened = Some((range, len));
                return Ok(true);
            }
            ContentType::ApplicationData => {}
            ContentType::Handshake => {
                let content = self.inb[range].to_vec();
                self.inb.advance(len);
                self.on_handshake(cx, &content, true)?;
                return Ok(true);
            }
            ContentType::Alert => match self.inb[range] {
                [_, alert::CLOSE_NOTIFY] => self.read_closed = true,
                [_, alert::USER_CANCELED] => {}
                [_, desc] => {
                    let name = rustls::AlertDescription::from(desc);
                    let err = io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("TLS: the peer sent a fatal alert: {name:?}"),
                    );
                    self.failed = Some((err.kind(), err.to_string()));
                    return Err(err);
                }
                _ => {
                    return Err(
                        self.fail(cx, RecordError::new(alert::DECODE_ERROR, "malformed alert"))
                    );
                }
            },
        }
        self.inb.advance(len);
        Ok(true)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.error() {
            return Poll::Ready(Err(e));
        }
        if this.early_pos < this.early.len() {
            let n = buf.remaining().min(this.early.len() - this.early_pos);
            buf.put_slice(&this.early[this.early_pos..this.early_pos + n]);
            this.early_pos += n;
            if this.early_pos == this.early.len() {
                this.early = Vec::new();
                this.early_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some((range, len)) = this.opened.as_mut() {
                let n = buf.remaining().min(range.len());
                buf.put_slice(&this.inb[range.start..range.start + n]);
                range.start += n;
                if range.start == range.end {
                    let len = *len;
                    this.opened = None;
                    this.inb.advance(len);
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.open_next(cx)? {
                continue;
            }
            this.inb.reserve(READ_SIZE.saturating_sub(this.inb.len()));
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.inb) {
                Poll::Pending => {
                    if this.inb.is_empty() {
                        this.inb = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => {
                    if !this.inb.is_empty() {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "TLS: the peer closed the connection inside a record",
                        );
                        this.failed = Some((e.kind(), e.to_string()));
                        return Poll::Ready(Err(e));
                    }
                    // Closed without close_notify: HTTP/2 frames its own ends, so this is
                    // the end of the stream, as for a peer that sent it.
                    this.read_closed = true;
                    this.inb = BytesMut::new();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.error() {
            return Poll::Ready(Err(e));
        }
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS: write after close_notify",
            )));
        }
        if this.pending_out() >= TX_HIGH {
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            if this.pending_out() >= TX_HIGH {
                return Poll::Pending;
            }
        }
        let taken = this.seal_slices(bufs)?;
        // The records are ours now. Short writes wait for the flush, so the records of one
        // batch (h2's frames of a poll) leave in one send; a full record goes at once.
        if this.pending_out() >= MAX_PLAINTEXT
            && let Poll::Ready(Err(e)) = this.poll_drain(cx)
        {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Short records wait for the end of the turn (`runtime::turn`): the other streams
        // of this connection that answer in the same turn add theirs, and one send carries
        // them all. A full record's worth goes at once, as does everything outside a
        // worker loop.
        let pending = this.pending_out();
        if pending > 0 && pending < MAX_PLAINTEXT && this.failed.is_none() {
            let due = this.flush_at.is_some_and(runtime::turn::Ticket::is_due);
            if !due && let Some(ticket) = runtime::turn::defer(cx.waker()) {
                this.flush_at.get_or_insert(ticket);
                return Poll::Pending;
            }
        }
        this.flush_at = None;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && this.failed.is_none() {
            this.queue_content(ContentType::Alert, &[1, alert::CLOSE_NOTIFY]);
            this.close_sent = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
