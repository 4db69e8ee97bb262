#!/usr/bin/env bash
# Socket.IO through the router: four real `socket.io` server pods (socketio-server.js)
# behind `wsrouter serve --tenant-from query:tenant`, and real clients that poll first and
# then upgrade to WebSocket. A polling session lives in one pod, so every request of a
# client must reach the same pod, the one the routing contract names for its tenant;
# a request that reaches another pod shows up there as engine.io's "Session ID unknown".
#
#   tests/frameworks/socketio.sh            # through the router (debug binaries)
#   DIRECT=1 tests/frameworks/socketio.sh   # one pod, no router: the clients and pods alone
#   BIN=target/release tests/frameworks/socketio.sh
#
# Runs, in order: socket.io-client (node, 50 tenants + 10 clients sharing one, 100 acked
# echoes each), socket.io-client on long-polling only, quiet for 8 s (longer than the
# router's --backend-timeout) before its echoes, python-socketio's AsyncClient (6 tenants + 3 sharing one), and socket.io-client
# again polling over HTTP/2 (engine.io-client's Fetch transport on undici with allowH2),
# proven by the router's wsrouter_http_requests_total{protocol="h2"}. Then every pod's
# /stats must show no unknown-session (or any other) engine error and one upgrade per
# client the contract sent it. Loopback only; every wait is bounded. Exit 1 on a mismatch.
set -euo pipefail
BENCH_NAME=socketio
# shellcheck source=tests/frameworks/common.sh
source "$(dirname "$0")/common.sh"

DIRECT=${DIRECT:-0}
PODS=4
[[ $DIRECT == 1 ]] && PODS=1

# Ports the kernel hands out now (several framework tests may run side by side).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

backends=()
pod_ports=()
for ((i = 0; i < PODS; i++)); do
  port=$(free_port)
  node "$FRAMEWORKS/socketio-server.js" --port "$port" --name "backend-$i" >>"$FW_TMP/pod-$i.log" 2>&1 &
  track $!
  pod_ports+=("$port")
  backends+=("127.0.0.1:$port")
done
for port in "${pod_ports[@]}"; do wait_port "$port"; done
log "$PODS socket.io pods: ${backends[*]}"

if [[ $DIRECT == 1 ]]; then
  URL="http://127.0.0.1:${pod_ports[0]}"
  REPLICAS=1
  log "DIRECT=1: clients talk to backend-0 at $URL, no router"
else
  # Every client here shares one source address (loopback), the SNAT case the README's
  # limits section describes: node's XHR polling opens a TLS connection per request, so
  # 60 clients starting at once hold far more than the default 64 pending (TLS or
  # request-head) connections from one address, and the router resets the excess at
  # accept (wsrouter_connections_refused_total{reason="pending_per_ip"}). Raise the cap,
  # as the README advises, so what is tested is the routing.
  start_router "${backends[@]}" -- --tenant-from query:tenant --max-pending-per-ip 1000
  PORT=$ROUTER_PORT ADMIN=$ROUTER_ADMIN
  URL="https://127.0.0.1:$PORT"
  REPLICAS=$PODS
  log "router on $URL (admin :$ADMIN), tenant from query:tenant"
fi
export BIN

fail=0
# run NAME CMD...: one client run, its JSON summary kept in $FW_TMP/NAME.json.
run() {
  local name=$1
  shift
  if timeout 180 "$@" >"$FW_TMP/$name.json" 2>"$FW_TMP/$name.err"; then
    log "$name: $(cat "$FW_TMP/$name.json")"
  else
    log "$name FAILED: $(cat "$FW_TMP/$name.json")"
    head -20 "$FW_TMP/$name.err" >&2
    fail=1
  fi
}

# router_metric's grep finds nothing before the first such request, which under pipefail
# is a failure; here a missing counter is simply 0.
metric() { router_metric "$ADMIN" "$1" || true; }

# Forwarded plain-HTTP requests by status and protocol (the polling), and WebSocket
# upgrades, as the router counts them.
http_counts() {
  curl -sf "http://127.0.0.1:$ADMIN/metrics" | grep -E '^wsrouter_(http_requests|upgrade_responses)_total\{' || true
}

run node-h1 node "$FRAMEWORKS/socketio-client.js" --url "$URL" --replicas "$REPLICAS" \
  --clients 50 --shared 10 --echoes 100 --prefix sio
# Clients that never upgrade (a WebSocket blocked on the way) and then stay quiet for
# longer than the router's --backend-timeout (5 s): their long-poll GET is held by the pod
# until there is something to send (at most its pingInterval, 25 s), and must not be cut.
run node-polling node "$FRAMEWORKS/socketio-client.js" --url "$URL" --replicas "$REPLICAS" \
  --clients 6 --shared 2 --echoes 20 --prefix siolp --polling-only --idle-ms 8000
run python "$FRAMEWORKS_VENV/bin/python" "$FRAMEWORKS/socketio_client.py" --url "$URL" --replicas "$REPLICAS" \
  --clients 6 --shared 3 --echoes 100 --prefix siopy

h2_before=0 h1_before=0
if [[ $DIRECT != 1 ]]; then
  h2_before=$(metric '^wsrouter_http_requests_total\{[^}]*protocol="h2"')
  h1_before=$(metric '^wsrouter_http_requests_total\{[^}]*protocol="h1"')
fi
run node-h2 node "$FRAMEWORKS/socketio-client.js" --url "$URL" --replicas "$REPLICAS" \
  --clients 20 --shared 5 --echoes 100 --prefix sioh2 --h2
if [[ $DIRECT != 1 ]]; then
  h2_after=$(metric '^wsrouter_http_requests_total\{[^}]*status="200"[^}]*protocol="h2"')
  h2_all=$(metric '^wsrouter_http_requests_total\{[^}]*protocol="h2"')
  log "router metrics after the runs:"
  http_counts | sed 's/^/    /' >&2
  h1_after=$(metric '^wsrouter_http_requests_total\{[^}]*protocol="h1"')
  if ((h2_after > 0 && h2_all > h2_before && h1_after == h1_before)); then
    log "node-h2: the router served all its $((h2_all - h2_before)) polling requests as HTTP/2, none as HTTP/1.1"
  else
    log "node-h2: polling requests the router counted as HTTP/2: $((h2_all - h2_before)), as HTTP/1.1: $((h1_after - h1_before))"
    fail=1
  fi
  refused=$(metric '^wsrouter_connections_refused_total\{reason="pending_per_ip"')
  if ((refused > 0)); then
    log "the router refused $refused connections over --max-pending-per-ip"
    fail=1
  fi
  not_ok=$(metric '^wsrouter_http_requests_total\{status="[^2]')
  if ((not_ok > 0)); then
    log "the router answered $not_ok forwarded requests with a non-2xx status"
    fail=1
  fi
else
  log "DIRECT=1: node-h2 polled with Fetch over plain HTTP/1.1 (h2 needs the router's TLS)"
fi

# Every pod: no engine error, and one connection and one upgrade per client the contract
# sent it (summed over the runs' clients_by_pod); through the router, one WebSocket
# upgrade (101) per client.
ws_upgrades=-1
[[ $DIRECT != 1 ]] && ws_upgrades=$(metric '^wsrouter_upgrade_responses_total\{status="101"')
stats=()
for ((i = 0; i < PODS; i++)); do
  stats+=("$(curl -sf "http://127.0.0.1:${pod_ports[$i]}/stats" || echo '{}')")
done
python3 - "$FW_TMP" "$ws_upgrades" "${stats[@]}" <<'PY' || fail=1
import json, pathlib, sys
tmp, ws_upgrades = pathlib.Path(sys.argv[1]), int(sys.argv[2])
stats = [json.loads(s) for s in sys.argv[3:]]
want = {}
want_upgrades = {}
for name in ("node-h1", "node-polling", "python", "node-h2"):
    try:
        summary = json.loads((tmp / f"{name}.json").read_text())
    except (OSError, ValueError):
        continue
    for pod, n in summary.get("clients_by_pod", {}).items():
        want[pod] = want.get(pod, 0) + n
    for pod, n in summary.get("upgrades_by_pod", {}).items():
        want_upgrades[pod] = want_upgrades.get(pod, 0) + n
bad = 0
for s in stats:
    pod = s.get("server", "?")
    n, u = want.get(pod, 0), want_upgrades.get(pod, 0)
    ok = (s.get("unknown_sid") == 0 and s.get("other_errors") == 0
          and s.get("connections") == n and s.get("upgrades") == u)
    print(f"[socketio] {pod}: {s.get('connections')} connections, {s.get('upgrades')} upgrades "
          f"(contract: {n}, {u}), unknown sid {s.get('unknown_sid')}, other errors {s.get('other_errors')} "
          f"{s.get('errors') or ''} closed: {s.get('close_reasons')}{'' if ok else '  <- MISMATCH'}", file=sys.stderr)
    bad += not ok
clients = sum(want_upgrades.values())
if ws_upgrades >= 0:
    ok = ws_upgrades == clients
    print(f"[socketio] router: {ws_upgrades} WebSocket upgrades (101) for {clients} upgrading clients"
          f"{'' if ok else '  <- MISMATCH'}", file=sys.stderr)
    bad += not ok
sys.exit(1 if bad else 0)
PY

if ((fail)); then
  if [[ -f $FW_TMP/router.log ]]; then
    log "FAILED; the router's warnings and errors (last 30):"
    sed 's/\x1b\[[0-9;]*m//g' "$FW_TMP/router.log" | grep -E ' (WARN|ERROR) ' | tail -30 >&2 || true
  else
    log "FAILED"
  fi
  for ((i = 0; i < PODS; i++)); do tail -5 "$FW_TMP/pod-$i.log" >&2; done
  exit 1
fi
log "passed: every Socket.IO client stayed on its contract pod, polling and upgraded"
