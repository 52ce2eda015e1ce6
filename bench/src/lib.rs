//! bench: ringmesh side by side with sidecar Envoy.
#![forbid(unsafe_code)]
