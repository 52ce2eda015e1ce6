//! HBONE: the mTLS + HTTP/2 CONNECT tunnel between node proxies (Istio ambient's wire protocol).
//!
//! Layers, bottom up (STYLE.md "protocol code in three layers"):
//! - [`identity`]: SPIFFE identities and how they are read from certificates.
//! - [`tls`]: rustls client/server configs that authenticate peers by SPIFFE identity.
//! - [`wire`]: HBONE request fields (authority, `forwarded`, `baggage`, `traceparent`) and
//!   response statuses; parse and encode with no I/O.
//! - [`certs`]: development CA and leaf certificates (tests, demo, bench) and PEM loading.
//!
//! This crate knows nothing about workloads, policies or config files.
#![forbid(unsafe_code)]

pub mod certs;
pub mod error;
pub mod identity;
pub mod tls;
pub mod wire;

pub use error::{Error, Result};
pub use identity::Identity;
