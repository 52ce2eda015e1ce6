//! The supervisor stops everything it started: children, their own children (process
//! groups), and temporary directories — on group drop and on shutdown.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bench::procs::Supervisor;
use common::alive;

/// PIDs listed in a file that a shell writes once its children are up.
fn read_pids(path: &std::path::Path, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let pids: Vec<u32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "children never reported their PIDs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn dropping_a_group_kills_forked_grandchildren_and_removes_its_dir() {
    let sup = Supervisor::new();
    let mut group = sup.group("procs-test").unwrap();
    let dir = group.dir().to_path_buf();
    let pidfile = dir.join("pids");
    let mut c = Command::new("sh");
    // A wrapper that forks two sleepers and waits: killing only the shell would orphan them.
    c.arg("-c").arg(format!(
        "sleep 60 & a=$!; sleep 60 & b=$!; echo $a $b > {}.tmp; mv {0}.tmp {0}; wait",
        pidfile.display()
    ));
    let shell = group.spawn("forking wrapper", c).unwrap();
    let kids = read_pids(&pidfile, 2);
    assert!(alive(shell.pid) && kids.iter().all(|&k| alive(k)));
    assert_eq!(sup.live_children(), 1);
    drop(group);
    assert!(!alive(shell.pid), "wrapper still there");
    let deadline = Instant::now() + Duration::from_secs(5);
    // Grandchildren are reaped by init after SIGKILL; wait for that, bounded.
    while kids.iter().any(|&k| alive(k)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for k in kids {
        assert!(!alive(k), "grandchild {k} survived");
    }
    assert!(!dir.exists());
    assert_eq!(sup.live_children(), 0);
}

#[test]
fn shutdown_stops_every_group_and_refuses_new_work() {
    let sup = Supervisor::new();
    let mut g1 = sup.group("a").unwrap();
    let mut g2 = sup.group("b").unwrap();
    let dirs = [g1.dir().to_path_buf(), g2.dir().to_path_buf()];
    let sleep = || {
        let mut c = Command::new("sleep");
        c.arg("60");
        c
    };
    let p1 = g1.spawn("one", sleep()).unwrap();
    let p2 = g2.spawn("two", sleep()).unwrap();
    assert_eq!(sup.shutdown(), 2);
    assert!(!alive(p1.pid) && !alive(p2.pid));
    assert!(dirs.iter().all(|d| !d.exists()));
    assert!(g1.spawn("late", sleep()).is_err());
    assert!(sup.group("late").is_err());
}

#[test]
fn wait_kills_a_child_past_its_deadline_and_reports_its_output() {
    let sup = Supervisor::new();
    let mut g = sup.group("wait").unwrap();
    let mut c = Command::new("sh");
    c.args(["-c", "echo started-ok; exec sleep 60"]);
    let p = g.spawn("slow client", c).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&p.log)
        .unwrap_or_default()
        .contains("started-ok")
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = g
        .wait(&p, Instant::now() + Duration::from_millis(200))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("slow client") && err.contains("started-ok"),
        "{err}"
    );
    assert!(!alive(p.pid));

    let mut ok = Command::new("true");
    ok.arg("x");
    let q = g.spawn("quick", ok).unwrap();
    assert!(
        g.wait(&q, Instant::now() + Duration::from_secs(10))
            .unwrap()
            .success()
    );
}

#[test]
fn ctrl_c_stops_children_and_exits_130() {
    // The real binary's signal path: `ringmesh-bench run` with a fake loadgen that only
    // hangs (so the run is mid-flight), then SIGINT; every child must be gone.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("loadgen");
    let pidfile = dir.path().join("pid");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho $$ > {}.tmp; mv {0}.tmp {0}\nexec sleep 60\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmesh-bench"))
        .args([
            "run",
            "--scenarios",
            "direct",
            "--workloads",
            "http-1k",
            "--repeat",
            "1",
            "--duration",
            "1",
        ])
        .arg("--loadgen")
        .arg(&fake)
        .arg("--out")
        .arg(dir.path().join("out"))
        .spawn()
        .unwrap();
    let backend = read_pids(&pidfile, 1)[0];
    assert!(alive(backend));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(backend) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(backend), "backend {backend} survived Ctrl-C");
}

#[test]
fn changes_are_undone_on_drop_and_on_shutdown_and_refused_after() {
    let outside = tempfile::tempdir().unwrap();
    let marker = |n: &str| outside.path().join(n).display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let sup = Supervisor::new();

    let mut g = sup.group("change").unwrap();
    g.change(&s(&["touch", &marker("a")]), s(&["rm", &marker("a")]))
        .unwrap();
    assert!(outside.path().join("a").exists());
    let err = g
        .change(&s(&["false"]), s(&["true"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`false` failed"), "{err}");
    drop(g);
    assert!(
        !outside.path().join("a").exists(),
        "undo did not run on drop"
    );

    let mut g = sup.group("change2").unwrap();
    g.change(&s(&["touch", &marker("b")]), s(&["rm", &marker("b")]))
        .unwrap();
    sup.shutdown();
    assert!(
        !outside.path().join("b").exists(),
        "undo did not run on shutdown"
    );
    assert!(
        g.change(&s(&["touch", &marker("c")]), s(&["rm", &marker("c")]))
            .is_err()
    );
    assert!(
        !outside.path().join("c").exists(),
        "a change was made after shutdown"
    );
}
