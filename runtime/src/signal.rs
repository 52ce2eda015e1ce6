//! Termination signals for the control thread.
//!
//! SIGTERM and SIGINT are turned into calls of a callback on a dedicated thread (never on a
//! worker), with a running count so the caller can treat the second signal differently.

use std::io;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Calls `on_signal(n)` on a background thread for the n-th SIGTERM/SIGINT (n starts at 1).
pub fn on_terminate<F>(mut on_signal: F) -> io::Result<()>
where
    F: FnMut(u32) + Send + 'static,
{
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("ringmesh-signals".into())
        .spawn(move || {
            let mut count = 0;
            for _ in signals.forever() {
                count += 1;
                on_signal(count);
            }
        })?;
    Ok(())
}

/// Asks the kernel to kill this process when the thread that started it exits
/// (`PR_SET_PDEATHSIG` with SIGKILL). For processes that test harnesses and benchmarks start:
/// a harness killed by a signal cannot run its clean-up, and its nodes would otherwise live
/// on holding their ports. Call first thing in `main`, before any thread exists.
pub fn exit_with_parent() -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(io::Error::from)
}
