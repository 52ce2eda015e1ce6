//! The config file watcher: a control-plane thread that notices a changed file and hands
//! the result (new snapshot or error) to a callback.
//!
//! Why polling (every 500 ms by default) and not inotify: it works on every filesystem
//! (overlayfs, NFS, Kubernetes ConfigMap symlink swaps) and with every editor, including
//! those that save by writing a new file and renaming it over the old one, which leaves an
//! inotify watch on a dead inode. A poll is a `stat` and, only when the metadata moved, a
//! read of a file of a few KiB: negligible next to 500 ms.
//!
//! Invariants: the callback runs on the watcher thread, once per distinct file content
//! (change key: the content hash; mtime and size decide whether to read, see
//! `RACY_WINDOW`). A bad file
//! is reported once (as `Err`) and logged; the watcher keeps the last good content's hash
//! and never reports anything for it again, so the caller keeps serving its old snapshot.
//! Dropping the [`Watcher`] stops and joins the thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::{ConfigError, LoadOptions, Snapshot, hash_bytes, parse};

/// Half a second: a config edit shows up within a human's reaction time, and the cost is
/// two `stat`s a second.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// How to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub load: LoadOptions,
    pub interval: Duration,
    /// The content hash of the snapshot already serving ([`Snapshot::content_hash`]); that
    /// content is not reported again. `None` reports the file's current content first.
    pub current: Option<u64>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            load: LoadOptions::default(),
            interval: DEFAULT_INTERVAL,
            current: None,
        }
    }
}

/// A running watcher; drop it to stop.
#[derive(Debug)]
pub struct Watcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread's `recv_timeout` at once.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts watching `path`; `on_change` gets every new valid snapshot and every new error.
pub fn watch<F>(path: &Path, opts: WatchOptions, on_change: F) -> std::io::Result<Watcher>
where
    F: FnMut(Result<Arc<Snapshot>, ConfigError>) + Send + 'static,
{
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let path = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || run(path, opts, stop_rx, on_change))?;
    Ok(Watcher {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct Meta {
    len: u64,
    modified: Option<SystemTime>,
}

fn run<F>(path: PathBuf, opts: WatchOptions, stop: mpsc::Receiver<()>, mut on_change: F)
where
    F: FnMut(Result<Arc<Snapshot>, ConfigError>),
{
    let mut last_meta: Option<Meta> = None;
    // The last content reported (good or bad), so each content is reported once.
    let mut last_hash: Option<u64> = opts.current;
    let mut last_read_error: Option<String> = None;
    loop {
        match std::fs::metadata(&path) {
            Ok(md) => {
                let meta = Meta {
                    len: md.len(),
                    modified: md.modified().ok(),
                };
                if last_meta != Some(meta) || is_racy(meta) {
                    match std::fs::read(&path) {
                        Ok(bytes) => {
                            last_meta = Some(meta);
                            last_read_error = None;
                            let hash = hash_bytes(&bytes);
                            if last_hash != Some(hash) {
                                last_hash = Some(hash);
                                on_change(load(&path, &bytes, &opts.load));
                            }
                        }
                        Err(e) => report_read_error(&path, e, &mut last_read_error, &mut on_change),
                    }
                }
            }
            Err(e) => {
                // Gone (mid-rename, or deleted): keep serving; re-read when it returns.
                last_meta = None;
                report_read_error(&path, e, &mut last_read_error, &mut on_change);
            }
        }
        match stop.recv_timeout(opts.interval) {
            Err(RecvTimeoutError::Timeout) => continue,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Filesystems with coarse timestamps (1-2 s on some) can show an unchanged mtime and size
/// after a quick same-size edit; while the mtime is this recent, read anyway (git's
/// "racy clean" rule). 2 s covers FAT's and NFS's coarsest resolution.
const RACY_WINDOW: Duration = Duration::from_secs(2);

fn is_racy(meta: Meta) -> bool {
    match meta.modified {
        Some(m) => m.elapsed().map_or(true, |age| age < RACY_WINDOW),
        None => true,
    }
}

fn load(path: &Path, bytes: &[u8], opts: &LoadOptions) -> Result<Arc<Snapshot>, ConfigError> {
    let result = match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, opts).map(Arc::new),
        Err(e) => Err(ConfigError::Invalid {
            file: None,
            path: String::new(),
            reason: format!("not UTF-8: {e}"),
            location: None,
        }),
    }
    .map_err(|e| e.in_file(path));
    match &result {
        Ok(s) => tracing::info!(file = %path.display(), summary = %s.summary(), "config loaded"),
        Err(e) => tracing::warn!(error = %e, "config rejected; the previous config keeps serving"),
    }
    result
}

fn report_read_error<F>(
    path: &Path,
    e: std::io::Error,
    last: &mut Option<String>,
    on_change: &mut F,
) where
    F: FnMut(Result<Arc<Snapshot>, ConfigError>),
{
    // Report each distinct read failure once, not every poll.
    let text = e.to_string();
    if last.as_deref() != Some(text.as_str()) {
        *last = Some(text);
        let err = ConfigError::Read {
            path: path.to_path_buf(),
            source: e,
        };
        tracing::warn!(error = %err, "config unreadable; the previous config keeps serving");
        on_change(Err(err));
    }
}
