# Shared by benches/compare.sh and benches/hostile.sh (sourced, not run): the tools,
# one certificate, four echo backends, and wsrouter, HAProxy and NGINX configured alike,
# each started and stopped on demand, with their RSS and CPU read from /proc.
#
# The caller sets WORKERS (and may set OUT, WSROUTER_ARGS, BENCH_NAME) before sourcing.
# Traffic stays on 127.0.0.0/8; every wait is bounded.

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${OUT:-$ROOT/target/compare}")
BIN=$ROOT/target/release
# Fixed loopback ports: the proxies' configs name them.
BACKEND_PORTS=(19001 19002 19003 19004)
declare -A PORT=([wsrouter]=18441 [haproxy]=18442 [nginx]=18443)
ADMIN_PORT=18449

# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

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
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $OUT/nginx/nginx.pid ]] && kill "$(cat "$OUT/nginx/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

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
      ${WSROUTER_ARGS:-} \
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
