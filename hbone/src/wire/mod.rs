//! HBONE request wire types: parse and encode, no I/O.
//!
//! Everything here takes bytes or strings a peer sent and either returns a validated value or an
//! [`Error::Wire`](crate::Error::Wire) naming the field and the problem; nothing panics on any
//! input (fuzzed by `hbone/fuzz`, target `wire_parse`).

mod status;

pub use status::Status;
