//! The CPU/RSS sampler on processes whose usage is known: a busy loop uses about one core,
//! a sleeping process none; both have a plausible resident size.

use std::process::Command;
use std::time::{Duration, Instant};

use bench::procs::Supervisor;
use bench::sampler::{Sampler, clock_ticks, cpu_ticks, mem};

#[test]
fn busy_loop_burns_cpu_and_sleeper_does_not() {
    let ticks = clock_ticks().unwrap();
    assert!((10..=10_000).contains(&ticks), "CLK_TCK {ticks}");
    let sup = Supervisor::new();
    let mut group = sup.group("sampler-test").unwrap();
    let mut busy = Command::new("sh");
    // Bounded: exits by itself after 60 s even if the test were killed before cleanup.
    busy.args([
        "-c",
        "end=$(( $(date +%s) + 60 )); while [ $(date +%s) -lt $end ]; do :; done",
    ]);
    let busy = group.spawn("busy loop", busy).unwrap();
    let mut sleeper = Command::new("sleep");
    sleeper.arg("60");
    let sleeper = group.spawn("sleeper", sleeper).unwrap();

    let sampler = Sampler::start(&[busy.pid, sleeper.pid], ticks).unwrap();
    let start = cpu_ticks(busy.pid).unwrap();
    // Measure until the busy loop has used 0.5 CPU-s (or 20 s passed on a very loaded box).
    let deadline = Instant::now() + Duration::from_secs(20);
    while cpu_ticks(busy.pid).unwrap() < start + ticks / 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (usage, wall) = sampler.finish().unwrap();
    let wall = wall.as_secs_f64();
    let (b, s) = (&usage[0], &usage[1]);
    assert_eq!((b.pid, s.pid), (busy.pid, sleeper.pid));
    assert!(
        b.cpu_s >= 0.5,
        "busy loop used only {} CPU-s in {wall} s",
        b.cpu_s
    );
    // One thread cannot use more than the wall time (plus one tick of rounding each end).
    assert!(
        b.cpu_s <= wall + 2.0 / ticks as f64,
        "busy loop {} CPU-s in {wall} s",
        b.cpu_s
    );
    assert!(s.cpu_s <= 0.02, "sleeper used {} CPU-s", s.cpu_s);
    for u in [b, s] {
        assert!(
            u.samples >= 3,
            "only {} memory samples in {wall} s",
            u.samples
        );
        assert!(
            u.rss_peak_kib >= u.rss_steady_kib && u.rss_steady_kib > 0,
            "{u:?}"
        );
        assert!(u.rss_anon_steady_kib <= u.rss_steady_kib, "{u:?}");
        assert!(
            u.rss_peak_kib < 64 * 1024,
            "a shell using {} KiB? {u:?}",
            u.rss_peak_kib
        );
    }
    drop(group);
    assert!(cpu_ticks(busy.pid).is_err(), "busy loop survived its group");
}

#[test]
fn own_process_memory_is_plausible_and_grows_with_allocation() {
    let me = std::process::id();
    let before = mem(me).unwrap();
    // Touch 64 MiB so it is resident and anonymous.
    let big = vec![1u8; 64 << 20];
    let after = mem(me).unwrap();
    assert!(big.iter().step_by(4096).all(|&b| b == 1));
    assert!(
        after.rss_anon_kib >= before.rss_anon_kib + 60 * 1024,
        "RssAnon {before:?} -> {after:?}"
    );
    assert!(after.rss_kib >= after.rss_anon_kib);
}

#[test]
fn a_process_that_exits_while_sampled_is_an_error() {
    let sup = Supervisor::new();
    let mut group = sup.group("sampler-exit").unwrap();
    let mut c = Command::new("sleep");
    c.arg("60");
    let p = group.spawn("short", c).unwrap();
    let sampler = Sampler::start(&[p.pid], clock_ticks().unwrap()).unwrap();
    group.kill(&p);
    let err = sampler.finish().unwrap_err().to_string();
    assert!(
        err.contains(&p.pid.to_string()) && err.contains("exited"),
        "{err}"
    );
}
