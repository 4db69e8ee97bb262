#!/usr/bin/env bash
# Side by side: wsrouter, HAProxy and NGINX (Debian's packages), plus a direct run to one
# backend as the ceiling, under the same load from `wsload`, on this machine's loopback.
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
#
# Output: a table on stdout, and every raw measurement in $OUT/results.tsv
# (OUT defaults to target/compare). Installs haproxy and nginx with apt-get if missing.
# Traffic stays on 127.0.0.0/8; every wait is bounded.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
IDLE_CONNS=${IDLE_CONNS:-9000}
HANDSHAKE_CONNS=${HANDSHAKE_CONNS:-3000}
TARGETS=${TARGETS:-"wsrouter haproxy nginx direct"}
CONNS=${CONNS:-"50 500"}
SIZES=${SIZES:-"64 16384"}
MEMORY=${MEMORY:-1}     # 0: skip the idle-memory run
HANDSHAKES=${HANDSHAKES:-1}
WORKERS=${WORKERS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${OUT:-$ROOT/target/compare}")
BIN=$ROOT/target/release
# Fixed loopback ports: the proxies' configs name them.
BACKEND_PORTS=(19001 19002 19003 19004)
declare -A PORT=([wsrouter]=18441 [haproxy]=18442 [nginx]=18443)
ADMIN_PORT=18449

log() { printf '[compare %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# --- tools ------------------------------------------------------------------------------
if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null; then
  log "installing haproxy and nginx from Debian"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy nginx >/dev/null
fi
log "building (release)"
(cd "$ROOT" && cargo build --release --locked -q --bin wsrouter --bin echo-backend --bin wsload)

rm -rf "$OUT"
mkdir -p "$OUT/cert" "$OUT/nginx/logs" "$OUT/logs"
RESULTS=$OUT/results.tsv
printf 'round\ttarget\tworkload\tmetric\tvalue\n' >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $OUT/nginx/nginx.pid ]] && kill "$(cat "$OUT/nginx/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Waits (bounded) until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing listens on 127.0.0.1:$1 after 10 s"
}

for p in "${BACKEND_PORTS[@]}" "${PORT[@]}" $ADMIN_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is already in use"; fi
done

# --- the shared certificate and the backends ---------------------------------------------
"$BIN/wsrouter" cert --host localhost --host 127.0.0.1 --out "$OUT/cert" >/dev/null
cat "$OUT/cert/tls.crt" "$OUT/cert/tls.key" >"$OUT/cert/haproxy.pem"
openssl x509 -in "$OUT/cert/tls.crt" -noout -text | grep -q 'prime256v1' ||
  die "the certificate is not ECDSA P-256"

for i in "${!BACKEND_PORTS[@]}"; do
  # Counters every hour: the load measures echoes, not the backend's ticker.
  "$BIN/echo-backend" --listen "127.0.0.1:${BACKEND_PORTS[$i]}" --interval 1h \
    --server-name "backend-$i" >"$OUT/logs/backend-$i.log" 2>&1 &
  PIDS+=($!)
done
for p in "${BACKEND_PORTS[@]}"; do wait_port "$p"; done

# --- the proxies' configurations -----------------------------------------------------------
backend_list() { for p in "${BACKEND_PORTS[@]}"; do printf '%s\n' "${1}127.0.0.1:${p}${2}"; done; }

cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 9900
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend ws
    bind 127.0.0.1:${PORT[haproxy]} ssl crt $OUT/cert/haproxy.pem alpn http/1.1 curves X25519
    default_backend echo
backend echo
    balance hash path,field(3,/)
    hash-type consistent
$(i=0; for p in "${BACKEND_PORTS[@]}"; do echo "    server backend-$i 127.0.0.1:$p"; i=$((i+1)); done)
EOF
haproxy -c -q -f "$OUT/haproxy.cfg" || die "haproxy rejects its config"

cat >"$OUT/nginx/nginx.conf" <<EOF
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/logs/error.log warn;
events { worker_connections 19000; }
http {
    access_log off;
    map \$uri \$ns { ~^/ws/(?<n>[^/]+) \$n; default ""; }
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    upstream echo {
        hash \$ns consistent;
$(backend_list '        server ' ';')
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} ssl;
        ssl_certificate $OUT/cert/tls.crt;
        ssl_certificate_key $OUT/cert/tls.key;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        location /ws/ {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header Host \$host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }
    }
}
EOF
nginx -t -q -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" || die "nginx rejects its config"

# --- starting and measuring a target ---------------------------------------------------------
# Every proxy is started fresh for the memory run (so its RSS at 0 is a clean baseline) and
# once per round for the rest.
TARGET_PID=""
start_target() {
  case $1 in
  wsrouter)
    RUST_LOG=warn "$BIN/wsrouter" --workers $WORKERS serve \
      --listen "127.0.0.1:${PORT[wsrouter]}" --admin-listen "127.0.0.1:$ADMIN_PORT" \
      --tls-cert "$OUT/cert/tls.crt" --tls-key "$OUT/cert/tls.key" --tls-key-exchange x25519 \
      --max-connections 9900 \
      $(for p in "${BACKEND_PORTS[@]}"; do printf -- '--backend 127.0.0.1:%s ' "$p"; done) \
      >"$OUT/logs/wsrouter.log" 2>&1 &
    TARGET_PID=$!
    ;;
  haproxy)
    haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/logs/haproxy.log" 2>&1 &
    TARGET_PID=$!
    ;;
  nginx)
    nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g 'daemon off;' >"$OUT/logs/nginx.log" 2>&1 &
    TARGET_PID=$!
    ;;
  direct) TARGET_PID="" ;;
  esac
  if [[ -n $TARGET_PID ]]; then
    wait_port "${PORT[$1]}"
    # nginx's workers come up after its listener.
    for _ in $(seq 1 50); do
      [[ $1 != nginx || $(pgrep -c -P "$TARGET_PID" || true) -ge $WORKERS ]] && break
      sleep 0.1
    done
  fi
}
stop_target() {
  if [[ -n $TARGET_PID ]]; then
    kill "$TARGET_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$TARGET_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$TARGET_PID" 2>/dev/null || true
    wait "$TARGET_PID" 2>/dev/null || true
  fi
  TARGET_PID=""
}
# The proxy's processes: the process and its children (NGINX's workers).
proc_tree() { [[ -z $TARGET_PID ]] || echo "$TARGET_PID" $(pgrep -P "$TARGET_PID" || true); }
rss_kb() {
  local sum=0
  for p in $(proc_tree); do sum=$((sum + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
  echo $sum
}
cpu_ticks() {
  local sum=0
  for p in $(proc_tree); do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo $sum
}
url() {
  if [[ $1 == direct ]]; then echo "ws://127.0.0.1:${BACKEND_PORTS[0]}/ws/"; else echo "wss://127.0.0.1:${PORT[$1]}/ws/"; fi
}
TICKS=$(getconf CLK_TCK)

# wsload ... → its JSON report on stdout.
load() { "$BIN/wsload" --url "$(url "$TARGET")" --json "$@"; }
field() {
  python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[k]
print(v)' "$1"
}

run_round() {
  local round=$1 target=$2
  TARGET=$target
  start_target "$target"
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
  # Handshakes: new TLS connections per second, each through to its first echo.
  [[ $HANDSHAKES == 1 ]] || { stop_target; return 0; }
  r=$(load --mode hold-idle -c "$HANDSHAKE_CONNS" --parallel 64 --sources 8 --duration 0s)
  record "$round" "$target" handshake conns_per_s "$(field connects_per_second <<<"$r")"
  log "round $round $target: $(printf '%.0f' "$(field connects_per_second <<<"$r")") handshakes/s"
  stop_target
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
  local idle="" burst=""
  for _ in $(seq 1 1800); do
    if [[ -z $idle ]] && grep -q 'phase=idle' "$err"; then
      sleep 3 # settle: the last handshakes' buffers are freed
      idle=$(rss_kb)
    fi
    if [[ -z $burst ]] && grep -q 'phase=after-burst' "$err"; then
      sleep 3
      burst=$(rss_kb)
    fi
    kill -0 $lp 2>/dev/null || break
    sleep 0.1
  done
  wait $lp || die "hold-idle against $target failed: $(cat "$err")"
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

read -ra T <<<"$TARGETS"
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order so no target always runs first (or last, on a warmer machine).
  shift_by=$(((round - 1) % ${#T[@]}))
  order=("${T[@]:shift_by}" "${T[@]:0:shift_by}")
  for t in "${order[@]}"; do run_round "$round" "$t"; done
  for t in "${order[@]}"; do run_memory "$round" "$t"; done
done

python3 "$ROOT/benches/compare_summary.py" "$RESULTS"
