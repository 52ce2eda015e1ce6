//! The ringmesh node proxy: mesh config and workload registry, identity manager and CA,
//! the outbound, inbound and passthrough paths, the connection record, L4 authorization,
//! Istio metrics and access logs, the admin API, and the `demo`. It holds no protocol framing (that is `hbone`) and no runtime
//! internals (that is `runtime`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod conn;
pub mod demo;
pub mod dns;
pub mod forward;
pub mod identity;
pub mod l7;
pub mod node;
pub mod socks5;
pub mod telemetry;
