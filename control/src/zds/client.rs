//! The ZDS connection loop, on its own OS thread.
//!
//! Owns: the thread (`ringmesh-zds`), the socket of the current connection, the backoff,
//! and the stop flag.
//! Invariants:
//! - One connection at a time; each starts with `ZdsHello{V1}` and then answers every
//!   request with exactly one response, in order.
//! - The thread never blocks longer than [`POLL_INTERVAL`] between looks at the stop flag
//!   (except in `connect(2)`, which on a Unix socket waits only while the agent's accept
//!   queue is full). Stopping calls no [`Handler`] method: pods outlive the client.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::state::{Answer, Pods};
use super::{Handler, ZdsConfig, ZdsStats, wire};
use crate::pb::zds::{Ack, Version, WorkloadResponse, ZdsHello, workload_response};

/// Longest wait before the stop flag is looked at again: short enough that dropping the
/// client returns promptly, long enough that an idle client costs nothing.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// ztunnel's connect backoff: 10 ms doubled before each sleep (the first sleep is 20 ms),
/// capped at 15 s.
const BACKOFF_INITIAL: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// The running ZDS client. Dropping it (or [`ZdsClient::stop`]) stops its thread promptly,
/// leaving every pod served.
pub struct ZdsClient {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<ZdsStats>,
}

impl ZdsClient {
    /// Starts the client's thread; it connects to `config.path` and keeps reconnecting.
    pub fn spawn(config: ZdsConfig, handler: impl Handler) -> io::Result<ZdsClient> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ZdsStats::default());
        let worker = Worker {
            pods: Pods::new(config.retry, stats.clone()),
            config,
            handler: Box::new(handler),
            stats: stats.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("ringmesh-zds".into())
            .spawn(move || worker.run())?;
        Ok(ZdsClient {
            stop,
            thread: Some(thread),
            stats,
        })
    }

    /// The client's counters, readable from any thread.
    pub fn stats(&self) -> Arc<ZdsStats> {
        self.stats.clone()
    }

    /// Stops the thread and waits for it (as dropping does).
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the ZDS thread panicked");
        }
    }
}

impl Drop for ZdsClient {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Why one connection ended.
enum End {
    Stopped,
    /// The agent closed it.
    Closed,
    Failed(String),
}

struct Worker {
    config: ZdsConfig,
    handler: Box<dyn Handler>,
    pods: Pods,
    stats: Arc<ZdsStats>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut failing = false;
        while !self.stopped() {
            let sock = match wire::connect(&self.config.path) {
                Ok(sock) => sock,
                Err(e) => {
                    if !failing {
                        // Once per streak: the agent may be down for minutes.
                        warn!(path = %self.config.path.display(), error = %e, "failed to connect to the node agent's ZDS socket; retrying with backoff");
                        failing = true;
                    }
                    self.sleep(backoff.next_delay());
                    continue;
                }
            };
            failing = false;
            let end = self.serve(sock.as_fd());
            drop(sock);
            self.stats.set_connected(false);
            match end {
                End::Stopped => break,
                End::Closed => info!("the node agent closed the ZDS connection; reconnecting"),
                End::Failed(why) => warn!(error = %why, "ZDS connection dropped; reconnecting"),
            }
            // A connection that got through its snapshot was healthy: start the backoff
            // afresh. One that did not (an agent that keeps failing us) keeps backing off.
            if self.pods.snapshot_received() {
                backoff = Backoff::default();
            } else {
                self.sleep(backoff.next_delay());
            }
        }
        info!("ZDS client stopped");
    }

    fn serve(&mut self, sock: BorrowedFd<'_>) -> End {
        self.pods.on_connect();
        let hello = ZdsHello {
            version: Version::V1.into(),
        };
        if let Err(e) = wire::send(sock, &hello, None) {
            return End::Failed(format!("sending ZdsHello: {e}"));
        }
        self.stats.set_connected(true);
        info!(path = %self.config.path.display(), "connected to the node agent; sent ZdsHello V1");
        loop {
            if self.stopped() {
                return End::Stopped;
            }
            let wait = self
                .pods
                .next_retry_in(Instant::now())
                .map_or(POLL_INTERVAL, |due| due.min(POLL_INTERVAL));
            match wire::wait_readable(sock, wait) {
                Ok(true) => {
                    if let Some(end) = self.answer_one(sock) {
                        return end;
                    }
                }
                Ok(false) => {}
                Err(e) => return End::Failed(format!("polling the ZDS socket: {e}")),
            }
            self.pods.retry_pending(Instant::now(), &mut *self.handler);
        }
    }

    /// Reads one request and answers it. `Some` when the connection is over.
    fn answer_one(&mut self, sock: BorrowedFd<'_>) -> Option<End> {
        let answer = match wire::recv(sock) {
            Ok(None) => return Some(End::Closed),
            Ok(Some((bytes, fds))) => self.pods.handle(&bytes, fds, &mut *self.handler),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Answer::unreadable(&e),
            Err(e) => return Some(End::Failed(format!("receiving from the ZDS socket: {e}"))),
        };
        self.stats.count_answer(answer.is_ok());
        if !answer.is_ok() {
            warn!(error = %answer.error, reconnect = answer.reconnect, "NACK to the node agent");
        }
        let response = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: answer.error.clone(),
            })),
        };
        if let Err(e) = wire::send(sock, &response, None) {
            return Some(End::Failed(format!("sending an ack: {e}")));
        }
        answer.reconnect.then_some(End::Failed(answer.error))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps for `total`, waking early when stopped.
    fn sleep(&self, total: Duration) {
        let until = Instant::now() + total;
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(POLL_INTERVAL));
        }
    }
}

/// ztunnel's connect backoff (see [`BACKOFF_INITIAL`]).
#[derive(Debug)]
struct Backoff {
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            delay: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_20ms_to_15s() {
        let mut backoff = Backoff::default();
        let delays: Vec<u128> = (0..12).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(&delays[..4], &[20, 40, 80, 160]);
        assert_eq!(delays[11], 15_000);
        assert_eq!(backoff.next_delay(), BACKOFF_MAX);
    }
}
