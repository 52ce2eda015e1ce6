//! Istio's control-plane protocols, off the data path: the xDS workload API client (Delta
//! ADS), the Istio CA client, and the gRPC plumbing they share.
//!
//! Owns:
//! - [`pb`]: wire types and gRPC stubs generated from ringmesh's own `.proto` files
//!   (`proto/`, written from the wire facts), clients and servers.
//! - [`grpc`]: channels to istiod as ztunnel builds them (https only, TLS 1.3, roots from a
//!   file, inline PEM or the system, optional alternate server name, bearer token re-read
//!   per call, `clusterid`, extra headers).
//! - [`runtime`]: the control runtime, one OS thread with a tokio current-thread runtime.
//! - [`xds`]: the Delta ADS client: subscriptions, ACK/NACK, reconnects, stats, readiness.
//! - [`ca`]: `CreateCertificate` with an optional impersonated identity, and reading the
//!   chain it returns.
//! - [`fetch`]: one-shot HTTP(S) GETs (a waypoint's remote JWKS and OpenID discovery, which
//!   istiod fetches for an Envoy waypoint), bounded in time and size.
//! - [`kube`]: list and watch of Kubernetes objects (a waypoint's L7 config from the
//!   cluster), bounded in time and size, with relists and backoff.
//! - [`zds`]: the in-pod protocol with istio-cni's node agent (pods and their network
//!   namespaces handed over a Unix socket), on its own OS thread.
//!
//! Invariants:
//! - Everything here runs on the control runtime's thread (ZDS on its own thread); nothing
//!   touches a data-path core, and a core never waits on this crate.
//! - The mesh model is not here: resources are decoded into their proto types and handed
//!   to the caller's [`xds::Handler`], which validates them and says which it rejects.
//!   Keys, CSRs and certificate caching are the caller's too.
//! - Nothing a peer sends can panic this crate: sizes are bounded ([`xds::MAX_MESSAGE_BYTES`],
//!   [`xds::MAX_RESOURCE_BYTES`]), decode failures are per-resource rejections, and peer text
//!   is truncated before it enters an error or a log line.
//! - The environment is never read here: callers pass values (the proxy's `main` reads env).
#![forbid(unsafe_code)]

pub mod ca;
pub mod error;
pub mod fetch;
pub mod grpc;
pub mod kube;
pub mod pb;
pub mod runtime;
pub mod xds;
pub mod zds;

pub use error::Error;
