//! Receive-window tuning for HBONE connections: how much a peer may send before we read.
//!
//! Owns: the [`WindowTuner`] (bandwidth-delay samples over PING round trips, hyper's growth
//! rule), what feeds it (the byte count of the guarded transport (`crate::guard`), the path's round trip from
//! a [`PathRtt`] transport) and the [`Windows`] setters of h2's client and server
//! connections. `h2conn::Liveness` owns the PINGs and calls into the tuner.
//!
//! Invariants:
//! - windows only grow, from `H2Settings::stream_window` up to `max_stream_window`, and the
//!   connection window stays at four stream windows (at most [`CONNECTION_WINDOW`]);
//! - a window is announced at most once per change; a SETTINGS that h2 refuses (the last
//!   ones unacknowledged) is retried on the connection's next poll;
//! - the path's delay is the kernel's TCP minimum RTT when the transport has one, else the
//!   smallest PING round trip: a sample's own round trip includes the queue it measures.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, trace};

use crate::h2conn::CONNECTION_WINDOW;

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

impl<T: PathRtt> PathRtt for crate::tls::TlsStream<T> {
    fn rtt_probe(&self) -> Option<runtime::net::RttProbe> {
        self.get_ref().rtt_probe()
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
    /// Stream window wanted, and the one last announced (shared with whoever reports it:
    /// `ClientConn::recv_window`).
    stream: u32,
    announced: Rc<Cell<u32>>,
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
    pub(crate) fn new(
        bytes: Rc<Cell<u64>>,
        stream: u32,
        connection: u32,
        max_stream: u32,
        announced: Rc<Cell<u32>>,
        probe: Option<runtime::net::RttProbe>,
    ) -> Self {
        announced.set(stream);
        WindowTuner {
            bytes,
            stream,
            announced,
            connection,
            max_stream,
            min_rtt: 0.0,
            max_bandwidth: 0.0,
            delay: SAMPLE_DELAY,
            stable: 0,
            next_at: None,
            bytes_at_pong: 0,
            probe,
        }
    }

    /// Whether a sample should start now; if so, returns the byte count it starts from.
    pub(crate) fn want_sample(&self, now: Instant) -> Option<u64> {
        if self.stream >= self.max_stream || self.next_at.is_some_and(|t| now < t) {
            return None;
        }
        let b = self.bytes.get();
        (b >= self.bytes_at_pong + SAMPLE_MIN_BYTES).then_some(b)
    }

    /// A sample's PONG: `from` was the byte count when its PING left, `rtt` the round trip.
    pub(crate) fn sampled(&mut self, from: u64, rtt: Duration, now: Instant) {
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
    pub(crate) fn observe_rtt(&mut self, rtt: Duration) {
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
    pub(crate) fn apply(&mut self, conn: &mut impl Windows) {
        if self.stream == self.announced.get() {
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
                self.announced.set(self.stream);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2conn::{INITIAL_CONNECTION_WINDOW, INITIAL_STREAM_WINDOW, STREAM_WINDOW};

    fn tuner() -> WindowTuner {
        WindowTuner::new(
            Rc::new(Cell::new(0)),
            INITIAL_STREAM_WINDOW,
            INITIAL_CONNECTION_WINDOW,
            STREAM_WINDOW,
            Rc::new(Cell::new(0)),
            None,
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
        assert_eq!(t.announced.get(), INITIAL_STREAM_WINDOW);
        t.apply(&mut conn);
        assert_eq!(t.announced.get(), 2 * INITIAL_STREAM_WINDOW);
        assert_eq!(conn.stream, [2 * INITIAL_STREAM_WINDOW]);
        t.apply(&mut conn);
        assert_eq!(conn.stream.len(), 1, "nothing new to announce");
    }
}
