#!/usr/bin/env bash
# How wsrouter's cost grows with its sockets, to predict what one router needs at
# 100,000 and 1,000,000 (this machine allows 20,000 descriptors per process, so the
# measured range stops at 9,000 HTTP/1.1 sockets: two descriptors each).
#
# For each count in COUNTS and each protocol, on a freshly started router: RSS before;
# the sockets opened (`wsload --mode hold-idle`, 8 loopback sources; over HTTP/2,
# H2_STREAMS streams per connection), the router's CPU to open them; once idle, RSS and
# the router's CPU over half of IDLE_SECONDS; one 16 KiB message each and the RSS after;
# every socket must still echo. Then `benches/scaling.py` fits RSS = a + b·sockets and CPU = b·sockets per
# protocol and prints the prediction.
#
#   benches/scaling.sh                                  # h1 and h2 at 2,500, 5,000, 9,000
#   COUNTS="1000 2000" PROTOCOLS=h1 benches/scaling.sh  # a quick look
#
# Output: the fit and prediction on stdout, raw numbers in $OUT/scaling.tsv. Loopback
# only; every run is bounded.
set -euo pipefail

COUNTS=${COUNTS:-"2500 5000 9000"}
PROTOCOLS=${PROTOCOLS:-"h1 h2"}
# Streams per HTTP/2 connection (the connections scale with the count).
H2_STREAMS=${H2_STREAMS:-100}
IDLE_SECONDS=${IDLE_SECONDS:-10}
WORKERS=2
BENCH_NAME=scaling
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/scaling}
WSROUTER_ARGS="--max-connections 9900"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
TSV=$OUT/scaling.tsv
printf 'protocol\tsockets\tmetric\tvalue\n' >"$TSV"
record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$TSV"; }

# The kernel's slab memory (sockets, their files and inodes live there), machine-wide.
slab_kb() { awk '/^Slab:/ {print $2}' /proc/meminfo; }

# At idle (hold_watch): the kernel's slab, and the router's CPU over half of IDLE_SECONDS.
idle_readings() {
  SLAB_IDLE=$(slab_kb)
  local c0
  c0=$(cpu_ticks)
  sleep "$((IDLE_SECONDS / 2))"
  IDLE_TICKS=$(($(cpu_ticks) - c0))
}

measure() {
  local proto=$1 n=$2 shape=()
  [[ $proto == h2 ]] && shape=(--h2-connections "$(((n + H2_STREAMS - 1) / H2_STREAMS))")
  TARGET=wsrouter
  start_target wsrouter
  local base slab0 t0 err=$OUT/logs/hold-$proto-$n.err json=$OUT/logs/hold-$proto-$n.json
  base=$(rss_kb)
  slab0=$(slab_kb)
  t0=$(cpu_ticks)
  : >"$err"
  "$BIN/wsload" --url "wss://127.0.0.1:${PORT[wsrouter]}/ws/" --json --sources 8 \
    --parallel 64 "${shape[@]}" --mode hold-idle -c "$n" --burst 16384 \
    --duration "$((IDLE_SECONDS + 8))s" >"$json" 2>"$err" &
  local lp=$!
  hold_watch "$lp" "$err" idle_readings
  wait "$lp" || die "hold-idle ($proto, $n) failed: $(cat "$err")"
  stop_target
  record "$proto" "$n" sockets "$(field connections <"$json")"
  record "$proto" "$n" still_echoing "$(field still_echoing <"$json")"
  record "$proto" "$n" rss_base_kb "$base"
  record "$proto" "$n" rss_idle_kb "${HOLD_IDLE_RSS:-0}"
  record "$proto" "$n" rss_after_burst_kb "${HOLD_BURST_RSS:-0}"
  record "$proto" "$n" kernel_slab_kb "$((${SLAB_IDLE:-0} - slab0))"
  record "$proto" "$n" open_cpu_s "$(python3 -c "print((${HOLD_OPEN_TICKS:-0} - $t0) / $TICKS)")"
  record "$proto" "$n" idle_cpu_s_per_s "$(python3 -c "print(${IDLE_TICKS:-0} / $TICKS / ($IDLE_SECONDS // 2))")"
  log "$proto × $n: RSS $base → ${HOLD_IDLE_RSS:-?} → ${HOLD_BURST_RSS:-?} KB, still echoing $(field still_echoing <"$json")"
}

for proto in $PROTOCOLS; do
  for n in $COUNTS; do
    measure "$proto" "$n"
  done
done
python3 "$ROOT/benches/scaling.py" "$TSV"
