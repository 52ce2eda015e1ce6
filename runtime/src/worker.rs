//! Workers: one pinned thread per core, each running its own compio event loop.
//!
//! Ownership: the control thread holds the [`Runtime`] handle; each worker thread owns its
//! event loop and a [`Worker`] context (`!Send`, passed explicitly to connection tasks).
//! The only state reached from several threads has its own type: [`Shutdown`] (one per
//! runtime, atomics plus an event) and each worker's message channel.
//!
//! Lifecycle: `launch` starts every worker and returns only when all of them have run their
//! `init` (which binds listeners), so a bad address aborts start-up instead of leaving a
//! half-started process. `Shutdown::drain` makes every `serve` loop stop accepting; each
//! worker then waits for its live connections until the drain deadline, returns, and drops
//! its event loop, which closes whatever was still open.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_util::future::{Either, select};

use crate::driver::{self, DriverChoice, DriverKind};
use crate::net::{TcpListener, TcpStream};

/// Errors starting or stopping the workers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("worker {index} (core {core:?}) failed to start: {source}")]
    WorkerStart {
        index: usize,
        core: Option<usize>,
        #[source]
        source: io::Error,
    },
    #[error("could not spawn worker thread {index}: {source}")]
    Spawn {
        index: usize,
        #[source]
        source: io::Error,
    },
    #[error("worker {0} panicked")]
    WorkerPanicked(usize),
    #[error("invalid core set: {0}")]
    Cores(String),
    #[error("signal handling: {0}")]
    Signals(io::Error),
}

/// Which cores to run on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cores {
    /// One worker per available core.
    #[default]
    All,
    /// This many workers, pinned to the first cores.
    Count(usize),
    /// One worker pinned to each listed core id.
    List(Vec<usize>),
}

impl FromStr for Cores {
    type Err = String;

    /// `"all"`, a count (`"2"`) or a comma-separated list of core ids (`"0,1"`; `"1,"` is
    /// core 1 alone).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "all" {
            return Ok(Cores::All);
        }
        if !s.contains(',') {
            let n: usize = s
                .parse()
                .map_err(|_| format!("{s:?} is neither a core count nor a list like 0,1"))?;
            if n == 0 {
                return Err("core count must be at least 1".into());
            }
            return Ok(Cores::Count(n));
        }
        let mut ids = Vec::new();
        // "1," is a list of one core (core 1), not a count.
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let id: usize = part
                .trim()
                .parse()
                .map_err(|_| format!("{part:?} in core list {s:?} is not a core id"))?;
            if ids.contains(&id) {
                return Err(format!("core {id} is listed twice in {s:?}"));
            }
            ids.push(id);
        }
        Ok(Cores::List(ids))
    }
}

impl Cores {
    /// The core each worker is pinned to (`None`: not pinned, when the machine's core ids
    /// cannot be read or there are more workers than cores).
    fn plan(&self) -> Result<Vec<Option<usize>>, Error> {
        let available: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        match self {
            Cores::All => Ok(if available.is_empty() {
                vec![None]
            } else {
                available.into_iter().map(Some).collect()
            }),
            Cores::Count(n) => Ok((0..*n).map(|i| available.get(i).copied()).collect()),
            Cores::List(ids) => {
                for id in ids {
                    if !available.is_empty() && !available.contains(id) {
                        return Err(Error::Cores(format!(
                            "core {id} is not available to this process (available: {available:?})"
                        )));
                    }
                }
                Ok(ids.iter().copied().map(Some).collect())
            }
        }
    }
}

/// How to start the workers.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub cores: Cores,
    pub driver: DriverChoice,
}

/// What the control thread knows about a running worker.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub index: usize,
    /// The core this worker's thread is pinned to; `None` when it is not pinned (no core
    /// planned, or pinning failed).
    pub core: Option<usize>,
    pub driver: DriverKind,
}

/// The process-wide drain signal, shared by the control thread and every worker.
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Debug)]
struct ShutdownInner {
    draining: AtomicBool,
    /// Drain deadline in milliseconds after `epoch`.
    deadline_ms: AtomicU64,
    epoch: Instant,
    event: Event,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            inner: Arc::new(ShutdownInner {
                draining: AtomicBool::new(false),
                deadline_ms: AtomicU64::new(u64::MAX),
                epoch: Instant::now(),
                event: Event::new(),
            }),
        }
    }
}

impl Shutdown {
    /// Starts a graceful drain: listeners stop accepting, live connections get until
    /// `deadline` from now to finish. A second call can only bring the deadline closer.
    pub fn drain(&self, deadline: Duration) {
        let at = (self.inner.epoch.elapsed() + deadline).as_millis() as u64;
        self.inner.deadline_ms.fetch_min(at, Ordering::AcqRel);
        self.inner.draining.store(true, Ordering::Release);
        self.inner.event.notify(usize::MAX);
    }

    /// From now on, SIGTERM or SIGINT starts a drain with `deadline`; a second signal exits
    /// the process at once with status 130.
    pub fn drain_on_signals(&self, deadline: Duration) -> io::Result<()> {
        let shutdown = self.clone();
        crate::signal::on_terminate(move |count| {
            if count == 1 {
                tracing::info!(?deadline, "signal received, draining");
                shutdown.drain(deadline);
            } else {
                tracing::warn!("second signal, exiting now");
                std::process::exit(130);
            }
        })
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// When live connections will be closed; `None` before a drain starts.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.is_draining() {
            return None;
        }
        let ms = self.inner.deadline_ms.load(Ordering::Acquire);
        Some(self.inner.epoch + Duration::from_millis(ms))
    }

    /// Resolves once a drain has started.
    pub async fn draining(&self) {
        loop {
            if self.is_draining() {
                return;
            }
            let listener = self.inner.event.listen();
            if self.is_draining() {
                return;
            }
            listener.await;
        }
    }
}

/// The per-core context: cheap to clone, never leaves its thread.
pub struct Worker<M> {
    inner: Rc<WorkerInner<M>>,
}

impl<M> Clone for Worker<M> {
    fn clone(&self) -> Self {
        Worker {
            inner: self.inner.clone(),
        }
    }
}

struct WorkerInner<M> {
    info: WorkerInfo,
    messages: async_channel::Receiver<M>,
    shutdown: Shutdown,
    live: Cell<usize>,
    /// Notified whenever a live connection ends.
    conn_ended: Event,
}

impl<M> std::fmt::Debug for Worker<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("info", &self.inner.info)
            .field("live", &self.inner.live.get())
            .finish()
    }
}

/// Decrements the live-connection count when a connection task ends (or is dropped).
struct LiveGuard<M> {
    worker: Rc<WorkerInner<M>>,
}

impl<M> Drop for LiveGuard<M> {
    fn drop(&mut self) {
        self.worker.live.set(self.worker.live.get() - 1);
        self.worker.conn_ended.notify(usize::MAX);
    }
}

impl<M: 'static> Worker<M> {
    /// A worker context for code that runs its own event loop (tests, tools); `launch` makes
    /// the real ones.
    pub fn standalone(
        index: usize,
        driver: DriverKind,
        shutdown: Shutdown,
    ) -> (Worker<M>, async_channel::Sender<M>) {
        let (tx, rx) = async_channel::unbounded();
        let worker = Worker {
            inner: Rc::new(WorkerInner {
                info: WorkerInfo {
                    index,
                    core: None,
                    driver,
                },
                messages: rx,
                shutdown,
                live: Cell::new(0),
                conn_ended: Event::new(),
            }),
        };
        (worker, tx)
    }

    pub fn index(&self) -> usize {
        self.inner.info.index
    }

    pub fn core(&self) -> Option<usize> {
        self.inner.info.core
    }

    pub fn driver(&self) -> DriverKind {
        self.inner.info.driver
    }

    /// Messages from the control thread for this core (config snapshots, certificates).
    pub fn messages(&self) -> &async_channel::Receiver<M> {
        &self.inner.messages
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }

    /// Connections accepted on this core and not yet finished.
    pub fn live_connections(&self) -> usize {
        self.inner.live.get()
    }

    /// Spawns a detached task counted as a live connection until it ends; drain waits for
    /// it up to the deadline.
    pub fn spawn_conn<F: Future<Output = ()> + 'static>(&self, fut: F) {
        self.inner.live.set(self.inner.live.get() + 1);
        let guard = LiveGuard {
            worker: self.inner.clone(),
        };
        // `map`, not an `async` block awaiting `fut`: the block would hold `fut` twice (see
        // `coop::budgeted`). The guard drops when `fut` completes, or with it.
        let fut = futures_util::FutureExt::map(fut, move |()| drop(guard));
        compio::runtime::spawn(crate::coop::budgeted(fut)).detach();
    }

    /// Accepts on `listener` until a drain starts, handing each connection to `handler` in
    /// its own tracked task; then waits for this core's live connections to finish, up to
    /// the drain deadline.
    pub async fn serve<H, Fut>(&self, listener: TcpListener, handler: H)
    where
        H: Fn(TcpStream, SocketAddr) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.accept_until(listener, std::future::pending(), handler)
            .await;
        self.wait_idle().await;
    }

    /// Runs [`Worker::accept_until`] in a task of its own: a listener that lives beside
    /// others (a node's per-workload listeners), closed when `stop` completes or the drain
    /// starts.
    pub fn spawn_accept<H, Fut>(
        &self,
        listener: TcpListener,
        stop: impl Future<Output = ()> + 'static,
        handler: H,
    ) where
        H: Fn(TcpStream, SocketAddr) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let w = self.clone();
        crate::spawn(async move { w.accept_until(listener, stop, handler).await }).detach();
    }

    /// The one accept loop: accepts on `listener` until `stop` completes or a drain starts,
    /// handing each connection to `handler` in its own tracked task
    /// ([`Worker::spawn_conn`]); then closes the listener. An accept error from a lack of
    /// descriptors or memory backs off briefly instead of spinning (the connections waiting
    /// in the backlog are kept); accepting yields to other tasks like any busy task
    /// ([`crate::coop`]).
    pub async fn accept_until<H, Fut>(
        &self,
        listener: TcpListener,
        stop: impl Future<Output = ()>,
        handler: H,
    ) where
        H: Fn(TcpStream, SocketAddr) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let local = listener.local_addr().ok();
        let mut stop = pin!(stop);
        loop {
            let accepted = {
                let accept = pin!(listener.accept());
                let drain = pin!(self.inner.shutdown.draining());
                let end = pin!(select(stop.as_mut(), drain));
                match select(accept, end).await {
                    Either::Left((res, _)) => res,
                    Either::Right(_) => break,
                }
            };
            match accepted {
                Ok((stream, peer)) => self.spawn_conn(handler(stream, peer)),
                Err(e) => {
                    tracing::warn!(listener = ?local, error = %e, "accept failed");
                    let pause = if is_resource_exhaustion(&e) { 50 } else { 5 };
                    compio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
        drop(listener);
        tracing::debug!(listener = ?local, live = self.live_connections(), "stopped accepting");
    }

    /// Waits until no connection is live on this core, or the drain deadline passes.
    pub async fn wait_idle(&self) {
        loop {
            if self.inner.live.get() == 0 {
                return;
            }
            let listener = self.inner.conn_ended.listen();
            if self.inner.live.get() == 0 {
                return;
            }
            match self.inner.shutdown.deadline() {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        tracing::info!(
                            worker = self.index(),
                            live = self.inner.live.get(),
                            "drain deadline passed, closing live connections"
                        );
                        return;
                    }
                    let _ = compio::time::timeout(deadline - now, listener).await;
                }
                None => listener.await,
            }
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Sends control-plane messages to every worker; see [`Runtime::broadcaster`].
pub struct Broadcaster<M> {
    senders: Arc<[async_channel::Sender<M>]>,
}

impl<M> Clone for Broadcaster<M> {
    fn clone(&self) -> Self {
        Broadcaster {
            senders: self.senders.clone(),
        }
    }
}

impl<M> std::fmt::Debug for Broadcaster<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcaster")
            .field("workers", &self.senders.len())
            .finish()
    }
}

impl<M: Clone> Broadcaster<M> {
    /// Sends `msg` to every worker (unbounded queues: the control plane never blocks on a
    /// busy core, and its messages are rare).
    pub fn send(&self, msg: M) {
        for tx in self.senders.iter() {
            let _ = tx.try_send(msg.clone());
        }
    }
}

/// The control thread's handle on the running workers.
pub struct Runtime<M> {
    workers: Vec<WorkerInfo>,
    threads: Vec<JoinHandle<()>>,
    senders: Vec<async_channel::Sender<M>>,
    shutdown: Shutdown,
}

impl<M> std::fmt::Debug for Runtime<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.workers)
            .finish()
    }
}

/// Starts one worker per planned core and runs `init` on each, inside its event loop.
///
/// `init` binds what the worker serves and returns the worker's main future; an `Err` from
/// any worker stops the others and is returned, naming the worker.
pub fn launch<M, F, Fut>(config: &RuntimeConfig, init: F) -> Result<Runtime<M>, Error>
where
    M: Send + 'static,
    F: Fn(Worker<M>) -> io::Result<Fut> + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    launch_with(config, Shutdown::default(), init)
}

/// [`launch`] with a drain signal made beforehand, so that signal handlers can be in place
/// before any listener exists (see [`Shutdown::drain_on_signals`]).
pub fn launch_with<M, F, Fut>(
    config: &RuntimeConfig,
    shutdown: Shutdown,
    init: F,
) -> Result<Runtime<M>, Error>
where
    M: Send + 'static,
    F: Fn(Worker<M>) -> io::Result<Fut> + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let plan = config.cores.plan()?;
    let init = Arc::new(init);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<WorkerInfo, Error>>();
    let mut threads = Vec::with_capacity(plan.len());
    let mut senders = Vec::with_capacity(plan.len());
    for (index, core) in plan.iter().copied().enumerate() {
        let (tx, rx) = async_channel::unbounded::<M>();
        senders.push(tx);
        let init = init.clone();
        let ready = ready_tx.clone();
        let shutdown = shutdown.clone();
        let driver_choice = config.driver;
        let thread = std::thread::Builder::new()
            .name(format!("ringmesh-w{index}"))
            .spawn(move || {
                // A worker that could not be pinned reports no core: nothing may assume it
                // runs there (listener steering would send it the wrong core's connections).
                let pinned = core.filter(|&core| {
                    let ok = core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    if !ok {
                        tracing::warn!(worker = index, core, "could not pin worker to its core");
                    }
                    ok
                });
                let fail = |source: io::Error| Error::WorkerStart {
                    index,
                    core,
                    source,
                };
                let (rt, driver) = match driver::build(driver_choice) {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready.send(Err(fail(e)));
                        return;
                    }
                };
                let info = WorkerInfo {
                    index,
                    core: pinned,
                    driver,
                };
                let worker = Worker {
                    inner: Rc::new(WorkerInner {
                        info: info.clone(),
                        messages: rx,
                        shutdown,
                        live: Cell::new(0),
                        conn_ended: Event::new(),
                    }),
                };
                let main = match rt.enter(|| init(worker)) {
                    Ok(main) => main,
                    Err(e) => {
                        let _ = ready.send(Err(fail(e)));
                        return;
                    }
                };
                let _ = ready.send(Ok(info));
                drop(ready);
                // compio polls the future it blocks on at every turn of its loop, woken or
                // not. So the worker's main future runs as a task, polled only when woken:
                // an accept loop in it cost an accept4 syscall per completion otherwise.
                // Dropping the runtime at the end cancels and closes whatever outlived the
                // drain.
                driver::block_on(rt, async move {
                    if let Err(e) = crate::spawn(main).await {
                        e.resume_unwind();
                    }
                });
            })
            .map_err(|source| Error::Spawn { index, source })?;
        threads.push(thread);
    }
    drop(ready_tx);

    let mut workers = Vec::with_capacity(plan.len());
    let mut first_error = None;
    for _ in 0..plan.len() {
        match ready_rx.recv() {
            Ok(Ok(info)) => workers.push(info),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(Error::WorkerPanicked(workers.len()));
                break;
            }
        }
    }
    let runtime = Runtime {
        workers,
        threads,
        senders,
        shutdown,
    };
    if let Some(e) = first_error {
        runtime.shutdown.drain(Duration::ZERO);
        let _ = runtime.join();
        return Err(e);
    }
    runtime.workers_started();
    Ok(runtime)
}

impl<M> Runtime<M> {
    fn workers_started(&self) {
        for w in &self.workers {
            tracing::info!(worker = w.index, core = ?w.core, driver = %w.driver, "worker started");
        }
    }

    /// The running workers, in index order of start-up reports.
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// The driver most workers run (they all run the same one unless some fell back).
    pub fn driver(&self) -> Option<DriverKind> {
        self.workers.first().map(|w| w.driver)
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Sends `msg` to every worker.
    pub fn broadcast(&self, msg: M)
    where
        M: Clone,
    {
        for tx in &self.senders {
            let _ = tx.try_send(msg.clone());
        }
    }

    /// A cloneable, `Send` handle that broadcasts to every worker (for control-plane threads
    /// such as a config watcher or the identity manager).
    pub fn broadcaster(&self) -> Broadcaster<M> {
        Broadcaster {
            senders: self.senders.clone().into(),
        }
    }

    /// Starts a graceful drain (see [`Shutdown::drain`]).
    pub fn drain(&self, deadline: Duration) {
        self.shutdown.drain(deadline);
    }

    /// Waits for every worker thread to end.
    pub fn join(self) -> Result<(), Error> {
        let mut result = Ok(());
        for (index, t) in self.threads.into_iter().enumerate() {
            if t.join().is_err() && result.is_ok() {
                result = Err(Error::WorkerPanicked(index));
            }
        }
        result
    }

    /// Runs until SIGTERM or SIGINT, then drains with `drain` as the deadline and returns
    /// when every worker has ended. A second signal exits the process at once (status 130).
    /// (Prefer [`Shutdown::drain_on_signals`] before [`launch_with`]: no window in which a
    /// signal would kill the process outright.)
    pub fn run_until_signal(self, drain: Duration) -> Result<(), Error> {
        self.shutdown
            .drain_on_signals(drain)
            .map_err(Error::Signals)?;
        self.join()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_core_sets() {
        assert_eq!("2".parse::<Cores>().unwrap(), Cores::Count(2));
        assert_eq!("0,1".parse::<Cores>().unwrap(), Cores::List(vec![0, 1]));
        assert_eq!("1,".parse::<Cores>().unwrap(), Cores::List(vec![1]));
        assert_eq!("all".parse::<Cores>().unwrap(), Cores::All);
        assert!("0".parse::<Cores>().unwrap_err().contains("at least 1"));
        assert!("0,x".parse::<Cores>().unwrap_err().contains("\"x\""));
        assert!("1,1".parse::<Cores>().unwrap_err().contains("twice"));
    }

    #[test]
    fn unknown_core_is_refused() {
        let err = Cores::List(vec![4096]).plan().unwrap_err();
        assert!(err.to_string().contains("4096"), "{err}");
    }

    #[test]
    fn drain_deadline_only_moves_closer() {
        let s = Shutdown::default();
        assert!(s.deadline().is_none());
        s.drain(Duration::from_secs(60));
        let first = s.deadline().unwrap();
        s.drain(Duration::from_secs(600));
        assert_eq!(s.deadline().unwrap(), first);
        s.drain(Duration::ZERO);
        assert!(s.deadline().unwrap() < first);
    }
}
