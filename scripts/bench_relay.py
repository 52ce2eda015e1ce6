#!/usr/bin/env python3
"""Relay benchmark for `ringmesh forward` (issue 2): bulk throughput and forwarder CPU per GB
for direct, splice and buffered, one stream and eight, measured side by side in one run.

Usage: python3 scripts/bench_relay.py [--seconds 5] [--rounds 3] [--placement shared|alone]
                                     [--out bench-out/relay.json]
Needs release binaries: cargo build --release -p ringmesh-proxy -p ringmesh-loadgen

All traffic is on 127.0.0.1. Every process this script starts is killed by PID at the end.
Rounds interleave the modes (direct, splice, buffered, direct, ...) so that drift on a
shared machine hits every mode alike; the median round is reported.

Placement on two cores (every process pinned; the client always alone on core 0):
- shared: the forwarder shares core 1 with the sink; direct runs client 0 → sink 1.
- alone:  the forwarder has core 1 to itself, the sink shares core 0 with the client; direct
          runs client and sink both on core 0.
Neither is "the" answer on two cores: `shared` gives direct its best case (one core each),
`alone` gives the forwarder its own core. Run both and read them side by side.
"""
import argparse, json, os, signal, socket, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--placement", choices=["shared", "alone"], default="shared")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out", "relay.json"))
    args = ap.parse_args()
    for b in ("ringmesh", "loadgen"):
        if not os.path.exists(os.path.join(REL, b)):
            sys.exit(f"missing {REL}/{b}: run cargo build --release -p ringmesh-proxy -p ringmesh-loadgen")
    procs = []

    def start(cmd):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    results = []
    try:
        sink_port = free_port()
        sink_core = "1," if args.placement == "shared" else "0,"
        start([f"{REL}/loadgen", "serve", "--mode", "sink", "--listen", f"127.0.0.1:{sink_port}", "--cores", sink_core])
        wait_port(sink_port)
        fwd = {}
        for mode in ("splice", "buffered"):
            port = free_port()
            p = start([f"{REL}/ringmesh", "forward", "--listen", f"127.0.0.1:{port}", "--to",
                       f"127.0.0.1:{sink_port}", "--cores", "1,", "--copy", mode])
            fwd[mode] = (port, p)
        for mode, (port, _) in fwd.items():
            # Wait on the forwarder's listener without forwarding a probe into the sink
            # (a probe that just closes is harmless to a sink).
            wait_port(port)
        for rnd in range(args.rounds):
            for streams in (1, 8):
                for mode in ("direct", "splice", "buffered"):
                    port = sink_port if mode == "direct" else fwd[mode][0]
                    pid = None if mode == "direct" else fwd[mode][1].pid
                    out = f"/tmp/ringmesh-relay-{os.getpid()}.json"
                    c0 = cpu_seconds(pid) if pid else 0.0
                    subprocess.run([f"{REL}/loadgen", "tcp", f"127.0.0.1:{port}", "--bulk", "--size", "262144",
                                    "-c", str(streams), "--duration", f"{args.seconds}s", "--cores", "0,",
                                    "--quiet", "--json", out], check=False, stdout=subprocess.DEVNULL)
                    c1 = cpu_seconds(pid) if pid else 0.0
                    with open(out) as f:
                        r = json.load(f)
                    os.unlink(out)
                    gb = r["bytes"] / 1e9
                    row = {"round": rnd, "mode": mode, "streams": streams,
                           "gbit_s": r["bytes"] * 8 / r["duration_s"] / 1e9,
                           "forwarder_cpu_s": c1 - c0,
                           "cpu_s_per_gb": (c1 - c0) / gb if pid and gb > 0 else None,
                           "errors": sum(r["errors"].values()) if isinstance(r["errors"], dict) else r["errors"]}
                    results.append(row)
                    print(f"round {rnd+1}/{args.rounds} {streams} stream(s) {mode:9s} "
                          f"{row['gbit_s']:6.2f} Gbit/s  forwarder CPU/GB: "
                          f"{row['cpu_s_per_gb'] if row['cpu_s_per_gb'] is None else round(row['cpu_s_per_gb'], 3)}",
                          file=sys.stderr)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    summary = []
    for streams in (1, 8):
        direct = statistics.median(r["gbit_s"] for r in results if r["mode"] == "direct" and r["streams"] == streams)
        for mode in ("direct", "splice", "buffered"):
            rows = [r for r in results if r["mode"] == mode and r["streams"] == streams]
            g = [r["gbit_s"] for r in rows]
            c = [r["cpu_s_per_gb"] for r in rows if r["cpu_s_per_gb"] is not None]
            summary.append({"mode": mode, "streams": streams, "gbit_s": statistics.median(g),
                            "gbit_s_min": min(g), "gbit_s_max": max(g),
                            "vs_direct": statistics.median(g) / direct if direct else None,
                            "cpu_s_per_gb": statistics.median(c) if c else None})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "seconds": args.seconds, "rounds": args.rounds,
                   "placement": args.placement,
                   "summary": summary, "runs": results}, f, indent=2)
    print(f"placement: {args.placement}")
    print("| streams | mode | Gbit/s (median, min–max) | vs direct | forwarder CPU-s per GB |")
    print("|---|---|---|---|---|")
    for s in summary:
        cpu = "–" if s["cpu_s_per_gb"] is None else f"{s['cpu_s_per_gb']:.3f}"
        print(f"| {s['streams']} | {s['mode']} | {s['gbit_s']:.2f} ({s['gbit_s_min']:.2f}–{s['gbit_s_max']:.2f}) "
              f"| {s['vs_direct']:.2f} | {cpu} |")
    sp = next(s for s in summary if s["mode"] == "splice" and s["streams"] == 1)["cpu_s_per_gb"]
    bu = next(s for s in summary if s["mode"] == "buffered" and s["streams"] == 1)["cpu_s_per_gb"]
    if sp and bu:
        print(f"\nsplice / buffered forwarder CPU per GB (1 stream): {sp / bu:.2f}")


if __name__ == "__main__":
    main()
