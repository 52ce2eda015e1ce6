//! Child processes of a benchmark: every one is registered with a [`Supervisor`] the moment
//! it is spawned, and belongs to exactly one [`Group`].
//!
//! Invariants:
//! - A child is spawned while the registry lock is held, so no child exists unregistered,
//!   and none is spawned after shutdown started (Ctrl-C).
//! - Each child leads its own process group (`setpgid(0)` at spawn), and is stopped with
//!   SIGKILL to the whole group, so a command that forks (a shell template, a wrapper)
//!   leaves nothing behind. Then it is reaped, so no zombie stays either.
//! - A [`Group`] owns a temporary directory (configs, certificates, logs) and may register
//!   undo commands (an iptables rule to delete); dropping the group kills its children,
//!   runs its undo commands and removes the directory. The signal thread does the same for
//!   every group on SIGINT/SIGTERM/SIGHUP and exits with status 130.
//! - Only processes this harness started are ever signalled, and only by their own PID.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::{Error, Result};

/// How often [`Group::wait`] checks whether a child exited. A child's exit has no
/// pollable handle in std, so this bounds the added wait to 10 ms.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Bytes of a child's log shown in an error message: enough for Envoy's last few lines.
const LOG_TAIL_BYTES: u64 = 4096;

/// Tracks every child and temporary directory of the harness. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Supervisor {
    shared: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    children: HashMap<u64, Tracked>,
    dirs: HashMap<u64, PathBuf>,
    /// Commands that undo a group's changes outside its processes (an iptables rule),
    /// run after its children are stopped.
    undo: HashMap<u64, Vec<Vec<String>>>,
    shutting_down: bool,
}

struct Tracked {
    group: u64,
    child: Child,
}

/// A started child: its PID and where its output goes.
#[derive(Debug, Clone)]
pub struct Proc {
    id: u64,
    /// The OS process id.
    pub pid: u32,
    /// What it is, for messages ("envoy client sidecar").
    pub what: String,
    /// stdout and stderr of the child.
    pub log: PathBuf,
}

impl Supervisor {
    /// An empty supervisor with no signal handling (see [`Supervisor::install_signal_handler`]).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves the registry consistent (each operation is
        // a single insert/remove), so a poisoned lock is still safe to use for cleanup.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a thread that, on SIGINT, SIGTERM or SIGHUP, kills every registered child,
    /// removes every temporary directory and exits the process with status 130.
    pub fn install_signal_handler(&self) -> Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(|e| Error::os("installing the signal handler", e))?;
        let sup = self.clone();
        std::thread::Builder::new()
            .name("bench-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let n = sup.shutdown();
                    eprintln!("ringmesh-bench: signal {sig}: stopped {n} processes, cleaned up");
                    std::process::exit(130);
                }
            })
            .map_err(|e| Error::os("starting the signal thread", e))?;
        Ok(())
    }

    /// Kills every child and removes every directory; refuses new spawns from now on.
    /// Returns how many children were stopped.
    pub fn shutdown(&self) -> usize {
        let mut reg = self.lock();
        reg.shutting_down = true;
        let children: Vec<Tracked> = reg.children.drain().map(|(_, t)| t).collect();
        let n = children.len();
        for mut t in children {
            stop_child(&mut t.child);
        }
        for (_, cmds) in reg.undo.drain() {
            run_undo(&cmds);
        }
        for (_, dir) in reg.dirs.drain() {
            let _ = std::fs::remove_dir_all(dir);
        }
        n
    }

    /// Number of children currently registered (alive or not yet reaped).
    pub fn live_children(&self) -> usize {
        self.lock().children.len()
    }

    /// A new group with its own temporary directory, named after `name`.
    pub fn group(&self, name: &str) -> Result<Group> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ringmesh-bench-{name}-"))
            .tempdir()
            .map_err(|e| Error::os("creating a temporary directory", e))?
            .keep();
        let mut reg = self.lock();
        if reg.shutting_down {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::invalid("state", "shutting down"));
        }
        reg.next_id += 1;
        let id = reg.next_id;
        reg.dirs.insert(id, dir.clone());
        Ok(Group {
            sup: self.clone(),
            id,
            dir,
            procs: Vec::new(),
        })
    }
}

/// Runs undo commands in reverse order of registration, ignoring failures (each one is
/// best effort: the thing it undoes may already be gone).
fn run_undo(cmds: &[Vec<String>]) {
    for argv in cmds.iter().rev() {
        if let Some((program, args)) = argv.split_first() {
            let status = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                tracing::warn!(?argv, ?status, "undo command failed");
            }
        }
    }
}

/// SIGKILL to the child's process group (it is the leader), then to the child itself in
/// case it left its group, then reap it.
fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let pid = Pid::from_child(child);
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Processes and a temporary directory that live and die together (one scenario's
/// proxies, one backend, one client run).
pub struct Group {
    sup: Supervisor,
    id: u64,
    dir: PathBuf,
    procs: Vec<Proc>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("dir", &self.dir)
            .field("procs", &self.procs)
            .finish()
    }
}

impl Group {
    /// The group's temporary directory (removed when the group is dropped).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every process started in this group.
    pub fn procs(&self) -> &[Proc] {
        &self.procs
    }

    /// Spawns `cmd` with stdin closed and stdout+stderr into `DIR/<slug>.log`, in a new
    /// process group, registered before the lock is released.
    pub fn spawn(&mut self, what: &str, mut cmd: Command) -> Result<Proc> {
        let slug: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let log = self.dir.join(format!("{slug}-{}.log", self.procs.len()));
        let out = File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let program = cmd.get_program().to_string_lossy().into_owned();
        tracing::debug!(what, ?cmd, "spawn");

        let mut reg = self.sup.lock();
        if reg.shutting_down {
            return Err(Error::invalid("state", "shutting down"));
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            what: what.to_string(),
            program,
            source,
        })?;
        reg.next_id += 1;
        let id = reg.next_id;
        let proc = Proc {
            id,
            pid: child.id(),
            what: what.to_string(),
            log,
        };
        reg.children.insert(
            id,
            Tracked {
                group: self.id,
                child,
            },
        );
        drop(reg);
        self.procs.push(proc.clone());
        Ok(proc)
    }

    /// Runs `apply` (a command that changes something outside the group's processes, like
    /// adding an iptables rule) and registers `undo` to run when the group is dropped or on
    /// Ctrl-C. Both happen under the registry lock, so a concurrent shutdown either sees
    /// the undo registered or stops this change from being made at all.
    pub fn change(&mut self, apply: &[String], undo: Vec<String>) -> Result<()> {
        let mut reg = self.sup.lock();
        if reg.shutting_down {
            return Err(Error::invalid("state", "shutting down"));
        }
        let (program, args) = apply
            .split_first()
            .ok_or_else(|| Error::invalid("command", "empty"))?;
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::os(format!("running {}", apply.join(" ")), e))?;
        if !out.status.success() {
            return Err(Error::invalid(
                "command",
                format!(
                    "`{}` failed ({}): {}",
                    apply.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        reg.undo.entry(self.id).or_default().push(undo);
        Ok(())
    }

    /// `Some(status)` once `proc` has exited (it is then reaped), `None` while it runs.
    pub fn exited(&self, proc: &Proc) -> Option<ExitStatus> {
        let mut reg = self.sup.lock();
        let t = reg.children.get_mut(&proc.id)?;
        t.child.try_wait().ok().flatten()
    }

    /// Waits for `proc` to exit, at most until `deadline`; kills it past the deadline.
    pub fn wait(&self, proc: &Proc, deadline: Instant) -> Result<ExitStatus> {
        loop {
            if let Some(status) = self.exited(proc) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill(proc);
                return Err(Error::Loadgen {
                    what: proc.what.clone(),
                    reason: "did not finish before its deadline (killed)".into(),
                    log: self.log_tail(proc),
                });
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Kills `proc` (and its process group) and reaps it.
    pub fn kill(&self, proc: &Proc) {
        let t = self.sup.lock().children.remove(&proc.id);
        if let Some(mut t) = t {
            stop_child(&mut t.child);
        }
    }

    /// The last few KiB of `proc`'s output, for error messages.
    pub fn log_tail(&self, proc: &Proc) -> String {
        tail(&proc.log, LOG_TAIL_BYTES)
    }
}

/// The last `max` bytes of a file (from a line start when possible), or "" on error.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let mut reg = self.sup.lock();
        let ids: Vec<u64> = reg
            .children
            .iter()
            .filter(|(_, t)| t.group == self.id)
            .map(|(id, _)| *id)
            .collect();
        let mut mine: Vec<Tracked> = ids
            .iter()
            .filter_map(|id| reg.children.remove(id))
            .collect();
        reg.dirs.remove(&self.id);
        let undo = reg.undo.remove(&self.id).unwrap_or_default();
        drop(reg);
        for t in &mut mine {
            stop_child(&mut t.child);
        }
        run_undo(&undo);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
