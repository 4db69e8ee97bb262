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

INTERVAL_MS=50
GRACE=1s

# Starts `wsrouter dev` (tenant from $1) on ports it binds itself, setting port, admin and
# dev once it says it listens (`router_listening`); if it does not, its log says why.
start_dev() {
  local mode=$1
  : >"$dev_log"
  "$BIN/wsrouter" dev --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --interval "${INTERVAL_MS}ms" --tenant-from "$mode" --overrides-file "$overrides" \
    --reroute-drain "$GRACE" --drain-grace 1s >>"$dev_log" 2>&1 &
  dev=$!
  track "$dev"
  router_listening "$dev_log" 0 "$dev"
  port=$ROUTER_PORT admin=$ROUTER_ADMIN
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
