#!/usr/bin/env bash
# Moves tenants onto a canary backend set step by step: raises canary.weight in the
# ConfigMap wsrouter-overrides (5, 10, 25, 50, 100 by default), waits until every router
# reports the new weight, holds each step while it judges the set with the queries of
# metric-templates.yaml (success rate, p99 response time, abnormal closes), and on the
# first failure sets the weight back to what it was when the script started.
#
#   k8s/examples/canary/step-weight.sh --set v2 --dry-run      # what it would do; touches nothing
#   kubectl -n monitoring port-forward svc/prometheus 9090 &   # or --prometheus http://...
#   k8s/examples/canary/step-weight.sh --set v2 --namespace prod
#
# Options (defaults in brackets):
#   --set NAME               the canary set, as the routers name it (--backend-set-statefulset NAME=...)
#   --steps LIST             weights in percent, increasing [5,10,25,50,100]
#   --namespace NS           the routers' and the ConfigMap's namespace [kubectl's current]
#   --configmap NAME         [wsrouter-overrides]
#   --prometheus URL         Prometheus' HTTP API [http://localhost:9090]
#   --templates FILE         the queries [metric-templates.yaml beside this script]
#   --interval DURATION      the queries' rate window [2m]
#   --kind KINDS             what the p99 covers: websocket|http, or websocket when clients long-poll [websocket|http]
#   --hold DURATION          time at each step, at least --interval [5m]
#   --check-every DURATION   time between judgements within a step [1m]
#   --apply-timeout DURATION longest wait for every router to report a new weight [2m]
#   --min-success PERCENT    [99]
#   --max-p99-ms MS          [500]
#   --max-abnormal-closes N  per second [0.1]
#   --dry-run                print the patches and the queries; no kubectl, no Prometheus
#
# A step fails when a judgement is outside its limit, when the routers do not report the
# new weight in time (an update they rejected: the log says `overrides update rejected`),
# or when the set got no requests by the end of the step. Ctrl-C, or any error once the
# weight has moved, also sets it back. Needs kubectl, curl and jq; KUBECTL="kubectl
# --context prod" picks another cluster. Tenants move only at each patch, and their live
# sockets follow only with the routers' --reroute-drain (README, "Releasing a new backend
# version").
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true

set_name=""
steps="5,10,25,50,100"
namespace=""
configmap="wsrouter-overrides"
prometheus="http://localhost:9090"
templates="$(cd "$(dirname "$0")" && pwd)/metric-templates.yaml"
interval="2m"
kind="websocket|http"
hold="5m"
check_every="1m"
apply_timeout="2m"
min_success="99"
max_p99_ms="500"
max_closes="0.1"
dry_run=0
read -r -a kubectl <<<"${KUBECTL:-kubectl}"

die() { echo "step-weight: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --set) set_name=${2:?}; shift 2 ;;
    --steps) steps=${2:?}; shift 2 ;;
    --namespace) namespace=${2:?}; shift 2 ;;
    --configmap) configmap=${2:?}; shift 2 ;;
    --prometheus) prometheus=${2:?}; shift 2 ;;
    --templates) templates=${2:?}; shift 2 ;;
    --interval) interval=${2:?}; shift 2 ;;
    --kind) kind=${2:?}; shift 2 ;;
    --hold) hold=${2:?}; shift 2 ;;
    --check-every) check_every=${2:?}; shift 2 ;;
    --apply-timeout) apply_timeout=${2:?}; shift 2 ;;
    --min-success) min_success=${2:?}; shift 2 ;;
    --max-p99-ms) max_p99_ms=${2:?}; shift 2 ;;
    --max-abnormal-closes) max_closes=${2:?}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (--help lists them)" ;;
  esac
done

# Seconds in a duration such as 90s, 5m, 1h, 1m30s.
seconds() {
  local d=$1 total=0 n unit
  [[ $d =~ ^([0-9]+[smh])+$ ]] || die "$d is not a duration (90s, 5m, 1h)"
  while [[ $d =~ ^([0-9]+)([smh])(.*)$ ]]; do
    n=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]} d=${BASH_REMATCH[3]}
    case $unit in s) total=$((total + 10#$n)) ;; m) total=$((total + 60 * 10#$n)) ;; h) total=$((total + 3600 * 10#$n)) ;; esac
  done
  echo "$total"
}
shown() { if [ "$1" = none ]; then echo "(no value)"; else echo "$1$2"; fi; }
is_number() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
# awk compares decimals; "+Inf" is larger than any limit.
holds() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN {
  if (a == "+Inf") a = 1e308; if (a == "-Inf") a = -1e308
  a += 0; b += 0
  exit !((op == ">=" && a >= b) || (op == "<=" && a <= b) || (op == "==" && a == b) || (op == ">" && a > b))
}'; }

[[ $set_name =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "--set NAME is required: the canary set as the routers name it, a DNS label such as v2"
[ -r "$templates" ] || die "cannot read $templates"
for v in "$min_success" "$max_p99_ms" "$max_closes"; do is_number "$v" || die "$v is not a number"; done
[[ $kind =~ ^[a-z|]+$ ]] || die "--kind is websocket|http, websocket or http"
IFS=, read -r -a weights <<<"$steps"
previous=-1
for w in "${weights[@]}"; do
  [[ $w =~ ^[0-9]{1,3}(\.[0-9]{1,2})?$ ]] && holds "$w" "<=" 100 || die "step $w is not a percent with at most two decimals"
  holds "$w" ">" "$previous" || die "--steps must increase ($steps)"
  previous=$w
done
hold_s=$(seconds "$hold")
check_s=$(seconds "$check_every")
apply_s=$(seconds "$apply_timeout")
interval_s=$(seconds "$interval")
[ "$hold_s" -ge "$interval_s" ] || die "--hold ($hold) is shorter than --interval ($interval): the last judgement would reach back before the step"
[ "$check_s" -gt 0 ] || die "--check-every must be above 0"
if [ -z "$namespace" ]; then
  if [ "$dry_run" = 1 ]; then namespace="default"
  else namespace=$("${kubectl[@]}" config view --minify -o jsonpath='{..namespace}' 2>/dev/null || true); namespace=${namespace:-default}
  fi
fi

# The query of MetricTemplate $1: its `query: |` block, as text.
query_of() {
  awk -v want="$1" '
    /^---/ { name = ""; meta = 0; inq = 0; next }
    /^metadata:/ { meta = 1; next }
    meta && /^  name:/ { name = $2; meta = 0; next }
    /^[^ #]/ { meta = 0 }
    /^  query: \|/ { inq = (name == want); next }
    inq && /^    / { sub(/^    /, ""); print; next }
    inq && /^[[:space:]]*$/ { print ""; next }
    inq { inq = 0 }
  ' "$templates"
}
# Flagger's variables filled in, as Flagger would for a Canary in the routers' namespace.
render() {
  local q
  q=$(query_of "$1")
  [ -n "$q" ] || die "no MetricTemplate $1 with a \`query: |\` block in $templates"
  q=${q//"{{ variables.set }}"/$set_name}
  q=${q//"{{ variables.kind }}"/$kind}
  q=${q//"{{ interval }}"/$interval}
  q=${q//"{{ namespace }}"/$namespace}
  [[ $q != *"{{"* ]] || die "$1: a template variable this script does not fill: $q"
  printf '%s\n' "$q"
}
q_success=$(render wsrouter-set-success-rate)
q_p99=$(render wsrouter-set-p99-response-ms)
q_closes=$(render wsrouter-set-abnormal-closes)
sel="namespace=\"$namespace\", set=\"$set_name\""
q_weight_min="min(wsrouter_set_weight_percent{$sel})"
q_weight_max="max(wsrouter_set_weight_percent{$sel})"
q_replicas="min(wsrouter_set_replicas{$sel})"

# canary.set and canary.weight as JSON strings (or null: the key removed), into the ConfigMap.
patch() {
  "${kubectl[@]}" -n "$namespace" patch configmap "$configmap" --type merge \
    -p "{\"data\":{\"canary.set\":$1,\"canary.weight\":$2}}" >/dev/null
}
patch_weight() { patch "\"$set_name\"" "\"$1\""; }

if [ "$dry_run" = 1 ]; then
  echo "dry run: namespace $namespace, ConfigMap $configmap, set $set_name, steps $steps; nothing is changed or queried"
  echo "first: $q_replicas must be above 0 (the set has pods on every router)"
  for w in "${weights[@]}"; do
    echo "step $w%: ${kubectl[*]} -n $namespace patch configmap $configmap --type merge -p '{\"data\":{\"canary.set\":\"$set_name\",\"canary.weight\":\"$w\"}}'"
    echo "  then up to $apply_timeout until $q_weight_min and $q_weight_max are $w, then $hold judged every $check_every"
  done
  echo "the judgements, at $prometheus:"
  echo "  success rate >= $min_success:"; sed 's/^/    /' <<<"$q_success"
  echo "  p99 ms <= $max_p99_ms:"; sed 's/^/    /' <<<"$q_p99"
  echo "  abnormal closes/s <= $max_closes:"; sed 's/^/    /' <<<"$q_closes"
  echo "on a failure, Ctrl-C or an error once the weight has moved: canary.set and canary.weight back as they were"
  exit 0
fi

for tool in "${kubectl[0]}" curl jq; do command -v "$tool" >/dev/null || die "needs $tool"; done

# One instant query: its single value, or "none" when it has none (no series, NaN).
prom() {
  local out
  out=$(curl -sS --fail --max-time 15 -G "$prometheus/api/v1/query" --data-urlencode "query=$1") ||
    die "Prometheus at $prometheus did not answer"
  jq -r 'if .status != "success" then error("Prometheus: \(.error // "failed")")
         elif (.data.result | length) == 0 then "none"
         elif (.data.result | length) > 1 then error("more than one series: add sum() or a matcher")
         else .data.result[0].value[1] | if . == "NaN" then "none" else . end end' <<<"$out"
}

cm=$("${kubectl[@]}" -n "$namespace" get configmap "$configmap" -o json) || die "no ConfigMap $namespace/$configmap"
current_set=$(jq -r '.data["canary.set"] // ""' <<<"$cm")
start_weight=$(jq -r '.data["canary.weight"] // "0"' <<<"$cm")
start_weight=${start_weight%\%}
# What a rollback writes back: the two keys as they were (null: absent).
was_set=$(jq -c '.data["canary.set"]' <<<"$cm")
was_weight=$(jq -c '.data["canary.weight"]' <<<"$cm")
if [ -n "$current_set" ] && [ "$current_set" != "$set_name" ]; then
  die "canary.set is $current_set: finish or roll back that release first"
fi
is_number "$start_weight" || die "canary.weight is $start_weight"
replicas=$(prom "$q_replicas")
[ "$replicas" != none ] || die "no router reports set $set_name (wsrouter_set_replicas): is it in --backend-set-statefulset, and is Prometheus scraping the routers?"
holds "$replicas" ">" 0 || die "set $set_name has no pods on some router (wsrouter_set_replicas $replicas): its tenants would stay on the stable set"

moved=0 finished=0
rollback() {
  trap - EXIT INT TERM
  echo "step-weight: setting canary.set and canary.weight back to $was_set, $was_weight" >&2
  if patch "$was_set" "$was_weight"; then
    echo "step-weight: rolled back" >&2
  else
    echo "step-weight: the rollback failed; run: ${kubectl[*]} -n $namespace patch configmap $configmap --type merge -p '{\"data\":{\"canary.set\":$was_set,\"canary.weight\":$was_weight}}'" >&2
  fi
}
on_exit() { local rc=$?; if [ "$moved" = 1 ] && [ "$finished" = 0 ]; then rollback; fi; exit "$rc"; }
trap on_exit EXIT
trap 'exit 130' INT TERM

echo "step-weight: $set_name from $start_weight% through $steps (namespace $namespace)"
for w in "${weights[@]}"; do
  if holds "$start_weight" ">=" "$w"; then
    echo "  $w%: already there"
    continue
  fi
  patch_weight "$w"
  moved=1
  deadline=$((SECONDS + apply_s))
  while :; do
    lo=$(prom "$q_weight_min")
    hi=$(prom "$q_weight_max")
    if [ "$lo" != none ] && [ "$hi" != none ] && holds "$lo" "==" "$w" && holds "$hi" "==" "$w"; then break; fi
    [ "$SECONDS" -lt "$deadline" ] || die "$w%: the routers report $lo..$hi after $apply_timeout (a rejected update? kubectl logs deploy/wsrouter | grep 'overrides update rejected')"
    sleep 5
  done
  echo "  $w%: every router has it; holding $hold"
  end=$((SECONDS + hold_s))
  while :; do
    left=$((end - SECONDS))
    sleep $((left < check_s ? (left > 0 ? left : 0) : check_s))
    success=$(prom "$q_success")
    p99=$(prom "$q_p99")
    closes=$(prom "$q_closes")
    echo "    success $(shown "$success" %)  p99 $(shown "$p99" " ms")  abnormal closes $(shown "$closes" /s)"
    if [ "$success" != none ] && ! holds "$success" ">=" "$min_success"; then die "$w%: success rate $success% < $min_success%"; fi
    if [ "$p99" != none ] && ! holds "$p99" "<=" "$max_p99_ms"; then die "$w%: p99 $p99 ms > $max_p99_ms ms"; fi
    if [ "$closes" != none ] && ! holds "$closes" "<=" "$max_closes"; then die "$w%: $closes abnormal closes/s > $max_closes"; fi
    [ "$SECONDS" -lt "$end" ] && continue
    [ "$success" != none ] && [ "$p99" != none ] ||
      die "$w%: no requests reached $set_name in the last $interval: nothing to judge it by"
    break
  done
done
finished=1
echo "step-weight: $set_name holds weight ${weights[${#weights[@]} - 1]}%; to roll back: canary.weight \"$start_weight\""
