//! HTTP/2 settings and connection liveness shared by the HBONE client and server.
//!
//! Owns: the SETTINGS both sides advertise (RFC 9113 §6.5.2), the PINGs (§6.7: the first
//! one, keepalive, and the samples of [`crate::window`]'s tuner), and the single task that
//! drives one h2 connection together with its PINGs and, on the server, a drain signal that
//! turns into GOAWAY (§6.8).
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
//!   `src/proxy/h2/{client,server}.rs`) unless DESIGN.md or docs/design-notes.md says
//!   otherwise (the receive windows start smaller and grow: [`crate::window`]).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, trace};

use crate::guard::GuardState;
use crate::window::{WindowTuner, Windows};

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

/// Deadline for a peer's HTTP/2 preface and first SETTINGS once TLS is done. A peer that
/// completed mTLS and then said nothing held its connection forever before this existed
/// (issue 12); 10 s, as the TLS handshake's deadline. (ztunnel has neither.)
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server connection may carry no stream before it is closed with GOAWAY: longer
/// than the 5 min a client pool (ztunnel's `POOL_UNUSED_RELEASE_TIMEOUT`, and ours) keeps an
/// unused connection, so well-behaved peers close idle connections themselves first, and a
/// peer that opens connections and never uses them cannot hold them for good.
pub const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

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
    /// Deadline for the peer's side of the HTTP/2 handshake: the client preface (server
    /// side) and the peer's first SETTINGS (RFC 9113 §3.4).
    pub handshake_timeout: Duration,
    /// Server side: close a connection that has carried no stream for this long, with
    /// GOAWAY (before its first CONNECT, or between streams). `None`: never.
    pub idle_timeout: Option<Duration>,
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
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: Some(SERVER_IDLE_TIMEOUT),
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
            .enable_push(false);
        // h2's DATA frame budget stays at its default (half the connection window): flow
        // control caps bytes, not frames, and without the budget 262,000 one-byte frames
        // (2.6 MB on the wire) took a node from 10 to 139 MB (issue 12). Frames under 256
        // bytes spend it while they sit unread, so a reader that keeps up never runs out,
        // and a peer that floods a stalled stream gets GOAWAY ENHANCE_YOUR_CALM.
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
            .max_send_buffer_size(self.max_send_buffer_size);
        b
    }

    /// The window tuner for a connection with these settings, fed by `meter` and `probe`,
    /// keeping the stream window in effect in `announced`; `None` when the windows are fixed.
    pub(crate) fn tuner(
        &self,
        meter: &GuardState,
        probe: Option<runtime::net::RttProbe>,
        announced: Rc<Cell<u32>>,
    ) -> Option<WindowTuner> {
        let max = self.max_stream_window?;
        (max > self.stream_window).then(|| {
            WindowTuner::new(
                meter.bytes_read.clone(),
                self.stream_window,
                self.connection_window,
                max,
                announced,
                probe,
            )
        })
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

pub(crate) type Timer = Pin<Box<dyn Future<Output = ()>>>;

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
/// task.
pub(crate) async fn drive_client<T>(
    mut conn: h2::client::Connection<T, bytes::Bytes>,
    mut liveness: Liveness,
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
}
