//! One xDS client's protocol state, with no I/O: what each (re)connect sends first, and the
//! one reply each response gets.
//!
//! Owns: the versions the client holds per watched type (echoed as
//! `initial_resource_versions`), the per-resource checks (body present, within the size
//! limit, decodable, name unique in its response), the ACK/NACK, and the readiness gate.
//! Invariants: every response yields exactly one reply carrying its nonce; a bad resource
//! is rejected alone and the rest of its response still reaches the handler; a rejected
//! resource's new version is never recorded (so a reconnect asks istiod to send it again),
//! while a version the handler holds from before stays recorded; updates are recorded
//! before removals, the order the handler applies them in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use prost::Message;

use super::stats::XdsStats;
use super::{Handler, Rejection, Resource, Update, WATCHED_TYPES};
use crate::error::truncate_escaped;
use crate::pb;
use crate::pb::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};

/// `error_detail.code` of a NACK: gRPC INVALID_ARGUMENT. istiod only checks that
/// `error_detail` is present and prints the code's name in its "ACK ERROR" log line
/// (ztunnel leaves it 0, which istiod prints as "OK"); Envoy's NACKs are not 0 either.
pub const NACK_CODE: i32 = 3;

/// The longest NACK message (bytes). istiod logs it and keeps it as the proxy's last error
/// (`istioctl proxy-status`); a response with thousands of bad resources must not turn into
/// a megabyte log line. The count of those left out is appended.
pub const NACK_MESSAGE_MAX: usize = 64 * 1024;
/// Longest resource name and reason quoted in a NACK (characters).
const NACK_NAME_MAX: usize = 256;
const NACK_REASON_MAX: usize = 1024;

pub(crate) struct Session<H> {
    pub(crate) handler: H,
    /// Per watched type (index into [`WATCHED_TYPES`]): name → version held.
    held: [HashMap<String, String>; 2],
    acked: [bool; 2],
    stats: Arc<XdsStats>,
    max_resource_bytes: usize,
}

fn watched(type_url: &str) -> Option<usize> {
    WATCHED_TYPES.iter().position(|t| *t == type_url)
}

impl<H: Handler> Session<H> {
    pub(crate) fn new(handler: H, stats: Arc<XdsStats>, max_resource_bytes: usize) -> Self {
        Session {
            handler,
            held: Default::default(),
            acked: [false; 2],
            stats,
            max_resource_bytes,
        }
    }

    /// One request per watched type, Address first: the node, a wildcard subscription
    /// (both name lists empty) and the versions held.
    pub(crate) fn initial_requests(&self, node: &Node) -> Vec<DeltaDiscoveryRequest> {
        WATCHED_TYPES
            .iter()
            .zip(&self.held)
            .map(|(type_url, held)| DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: type_url.to_string(),
                initial_resource_versions: held.clone(),
                ..DeltaDiscoveryRequest::default()
            })
            .collect()
    }

    /// Handles one response and returns its ACK or NACK.
    pub(crate) fn on_response(&mut self, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let DeltaDiscoveryResponse {
            type_url,
            nonce,
            resources,
            removed_resources,
            ..
        } = resp;
        let bytes: u64 = resources
            .iter()
            .map(|r| r.resource.as_ref().map_or(0, |a| a.value.len() as u64))
            .sum();
        self.stats.received(&type_url, bytes);

        let Some(ti) = watched(&type_url) else {
            // ztunnel does the same: an ACK tells istiod we are alive; a NACK would make it
            // retry a type we will never understand.
            tracing::warn!(
                type_url = %truncate_escaped(&type_url, NACK_NAME_MAX),
                "ignored a response for a type this client does not watch (ACK)"
            );
            return self.reply(type_url, nonce, &[]);
        };

        let (updates, mut rejections) = decode_all(ti, resources, self.max_resource_bytes);
        let versions: Vec<(String, String)> = updates
            .iter()
            .map(|u| (u.name.clone(), u.version.clone()))
            .collect();
        rejections.extend(
            self.handler
                .handle(&type_url, updates, removed_resources.clone()),
        );

        let rejected: HashSet<&str> = rejections.iter().map(|r| r.name.as_str()).collect();
        let held = &mut self.held[ti];
        for (name, version) in versions {
            if !rejected.contains(name.as_str()) {
                held.insert(name, version);
            }
        }
        for name in &removed_resources {
            held.remove(name);
        }

        if rejections.is_empty() {
            self.acked[ti] = true;
            if self.acked.iter().all(|a| *a) {
                self.stats.set_ready();
            }
        }
        self.reply(type_url, nonce, &rejections)
    }

    fn reply(
        &self,
        type_url: String,
        nonce: String,
        rejections: &[Rejection],
    ) -> DeltaDiscoveryRequest {
        let nack = !rejections.is_empty();
        self.stats.replied(nack);
        let error_detail = nack.then(|| {
            let message = nack_message(rejections);
            tracing::warn!(
                type_url = %type_url,
                nonce = %truncate_escaped(&nonce, NACK_NAME_MAX),
                rejected = rejections.len(),
                error = %message,
                "rejected resources from istiod (NACK)"
            );
            Status {
                code: NACK_CODE,
                message,
                details: Vec::new(),
            }
        });
        if !nack {
            tracing::debug!(type_url = %type_url, "ACK");
        }
        DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            error_detail,
            ..DeltaDiscoveryRequest::default()
        }
    }

    /// The versions held for `type_url` (for tests and config dumps).
    #[cfg(test)]
    pub(crate) fn held(&self, type_url: &str) -> Option<&HashMap<String, String>> {
        watched(type_url).map(|i| &self.held[i])
    }
}

/// The resources of one response as typed updates, and the ones that could not be.
fn decode_all(
    type_index: usize,
    resources: Vec<pb::discovery::Resource>,
    max_resource_bytes: usize,
) -> (Vec<Update>, Vec<Rejection>) {
    let mut counts: HashMap<&str, usize> = HashMap::with_capacity(resources.len());
    for r in &resources {
        *counts.entry(r.name.as_str()).or_default() += 1;
    }
    let duplicated: HashMap<String, usize> = counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(name, n)| (name.to_string(), n))
        .collect();

    let mut updates = Vec::with_capacity(resources.len());
    let mut rejections = Vec::new();
    let mut reported: HashSet<String> = HashSet::new();
    for r in resources {
        let reject = |reason: String| Rejection {
            name: r.name.clone(),
            reason,
        };
        if r.name.is_empty() {
            if reported.insert(String::new()) {
                rejections.push(reject("a resource without a name".into()));
            }
            continue;
        }
        if let Some(n) = duplicated.get(&r.name) {
            // Neither copy is applied: nothing says which one istiod meant.
            if reported.insert(r.name.clone()) {
                rejections.push(reject(format!("sent {n} times in one response")));
            }
            continue;
        }
        let Some(any) = &r.resource else {
            rejections.push(reject(
                "no resource body (Resource.resource is unset)".into(),
            ));
            continue;
        };
        if any.value.len() > max_resource_bytes {
            rejections.push(reject(format!(
                "{} bytes, over the limit of {max_resource_bytes} for one resource",
                any.value.len()
            )));
            continue;
        }
        let decoded = if type_index == 0 {
            pb::workload::Address::decode(any.value.as_slice())
                .map(Resource::Address)
                .map_err(|e| format!("not an istio.workload.Address: {e}"))
        } else {
            pb::security::Authorization::decode(any.value.as_slice())
                .map(Resource::Authorization)
                .map_err(|e| format!("not an istio.security.Authorization: {e}"))
        };
        match decoded {
            Ok(resource) => updates.push(Update {
                name: r.name,
                version: r.version,
                resource,
            }),
            Err(reason) => rejections.push(reject(reason)),
        }
    }
    (updates, rejections)
}

/// `name: reason; name: reason`, within [`NACK_MESSAGE_MAX`].
pub(crate) fn nack_message(rejections: &[Rejection]) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for r in rejections {
        let part = format!(
            "{}: {}",
            truncate_escaped(&r.name, NACK_NAME_MAX),
            truncate_escaped(&r.reason, NACK_REASON_MAX)
        );
        // Room for the separator and the "and N more" tail.
        if out.len() + part.len() + 32 > NACK_MESSAGE_MAX {
            break;
        }
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(&part);
        shown += 1;
    }
    if shown < rejections.len() {
        out.push_str(&format!("; and {} more", rejections.len() - shown));
    }
    out
}

#[cfg(test)]
mod tests;
