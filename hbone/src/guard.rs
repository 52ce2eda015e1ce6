//! A guard under HTTP/2: reads the frame headers a peer sends, before h2 does, to end a
//! connection whose control frames are a flood, and to tell when the peer's connection
//! preface is complete.
//!
//! Owns: [`FrameScanner`] (frame boundaries in a byte stream, no I/O) and [`GuardedIo`], the
//! transport h2 reads through (it also counts the bytes for the window tuner).
//!
//! Why: h2 answers every PING and SETTINGS before it reads the next frame, so a flood of them
//! costs no memory but a PONG or an ACK per 17 bytes the peer sends: a peer can keep a core
//! busy for as long as it likes while sending nothing useful. (Tiny DATA frames are h2's own
//! business: its DATA frame budget bounds how many it buffers; rapid resets and CONTINUATION
//! floods are bounded by h2 too.) nginx and Envoy cut such peers off the same way.
//!
//! Invariants:
//! - the scanner never changes the bytes and never buffers them: it walks the frame headers
//!   of each read as it passes and carries at most 9 bytes of a split header over;
//! - control frames that ask for work — PING and SETTINGS without ACK, PRIORITY, and frame
//!   types h2 ignores — spend a token of a bucket that holds [`CONTROL_BURST`] tokens, refills
//!   at [`CONTROL_PER_SECOND`], and earns one token per [`BYTES_PER_TOKEN`] of traffic either
//!   way (a client's PINGs that sample a busy transfer's bandwidth are paid for by the
//!   transfer). A peer that spends more than it has gets an error from the next read, which
//!   ends the connection;
//! - after the client preface (server side) or from the first byte (client side), the first
//!   complete frame header marks the peer's SETTINGS as arrived (h2 itself rejects a first
//!   frame that is not SETTINGS), which is what the HTTP/2 handshake deadline waits for.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Control frames a peer may send at once with nothing else going on. An HBONE client sends a
/// SETTINGS and a PING or two per connection, and a keepalive PING every ten seconds; a
/// thousand is far above any of them.
pub const CONTROL_BURST: f64 = 1000.0;

/// Control frames per second a peer may keep sending: a hundred, ten times a client that
/// samples its bandwidth ten times a second (hyper's BDP estimator).
pub const CONTROL_PER_SECOND: f64 = 100.0;

/// Traffic (either direction, any frame) that earns one more control frame: a client that
/// PINGs once per round trip to size its window sends far fewer PINGs than one per 16 KiB
/// (one maximum-size TLS record) it moves.
pub const BYTES_PER_TOKEN: u64 = 16 * 1024;

/// The client connection preface (RFC 9113 §3.4).
pub const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADER_LEN: usize = 9;
const TYPE_DATA: u8 = 0x0;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PRIORITY: u8 = 0x2;
const TYPE_RST_STREAM: u8 = 0x3;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_PING: u8 = 0x6;
const TYPE_GOAWAY: u8 = 0x7;
const TYPE_WINDOW_UPDATE: u8 = 0x8;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_ACK: u8 = 0x1;

/// Which control frame ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Ping,
    Settings,
    Priority,
    Unknown,
}

impl Flood {
    fn name(self) -> &'static str {
        match self {
            Flood::Ping => "PING",
            Flood::Settings => "SETTINGS",
            Flood::Priority => "PRIORITY",
            Flood::Unknown => "unknown-type",
        }
    }
}

/// The message of the I/O error a flood ends a connection with (h2 reports it as an I/O
/// error; callers find it with [`is_flood`]).
const FLOOD_PREFIX: &str = "HTTP/2 control-frame flood";

/// Whether an error chain holds the error a [`GuardedIo`] ended a flooding connection with.
pub fn is_flood(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.to_string().starts_with(FLOOD_PREFIX) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Frame boundaries in the bytes a peer sends, and the control-frame bucket.
#[derive(Debug)]
pub struct FrameScanner {
    /// Preface bytes still to skip (server side: 24 at first).
    preface_left: usize,
    /// A frame header split over reads.
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: u64,
    frames: u64,
    tokens: f64,
    last_refill: Option<Instant>,
    /// Traffic not yet turned into tokens.
    earned_bytes: u64,
    /// The GOAWAY frame being read: its payload's first 8 bytes (last stream, error code).
    goaway: Option<([u8; 8], usize)>,
    /// The error code of the last complete GOAWAY seen.
    last_goaway: Option<u32>,
}

impl FrameScanner {
    /// A scanner for what a client sends a server (`server = true`: starts with the preface)
    /// or what a server sends a client.
    pub fn new(server: bool) -> FrameScanner {
        FrameScanner {
            preface_left: if server { CLIENT_PREFACE.len() } else { 0 },
            header: [0; HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            frames: 0,
            tokens: CONTROL_BURST,
            last_refill: None,
            earned_bytes: 0,
            goaway: None,
            last_goaway: None,
        }
    }

    /// The error code of the last GOAWAY frame in the stream (RFC 9113 §6.8).
    pub fn last_goaway(&self) -> Option<u32> {
        self.last_goaway
    }

    /// Frame headers seen so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Credits `n` bytes of traffic toward control-frame tokens.
    pub fn earn(&mut self, n: usize) {
        self.earned_bytes += n as u64;
        if self.earned_bytes >= BYTES_PER_TOKEN {
            let t = self.earned_bytes / BYTES_PER_TOKEN;
            self.earned_bytes %= BYTES_PER_TOKEN;
            self.tokens = (self.tokens + t as f64).min(CONTROL_BURST);
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last_refill {
            let secs = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + secs * CONTROL_PER_SECOND).min(CONTROL_BURST);
        }
        self.last_refill = Some(now);
    }

    /// Walks `bytes` (the next bytes the peer sent). `Err` names the control frame a peer
    /// flooded; the connection must end.
    pub fn scan(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), Flood> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.refill(now);
        self.earn(bytes.len());
        if self.preface_left > 0 {
            let n = self.preface_left.min(bytes.len());
            self.preface_left -= n;
            bytes = &bytes[n..];
        }
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = (self.payload_left).min(bytes.len() as u64) as usize;
                if let Some((buf, got)) = self.goaway.as_mut() {
                    let take = (8 - *got).min(n);
                    buf[*got..*got + take].copy_from_slice(&bytes[..take]);
                    *got += take;
                    if *got == 8 {
                        self.last_goaway =
                            Some(u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]));
                        self.goaway = None;
                    }
                }
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len < HEADER_LEN {
                break;
            }
            self.header_len = 0;
            self.frames += 1;
            let h = &self.header;
            let len = u64::from(h[0]) << 16 | u64::from(h[1]) << 8 | u64::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            self.payload_left = len;
            // A GOAWAY carries at least 8 bytes (§6.8); anything shorter is h2's to refuse.
            self.goaway = (kind == TYPE_GOAWAY && len >= 8).then_some(([0; 8], 0));
            let control = match kind {
                TYPE_PING if flags & FLAG_ACK == 0 => Some(Flood::Ping),
                TYPE_SETTINGS if flags & FLAG_ACK == 0 => Some(Flood::Settings),
                TYPE_PRIORITY => Some(Flood::Priority),
                TYPE_DATA | TYPE_HEADERS | TYPE_RST_STREAM | TYPE_SETTINGS | TYPE_PUSH_PROMISE
                | TYPE_PING | TYPE_GOAWAY | TYPE_WINDOW_UPDATE | TYPE_CONTINUATION => None,
                _ => Some(Flood::Unknown),
            };
            if let Some(kind) = control {
                if self.tokens < 1.0 {
                    return Err(kind);
                }
                self.tokens -= 1.0;
            }
        }
        Ok(())
    }
}

/// What a connection's guard shares with its driver: bytes read (for the window tuner) and
/// whether the peer's first frame has arrived (for the handshake deadline).
#[derive(Debug, Clone, Default)]
pub(crate) struct GuardState {
    pub(crate) bytes_read: Rc<Cell<u64>>,
    frames: Rc<Cell<u64>>,
    /// The error code of the last GOAWAY this side sent (h2 ends a connection that broke its
    /// own limits with one, and may report the end as a clean close).
    sent_goaway: Rc<Cell<Option<u32>>>,
}

impl GuardState {
    /// `io` with its reads scanned and counted here; `server` says which side reads.
    pub(crate) fn wrap<T>(&self, io: T, server: bool) -> GuardedIo<T> {
        GuardedIo {
            io,
            scanner: FrameScanner::new(server),
            // What this side writes: a server's first bytes are its SETTINGS (no preface).
            written: FrameScanner::new(!server),
            state: self.clone(),
        }
    }

    /// The error code of the last GOAWAY this side sent.
    pub(crate) fn sent_goaway(&self) -> Option<u32> {
        self.sent_goaway.get()
    }

    /// Whether the peer's preface and first frame (its SETTINGS) have arrived.
    pub(crate) fn settled(&self) -> bool {
        self.frames.get() > 0
    }
}

/// The transport under h2: reads are scanned by a [`FrameScanner`] and counted; writes pass
/// through and earn control-frame tokens.
#[derive(Debug)]
pub(crate) struct GuardedIo<T> {
    io: T,
    scanner: FrameScanner,
    /// Frame boundaries of what this side writes (only GOAWAYs are looked at).
    written: FrameScanner,
    state: GuardState,
}

impl<T> GuardedIo<T> {
    fn wrote(&mut self, bufs: &[&[u8]], mut n: usize) {
        self.scanner.earn(n);
        for b in bufs {
            if n == 0 {
                break;
            }
            let take = n.min(b.len());
            // Control frames this side writes never flood it: only boundaries matter.
            self.written.tokens = CONTROL_BURST;
            let _ = self.written.scan(&b[..take], Instant::now());
            n -= take;
        }
        if let Some(code) = self.written.last_goaway() {
            self.state.sent_goaway.set(Some(code));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        let bytes = &this.state.bytes_read;
        bytes.set(bytes.get() + new.len() as u64);
        if let Err(kind) = this.scanner.scan(new, Instant::now()) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{FLOOD_PREFIX}: {} frames far above any client's rate",
                    kind.name()
                ),
            )));
        }
        this.state.frames.set(this.scanner.frames());
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.wrote(&[buf], n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let slices: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        this.wrote(&slices, n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_are_found_across_any_split_and_the_preface_is_skipped() {
        let mut stream = CLIENT_PREFACE.to_vec();
        stream.extend(frame(TYPE_SETTINGS, 0, &[0; 6]));
        stream.extend(frame(TYPE_HEADERS, 0x4, &[1; 40]));
        stream.extend(frame(TYPE_DATA, 0, &[2; 70_000]));
        stream.extend(frame(TYPE_PING, FLAG_ACK, &[0; 8]));
        for chunk in [1, 2, 7, 9, 10, 4096, stream.len()] {
            let mut s = FrameScanner::new(true);
            let now = Instant::now();
            for piece in stream.chunks(chunk) {
                s.scan(piece, now).unwrap();
            }
            assert_eq!(s.frames(), 4, "chunk size {chunk}");
            assert_eq!(s.payload_left, 0);
            assert_eq!(s.header_len, 0);
        }
    }

    #[test]
    fn a_ping_flood_is_cut_off_and_acks_and_paid_for_pings_are_not() {
        let now = Instant::now();
        let ping = frame(TYPE_PING, 0, &[0; 8]);
        let mut s = FrameScanner::new(false);
        let mut sent = 0;
        let err = loop {
            if let Err(e) = s.scan(&ping, now) {
                break e;
            }
            sent += 1;
            assert!(sent < 10_000, "never cut off");
        };
        assert_eq!(err, Flood::Ping);
        // The burst, plus what the flood's own bytes earned (17 B each).
        assert!((1000..1100).contains(&sent), "{sent}");

        // Time refills the bucket: a keepalive every 10 s is never a flood.
        let mut t = now;
        for _ in 0..5_000 {
            t += Duration::from_secs(10);
            s.scan(&ping, t).unwrap();
        }

        // ACKs and DATA never spend tokens; transfers earn them.
        let mut s = FrameScanner::new(false);
        let ack = frame(TYPE_PING, FLAG_ACK, &[0; 8]);
        let data = frame(TYPE_DATA, 0, &[0; 16 * 1024]);
        for _ in 0..100_000 {
            s.scan(&ack, now).unwrap();
        }
        for _ in 0..20_000 {
            // A PING per 16 KiB record: a bandwidth sampler on a busy transfer.
            s.scan(&data, now).unwrap();
            s.scan(&ping, now).unwrap();
        }
        let settings = frame(TYPE_SETTINGS, 0, &[0; 6]);
        let mut s = FrameScanner::new(false);
        assert_eq!(
            (0..2000).try_for_each(|_| s.scan(&settings, now)),
            Err(Flood::Settings)
        );
    }

    #[test]
    fn goaway_codes_are_read_across_splits() {
        let mut stream = frame(TYPE_SETTINGS, 0, &[]);
        let mut payload = 7u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&0xbu32.to_be_bytes());
        payload.extend_from_slice(b"debug data");
        stream.extend(frame(TYPE_GOAWAY, 0, &payload));
        for chunk in [1, 3, 9, 11, stream.len()] {
            let mut s = FrameScanner::new(false);
            for piece in stream.chunks(chunk) {
                s.scan(piece, Instant::now()).unwrap();
            }
            assert_eq!(s.last_goaway(), Some(0xb), "chunk {chunk}");
        }
    }

    #[test]
    fn the_flood_error_is_recognised_through_wrappers() {
        let inner = io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{FLOOD_PREFIX}: PING frames far above any client's rate"),
        );
        assert!(is_flood(&inner));
        let outer = crate::Error::Io(inner);
        assert!(is_flood(&outer));
        assert!(!is_flood(&io::Error::other("something else")));
    }
}
