//! `ringmesh demo` end to end: the README's main job runs to completion on loopback and
//! reports both identities and the bytes that crossed the mesh.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use e2e::bin;

#[test]
fn demo_runs_to_completion_and_reports_identities_and_bytes() -> Result<()> {
    // Its own process group, so that on a timeout the demo's node processes go with it.
    let mut child = Command::new(bin("ringmesh"))
        .args(["demo", "--requests", "200", "--bulk-mib", "8"])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || e2e::read_all(&mut out).unwrap_or_default());
    let err = std::thread::spawn(move || e2e::read_all(&mut err).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            // A killed demo cannot stop its nodes: kill its process group (its PGID is
            // its PID), then reap it.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            bail!("ringmesh demo did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = String::from_utf8_lossy(&out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    ensure!(
        status.success(),
        "demo exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for id in [
        "spiffe://cluster.local/ns/demo/sa/client",
        "spiffe://cluster.local/ns/demo/sa/echo",
    ] {
        ensure!(stdout.contains(id), "demo output lacks {id}:\n{stdout}");
    }
    // "sent N B" for each logged connection: the bulk one moved 8 MiB.
    let sent: Vec<u64> = stdout
        .split("sent ")
        .skip(1)
        .filter_map(|rest| rest.split_once(" B")?.0.parse().ok())
        .collect();
    ensure!(
        !sent.is_empty() && sent.iter().all(|&n| n > 0),
        "byte counts in the demo output: {sent:?}\n{stdout}"
    );
    ensure!(
        sent.contains(&(8 << 20)),
        "no connection sent the 8 MiB bulk transfer: {sent:?}\n{stdout}"
    );
    // The report names each outbound connection's hop: HBONE to the peer node's 15008 with
    // the CONNECT authority, or plain TCP (no authority, no identities).
    let outbound: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("outbound "))
        .collect();
    let hbone = outbound
        .iter()
        .any(|l| l.contains(":15008 (hbone ") && !l.contains("(hbone -)"));
    let tcp = outbound
        .iter()
        .any(|l| l.contains("(hbone -) - → -") && !l.contains(":15008"));
    ensure!(
        hbone && tcp,
        "demo output lacks the HBONE or TCP path:\n{stdout}"
    );
    Ok(())
}
