#!/usr/bin/env bash
# Side by side: wsrouter, HAProxy and NGINX (Debian's packages), Envoy and Caddy (PyPI
# wheels, see peers.sh), plus a direct run to one backend as the ceiling, under the same
# load from `wsload`, on this machine's loopback.
#
# Same conditions for every proxy: the same ECDSA P-256 certificate (`wsrouter cert`),
# TLS 1.3 only, key exchange pinned to X25519 (server and client), 2 worker threads or
# processes, no access logs, and the same four echo backends (separate processes) chosen
# by a consistent hash of the namespace in /ws/{namespace}. Targets take turns round by
# round (the order rotates), and the summary prints medians over rounds and ratios.
#
#   benches/compare.sh                    # 3 rounds, 8 s per measurement
#   ROUNDS=1 SECONDS_PER_RUN=4 IDLE_CONNS=2000 benches/compare.sh   # a quick look
#   TARGETS="wsrouter haproxy" CONNS=500 SIZES=64 MEMORY=0 HANDSHAKES=0 benches/compare.sh
#   # The HTTP cell alone (plain requests, no WebSockets):
#   WS=0 MEMORY=0 HANDSHAKES=0 benches/compare.sh
#   # A/B of two wsrouter builds or flag sets in one run (target wsrouter-b):
#   TARGETS="wsrouter wsrouter-b" WSROUTER_B_BIN=/tmp/other/wsrouter benches/compare.sh
#   TARGETS="wsrouter wsrouter-b" WSROUTER_B_ARGS="--proxy-protocol on --trusted-proxies 127.0.0.0/8" \
#     WSLOAD_B_ARGS=--proxy-v2 MEMORY=0 benches/compare.sh
#
# The HTTP cell (HTTP=1, the default): small GETs and small POSTs (HTTP_BODY bytes) over
# TLS keep-alive from HTTP_CONNS connections, to /ws/tenant-N/items over HTTP_TENANTS
# tenants, each request routed on its own by its tenant (the same hash as the WebSockets'),
# the proxy keeping connections alive to the backends too. `wrk` (Debian's, pinned below)
# drives it with benches/http.lua: requests per second flat out (and the p99 there), then
# the p50/p99/p999 at a fixed HTTP_RATE requests per second, timed from each send.
#
# wsrouter is measured as the image ships it, built with profile-guided optimisation
# (scripts/pgo-build.sh, run by peers.sh; PGO=0 measures the plain release build).
# wsrouter-b is the same build unless WSROUTER_B_BIN names another: the plain one is
# target/release/wsrouter. An A/B of two commits compares like with like: PGO=0 and a
# plain build of the other, or the other built with scripts/pgo-build.sh too.
#
# Output: a table on stdout, and every raw measurement in $OUT/results.tsv
# (OUT defaults to target/compare). Installs haproxy and nginx with apt-get, and Envoy
# and Caddy with pip into target/peers-venv, if missing.
# Traffic stays on 127.0.0.0/8; every wait is bounded.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
IDLE_CONNS=${IDLE_CONNS:-9000}
HANDSHAKE_CONNS=${HANDSHAKE_CONNS:-3000}
TARGETS=${TARGETS:-"wsrouter haproxy nginx envoy caddy direct"}
CONNS=${CONNS:-"50 500"}
SIZES=${SIZES:-"64 16384"}
MEMORY=${MEMORY:-1}     # 0: skip the idle-memory run
HANDSHAKES=${HANDSHAKES:-1}
WORKERS=${WORKERS:-2}
WS=${WS:-1}             # 0: skip the WebSocket throughput and latency cells
HTTP=${HTTP:-1}         # 0: skip the HTTP cell
HTTP_CONNS=${HTTP_CONNS:-50}
HTTP_TENANTS=${HTTP_TENANTS:-1000}
HTTP_BODY=${HTTP_BODY:-128}
HTTP_RATE=${HTTP_RATE:-5000}
BENCH_NAME=compare
# Room for the 9,000 idle connections and the load tool's margin.
WSROUTER_ARGS="--max-connections 9900"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
# wrk for the HTTP cell: Debian's, pinned (bookworm's; a C event loop that spends less of
# the two shared cores per request than the proxies it measures).
WRK_VERSION=4.1.0-3+b2
if [[ $HTTP == 1 ]] && ! dpkg-query -W -f '${Version}' wrk 2>/dev/null | grep -qxF "$WRK_VERSION"; then
  log "installing wrk $WRK_VERSION from Debian"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "wrk=$WRK_VERSION" >/dev/null
fi
RESULTS=$OUT/results.tsv
printf 'round\ttarget\tworkload\tmetric\tvalue\n' >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

url() {
  if [[ $1 == direct ]]; then echo "ws://127.0.0.1:${BACKEND_PORTS[0]}/ws/"; else echo "wss://127.0.0.1:${PORT[$1]}/ws/"; fi
}

# wsload ... → its JSON report on stdout. The wsrouter-b variant's load gets
# WSLOAD_B_ARGS too (e.g. --proxy-v2 when WSROUTER_B_ARGS turns the PROXY protocol on).
load() {
  local extra=""
  [[ $TARGET == wsrouter-b ]] && extra=${WSLOAD_B_ARGS:-}
  "$BIN/wsload" --url "$(url "$TARGET")" --json $extra "$@"
}

run_round() {
  local round=$1 target=$2
  TARGET=$target
  start_target "$target"
  if [[ $WS == 1 ]]; then ws_cells "$round" "$target"; fi
  if [[ $HTTP == 1 ]]; then http_cells "$round" "$target"; fi
  # Handshakes: new TLS connections per second, each through to its first echo.
  [[ $HANDSHAKES == 1 ]] || { stop_target; return 0; }
  r=$(load --mode hold-idle -c "$HANDSHAKE_CONNS" --parallel 64 --sources 8 --duration 0s)
  record "$round" "$target" handshake conns_per_s "$(field connects_per_second <<<"$r")"
  log "round $round $target: $(printf '%.0f' "$(field connects_per_second <<<"$r")") handshakes/s"
  stop_target
}

ws_cells() {
  local round=$1 target=$2 r
  # Warm-up: connections, TLS session machinery, allocator.
  load --mode throughput -c 50 --size 64 --duration 1s >/dev/null
  for conns in $CONNS; do
    for size in $SIZES; do
      local w="c${conns}_s${size}"
      local t0 t1 r
      t0=$(cpu_ticks)
      r=$(load --mode throughput -c "$conns" --size "$size" --window 8 --duration "${SECONDS_PER_RUN}s")
      t1=$(cpu_ticks)
      local msgs mps
      msgs=$(field messages <<<"$r")
      mps=$(field messages_per_second <<<"$r")
      record "$round" "$target" "$w" msg_per_s "$mps"
      record "$round" "$target" "$w" MB_per_s "$(field megabytes_per_second <<<"$r")"
      record "$round" "$target" "$w" errors "$(field errors <<<"$r")"
      if [[ -n $TARGET_PID && $msgs -gt 0 ]]; then
        record "$round" "$target" "$w" cpu_s_per_M_msgs \
          "$(python3 -c "print(($t1-$t0)/$TICKS/$msgs*1e6)")"
      fi
      # Latency at a fixed offered load (a third of what the ceiling sustains is far
      # below every proxy's limit), timed from each message's scheduled send.
      local rate
      if [[ $size == 64 ]]; then rate=$((8000 / conns)); else rate=$((2000 / conns)); fi
      r=$(load --mode ping-pong -c "$conns" --size "$size" --rate "$rate" --duration "${SECONDS_PER_RUN}s")
      record "$round" "$target" "$w" p50_us "$(field latency.p50_us <<<"$r")"
      record "$round" "$target" "$w" p99_us "$(field latency.p99_us <<<"$r")"
      record "$round" "$target" "$w" p999_us "$(field latency.p999_us <<<"$r")"
      log "round $round $target $w: $(printf '%.0f' "$mps") msg/s; p99 $(field latency.p99_us <<<"$r") µs"
    done
  done
}

http_url() {
  if [[ $1 == direct ]]; then echo "http://127.0.0.1:${BACKEND_PORTS[0]}"; else echo "https://127.0.0.1:${PORT[$1]}"; fi
}

# wrk METHOD DELAY_MS SECONDS → http.lua's JSON report on stdout (wrk's own text in logs/).
http_load() {
  local log=$OUT/logs/wrk-$TARGET-$1-$2.txt
  wrk -t 2 -c "$HTTP_CONNS" -d "${3}s" --timeout 5s -s "$ROOT/benches/http.lua" \
    "$(http_url "$TARGET")" -- "$1" "$HTTP_TENANTS" "$HTTP_BODY" "$2" >"$log" 2>&1 ||
    die "wrk against $TARGET failed: $(tail -3 "$log")"
  sed -n 's/^JSON //p' "$log"
}

# Before measuring, that the target answers as the cell expects: 16 tenants' GETs each
# 200 from some backend (and, through a proxy, from more than one: it routes), a POST
# echoed byte for byte.
http_check() {
  local target=$1 url servers="" body
  url=$(http_url "$target")
  for n in $(seq 1 16); do
    body=$(curl -sk --fail --max-time 5 "$url/ws/tenant-$n/items") ||
      die "GET /ws/tenant-$n/items through $target failed"
    servers+="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["server"])' <<<"$body")"$'\n'
  done
  if [[ $target != direct && $(sort -u <<<"$servers" | grep -c .) -lt 2 ]]; then
    die "$target sent 16 tenants to one backend: $(sort -u <<<"$servers" | tr '\n' ' ')"
  fi
  local sent
  sent=$(head -c "$HTTP_BODY" /dev/zero | tr '\0' x)
  body=$(curl -sk --fail --max-time 5 -H 'Content-Type: application/octet-stream' \
    --data-binary "$sent" "$url/ws/tenant-1/items") || die "POST through $target failed"
  [[ $body == "$sent" ]] || die "POST through $target came back as ${#body} bytes, not its $HTTP_BODY"
}

# TCP sockets to the backends' ports in a state (established, time-wait): the witness that a
# proxy keeps its backend connections alive (a few dozen established, time-wait not growing
# by the thousands as it would with a connection per request).
backend_sockets() {
  ss -Htn state "$1" "( dport >= :${BACKEND_PORTS[0]} and dport <= :${BACKEND_PORTS[3]} )" | wc -l
}

http_cells() {
  local round=$1 target=$2 r
  http_check "$target"
  http_load GET 0 1 >/dev/null # warm-up: connections to the backends, TLS, allocator
  local method w t0 t1 n delay rps tw
  # The fixed load's pause between a response and the connection's next request.
  delay=$((HTTP_CONNS * 1000 / HTTP_RATE))
  for method in GET POST; do
    w=http_get_c$HTTP_CONNS
    [[ $method == POST ]] && w=http_post${HTTP_BODY}_c$HTTP_CONNS
    tw=$(backend_sockets time-wait)
    t0=$(cpu_ticks)
    r=$(http_load "$method" 0 "$SECONDS_PER_RUN")
    t1=$(cpu_ticks)
    record "$round" "$target" "$w" backend_conns_established "$(backend_sockets established)"
    record "$round" "$target" "$w" backend_time_wait_added "$(($(backend_sockets time-wait) - tw))"
    n=$(field requests <<<"$r")
    record "$round" "$target" "$w" req_per_s "$(field requests_per_second <<<"$r")"
    record "$round" "$target" "$w" errors "$(field errors <<<"$r")"
    record "$round" "$target" "$w" p50_sat_us "$(field latency.p50_us <<<"$r")"
    record "$round" "$target" "$w" p99_sat_us "$(field latency.p99_us <<<"$r")"
    if [[ -n $TARGET_PID && $n -gt 0 ]]; then
      record "$round" "$target" "$w" cpu_s_per_M_reqs "$(python3 -c "print(($t1-$t0)/$TICKS/$n*1e6)")"
    fi
    rps=$(field requests_per_second <<<"$r")
    r=$(http_load "$method" "$delay" "$SECONDS_PER_RUN")
    record "$round" "$target" "$w" paced_req_per_s "$(field requests_per_second <<<"$r")"
    record "$round" "$target" "$w" paced_errors "$(field errors <<<"$r")"
    record "$round" "$target" "$w" p50_us "$(field latency.p50_us <<<"$r")"
    record "$round" "$target" "$w" p99_us "$(field latency.p99_us <<<"$r")"
    record "$round" "$target" "$w" p999_us "$(field latency.p999_us <<<"$r")"
    log "round $round $target $w: $(printf '%.0f' "$rps") req/s; p99 $(field latency.p99_us <<<"$r") µs at $(printf '%.0f' "$(field requests_per_second <<<"$r")") req/s"
  done
}

# Memory: a fresh proxy, RSS at 0, then IDLE_CONNS idle TLS WebSockets, then one 16 KiB
# message each and idle again, then every connection must still echo.
run_memory() {
  local round=$1 target=$2
  [[ $target == direct || $MEMORY != 1 ]] && return 0
  TARGET=$target
  start_target "$target"
  local base
  base=$(rss_kb)
  local err=$OUT/logs/hold-$target-$round.err
  : >"$err"
  load --mode hold-idle -c "$IDLE_CONNS" --sources 16 --parallel 64 --burst 16384 \
    --duration 6s >"$OUT/logs/hold-$target-$round.json" 2>"$err" &
  local lp=$!
  hold_watch "$lp" "$err"
  wait "$lp" || die "hold-idle against $target failed: $(cat "$err")"
  local idle=$HOLD_IDLE_RSS burst=$HOLD_BURST_RSS
  local still n
  still=$(field still_echoing <"$OUT/logs/hold-$target-$round.json")
  n=$(field connections <"$OUT/logs/hold-$target-$round.json")
  record "$round" "$target" idle rss_base_kb "$base"
  record "$round" "$target" idle rss_idle_kb "${idle:-0}"
  record "$round" "$target" idle rss_after_burst_kb "${burst:-0}"
  record "$round" "$target" idle connections "$n"
  record "$round" "$target" idle still_echoing "$still"
  record "$round" "$target" idle burst_ok "$(sed -n 's/.*phase=after-burst.* ok=\([0-9]*\).*/\1/p' "$err")"
  record "$round" "$target" idle kb_per_conn "$(python3 -c "print((${idle:-0}-$base)/$n)")"
  record "$round" "$target" idle kb_per_conn_after_burst "$(python3 -c "print((${burst:-0}-$base)/$n)")"
  log "round $round $target: RSS $base → $idle → $burst KB over $n connections; still echoing $still"
  stop_target
}

for round in $(seq 1 "$ROUNDS"); do
  read -r -a order <<<"$(round_order "$round")"
  for t in "${order[@]}"; do run_round "$round" "$t"; done
  for t in "${order[@]}"; do run_memory "$round" "$t"; done
done

python3 "$ROOT/benches/compare_summary.py" "$RESULTS"
