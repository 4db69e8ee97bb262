#!/usr/bin/env bash
# Server-Sent Events in a real browser: headless Chromium, driven over the DevTools
# protocol (sse_browser.py), loads `wsrouter dev`'s page and opens an EventSource through
# the router, with the tenant in the path and then in a query parameter:
# - the page's SSE cards show events from the pods `wsrouter route` names;
# - 100 events, ids consecutive, on one connection, across a table swap (an edit of the
#   watched --overrides-file) that moves another tenant only;
# - a swap that moves the tenant (--reroute-drain): the router ends the stream cleanly,
#   the EventSource reconnects with Last-Event-ID to the pod the contract now names, and
#   the ids go on where they stopped.
# Installs Debian's chromium if it is missing. Exits non-zero on any mismatch; loopback
# only, every wait bounded.
set -euo pipefail
BENCH_NAME=sse-browser
# shellcheck source=tests/frameworks/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium"
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

INTERVAL_MS=50
GRACE=1s

# Starts `wsrouter dev` (tenant from $1) on two free ports and waits for both, setting
# port, admin and dev. A port free_port found can be handed to another socket before the
# router binds it (an ephemeral port for some connection meanwhile): the router then
# exits with "binding …", and only then it is tried again on new ports, three times at
# most; any other way of not coming up fails at once, with the router's log.
start_dev() {
  local mode=$1 attempt
  for attempt in 1 2 3; do
    port=$(free_port)
    admin=$(free_port)
    : >"$dev_log"
    "$BIN/wsrouter" dev --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
      --interval "${INTERVAL_MS}ms" --tenant-from "$mode" --overrides-file "$overrides" \
      --reroute-drain "$GRACE" --drain-grace 1s >>"$dev_log" 2>&1 &
    dev=$!
    for _ in $(seq 1 100); do
      if listening "$port" && listening "$admin"; then
        track "$dev"
        return 0
      fi
      kill -0 "$dev" 2>/dev/null || break
      sleep 0.1
    done
    kill "$dev" 2>/dev/null || true
    wait "$dev" 2>/dev/null || true
    if ! grep -q 'binding' "$dev_log"; then
      sed 's/\x1b\[[0-9;]*m//g' "$dev_log" | tail -20 >&2
      die "wsrouter dev (tenant from $mode) did not come up within 10 s"
    fi
    log "wsrouter dev could not bind its ports (attempt $attempt): $(grep -m1 'binding' "$dev_log")"
  done
  die "wsrouter dev (tenant from $mode) found no free ports in 3 attempts"
}

for mode in path query:tenant; do
  overrides="$FW_TMP/overrides-${mode%%:*}/overrides.yaml"
  mkdir -p "$(dirname "$overrides")"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wsrouter-overrides\ndata: {}\n' >"$overrides"
  dev_log="$FW_TMP/dev-${mode%%:*}.log"
  start_dev "$mode"
  log "tenant from $mode: wsrouter dev on :$port"
  if ! timeout 180 "$FRAMEWORKS_VENV/bin/python" "$FRAMEWORKS/sse_browser.py" \
    --page "https://localhost:$port/" --admin "http://127.0.0.1:$admin" \
    --overrides "$overrides" --wsrouter "$BIN/wsrouter" --tenant-from "$mode" \
    --interval-ms "$INTERVAL_MS" --grace-s "${GRACE%s}" --chromium-log "$FW_TMP/chromium.log"; then
    log "the router's warnings and errors:"
    sed 's/\x1b\[[0-9;]*m//g' "$dev_log" | grep -E ' (WARN|ERROR) ' | tail -20 >&2 || true
    die "SSE in the browser (tenant from $mode)"
  fi
  kill "$dev"
  wait "$dev" 2>/dev/null || true
done
log "ok"
