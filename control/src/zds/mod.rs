//! ZDS: the node proxy's side of istio-cni's in-pod protocol. The node agent owns the
//! socket and hands over pods (uid, name, namespace, service account, and the pod's network
//! namespace as a passed descriptor); the node proxy starts and stops serving them.
//!
//! Owns:
//! - [`wire`]: one packet = one protobuf message on an `AF_UNIX` `SOCK_SEQPACKET` socket,
//!   with `SCM_RIGHTS` descriptors; both sides use it (tests play the agent with it).
//! - [`ZdsClient`]: the connection loop on its own OS thread (`ringmesh-zds`): connect
//!   with backoff, send `ZdsHello{V1}`, then answer every `WorkloadRequest` with exactly one
//!   `WorkloadResponse{ack}`, in order, and never send anything unsolicited.
//! - The pod bookkeeping (`state`): running and pending pods, the per-connection snapshot
//!   and reconcile, retries of failed starts, and [`ZdsStats`].
//!
//! Invariants:
//! - The [`Handler`] is called only from the client's thread, one call at a time. It is
//!   told `add` when a pod is to be served and `del` when it is deleted, replaced by a new
//!   network namespace, or left out of an agent's snapshot. A connection that ends (agent
//!   restart, protocol error) and stopping the client never stop a pod: the pods keep being
//!   served while the agent is away, and the next snapshot reconciles.
//! - Unreadable or out-of-order messages are NACKed and the connection is dropped and
//!   redialled, so the agent resends its whole cache. Unlike ztunnel, nothing a peer sends
//!   ends the process. Per-pod failures (a start failing, a descriptor that is not a network
//!   namespace) are NACKed and the connection goes on.
//! - Memory is bounded: packets by [`wire::MAX_MESSAGE_BYTES`], pods by [`MAX_PODS`], error
//!   texts by [`MAX_ERROR_BYTES`].

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::Duration;

mod client;
mod netns;
mod state;
mod stats;
pub mod wire;

pub use crate::pb::zds::WorkloadInfo;
pub use client::ZdsClient;
pub use state::MAX_ERROR_BYTES;
pub use stats::ZdsStats;

/// Where istio-cni's node agent listens by default (ztunnel's `INPOD_UDS` default; istio-cni's
/// `ztunnel-uds-address` default is the same).
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

/// How often pods whose start failed are retried: ztunnel's `RETRY_DURATION`.
pub const RETRY: Duration = Duration::from_secs(5);

/// Most pods the client tracks (running plus pending), and most uids one snapshot may name.
/// Kubelet's `max-pods` defaults to 110 and real nodes stay within a few hundred; 10,000 is
/// far above any node yet bounds the maps, and the descriptors held for pending pods, that a
/// misbehaving agent could make us grow. Adds beyond it are NACKed.
pub const MAX_PODS: usize = 10_000;

/// What the node proxy does with the pods the agent hands over. Called on the ZDS thread.
pub trait Handler: Send + 'static {
    /// Start serving a pod in the netns `netns` (the handler dup()s it if it keeps it).
    /// `Err(text)` = NACK; the client retries it every [`ZdsConfig::retry`] ([`RETRY`], 5 s)
    /// until it succeeds or is deleted.
    fn add(&mut self, uid: &str, info: &WorkloadInfo, netns: BorrowedFd<'_>) -> Result<(), String>;

    /// Stop serving a pod (it was deleted, replaced, or left out of a snapshot).
    fn del(&mut self, uid: &str);
}

/// The ZDS client's settings.
#[derive(Clone, Debug)]
pub struct ZdsConfig {
    /// The node agent's socket.
    pub path: PathBuf,
    /// Interval between retries of pods whose start failed.
    pub retry: Duration,
}

impl ZdsConfig {
    /// Settings for the agent socket at `path`, with ztunnel's retry interval.
    pub fn new(path: impl Into<PathBuf>) -> ZdsConfig {
        ZdsConfig {
            path: path.into(),
            retry: RETRY,
        }
    }
}

impl Default for ZdsConfig {
    fn default() -> ZdsConfig {
        ZdsConfig::new(DEFAULT_SOCKET)
    }
}

/// The fuzz target's check (`fuzz/fuzz_targets/zds.rs`, and the corpus replay on stable):
/// `data` is a sequence of packets, each a length byte and that many bytes, the length
/// byte's top bit saying whether this process's own network namespace rides along (the
/// only namespace a fuzzer may safely hand out). Every packet gets an answer whose text
/// fits istio-cni's read buffer; nothing panics; the running and pending counts stay
/// within [`MAX_PODS`].
pub fn fuzz_check(data: &[u8]) {
    struct Accept(usize);
    impl Handler for Accept {
        fn add(
            &mut self,
            _uid: &str,
            _info: &WorkloadInfo,
            _netns: BorrowedFd<'_>,
        ) -> Result<(), String> {
            self.0 += 1;
            // Every third start fails, so the pending path runs too.
            if self.0.is_multiple_of(3) {
                Err("bind failed".into())
            } else {
                Ok(())
            }
        }
        fn del(&mut self, _uid: &str) {}
    }
    let stats = std::sync::Arc::new(ZdsStats::default());
    let mut pods = state::Pods::new(Duration::ZERO, stats.clone());
    let mut handler = Accept(0);
    pods.on_connect();
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let len = usize::from(head & 0x7f).min(tail.len());
        let (packet, next) = tail.split_at(len);
        rest = next;
        let fds = if head & 0x80 != 0 {
            std::fs::File::open("/proc/self/ns/net")
                .map(|f| vec![std::os::fd::OwnedFd::from(f)])
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let answer = pods.handle(packet, fds, &mut handler);
        assert!(
            answer.error.len() <= MAX_ERROR_BYTES,
            "{}",
            answer.error.len()
        );
        if answer.reconnect {
            pods.on_connect();
        }
        pods.retry_pending(std::time::Instant::now(), &mut handler);
        assert!(stats.active() as usize <= MAX_PODS && stats.pending() as usize <= MAX_PODS);
    }
}
