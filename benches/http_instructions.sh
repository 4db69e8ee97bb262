#!/usr/bin/env bash
# What a plain HTTP request costs in instructions, per proxy: compare.sh's HTTP cell
# (small GETs or POSTs over TLS keep-alive, 1,000 tenants, the same four echo backends)
# with the proxy run under valgrind's callgrind. Callgrind counts every instruction the
# proxy's threads retire, so two builds (or two proxies) compare without the VM's drift:
# the same build gives the same count to within about 1% run after run, where a timed A/B
# needs many interleaved rounds to see 3%. It does not see cache misses, or the kernel.
#
#   benches/http_instructions.sh                        # wsrouter and nginx
#   TARGETS="wsrouter wsrouter-b" WSROUTER_B_BIN=/tmp/old/wsrouter benches/http_instructions.sh
#   METHOD=POST TOP=40 TARGETS=wsrouter benches/http_instructions.sh
#   VALGRIND_ARGS=--cache-sim=yes benches/http_instructions.sh   # and simulated cache misses
#
# Each target is warmed (its connections to the pods made) with instrumentation off, then
# counted over a fixed wrk run of SECONDS_PER_RUN seconds at 10 connections (under
# callgrind a proxy serves 1–2k requests a second). The new connections' handshakes are
# in the count, about 1% of it. Output per target: instructions per request, the part in
# memcpy, and its TOP functions by their own instructions per request; the callgrind file
# stays in $OUT/<target>.callgrind for callgrind_annotate. Needs valgrind (Debian's).
# Loopback only; every run is bounded.
set -euo pipefail
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
METHOD=${METHOD:-GET}
TARGETS=${TARGETS:-"wsrouter nginx"}
TOP=${TOP:-15}
WORKERS=2
BENCH_NAME=http_instructions
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/http_instructions}
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
if ! command -v valgrind >/dev/null; then
  log "installing valgrind from Debian"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
fi
command -v wrk >/dev/null || die "wrk is missing (compare.sh installs the pinned one)"

# The target's command line, as start_target runs it, into CMD (NGINX as one process,
# so that its one worker is the process callgrind follows).
command_of() {
  case $1 in
  wsrouter | wsrouter-b)
    local bin=$WSROUTER
    [[ $1 == wsrouter-b ]] && bin=${WSROUTER_B_BIN:-$WSROUTER}
    CMD=("$bin" --workers "$WORKERS" serve --listen "127.0.0.1:${PORT[$1]}"
      --admin-listen "127.0.0.1:$ADMIN_PORT" --tls-cert "$OUT/cert/tls.crt"
      --tls-key "$OUT/cert/tls.key" --tls-key-exchange x25519 --max-connections 9900)
    for p in "${BACKEND_PORTS[@]}"; do CMD+=(--backend "127.0.0.1:$p"); done
    ;;
  nginx) CMD=(nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g 'daemon off; master_process off;') ;;
  haproxy) CMD=(haproxy -db -f "$OUT/haproxy.cfg") ;;
  *) die "no instruction count for $1" ;;
  esac
}

load() {
  wrk -t 1 -c 10 -d "$1" --timeout 9s -s "$ROOT/benches/http.lua" \
    "https://127.0.0.1:${PORT[$2]}" -- "$METHOD" 1000 128 0
}

measure() {
  local target=$1 pid n
  command_of "$target"
  rm -f "$OUT"/callgrind.out.*
  # shellcheck disable=SC2086 # VALGRIND_ARGS is words by design
  RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no ${VALGRIND_ARGS:-} \
    --callgrind-out-file="$OUT/callgrind.out.%p" "${CMD[@]}" >"$OUT/logs/$target.log" 2>&1 &
  pid=$!
  wait_port "${PORT[$target]}"
  load 3s "$target" >/dev/null 2>&1 || die "wrk against $target failed"
  callgrind_control -i on "$pid" >/dev/null
  load "${SECONDS_PER_RUN}s" "$target" >"$OUT/wrk.txt" 2>&1 || die "wrk against $target failed"
  callgrind_control -i off "$pid" >/dev/null
  callgrind_control -d "$pid" >/dev/null
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  # The dump is written by the profiled process: bounded wait for it to be whole.
  for _ in $(seq 1 50); do
    [[ -s $OUT/callgrind.out.$pid.1 ]] && grep -q '^totals:' "$OUT/callgrind.out.$pid.1" && break
    sleep 0.1
  done
  mv "$OUT/callgrind.out.$pid.1" "$OUT/$target.callgrind"
  n=$(sed -n 's/^JSON //p' "$OUT/wrk.txt" | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])')
  [[ $n -gt 0 ]] || die "no requests answered by $target"
  callgrind_annotate --auto=no --threshold=100 "$OUT/$target.callgrind" |
    python3 -c '
import re, sys
target, n, method, top = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rows = []
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
    if m:
        name = re.sub(r" \[/.*\]$", "", m.group(2))
        name = re.sub(r"^\S+?:", "", name, count=1) if "PROGRAM" not in name else name
        rows.append((int(m.group(1).replace(",", "")) / n, name))
total = next(v for v, name in rows if "PROGRAM TOTALS" in name)
events = dict(zip(sys.argv[5].split(), (int(x) / n for x in sys.argv[6].split())))
if "D1mr" in events:
    d1 = events["D1mr"] + events["D1mw"]
    i1 = events["I1mr"]
    ll = events["ILmr"] + events["DLmr"] + events["DLmw"]
    print(f"{target} {method}: per request, L1 data misses {d1:,.0f}, "
          f"L1 instruction misses {i1:,.0f}, last-level misses {ll:,.0f} (simulated)")
copy = sum(v for v, name in rows if re.search(r"__mem(cpy|move)_", name))
print(f"{target} {method}: {total:,.0f} instructions per request ({n:,} requests), "
      f"{copy:,.0f} in memcpy")
for v, name in [r for r in rows if "PROGRAM" not in r[1]][:top]:
    print(f"  {v:7,.0f}  {name[:140]}")
' "$target" "$n" "$METHOD" "$TOP" \
    "$(sed -n 's/^events: //p' "$OUT/$target.callgrind")" "$(sed -n 's/^totals: //p' "$OUT/$target.callgrind")"
}

for t in $TARGETS; do measure "$t"; done
