#!/usr/bin/env bash
# How a proxy waits for events in the 64 B cell: compare.sh's throughput load (50 TLS
# WebSockets, 8 messages in flight each), and a `perf record` of every epoll wait the
# proxy makes over a few seconds inside it, split by its timeout: 0 (a look that does not
# sleep) or not (a wait that may). ws_costs.sh counts the waits per message; this says
# what kind they are. A proxy whose waits are mostly looks is polling its event queue
# between tasks, not sleeping until work comes.
#
#   benches/epoll_waits.sh                                # wsrouter and nginx
#   TARGETS="wsrouter wsrouter-b" WSROUTER_B_BIN=/tmp/other/wsrouter benches/epoll_waits.sh
#   CONNS=500 SECONDS_PER_RUN=5 benches/epoll_waits.sh
#
# Output: one line per target: waits per second, the share with timeout 0, and waits per
# message. Needs perf (Debian's linux-perf). Loopback only; every run is bounded.
set -euo pipefail

TARGETS=${TARGETS:-"wsrouter nginx"}
CONNS=${CONNS:-50}
SIZE=${SIZE:-64}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-3}
WORKERS=2
BENCH_NAME=epoll_waits
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/epoll_waits}
WSROUTER_ARGS="--max-connections 9900"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
command -v perf >/dev/null || die "perf is missing (apt-get install linux-perf)"

printf 'target\twaits_per_s\tlooks_share\twaits_per_msg\tmsgs_per_s\n'
for target in $TARGETS; do
  start_target "$target"
  # The load runs past the window on both sides: 2 s to settle, then the window.
  "$BIN/wsload" --url "wss://127.0.0.1:${PORT[$target]}/ws/" --json --mode throughput \
    -c "$CONNS" --size "$SIZE" --window 8 --duration "$((SECONDS_PER_RUN + 4))s" \
    >"$OUT/wsload.json" 2>"$OUT/wsload.err" &
  load=$!
  sleep 2 # the load's handshakes and warm-up, outside the window (bounded: the load ends)
  perf record -q -B -N -o "$OUT/$target.data" \
    -e syscalls:sys_enter_epoll_wait -e syscalls:sys_enter_epoll_pwait \
    -p "$(proc_tree | tr ' ' ',')" -- sleep "$SECONDS_PER_RUN" 2>/dev/null
  wait "$load" || die "the load against $target failed: $(tail -3 "$OUT/wsload.err")"
  stop_target
  rate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["messages_per_second"])' "$OUT/wsload.json")
  perf script -i "$OUT/$target.data" -F trace 2>/dev/null |
    awk -v t="$target" -v secs="$SECONDS_PER_RUN" -v rate="$rate" '
      { n++; if ($0 ~ /timeout: 0x0+([^0-9a-f]|$)/) looks++ }
      END {
        if (n == 0) { print t "\t0\t-\t0\t" rate; exit }
        printf "%s\t%.0f\t%.3f\t%.3f\t%.0f\n", t, n / secs, looks / n, n / secs / rate, rate
      }'
  rm -f "$OUT/$target.data"
done
