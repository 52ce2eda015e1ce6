#!/usr/bin/env bash
# Self-overhead benchmark (not a test): the maximum request rate of `loadgen http1 --closed`
# next to wrk and h2load (--h1) against the same `loadgen serve --mode http1`, with the same
# connection count, in the same run, interleaved round by round (the machine is shared, so
# only side-by-side ratios and medians over rounds mean anything).
#
# Layout on a 2-core machine: the server runs one worker pinned to core 0, every client runs
# one thread on core 1. Each tool keeps one request in flight per connection (no pipelining),
# so all do the same work. loadgen runs on both of the runtime's drivers; the server runs on
# SERVER_DRIVERS (default: io-uring and epoll, one server each).
# HTTP/2 rows (H2=1): loadgen http2 vs h2load (h2c prior knowledge) against serve --mode http2.
#
# Usage (from anywhere): loadgen/bench.sh        builds the release binary first
#   env: DUR=3 CONNS=64 ROUNDS=5 STREAMS=8 H2=1 SERVER_DRIVERS="io-uring epoll" NOBUILD=1
#        LG=target/release/loadgen
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-3}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-5}
STREAMS=${STREAMS:-8}
H2=${H2:-1}
SERVER_DRIVERS=${SERVER_DRIVERS:-io-uring epoll}
LG=${LG:-target/release/loadgen}
[ -n "${NOBUILD:-}" ] || cargo build --release -p ringmesh-loadgen >&2
for t in wrk h2load python3; do command -v $t >/dev/null || { echo "missing $t (apt-get install wrk nghttp2-client)" >&2; exit 2; }; done
TMP=$(mktemp -d)
# start_server runs in a command substitution (a subshell), so server PIDs go to a file.
cleanup() { [ -f "$TMP/pids" ] && while read -r p; do kill "$p" 2>/dev/null || true; done <"$TMP/pids"; rm -rf "$TMP"; }
trap cleanup EXIT

start_server() { # mode driver -> address
  "$LG" serve --mode "$1" --driver "$2" --listen 127.0.0.1:0 --cores 0, >"$TMP/srv-$1-$2" 2>&1 &
  echo $! >>"$TMP/pids"
  for _ in $(seq 200); do grep -q listening "$TMP/srv-$1-$2" 2>/dev/null && break; sleep 0.05; done
  grep -o '127.0.0.1:[0-9]*' "$TMP/srv-$1-$2"
}
# Client CPU (user+sys, from /usr/bin/time) in ms per 1,000 requests: the generator's own
# cost, which the shared machine's noise disturbs much less than req/s.
cpu_per_1k() { # requests -> ms
  python3 -c "u,s=map(float,open('$TMP/cpu').read().split()[-2:]); print(f'{(u+s)*1e6/max($1,1):.1f}')"
}
lg() { # args… -> "rps p50 p99 errors cpu"
  /usr/bin/time -f "%U %S" -o "$TMP/cpu" "$LG" "$@" --cores 1, -d "${DUR}s" -q --json "$TMP/lg.json" >/dev/null || true
  n=$(python3 -c "import json; print(json.load(open('$TMP/lg.json'))['requests'])")
  python3 -c "import json; d=json.load(open('$TMP/lg.json')); print(f\"{d['achieved_rps']:.0f} {d['latency_us']['p50']}us {d['latency_us']['p99']}us {d['errors_total']}\", end=' ')"
  cpu_per_1k "$n"
}
wrk_() { # url
  /usr/bin/time -f "%U %S" -o "$TMP/cpu" taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$1" >"$TMP/wrk.txt" || true
  awk '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} /Socket errors|Non-2xx/ {e=1}
       END {printf "%.0f %s %s %d ", r, p50, p99, e}' "$TMP/wrk.txt"
  cpu_per_1k "$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")"
}
h2load_() { # args… url
  /usr/bin/time -f "%U %S" -o "$TMP/cpu" taskset -c 1 h2load -t1 -D "$DUR" "$@" >"$TMP/h2load.txt" 2>&1 || true
  awk '/^finished in/ {r=$4} /^requests:/ {f=$10+$12} /^time for request:/ {mean=$6}
       END {printf "%.0f mean=%s - %d ", r, mean, f}' "$TMP/h2load.txt"
  cpu_per_1k "$(awk '/^requests:/ {print $8}' "$TMP/h2load.txt")"
}

declare -A URL
for d in $SERVER_DRIVERS; do
  URL[h1-$d]="http://$(start_server http1 "$d")/"
  [ "$H2" = 1 ] && URL[h2-$d]="http://$(start_server http2 "$d")/"
done
N2=$((CONNS / STREAMS)); [ "$N2" -ge 1 ] || N2=1

echo "| round | server | client | connections | req/s | p50 | p99 | errors | client CPU ms/1k req |" > "$TMP/rows"
echo "|---|---|---|---|---|---|---|---|---|" >> "$TMP/rows"
row() { echo "| $1 | $2 | $3 | $4 | $5 | $6 | $7 | $8 | $9 |" | tee -a "$TMP/rows" >&2; }
for r in $(seq "$ROUNDS"); do
  for d in $SERVER_DRIVERS; do
    u=${URL[h1-$d]}
    for cd in io-uring epoll; do
      read -r a b c e f < <(lg http1 "$u" --closed -c "$CONNS" --driver "$cd")
      row "$r" "http1 ($d)" "loadgen http1 --closed --driver $cd" "$CONNS" "$a" "$b" "$c" "$e" "$f"
    done
    read -r a b c e f < <(wrk_ "$u"); row "$r" "http1 ($d)" "wrk -t1" "$CONNS" "$a" "$b" "$c" "$e" "$f"
    read -r a b c e f < <(h2load_ --h1 -c "$CONNS" "$u"); row "$r" "http1 ($d)" "h2load --h1 -t1" "$CONNS" "$a" "$b" "$c" "$e" "$f"
    if [ "$H2" = 1 ]; then
      u=${URL[h2-$d]}
      for cd in io-uring epoll; do
        read -r a b c e f < <(lg http2 "$u" --closed -c "$N2" --streams "$STREAMS" --driver "$cd")
        row "$r" "http2 ($d)" "loadgen http2 --closed --driver $cd (${N2}x${STREAMS})" "$N2" "$a" "$b" "$c" "$e" "$f"
      done
      read -r a b c e f < <(h2load_ -c "$N2" -m "$STREAMS" "$u")
      row "$r" "http2 ($d)" "h2load -t1 -m$STREAMS (${N2}x${STREAMS})" "$N2" "$a" "$b" "$c" "$e" "$f"
    fi
  done
done
echo
echo "Median req/s over $ROUNDS rounds of ${DUR}s (server on core 0, client on core 1):"
echo
python3 - "$TMP/rows" <<'PY'
import sys, statistics, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]).read().splitlines()[2:]:
    c = [x.strip() for x in line.strip('|').split('|')]
    rows.setdefault((c[1], c[2], c[3]), []).append((float(c[4] or 0), float(c[8] or 0)))
print("| server | client | connections | median req/s | min | max | median client CPU ms/1k req |")
print("|---|---|---|---|---|---|---|")
for (srv, cli, conns), v in rows.items():
    r = [x[0] for x in v]; cpu = [x[1] for x in v]
    print(f"| {srv} | {cli} | {conns} | {statistics.median(r):.0f} | {min(r):.0f} | {max(r):.0f} | {statistics.median(cpu):.1f} |")
PY
