//! HTTP/2 settings and connection liveness shared by the HBONE client and server.
//!
//! Owns: the SETTINGS both sides advertise (RFC 9113 §6.5.2), the PING keepalive (§6.7), and
//! the single task that drives one h2 connection together with its keepalive and, on the
//! server, a drain signal that turns into GOAWAY (§6.8).
//!
//! Invariants:
//! - one task per HTTP/2 connection polls the h2 `Connection`, its keepalive and its drain
//!   signal together; request handles and streams only queue work in h2's shared state (its
//!   mutex is never contended: the connection and all its streams live on one core);
//! - a client connection is handed out only after one PING round trip, so the server's
//!   SETTINGS (its preface, §3.4) are in effect before anyone counts its stream limit;
//! - a keepalive failure ends the connection; it never stalls it: the driver returns and the
//!   streams see the connection error;
//! - the numbers here are the ones Istio's ztunnel uses (`src/config.rs`,
//!   `src/proxy/h2/{client,server}.rs`) unless DESIGN.md says otherwise, so that a ringmesh node
//!   and a ztunnel node see the same windows in both directions.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, trace};

/// Largest stream receive window (SETTINGS_INITIAL_WINDOW_SIZE, RFC 9113 §6.5.2, §6.9.2)
/// the window tuner grows to. 4 MiB as in ztunnel: one stream can keep ~4 MiB in flight,
/// enough for a 10 Gbit/s stream at ~3 ms RTT, while a stream whose reader stalls holds at
/// most this much memory.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Largest connection receive window (WINDOW_UPDATE on stream 0, RFC 9113 §6.9.1).
/// DESIGN.md: 16 MiB, four bulk streams' worth, so one stalled stream cannot starve the
/// others multiplexed on the connection (ztunnel uses 4 MiB here; larger is compatible).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Stream receive window a connection starts with; the [`WindowTuner`] grows it towards
/// [`STREAM_WINDOW`] when one round trip carries more than two thirds of it.
///
/// Why not start at 4 MiB: a receive window is also how much a peer may make this node
/// buffer. With 4 MiB windows between two nodes on one host, a 4 MiB echo stream left
/// ~30 MiB of anonymous memory per node and cost 1.18 CPU-s/GB; with 256 KiB, 7 MiB and
/// 0.97 CPU-s/GB, and 20 % more throughput (the data is consumed while still in cache).
/// Measured with `ringmesh-bench run --scenarios ringmesh --workloads bulk-1 --pin`, runs
/// interleaved (docs/design-notes.md, "receive windows"). 128 KiB cost more CPU again
/// (twice the WINDOW_UPDATEs). At 256 KiB a stream is window-bound only above ~2 Gbit/s per
/// millisecond of RTT, where the tuner's PING sample sees it and grows the window.
pub const INITIAL_STREAM_WINDOW: u32 = 256 * 1024;

/// Connection receive window to start with: four streams at [`INITIAL_STREAM_WINDOW`]. The
/// tuner keeps the connection window at four stream windows, up to [`CONNECTION_WINDOW`].
pub const INITIAL_CONNECTION_WINDOW: u32 = 4 * INITIAL_STREAM_WINDOW;

/// SETTINGS_MAX_FRAME_SIZE we accept (RFC 9113 §4.2, §6.5.2; the legal range is 2^14..2^24-1).
/// 1 MiB as in ztunnel: fewer frame headers and wake-ups per byte on bulk transfers. A peer
/// frame larger than this is a connection error FRAME_SIZE_ERROR.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// SETTINGS_MAX_CONCURRENT_STREAMS the server advertises (RFC 9113 §5.1.2, §6.5.2).
/// RFC 9113 recommends at least 100; ztunnel's server advertises 200 (hyper's default) and its
/// client pools at most 100 streams per connection, so 200 leaves headroom for a peer that
/// counts differently.
pub const SERVER_MAX_CONCURRENT_STREAMS: u32 = 200;

/// Streams a client opens before it has seen the server's SETTINGS (h2's
/// `initial_max_send_streams`). 100 is the RFC's recommended minimum and ztunnel's per
/// connection pool limit, so the first burst never exceeds what any conforming server allows.
pub const CLIENT_INITIAL_MAX_SEND_STREAMS: usize = 100;

/// SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 §6.5.2). HBONE headers are a handful of short
/// fields; 64 KiB (ztunnel's server value) bounds what a hostile peer can make us buffer.
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// PING interval and timeout (RFC 9113 §6.7), as ztunnel: a ping every 10 s once idle, and a
/// connection that has not answered within 20 s is dead (half-open after a node vanished,
/// for example) and is torn down so its pool entry is evicted.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// PING keepalive parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between a PONG (or the connection start) and the next PING.
    pub interval: Duration,
    /// How long a PING may go unanswered before the connection is declared dead.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: KEEPALIVE_INTERVAL,
            timeout: KEEPALIVE_TIMEOUT,
        }
    }
}

/// The HTTP/2 parameters of one side of an HBONE connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Settings {
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise first (receive window per stream).
    pub stream_window: u32,
    /// Receive window of the whole connection, first.
    pub connection_window: u32,
    /// Grow the receive windows up to this stream window (and four times it, at most
    /// [`CONNECTION_WINDOW`], for the connection) when round trips show they limit the
    /// transfer ([`WindowTuner`]). `None` keeps the first windows for the connection's life.
    pub max_stream_window: Option<u32>,
    /// SETTINGS_MAX_FRAME_SIZE we advertise.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS a server advertises (ignored by clients, which do not
    /// accept streams: push is disabled).
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE we advertise.
    pub max_header_list_size: u32,
    /// Bytes h2 queues per stream before `poll_send` waits. This is local queueing in front
    /// of the TLS socket, not data in flight (that sits in the kernel's send buffer), so it
    /// need not match the peer's window. 256 KiB (one first window) measured 4–8 % less CPU
    /// per GB than ztunnel's 4 MiB, and half the memory of 512 KiB with 8 bulk streams
    /// (docs/design-notes.md).
    pub max_send_buffer_size: usize,
    /// PING keepalive; `None` disables it (tests that script frames by hand).
    pub keepalive: Option<Keepalive>,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: INITIAL_STREAM_WINDOW,
            connection_window: INITIAL_CONNECTION_WINDOW,
            max_stream_window: Some(STREAM_WINDOW),
            max_frame_size: MAX_FRAME_SIZE,
            max_concurrent_streams: SERVER_MAX_CONCURRENT_STREAMS,
            max_header_list_size: MAX_HEADER_LIST_SIZE,
            max_send_buffer_size: 256 * 1024,
            keepalive: Some(Keepalive::default()),
        }
    }
}

impl H2Settings {
    /// An h2 client builder with these settings. Server push is disabled
    /// (SETTINGS_ENABLE_PUSH = 0, RFC 9113 §6.5.2): HBONE never pushes.
    pub fn client_builder(&self) -> h2::client::Builder {
        let mut b = h2::client::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.max_header_list_size)
            .initial_max_send_streams(CLIENT_INITIAL_MAX_SEND_STREAMS)
            .max_send_buffer_size(self.max_send_buffer_size)
            .enable_push(false)
            // Flow control already bounds what a peer can make us buffer (16 MiB per
            // connection); h2's extra small-frame budget would instead close a healthy
            // connection with ENHANCE_YOUR_CALM when a relay writes many small DATA frames
            // and the reader is slow. ztunnel disables it the same way.
            .data_frame_budget(usize::MAX);
        b
    }

    /// An h2 server builder with these settings.
    pub fn server_builder(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.max_header_list_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_send_buffer_size(self.max_send_buffer_size)
            .data_frame_budget(usize::MAX);
        b
    }

    /// The window tuner for a connection with these settings, fed by `meter`; `None` when
    /// the windows are fixed.
    pub(crate) fn tuner(
        &self,
        meter: &Metered,
        probe: Option<runtime::net::RttProbe>,
    ) -> Option<WindowTuner> {
        let max = self.max_stream_window?;
        (max > self.stream_window).then(|| {
            let mut t = WindowTuner::new(
                meter.bytes.clone(),
                self.stream_window,
                self.connection_window,
                max,
            );
            t.probe = probe;
            t
        })
    }
}

/// Counts the bytes h2 reads from its transport (frames of every kind): what the
/// [`WindowTuner`] samples over a PING round trip.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metered {
    bytes: Rc<Cell<u64>>,
}

impl Metered {
    /// `io` with its reads counted here.
    pub(crate) fn wrap<T>(&self, io: T) -> MeteredIo<T> {
        MeteredIo {
            io,
            bytes: self.bytes.clone(),
        }
    }
}

/// A transport whose reads are counted by a [`Metered`]; everything else passes through.
#[derive(Debug)]
pub(crate) struct MeteredIo<T> {
    io: T,
    bytes: Rc<Cell<u64>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for MeteredIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        this.bytes.set(this.bytes.get() + n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MeteredIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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

/// A transport that can tell the path's round-trip time: the TCP socket under TLS, whose
/// kernel keeps the smallest RTT of the connection's ACKs. The [`WindowTuner`] prefers that
/// figure to its own PINGs', which a busy core can delay (a PONG handled 1 ms late on a
/// loaded node looks like a 1 ms path and would grow the windows for nothing).
pub trait PathRtt {
    /// A probe that outlives the borrow (it reads a duplicate of the descriptor); `None`
    /// when the transport cannot say.
    fn rtt_probe(&self) -> Option<runtime::net::RttProbe>;
}

impl PathRtt for runtime::net::TcpStream {
    fn rtt_probe(&self) -> Option<runtime::net::RttProbe> {
        runtime::net::TcpStream::rtt_probe(self).ok()
    }
}

impl<T: PathRtt> PathRtt for tokio_rustls::client::TlsStream<T> {
    fn rtt_probe(&self) -> Option<runtime::net::RttProbe> {
        self.get_ref().0.rtt_probe()
    }
}

impl<T: PathRtt> PathRtt for tokio_rustls::server::TlsStream<T> {
    fn rtt_probe(&self) -> Option<runtime::net::RttProbe> {
        self.get_ref().0.rtt_probe()
    }
}

/// First pause between a window sample and the next, as hyper's BDP estimator: at most ten
/// PINGs a second while a transfer is young.
const SAMPLE_DELAY: Duration = Duration::from_millis(100);
/// The pause grows ×4 after every two samples that changed nothing, up to about this.
const SAMPLE_DELAY_MAX: Duration = Duration::from_secs(10);
/// A sample starts only once this much has arrived since the last PONG, so an idle
/// connection's own PINGs and WINDOW_UPDATEs never keep the sampling going.
const SAMPLE_MIN_BYTES: u64 = 16 * 1024;

/// Receive-window auto-tuning from bandwidth-delay samples (the estimator hyper uses for
/// `adaptive_window`; gRPC's BDP probe is the same idea).
///
/// A PING is sent while data arrives; the bytes read until its PONG over its round trip are
/// the bandwidth, and that times the smallest round trip seen the bandwidth-delay product.
/// When the product reaches two thirds of the stream window, the window was what limited
/// the transfer: the window becomes twice the product (at most `max_stream`, the
/// connection's four times that, at most [`CONNECTION_WINDOW`]), announced by SETTINGS and
/// WINDOW_UPDATE (RFC 9113 §6.9.2 applies a new initial window to open streams too).
/// Windows only grow; a sample that shows nothing new lengthens the pause before the next.
#[derive(Debug)]
pub(crate) struct WindowTuner {
    bytes: Rc<Cell<u64>>,
    /// Stream window wanted and the one last announced.
    stream: u32,
    announced: u32,
    connection: u32,
    max_stream: u32,
    /// Smallest round trip (s) and best bandwidth (bytes/s) seen.
    min_rtt: f64,
    max_bandwidth: f64,
    delay: Duration,
    stable: u32,
    /// Earliest next sample; and the byte count at the last PONG.
    next_at: Option<Instant>,
    bytes_at_pong: u64,
    /// The kernel's view of the path's round trip, when the transport has one.
    probe: Option<runtime::net::RttProbe>,
}

impl WindowTuner {
    fn new(bytes: Rc<Cell<u64>>, stream: u32, connection: u32, max_stream: u32) -> Self {
        WindowTuner {
            bytes,
            stream,
            announced: stream,
            connection,
            max_stream,
            min_rtt: 0.0,
            max_bandwidth: 0.0,
            delay: SAMPLE_DELAY,
            stable: 0,
            next_at: None,
            bytes_at_pong: 0,
            probe: None,
        }
    }

    /// The stream window in effect (announced).
    pub(crate) fn window(&self) -> u32 {
        self.announced
    }

    /// Whether a sample should start now; if so, returns the byte count it starts from.
    fn want_sample(&self, now: Instant) -> Option<u64> {
        if self.stream >= self.max_stream || self.next_at.is_some_and(|t| now < t) {
            return None;
        }
        let b = self.bytes.get();
        (b >= self.bytes_at_pong + SAMPLE_MIN_BYTES).then_some(b)
    }

    /// A sample's PONG: `from` was the byte count when its PING left, `rtt` the round trip.
    fn sampled(&mut self, from: u64, rtt: Duration, now: Instant) {
        let now_bytes = self.bytes.get();
        self.bytes_at_pong = now_bytes;
        self.next_at = Some(now + self.delay);
        let path = self
            .probe
            .as_ref()
            .and_then(runtime::net::RttProbe::min_rtt);
        self.sample(now_bytes.saturating_sub(from), rtt, path);
    }

    /// A round trip of a PING sent with nothing queued ahead of it (the connection's first,
    /// keepalives): the path's delay without queueing.
    fn observe_rtt(&mut self, rtt: Duration) {
        let rtt = rtt.as_secs_f64().max(1e-6);
        self.min_rtt = if self.min_rtt == 0.0 {
            rtt
        } else {
            self.min_rtt.min(rtt)
        };
    }

    /// `bytes` arrived during a PING round trip of `rtt`; `path` is the kernel's smallest
    /// round trip for the connection, if known.
    fn sample(&mut self, bytes: u64, rtt: Duration, path: Option<Duration>) {
        self.observe_rtt(rtt);
        let rtt = rtt.as_secs_f64().max(1e-6);
        let bandwidth = bytes as f64 / rtt;
        if bandwidth < self.max_bandwidth {
            return self.stabilise();
        }
        self.max_bandwidth = bandwidth;
        // The PONG comes back behind whatever the peer has queued in this direction (its h2
        // buffers, both socket buffers, up to a window), so a sample's round trip grows with
        // the queue and its byte count with it: on one host, windows grown on raw samples
        // climbed to the limit and brought back the memory they were meant to save. The
        // path's delay is the smallest round trip seen (as BBR keeps it): the kernel's, over
        // TCP; otherwise the PINGs', first from the one each connection sends before any
        // data. Bandwidth times that is the product the window must cover.
        let delay = path.map_or(self.min_rtt, |p| p.as_secs_f64().max(1e-6));
        let bdp = (bandwidth * delay) as u64;
        if bdp >= u64::from(self.stream) * 2 / 3 {
            let grown = (bdp * 2).min(u64::from(self.max_stream)) as u32;
            if grown > self.stream {
                self.stream = grown;
                self.connection = self
                    .connection
                    .max(grown.saturating_mul(4).min(CONNECTION_WINDOW));
                return;
            }
        }
        self.stabilise();
    }

    fn stabilise(&mut self) {
        if self.delay < SAMPLE_DELAY_MAX {
            self.stable += 1;
            if self.stable >= 2 {
                self.delay *= 4;
                self.stable = 0;
            }
        }
    }

    /// Announces a grown window. h2 refuses new SETTINGS while the last ones are unacknowledged;
    /// then this is retried on the next poll.
    fn apply(&mut self, conn: &mut impl Windows) {
        if self.stream == self.announced {
            return;
        }
        conn.set_connection_window(self.connection);
        match conn.set_stream_window(self.stream) {
            Ok(()) => {
                debug!(
                    stream = self.stream,
                    connection = self.connection,
                    min_rtt_us = (self.min_rtt * 1e6) as u64,
                    "HBONE receive window grown"
                );
                self.announced = self.stream;
            }
            Err(e) => trace!(error = %e, "HBONE receive window: SETTINGS not sent yet"),
        }
    }
}

/// The window setters of an h2 client or server connection.
pub(crate) trait Windows {
    fn set_connection_window(&mut self, size: u32);
    fn set_stream_window(&mut self, size: u32) -> Result<(), h2::Error>;
}

impl<T: AsyncRead + AsyncWrite + Unpin> Windows for h2::client::Connection<T, bytes::Bytes> {
    fn set_connection_window(&mut self, size: u32) {
        self.set_target_window_size(size);
    }
    fn set_stream_window(&mut self, size: u32) -> Result<(), h2::Error> {
        self.set_initial_window_size(size)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Windows for h2::server::Connection<T, bytes::Bytes> {
    fn set_connection_window(&mut self, size: u32) {
        self.set_target_window_size(size);
    }
    fn set_stream_window(&mut self, size: u32) -> Result<(), h2::Error> {
        self.set_initial_window_size(size)
    }
}

/// Why a connection's keepalive gave up.
#[derive(Debug)]
pub(crate) enum KeepaliveFailure {
    /// No PONG within the timeout.
    Timeout,
    /// h2 refused or lost the PING (the connection is already broken).
    Error(h2::Error),
}

/// Signalled once the peer's SETTINGS are known to be in effect.
pub(crate) type Settled = futures_channel::oneshot::Sender<()>;

type Timer = Pin<Box<dyn Future<Output = ()>>>;

/// What the PING in flight was sent for.
enum Purpose {
    /// The connection's first PING, sent before any data: its round trip is the path's
    /// delay, and on a client its PONG means the server's SETTINGS are in effect.
    First,
    Keepalive,
    /// A window sample that started at this byte count.
    Sample(u64),
}

struct InFlight {
    purpose: Purpose,
    sent: Instant,
    deadline: Timer,
}

/// Everything one connection does with PING (RFC 9113 §6.7); h2 hands out exactly one
/// `PingPong` per connection and allows one PING in flight, so one owner sequences them:
///
/// - with `settled` (clients) or a tuner, a PING at once. Its PONG signals `settled`: the
///   server's connection preface is its SETTINGS frame (§3.4) and frames are processed in
///   order, so by then the peer's SETTINGS_MAX_CONCURRENT_STREAMS is known and a pool never
///   over-fills a connection whose peer allows fewer than our default. Its round trip, with
///   no data queued yet, is the tuner's first measure of the path;
/// - window samples for the [`WindowTuner`] while data arrives;
/// - the keepalive: a PING once the connection has gone `interval` without a PONG. Any PING
///   unanswered within the timeout ends the connection (the driver drops it): a keepalive
///   failure never stalls a connection.
pub(crate) struct Liveness {
    pp: Option<h2::PingPong>,
    keepalive: Option<Keepalive>,
    settled: Option<Settled>,
    tuner: Option<WindowTuner>,
    in_flight: Option<InFlight>,
    /// The first PING is still to be sent.
    first: bool,
    /// Fires `keepalive.interval` after the last PONG (or the start).
    idle: Option<Timer>,
}

impl Liveness {
    pub(crate) fn new(
        pp: Option<h2::PingPong>,
        keepalive: Option<Keepalive>,
        settled: Option<Settled>,
        tuner: Option<WindowTuner>,
    ) -> Self {
        Liveness {
            first: settled.is_some() || tuner.is_some(),
            pp,
            keepalive,
            settled,
            tuner,
            in_flight: None,
            idle: None,
        }
    }

    /// The stream receive window in effect, if tuned.
    pub(crate) fn window(&self) -> Option<u32> {
        self.tuner.as_ref().map(WindowTuner::window)
    }

    /// Drives the PINGs and applies window changes to `conn`. Ready only on failure.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut impl Windows,
    ) -> Poll<KeepaliveFailure> {
        let Some(pp) = self.pp.as_mut() else {
            return Poll::Pending;
        };
        loop {
            if let Some(f) = self.in_flight.as_mut() {
                match pp.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        let now = Instant::now();
                        match f.purpose {
                            Purpose::First | Purpose::Keepalive => {
                                if let Some(s) = self.settled.take() {
                                    let _ = s.send(());
                                }
                                if let Some(t) = self.tuner.as_mut() {
                                    t.observe_rtt(now - f.sent);
                                }
                                trace!("PONG");
                            }
                            Purpose::Sample(from) => {
                                if let Some(t) = self.tuner.as_mut() {
                                    t.sampled(from, now - f.sent, now);
                                    t.apply(conn);
                                }
                            }
                        }
                        self.in_flight = None;
                        self.idle = None;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(KeepaliveFailure::Error(e)),
                    Poll::Pending => {
                        return match f.deadline.as_mut().poll(cx) {
                            Poll::Ready(()) => Poll::Ready(KeepaliveFailure::Timeout),
                            Poll::Pending => Poll::Pending,
                        };
                    }
                }
                continue;
            }
            if let Some(t) = self.tuner.as_mut() {
                // A window whose SETTINGS h2 refused earlier (last ones unacknowledged).
                t.apply(conn);
            }
            let now = Instant::now();
            let purpose = if std::mem::take(&mut self.first) {
                Purpose::First
            } else if let Some(from) = self.tuner.as_ref().and_then(|t| t.want_sample(now)) {
                Purpose::Sample(from)
            } else if let Some(ka) = self.keepalive {
                let idle = self
                    .idle
                    .get_or_insert_with(|| Box::pin(runtime::time::sleep(ka.interval)));
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => Purpose::Keepalive,
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                return Poll::Pending;
            };
            if let Purpose::Keepalive = purpose {
                trace!("keepalive: PING");
            }
            if let Err(e) = pp.send_ping(h2::Ping::opaque()) {
                return Poll::Ready(KeepaliveFailure::Error(e));
            }
            let timeout = self.keepalive.map_or(KEEPALIVE_TIMEOUT, |k| k.timeout);
            self.in_flight = Some(InFlight {
                purpose,
                sent: now,
                deadline: Box::pin(runtime::time::sleep(timeout)),
            });
        }
    }
}

/// How a client connection's driver ended.
#[derive(Debug)]
pub(crate) enum ClientEnd {
    /// h2 finished the connection: every handle and stream was dropped, or the peer closed it
    /// (GOAWAY then EOF), or an error (I/O, protocol) ended it.
    Closed(Result<(), h2::Error>),
    /// The keepalive declared the peer dead; the connection is dropped (streams fail).
    Keepalive(KeepaliveFailure),
}

/// Drives a client connection until it ends, polling its PINGs ([`Liveness`]) in the same
/// task. `window` shows the tuned stream receive window.
pub(crate) async fn drive_client<T>(
    mut conn: h2::client::Connection<T, bytes::Bytes>,
    mut liveness: Liveness,
    window: Rc<Cell<u32>>,
) -> ClientEnd
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(|cx| {
        // PINGs and SETTINGS first: what they queue goes out in the connection poll below.
        if let Poll::Ready(f) = liveness.poll(cx, &mut conn) {
            debug!(failure = ?f, "HBONE client keepalive failed; dropping connection");
            return Poll::Ready(ClientEnd::Keepalive(f));
        }
        if let Some(w) = liveness.window() {
            window.set(w);
        }
        if let Poll::Ready(r) = Pin::new(&mut conn).poll(cx) {
            debug!(result = ?r, "HBONE client connection closed");
            return Poll::Ready(ClientEnd::Closed(r));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let s = H2Settings::default();
        assert_eq!(s.stream_window, 256 << 10);
        assert_eq!(s.connection_window, 1 << 20);
        assert_eq!(s.max_stream_window, Some(4 << 20));
        assert_eq!(CONNECTION_WINDOW, 16 << 20);
        assert_eq!(s.max_frame_size, 1 << 20);
        assert!(s.max_concurrent_streams >= 100);
        // RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE must lie in [2^14, 2^24 - 1].
        assert!((1 << 14..(1 << 24)).contains(&s.max_frame_size));
        // §6.9.2: windows may not exceed 2^31 - 1.
        assert!(s.connection_window < (1 << 31));
        assert_eq!(s.keepalive, Some(Keepalive::default()));
    }

    fn tuner() -> WindowTuner {
        WindowTuner::new(
            Rc::new(Cell::new(0)),
            INITIAL_STREAM_WINDOW,
            INITIAL_CONNECTION_WINDOW,
            STREAM_WINDOW,
        )
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_window_bound_sample_doubles_the_window_up_to_the_limit() {
        let mut t = tuner();
        // 5 ms RTT carrying the whole 256 KiB window: the window limited the transfer.
        t.sample(u64::from(INITIAL_STREAM_WINDOW), 5 * MS, None);
        assert_eq!(t.stream, 2 * INITIAL_STREAM_WINDOW);
        assert_eq!(t.connection, 4 * t.stream);
        for _ in 0..10 {
            let w = u64::from(t.stream);
            t.sample(w, 5 * MS, None);
        }
        assert_eq!(t.stream, STREAM_WINDOW, "never beyond the limit");
        assert_eq!(t.connection, CONNECTION_WINDOW);
    }

    #[test]
    fn a_sample_inflated_by_queueing_does_not_grow_the_window() {
        let mut t = tuner();
        // The first PING, before any data, shows the path: 100 µs.
        t.observe_rtt(Duration::from_micros(100));
        // Under bulk the PING waits behind 4 MiB of queued data: 4 ms, 4 MiB. Bandwidth
        // 1 GB/s times 100 µs is 100 KB, under two thirds of the window.
        t.sample(4 << 20, 4 * MS, None);
        assert_eq!(t.stream, INITIAL_STREAM_WINDOW);
    }

    #[test]
    fn the_kernels_round_trip_wins_over_a_late_pong() {
        // The first PONG was handled 2 ms late on a busy core; the kernel saw 30 µs. A
        // 1 MiB sample over 4 ms is 262 MB/s: 7.9 KB over the real path, no growth.
        let mut t = tuner();
        t.observe_rtt(2 * MS);
        t.sample(1 << 20, 4 * MS, Some(Duration::from_micros(30)));
        assert_eq!(t.stream, INITIAL_STREAM_WINDOW);
        // Without the kernel's figure, the late PONG passes for a 2 ms path: 524 KB.
        let mut u = tuner();
        u.observe_rtt(2 * MS);
        u.sample(1 << 20, 4 * MS, None);
        assert!(u.stream > INITIAL_STREAM_WINDOW);
    }

    #[test]
    fn samples_below_two_thirds_of_the_window_change_nothing_and_slow_sampling() {
        let mut t = tuner();
        // Loopback-like: 50 µs round trips carry a few KiB; the window is not the limit.
        for _ in 0..6 {
            t.sample(40 * 1024, Duration::from_micros(50), None);
        }
        assert_eq!(t.stream, INITIAL_STREAM_WINDOW);
        assert_eq!(t.connection, INITIAL_CONNECTION_WINDOW);
        assert!(t.delay >= SAMPLE_DELAY * 16, "delay {:?}", t.delay);
    }

    #[test]
    fn sampling_waits_for_data_and_for_its_pause() {
        let t0 = Instant::now();
        let mut t = tuner();
        assert_eq!(t.want_sample(t0), None, "no data yet");
        t.bytes.set(SAMPLE_MIN_BYTES);
        assert_eq!(t.want_sample(t0), Some(SAMPLE_MIN_BYTES));
        t.bytes.set(SAMPLE_MIN_BYTES + 1000);
        t.sampled(SAMPLE_MIN_BYTES, Duration::from_micros(80), t0);
        // Control frames alone (a PONG, WINDOW_UPDATEs) never start a sample.
        t.bytes.set(t.bytes.get() + 100);
        assert_eq!(t.want_sample(t0 + SAMPLE_DELAY), None);
        t.bytes.set(t.bytes.get() + SAMPLE_MIN_BYTES);
        assert_eq!(
            t.want_sample(t0 + SAMPLE_DELAY / 2),
            None,
            "within the pause"
        );
        assert!(t.want_sample(t0 + SAMPLE_DELAY).is_some());
    }

    /// A transport that refuses new SETTINGS once, as h2 does while the last are unacked.
    #[derive(Default)]
    struct FakeConn {
        refuse: bool,
        stream: Vec<u32>,
        connection: Vec<u32>,
    }

    impl Windows for FakeConn {
        fn set_connection_window(&mut self, size: u32) {
            self.connection.push(size);
        }
        fn set_stream_window(&mut self, size: u32) -> Result<(), h2::Error> {
            if std::mem::take(&mut self.refuse) {
                return Err(h2::Error::from(h2::Reason::INTERNAL_ERROR));
            }
            self.stream.push(size);
            Ok(())
        }
    }

    #[test]
    fn a_refused_settings_change_is_retried() {
        let mut t = tuner();
        t.sample(u64::from(INITIAL_STREAM_WINDOW), 5 * MS, None);
        let mut conn = FakeConn {
            refuse: true,
            ..FakeConn::default()
        };
        t.apply(&mut conn);
        assert_eq!(t.window(), INITIAL_STREAM_WINDOW);
        t.apply(&mut conn);
        assert_eq!(t.window(), 2 * INITIAL_STREAM_WINDOW);
        assert_eq!(conn.stream, [2 * INITIAL_STREAM_WINDOW]);
        t.apply(&mut conn);
        assert_eq!(conn.stream.len(), 1, "nothing new to announce");
    }
}
