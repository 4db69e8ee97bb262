#!/usr/bin/env bash
# Where a WebSocket message's cost goes, per proxy: compare.sh's WebSocket cells (64 B and
# 16 KiB binary messages over TLS, 50 and 500 connections, each keeping 8 messages in
# flight through `wsload --mode throughput`, the same four echo backends) flat out, with
# `perf stat` on the proxy's processes over a steady window inside the load. Per message
# echoed (as compare.sh's messages/s counts them): the proxy's syscalls, total and by kind
# (reads, writes, epoll waits, io_uring_enter, other), the bytes its read- and write-kind
# calls moved, its context switches and its CPU (user and system apart, from /proc), and
# the messages/s reached while measured. Target `direct` (wsload straight to one echo
# backend, no proxy, no TLS: the ceiling) has no proxy: its rows are the echo backend's
# and wsload's own figures instead (column `measured`). A proxy that needs more syscalls,
# more wakeups or more bytes per message than another says so here, whatever its speed.
#
#   benches/ws_costs.sh                                  # wsrouter, nginx, haproxy; 4 cells
#   TARGETS="wsrouter direct" CONNS=50 SIZES=64 ROUNDS=3 benches/ws_costs.sh
#   CELLS="c500_s64 c50_s16384" SECONDS_PER_RUN=10 benches/ws_costs.sh
#   TARGETS="wsrouter wsrouter-b" WSROUTER_B_BIN=/tmp/old/wsrouter benches/ws_costs.sh
#   WINDOW=1 CELLS=c50_s64 benches/ws_costs.sh   # one message in flight per connection
#   BYTES_CHECK=1 ...    # also perf-record the read/write returns (slows the proxy)
#
# The window: wsload runs SECONDS_PER_RUN + 3 s. Once all its connections are established
# (ss), perf attaches to the proxy's process tree (proc_tree: NGINX's workers too) with its
# events off, and 0.5 s later counts for SECONDS_PER_RUN, switched on and off through its
# control descriptors (perf stat -D -1 --control): perf's own setup and teardown, which
# slow everything on two cores, stay outside the window, and so do the handshakes and the
# drain at the end (up to 8 x 500 messages echoed but not counted by wsload). The messages
# echoed in the window are counted exactly, not taken from wsload's average over its whole
# run: the bytes the echo backends wrote over it (ss, below) divided by one echo's frame
# (payload plus a 2- or 4-byte header; every echo is one frame). wsload's own messages/s,
# compare.sh's figure, is the column beside; the two differ as much as the load drifts
# within one run (a few per cent; more on a busy machine).
#
# Syscalls are the raw_syscalls:sys_enter tracepoint (all) and syscalls:sys_enter_* (by
# kind: reads = read, recvfrom, recvmsg, readv; writes = write, sendto, sendmsg, writev;
# waits = epoll_wait, epoll_pwait, epoll_pwait2), counted in the kernel, no record per call.
# Bytes come from the measured process's sockets' TCP counters, read by `ss -ti` at both
# ends of the window: read = bytes_received - Recv-Q, written = bytes_acked + Send-Q, at any
# instant exactly what went through its read- and write-kind calls (no kTLS, splice or
# sendfile in these configurations; a proxy on io_uring moves its bytes without those
# calls, and they count here all the same), at no cost to the proxy. BYTES_CHECK=1 also
# sums the calls' positive returns with `perf record` (the perf_*_B columns) to confirm it
# (they agree within about 1%); that slows the proxy, so the other columns of such a run
# are not comparable.
#
# Output: one TSV line per (round, cell, target) on stdout (two for direct), appended with
# its header to target/ws_costs/results.tsv (RESULTS). Targets take turns round by round
# (the order rotates): a VM's speed drifts, so compare within a round. Needs perf (Debian's
# linux-perf) and root for the tracepoints. Loopback only; every run and wait is bounded.
set -euo pipefail

ROUNDS=${ROUNDS:-1}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
TARGETS=${TARGETS:-"wsrouter nginx haproxy"}
CONNS=${CONNS:-"50 500"}
SIZES=${SIZES:-"64 16384"}
CELLS=${CELLS:-}        # e.g. "c50_s64 c500_s16384": these cells instead of CONNS x SIZES
BYTES_CHECK=${BYTES_CHECK:-0}
WORKERS=${WORKERS:-2}
# Messages in flight per connection: 8, as compare.sh's cells. WINDOW=1: one at a time
# (ping-pong flat out), where no batching hides a proxy's per-message syscalls.
WINDOW=${WINDOW:-8}
LEAD=0.5                # seconds between the last connection established and the window
BENCH_NAME=ws_costs
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# peers.sh empties OUT: the scratch files go there, the results beside it.
OUT=${OUT:-$ROOT/target/ws_costs/run}
RESULTS=${RESULTS:-$ROOT/target/ws_costs/results.tsv}
WSROUTER_ARGS="--max-connections 9900"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
command -v perf >/dev/null || die "perf is missing (apt-get install linux-perf)"
command -v ss >/dev/null || die "ss is missing (apt-get install iproute2)"
perf stat -e syscalls:sys_enter_read,raw_syscalls:sys_enter -o /dev/null -- true 2>/dev/null ||
  die "perf cannot count syscall tracepoints here (root, tracefs mounted?)"
COSTS=(python3 "$ROOT/benches/ws_costs.py")
EVENTS=$("${COSTS[@]}" events)
read -r -a RECORD_EVENTS <<<"$("${COSTS[@]}" record-events)"

if [[ -z $CELLS ]]; then
  for c in $CONNS; do for s in $SIZES; do CELLS+="c${c}_s${s} "; done; done
fi
for cell in $CELLS; do
  [[ $cell =~ ^c[0-9]+_s[0-9]+$ ]] || die "cell $cell is not cCONNS_sSIZE"
done
for t in $TARGETS; do
  [[ $t == direct || -n ${PORT[$t]:-} ]] || die "unknown target $t"
done

HEADER=$("${COSTS[@]}" header)
mkdir -p "$(dirname "$RESULTS")"
if [[ -s $RESULTS && $(head -1 "$RESULTS") != "$HEADER" ]]; then
  mv "$RESULTS" "$RESULTS.$(date +%s)"
  log "the columns changed: the old results moved aside"
fi
[[ -s $RESULTS ]] || printf '%s\n' "$HEADER" >"$RESULTS"
printf '%s\n' "$HEADER"

url() {
  if [[ $1 == direct ]]; then echo "ws://127.0.0.1:${BACKEND_PORTS[0]}/ws/"; else echo "wss://127.0.0.1:${PORT[$1]}/ws/"; fi
}
# wsload against target $1 with the rest of the arguments, in the foreground.
wsload() {
  local extra=()
  [[ $1 == wsrouter-b ]] && read -r -a extra <<<"${WSLOAD_B_ARGS:-}"
  "$BIN/wsload" --url "$(url "$1")" --json "${extra[@]}" "${@:2}"
}
# perf $2... (stat or record) in the background with its events off (-D -1) until told on
# its control descriptors (fifos $1.ctl and $1.ack): PERF_PIDS, PERF_CTL, PERF_ACK. Its
# workload, a sleep, only bounds its life; perf_end ends it.
perf_start() {
  local base=$1 c a
  shift
  rm -f "$base.ctl" "$base.ack"
  mkfifo "$base.ctl" "$base.ack"
  exec {c}<>"$base.ctl" {a}<>"$base.ack"
  perf "$1" -D -1 --control "fd:$c,$a" "${@:2}" -- sleep "$((SECONDS_PER_RUN + 60))" \
    2>"$base.err" &
  PERF_PIDS+=($!) PERF_CTL+=("$c") PERF_ACK+=("$a")
}
# Sends command $1 (ping, enable, disable) to every perf, then waits for each one's ack.
perf_command() {
  local i reply
  for i in "${!PERF_CTL[@]}"; do echo "$1" >&"${PERF_CTL[i]}"; done
  for i in "${!PERF_ACK[@]}"; do
    if ! read -r -t 10 -u "${PERF_ACK[i]}" reply || [[ $reply != ack ]]; then
      die "perf did not acknowledge $1 (see $OUT)"
    fi
  done
}
# Ends every perf (its sleep first: perf then writes its output and exits, perf record
# with the sleep's status; ws_costs.py checks the outputs).
perf_end() {
  local i c a
  for i in "${!PERF_PIDS[@]}"; do
    # shellcheck disable=SC2046 # its children's pids, one word each
    kill $(pgrep -P "${PERF_PIDS[i]}") 2>/dev/null || true
    wait "${PERF_PIDS[i]}" || true
    c=${PERF_CTL[i]} a=${PERF_ACK[i]}
    exec {c}>&- {a}>&-
  done
  PERF_PIDS=() PERF_CTL=() PERF_ACK=()
}
# On any exit: the perfs and the load still running (by their pids), then peers.sh's
# cleanup (backends, target).
WSLOAD_PID=""
ws_cleanup() {
  local p
  for p in "${PERF_PIDS[@]}"; do
    # shellcheck disable=SC2046 # its children's pids, one word each
    kill $(pgrep -P "$p") "$p" 2>/dev/null || true
  done
  [[ -z $WSLOAD_PID ]] || kill "$WSLOAD_PID" 2>/dev/null || true
  cleanup
}
PERF_PIDS=()
trap ws_cleanup EXIT
# Established TCP sockets matching the ss filter $1.
established() { ss -tnH state established "$1" | wc -l; }

# One cell against the running target: wsload in the background, then the window.
measure_cell() {
  local round=$1 target=$2 cell=$3 conns size port dir wpid extra=()
  conns=${cell#c} conns=${conns%_s*} size=${cell#*_s}
  dir=$OUT/$round-$target-$cell
  mkdir -p "$dir"
  # Who is measured: names and their pids (comma-separated).
  local names=() pids=()
  if [[ $target == direct ]]; then
    port=${BACKEND_PORTS[0]} names=(echo-backend) pids=("${BACKEND_PIDS[0]}")
  else
    port=${PORT[$target]} names=(proxy) pids=("$(proc_tree | tr ' ' ',')")
  fi
  # Every socket of the load, the proxy and the backends: one listing per end of the window.
  local b0=${BACKEND_PORTS[0]} b3=${BACKEND_PORTS[3]}
  local socks="( sport = :$port or dport = :$port or ( sport >= :$b0 and sport <= :$b3 ) or ( dport >= :$b0 and dport <= :$b3 ) )"
  [[ $(established "( dport = :$port )") == 0 ]] || die "connections to :$port left over"
  [[ $target == wsrouter-b ]] && read -r -a extra <<<"${WSLOAD_B_ARGS:-}"
  "$BIN/wsload" --url "$(url "$target")" --json "${extra[@]}" --mode throughput \
    -c "$conns" --size "$size" --window "$WINDOW" --duration "$((SECONDS_PER_RUN + 3))s" \
    >"$dir/wsload.json" 2>"$dir/wsload.err" &
  wpid=$! WSLOAD_PID=$!
  [[ $target == direct ]] && names+=(wsload) pids+=("$wpid")
  # Every connection established (bounded: 30 s), then the last handshakes' lead.
  load_connected "$port" "$conns" "$wpid" ||
    die "wsload against $target did not open $conns connections: $(tail -3 "$dir/wsload.err")"
  # perf, one per measured process (and perf record with BYTES_CHECK=1), attached now with
  # its events off: it counts between the enable and disable commands only, its own setup
  # and teardown (which slow the load on two cores) outside the window.
  local i n=${#names[@]}
  PERF_PIDS=() PERF_CTL=() PERF_ACK=()
  for ((i = 0; i < n; i++)); do
    perf_start "$dir/${names[i]}" stat -e "$EVENTS" -p "${pids[i]}" -o "$dir/${names[i]}.perf"
    if [[ $BYTES_CHECK == 1 ]]; then
      # No build-id collection: it would take seconds after the window.
      perf_start "$dir/${names[i]}-record" record -q -B -N "${RECORD_EVENTS[@]}" \
        -p "${pids[i]}" -o "$dir/${names[i]}.data"
    fi
  done
  perf_command ping
  sleep "$LEAD"

  # The window: listing, CPU ticks, perf on for SECONDS_PER_RUN, CPU ticks, listing.
  local t t_ss0 t_ss1 t_en t_dis t_tk0=() t_tk1=() tk0=() tk1=()
  t=$EPOCHREALTIME
  ss -tinH state established "$socks" >"$dir/ss0"
  t_ss0=$t,$EPOCHREALTIME
  for ((i = 0; i < n; i++)); do
    # shellcheck disable=SC2086 # the pids, one word each
    t_tk0[i]=$EPOCHREALTIME tk0[i]=$(ticks ${pids[i]//,/ })
  done
  t=$EPOCHREALTIME
  perf_command enable
  t_en=$t,$EPOCHREALTIME
  sleep "$SECONDS_PER_RUN"
  t=$EPOCHREALTIME
  perf_command disable
  t_dis=$t,$EPOCHREALTIME
  for ((i = 0; i < n; i++)); do
    # shellcheck disable=SC2086 # the pids, one word each
    t_tk1[i]=$EPOCHREALTIME tk1[i]=$(ticks ${pids[i]//,/ })
  done
  t=$EPOCHREALTIME
  ss -tinH state established "$socks" >"$dir/ss1"
  t_ss1=$t,$EPOCHREALTIME
  kill -0 "$wpid" 2>/dev/null ||
    die "wsload against $target ended inside the window (handshakes too slow?)"
  perf_end
  wait "$wpid" || die "wsload against $target failed: $(tail -3 "$dir/wsload.err")"
  WSLOAD_PID=""

  for ((i = 0; i < n; i++)); do
    local record=""
    if [[ $BYTES_CHECK == 1 ]]; then
      record=$dir/${names[i]}.record
      perf script -i "$dir/${names[i]}.data" -F time,event,trace >"$record" 2>/dev/null
    fi
    "${COSTS[@]}" row round="$round" cell="$cell" conns="$conns" size="$size" in_flight="$WINDOW" \
      target="$target" measured="${names[i]}" wsload="$dir/wsload.json" \
      port="$port" backend_ports="$(tr ' ' , <<<"${BACKEND_PORTS[*]}")" \
      perf="$dir/${names[i]}.perf" t_en="$t_en" t_dis="$t_dis" \
      ss0="$dir/ss0" ss1="$dir/ss1" t_ss0="$t_ss0" t_ss1="$t_ss1" \
      ticks0="${tk0[i]}" ticks1="${tk1[i]}" \
      t_ticks0="${t_tk0[i]}" t_ticks1="${t_tk1[i]}" hz="$TICKS" record="$record" |
      tee -a "$RESULTS"
  done
  rm -f "$dir"/*.data
}

run_target() {
  local round=$1 target=$2
  start_target "$target"
  # Warm-up, as compare.sh: connections to the backends, TLS machinery, allocator.
  wsload "$target" --mode throughput -c 50 --size 64 --duration 1s >/dev/null ||
    die "warm-up against $target failed"
  for cell in $CELLS; do measure_cell "$round" "$target" "$cell"; done
  stop_target
}

for round in $(seq 1 "$ROUNDS"); do
  for t in $(round_order "$round"); do run_target "$round" "$t"; done
done
log "appended to $RESULTS"
