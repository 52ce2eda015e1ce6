//! The ringmesh node proxy.
#![forbid(unsafe_code)]
