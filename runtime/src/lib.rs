//! The ringmesh runtime: one pinned compio event loop per core, `SO_REUSEPORT` listeners,
//! the per-core [`Worker`] context, and the TCP relay (splice zero-copy or buffered).
//!
//! What this crate owns and promises:
//! - Threads: one worker thread per planned core, pinned, each with its own event loop
//!   (io_uring, or epoll when io_uring cannot start or is not wanted). No work item ever
//!   moves between cores; the control thread talks to workers only by message.
//! - The loop: a turn runs the tasks woken during it, round after round (at most
//!   eight rounds), before it polls the ring; its end can be waited for ([`turn`]), and
//!   every deadline holds its future once ([`time`]).
//! - Sockets: every socket is non-blocking and driven by readiness on the core that
//!   accepted or dialled it ([`net`]); dropping a pending operation never loses bytes.
//! - Listeners: every core binds the same address with `SO_REUSEPORT`; bound with
//!   [`net::TcpListener::bind_on_core`], the kernel hands each connection to the core that
//!   processed its SYN instead of hashing it.
//! - Namespaces: a socket can be made in another network namespace (a pod's) by stepping
//!   the calling thread in for the one `socket(2)` call ([`netns::Netns::run`]).
//! - Relay: [`relay::relay`] moves bytes between two sockets until both directions ended,
//!   propagating FIN as FIN and RST as RST, and reports byte counts.
//! - Shutdown: a drain stops accepting, lets live connections run to a deadline, then
//!   closes them ([`Shutdown`]).
//!
//! It knows nothing of HTTP, TLS or the mesh. It is the only crate with `unsafe` code, all
//! of it in the private `sys` module.

pub mod alloc;
pub mod coop;
pub mod driver;
pub mod meter;
pub mod net;
pub mod netns;
pub mod relay;
pub mod signal;
mod sys;
mod worker;

pub use compio;
pub use driver::{DriverChoice, DriverKind};
pub use worker::{
    Broadcaster, Cores, Error, Runtime, RuntimeConfig, Shutdown, Worker, WorkerInfo, launch,
    launch_with,
};

pub mod time;
pub mod turn;

/// Spawns a task on the current worker, with a cooperative budget per poll
/// ([`coop`]). A dropped `JoinHandle` cancels the task: call `.detach()` on what must run
/// on.
pub fn spawn<F: std::future::Future + 'static>(fut: F) -> compio::runtime::JoinHandle<F::Output> {
    compio::runtime::spawn(coop::budgeted(fut))
}

/// Runs `fut` to completion on a fresh event loop of the chosen driver on this thread
/// (tests, tools, and code that needs one loop without the worker machinery).
pub fn block_on<F: std::future::Future>(
    driver: DriverChoice,
    fut: F,
) -> std::io::Result<F::Output> {
    let (rt, _) = driver::build(driver)?;
    Ok(driver::block_on(rt, fut))
}
