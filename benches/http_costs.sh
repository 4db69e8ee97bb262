#!/usr/bin/env bash
# Where a plain HTTP request's cost goes, per proxy: compare.sh's HTTP cell (small GETs or
# POSTs over TLS keep-alive, 50 connections, 1,000 tenants, the same four echo backends)
# flat out, with `perf stat` on the proxy and on the load tool and the CPU of every party
# read from /proc. Per request: the proxy's syscalls, context switches, CPU (user and
# system apart), and the CPU the backends and wrk spent. On a machine the proxy shares
# with its load and its backends, a proxy that costs them more loses throughput for that
# too; this says how much.
#
#   benches/http_costs.sh                              # wsrouter, haproxy, twice each
#   TARGETS="wsrouter wsrouter-b" WSROUTER_B_BIN=/tmp/old/wsrouter benches/http_costs.sh
#   METHOD=POST ROUNDS=3 benches/http_costs.sh
#
# Targets take turns round by round (the order rotates): a VM's speed drifts by more than
# the differences sought, so compare within a round. Output: one line per run on stdout.
# Needs perf (Debian's linux-perf) and wrk (pinned as in compare.sh). Loopback only;
# every run is bounded (SECONDS_PER_RUN).
set -euo pipefail

ROUNDS=${ROUNDS:-2}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
METHOD=${METHOD:-GET}
TARGETS=${TARGETS:-"wsrouter haproxy"}
WORKERS=2
BENCH_NAME=http_costs
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/http_costs}
WSROUTER_ARGS="--max-connections 9900"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
command -v perf >/dev/null || die "perf is missing (apt-get install linux-perf)"
command -v wrk >/dev/null || die "wrk is missing (compare.sh installs the pinned one)"

# A counter's total from a `perf stat -o` file.
counted() { awk -v e="$2" '$2 == e { gsub(",", "", $1); print $1 }' "$1"; }

measure() {
  local target=$1 url pids u0 s0 u1 s1 b0 b1 n
  TARGET=$target
  start_target "$target"
  url="https://127.0.0.1:${PORT[$target]}"
  warm_http "$target"
  pids=$(proc_tree)
  read -r u0 s0 < <(ticks $pids)
  read -r b0 _ < <(ticks "${BACKEND_PIDS[@]}" | awk '{print $1 + $2, 0}')
  perf stat -e raw_syscalls:sys_enter,context-switches -p "$(tr ' ' ',' <<<"$pids")" \
    -o "$OUT/perf-proxy.txt" -- sleep "$SECONDS_PER_RUN" &
  local stat=$!
  perf stat -e raw_syscalls:sys_enter,task-clock -o "$OUT/perf-wrk.txt" \
    wrk -t 2 -c 50 -d "${SECONDS_PER_RUN}s" --timeout 5s -s "$ROOT/benches/http.lua" "$url" \
    -- "$METHOD" 1000 128 0 >"$OUT/wrk.txt" 2>&1 || die "wrk against $target failed"
  wait "$stat"
  read -r u1 s1 < <(ticks $pids)
  read -r b1 _ < <(ticks "${BACKEND_PIDS[@]}" | awk '{print $1 + $2, 0}')
  stop_target
  n=$(sed -n 's/^JSON //p' "$OUT/wrk.txt" | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])')
  [[ $n -gt 0 ]] || die "no requests answered by $target"
  python3 - "$target" "$n" "$SECONDS_PER_RUN" "$TICKS" \
    "$((u1 - u0))" "$((s1 - s0))" "$((b1 - b0))" \
    "$(counted "$OUT/perf-proxy.txt" raw_syscalls:sys_enter)" \
    "$(counted "$OUT/perf-proxy.txt" context-switches)" \
    "$(counted "$OUT/perf-wrk.txt" raw_syscalls:sys_enter)" \
    "$(counted "$OUT/perf-wrk.txt" msec)" "$METHOD" <<'PY'
import sys
t, n, secs, hz, u, s, b, sc, cs, wsc, wms, method = sys.argv[1:]
n, secs, hz = int(n), float(secs), float(hz)
us = lambda ticks: float(ticks) / hz / n * 1e6
print(f"{t} {method}: {n / secs:,.0f} req/s | per request: proxy {us(u) + us(s):.1f} µs CPU "
      f"({us(u):.1f} user, {us(s):.1f} system), {float(sc) / n:.2f} syscalls, "
      f"{float(cs) / n:.3f} context switches | backends {us(b):.1f} µs | "
      f"wrk {float(wms) * 1e3 / n:.1f} µs, {float(wsc) / n:.2f} syscalls")
PY
}

for round in $(seq 1 "$ROUNDS"); do
  for t in $(round_order "$round"); do measure "$t"; done
done
