#!/usr/bin/env bash
# The router's `--auth jwt` door against tokens minted by an independent implementation:
# PyJWT on keys made at run time (RSA 2048, P-256, Ed25519, each with a kid, their public
# JWKs in a key set file), never the router's own crate. Behind the router, two echo
# backends, each behind a counting TCP relay (jwt_check.py relay), so that a refusal is
# seen never to open a connection to a pod. jwt_check.py then checks:
# - RS256, PS256, ES256 and EdDSA tokens open their tenant's WebSocket (101, the counter
#   from the contract's pod, an echo), with the token in the query, in Authorization, in
#   the bearer subprotocol and in the cookie; a tenant list and `*` too; the pod gets the
#   verified claims in --jwt-claims-header and never a token sent in the query or the
#   subprotocol; a socket ends with 1008 when its token expires;
# - every refusal (expired, nbf, issuer, audience, a stranger key with a known kid, an
#   altered signature, alg none, HS256 keyed with the RSA public key, unknown kid, another
#   tenant's token, no token...) gets its status and WWW-Authenticate, and no pod hears of
#   it; plain HTTPS requests are checked the same way;
# - headless Chromium: a `WebSocket` with the token in the query and in the subprotocol
#   opens and echoes; another tenant's token, or none, fires error and close, no open.
# Then the router's log (RUST_LOG=debug) must hold none of the tokens, and /metrics must
# count every refusal by its reason. Installs Debian's chromium if it is missing. Exits
# non-zero on any mismatch; loopback only, every wait bounded.
set -euo pipefail
BENCH_NAME=jwt
# shellcheck source=tests/frameworks/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium"
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi
[[ -x $BIN/echo-backend ]] || die "no $BIN/echo-backend: run cargo build -p backend first"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PY=$FRAMEWORKS_VENV/bin/python
DRIVER=$FRAMEWORKS/jwt_check.py
OUT=$FW_TMP/out
mkdir -p "$OUT"
started=$(date +%s)

# Keys and the key set the router reads.
timeout 60 "$PY" "$DRIVER" keys --dir "$FW_TMP/keys" --jwks "$FW_TMP/jwks.json"

# Two echo backends (counters once an hour: the first at connect, then only echoes), each
# behind the relay.
pairs=()
relay_ports=()
for i in 0 1; do
  port=$(free_port)
  "$BIN/echo-backend" --listen "127.0.0.1:$port" --server-name "backend-$i" --interval 1h \
    >>"$FW_TMP/backend-$i.log" 2>&1 &
  track $!
  wait_port "$port"
  relay=$(free_port)
  pairs+=(--pair "backend-$i=$relay:$port")
  relay_ports+=("$relay")
done
RELAY_STATS=$(free_port)
"$PY" "$DRIVER" relay --stats-port "$RELAY_STATS" "${pairs[@]}" >>"$FW_TMP/relay.log" 2>&1 &
track $!
for port in "${relay_ports[@]}" "$RELAY_STATS"; do wait_port "$port"; done

RUST_LOG=debug start_router "127.0.0.1:${relay_ports[0]}" "127.0.0.1:${relay_ports[1]}" -- \
  --auth jwt --jwks-file "$FW_TMP/jwks.json" --jwt-issuer https://id.test --jwt-audience wsrouter \
  --tenant-claim tenant --jwt-claims-header x-wsrouter-claims
PORT=$ROUTER_PORT ADMIN=$ROUTER_ADMIN
log "router on wss://localhost:$PORT (admin :$ADMIN), --auth jwt, backends behind relays :${relay_ports[*]}"

fail=0
common=(--port "$PORT" --relay-stats "$RELAY_STATS" --keys "$FW_TMP/keys" --wsrouter "$BIN/wsrouter" --out "$OUT")
timeout 120 "$PY" "$DRIVER" check "${common[@]}" --ca "$FW_CA" || fail=1
timeout 120 "$PY" "$DRIVER" browser "${common[@]}" --chromium-log "$FW_TMP/chromium.log" || fail=1

# The router's log: debug lines were written, and no token (whole, its first 40
# characters, or its signature) is in it.
plain_log=$FW_TMP/router-plain.log
sed 's/\x1b\[[0-9;]*m//g' "$FW_TMP/router.log" >"$plain_log"
debug_lines=$(grep -c ' DEBUG ' "$plain_log" || true)
((debug_lines > 0)) || { log "the router's log has no DEBUG line: RUST_LOG=debug not in effect"; fail=1; }
tokens=0 leaked=0
while IFS= read -r token; do
  [[ -n $token ]] || continue
  tokens=$((tokens + 1))
  for part in "$token" "${token:0:40}" "${token##*.}"; do
    ((${#part} >= 16)) || continue
    if grep -qF -- "$part" "$plain_log"; then
      log "the router's log holds a token (or its first 40 characters, or its signature): $(grep -nF -- "$part" "$plain_log" | head -1 | cut -c1-160)"
      leaked=$((leaked + 1))
    fi
  done
done <"$OUT/tokens.txt"
((tokens > 20)) || { log "only $tokens tokens recorded"; fail=1; }
if ((leaked)); then
  fail=1
else
  log "router log: $(wc -l <"$plain_log") lines ($debug_lines DEBUG), none holds any of the $tokens tokens sent"
fi

# /metrics: every refusal counted under its reason, nothing more; one socket closed for
# its token's expiry.
metric() { router_metric "$ADMIN" "$1" || true; }
want_total=0
while read -r n reason; do
  got=$(metric "^wsrouter_auth_refused_total\\{reason=\"$reason\"\\}")
  want_total=$((want_total + n))
  if ((got != n)); then
    log "wsrouter_auth_refused_total{reason=\"$reason\"} is $got, want $n"
    fail=1
  fi
done < <(sort "$OUT/refusals.txt" | uniq -c)
total=$(metric '^wsrouter_auth_refused_total\{')
if ((total != want_total)); then
  log "wsrouter_auth_refused_total sums to $total, want $want_total"
  fail=1
fi
# The socket whose token expired is counted as such (once its relay has ended).
expired_closes=0
for _ in $(seq 1 50); do
  expired_closes=$(metric '^wsrouter_connections_closed_total\{[^}]*reason="token_expired"')
  ((expired_closes == 0)) || break
  sleep 0.1
done
if ((expired_closes != 1)); then
  log "wsrouter_connections_closed_total{reason=\"token_expired\"} is $expired_closes, want 1"
  fail=1
fi
log "/metrics: $(curl -sf "http://127.0.0.1:$ADMIN/metrics" | grep -E '^wsrouter_auth_refused_total\{' | grep -v ' 0$' | sed -E 's/^wsrouter_auth_refused_total\{reason="([^"]+)"\} /\1=/' | tr '\n' ' ')"

if ((fail)); then
  log "FAILED; the router's warnings and errors (last 20):"
  grep -E ' (WARN|ERROR) ' "$plain_log" | tail -20 >&2 || true
  tail -5 "$FW_TMP/relay.log" >&2 || true
  exit 1
fi
log "ok ($(($(date +%s) - started)) s)"
