//! The config watcher: picks up a changed file, reports a bad one once and keeps going.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use proxy::config::{ConfigError, LoadOptions, Snapshot, WatchOptions, load_file, watch};

/// Generous: the watcher polls every 20 ms here, but CI machines stall.
const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

type Event = Result<Arc<Snapshot>, ConfigError>;

fn config(services: usize) -> String {
    let mut y = String::from(
        "node: n1\nworkloads:\n  - name: a\n    namespace: ns\n    workloadIps: [\"10.0.0.1\"]\n    node: n1\nservices:\n",
    );
    for i in 0..services {
        y.push_str(&format!(
            "  - name: s{i}\n    namespace: ns\n    hostname: s{i}.ns\n    vips: [\"10.1.0.{}\"]\n    ports: {{80: 8080}}\n",
            i + 1
        ));
    }
    y
}

/// Writes like an editor that saves atomically: new file, then rename over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn next(rx: &mpsc::Receiver<Event>) -> Event {
    rx.recv_timeout(DEADLINE)
        .expect("watcher reported nothing before the deadline")
}

/// The next good snapshot, skipping errors from catching an in-place write half done.
fn next_ok(rx: &mpsc::Receiver<Event>) -> Arc<Snapshot> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx
            .recv_timeout(left)
            .expect("no good snapshot before the deadline")
        {
            Ok(snap) => return snap,
            Err(e) => eprintln!("skipping (partial write?): {e}"),
        }
    }
}

fn start(path: &Path, current: Option<u64>) -> (proxy::config::Watcher, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let opts = WatchOptions {
        load: LoadOptions::default(),
        interval: POLL,
        current,
    };
    let w = watch(path, opts, move |ev| {
        let _ = tx.send(ev);
    })
    .unwrap();
    (w, rx)
}

#[test]
fn picks_up_changes_and_reports_a_bad_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, config(1)).unwrap();
    let first = load_file(&path, &LoadOptions::default()).unwrap();
    let (_watcher, rx) = start(&path, Some(first.content_hash()));

    // A new service appears without restart.
    replace(&path, &config(2));
    let snap = next(&rx).expect("valid file");
    assert_eq!(snap.services().len(), 2);
    assert!(snap.service_port("10.1.0.2:80".parse().unwrap()).is_some());

    // A bad file is reported with its path and reason...
    replace(&path, &config(2).replace("{80: 8080}", "{http: 8080}"));
    let err = next(&rx).expect_err("bad file");
    assert_eq!(err.field_path(), "services[0].ports");
    assert_eq!(err.reason(), "\"http\" is not a port number");
    assert!(err.to_string().contains("mesh.yaml"), "{err}");

    // ...once: touching it with the same content reports nothing new. (Negative check: wait
    // several poll intervals.)
    replace(&path, &config(2).replace("{80: 8080}", "{http: 8080}"));
    assert!(
        rx.recv_timeout(POLL * 10).is_err(),
        "same bad content reported twice"
    );

    // Fixed again: a new snapshot.
    replace(&path, &config(3));
    assert_eq!(next(&rx).expect("valid again").services().len(), 3);
}

#[test]
fn reports_current_content_when_asked_and_not_when_known() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, config(1)).unwrap();

    let (w, rx) = start(&path, None);
    assert_eq!(next(&rx).unwrap().services().len(), 1);
    drop(w);

    let hash = load_file(&path, &LoadOptions::default())
        .unwrap()
        .content_hash();
    let (_w, rx) = start(&path, Some(hash));
    assert!(
        rx.recv_timeout(POLL * 10).is_err(),
        "known content reported again"
    );
}

#[test]
fn same_size_edit_in_place_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, config(1)).unwrap();
    let hash = load_file(&path, &LoadOptions::default())
        .unwrap()
        .content_hash();
    let (_w, rx) = start(&path, Some(hash));
    // Same length, written in place (no rename): only the content differs.
    let edited = config(1).replace("8080", "9090");
    assert_eq!(edited.len(), config(1).len());
    std::fs::write(&path, &edited).unwrap();
    let snap = next_ok(&rx);
    assert_eq!(snap.services()[0].ports, [(80, 9090)]);
}

#[test]
fn deleted_file_reports_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, config(1)).unwrap();
    let hash = load_file(&path, &LoadOptions::default())
        .unwrap()
        .content_hash();
    let (_w, rx) = start(&path, Some(hash));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(next(&rx), Err(ConfigError::Read { .. })));
    assert!(
        rx.recv_timeout(POLL * 10).is_err(),
        "missing file reported every poll"
    );
    std::fs::write(&path, config(2)).unwrap();
    assert_eq!(next_ok(&rx).services().len(), 2);
}
