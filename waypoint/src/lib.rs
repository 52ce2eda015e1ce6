//! The ringmesh waypoint: the L7 half of ambient mode, on the node proxy's runtime.
//!
//! Owns: HTTP routes and their matching ([`route`]), DestinationRule subsets and balancing
//! ([`dr`]), the HTTP/1.1 and HTTP/2 server that runs inside each HBONE tunnel a node proxy
//! sends here, and forwarding each request to the Service its route picks, with timeouts,
//! retries, faults, mirroring, header and URL rewrites and redirects ([`serve`]), and what
//! each request reports under Istio's Telemetry API ([`telemetry`]: spans, access log,
//! metrics; gRPC's messages and statuses, [`grpc`]). It does not know how a Service becomes an endpoint or how a tunnel is opened:
//! the caller (`ringmesh waypoint`) gives it an [`serve::Upstreams`].
//!
//! Invariants:
//! - a request is routed by the table that was current when it arrived; a new table applies
//!   to the next request;
//! - bodies stream: a request body is held only when a retry or a mirror needs a copy, and
//!   then only up to [`serve::REPLAY_LIMIT`] (one of unknown length is kept as it streams);
//!   a larger body streams without them;
//! - a failure of the mirror never reaches the client, and the client never waits for it;
//! - retries are bounded per request ([`route::MAX_ATTEMPTS`]) and per core (the budget);
//! - nothing a peer sends panics: hyper parses and limits the HTTP, and every local answer
//!   is built from checked parts.

pub mod dr;
pub mod grpc;
pub mod io;
pub mod route;
pub mod security;
pub mod serve;
pub mod stats;
pub mod telemetry;
pub mod trace;
pub mod vs;
