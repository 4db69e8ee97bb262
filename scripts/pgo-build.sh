#!/usr/bin/env bash
# Builds wsrouter with profile-guided optimisation (PGO): an instrumented build first, a
# training run of it under the traffic it is made for (plain HTTP GETs and POSTs, and
# WebSockets: small messages, large ones, over HTTP/1.1 and HTTP/2), then the release build
# again with the profile, which lays out hot code together and inlines along the paths
# the traffic took. On the benchmarks' plain-HTTP cell the profiled build spends about a
# seventh less CPU per request, a quarter less of its user time (benches/RESULTS.md,
# 2026-12-06 (15:00 UTC)); on WebSockets it is level with the plain build.
#
#   scripts/pgo-build.sh                    # → target/pgo/wsrouter (under CARGO_TARGET_DIR if set)
#   scripts/pgo-build.sh /usr/local/bin/wsrouter
#
# Needs llvm-profdata of rustc's LLVM major version (rustup's llvm-tools component if it is
# installed, else Debian's llvm-N) and wrk; Debian's are installed if missing (as root).
# The training runs on loopback only, each phase bounded in time, and fails if any request
# or message failed; ports PGO_PORT..PGO_PORT+5 (default 18541) must be free. Run again, it trains
# again only if the instrumented build changed; the profiled build is redone only if the
# profile did (its path names its hash, so cargo sees new flags).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}/pgo")
OUT=$(realpath -m "${1:-$WORK/wsrouter}")
BASE_PORT=${PGO_PORT:-18541}
SECONDS_PER_PHASE=${PGO_SECONDS:-5}
log() { echo "[pgo $(date +%T)] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n $llvm ]] || die "cannot read rustc's LLVM version"
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata
[[ -x $PROFDATA ]] || PROFDATA=llvm-profdata-$llvm
missing=()
command -v "$PROFDATA" >/dev/null || missing+=("llvm-$llvm")
command -v wrk >/dev/null || missing+=(wrk)
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing ${missing[*]} from Debian"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

cd "$ROOT"
log "building the training tools (release) and the instrumented router"
cargo build --release --locked -q --bin echo-backend --bin wsload
TOOLS=${CARGO_TARGET_DIR:-$ROOT/target}/release
GEN=$WORK/gen
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$WORK/discard" \
  cargo build --release --locked -q --bin wsrouter --target-dir "$GEN"
INSTRUMENTED=$GEN/release/wsrouter
PROFILE=$WORK/wsrouter.profdata

listening() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits (bounded: 30 s) until port $1 answers, while process $2 lives.
wait_port() {
  local i
  for i in $(seq 1 300); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited: $(tail -3 "$4")"
    sleep 0.1
  done
  die "$3 did not listen on $1 within 30 s"
}

# The training's processes, killed on any exit (global: a trap outlives a function's
# locals when set -e ends the script inside it).
PIDS=()
train() {
  local raw=$WORK/raw router port=$BASE_PORT i f
  for i in 0 1 2 3 4 5; do
    if listening $((BASE_PORT + i)); then die "port $((BASE_PORT + i)) is in use (set PGO_PORT)"; fi
  done
  rm -rf "$raw" "$WORK/cert" "$WORK/logs"
  mkdir -p "$raw" "$WORK/logs"
  "$INSTRUMENTED" cert --host localhost --host 127.0.0.1 --out "$WORK/cert" >/dev/null
  trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
  for i in 1 2 3 4; do
    "$TOOLS/echo-backend" --listen "127.0.0.1:$((BASE_PORT + i))" --interval 1h \
      --server-name "backend-$i" >"$WORK/logs/backend-$i.log" 2>&1 &
    PIDS+=($!)
    wait_port $((BASE_PORT + i)) $! "echo backend $i" "$WORK/logs/backend-$i.log"
  done
  LLVM_PROFILE_FILE="$raw/wsrouter-%p.profraw" RUST_LOG=warn "$INSTRUMENTED" --workers 2 serve \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((BASE_PORT + 5))" \
    --tls-cert "$WORK/cert/tls.crt" --tls-key "$WORK/cert/tls.key" \
    $(for i in 1 2 3 4; do printf -- '--backend 127.0.0.1:%s ' "$((BASE_PORT + i))"; done) \
    >"$WORK/logs/wsrouter.log" 2>&1 &
  router=$!
  PIDS+=("$router")
  wait_port "$port" "$router" "the instrumented router" "$WORK/logs/wsrouter.log"
  local ws=(--url "wss://127.0.0.1:$port/ws/" --duration "${SECONDS_PER_PHASE}s" --timeout 10s)
  for method in GET POST; do
    log "training: HTTP ${method}s"
    wrk -t 2 -c 50 -d "${SECONDS_PER_PHASE}s" --timeout 5s -s "$ROOT/benches/http.lua" \
      "https://127.0.0.1:$port" -- "$method" 1000 128 0 >"$WORK/logs/wrk-$method.txt" 2>&1 ||
      die "wrk $method failed: $(tail -3 "$WORK/logs/wrk-$method.txt")"
    # A run that trained on refusals would lay out the wrong paths.
    grep -q '^JSON .*"errors": 0,' "$WORK/logs/wrk-$method.txt" ||
      die "wrk $method saw errors: $(grep '^JSON' "$WORK/logs/wrk-$method.txt")"
  done
  log "training: WebSockets"
  "$TOOLS/wsload" "${ws[@]}" --mode ping-pong -c 50 --size 64 >"$WORK/logs/ws-64.txt" 2>&1 ||
    die "wsload 64 B failed: $(tail -3 "$WORK/logs/ws-64.txt")"
  "$TOOLS/wsload" "${ws[@]}" --mode throughput -c 50 --size 16384 >"$WORK/logs/ws-16k.txt" 2>&1 ||
    die "wsload 16 KiB failed: $(tail -3 "$WORK/logs/ws-16k.txt")"
  "$TOOLS/wsload" "${ws[@]}" --mode ping-pong -c 50 --size 64 --h2-connections 5 \
    >"$WORK/logs/ws-h2.txt" 2>&1 || die "wsload over HTTP/2 failed: $(tail -3 "$WORK/logs/ws-h2.txt")"
  for f in "$WORK"/logs/ws-*.txt; do
    grep -q '(failed 0).*; errors 0$' "$f" || die "wsload saw failures: $(grep '^connections' "$f")"
  done
  # The profile is written as the router exits: a drain, then a normal exit.
  kill -TERM "$router" 2>/dev/null || die "the instrumented router died in training: $(tail -3 "$WORK/logs/wsrouter.log")"
  for i in $(seq 1 300); do
    kill -0 "$router" 2>/dev/null || break
    [[ $i == 300 ]] && die "the instrumented router did not exit within 30 s of SIGTERM"
    sleep 0.1
  done
  kill "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
  trap - EXIT
  compgen -G "$raw/wsrouter-*.profraw" >/dev/null || die "the training wrote no profile"
  "$PROFDATA" merge -o "$PROFILE" "$raw"/wsrouter-*.profraw
}

if [[ ! -f $PROFILE || $INSTRUMENTED -nt $PROFILE ]]; then
  train
else
  log "the instrumented build is unchanged: its profile stands"
fi

hash=$(sha256sum "$PROFILE" | cut -c1-16)
mkdir -p "$WORK/profiles"
# rustc records the profile as an input of every crate: a copy with a new time would
# rebuild them all.
[[ -f $WORK/profiles/$hash.profdata ]] || cp "$PROFILE" "$WORK/profiles/$hash.profdata"
log "building the profiled router"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$WORK/profiles/$hash.profdata" \
  cargo build --release --locked -q --bin wsrouter --target-dir "$WORK/use"
mkdir -p "$(dirname "$OUT")"
cp "$WORK/use/release/wsrouter" "$OUT"
log "built $OUT (profile $hash)"
