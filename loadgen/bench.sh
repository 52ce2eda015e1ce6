#!/usr/bin/env bash
# Self-overhead benchmark (not a test): the maximum request rate of `loadgen http1 --closed`
# next to wrk and h2load (--h1) against the same `loadgen serve --mode http1`, with the same
# connection count, in the same run, interleaved round by round.
#
# Layout on a 2-core machine: the server runs one worker pinned to core 0, every client runs
# one thread pinned to core 1 (taskset; loadgen pins its worker inside that mask). Each tool
# keeps one request in flight per connection (no pipelining), so they do the same work.
# Optional HTTP/2 rows: loadgen http2 vs h2load (h2c prior knowledge) against serve --mode http2.
#
# Usage: loadgen/bench.sh            (from the workspace root; builds the release binary)
#   env: DUR=10 CONNS=64 ROUNDS=3 STREAMS=8 H2=1 LG=target/release/loadgen
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
STREAMS=${STREAMS:-8}
H2=${H2:-1}
LG=${LG:-target/release/loadgen}
[ -n "${NOBUILD:-}" ] || cargo build --release -p ringmesh-loadgen >&2
for t in wrk h2load taskset; do command -v $t >/dev/null || { echo "missing $t (apt-get install wrk nghttp2-client util-linux)" >&2; exit 2; }; done
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

start_server() { # mode -> prints address
  taskset -c 0 "$LG" serve --mode "$1" --listen 127.0.0.1:0 --cores 1 >"$TMP/srv-$1" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q listening "$TMP/srv-$1" 2>/dev/null && break; sleep 0.05; done
  grep -o '127.0.0.1:[0-9]*' "$TMP/srv-$1"
}

H1=$(start_server http1)
[ "$H2" = 1 ] && H2ADDR=$(start_server http2)

lg_rps() { # args… -> req/s
  taskset -c 1 "$LG" "$@" --cores 1 -d "${DUR}s" --warmup 1s -q --json "$TMP/lg.json" >/dev/null || true
  python3 -c "import json,sys; d=json.load(open('$TMP/lg.json')); print(f\"{d['achieved_rps']:.0f} {d['latency_us']['p50']} {d['latency_us']['p99']} {d['errors_total']}\")"
}
wrk_rps() {
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "http://$H1/" >"$TMP/wrk.txt"
  rps=$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$TMP/wrk.txt"); p99=$(awk '$1=="99%" {print $2}' "$TMP/wrk.txt")
  err=$(awk '/Socket errors|Non-2xx/ {e=1} END {print e+0}' "$TMP/wrk.txt")
  printf '%.0f %s %s %s\n' "$rps" "$p50" "$p99" "$err"
}
h2load_rps() { # extra args… url
  taskset -c 1 h2load -t1 -D "$DUR" --warm-up-time=1 "$@" >"$TMP/h2load.txt" 2>&1 || true
  rps=$(awk '/^finished in/ {print $4}' "$TMP/h2load.txt")
  fail=$(awk '/^requests:/ {print $8}' "$TMP/h2load.txt")
  printf '%.0f - - %s\n' "$rps" "${fail:-?}"
}

echo "| round | tool | protocol | connections | req/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  read -r a b c d < <(lg_rps http1 "http://$H1/" --closed -c "$CONNS")
  echo "| $r | loadgen http1 --closed | HTTP/1.1 | $CONNS | $a | ${b}us | ${c}us | $d |"
  read -r a b c d < <(wrk_rps)
  echo "| $r | wrk -t1 | HTTP/1.1 | $CONNS | $a | $b | $c | $d |"
  read -r a b c d < <(h2load_rps --h1 -c "$CONNS" "http://$H1/")
  echo "| $r | h2load --h1 -t1 | HTTP/1.1 | $CONNS | $a | $b | $c | $d |"
  if [ "$H2" = 1 ]; then
    n=$((CONNS / STREAMS)); [ "$n" -ge 1 ] || n=1
    read -r a b c d < <(lg_rps http2 "http://$H2ADDR/" --closed -c "$n" --streams "$STREAMS")
    echo "| $r | loadgen http2 --closed | HTTP/2 ${n}x${STREAMS} | $n | $a | ${b}us | ${c}us | $d |"
    read -r a b c d < <(h2load_rps -c "$n" -m "$STREAMS" "http://$H2ADDR/")
    echo "| $r | h2load -t1 | HTTP/2 ${n}x${STREAMS} | $n | $a | $b | $c | $d |"
  fi
done
