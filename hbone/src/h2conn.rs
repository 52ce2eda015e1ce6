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

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tracing::{debug, trace};

/// Initial stream flow-control window (SETTINGS_INITIAL_WINDOW_SIZE, RFC 9113 §6.5.2, §6.9.2).
/// 4 MiB as in ztunnel: one stream can keep ~4 MiB in flight, enough for a 10 Gbit/s stream
/// at ~3 ms RTT, while a stream whose reader stalls holds at most this much memory.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Initial connection flow-control window (WINDOW_UPDATE on stream 0, RFC 9113 §6.9.1).
/// DESIGN.md: 16 MiB, four bulk streams' worth, so one stalled stream cannot starve the
/// others multiplexed on the connection (ztunnel uses 4 MiB here; larger is compatible).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

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
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise (receive window per stream).
    pub stream_window: u32,
    /// Receive window of the whole connection.
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we advertise.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS a server advertises (ignored by clients, which do not
    /// accept streams: push is disabled).
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE we advertise.
    pub max_header_list_size: u32,
    /// Bytes h2 buffers per stream before `poll_write` waits. Equal to the stream window
    /// (ztunnel's client choice): a writer can fill the peer's whole window in one go and h2
    /// flushes it as one run, without buffering more than the peer could accept anyway.
    pub max_send_buffer_size: usize,
    /// PING keepalive; `None` disables it (tests that script frames by hand).
    pub keepalive: Option<Keepalive>,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: STREAM_WINDOW,
            connection_window: CONNECTION_WINDOW,
            max_frame_size: MAX_FRAME_SIZE,
            max_concurrent_streams: SERVER_MAX_CONCURRENT_STREAMS,
            max_header_list_size: MAX_HEADER_LIST_SIZE,
            max_send_buffer_size: STREAM_WINDOW as usize,
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
}

/// Why a connection's keepalive gave up.
#[derive(Debug)]
pub(crate) enum KeepaliveFailure {
    /// No PONG within the timeout.
    Timeout,
    /// h2 refused or lost the PING (the connection is already broken).
    Error(h2::Error),
}

/// Sends a PING every `ka.interval` and waits up to `ka.timeout` for its ACK (RFC 9113 §6.7).
/// Returns only on failure; runs forever on a healthy connection (the driver drops it when
/// the connection ends). The first PING waits one interval: a fresh connection has just
/// proven itself with the handshake.
pub(crate) async fn keepalive(mut pp: h2::PingPong, ka: Keepalive) -> KeepaliveFailure {
    loop {
        runtime::time::sleep(ka.interval).await;
        trace!("keepalive: PING");
        match runtime::time::timeout(ka.timeout, pp.ping(h2::Ping::opaque())).await {
            Err(_) => return KeepaliveFailure::Timeout,
            Ok(Err(e)) => return KeepaliveFailure::Error(e),
            Ok(Ok(_pong)) => trace!("keepalive: PONG"),
        }
    }
}

/// Signalled once the peer's SETTINGS are known to be in effect.
pub(crate) type Settled = futures_channel::oneshot::Sender<()>;

/// The liveness side of one connection. With `settled`, it first sends a PING at once and
/// signals `settled` on its ACK: the server's connection preface is its SETTINGS frame
/// (RFC 9113 §3.4) and frames are processed in order, so by then the peer's
/// SETTINGS_MAX_CONCURRENT_STREAMS is known and a pool never over-fills a connection whose
/// peer allows fewer than our default. Then the keepalive, if any; never completes on a
/// healthy connection. h2 hands out exactly one `PingPong` per connection.
pub(crate) async fn liveness(
    pp: Option<h2::PingPong>,
    ka: Option<Keepalive>,
    settled: Option<Settled>,
) -> KeepaliveFailure {
    let Some(mut pp) = pp else {
        return std::future::pending().await;
    };
    if let Some(settled) = settled {
        let wait = ka.map_or(KEEPALIVE_TIMEOUT, |k| k.timeout);
        match runtime::time::timeout(wait, pp.ping(h2::Ping::opaque())).await {
            Err(_) => return KeepaliveFailure::Timeout,
            Ok(Err(e)) => return KeepaliveFailure::Error(e),
            Ok(Ok(_pong)) => {
                let _ = settled.send(());
            }
        }
    }
    match ka {
        Some(ka) => keepalive(pp, ka).await,
        None => std::future::pending().await,
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

/// Drives a client connection until it ends, polling its keepalive in the same task.
pub(crate) async fn drive_client<T>(
    mut conn: h2::client::Connection<T, bytes::Bytes>,
    ka: Option<Keepalive>,
    settled: Settled,
) -> ClientEnd
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let pp = conn.ping_pong();
    let mut ka = pin!(liveness(pp, ka, Some(settled)));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = pin!(&mut conn).poll(cx) {
            debug!(result = ?r, "HBONE client connection closed");
            return Poll::Ready(ClientEnd::Closed(r));
        }
        if let Poll::Ready(f) = ka.as_mut().poll(cx) {
            debug!(failure = ?f, "HBONE client keepalive failed; dropping connection");
            return Poll::Ready(ClientEnd::Keepalive(f));
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
        assert_eq!(s.stream_window, 4 << 20);
        assert_eq!(s.connection_window, 16 << 20);
        assert_eq!(s.max_frame_size, 1 << 20);
        assert!(s.max_concurrent_streams >= 100);
        // RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE must lie in [2^14, 2^24 - 1].
        assert!((1 << 14..(1 << 24)).contains(&s.max_frame_size));
        // §6.9.2: windows may not exceed 2^31 - 1.
        assert!(s.connection_window < (1 << 31));
        assert_eq!(s.keepalive, Some(Keepalive::default()));
    }
}
