//! HBONE request wire types: parse and encode, no I/O.
//!
//! Everything here takes text a peer sent and either returns a validated value or an
//! [`Error::Wire`](crate::Error::Wire) naming the field, the value (truncated) and the problem;
//! nothing panics on any input (fuzzed by `fuzz/`, target `wire_parse`, whose corpus also
//! runs as a plain test). Every type that parses also encodes, and encoding then parsing gives
//! the same value back.

mod authority;
mod forwarded;
pub mod frame;
pub mod fuzz;
mod request;
mod status;
mod trace;

pub use authority::Authority;
pub use forwarded::{Forwarded, ForwardedElement, Node, NodeName, NodePort};
pub use request::{BAGGAGE, ConnectRequest, FORWARDED, TRACEPARENT};
pub use status::Status;
pub use trace::{BAGGAGE_MAX_BYTES, BAGGAGE_MAX_MEMBERS, Baggage, BaggageMember, TraceParent};
