#!/usr/bin/env bash
# The HTTP cell's moderate load alone, more rounds than compare.sh gives it: 50 TLS
# keep-alive connections, each pausing 10 ms between an answer and its next request
# (about 4,700 requests/s), GETs or 128-byte POSTs over 1,000 tenants, the same four echo
# backends; wrk's p50, p99 and p99.9 per run. compare.sh runs this load once per round
# beside the flat-out one; a tail differs by a tenth between runs of it, so a change to
# the tail is judged here, over many rounds with the targets taking turns.
#
#   benches/http_paced.sh                                  # wsrouter, haproxy, 6 rounds
#   TARGETS="wsrouter wsrouter-b haproxy" WSROUTER_B_BIN=/tmp/old/wsrouter benches/http_paced.sh
#   METHOD=POST PIN=1 benches/http_paced.sh
#
# PIN=1 sets the proxy apart: its threads on CPU 1, wrk and the backends on CPU 0, so its
# tail is its own and not the scheduler's between it and its load (the VM has 2 CPUs).
# Output: one line per run, then medians per target; raw rows in $OUT/results.tsv.
# Loopback only; every run is bounded (SECONDS_PER_RUN).
set -euo pipefail

ROUNDS=${ROUNDS:-6}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
METHOD=${METHOD:-GET}
PIN=${PIN:-0}
TARGETS=${TARGETS:-"wsrouter haproxy"}
WORKERS=2
BENCH_NAME=http_paced
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/http_paced}
WSROUTER_ARGS="--max-connections 9900"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
command -v wrk >/dev/null || die "wrk is missing (compare.sh installs the pinned one)"
RESULTS=$OUT/results.tsv
printf 'round\ttarget\tmethod\tpinned\treq_per_s\tp50_us\tp99_us\tp999_us\n' >"$RESULTS"

measure() {
  local round=$1 target=$2 cpus=0-1 load=() p
  start_target "$target"
  warm_http "$target"
  if [[ $PIN == 1 ]]; then
    for p in $(proc_tree); do taskset -a -cp 1 "$p" >/dev/null; done
    cpus=0
    load=(taskset -c 0)
  fi
  for p in "${BACKEND_PIDS[@]}"; do taskset -a -cp "$cpus" "$p" >/dev/null; done
  "${load[@]}" wrk -t 2 -c 50 -d "${SECONDS_PER_RUN}s" --timeout 5s -s "$ROOT/benches/http.lua" \
    "https://127.0.0.1:${PORT[$target]}" -- "$METHOD" 1000 128 10 >"$OUT/wrk.txt" 2>&1 ||
    die "wrk against $target failed: $(tail -3 "$OUT/wrk.txt")"
  stop_target
  sed -n 's/^JSON //p' "$OUT/wrk.txt" | python3 -c '
import json, sys
d = json.load(sys.stdin)
bad = d["errors"] + d["status_errors"]
if bad:
    sys.exit(sys.argv[2] + ": " + str(bad) + " errors")
lat = d["latency"]
got = [round(d["requests_per_second"]), lat["p50_us"], lat["p99_us"], lat["p999_us"]]
print("\t".join(sys.argv[1:] + [str(v) for v in got]))
' "$round" "$target" "$METHOD" "$PIN" | tee -a "$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
  for t in $(round_order "$round"); do measure "$round" "$t"; done
done
python3 - "$RESULTS" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("medians over rounds:")
for t in dict.fromkeys(r["target"] for r in rows):
    mine = [r for r in rows if r["target"] == t]
    med = lambda k: statistics.median(float(r[k]) for r in mine)
    print(f"  {t:12} {med('req_per_s'):7,.0f} req/s  p50 {med('p50_us'):6,.0f}  p99 {med('p99_us'):6,.0f}  p99.9 {med('p999_us'):6,.0f} µs")
PY
