//! The stream's lifecycle: connect, send the initial requests, answer every response,
//! reconnect with backoff, stop on shutdown.
//!
//! Owns: the one open stream (at most one at a time) and the backoff between attempts.
//! Invariants: the channel is rebuilt per attempt (the root file and token file are read
//! again); nothing is applied while disconnected; shutdown cancels at any await point, and
//! no await point sits inside a handler call.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::session::Session;
use super::stats::{Termination, XdsStats};
use super::{Handler, WATCHED_TYPES, XdsConfig};
use crate::error::{Error, truncate_escaped};
use crate::grpc;
use crate::pb::discovery::DeltaDiscoveryRequest;
use crate::pb::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

/// The first wait after a failure, and the wait after a benign stream error (ztunnel's).
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait (ztunnel's): istiod back within 15 s of a restart is noticed promptly.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// Each wait is shortened by a random fraction up to this. ztunnel has none, so after an
/// istiod restart every node proxy of a cluster redials in lockstep at 20 ms, 40 ms, …,
/// 15 s; a fifth spreads them over 3 s at the cap without ever waiting longer than
/// ztunnel would (the same 20 % its CA client uses).
pub const BACKOFF_JITTER: f64 = 0.2;

/// Requests queued toward istiod: the initial ones and one reply per response; the
/// client waits for room before reading the next response, so this never grows.
const REQUEST_QUEUE: usize = 8;

/// How one stream ended.
#[derive(Debug)]
enum Ended {
    /// The channel or the stream could not be opened.
    Connect(Error),
    /// The stream failed with this status.
    Status(tonic::Status),
    /// The reply could not be queued: the request side of the stream is gone.
    SendFailed,
    /// istiod ended the stream cleanly.
    Complete,
}

/// The xDS client. Build it, keep [`XdsClient::stats`], and spawn [`XdsClient::run`] on
/// the control runtime.
pub struct XdsClient<H> {
    config: XdsConfig,
    session: Session<H>,
    stats: Arc<XdsStats>,
}

impl<H> std::fmt::Debug for XdsClient<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("address", &self.config.channel.address)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> XdsClient<H> {
    pub fn new(config: XdsConfig, handler: H) -> XdsClient<H> {
        let stats = Arc::new(XdsStats::default());
        XdsClient {
            session: Session::new(handler, stats.clone(), config.max_resource_bytes),
            config,
            stats,
        }
    }

    /// The counters, readable from any thread.
    pub fn stats(&self) -> Arc<XdsStats> {
        self.stats.clone()
    }

    /// Keeps the stream to istiod until `shutdown` completes; returns the handler.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> H {
        tokio::select! {
            biased;
            () = shutdown => {}
            () = self.run_forever() => {}
        }
        self.stats.set_connected(false);
        self.session.handler
    }

    async fn run_forever(&mut self) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let (ended, responses) = self.attempt().await;
            self.stats.set_connected(false);
            let (reason, wait, next) = next_step(&ended, responses, backoff);
            self.stats.terminated(reason);
            let address = &self.config.channel.address;
            match &ended {
                Ended::Connect(e) => {
                    tracing::warn!(%address, error = %e, ?wait, "xDS: cannot reach istiod");
                }
                Ended::Status(s) => tracing::warn!(
                    %address,
                    code = ?s.code(),
                    message = %truncate_escaped(s.message(), 512),
                    ?wait,
                    "xDS: stream to istiod failed"
                ),
                Ended::SendFailed | Ended::Complete => {
                    tracing::info!(%address, responses, ?wait, "xDS: istiod ended the stream");
                }
            }
            if let Some(wait) = wait {
                tokio::time::sleep(jitter(wait)).await;
            }
            backoff = next;
        }
    }

    /// One stream, from dial to its end; also returns how many responses it carried.
    async fn attempt(&mut self) -> (Ended, u64) {
        let (tx, rx) =
            mpsc::channel::<DeltaDiscoveryRequest>(REQUEST_QUEUE.max(WATCHED_TYPES.len()));
        for req in self.session.initial_requests(&self.config.node) {
            tracing::debug!(
                type_url = %req.type_url,
                held = req.initial_resource_versions.len(),
                "xDS: initial request"
            );
            // The queue has room for every initial request.
            if tx.try_send(req).is_err() {
                return (Ended::SendFailed, 0);
            }
        }
        let channel = match grpc::connect(&self.config.channel).await {
            Ok(c) => c,
            Err(e) => return (Ended::Connect(e), 0),
        };
        let req = match channel.request(ReceiverStream::new(rx)) {
            Ok(r) => r,
            Err(e) => return (Ended::Connect(e), 0),
        };
        let mut client = AggregatedDiscoveryServiceClient::new(channel.channel())
            .max_decoding_message_size(self.config.max_message_bytes)
            // The initial requests list every resource held (tonic's default is no limit;
            // said here because a cluster's worth of names runs to megabytes).
            .max_encoding_message_size(usize::MAX);
        let mut stream = match client.delta_aggregated_resources(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let e = grpc::status_error(channel.address(), &s, grpc::CONNECT_TIMEOUT);
                return (Ended::Connect(e), 0);
            }
        };
        self.stats.set_connected(true);
        tracing::info!(address = %channel.address(), "xDS: stream to istiod established");
        let mut responses = 0;
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    responses += 1;
                    let reply = self.session.on_response(resp);
                    if tx.send(reply).await.is_err() {
                        return (Ended::SendFailed, responses);
                    }
                }
                Ok(None) => return (Ended::Complete, responses),
                Err(s) => return (Ended::Status(s), responses),
            }
        }
    }
}

/// ztunnel's benign stream errors: istiod going away or recycling the connection.
fn benign(s: &tonic::Status) -> bool {
    use tonic::Code;
    match s.code() {
        Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Unavailable => {
            s.message().contains("transport is closing")
                || s.message().contains("received prior goaway")
        }
        _ => false,
    }
}

/// The termination label, the wait before the next attempt (none: at once) and the backoff
/// after it.
fn next_step(
    ended: &Ended,
    responses: u64,
    backoff: Duration,
) -> (Termination, Option<Duration>, Duration) {
    let doubled = (backoff * 2).min(MAX_BACKOFF);
    match ended {
        Ended::Connect(_) => (Termination::ConnectionError, Some(doubled), doubled),
        Ended::Status(s) if benign(s) => (
            Termination::Reconnect,
            Some(INITIAL_BACKOFF),
            INITIAL_BACKOFF,
        ),
        Ended::Status(_) => (Termination::Error, Some(doubled), doubled),
        // A stream that carried responses and ended (istiod's max connection age) is
        // redialed at once, as ztunnel does. One that ended before any response is a
        // peer closing every stream: back off, or we would spin.
        Ended::Complete if responses > 0 => (Termination::Complete, None, INITIAL_BACKOFF),
        Ended::Complete => (Termination::Complete, Some(doubled), doubled),
        Ended::SendFailed if responses > 0 => (Termination::Error, None, INITIAL_BACKOFF),
        Ended::SendFailed => (Termination::Error, Some(doubled), doubled),
    }
}

/// `wait` shortened by a random fraction of up to [`BACKOFF_JITTER`].
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(1.0 - BACKOFF_JITTER * rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_ztunnel() {
        let unreachable = Ended::Connect(Error::NoRuntime);
        let (r, wait, next) = next_step(&unreachable, 0, INITIAL_BACKOFF);
        assert_eq!(r, Termination::ConnectionError);
        assert_eq!(
            (wait, next),
            (Some(Duration::from_millis(20)), Duration::from_millis(20))
        );
        let (_, _, capped) = next_step(&unreachable, 0, Duration::from_secs(10));
        assert_eq!(capped, MAX_BACKOFF);

        let goaway = Ended::Status(tonic::Status::unavailable("received prior goaway: x"));
        assert_eq!(
            next_step(&goaway, 3, Duration::from_secs(8)),
            (
                Termination::Reconnect,
                Some(INITIAL_BACKOFF),
                INITIAL_BACKOFF
            )
        );
        let denied = Ended::Status(tonic::Status::permission_denied("no"));
        let (r, wait, _) = next_step(&denied, 3, Duration::from_secs(1));
        assert_eq!(
            (r, wait),
            (Termination::Error, Some(Duration::from_secs(2)))
        );

        assert_eq!(
            next_step(&Ended::Complete, 1, Duration::from_secs(8)),
            (Termination::Complete, None, INITIAL_BACKOFF)
        );
        let (_, wait, _) = next_step(&Ended::Complete, 0, INITIAL_BACKOFF);
        assert!(
            wait.is_some(),
            "a stream closed before any response backs off"
        );
    }

    #[test]
    fn jitter_only_shortens() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j <= Duration::from_secs(10) && j >= Duration::from_secs(8),
                "{j:?}"
            );
        }
    }
}
