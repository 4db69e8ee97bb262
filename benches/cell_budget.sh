#!/usr/bin/env bash
# Who spends a WebSocket cell's CPU: compare.sh's throughput load (wsload, 8 messages in
# flight per connection, the four echo backends, the proxy) saturates this machine's
# cores, so its messages/s is the cores divided by the CPU one message costs all of them
# together. Per message echoed, in each round: the proxy's CPU (user and system apart),
# wsload's and the backends'. The proxy's own part bounds what any change to it can buy;
# `cell_budget.py summary` says how far, cell by cell, against the best peer of each round.
# Target `direct` is wsload straight to one echo backend (no proxy, no TLS): the ceiling.
#
#   benches/cell_budget.sh                                   # 64 B x 50 and x 500, 3 rounds
#   TARGETS="wsrouter nginx" CELLS=c50_s64 ROUNDS=5 benches/cell_budget.sh
#   TARGETS="wsrouter wsrouter-b" WSROUTER_B_BIN=/tmp/old/wsrouter benches/cell_budget.sh
#
# Each target runs SECONDS_PER_RUN + 2 s per cell; the CPU is read from /proc over a window
# from 1 s after every connection is up to SECONDS_PER_RUN later. Targets take turns in
# short runs, the order rotating each round, because this VM's speed drifts by up to a
# quarter within minutes: compare within a round. Messages are wsload's own count over
# its run (a few per cent of drift from the window; every party's CPU is divided by the
# same count, so their shares are exact). Output: TSV rows on stdout, appended to
# target/cell_budget/results.tsv. Loopback only; every run and wait is bounded.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
TARGETS=${TARGETS:-"wsrouter haproxy nginx envoy caddy direct"}
CELLS=${CELLS:-"c50_s64 c500_s64"}
WORKERS=${WORKERS:-2}
BENCH_NAME=cell_budget
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/target/cell_budget/run}
RESULTS=${RESULTS:-$ROOT/target/cell_budget/results.tsv}
WSROUTER_ARGS="--max-connections 9900"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"

for cell in $CELLS; do
  [[ $cell =~ ^c[0-9]+_s[0-9]+$ ]] || die "cell $cell is not cCONNS_sSIZE"
done
for t in $TARGETS; do
  [[ $t == direct || -n ${PORT[$t]:-} ]] || die "unknown target $t"
done
HEADER=$(python3 "$ROOT/benches/cell_budget.py" header)
mkdir -p "$(dirname "$RESULTS")"
[[ -s $RESULTS && $(head -1 "$RESULTS") == "$HEADER" ]] || printf '%s\n' "$HEADER" >"$RESULTS"
printf '%s\n' "$HEADER"

# One cell against target $2 (started): the load, the window, one row.
measure() {
  local round=$1 target=$2 cell=$3 conns size url port proxy=() load
  conns=${cell#c} conns=${conns%_s*} size=${cell#*_s}
  if [[ $target == direct ]]; then
    port=${BACKEND_PORTS[0]} url="ws://127.0.0.1:$port/ws/"
  else
    port=${PORT[$target]} url="wss://127.0.0.1:$port/ws/"
    read -r -a proxy <<<"$(proc_tree)"
  fi
  "$BIN/wsload" --url "$url" --json --mode throughput -c "$conns" --size "$size" --window 8 \
    --duration "$((SECONDS_PER_RUN + 2))s" >"$OUT/wsload.json" 2>"$OUT/wsload.err" &
  load=$!
  load_connected "$port" "$conns" "$load" ||
    die "wsload against $target did not open $conns connections: $(tail -3 "$OUT/wsload.err")"
  sleep 1
  local p0 l0 b0 p1 l1 b1
  p0=$(ticks "${proxy[@]}") l0=$(ticks "$load") b0=$(ticks "${BACKEND_PIDS[@]}")
  sleep "$SECONDS_PER_RUN"
  p1=$(ticks "${proxy[@]}") l1=$(ticks "$load") b1=$(ticks "${BACKEND_PIDS[@]}")
  wait "$load" || die "wsload against $target failed: $(tail -3 "$OUT/wsload.err")"
  python3 "$ROOT/benches/cell_budget.py" row "$round" "$cell" "$target" "$SECONDS_PER_RUN" \
    "$TICKS" "$OUT/wsload.json" "$p0" "$p1" "$l0" "$l1" "$b0" "$b1" | tee -a "$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
  for t in $(round_order "$round"); do
    [[ $t == direct ]] || start_target "$t"
    for cell in $CELLS; do measure "$round" "$t" "$cell"; done
    [[ $t == direct ]] || stop_target
  done
done
python3 "$ROOT/benches/cell_budget.py" summary "$RESULTS"
