//! The xDS workload API client: one Delta ADS stream to istiod, as ztunnel keeps it.
//!
//! Owns: the stream to `/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`,
//! its reconnects, and the protocol state in `session` (versions held, ACK/NACK,
//! readiness). The mesh model is not here: each response's typed resources go to the
//! caller's [`Handler`], which validates and applies them and says which it rejects.
//!
//! Invariants:
//! - On every (re)connect the first requests are one per watched type, Address then
//!   Authorization, carrying the node and `initial_resource_versions` (what the client
//!   holds and did not reject); both name lists empty (a wildcard subscription).
//! - Every response gets exactly one ACK or NACK with its nonce; a NACK's
//!   `error_detail.message` is `name: reason; name: reason`. A response for a type not
//!   watched is logged and ACKed.
//! - The handler runs on the client's task (the control runtime), synchronously, once per
//!   response of a watched type; it is not called while istiod is away, so the last good
//!   state stays.
//! - Limits: a response larger than [`MAX_MESSAGE_BYTES`] ends the stream (gRPC refuses to
//!   decode it); a single resource larger than [`MAX_RESOURCE_BYTES`] is rejected alone.
//! - Reconnect backoff is ztunnel's (10 ms doubling to 15 s; benign stream errors reset
//!   it; a clean end reconnects at once) with up to [`BACKOFF_JITTER`] taken off each wait.

mod client;
mod node;
mod session;
mod stats;

pub use client::{BACKOFF_JITTER, INITIAL_BACKOFF, MAX_BACKOFF, XdsClient};
pub use node::{DEFAULT_INSTANCE_IP, NodeInfo};
pub use session::{NACK_CODE, NACK_MESSAGE_MAX};
pub use stats::{OTHER_TYPE, Termination, XdsStats};

use crate::grpc::ChannelConfig;
use crate::pb;

/// Workloads and services (`istio.workload.Address`).
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// L4 authorization policies (`istio.security.Authorization`).
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";
/// The types subscribed on every stream, in subscription order (ztunnel's).
pub const WATCHED_TYPES: [&str; 2] = [ADDRESS_TYPE, AUTHORIZATION_TYPE];

/// The largest response the client decodes (gRPC message size). ztunnel's 200 MiB: istiod
/// sends the whole mesh in a stream's first response per type, and a large cluster's
/// Address set reaches tens of MiB; a smaller cap would fail where ztunnel works, and the
/// failure would repeat on every reconnect.
pub const MAX_MESSAGE_BYTES: usize = 200 * 1024 * 1024;

/// The largest single resource decoded (bytes of its `Any` value). A real Workload, Service
/// or policy is well under 64 KiB (a policy with thousands of CIDRs stays under 1 MiB);
/// 4 MiB, gRPC's default message limit, leaves room for the extreme and still bounds the
/// memory one decode can take (maps and strings multiply the wire size several times).
pub const MAX_RESOURCE_BYTES: usize = 4 * 1024 * 1024;

/// A decoded resource.
// Unboxed: each value is moved once, from the decoder into the handler, and the size gap
// (a Workload's inline fields) is small next to the strings and maps each one owns.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Address(pb::workload::Address),
    Authorization(pb::security::Authorization),
}

/// One added or changed resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The xDS resource name (a workload uid, `ns/hostname` for a service, `ns/name` for a
    /// policy).
    pub name: String,
    /// istiod's version string (may be empty).
    pub version: String,
    pub resource: Resource,
}

/// A resource the client or the handler refused; it is named in the NACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub name: String,
    pub reason: String,
}

/// The consumer of one client's resources (the proxy's mesh state).
pub trait Handler: Send + 'static {
    /// One response's updates and removals for one watched type (apply updates first, then
    /// removals). Returns the resources it rejects; those are NACKed and their new versions
    /// are not recorded, while the rest of the response is taken as applied.
    fn handle(
        &mut self,
        type_url: &str,
        updates: Vec<Update>,
        removed: Vec<String>,
    ) -> Vec<Rejection>;
}

impl<F> Handler for F
where
    F: FnMut(&str, Vec<Update>, Vec<String>) -> Vec<Rejection> + Send + 'static,
{
    fn handle(
        &mut self,
        type_url: &str,
        updates: Vec<Update>,
        removed: Vec<String>,
    ) -> Vec<Rejection> {
        self(type_url, updates, removed)
    }
}

/// What the client needs.
#[derive(Clone, Debug)]
pub struct XdsConfig {
    pub channel: ChannelConfig,
    /// Sent on each stream's first request per type ([`NodeInfo::node`]).
    pub node: pb::discovery::Node,
    /// See [`MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
    /// See [`MAX_RESOURCE_BYTES`].
    pub max_resource_bytes: usize,
}

impl XdsConfig {
    /// With the default limits.
    pub fn new(channel: ChannelConfig, node: pb::discovery::Node) -> XdsConfig {
        XdsConfig {
            channel,
            node,
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_resource_bytes: MAX_RESOURCE_BYTES,
        }
    }
}
