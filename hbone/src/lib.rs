//! HBONE: the mTLS + HTTP/2 CONNECT tunnel between node proxies (Istio ambient's wire protocol).
//!
//! Layers, bottom up (STYLE.md "protocol code in three layers"):
//! - [`identity`]: SPIFFE identities and how they are read from certificates.
//! - [`tls`]: rustls client/server configs that authenticate peers by SPIFFE identity, and
//!   the mTLS stream HBONE runs on: rustls' handshake, then this crate's own TLS 1.3 record
//!   layer (`tls::record`), which seals from the caller's buffer and opens in place.
//! - [`wire`]: HBONE request fields (authority, `forwarded`, `baggage`, `traceparent`) and
//!   response statuses; parse and encode with no I/O.
//! - [`h2conn`], [`stream`]: HTTP/2 settings and connection driving; one tunnel as a byte
//!   stream; [`window`]: receive-window tuning; [`guard`]: the frame scanner under h2 that
//!   ends control-frame floods and sees the peer's preface arrive.
//! - [`client`], [`server`], [`pool`]: the CONNECT client, the CONNECT server, and the
//!   per-core connection pool.
//! - [`certs`]: development CA and leaf certificates (tests, demo, bench) and PEM loading.
//! - [`error`]: the crate's one error type and its HBONE status classification.
//!
//! This crate knows nothing about workloads, policies or config files.
#![forbid(unsafe_code)]

pub mod certs;
pub mod client;
pub mod error;
pub mod guard;
pub mod h2conn;
pub mod identity;
pub mod pool;
pub mod server;
pub mod stream;
pub mod tls;
pub mod window;
pub mod wire;

pub use error::{Error, Result};
pub use identity::Identity;
