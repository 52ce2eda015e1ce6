//! The one connection record every path uses, and the one classification of how a
//! connection ended.
//!
//! Owns: [`ConnRecord`] and [`Conns`] (`record`), [`Outcome`] (`outcome`), and the per-core
//! registry of live connections that the drain deadline and policy changes reach
//! (`live`). Metrics and access lines of connections are written here and nowhere else.

mod live;
mod outcome;
mod record;

pub use live::{AbortReason, Grant, Live};
pub use outcome::{Outcome, ResetBy};
pub use record::{ConnRecord, Conns, Cut, SocketGuard};
