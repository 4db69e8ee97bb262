#!/usr/bin/env bash
# Instructions per echoed message in wsrouter's own process, counted by callgrind: exact
# and repeatable whatever else the machine is doing, so it resolves what a wall-clock
# A/B on a shared 2-core machine cannot (a few percent). User space only: the kernel's
# share of each message (the syscalls) is not counted.
#
#   benches/instructions.sh WSROUTER_BINARY [SIZE]     # SIZE: message bytes, default 64
#
# Plaintext (TLS is the same assembly in any build), one I/O thread, an echo backend and
# wsload from BIN (default target/release); 3 s of warm-up, counters zeroed, then 20 s of
# throughput with 10 connections. Loopback only; every wait is bounded.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(realpath "$1")
SIZE=${2:-64}
BIN=$(realpath -m "${BIN:-$ROOT/target/release}")
OUT=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EP=$(free_port)
RP=$(free_port)
AP=$(free_port)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$OUT"' EXIT
"$BIN/echo-backend" --listen "127.0.0.1:$EP" --mode echo >/dev/null 2>&1 &
PIDS+=($!)
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" "$W" --workers 1 serve \
  --plaintext --listen "127.0.0.1:$RP" --admin-listen "127.0.0.1:$AP" \
  --backend "127.0.0.1:$EP" >"$OUT/router.log" 2>&1 &
R=$!
PIDS+=($R)
for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$RP") 2>/dev/null && break; sleep 0.2; done
load() { "$BIN/wsload" --url "ws://127.0.0.1:$RP/ws/" --json --mode throughput -c 10 "$@"; }
load --size 64 --duration 3s >/dev/null
callgrind_control -z "$R" >/dev/null
load --size "$SIZE" --duration 20s >"$OUT/load.json"
callgrind_control -d "$R" >/dev/null
# The dump is written by the router's own thread: wait (bounded) until it is there.
for _ in $(seq 1 100); do compgen -G "$OUT/cg.*.*" >/dev/null && break; sleep 0.1; done
python3 - "$OUT" "$W" "$SIZE" <<'PY'
import glob, json, sys
out, binary, size = sys.argv[1:]
msgs = json.load(open(f"{out}/load.json"))["messages"]
ir = sum(int(l.split()[1]) for f in glob.glob(f"{out}/cg.*.*") for l in open(f) if l.startswith("summary:"))
print(f"{binary} size={size} messages={msgs} instructions={ir} per_message={ir / msgs:.0f}")
PY
