#!/usr/bin/env bash
# WebSocket conformance through the router: the Autobahn|Testsuite fuzzing client runs
# every case against the echo backend directly (ws://) and through wsrouter (wss://, TLS
# terminated by the router), and every case must get the same verdict both ways. A proxy
# that changes how a connection ends, or what crosses it, shows up as a difference.
#
#   benches/autobahn.sh                  # every case but the slow compression ones (12.*, 13.*)
#   CASES=all benches/autobahn.sh        # every case (about 20 minutes more)
#   BIN=target/release benches/autobahn.sh
#   BACKEND=reference benches/autobahn.sh
#
# BACKEND picks what the router fronts: `echo` (the default, the project's echo-backend)
# or `reference`, the suite's own echo server (`wstest -m testeeserver`). The reference
# server answers a peer that breaks the protocol as many real servers do, by dropping TCP
# rather than closing with 1002, so it exercises how the router passes a backend's end
# on. Each backend has its own reports, logs and certificate under $OUT (reports-echo,
# reports-reference, ...), so the two runs never clobber each other.
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
BACKEND=${BACKEND:-echo}
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

case $BACKEND in
  echo | reference) ;;
  *) die "BACKEND must be echo or reference, not '$BACKEND'" ;;
esac
[[ -n $PY2 && -x $PY2 ]] || die "no Python 2.7 found (set PY2)"
if [[ ! -x $VENV/bin/wstest ]]; then
  log "installing autobahntestsuite into $VENV"
  "$PY2" -m pip install --quiet --disable-pip-version-check 'virtualenv<20.22' >/dev/null
  "$PY2" -m virtualenv --quiet "$VENV" >/dev/null
  "$VENV/bin/pip" install --quiet --disable-pip-version-check autobahntestsuite==25.10.1 >/dev/null
fi
bins=(wsrouter)
[[ $BACKEND == echo ]] && bins+=(echo-backend)
for b in "${bins[@]}"; do
  [[ -x $BIN/$b ]] || (cd "$ROOT" && cargo build --locked -q --bin "$b")
done

REPORTS=$OUT/reports-$BACKEND
LOGS=$OUT/logs-$BACKEND
CERT=$OUT/cert-$BACKEND
rm -rf "$REPORTS" "$LOGS"
mkdir -p "$LOGS" "$CERT"
START=$SECONDS
PIDS=()
# Ends what this script started, and only that: TERM, then (bounded: the router's
# drain grace is 20 s) KILL for anything still there.
cleanup() {
  local p left
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 250); do
    left=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# A free loopback port: bind port 0 and read it back (held by nothing afterwards, so the
# caller binds it at once; a clash fails loudly at start-up, never silently).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

BACKEND_PORT=$(free_port)
if [[ $BACKEND == echo ]]; then
  "$BIN/echo-backend" --listen "127.0.0.1:$BACKEND_PORT" --mode echo --server-name autobahn \
    >"$LOGS/backend.log" 2>&1 &
else
  # What `wstest -m testeeserver -w ws://127.0.0.1:PORT` runs (its factory, protocol and
  # options), started here for two reasons: wstest listens on every interface, and its
  # factory refuses (400) a Host whose port is not its own, which behind the router
  # (Host: the router's address, passed on as is) is every request. So: loopback only,
  # and no port check (autobahn skips it when the factory has no external port).
  "$VENV/bin/python" - "$BACKEND_PORT" >"$LOGS/backend.log" 2>&1 <<'PY' &
import sys
import autobahntestsuite.choosereactor  # first, as wstest does: the epoll reactor
from twisted.internet import reactor
from autobahn.twisted.websocket import listenWS
from autobahntestsuite import __version__
from autobahntestsuite.testee import TesteeServerFactory
port = int(sys.argv[1])
factory = TesteeServerFactory("ws://127.0.0.1:%d" % port)
factory.externalPort = None
listenWS(factory, interface="127.0.0.1")
print("autobahntestsuite %s testeeserver on 127.0.0.1:%d" % (__version__, port))
sys.stdout.flush()
reactor.run()
PY
fi
PIDS+=($!)
wait_port "$BACKEND_PORT"

"$BIN/wsrouter" cert --host localhost --host 127.0.0.1 --out "$CERT" >/dev/null
ROUTER_PORT=$(free_port)
ADMIN_PORT=$(free_port)
# Generous limits: Autobahn's limits cases send 16 MB messages and hold connections.
RUST_LOG=${RUST_LOG:-info} "$BIN/wsrouter" serve --listen "127.0.0.1:$ROUTER_PORT" \
  --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --tls-cert "$CERT/tls.crt" --tls-key "$CERT/tls.key" \
  --backend "127.0.0.1:$BACKEND_PORT" --close-timeout 10s >"$LOGS/wsrouter.log" 2>&1 &
PIDS+=($!)
wait_port "$ROUTER_PORT"

if [[ $CASES == all ]]; then
  exclude='[]'
else
  # permessage-deflate: minutes of compression each, and the router only passes the
  # extension through.
  exclude='["12.*", "13.*"]'
fi
SPEC=$OUT/fuzzingclient-$BACKEND.json
cat >"$SPEC" <<EOF
{
  "outdir": "$REPORTS",
  "servers": [
    {"agent": "direct", "url": "ws://127.0.0.1:$BACKEND_PORT/ws/autobahn"},
    {"agent": "wsrouter", "url": "wss://127.0.0.1:$ROUTER_PORT/ws/autobahn"}
  ],
  "cases": ["*"],
  "exclude-cases": $exclude,
  "exclude-agent-cases": {}
}
EOF
log "running the fuzzing client ($CASES cases) against the $BACKEND backend directly and through wsrouter"
(cd "$OUT" && timeout 3600 "$VENV/bin/wstest" -m fuzzingclient -s "$SPEC" \
  >"$LOGS/wstest.log" 2>&1) || die "wstest failed: $(tail -5 "$LOGS/wstest.log")"
for p in "${PIDS[@]}"; do
  kill -0 "$p" 2>/dev/null || die "a server died during the run; see $LOGS"
done

status=0
python3 - "$REPORTS/index.json" "$BACKEND" <<'PY' || status=$?
import json, sys
index = json.load(open(sys.argv[1]))
backend = sys.argv[2]
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
print(f"autobahn ({backend} backend): {len(cases)} cases; through wsrouter: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=str)))
for c, ab, ac, bb, bc in differ:
    print(f"  {c}: direct {ab}/{ac}, through wsrouter {bb}/{bc}")
print(f"autobahn ({backend} backend): {len(differ)} cases differ between direct and through wsrouter")
sys.exit(1 if differ else 0)
PY
log "$BACKEND backend: done in $((SECONDS - START)) s; reports in $REPORTS"
exit "$status"
