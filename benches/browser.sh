#!/usr/bin/env bash
# A real browser against `wsrouter dev`: headless Chromium loads the dev page, which opens
# four WebSockets; the page must show a counter from the backend the routing contract
# names for each tenant (`wsrouter route`), and the router's own metrics must show the
# sockets arrived as HTTP/2 extended CONNECT streams (RFC 8441), none as HTTP/1.1.
#
#   benches/browser.sh                  # the debug binary `cargo test` builds
#   BIN=target/release benches/browser.sh
#   TENANT_FROM=query:tenant benches/browser.sh   # the page names tenants as the router takes them
#
# Installs Debian's chromium if it is missing (about 30 s). Loopback only; every wait is
# bounded. Exit status 1 on any mismatch.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath -m "${BIN:-$ROOT/target/debug}")
PORT=${PORT:-18443}
ADMIN=${ADMIN:-19090}
BENCH_NAME=browser
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

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

# The page runs for 6 s of virtual time (its sockets open and count), then the DOM is
# printed. --no-sandbox: CI runs as root in a container.
dom=$(timeout 60 chromium --headless=new --no-sandbox --disable-gpu \
  --ignore-certificate-errors --virtual-time-budget=6000 \
  --dump-dom "https://localhost:$PORT/" 2>/dev/null) || die "chromium failed"

fail=0
for tenant in ns-01 ns-02 acme-prod demo-4; do
  want=$("$BIN/wsrouter" route "$tenant" --replicas 4 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pod"])')
  # The card of this tenant: its <h2>, then the backend the counters came from.
  got=$(printf '%s' "$dom" | python3 -c '
import re, sys
dom, tenant = sys.stdin.read(), sys.argv[1]
m = re.search(r"data-backend=\"([^\"]*)\"[^>]*>\s*<h2>" + re.escape(tenant) + "</h2>", dom) \
    or re.search(r"<h2>" + re.escape(tenant) + r"</h2>.*?class=\"backend\">([^<]*)<", dom, re.S)
print(m.group(1) if m else "")' "$tenant")
  if [[ $got == "$want" ]]; then
    log "$tenant: counters from $got, as the contract says"
  else
    log "$tenant: page shows ${got:-nothing}, the contract says $want"
    fail=1
  fi
done

metrics=$(curl -fsS "http://127.0.0.1:$ADMIN/metrics")
h2=$(printf '%s\n' "$metrics" | awk -F' ' '/^wsrouter_upgrade_responses_total\{status="200",protocol="h2"\}/ {print $2}')
h1=$(printf '%s\n' "$metrics" | awk -F' ' '/^wsrouter_upgrade_responses_total\{status="101",protocol="h1"\}/ {print $2}')
conns=$(printf '%s\n' "$metrics" | awk -F' ' '/^wsrouter_connections_accepted_total/ {print $2}')
log "WebSockets as HTTP/2 streams: ${h2:-0}; as HTTP/1.1 upgrades: ${h1:-0}; TCP connections: ${conns:-0}"
[[ ${h2:-0} == 4 && -z ${h1:-} ]] || { log "expected 4 HTTP/2 streams and no HTTP/1.1 upgrade"; fail=1; }
# Fewer TCP connections than sockets: they share the page's HTTP/2 connection (Chromium
# also opens a spare or two, so the count is not exactly one).
[[ ${conns:-9} -lt 4 ]] || { log "expected the sockets to share a connection"; fail=1; }
exit $fail
