# What every framework test sources: the pinned packages (setup.sh), the shared helpers of
# the benchmarks (log, die, wait_port), and `start_router`, which runs the real router
# (`wsrouter serve`, TLS with a certificate made for this run) in front of given backends,
# on ports it binds itself (`router_listening`).
# The caller sets BENCH_NAME (its log prefix). Loopback only; every wait is bounded.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=$(realpath -m "${BIN:-$ROOT/target/debug}")
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
# shellcheck source=tests/frameworks/setup.sh
source "$ROOT/tests/frameworks/setup.sh"
[[ -x $BIN/wsrouter ]] || die "no $BIN/wsrouter: run cargo test (or cargo build) first"

# Scratch space for this run (certificates, logs), removed on exit with every process
# started through `track`.
FW_TMP=$(mktemp -d)
FW_PIDS=()
track() { FW_PIDS+=("$1"); }
fw_cleanup() {
  for pid in "${FW_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${FW_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$FW_TMP"
}
trap fw_cleanup EXIT

# A certificate for localhost and 127.0.0.1 under a throwaway CA; clients trust the CA
# (node: NODE_EXTRA_CA_CERTS; Python: SSL_CERT_FILE / REQUESTS_CA_BUNDLE).
"$BIN/wsrouter" cert --host localhost --host 127.0.0.1 --out "$FW_TMP/cert" >/dev/null
export NODE_EXTRA_CA_CERTS="$FW_TMP/cert/ca.crt"
export FW_CA="$FW_TMP/cert/ca.crt"

# router_listening LOG FROM PID: waits for the router PID to log that it listens (its
# "listening" line, after line FROM of LOG) and sets ROUTER_PORT and ROUTER_ADMIN to the
# ports it bound. The router is given port 0 for both, so no port can be taken by another
# socket between being chosen and being bound (a port found free and handed over can).
router_listening() {
  local log=$1 from=$2 pid=$3 line
  for _ in $(seq 1 100); do
    line=$(tail -n +"$((from + 1))" "$log" | sed 's/\x1b\[[0-9;]*m//g' | grep -m1 ' listening listen\.addr=' || true)
    if [[ -n $line ]]; then
      ROUTER_PORT=$(sed -E 's/.* listen\.addr=[^ ]*:([0-9]+) .*/\1/' <<<"$line")
      ROUTER_ADMIN=$(sed -E 's/.* admin\.addr=[^ ]*:([0-9]+) .*/\1/' <<<"$line")
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  tail -n +"$((from + 1))" "$log" | sed 's/\x1b\[[0-9;]*m//g' | tail -20 >&2
  die "the router did not say it listens (exited, or not within 10 s; its log above)"
}

# start_router BACKEND... [-- EXTRA_FLAG...]: `wsrouter serve` on 127.0.0.1 (wss and
# https) in front of the backends (HOST:PORT, ordinal = position), its ports in
# ROUTER_PORT and ROUTER_ADMIN, ready once its admin listener says so. Its log is
# $FW_TMP/router.log.
start_router() {
  local backends=() extra=() from
  while (($#)); do
    if [[ $1 == -- ]]; then
      shift
      extra=("$@")
      break
    fi
    backends+=("--backend" "$1")
    shift
  done
  touch "$FW_TMP/router.log"
  from=$(wc -l <"$FW_TMP/router.log")
  "$BIN/wsrouter" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --tls-cert "$FW_TMP/cert/tls.crt" --tls-key "$FW_TMP/cert/tls.key" \
    "${backends[@]}" --route-headers "${extra[@]}" >>"$FW_TMP/router.log" 2>&1 &
  ROUTER_PID=$!
  track "$ROUTER_PID"
  router_listening "$FW_TMP/router.log" "$from" "$ROUTER_PID"
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$ROUTER_ADMIN/readyz" >/dev/null; then return 0; fi
    sleep 0.1
  done
  tail -20 "$FW_TMP/router.log" >&2
  die "the router on :$ROUTER_PORT is not ready after 10 s"
}

# The router's counter of a metric line (first match of a grep -E pattern), or 0.
router_metric() {
  curl -sf "http://127.0.0.1:$1/metrics" | grep -E "$2" | awk '{ s += $NF } END { print s + 0 }'
}
