//! The pods the node agent has handed over, and what each request does to them.
//!
//! Owns: [`Pods`]: the running pods (uid → netns identity), the pending ones (start failed,
//! retried every `retry`), and the per-connection snapshot state. No socket I/O: a packet's
//! bytes and descriptors come in, one [`Answer`] goes out, and the [`Handler`] is called.
//! Invariants:
//! - `running` and `pending` never share a uid; together they hold at most [`MAX_PODS`].
//! - A pod is stopped (`Handler::del`) only when it is deleted after the snapshot, replaced
//!   by a different netns, or left out of a snapshot: never because a connection ended.
//! - Every request gets exactly one [`Answer`]; its text is bounded by
//!   [`MAX_ERROR_BYTES`] however long the peer's strings or the handler's error are.
//! - Nothing a peer sends panics: malformed input is a NACK, at worst a reconnect.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use tracing::{debug, info, warn};

use super::netns::{self, NetnsId};
use super::{Handler, MAX_PODS, ZdsStats};
use crate::pb::zds::{AddWorkload, WorkloadInfo, WorkloadRequest, workload_request::Payload};

/// Longest error text in a NACK. The whole `WorkloadResponse` must fit the peer's
/// 1024-byte read buffer ([`super::wire::MAX_MESSAGE_BYTES`]); half of it leaves ample room
/// for the framing and says everything a human needs.
pub const MAX_ERROR_BYTES: usize = 512;

/// Longest uid quoted in an error or a log line. Kubernetes uids are 36-byte UUIDs; this
/// only stops a hostile peer from filling a log with one.
const MAX_UID_SHOWN: usize = 64;

/// The answer to one request.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// Empty means OK (an ACK); anything else is the NACK's text.
    pub error: String,
    /// The connection cannot go on (unreadable or out-of-order message): after answering,
    /// drop it and reconnect, so that the agent resends its snapshot.
    pub reconnect: bool,
}

impl Answer {
    fn ok() -> Answer {
        Answer {
            error: String::new(),
            reconnect: false,
        }
    }

    /// A NACK for one request; the connection goes on.
    fn nack(text: String) -> Answer {
        Answer {
            error: bounded(text, MAX_ERROR_BYTES),
            reconnect: false,
        }
    }

    /// A NACK after which the connection is dropped.
    fn fatal(text: String) -> Answer {
        Answer {
            error: bounded(text, MAX_ERROR_BYTES),
            reconnect: true,
        }
    }

    /// The NACK for a packet that could not be read whole (see [`super::wire::recv`]).
    pub fn unreadable(e: &std::io::Error) -> Answer {
        Answer::fatal(format!("failure to read message: {e}"))
    }

    pub fn is_ok(&self) -> bool {
        self.error.is_empty()
    }
}

/// A pod whose start failed: everything needed to try again, including the netns
/// descriptor the agent passed (owned here, so it stays valid until the retry).
struct Pending {
    info: WorkloadInfo,
    netns: OwnedFd,
    id: NetnsId,
}

/// The client's view of the pods; see the module docs.
pub struct Pods {
    running: HashMap<String, NetnsId>,
    pending: HashMap<String, Pending>,
    /// Uids added or kept on this connection before its SnapshotSent.
    snapshot: HashSet<String>,
    snapshot_received: bool,
    retry: Duration,
    next_retry: Option<Instant>,
    stats: Arc<ZdsStats>,
}

impl Pods {
    pub fn new(retry: Duration, stats: Arc<ZdsStats>) -> Pods {
        Pods {
            running: HashMap::new(),
            pending: HashMap::new(),
            snapshot: HashSet::new(),
            snapshot_received: false,
            retry,
            next_retry: None,
            stats,
        }
    }

    /// A new connection: the agent will resend its whole cache, so forget the last
    /// connection's snapshot and pending pods. Running pods are kept until the snapshot
    /// says which to drop.
    pub fn on_connect(&mut self) {
        self.snapshot.clear();
        self.pending.clear();
        self.next_retry = None;
        self.snapshot_received = false;
        self.stats.set_snapshot_received(false);
        self.publish();
    }

    /// Whether this connection has delivered its SnapshotSent.
    pub fn snapshot_received(&self) -> bool {
        self.snapshot_received
    }

    /// How long until the next retry round is due, if anything is pending.
    pub fn next_retry_in(&self, now: Instant) -> Option<Duration> {
        self.next_retry.map(|at| at.saturating_duration_since(now))
    }

    /// Handles one packet (`bytes` and the descriptors that came with it).
    pub fn handle(&mut self, bytes: &[u8], fds: Vec<OwnedFd>, handler: &mut dyn Handler) -> Answer {
        let answer = match WorkloadRequest::decode(bytes) {
            Ok(request) => self.dispatch(request.payload, fds, handler),
            Err(e) => Answer::fatal(format!(
                "failure to read message: undecodable WorkloadRequest of {} bytes: {e}",
                bytes.len()
            )),
        };
        self.publish();
        answer
    }

    /// Retries every pending pod if the retry round is due.
    pub fn retry_pending(&mut self, now: Instant, handler: &mut dyn Handler) {
        match self.next_retry {
            Some(at) if at <= now => {}
            _ => return,
        }
        let uids: Vec<String> = self.pending.keys().cloned().collect();
        for uid in uids {
            let Some(pod) = self.pending.remove(&uid) else {
                continue;
            };
            match handler.add(&uid, &pod.info, pod.netns.as_fd()) {
                Ok(()) => {
                    info!(uid = clip(&uid), "started serving pod on retry");
                    self.stats.count_started();
                    self.running.insert(uid, pod.id);
                }
                Err(e) => {
                    warn!(uid = clip(&uid), error = %bounded(e, MAX_ERROR_BYTES), "pod still fails to start; will retry");
                    self.pending.insert(uid, pod);
                }
            }
        }
        self.next_retry = (!self.pending.is_empty()).then(|| now + self.retry);
        self.publish();
    }

    fn dispatch(
        &mut self,
        payload: Option<Payload>,
        mut fds: Vec<OwnedFd>,
        handler: &mut dyn Handler,
    ) -> Answer {
        let Some(payload) = payload else {
            return Answer::fatal(
                "failure to read message: WorkloadRequest without a payload".into(),
            );
        };
        // Returning drops `fds`, which closes every descriptor we are not keeping.
        if fds.len() > 1 {
            return Answer::fatal(format!(
                "failure to read message: {} with {} descriptors; only AddWorkload carries one",
                payload_name(&payload),
                fds.len()
            ));
        }
        if !fds.is_empty() && !matches!(payload, Payload::Add(_)) {
            return Answer::fatal(format!(
                "failure to read message: unexpected descriptor with {}",
                payload_name(&payload)
            ));
        }
        match payload {
            Payload::Add(add) => match fds.pop() {
                Some(netns) => self.add(add, netns, handler),
                None => Answer::fatal(format!(
                    "failure to read message: AddWorkload for {} without its network namespace \
                     descriptor",
                    clip(&add.uid)
                )),
            },
            Payload::Keep(keep) => self.keep(keep.uid),
            Payload::Del(del) => self.del(&del.uid, handler),
            Payload::SnapshotSent(_) => self.snapshot_sent(handler),
        }
    }

    fn add(&mut self, add: AddWorkload, netns: OwnedFd, handler: &mut dyn Handler) -> Answer {
        let uid = add.uid;
        // ztunnel calls this a protocol error and exits the whole process. We serve other
        // pods too, so we NACK and reconnect instead: the agent resends its snapshot.
        let Some(info) = add.workload_info else {
            return Answer::fatal(format!(
                "failure to process message: AddWorkload for {} without workload_info",
                clip(&uid)
            ));
        };
        if uid.is_empty() {
            return Answer::nack(
                "failure to process message: AddWorkload with an empty uid".into(),
            );
        }
        let id = match netns::identify(netns.as_fd()) {
            Ok(id) => id,
            Err(e) => {
                return Answer::nack(format!(
                    "failure to process message: AddWorkload for {}: {e}",
                    clip(&uid)
                ));
            }
        };
        if self.is_new(&uid) && self.running.len() + self.pending.len() >= MAX_PODS {
            return Answer::nack(format!(
                "failure to process message: AddWorkload for {}: already serving the maximum of \
                 {MAX_PODS} pods",
                clip(&uid)
            ));
        }
        if !self.snapshot_received {
            self.snapshot.insert(uid.clone());
        }
        match self.running.get(&uid) {
            Some(running) if *running == id => {
                // The agent resends its cache on every connection: same sandbox, nothing to do.
                self.pending.remove(&uid);
                debug!(
                    uid = clip(&uid),
                    "pod already served in this network namespace"
                );
                return Answer::ok();
            }
            Some(_) => self.stop(&uid, handler, "its network namespace changed"),
            None => {}
        }
        self.start(uid, info, netns, id, handler)
    }

    fn start(
        &mut self,
        uid: String,
        info: WorkloadInfo,
        netns: OwnedFd,
        id: NetnsId,
        handler: &mut dyn Handler,
    ) -> Answer {
        match handler.add(&uid, &info, netns.as_fd()) {
            Ok(()) => {
                info!(
                    uid = clip(&uid),
                    name = clip(&info.name),
                    namespace = clip(&info.namespace),
                    "started serving pod"
                );
                self.stats.count_started();
                self.pending.remove(&uid);
                self.running.insert(uid, id);
                Answer::ok()
            }
            Err(e) => {
                let answer =
                    Answer::nack(format!("failure to start proxy: pod {}: {e}", clip(&uid)));
                warn!(uid = clip(&uid), error = %answer.error, "pod failed to start; will retry");
                if self.next_retry.is_none() {
                    self.next_retry = Some(Instant::now() + self.retry);
                }
                self.pending.insert(uid, Pending { info, netns, id });
                answer
            }
        }
    }

    fn keep(&mut self, uid: String) -> Answer {
        if self.snapshot_received {
            return Answer::fatal(format!(
                "failure to process message: KeepWorkload for {} after SnapshotSent",
                clip(&uid)
            ));
        }
        if !self.snapshot.contains(&uid) && self.snapshot.len() >= MAX_PODS {
            return Answer::nack(format!(
                "failure to process message: KeepWorkload for {}: snapshot already holds the \
                 maximum of {MAX_PODS} pods",
                clip(&uid)
            ));
        }
        debug!(uid = clip(&uid), "pod kept by the snapshot");
        self.snapshot.insert(uid);
        Answer::ok()
    }

    fn del(&mut self, uid: &str, handler: &mut dyn Handler) -> Answer {
        self.pending.remove(uid);
        if !self.snapshot_received {
            // Reconcile at SnapshotSent stops it, if it runs.
            self.snapshot.remove(uid);
            info!(uid = clip(uid), "pod deleted before the snapshot completed");
            return Answer::ok();
        }
        if self.running.contains_key(uid) {
            self.stop(uid, handler, "deleted");
        } else {
            // Idempotent: the agent broadcasts deletes to every connection it has.
            debug!(uid = clip(uid), "delete for a pod not served");
        }
        Answer::ok()
    }

    fn snapshot_sent(&mut self, handler: &mut dyn Handler) -> Answer {
        if self.snapshot_received {
            return Answer::fatal(
                "failure to process message: a second SnapshotSent on one connection".into(),
            );
        }
        let stale: Vec<String> = self
            .running
            .keys()
            .filter(|uid| !self.snapshot.contains(*uid))
            .cloned()
            .collect();
        for uid in &stale {
            self.stop(uid, handler, "left out of the snapshot");
        }
        self.snapshot.clear();
        self.snapshot_received = true;
        self.stats.set_snapshot_received(true);
        info!(
            active = self.running.len(),
            pending = self.pending.len(),
            stopped = stale.len(),
            "ZDS snapshot complete"
        );
        Answer::ok()
    }

    fn stop(&mut self, uid: &str, handler: &mut dyn Handler, why: &str) {
        if self.running.remove(uid).is_some() {
            handler.del(uid);
            self.stats.count_stopped();
            info!(uid = clip(uid), why, "stopped serving pod");
        }
    }

    fn is_new(&self, uid: &str) -> bool {
        !self.running.contains_key(uid) && !self.pending.contains_key(uid)
    }

    fn publish(&mut self) {
        if self.pending.is_empty() {
            self.next_retry = None;
        }
        self.stats
            .set_gauges(self.running.len(), self.pending.len());
    }
}

fn payload_name(payload: &Payload) -> &'static str {
    match payload {
        Payload::Add(_) => "AddWorkload",
        Payload::Del(_) => "DelWorkload",
        Payload::Keep(_) => "KeepWorkload",
        Payload::SnapshotSent(_) => "SnapshotSent",
    }
}

/// A peer-supplied uid, cut short for quoting.
fn clip(uid: &str) -> &str {
    prefix(uid, MAX_UID_SHOWN)
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn bounded(mut text: String, max: usize) -> String {
    let keep = prefix(&text, max).len();
    text.truncate(keep);
    text
}

fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests;
