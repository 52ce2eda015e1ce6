//! The ringmesh node proxy.
#![forbid(unsafe_code)]
pub mod config;
pub mod identity;
