//! The control runtime: one OS thread running a tokio current-thread runtime, where every
//! gRPC channel, stream and timer of this crate lives.
//!
//! Owns: that thread and its runtime. Invariants: the data path (compio cores) never runs
//! on it and never waits on it except through [`ControlRuntime::block_on`] from a non-core
//! thread; tasks spawned here stop when the [`ControlRuntime`] is dropped (the thread is
//! joined); `block_on` from the runtime's own thread is refused rather than deadlocking.

use std::future::Future;
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use tokio::runtime::Handle;

use crate::error::Error;

/// How long a stopping runtime waits for blocking work it started (a DNS lookup for
/// istiod's name runs on tokio's blocking pool). Longer would hold up process shutdown for
/// a resolver that may never answer; the work is abandoned, not corrupted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A tokio current-thread runtime on its own thread. Dropping it stops the runtime (tasks
/// are cancelled at their next await) and joins the thread.
#[derive(Debug)]
pub struct ControlRuntime {
    handle: Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl ControlRuntime {
    /// Starts the runtime on a new thread called `name`.
    pub fn start(name: &str) -> Result<ControlRuntime, Error> {
        let start_err = |reason: String| Error::RuntimeStart {
            name: name.to_string(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("{name}-blocking"))
            .build()
            .map_err(|e| start_err(e.to_string()))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Returns when `stop` is sent or dropped.
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(SHUTDOWN_GRACE);
            })
            .map_err(|e| start_err(e.to_string()))?;
        let thread_id = thread.thread().id();
        Ok(ControlRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
            thread_id,
        })
    }

    /// The runtime's handle, for spawning from anywhere.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `future` on the control thread.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// Runs `future` on the control thread and waits for its output on this thread. For
    /// threads that are not async (main, the identity manager's callers): never call it
    /// from a data-path core, which must not block. Refused on the control thread itself.
    pub fn block_on<F>(&self, future: F) -> Result<F::Output, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if std::thread::current().id() == self.thread_id {
            return Err(Error::BlockOnControlThread);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        // A panic in the future or a stopped runtime drops `tx`.
        rx.recv().map_err(|_| Error::RuntimeStopped)
    }
}

impl Drop for ControlRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Dropped by one of its own tasks: the thread ends by itself once this task
            // returns; joining here would wait for ourselves.
            if std::thread::current().id() != self.thread_id {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn runs_blocks_on_and_stops_on_drop() {
        let rt = ControlRuntime::start("control-test").unwrap();
        let name = rt
            .block_on(async { std::thread::current().name().map(str::to_string) })
            .unwrap();
        assert_eq!(name.as_deref(), Some("control-test"));
        // Timers work (the runtime drives its own time driver).
        let slept = rt
            .block_on(async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                true
            })
            .unwrap();
        assert!(slept);

        // A task pending forever is cancelled (dropped) when the runtime goes.
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = SetOnDrop(dropped.clone());
        rt.spawn(async move {
            let _g = guard;
            std::future::pending::<()>().await;
        });
        drop(rt);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn block_on_from_the_control_thread_is_refused() {
        let rt = Arc::new(ControlRuntime::start("control-test-2").unwrap());
        let rt2 = rt.clone();
        let inner = rt
            .block_on(
                async move { matches!(rt2.block_on(async {}), Err(Error::BlockOnControlThread)) },
            )
            .unwrap();
        assert!(inner);
    }

    #[test]
    fn a_panicking_task_is_an_error_not_a_hang() {
        let rt = ControlRuntime::start("control-test-3").unwrap();
        let r: Result<(), Error> = rt.block_on(async {
            panic!("boom");
        });
        assert!(matches!(r, Err(Error::RuntimeStopped)));
    }
}
