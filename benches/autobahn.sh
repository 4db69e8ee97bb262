#!/usr/bin/env bash
# WebSocket conformance through the router: the Autobahn|Testsuite fuzzing client runs
# every case against the echo backend directly (ws://) and through wsrouter (wss://, TLS
# terminated by the router), and every case must get the same verdict both ways. A proxy
# that changes how a connection ends, or what crosses it, shows up as a difference.
#
#   benches/autobahn.sh                  # every case but the slow compression ones (12.*, 13.*)
#   CASES=all benches/autobahn.sh        # every case (about 20 minutes more)
#   BIN=target/release benches/autobahn.sh
#
# Needs Python 2.7 (the suite's language): these machines have one under pyenv. The
# suite and its pinned dependencies are installed into a virtualenv under $OUT the first
# time. Uses the debug binaries `cargo test` builds, unless BIN says otherwise. Loopback
# only; every wait is bounded. Exit status 1 if any verdict differs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${OUT:-$ROOT/target/autobahn}")
BIN=$(realpath -m "${BIN:-$ROOT/target/debug}")
CASES=${CASES:-ci}
# Python 2.7: $PY2, else pyenv's, else one on the PATH that runs (pyenv's shim may not).
find_py2() {
  local root
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  for p in "$root"/versions/2.7*/bin/python2.7; do
    [[ -x $p ]] && { echo "$p"; return; }
  done
  if python2.7 -c pass 2>/dev/null; then command -v python2.7; fi
}
PY2=${PY2:-$(find_py2)}
VENV=${VENV:-${TMPDIR:-/tmp}/wsrouter-autobahn-venv}

BENCH_NAME=autobahn
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

[[ -n $PY2 && -x $PY2 ]] || die "no Python 2.7 found (set PY2)"
if [[ ! -x $VENV/bin/wstest ]]; then
  log "installing autobahntestsuite into $VENV"
  "$PY2" -m pip install --quiet --disable-pip-version-check 'virtualenv<20.22' >/dev/null
  "$PY2" -m virtualenv --quiet "$VENV" >/dev/null
  "$VENV/bin/pip" install --quiet --disable-pip-version-check autobahntestsuite==25.10.1 >/dev/null
fi
for b in wsrouter echo-backend; do
  [[ -x $BIN/$b ]] || (cd "$ROOT" && cargo build --locked -q --bin "$b")
done

rm -rf "$OUT/reports" "$OUT/logs"
mkdir -p "$OUT/logs" "$OUT/cert"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# A free loopback port: bind port 0 and read it back (held by nothing afterwards, so the
# caller binds it at once; a clash fails loudly at start-up, never silently).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ECHO_PORT=$(free_port)
"$BIN/echo-backend" --listen "127.0.0.1:$ECHO_PORT" --mode echo --server-name autobahn \
  >"$OUT/logs/echo.log" 2>&1 &
PIDS+=($!)
wait_port "$ECHO_PORT"

"$BIN/wsrouter" cert --host localhost --host 127.0.0.1 --out "$OUT/cert" >/dev/null
ROUTER_PORT=$(free_port)
ADMIN_PORT=$(free_port)
# Generous limits: Autobahn's limits cases send 16 MB messages and hold connections.
RUST_LOG=${RUST_LOG:-info} "$BIN/wsrouter" serve --listen "127.0.0.1:$ROUTER_PORT" \
  --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --tls-cert "$OUT/cert/tls.crt" --tls-key "$OUT/cert/tls.key" \
  --backend "127.0.0.1:$ECHO_PORT" --close-timeout 10s >"$OUT/logs/wsrouter.log" 2>&1 &
PIDS+=($!)
wait_port "$ROUTER_PORT"

if [[ $CASES == all ]]; then
  exclude='[]'
else
  # permessage-deflate: minutes of compression each, and the router only passes the
  # extension through.
  exclude='["12.*", "13.*"]'
fi
cat >"$OUT/fuzzingclient.json" <<EOF
{
  "outdir": "$OUT/reports",
  "servers": [
    {"agent": "direct", "url": "ws://127.0.0.1:$ECHO_PORT/ws/autobahn"},
    {"agent": "wsrouter", "url": "wss://127.0.0.1:$ROUTER_PORT/ws/autobahn"}
  ],
  "cases": ["*"],
  "exclude-cases": $exclude,
  "exclude-agent-cases": {}
}
EOF
log "running the fuzzing client ($CASES cases) against the echo backend directly and through wsrouter"
(cd "$OUT" && timeout 3600 "$VENV/bin/wstest" -m fuzzingclient -s "$OUT/fuzzingclient.json" \
  >"$OUT/logs/wstest.log" 2>&1) || die "wstest failed: $(tail -5 "$OUT/logs/wstest.log")"

python3 - "$OUT/reports/index.json" <<'PY'
import json, sys
index = json.load(open(sys.argv[1]))
direct, routed = index["direct"], index["wsrouter"]
def key(case):
    return [int(p) for p in case.split(".")]
cases = sorted(direct, key=key)
differ = []
for c in cases:
    a, b = direct[c], routed.get(c, {})
    if (a.get("behavior"), a.get("behaviorClose")) != (b.get("behavior"), b.get("behaviorClose")):
        differ.append((c, a.get("behavior"), a.get("behaviorClose"), b.get("behavior"), b.get("behaviorClose")))
counts = {}
for c in cases:
    v = routed.get(c, {}).get("behavior")
    counts[v] = counts.get(v, 0) + 1
print(f"autobahn: {len(cases)} cases; through wsrouter: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=str)))
for c, ab, ac, bb, bc in differ:
    print(f"  {c}: direct {ab}/{ac}, through wsrouter {bb}/{bc}")
print(f"autobahn: {len(differ)} cases differ between direct and through wsrouter")
sys.exit(1 if differ else 0)
PY
