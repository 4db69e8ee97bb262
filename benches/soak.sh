#!/usr/bin/env bash
# The soak: wsrouter under churn, routing swaps and backend deaths for an hour (or five
# minutes), sampled every 10 s, then checked and plotted.
#
#   benches/soak.sh                 # 1 hour
#   DURATION=5m benches/soak.sh     # the quick look
#
# What runs (loopback only, every loop bounded by DURATION):
# - `wsload --mode soak`: 9,000 WebSockets (every 18th streaming 64 B ping-pongs at 2/s,
#   so 500 streaming and 8,500 idle; every 4th an RFC 8441 stream over 24 HTTP/2
#   connections), 50 of them closed and reopened per second, oldest first; a socket
#   closed by the other side reopens after a random wait under 5 s (as well-behaved
#   clients do). Clients come from 128 loopback addresses: the router's per-address
#   pending cap (64) is for one host's flood, and 9,000 clients are many hosts. It samples the router's RSS, descriptors and CPU and
#   the streaming p99 every 10 s, and writes down every close it did not make.
# - every 10 s, the overrides file is replaced (50 tenants move to the next backend, and
#   back on the next swap), as kubelet replaces a mounted ConfigMap;
# - every 2 minutes (from 1 minute in), one backend is killed (SIGKILL, in turn) and
#   started again on its port 3 s later.
#
# Then benches/soak_report.py checks the run (RSS, descriptors, p99, closes) and plots
# it. Output in $OUT (default target/soak): samples.tsv, events.tsv (wsload's),
# ops.tsv (kills, restarts, swaps), report.json, soak.png.
set -euo pipefail

DURATION=${DURATION:-60m}
SOCKETS=${SOCKETS:-9000}
STREAM_EVERY=${STREAM_EVERY:-18}
STREAM_RATE=${STREAM_RATE:-2}
H2_EVERY=${H2_EVERY:-4}
H2_CONNS=${H2_CONNS:-24}
CHURN=${CHURN:-50}
SWAP_EVERY=${SWAP_EVERY:-10}
KILL_EVERY=${KILL_EVERY:-120}
DOWN_FOR=${DOWN_FOR:-3}
WORKERS=${WORKERS:-2}
TARGETS=wsrouter
BENCH_NAME=soak
OUT=${OUT:-target/soak}
OVERRIDES=$(realpath -m "$OUT")/overrides.yaml
WSROUTER_ARGS="--max-connections 9900 --overrides-file $OVERRIDES"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"

# The plots: matplotlib in a venv of its own (kept in target/).
PLOT_VENV=$ROOT/target/plot-venv
if ! "$PLOT_VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib from PyPI into $PLOT_VENV"
  python3 -m venv "$PLOT_VENV" && "$PLOT_VENV/bin/pip" install -q matplotlib==3.11.2 ||
    die "cannot install matplotlib"
fi

seconds=$(python3 -c "import sys
u = {'s': 1, 'm': 60, 'h': 3600}; d = sys.argv[1]
print(int(float(d[:-1]) * u[d[-1]]))" "$DURATION")
OPS=$OUT/ops.tsv
printf 't_ms\tevent\tdetail\n' >"$OPS"
op() { printf '%s\t%s\t%s\n' "$(date +%s%3N)" "$1" "$2" >>"$OPS"; }

# Version $1 (0 or 1) of the overrides: soak-0 … soak-49 pinned, each to backend
# (i + $1) % 4, so every swap moves those 50 tenants. Written beside and renamed into
# place, so the watcher never reads half a file.
write_overrides() {
  {
    printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wsrouter-overrides\ndata:\n'
    for i in $(seq 0 49); do printf '  soak-%s: backend-%s\n' "$i" $(((i + $1) % 4)); done
  } >"$OVERRIDES.tmp"
  mv "$OVERRIDES.tmp" "$OVERRIDES"
}
write_overrides 0

start_target wsrouter
sleep 1 # the router's own start-up allocations settle
base_fds=$(fds)
base_rss=$(rss_kb)
log "router pid $TARGET_PID: RSS $base_rss KB, $base_fds descriptors at rest; soaking for $DURATION"

"$BIN/wsload" --url "wss://127.0.0.1:${PORT[wsrouter]}/ws/" --mode soak -c "$SOCKETS" \
  --tenants 1000 --tenant-prefix soak- --size 64 --rate "$STREAM_RATE" --stream-every "$STREAM_EVERY" \
  --h2-every "$H2_EVERY" --h2-connections "$H2_CONNS" --churn "$CHURN" --sources 128 \
  --parallel 64 --duration "${seconds}s" --sample-every 10s --watch-pid "$TARGET_PID" \
  --samples "$OUT/samples.tsv" --events "$OUT/events.tsv" \
  >"$OUT/report.json" 2>"$OUT/logs/wsload.err" &
LOAD=$!

# The operator's side, once a second: swaps, kills, restarts.
start=$(date +%s)
version=0 next_kill=$((KILL_EVERY / 2)) killed="" restart_at=0 kills=0
for _ in $(seq 1 $((seconds + 600))); do
  kill -0 $LOAD 2>/dev/null || break
  now=$(($(date +%s) - start))
  if ((now > 0 && now % SWAP_EVERY == 0 && now < seconds)); then
    version=$((1 - version))
    write_overrides $version
    op swap "version $version"
  fi
  if [[ -n $killed ]] && ((now >= restart_at)); then
    start_backend "$killed"
    wait_port "${BACKEND_PORTS[$killed]}"
    op restart "backend-$killed"
    killed=""
  fi
  if [[ -z $killed ]] && ((now >= next_kill && now < seconds - DOWN_FOR - 5)); then
    killed=$((kills % 4))
    op kill "backend-$killed" # written first: every close it causes comes after
    kill -9 "${BACKEND_PIDS[$killed]}"
    wait "${BACKEND_PIDS[$killed]}" 2>/dev/null || true
    kills=$((kills + 1))
    restart_at=$((now + DOWN_FOR))
    next_kill=$((next_kill + KILL_EVERY))
    log "killed backend-$killed at ${now}s"
  fi
  # Sleep to the next whole second of the schedule.
  ms=$((1000 - 10#$(date +%3N)))
  sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
done
wait $LOAD || die "wsload failed: $(tail -3 "$OUT/logs/wsload.err")"
[[ -z $killed ]] || { start_backend "$killed"; op restart "backend-$killed"; }
op load_stopped ""

# Descriptors back to where they were before the load (bounded wait).
end_fds=$(fds)
for _ in $(seq 1 300); do
  end_fds=$(fds)
  ((end_fds <= base_fds)) && break
  sleep 0.1
done
op fds_after "$end_fds"
op fds_before "$base_fds"
log "descriptors: $base_fds before, $end_fds after the load"
stop_target

"$PLOT_VENV/bin/python" "$ROOT/benches/soak_report.py" "$OUT" "$TICKS"
