#!/usr/bin/env bash
# Where a request's time goes at the HTTP cell's moderate load: 50 TLS keep-alive
# connections, a 10 ms pause after each answer (about 4,600 GETs a second), with
# `tcpdump` on loopback for the run. From the packets' times (benches/http_hops.py):
#   client   the client's request record leaving wrk → the proxy's answer leaving it,
#            per connection (one request in flight each): what the client waits, less
#            wrk's own scheduling;
#   backend  the proxy's request to a pod → the pod's answer, per backend connection;
#   in, out  the proxy's two hops: a client's request → its request to the pod, and the
#            pod's answer → the answer to the client. Requests are paired first in, first
#            out across connections (the client side is encrypted), so a hop's tail is
#            approximate; its median is not far off.
# Targets take turns round by round; the summary gives each metric's median over rounds.
#
#   benches/http_hops.sh                                   # wsrouter, haproxy, 3 rounds
#   TARGETS="wsrouter wsrouter-b" WSROUTER_B_BIN=/tmp/old/wsrouter ROUNDS=5 benches/http_hops.sh
#
# Needs tcpdump (apt-get install tcpdump) and wrk (pinned as in compare.sh). Loopback
# only; every run is bounded (SECONDS_PER_RUN).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
METHOD=${METHOD:-GET}
TARGETS=${TARGETS:-"wsrouter haproxy"}
WORKERS=2
BENCH_NAME=http_hops
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/http_hops}
WSROUTER_ARGS="--max-connections 9900"
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
command -v tcpdump >/dev/null || die "tcpdump is missing (apt-get install tcpdump)"
command -v wrk >/dev/null || die "wrk is missing (compare.sh installs the pinned one)"

ports="${BACKEND_PORTS[*]}"
lines="$OUT/hops.jsonl"
pcap="$OUT/hops.pcap"
: >"$lines"
# One capture for the whole run, each target's runs cut out of it by time and port: the
# kernel may take many seconds to set up a capture's ring right after the last one
# closed (an RCU grace period), so one is set up once. Data segments only (no bare
# ACKs), headers only.
timeout $((ROUNDS * 60 + 120)) tcpdump -i lo -s 96 -B 16384 -w "$pcap" \
  "tcp and (portrange ${PORT[wsrouter]}-${PORT[wsrouter-b]} or \
   $(sed 's/ / or port /g; s/^/port /' <<<"$ports")) and \
   (ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2)) != 0" \
  2>"$OUT/logs/tcpdump.log" &
dump=$!
stop_capture() { kill -INT "$dump" 2>/dev/null || true; wait "$dump" || true; }
# tcpdump says "listening on lo" once its capture is open (bounded: 60 s).
for _ in $(seq 1 600); do
  grep -qs listening "$OUT/logs/tcpdump.log" && break
  sleep 0.1
done
grep -qs listening "$OUT/logs/tcpdump.log" || die "tcpdump did not start: $(cat "$OUT/logs/tcpdump.log")"

windows="$OUT/windows.tsv"
: >"$windows"
for round in $(seq 1 "$ROUNDS"); do
  for target in $(round_order "$round"); do
    TARGET=$target
    start_target "$target"
    url="https://127.0.0.1:${PORT[$target]}"
    warm_http "$target" "$METHOD"
    from=$(date +%s.%N)
    wrk -t 2 -c 50 -d "${SECONDS_PER_RUN}s" --timeout 5s -s "$ROOT/benches/http.lua" "$url" \
      -- "$METHOD" 1000 128 10 >"$OUT/logs/wrk-$round-$target.txt" 2>&1 ||
      die "wrk against $target failed"
    printf '%s\t%s\t%s\t%s\n' "$round" "$target" "$from" "$(date +%s.%N)" >>"$windows"
    stop_target
  done
done
stop_capture
while IFS=$'\t' read -r round target from to; do
  python3 "$ROOT/benches/http_hops.py" parse "$pcap" "${PORT[$target]}" $ports \
    --from "$from" --to "$to" --round "$round" --target "$target" \
    --wrk "$OUT/logs/wrk-$round-$target.txt" | tee -a "$lines"
done <"$windows"
rm -f "$pcap"
python3 "$ROOT/benches/http_hops.py" summary "$lines"
