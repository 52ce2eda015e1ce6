//! What enrolling pods costs a node in in-pod mode: the time from istio-cni's `AddWorkload`
//! to its ack (every core has bound the pod's listeners inside its namespace by then), and
//! the file descriptors and resident memory the node holds per enrolled pod, at 1, 100 and
//! 500 pods.
//!
//! Run (root: it creates network namespaces):
//! `cargo bench -p ringmesh-tests --bench inpod_enroll` (`-- --pods 1,100,500 --cores N`).
//! It uses the release `ringmesh` (brought up to date first), plays istio-cni over ZDS with
//! the test harness's `FakeCni`, and deletes every namespace it made. Prints text and one
//! JSON line.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use e2e::inpod::FakeCni;
use e2e::{MeshDir, Node, ip4};

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn add_netns(name: &str) -> Result<()> {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
    let ok = Command::new("ip")
        .args(["netns", "add", name])
        .status()?
        .success();
    ensure!(ok, "ip netns add {name} failed (root needed)");
    Command::new("ip")
        .args(["-n", name, "link", "set", "lo", "up"])
        .status()?;
    Ok(())
}

/// (resident bytes, open descriptors) of `pid`.
fn usage(pid: u32) -> Result<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss_kib * 1024, fds))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let mut levels = vec![1usize, 100, 500];
    let mut cores: Option<String> = None;
    let mut i = 1;
    while i < argv.len() {
        match argv[i].as_str() {
            "--pods" => {
                levels = argv
                    .get(i + 1)
                    .context("--pods needs a list")?
                    .split(',')
                    .map(|v| {
                        v.parse()
                            .context("--pods: a comma-separated list of counts")
                    })
                    .collect::<Result<_>>()?;
                i += 1;
            }
            "--cores" => {
                cores = argv.get(i + 1).cloned();
                i += 1;
            }
            // cargo bench passes --bench; anything else is not ours.
            _ => {}
        }
        i += 1;
    }
    if !e2e::is_root() {
        eprintln!("inpod_enroll: skipped (needs root for network namespaces)");
        return Ok(());
    }
    // Always (a no-op when it is current): a stale binary would measure old code.
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            "ringmesh-proxy",
            "--bin",
            "ringmesh",
        ])
        .status()?;
    ensure!(status.success(), "building the release ringmesh failed");
    let cores = cores.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string()
    });

    let mesh = MeshDir::new("workloads: []\n")?;
    let cni = FakeCni::start()?;
    let uds = cni.path().to_string_lossy().into_owned();
    let node = Node::spawn(
        &mesh,
        "node-1",
        ip4(241, 0, 1),
        &[
            "--inpod-uds",
            &uds,
            "--cores",
            &cores,
            "--log",
            "warn",
            "--dns-upstream",
            "127.0.0.1:53",
        ],
    )?;
    cni.accept(Duration::from_secs(15))?;
    ensure!(cni.snapshot_sent()?.is_empty(), "snapshot NACKed");
    let node = node.wait_ready()?;
    let pid = node.proc.pid();
    std::thread::sleep(Duration::from_millis(300));
    let (rss0, fds0) = usage(pid)?;
    println!(
        "inpod_enroll: {cores} cores, baseline {} KiB resident, {fds0} descriptors",
        rss0 / 1024
    );

    let mut made = Namespaces(Vec::new());
    let mut times: Vec<Duration> = Vec::new();
    let mut rows = Vec::new();
    let tag = std::process::id();
    for &level in &levels {
        while made.0.len() < level {
            let n = made.0.len();
            let name = format!("rmbench-{tag}-{n}");
            add_netns(&name)?;
            made.0.push(name.clone());
            let path = std::path::PathBuf::from(format!("/run/netns/{name}"));
            let start = Instant::now();
            let ack = cni.add(
                &format!("uid-{n}"),
                &format!("pod-{n}"),
                "bench",
                "default",
                &path,
            )?;
            times.push(start.elapsed());
            if !ack.is_empty() {
                bail!("pod {n} NACKed: {ack}");
            }
            if (n + 1).is_multiple_of(100) {
                eprintln!("  {} pods enrolled", n + 1);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let (rss, fds) = usage(pid)?;
        let mut sorted = times.clone();
        sorted.sort();
        let per_pod_rss = (rss.saturating_sub(rss0)) as f64 / level as f64;
        let per_pod_fds = (fds.saturating_sub(fds0)) as f64 / level as f64;
        println!(
            "{level:>4} pods: enroll p50 {:?} p99 {:?} max {:?}; {:.1} descriptors and {:.1} KiB resident per pod",
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            sorted.last().copied().unwrap_or_default(),
            per_pod_fds,
            per_pod_rss / 1024.0
        );
        rows.push(format!(
            "{{\"pods\":{level},\"enroll_p50_us\":{},\"enroll_p99_us\":{},\"fds_per_pod\":{per_pod_fds:.2},\"rss_per_pod_bytes\":{per_pod_rss:.0}}}",
            percentile(&sorted, 0.5).as_micros(),
            percentile(&sorted, 0.99).as_micros()
        ));
    }
    // Removing them all: each pod's listeners close.
    let start = Instant::now();
    for n in 0..made.0.len() {
        ensure!(cni.del(&format!("uid-{n}"))?.is_empty(), "del NACKed");
    }
    let removed_in = start.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let (_, fds_after) = usage(pid)?;
    println!(
        "removed {} pods in {removed_in:?}; {fds_after} descriptors left (baseline {fds0})",
        made.0.len()
    );
    println!(
        "{{\"cores\":{cores},\"baseline_rss_bytes\":{rss0},\"baseline_fds\":{fds0},\"levels\":[{}],\"fds_after_removal\":{fds_after}}}",
        rows.join(",")
    );
    drop(node);
    Ok(())
}
