#!/usr/bin/env bash
# Memory under a hostile-handshake flood: wsrouter (default settings), HAProxy and NGINX
# (as in compare.sh) each take the same flood of stalled TLS handshakes: FLOOD_CONNS
# connections from SOURCES loopback addresses, each reopened as soon as the proxy drops
# it, held for FLOOD_SECONDS. RSS is read before, every 0.2 s during (the peak is kept),
# and 10 s after the attacker has left.
#
#   benches/hostile.sh                     # 3 kinds of flood × 3 proxies, about 5 minutes
#   HELLOS=partial TARGETS=wsrouter benches/hostile.sh
#
# Kinds (wsload --hello): `partial`, 62 KB of a ClientHello claiming 65,520 bytes (the
# attack found against the router); `partial-within-limit`, 15,000 bytes of one claiming
# 16,000 (within wsrouter's --max-client-hello, so the most a stalled handshake can make
# it hold); `complete`, a whole real ClientHello, then silence.
#
# Output: a table on stdout, raw numbers in $OUT/results.tsv (OUT defaults to
# target/hostile). Installs haproxy and nginx with apt-get if missing. Loopback only.
set -euo pipefail

FLOOD_CONNS=${FLOOD_CONNS:-9000}
FLOOD_SECONDS=${FLOOD_SECONDS:-15}
AFTER_SECONDS=${AFTER_SECONDS:-10}
SOURCES=${SOURCES:-200}
HELLOS=${HELLOS:-"partial partial-within-limit complete"}
TARGETS=${TARGETS:-"wsrouter haproxy nginx"}
WORKERS=${WORKERS:-2}
BENCH_NAME=hostile
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/hostile}
# wsrouter at its defaults: nothing but the listeners and the backends.
WSROUTER_ARGS=""
# shellcheck source=benches/peers.sh
source "$(dirname "$0")/peers.sh"
RESULTS=$OUT/results.tsv
printf 'target\thello\tmetric\tvalue\n' >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

# A normal client during the flood: ten tries, one after another, each a new TLS
# connection through its upgrade to an echo within 10 s (the handshake timeout).
# Prints how many got through.
probe() {
  local ok=0
  for _ in $(seq 1 10); do
    if "$BIN/wsload" --url "wss://127.0.0.1:${PORT[$1]}/ws/" --json --mode hold-idle -c 1 \
      --duration 0s --timeout 10s 2>/dev/null |
      python3 -c 'import json,sys; r=json.load(sys.stdin); sys.exit(0 if r["still_echoing"]==1 else 1)' 2>/dev/null; then
      ok=$((ok + 1))
    fi
  done
  echo $ok
}

run_flood() {
  local target=$1 hello=$2
  TARGET=$target
  start_target "$target"
  sleep 1
  local base peak=0 during_probe after
  base=$(rss_kb)
  local err=$OUT/logs/flood-$target-$hello.err
  "$BIN/wsload" --url "wss://127.0.0.1:${PORT[$target]}/ws/" --mode flood --hello "$hello" \
    -c "$FLOOD_CONNS" --sources "$SOURCES" --parallel 256 --duration "${FLOOD_SECONDS}s" \
    --timeout 5s >"$OUT/logs/flood-$target-$hello.json" 2>"$err" &
  local fp=$!
  local probed=""
  for _ in $(seq 1 $(((FLOOD_SECONDS + 60) * 5))); do
    local r
    r=$(rss_kb)
    ((r > peak)) && peak=$r
    if [[ -z $probed ]] && grep -q 'phase=holding' "$err"; then
      probed=1
      during_probe=$(probe "$target")
    fi
    kill -0 $fp 2>/dev/null || break
    sleep 0.2
  done
  wait $fp || die "the flood against $target failed: $(cat "$err")"
  sleep "$AFTER_SECONDS"
  after=$(rss_kb)
  local report=$OUT/logs/flood-$target-$hello.json
  record "$target" "$hello" rss_before_kb "$base"
  record "$target" "$hello" rss_peak_kb "$peak"
  record "$target" "$hello" rss_after_kb "$after"
  record "$target" "$hello" opened "$(field opened <"$report")"
  record "$target" "$hello" dropped_by_server "$(field dropped_by_server <"$report")"
  record "$target" "$hello" client_ok_of_10 "${during_probe:-0}"
  log "$target $hello: RSS $((base / 1024)) → peak $((peak / 1024)) → $((after / 1024)) MB ${AFTER_SECONDS}s after; $(field opened <"$report") opened, $(field dropped_by_server <"$report") dropped by the proxy; a normal client got through ${during_probe:-0}/10 times during the flood"
  stop_target
}

for hello in $HELLOS; do
  for t in $TARGETS; do run_flood "$t" "$hello"; done
done

python3 - "$RESULTS" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
v = {(r["target"], r["hello"], r["metric"]): float(r["value"]) for r in rows}
targets = sorted({r["target"] for r in rows}, key=["wsrouter", "haproxy", "nginx"].index)
hellos = list(dict.fromkeys(r["hello"] for r in rows))
print("| flood | proxy | RSS before MB | peak during MB | 10 s after MB | opened | dropped by proxy | normal client, of 10 tries |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for h in hellos:
    for t in targets:
        g = lambda m: v.get((t, h, m), 0)
        print(f"| {h} | {t} | {g('rss_before_kb')/1024:.0f} | {g('rss_peak_kb')/1024:.0f} | "
              f"{g('rss_after_kb')/1024:.0f} | {g('opened'):.0f} | {g('dropped_by_server'):.0f} | {g('client_ok_of_10'):.0f} |")
PY
