#!/usr/bin/env bash
# The official SignalR client (@microsoft/signalr, node) through the router: four echo
# backends (backend-0..3, each with the SignalR test hub), the router in front with
# --tenant-from query:tenant, and for each transport forced in turn (WebSockets,
# ServerSentEvents, LongPolling) and several tenants: negotiate, connect to
# https://localhost:PORT/ws/hub?tenant=T, Echo 100 times, and Whoami, which must name the
# pod `wsrouter route T --replicas 4 --json` gives. Then every backend's /stats must show
# unknown_connection 0: no request of any session (negotiate, sends, polls, the event
# stream, the WebSocket) reached a pod that did not negotiate it.
#
# DIRECT=1: one backend, no router (every tenant is then on backend-0).
# Exits non-zero on any mismatch; every step is bounded in time.
set -euo pipefail
BENCH_NAME=signalr
# shellcheck source=tests/frameworks/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ -x $BIN/echo-backend ]] || die "no $BIN/echo-backend: run cargo build -p backend first"
# Tenants spread over all four pods (ns-01, globex: backend-2; acme-prod: 3; tenant-a,
# t-42: 1; hooli: 0); the run checks that every pod negotiated some.
TENANTS=(ns-01 acme-prod globex tenant-a t-42 hooli)
TRANSPORTS=(WebSockets ServerSentEvents LongPolling)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

replicas=4
[[ ${DIRECT:-0} == 1 ]] && replicas=1
BACKEND_PORTS=()
for ((i = 0; i < replicas; i++)); do
  port=$(free_port)
  "$BIN/echo-backend" --listen "127.0.0.1:$port" --server-name "backend-$i" \
    --tenant-from query:tenant >>"$FW_TMP/backend-$i.log" 2>&1 &
  track $!
  BACKEND_PORTS+=("$port")
done
for port in "${BACKEND_PORTS[@]}"; do wait_port "$port"; done

# On failure, what the router and backends said.
report() {
  local rc=$?
  if ((rc != 0)); then
    for f in "$FW_TMP"/router.log "$FW_TMP"/backend-*.log; do
      [[ -e $f ]] && { log "--- tail of $(basename "$f")"; tail -15 "$f" >&2; }
    done
  fi
  fw_cleanup
  exit "$rc"
}
trap report EXIT

if [[ ${DIRECT:-0} == 1 ]]; then
  BASE="http://127.0.0.1:${BACKEND_PORTS[0]}/ws/hub"
  log "DIRECT=1: the client talks to backend-0 on :${BACKEND_PORTS[0]}, no router"
else
  backends=()
  for port in "${BACKEND_PORTS[@]}"; do backends+=("127.0.0.1:$port"); done
  start_router "${backends[@]}" -- --tenant-from query:tenant
  ADMIN_PORT=$ROUTER_ADMIN
  BASE="https://localhost:$ROUTER_PORT/ws/hub"
  log "router on :$ROUTER_PORT in front of ${backends[*]}"
fi

# TENANT=POD for every tenant: the pod the routing contract names (backend-0 when direct).
pairs=()
for t in "${TENANTS[@]}"; do
  if [[ ${DIRECT:-0} == 1 ]]; then
    pod=backend-0
  else
    pod=$(timeout 10 "$BIN/wsrouter" route "$t" --replicas 4 --json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["pod"])') || die "wsrouter route $t failed"
  fi
  pairs+=("$t=$pod")
done
log "tenants: ${pairs[*]}"

failed=0
for transport in "${TRANSPORTS[@]}"; do
  log "transport $transport"
  if ! (cd "$FRAMEWORKS" && timeout 180 node signalr.mjs "$BASE" "$transport" "${pairs[@]}"); then
    log "FAIL: $transport"
    failed=1
  fi
done

# Every request of every session reached the pod that negotiated it.
for ((i = 0; i < replicas; i++)); do
  stats=$(curl -sf -m 5 "http://127.0.0.1:${BACKEND_PORTS[$i]}/stats") || die "backend-$i: no /stats"
  log "backend-$i /stats: $stats"
  field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$stats" "$1"; }
  unknown=$(field unknown_connection)
  if [[ $unknown != 0 ]]; then
    log "FAIL: backend-$i saw $unknown requests for connections it never negotiated"
    failed=1
  fi
  if [[ $(field hub_negotiations) == 0 ]]; then
    log "FAIL: backend-$i negotiated no session: the tenants do not cover every pod"
    failed=1
  fi
done

if [[ ${DIRECT:-0} != 1 ]]; then
  forwarded=$(router_metric "$ADMIN_PORT" '^wsrouter_http_requests_total')
  log "router: $forwarded plain HTTP requests forwarded"
  if ((forwarded == 0)); then
    log "FAIL: the router counted no forwarded HTTP request (negotiate alone is one per session)"
    failed=1
  fi
fi

((failed == 0)) || die "signalr: mismatches above"
log "ok: ${#TRANSPORTS[@]} transports x ${#TENANTS[@]} tenants, unknown_connection 0 on every backend"
