//! One load run: start one worker per core, give each its share of the slots, drive every
//! slot closed- or open-loop until the run's bounds, then merge the workers' stats.
//!
//! Invariants:
//! - Bounded: a slot stops at `--requests` (its share), at the end of the duration, and in
//!   any case at the hard end (end + request timeout), checked before every request; every
//!   request is bounded by the request timeout. The control thread waits for workers with a
//!   deadline derived from the same bounds.
//! - Latency is measured from the intended send time in open loop (wrk2's coordinated-
//!   omission correction) and from the actual send time in closed loop.
//! - Requests intended (open loop) or sent (closed loop) before the warm-up ends are not
//!   counted anywhere.
//! - One `Instant::now()` per request on the closed-loop path: the completion time of one
//!   request is the send time of the next.

use std::cell::{Cell, OnceCell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{Either, select};
use runtime::{RuntimeConfig, Worker};

use crate::Error;
use crate::client::bulk::{self, BulkSink};
use crate::client::{Client, ClientConfig, Group, IoTally, Mode};
use crate::progress::{Progress, ProgressShard};
use crate::report::{Report, RunInfo};
use crate::schedule::{Arrival, Schedule, is_late};
use crate::stats::{ErrorKind, WorkerStats};

/// After a failed connect in closed loop, a slot waits this long before trying again, so a
/// dead target is not hammered with a SYN flood at full CPU; every attempt still counts as a
/// failed request.
const CONNECT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Everything that defines one run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub client: ClientConfig,
    /// Label for reports (the URL or address as given).
    pub target_label: String,
    /// Connections across all workers.
    pub connections: usize,
    /// Concurrent streams per connection (HTTP/2); 1 otherwise.
    pub streams: usize,
    /// Open-loop target rate; `None` = closed loop.
    pub rate: Option<f64>,
    pub arrival: Arrival,
    /// Measured duration (after warm-up).
    pub duration: Option<Duration>,
    /// Total requests to complete (measured; warm-up requests come on top).
    pub requests: Option<u64>,
    pub warmup: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    pub runtime: RuntimeConfig,
    /// Print a progress line on stderr every second.
    pub progress: bool,
    pub seed: u64,
}

/// The merged result of a run.
#[derive(Debug)]
pub struct RunOutcome {
    pub report: Report,
    pub stats: WorkerStats,
    pub started_at: SystemTime,
}

struct WorkerResult {
    stats: WorkerStats,
    measured: Duration,
    started_at: SystemTime,
}

/// The slice of the run one worker drives.
#[derive(Clone, Debug)]
struct Share {
    /// Global index of this worker's first slot.
    first_slot: usize,
    connections: usize,
}

/// Runs the load and returns the merged report.
pub fn run(spec: &LoadSpec) -> Result<RunOutcome, Error> {
    if spec.connections == 0 || spec.streams == 0 {
        return Err(Error::Invalid {
            what: "connections",
            detail: "need at least one connection and stream".into(),
        });
    }
    if spec.duration.is_none() && spec.requests.is_none() {
        return Err(Error::Invalid {
            what: "bounds",
            detail: "give --duration and/or --requests".into(),
        });
    }
    let planned = planned_cores(&spec.runtime)?;
    let workers = planned.min(spec.connections);
    let mut cfg = spec.runtime.clone();
    if let runtime::Cores::Count(_) | runtime::Cores::All = cfg.cores {
        cfg.cores = runtime::Cores::Count(workers);
    } else if let runtime::Cores::List(ids) = &cfg.cores {
        cfg.cores = runtime::Cores::List(ids[..workers].to_vec());
    }
    let shares: Vec<Share> = {
        let mut v = Vec::with_capacity(workers);
        let mut first = 0;
        for i in 0..workers {
            let c = spec.connections / workers + usize::from(i < spec.connections % workers);
            v.push(Share {
                first_slot: first * spec.streams,
                connections: c,
            });
            first += c;
        }
        v
    };
    let progress = Progress::new(workers);
    let (tx, rx) = mpsc::channel::<(usize, WorkerResult)>();
    let spec_w = spec.clone();
    let progress_w = progress.clone();
    let rt = runtime::launch::<(), _, _>(&cfg, move |worker: Worker<()>| {
        let spec = spec_w.clone();
        let share = shares[worker.index()].clone();
        let progress = progress_w.clone();
        let tx = tx.clone();
        Ok(async move {
            let index = worker.index();
            let result = run_worker(&spec, &share, progress, index, worker.driver()).await;
            let _ = tx.send((index, result));
        })
    })
    .map_err(|e| Error::Runtime(e.to_string()))?;
    let driver = rt.driver().map(|d| d.to_string()).unwrap_or_default();

    let began = Instant::now();
    // Upper bound on how long the workers can take: warm-up + duration (or, for request-
    // bounded runs, a generous per-request allowance) + the hard-end grace + start-up slack.
    let budget = spec.warmup
        + spec.duration.unwrap_or(Duration::from_secs(3600))
        + spec.timeout * 2
        + Duration::from_secs(10);
    let mut results: Vec<Option<WorkerResult>> = (0..workers).map(|_| None).collect();
    let mut got = 0;
    let mut last = (Instant::now(), 0u64);
    while got < workers {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((i, r)) => {
                results[i] = Some(r);
                got += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if began.elapsed() > budget {
                    rt.drain(Duration::ZERO);
                    return Err(Error::Runtime(format!(
                        "workers did not finish within {budget:?}"
                    )));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if spec.progress && last.0.elapsed() >= Duration::from_secs(1) {
            let (req, err) = progress.totals();
            let dt = last.0.elapsed().as_secs_f64();
            eprintln!(
                "[{:>6.1}s] {req} requests, {:.0} req/s, {err} errors",
                began.elapsed().as_secs_f64(),
                (req - last.1) as f64 / dt
            );
            last = (Instant::now(), req);
        }
    }
    rt.join().map_err(|e| Error::Runtime(e.to_string()))?;

    let mut merged = WorkerStats::default();
    let mut measured = Duration::ZERO;
    let mut started_at = None;
    for (i, r) in results.iter().enumerate() {
        let r = r
            .as_ref()
            .ok_or_else(|| Error::Runtime(format!("worker {i} ended without a result")))?;
        merged.merge(&r.stats)?;
        measured = measured.max(r.measured);
        started_at.get_or_insert(r.started_at);
    }
    let info = RunInfo {
        mode: spec.client.mode.name().to_string(),
        target: spec.target_label.clone(),
        target_rps: spec.rate,
        arrival: spec.rate.map(|_| spec.arrival.as_str().to_string()),
        connections: spec.connections,
        streams: spec.streams,
        cores: workers,
        driver,
        warmup: spec.warmup,
        measured,
        started_at,
    };
    let report = Report::new(&info, &merged);
    Ok(RunOutcome {
        report,
        stats: merged,
        started_at: started_at.unwrap_or_else(SystemTime::now),
    })
}

fn planned_cores(cfg: &RuntimeConfig) -> Result<usize, Error> {
    Ok(match &cfg.cores {
        runtime::Cores::Count(n) => *n,
        runtime::Cores::List(v) => v.len(),
        runtime::Cores::All => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}

/// Shared per-worker state of the slots.
struct WorkerCtx {
    spec: LoadSpec,
    stats: RefCell<WorkerStats>,
    progress: Progress,
    index: usize,
    /// When `run_worker` began (only to report a late start).
    created: Instant,
    /// The run's clock, started by the first slot that runs: the window then begins when
    /// load begins, however late the event loop first polls the slots.
    window: OnceCell<Window>,
    last_done: Cell<Option<Instant>>,
}

/// The time frame of one worker's run.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    started_at: SystemTime,
    measure_start: Instant,
    end: Option<Instant>,
    hard_end: Option<Instant>,
}

impl WorkerCtx {
    fn shard(&self) -> &ProgressShard {
        self.progress.shard(self.index)
    }

    fn window(&self) -> Window {
        *self.window.get_or_init(|| {
            let start = Instant::now();
            let late = start - self.created;
            if late > Duration::from_millis(100) {
                tracing::warn!(
                    worker = self.index,
                    ?late,
                    "slots first ran late; the run starts now"
                );
            }
            let measure_start = start + self.spec.warmup;
            let end = self.spec.duration.map(|d| measure_start + d);
            Window {
                start,
                started_at: SystemTime::now() + self.spec.warmup,
                measure_start,
                end,
                hard_end: end.map(|e| e + self.spec.timeout),
            }
        })
    }

    fn done_at(&self, t: Instant) {
        if self.last_done.get().is_none_or(|l| t > l) {
            self.last_done.set(Some(t));
        }
    }
}

/// Open-loop parameters of one slot (its schedule starts with the run's clock).
#[derive(Clone, Copy, Debug)]
struct SlotRate {
    rate: f64,
    phase: f64,
    arrival: Arrival,
    seed: u64,
}

async fn run_worker(
    spec: &LoadSpec,
    share: &Share,
    progress: Progress,
    index: usize,
    driver: runtime::DriverKind,
) -> WorkerResult {
    let ctx = Rc::new(WorkerCtx {
        spec: spec.clone(),
        stats: RefCell::new(WorkerStats::default()),
        progress,
        index,
        created: Instant::now(),
        window: OnceCell::new(),
        last_done: Cell::new(None),
    });
    let total_slots = spec.connections * spec.streams;
    let mut slots = Vec::with_capacity(share.connections * spec.streams);
    for c in 0..share.connections {
        let group = Group::for_mode(&spec.client);
        for s in 0..spec.streams {
            let slot = share.first_slot + c * spec.streams + s;
            let client = Client::new(
                &spec.client,
                group.as_ref(),
                driver == runtime::DriverKind::IoUring,
            );
            let quota = spec.requests.map(|r| {
                r / total_slots as u64 + u64::from((slot as u64) < r % total_slots as u64)
            });
            let schedule = spec.rate.map(|rate| SlotRate {
                rate: rate / total_slots as f64,
                phase: slot as f64 / total_slots as f64,
                arrival: spec.arrival,
                seed: spec.seed ^ slot as u64,
            });
            if let Mode::TcpBulk { chunk, download } = spec.client.mode {
                slots.push(runtime::spawn(run_bulk_slot(
                    ctx.clone(),
                    chunk,
                    download,
                    quota,
                )));
            } else {
                slots.push(runtime::spawn(run_slot(
                    ctx.clone(),
                    client,
                    schedule,
                    quota,
                )));
            }
        }
    }
    // One task per slot: a task is polled only when its own socket or timer wakes it.
    for slot in slots {
        if let Err(e) = slot.await {
            // A slot that died took its in-flight request with it: count it, say why.
            tracing::error!(worker = index, error = ?e, "load slot task failed");
            ctx.stats.borrow_mut().err(ErrorKind::Other);
        }
    }
    let stats = ctx.stats.replace(WorkerStats::default());
    ctx.shard().publish(stats.requests, stats.errors.total());
    let w = ctx.window();
    let last = ctx.last_done.get().unwrap_or(w.measure_start);
    let until = match w.end {
        Some(e) => e.min(last),
        None => last,
    };
    WorkerResult {
        stats,
        measured: until.saturating_duration_since(w.measure_start),
        started_at: w.started_at,
    }
}

async fn run_slot(
    ctx: Rc<WorkerCtx>,
    mut client: Client,
    rate: Option<SlotRate>,
    quota: Option<u64>,
) {
    let w = ctx.window();
    let mut schedule = rate.map(|r| Schedule::new(w.start, r.rate, r.phase, r.arrival, r.seed));
    let mut done_measured: u64 = 0;
    let mut now = Instant::now();
    let mut watchdog = Watchdog::new(ctx.spec.timeout, now);
    loop {
        if quota.is_some_and(|q| done_measured >= q) {
            break;
        }
        if w.hard_end.is_some_and(|h| now >= h) {
            break;
        }
        let intended = match schedule.as_mut() {
            Some(s) => {
                let t = s.next_send();
                if w.end.is_some_and(|e| t >= e) {
                    break;
                }
                if t > now {
                    runtime::time::sleep(t - now).await;
                    now = Instant::now();
                }
                t
            }
            None => {
                if w.end.is_some_and(|e| now >= e) {
                    break;
                }
                now
            }
        };
        let sent_at = now;
        let mut io = IoTally::default();
        let res = {
            let exchange = pin!(client.exchange(&mut io));
            watchdog.exchange(exchange, sent_at).await
        };
        if res == Err(ErrorKind::Timeout) {
            client.abort();
        }
        now = Instant::now();
        let measured = intended >= w.measure_start;
        if measured {
            done_measured += 1;
            let mut st = ctx.stats.borrow_mut();
            st.bytes_sent += io.sent;
            st.bytes_received += io.received;
            st.connects += io.connects;
            if schedule.is_some() && is_late(intended, sent_at) {
                st.late_sends += 1;
            }
            match res {
                Ok(()) => st.ok(now - intended),
                Err(kind) => st.err(kind),
            }
            ctx.shard().publish(st.requests, st.errors.total());
            drop(st);
            ctx.done_at(now);
        }
        if schedule.is_none()
            && matches!(
                res,
                Err(ErrorKind::ConnectRefused | ErrorKind::ConnectTimeout)
            )
        {
            runtime::time::sleep(CONNECT_ERROR_BACKOFF).await;
            now = Instant::now();
        }
    }
}

impl BulkSink for WorkerCtx {
    fn chunk(&self, latency: Duration, sent: u64, received: u64) {
        let now = Instant::now();
        if now < self.window().measure_start {
            return;
        }
        let mut st = self.stats.borrow_mut();
        st.bytes_sent += sent;
        st.bytes_received += received;
        st.ok(latency);
        self.shard().publish(st.requests, st.errors.total());
        self.done_at(now);
    }

    fn received(&self, n: u64) {
        if Instant::now() >= self.window().measure_start {
            self.stats.borrow_mut().bytes_received += n;
        }
    }

    fn error(&self, kind: ErrorKind) {
        if Instant::now() >= self.window().measure_start {
            let mut st = self.stats.borrow_mut();
            st.err(kind);
            self.shard().publish(st.requests, st.errors.total());
        }
    }
}

/// A bulk-streaming slot: connect (retrying after failures until the end), then stream.
async fn run_bulk_slot(ctx: Rc<WorkerCtx>, chunk: usize, download: bool, quota: Option<u64>) {
    let w = ctx.window();
    loop {
        let now = Instant::now();
        if w.end.is_some_and(|e| now >= e) {
            return;
        }
        let mut io = IoTally::default();
        match crate::client::connect(
            ctx.spec.client.target,
            ctx.spec.client.connect_timeout,
            &mut io,
        )
        .await
        {
            Ok(s) => {
                if now >= w.measure_start {
                    ctx.stats.borrow_mut().connects += 1;
                }
                bulk::stream(&s, chunk, download, w.end, w.hard_end, quota, &*ctx).await;
                return;
            }
            Err(kind) => {
                ctx.error(kind);
                runtime::time::sleep(CONNECT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Per-slot request timeout without a timer per request: one long-lived sleep per slot. When
/// it fires, a request older than the timeout has timed out; otherwise the sleep is re-armed
/// for the current request's deadline. Requests are far shorter than the timeout, so the
/// timer is touched about once per timeout period instead of twice per request (insert and
/// cancel), which showed in the generator's CPU per request.
struct Watchdog {
    timeout: Duration,
    sleep: Pin<Box<dyn Future<Output = ()>>>,
}

impl Watchdog {
    fn new(timeout: Duration, now: Instant) -> Watchdog {
        Watchdog {
            timeout,
            sleep: Box::pin(runtime::time::sleep_until(now + timeout)),
        }
    }

    /// Runs `exchange` (started at `sent_at`) to completion or until its timeout.
    async fn exchange<F>(
        &mut self,
        mut exchange: Pin<&mut F>,
        sent_at: Instant,
    ) -> Result<(), ErrorKind>
    where
        F: Future<Output = Result<(), ErrorKind>>,
    {
        let deadline = sent_at + self.timeout;
        loop {
            match select(exchange.as_mut(), self.sleep.as_mut()).await {
                Either::Left((res, _)) => return res,
                Either::Right(((), _)) => {
                    let now = Instant::now();
                    // Re-arm for this request's deadline, or a full period ahead once it passed.
                    let next = if now >= deadline {
                        now + self.timeout
                    } else {
                        deadline
                    };
                    self.sleep = Box::pin(runtime::time::sleep_until(next));
                    if now >= deadline {
                        return Err(ErrorKind::Timeout);
                    }
                }
            }
        }
    }
}

/// Resolves `host:port` and checks the loopback rule.
pub fn resolve_target(addr: &str, allow_remote: bool) -> Result<SocketAddr, Error> {
    use std::net::ToSocketAddrs;
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Error::Invalid {
            what: "target address",
            detail: format!("{addr:?}: {e}"),
        })?
        .collect();
    let first = *resolved.first().ok_or_else(|| Error::Invalid {
        what: "target address",
        detail: format!("{addr:?} resolved to nothing"),
    })?;
    if !allow_remote && !resolved.iter().all(|a| a.ip().is_loopback()) {
        return Err(Error::RemoteTarget(addr.to_string()));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_rule() {
        assert!(resolve_target("127.0.0.1:80", false).is_ok());
        assert!(resolve_target("[::1]:80", false).is_ok());
        assert!(matches!(
            resolve_target("10.1.2.3:80", false),
            Err(Error::RemoteTarget(_))
        ));
        assert!(resolve_target("10.1.2.3:80", true).is_ok());
        assert!(matches!(
            resolve_target("nonsense", false),
            Err(Error::Invalid { .. })
        ));
    }
}
