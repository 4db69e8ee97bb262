#!/usr/bin/env bash
# What a token check costs a WebSocket handshake: compare.sh's handshake cell (new TLS
# connections, each through its upgrade to its first echo, 64 at a time from 8 loopback
# sources) against wsrouter as it is (`wsrouter`) and with `--auth jwt` (`wsrouter-b`),
# whose load carries a token in `access_token`. Per handshake: the router's CPU (from
# /proc), and handshakes per second. Keys and tokens are made per run with Python's
# `cryptography` (no JWT library): ES256 (P-256) and RS256 (RSA 2048).
#
#   benches/auth_cost.sh                  # ES256 then RS256, 3 rounds each
#   ALGS=ES256 ROUNDS=5 benches/auth_cost.sh
#
# Targets take turns round by round (a VM's speed drifts; compare within a round).
# Loopback only; every run is bounded.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
ALGS=${ALGS:-"ES256 RS256"}
CONNS=${CONNS:-3000}
WORKERS=2
BENCH_NAME=auth_cost
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/auth_cost}
WSROUTER_ARGS="--max-connections 9900"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
python3 -c 'import cryptography' 2>/dev/null || die "needs Python's cryptography (pip install cryptography)"

# mint ALG DIR → writes DIR/jwks.json, prints a token for every tenant ("*"), valid 2 h.
mint() {
  python3 - "$1" "$2/jwks.json" <<'PY'
import base64, json, sys, time
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
alg, out = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
big = lambda n, size=None: n.to_bytes(size or (n.bit_length() + 7) // 8, "big")
if alg == "ES256":
    key = ec.generate_private_key(ec.SECP256R1())
    p = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "kid": "k", "x": b64(big(p.x, 32)), "y": b64(big(p.y, 32))}
else:
    key = rsa.generate_private_key(65537, 2048)
    p = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "kid": "k", "n": b64(big(p.n)), "e": b64(big(p.e))}
json.dump({"keys": [jwk]}, open(out, "w"))
head = b64(json.dumps({"alg": alg, "kid": "k", "typ": "JWT"}).encode())
claims = {"iss": "https://id.bench", "aud": "wsrouter", "exp": int(time.time()) + 7200, "tenant": "*"}
msg = f"{head}.{b64(json.dumps(claims).encode())}".encode()
if alg == "ES256":
    r, s = utils.decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    sig = big(r, 32) + big(s, 32)
else:
    sig = key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
print(f"{msg.decode()}.{b64(sig)}")
PY
}

ticks() {
  local t=0 pt
  for p in "$@"; do
    pt=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + pt))
  done
  echo "$t"
}

measure() {
  local alg=$1 target=$2 extra="" t0 t1 r rate
  TARGET=$target
  start_target "$target"
  [[ $target == wsrouter-b ]] && extra="--query access_token=$TOKEN"
  # Warm-up: the allocator, the backends' first connections.
  "$BIN/wsload" --url "wss://127.0.0.1:${PORT[$target]}/ws/" --json $extra \
    --mode hold-idle -c 200 --parallel 64 --sources 8 --duration 0s >/dev/null
  local pids
  pids=$(proc_tree)
  t0=$(ticks $pids)
  r=$("$BIN/wsload" --url "wss://127.0.0.1:${PORT[$target]}/ws/" --json $extra \
    --mode hold-idle -c "$CONNS" --parallel 64 --sources 8 --duration 0s)
  t1=$(ticks $pids)
  stop_target
  rate=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["connects_per_second"])' "$r")
  python3 - "$alg" "$target" "$CONNS" "$rate" "$((t1 - t0))" "$TICKS" <<'PY'
import sys
alg, target, n, rate, ticks, hz = sys.argv[1:]
label = f"jwt {alg}" if target == "wsrouter-b" else "no auth"
us = int(ticks) / float(hz) / int(n) * 1e6
print(f"{alg} round: {label:>10}: {float(rate):,.0f} handshakes/s, router CPU {us:.0f} µs per handshake")
PY
}

for alg in $ALGS; do
  mkdir -p "$OUT/keys-$alg"
  TOKEN=$(mint "$alg" "$OUT/keys-$alg")
  WSROUTER_B_ARGS="--auth jwt --jwks-file $OUT/keys-$alg/jwks.json --jwt-issuer https://id.bench --jwt-audience wsrouter"
  export WSROUTER_B_ARGS
  order=(wsrouter wsrouter-b)
  for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < 2; i++)); do
      measure "$alg" "${order[(i + r) % 2]}"
    done
  done
done
