#!/usr/bin/env bash
# A real browser against `wsrouter dev`: headless Chromium loads the dev page, which opens
# four WebSockets and four EventSources (Server-Sent Events); the page must show a counter
# and an event from the backend the routing contract names for each tenant (`wsrouter
# route`), and the router's own metrics must show the sockets arrived as HTTP/2 extended
# CONNECT streams (RFC 8441), none as HTTP/1.1, and the event streams as HTTP/2 requests.
#
#   benches/browser.sh                  # the debug binary `cargo test` builds
#   BIN=target/release benches/browser.sh
#   TENANT_FROM=query:tenant benches/browser.sh   # the page names tenants as the router takes them
#
# Installs Debian's chromium if it is missing (about 30 s), and the framework tests' pinned
# Python packages (tests/frameworks/setup.sh: websocket-client drives Chromium). Loopback
# only; every wait is bounded. Exit status 1 on any mismatch.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath -m "${BIN:-$ROOT/target/debug}")
PORT=${PORT:-18443}
ADMIN=${ADMIN:-19090}
BENCH_NAME=browser
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
# shellcheck source=tests/frameworks/setup.sh
source "$ROOT/tests/frameworks/setup.sh"

if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium"
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi
[[ -x $BIN/wsrouter ]] || die "no $BIN/wsrouter: run cargo test (or cargo build) first"

"$BIN/wsrouter" dev --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" \
  --interval 200ms --tenant-from "${TENANT_FROM:-path}" >/dev/null 2>&1 &
router=$!
trap 'kill $router 2>/dev/null || true' EXIT
wait_port "$PORT"
wait_port "$ADMIN"

# Chromium (DevTools protocol, benches/browser_page.py) loads the page and waits, bounded,
# until every card shows a counter and an event; the page's tenants and the pods they show.
cards=$(timeout 90 "$FRAMEWORKS_VENV/bin/python" "$ROOT/benches/browser_page.py" \
  "https://localhost:$PORT/" 4 /dev/null) || die "chromium failed"

fail=0
for tenant in ns-01 ns-02 acme-prod demo-4; do
  want=$("$BIN/wsrouter" route "$tenant" --replicas 4 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pod"])')
  for kind in socket events; do
    got=$(printf '%s' "$cards" | python3 -c '
import json, sys
print((json.load(sys.stdin).get(sys.argv[1]) or {}).get(sys.argv[2]) or "")' "$tenant" "$kind")
    if [[ $got == "$want" ]]; then
      log "$tenant: $kind from $got, as the contract says"
    else
      log "$tenant: the page shows $kind from ${got:-nothing}, the contract says $want"
      fail=1
    fi
  done
done

metrics=$(curl -fsS "http://127.0.0.1:$ADMIN/metrics")
h2=$(printf '%s\n' "$metrics" | awk -F' ' '/^wsrouter_upgrade_responses_total\{status="200",protocol="h2"\}/ {print $2}')
h1=$(printf '%s\n' "$metrics" | awk -F' ' '/^wsrouter_upgrade_responses_total\{status="101",protocol="h1"\}/ {print $2}')
sse_h2=$(printf '%s\n' "$metrics" | awk -F' ' '/^wsrouter_http_requests_total\{status="200",protocol="h2"\}/ {print $2}')
sse_h1=$(printf '%s\n' "$metrics" | awk -F' ' '/^wsrouter_http_requests_total\{[^}]*protocol="h1"\}/ {s += $2} END {print s + 0}')
conns=$(printf '%s\n' "$metrics" | awk -F' ' '/^wsrouter_connections_accepted_total/ {print $2}')
log "WebSockets as HTTP/2 streams: ${h2:-0}; as HTTP/1.1 upgrades: ${h1:-0}; TCP connections: ${conns:-0}"
[[ ${h2:-0} == 4 && -z ${h1:-} ]] || { log "expected 4 HTTP/2 streams and no HTTP/1.1 upgrade"; fail=1; }
# The page's event streams: plain requests forwarded to the pods, on the same connection.
log "event streams as HTTP/2 requests: ${sse_h2:-0}; HTTP/1.1 requests: $sse_h1"
[[ ${sse_h2:-0} -ge 4 && $sse_h1 == 0 ]] || { log "expected 4 HTTP/2 event streams and no HTTP/1.1 request"; fail=1; }
# Fewer TCP connections than sockets: they share the page's HTTP/2 connection (Chromium
# also opens a spare or two, so the count is not exactly one).
[[ ${conns:-9} -lt 4 ]] || { log "expected the sockets to share a connection"; fail=1; }
exit $fail
