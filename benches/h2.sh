#!/usr/bin/env bash
# WebSockets over HTTP/2 (RFC 8441) against HTTP/1.1 upgrades: SOCKETS WebSockets opened
# either as one TLS connection and upgrade each, or as extended CONNECT streams spread
# over H2_CONNS HTTP/2 connections, through wsrouter, HAProxy and Envoy (each configured
# as in compare.sh, see peers.sh: same certificate, TLS 1.3 + X25519, two workers, ALPN
# h2 and http/1.1, 128 streams per connection, a consistent hash of the namespace).
#
# Per target, protocol and round, on a freshly started proxy:
#   - RSS before; the sockets opened (handshakes: sockets opened per second, each through
#     its first echo; TCP connections used); RSS and open descriptors once idle;
#   - one 16 KiB message each, idle again, RSS; every socket must still echo;
#   - then a throughput run over the same shape (64-byte messages, 2 in flight per
#     socket): messages/s and the proxy's CPU seconds per million messages.
#
#   benches/h2.sh                                  # 3 rounds, about 15 minutes
#   ROUNDS=1 SOCKETS=1000 H2_CONNS=10 TARGETS=wsrouter benches/h2.sh   # a quick look
#
# Output: a table on stdout, raw numbers in $OUT/results.tsv (OUT defaults to target/h2).
# Loopback only; every wait is bounded.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SOCKETS=${SOCKETS:-5000}
H2_CONNS=${H2_CONNS:-50}
PROTOCOLS=${PROTOCOLS:-"h1 h2"}
IDLE_SECONDS=${IDLE_SECONDS:-6}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
TARGETS=${TARGETS:-"wsrouter haproxy envoy"}
WORKERS=${WORKERS:-2}
BENCH_NAME=h2
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/h2}
# Room for every socket (and, over HTTP/2, every connection) with the load tool's margin.
WSROUTER_ARGS="--max-connections 9900"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
RESULTS=$OUT/results.tsv
printf 'round\ttarget\tprotocol\tmetric\tvalue\n' >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }


# wsload against the running target, over the protocol: its JSON report on stdout.
load() {
  local proto=$1
  shift
  local shape=()
  [[ $proto == h2 ]] && shape=(--h2-connections "$H2_CONNS")
  # Envoy 1.40 forwards an RFC 8441 stream to an HTTP/1.1 backend without the
  # Sec-WebSocket-Key RFC 6455 requires (envoy#8547): a browser's HTTP/2 WebSocket
  # through it fails against a standard backend. To measure it at all, its client sends one.
  [[ $proto == h2 && $TARGET == envoy ]] && shape+=(--h2-client-key)
  "$BIN/wsload" --url "wss://127.0.0.1:${PORT[$TARGET]}/ws/" --json --sources 8 \
    --parallel 64 "${shape[@]}" "$@"
}

# At idle (hold_watch): the proxy's open descriptors.
idle_fds() { FDS_IDLE=$(fds); }

run_one() {
  local round=$1 target=$2 proto=$3
  TARGET=$target
  start_target "$target"
  local base fd_base
  base=$(rss_kb)
  fd_base=$(fds)
  local tag=$target-$proto-$round
  local err=$OUT/logs/hold-$tag.err
  : >"$err"
  load "$proto" --mode hold-idle -c "$SOCKETS" --burst 16384 --duration "${IDLE_SECONDS}s" \
    >"$OUT/logs/hold-$tag.json" 2>"$err" &
  local lp=$!
  hold_watch "$lp" "$err" idle_fds
  wait "$lp" || die "hold-idle ($proto) against $target failed: $(cat "$err")"
  local idle=$HOLD_IDLE_RSS burst=$HOLD_BURST_RSS fd_idle=$FDS_IDLE
  local json=$OUT/logs/hold-$tag.json n
  n=$(field connections <"$json")
  record "$round" "$target" "$proto" sockets "$n"
  record "$round" "$target" "$proto" tcp_connections "$(field tcp_connections <"$json")"
  record "$round" "$target" "$proto" still_echoing "$(field still_echoing <"$json")"
  record "$round" "$target" "$proto" sockets_per_s "$(field connects_per_second <"$json")"
  record "$round" "$target" "$proto" rss_base_kb "$base"
  record "$round" "$target" "$proto" rss_idle_kb "${idle:-0}"
  record "$round" "$target" "$proto" fds_base "$fd_base"
  record "$round" "$target" "$proto" fds_idle "${fd_idle:-0}"
  record "$round" "$target" "$proto" kb_per_socket "$(python3 -c "print((${idle:-0}-$base)/$n)")"
  record "$round" "$target" "$proto" kb_per_socket_after_burst "$(python3 -c "print((${burst:-0}-$base)/$n)")"
  record "$round" "$target" "$proto" fds_per_socket "$(python3 -c "print((${fd_idle:-0}-$fd_base)/$n)")"
  log "round $round $target $proto: RSS $base → $idle → $burst KB, fds $fd_base → $fd_idle over $n sockets; still echoing $(field still_echoing <"$json")"

  local t0 t1 r msgs
  t0=$(cpu_ticks)
  r=$(load "$proto" --mode throughput -c "$SOCKETS" --size 64 --window 2 --duration "${SECONDS_PER_RUN}s")
  t1=$(cpu_ticks)
  msgs=$(field messages <<<"$r")
  record "$round" "$target" "$proto" msg_per_s "$(field messages_per_second <<<"$r")"
  record "$round" "$target" "$proto" errors "$(field errors <<<"$r")"
  if [[ $msgs -gt 0 ]]; then
    # The proxy's CPU over the whole run, opening included, per million echoed messages.
    record "$round" "$target" "$proto" cpu_s_per_M_msgs "$(python3 -c "print(($t1-$t0)/$TICKS/$msgs*1e6)")"
  fi
  log "round $round $target $proto: $(printf '%.0f' "$(field messages_per_second <<<"$r")") msg/s"
  stop_target
}

read -ra P <<<"$PROTOCOLS"
for round in $(seq 1 "$ROUNDS"); do
  for t in $(round_order "$round"); do
    for p in "${P[@]}"; do run_one "$round" "$t" "$p"; done
  done
done

python3 "$ROOT/benches/h2_summary.py" "$RESULTS"
