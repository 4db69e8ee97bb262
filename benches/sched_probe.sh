#!/usr/bin/env bash
# How long the proxy's threads wait for a CPU once woken, under the HTTP cell's paced load
# (50 TLS keep-alive connections, a 10 ms pause after each answer: about 5,000 GETs a
# second), with `perf sched record` on the proxy's threads for 5 s; then `perf sched
# latency`'s table (average and longest wake-up to run delay per thread) and wrk's p50/p99.
# For the moderate-load tail of the HTTP cell. Loopback only; each run bounded.
#
#   benches/sched_probe.sh                    # wsrouter, then haproxy
#   TARGETS="wsrouter nginx" benches/sched_probe.sh
set -euo pipefail

ROUNDS=1
SECONDS_PER_RUN=6
WORKERS=2
BENCH_NAME=sched_probe
TARGETS=${TARGETS:-"wsrouter haproxy"}
WSROUTER_ARGS="--max-connections 9900"
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/sched_probe}
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
command -v perf >/dev/null || die "perf is missing (apt-get install linux-perf)"

for target in $TARGETS; do
  TARGET=$target
  start_target "$target"
  url="https://127.0.0.1:${PORT[$target]}"
  warm_http "$target"
  pids=$(proc_tree)
  timeout 30 perf sched record -o "$OUT/sched-$target.data" -p "$(tr ' ' ',' <<<"$pids")" \
    -- sleep 5 >/dev/null 2>&1 &
  rec=$!
  wrk -t 2 -c 50 -d "${SECONDS_PER_RUN}s" --timeout 5s -s "$ROOT/benches/http.lua" "$url" \
    -- GET 1000 128 10 >"$OUT/wrk-$target.txt" 2>&1 || die "wrk against $target failed"
  wait "$rec" || true
  stop_target
  sed -n 's/^JSON //p' "$OUT/wrk-$target.txt" | python3 -c '
import json, sys
d = json.load(sys.stdin)
l = d["latency"]
rps, p50, p99 = d["requests_per_second"], l["p50_us"], l["p99_us"]
print(f"== {sys.argv[1]}: {rps:.0f} req/s, p50 {p50} µs, p99 {p99} µs")' "$target"
  perf sched latency -i "$OUT/sched-$target.data" 2>/dev/null | head -14
done
