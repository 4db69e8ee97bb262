#!/usr/bin/env bash
# The reconnect storm (issue "No reconnect storms"): two wsrouter replicas in front of the
# same four echo backends, the sockets split evenly over them, then SIGTERM to router A.
# Where do A's clients go, and how fast? Run twice, on fresh routers and a fresh client:
#
# - OLD (OLD_BIN, default /tmp/base/wsrouter: a build from before the drain scheduler,
#   e.g. `git worktree add /tmp/base-src 777be02 && (cd /tmp/base-src && cargo build
#   --release --bin wsrouter) && cp /tmp/base-src/target/release/wsrouter /tmp/base/`): A
#   keeps every socket for --drain-grace, then closes them all with 1001 in the same instant;
# - NEW (NEW_BIN, default the build peers.sh measures: profile-guided, see
#   scripts/pgo-build.sh): A closes each socket with 1001 at its
#   own random moment, drawn evenly over --drain-grace.
#
#   benches/storm.sh                         # 10,000 sockets if they fit (see below), 20 s grace
#   SOCKETS=4000 GRACE=10s benches/storm.sh  # the quick look
#   TICKETS=1 benches/storm.sh               # NEW twice: each replica's own session tickets,
#                                            # then keys both share (--tls-ticket-keys)
#
# With TICKETS=1 every client keeps its own TLS session cache (wsload
# --session-per-socket), as real clients do, and the runs are `own-keys` and
# `shared-keys`: B's handshakes (full or resumed, from its /metrics) and its CPU per
# reconnect say what a resumption on another replica saves (benches/storm_tickets.py).
#
# What runs (loopback only, every wait bounded):
# - `wsload --mode soak` with the routers as --url (A) and --also-url (B): slot i opens
#   on router i % 2, and on the other one when its connect is refused (A's listener closes
#   at SIGTERM), so every socket A closes comes back on B. No streaming, no HTTP/2, no
#   churn: every new connection after the SIGTERM is a reconnect. A socket closed by the
#   router reopens after a random wait under RECONNECT_WITHIN (1 s): a client with
#   full-jitter backoff on its first retry, which is what turns OLD's instant into a wave.
#   128 source addresses, so the router's per-address pending cap (64) is not what limits
#   a wave. --log-opens writes a `dialed` (router 0/1) and an `opened` (backend) event
#   for every socket opened; samples every second carry router B's CPU ticks.
# - the script waits until every socket is open, lets them settle SETTLE seconds, writes
#   the SIGTERM's time (ms since the epoch) to ops.tsv and sends it to A, then lets the
#   client run on for the grace and TAIL seconds more.
#
# Router B holds every socket at the end, two descriptors each (client and backend), and
# a process here may hold at most `ulimit -Hn` (20,000) files: 10,000 sockets do not fit
# beside the router's own descriptors, so SOCKETS is lowered to the largest thousand that
# does (9,000 at 20,000), and the log says so.
#
# Then benches/storm_report.py prints the table (peak reconnects per second at B and per
# backend, time to the last reconnect, refusals, B's CPU), and plots both runs.
# Output in $OUT (default target/storm): {old,new}/{events,samples,ops}.tsv and
# report.json (wsload's), summary.json, storm.png (also benches/results/storm.png).
set -euo pipefail

SOCKETS=${SOCKETS:-10000}
GRACE=${GRACE:-20s}
SETTLE=${SETTLE:-10}
TAIL=${TAIL:-15}
# How long the ramp-up may take before the run is given up (9,000 sockets take about 5 s
# here). It is part of wsload's --duration, which is fixed before the ramp starts, and
# kept short on purpose: the client's whole run must end about a minute after the ramp.
# At 60 s idle the router's TCP keepalive (--tcp-keepalive, 60 s, then 3 probes 10 s
# apart) probes every socket opened in those same few seconds at once; on loopback the
# burst overflows the kernel's backlog (net.core.netdev_max_backlog, 1,000 packets), most
# probes and their answers are dropped, and at 90 s the kernel resets about a fifth of
# the sockets (some resets are dropped too, leaving sockets that look open but are dead).
# An artefact of one host holding thousands of sockets opened in the same second, not
# what this measures: the watch ends well before.
RAMP_MAX=${RAMP_MAX:-20}
RECONNECT_WITHIN=${RECONNECT_WITHIN:-1s}
# B may end up with every socket: its cap must not be what refuses them.
MAX_CONNECTIONS=${MAX_CONNECTIONS:-12000}
# Descriptors a router holds besides its sockets' (listeners and event loops per worker,
# the admin listener, logs, certificates), with room to spare.
FD_SPARE=${FD_SPARE:-256}
# More wsrouter flags for both routers of both runs (e.g. ROUTER_ARGS="--tcp-keepalive 0s"
# to try a setting), split on spaces.
read -ra ROUTER_ARGV <<<"${ROUTER_ARGS:-}"
OLD_BIN=${OLD_BIN:-/tmp/base/wsrouter}
WORKERS=${WORKERS:-2}
TARGETS=wsrouter
BENCH_NAME=storm
OUT=${OUT:-target/storm}
# A second admin port: two routers run at once, and peers.sh's start_target gives both
# the same one.
ADMIN_PORT_B=18448
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
NEW_BIN=${NEW_BIN:-$WSROUTER}
for b in "$OLD_BIN" "$NEW_BIN"; do [[ -x $b ]] || die "no wsrouter binary at $b"; done
if listening "$ADMIN_PORT_B"; then
  die "port $ADMIN_PORT_B is already in use"
fi

# The plots: matplotlib in a venv of its own (kept in target/), as soak.sh does.
PLOT_VENV=$ROOT/target/plot-venv
if ! "$PLOT_VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib from PyPI into $PLOT_VENV"
  if ! { python3 -m venv "$PLOT_VENV" && "$PLOT_VENV/bin/pip" install -q matplotlib==3.11.2; }; then
    die "cannot install matplotlib"
  fi
fi

# --- the descriptor budget -----------------------------------------------------------------
# Every process started from here gets the hard limit as its soft one: the routers and
# wsload (one descriptor per socket) need all of it.
FD_HARD=$(ulimit -Hn)
ulimit -n "$FD_HARD"
if ((2 * SOCKETS + FD_SPARE > FD_HARD)); then
  fit=$(((FD_HARD - FD_SPARE) / 2 / 1000 * 1000))
  log "$SOCKETS sockets need $((2 * SOCKETS + FD_SPARE)) descriptors on router B at the end," \
    "over the hard limit of $FD_HARD: running $fit sockets ($((fit / 2)) on each router) instead"
  SOCKETS=$fit
fi
((SOCKETS >= 2)) || die "no room for sockets under a descriptor limit of $FD_HARD"

grace_s=$(python3 -c "import sys
u = {'s': 1, 'm': 60, 'h': 3600}; d = sys.argv[1]
print(int(float(d[:-1]) * u[d[-1]]))" "$GRACE")
# The client's whole run: the longest ramp, the settling, the grace, and TAIL more, so at
# least grace + TAIL seconds follow the SIGTERM however quick the ramp was.
load_s=$((RAMP_MAX + SETTLE + grace_s + TAIL))

# --- one run ----------------------------------------------------------------------------------
ROUTER_PIDS=()
LOAD=""
# On any exit: the client and both routers too, not only what peers.sh started.
storm_cleanup() {
  for p in $LOAD "${ROUTER_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  cleanup
}
trap storm_cleanup EXIT

# Router binary $1 on port $2, admin on $3, log $4: wsrouter with start_target's arguments
# (peers.sh), but two at once (so an admin port each) and the binary chosen per run.
BACKEND_ARGS=()
for p in "${BACKEND_PORTS[@]}"; do BACKEND_ARGS+=(--backend "127.0.0.1:$p"); done
start_router() {
  RUST_LOG=warn "$1" --workers "$WORKERS" serve \
    --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" \
    --tls-cert "$OUT/cert/tls.crt" --tls-key "$OUT/cert/tls.key" --tls-key-exchange x25519 \
    --max-connections "$MAX_CONNECTIONS" --drain-grace "$GRACE" "${BACKEND_ARGS[@]}" \
    "${ROUTER_ARGV[@]}" "${VARIANT_ARGV[@]}" >"$4" 2>&1 &
  ROUTER_PID=$!
  ROUTER_PIDS+=("$ROUTER_PID")
}

# Stops router $1 (bounded): SIGTERM twice (the second skips what is left of the grace),
# then SIGKILL if it is still there after 10 s.
stop_router() {
  kill -TERM "$1" 2>/dev/null || true
  sleep 0.2
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# The `open` column of the newest sample (0 before the first).
open_now() {
  local v
  v=$(tail -n 1 "$1" 2>/dev/null | cut -f 2)
  [[ $v =~ ^[0-9]+$ ]] && echo "$v" || echo 0
}

# Variant $1 (old or new) with router binary $2.
run_variant() {
  local name=$1 bin=$2 dir=$OUT/$1
  mkdir -p "$dir"
  local ops=$dir/ops.tsv
  printf 't_ms\tevent\tdetail\n' >"$ops"
  op() { printf '%s\t%s\t%s\n' "$(date +%s%3N)" "$1" "$2" >>"$ops"; }
  op binary "$bin"
  op sockets "$SOCKETS"
  op grace_s "$grace_s"
  op tail_s "$TAIL"
  op router_args "${ROUTER_ARGV[*]}"

  start_router "$bin" "${PORT[wsrouter]}" "$ADMIN_PORT" "$OUT/logs/wsrouter-$name-a.log"
  local pid_a=$ROUTER_PID
  start_router "$bin" "${PORT[wsrouter-b]}" "$ADMIN_PORT_B" "$OUT/logs/wsrouter-$name-b.log"
  local pid_b=$ROUTER_PID
  wait_port "${PORT[wsrouter]}"
  wait_port "${PORT[wsrouter-b]}"
  op router_a "$pid_a"
  op router_b "$pid_b"
  log "$name: routers A (pid $pid_a) and B (pid $pid_b) up; opening $SOCKETS sockets"

  "$BIN/wsload" --url "wss://127.0.0.1:${PORT[wsrouter]}/ws/" \
    --also-url "wss://127.0.0.1:${PORT[wsrouter-b]}/ws/" --mode soak -c "$SOCKETS" \
    --tenants 1000 --tenant-prefix storm- --stream-every 0 --h2-every 0 --churn 0 \
    --sources 128 --parallel 256 --reconnect-within "$RECONNECT_WITHIN" --log-opens \
    --sample-every 1s --watch-pid "$pid_b" --duration "${load_s}s" --timeout 10s \
    --events "$dir/events.tsv" --samples "$dir/samples.tsv" "${WSLOAD_ARGV[@]}" \
    >"$dir/report.json" 2>"$OUT/logs/wsload-$name.err" &
  LOAD=$!
  op load_started "$LOAD"

  # The ramp: every socket open (the samples' `open` column), within RAMP_MAX.
  local open=0 start
  start=$(date +%s)
  for _ in $(seq 1 $((RAMP_MAX * 4))); do
    kill -0 "$LOAD" 2>/dev/null ||
      die "$name: wsload ended early: $(tail -3 "$OUT/logs/wsload-$name.err")"
    open=$(open_now "$dir/samples.tsv")
    ((open >= SOCKETS)) && break
    (($(date +%s) - start < RAMP_MAX)) || break
    sleep 0.25
  done
  ((open >= SOCKETS)) || die "$name: only $open of $SOCKETS sockets open after ${RAMP_MAX}s"
  op all_open "$open"
  local fds_b
  fds_b=$(find "/proc/$pid_b/fd" -mindepth 1 -maxdepth 1 | wc -l)
  op fds_b_all_open "$fds_b"
  log "$name: all $open sockets open after $(($(date +%s) - start)) s" \
    "(B: $fds_b descriptors); settling ${SETTLE}s"
  sleep "$SETTLE"

  # Written first: every close it causes comes after.
  op sigterm "$pid_a"
  kill -TERM "$pid_a"
  log "$name: SIGTERM to router A; watching for $((grace_s + TAIL)) s"

  # A ends by itself at the latest at the grace's end plus its close timeout.
  local rc=""
  for _ in $(seq 1 $(((grace_s + 30) * 10))); do
    kill -0 "$pid_a" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid_a" 2>/dev/null; then
    op router_a_still_running ""
    log "$name: router A still running $((grace_s + 30)) s after SIGTERM; killing it"
    kill -9 "$pid_a" 2>/dev/null || true
  fi
  wait "$pid_a" 2>/dev/null && rc=0 || rc=$?
  op router_a_exited "$rc"

  # The client ends at its --duration (it bounds its own close too); a bound beyond that.
  for _ in $(seq 1 $((load_s + 180))); do
    kill -0 "$LOAD" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$LOAD" 2>/dev/null; then
    kill -9 "$LOAD" 2>/dev/null || true
    die "$name: wsload overran its duration"
  fi
  wait "$LOAD" || die "$name: wsload failed: $(tail -3 "$OUT/logs/wsload-$name.err")"
  LOAD=""
  op load_stopped ""
  # B's handshakes by kind (a binary without the series reports none).
  local kinds
  kinds=$(python3 -c 'import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
for kind in ("full", "resumed"):
    n = next((l.split()[-1] for l in body.splitlines()
              if l.startswith("wsrouter_tls_handshakes_total{kind=\"%s\"}" % kind)), "-")
    print(kind, n)' "http://127.0.0.1:$ADMIN_PORT_B/metrics" 2>/dev/null || true)
  while read -r kind n; do [[ -n ${kind:-} ]] && op "b_handshakes_$kind" "$n"; done <<<"$kinds"
  stop_router "$pid_b"
  op router_b_stopped ""
  # Both routers are gone (and waited for): nothing for the clean-up to kill.
  ROUTER_PIDS=()
  log "$name: done: $(cat "$dir/report.json")"
}

VARIANT_ARGV=()
WSLOAD_ARGV=()
if [[ ${TICKETS:-0} == 1 ]]; then
  log "$SOCKETS sockets, --drain-grace $GRACE; NEW $NEW_BIN with each replica's own" \
    "ticket keys, then with keys both share"
  WSLOAD_ARGV=(--session-per-socket)
  run_variant own-keys "$NEW_BIN"
  sleep 2
  # 80 random bytes, made here and never kept: the routers only need to share them.
  head -c 80 /dev/urandom >"$OUT/ticket.keys"
  VARIANT_ARGV=(--tls-ticket-keys "$OUT/ticket.keys")
  run_variant shared-keys "$NEW_BIN"
  rm -f "$OUT/ticket.keys"
  python3 "$ROOT/benches/storm_tickets.py" "$OUT"
  exit 0
fi

log "$SOCKETS sockets, --drain-grace $GRACE, reconnects within $RECONNECT_WITHIN;" \
  "OLD $OLD_BIN, NEW $NEW_BIN"
run_variant old "$OLD_BIN"
# The backends stay up; a breath for the last closes to settle between the runs.
sleep 2
run_variant new "$NEW_BIN"

"$PLOT_VENV/bin/python" "$ROOT/benches/storm_report.py" "$OUT"
