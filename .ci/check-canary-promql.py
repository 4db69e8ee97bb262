#!/usr/bin/env python3
"""Evaluates the canary queries (k8s/examples/canary) with promtool against two real scrapes
of the router's /metrics, and checks each result against the value computed from the
scrapes directly.

BEFORE and AFTER are OpenMetrics text from one router, taken some seconds apart with
traffic to every backend set in between. Every sample of both becomes a promtool
input series, as a Prometheus scraping that router through the PodMonitor would hold it
(target labels namespace, pod, job): BEFORE at t=0, AFTER at t=64s. Each MetricTemplate's
query, for each set, becomes a recording rule (`promtool check rules`), and a unit test
(`promtool test rules`) expects at t=64s what Python computes from the two scrapes: the
non-5xx share of the set's requests, the p99 of its response time by Prometheus'
bucket interpolation, its abnormal closes per second.

The window ({{ interval }}) is 128s, two sample intervals, so it holds both samples
whether it is closed (Prometheus 2) or open at its start (Prometheus 3), and rate()
extrapolates the increase to the whole window, twice the sampled interval: each rate is
the increase over 64 s, a dyadic fraction, so sums are exact and promtool's exact
comparison holds (Debian's promtool 2.42 in CI). Counters are offset by a constant, the
same in both scrapes so no increase changes, which keeps rate()'s counter-start heuristic
from shortening that extrapolation for a counter that started near zero. A counter missing from BEFORE is taken as 0 there (the
router creates series on first use); a counter that went down fails the check.

With an AnalysisTemplate (analysis-template.yaml), its queries must be the MetricTemplates'
word for word, `{{args.x}}` read as Flagger's variable x.

usage: check-canary-promql.py BEFORE.prom AFTER.prom metric-templates.yaml [analysis-template.yaml]
"""
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families

STEP = 64  # seconds between the scrapes, as promtool sees them
WINDOW = f"{2 * STEP}s"  # {{ interval }}
TARGET = {"namespace": "wsrouter-ci", "pod": "wsrouter-ci-0", "job": "wsrouter-ci/wsrouter"}
# Template variables other than the set: what step-weight.sh passes by default.
VARIABLES = {"kind": "websocket|http"}
ABNORMAL = {"backend_gone", "backend_error", "backend_protocol_error"}
# What each MetricTemplate measures, by name, computed from the scrapes below.
CHECKS = ("wsrouter-set-success-rate", "wsrouter-set-p99-response-ms", "wsrouter-set-abnormal-closes")
COUNTER_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def fail(msg):
    sys.exit(f"check-canary-promql: {msg}")


def scrape(path):
    """{(sample name, sorted labels): value} and {sample name: family type}."""
    samples, types = {}, {}
    text = Path(path).read_text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            if key in samples:
                fail(f"{path}: {s.name}{dict(s.labels)} twice")
            samples[key] = float(s.value)
            types[s.name] = family.type
    return samples, types


def is_counter(name, types):
    return any(name.endswith(sfx) for sfx in COUNTER_SUFFIXES.get(types.get(name), ()))


def increases(before, after, types):
    """Each counter sample's increase between the scrapes, per second of STEP."""
    out = {}
    for key, b in after.items():
        if not is_counter(key[0], types):
            continue
        a = before.get(key, 0.0)
        if b < a:
            fail(f"{key[0]}{dict(key[1])} went down ({a} → {b}): not two scrapes of one router")
        out[key] = (b - a) / STEP
    return out


def select(rates, name, **match):
    """Rates of `name` whose labels match: a string is equality, a set membership."""
    for (n, labels), r in rates.items():
        lab = dict(labels)
        if n == name and all(lab.get(k, "") in (want if isinstance(want, set) else {want})
                             for k, want in match.items()):
            yield lab, r


def quantile(q, buckets):
    """histogram_quantile over [(upper bound, count)], as Prometheus interpolates: the
    rank's bucket, linearly; the +Inf bucket answers the highest finite bound."""
    merged = {}
    for le, c in buckets:
        merged[le] = merged.get(le, 0.0) + c
    bs = sorted(merged.items())
    if not bs or not math.isinf(bs[-1][0]) or len(bs) < 2:
        return math.nan
    top = 0.0
    for i, (le, c) in enumerate(bs):  # cumulative counts never fall
        top = max(top, c)
        bs[i] = (le, top)
    observations = bs[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(bs) - 1) if bs[i][1] >= rank), len(bs) - 1)
    if b == len(bs) - 1:
        return bs[-2][0]
    if b == 0 and bs[0][0] <= 0:
        return bs[0][0]
    start, end, count = 0.0, bs[b][0], bs[b][1]
    if b > 0:
        start = bs[b - 1][0]
        count -= bs[b - 1][1]
        rank -= bs[b - 1][1]
    return start + (end - start) * (rank / count)


def expected(check, rates, set_name):
    """The value the template `check` should give for `set_name`, or NaN without data."""
    if check == "wsrouter-set-success-rate":
        total = sum(r for _, r in select(rates, "wsrouter_set_requests_total", set=set_name))
        ok = sum(r for lab, r in select(rates, "wsrouter_set_requests_total", set=set_name)
                 if not re.fullmatch(r"5..", lab.get("status", "")))
        return math.nan if total == 0 else 100 * ok / total
    if check == "wsrouter-set-p99-response-ms":
        kinds = set(VARIABLES["kind"].split("|"))
        buckets = [(float(lab["le"]), r) for lab, r in
                   select(rates, "wsrouter_set_response_seconds_bucket", set=set_name, kind=kinds)]
        return 1000 * quantile(0.99, buckets)
    if check == "wsrouter-set-abnormal-closes":
        return sum(r for _, r in select(rates, "wsrouter_connections_closed_total", set=set_name, reason=ABNORMAL))
    fail(f"no computation for MetricTemplate {check}")


VAR = re.compile(r"\{\{\s*([a-z.]+)\s*\}\}")


def render(query, set_name):
    def sub(m):
        name = m.group(1)
        if name == "variables.set":
            return set_name
        if name.startswith("variables.") and name[10:] in VARIABLES:
            return VARIABLES[name[10:]]
        if name == "interval":
            return WINDOW
        if name == "namespace":
            return TARGET["namespace"]
        fail(f"template variable {{{{ {name} }}}} not known to this check")

    return VAR.sub(sub, query)


def argo_as_flagger(query):
    """An Argo Rollouts query with its {{args.x}} written as Flagger's variables."""
    def sub(m):
        arg = m.group(1)
        return "{{ %s }}" % (arg if arg in ("namespace", "interval") else f"variables.{arg}")

    return re.sub(r"\{\{\s*args\.([a-z-]+)\s*\}\}", sub, query)


def normal(query):
    return " ".join(query.split())


def series_text(name, labels):
    def esc(v):
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    inner = ",".join(f'{k}="{esc(v)}"' for k, v in labels)
    return f"{name}{{{inner}}}" if inner else name


def number(v):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return str(int(v)) if v == int(v) and abs(v) < 2**53 else repr(v)


def main(before_path, after_path, templates_path, analysis_path=None):
    before, types_b = scrape(before_path)
    after, types = scrape(after_path)
    types = {**types_b, **types}

    # The metrics the queries read, with the labels they match on.
    need = {"wsrouter_set_requests_total": {"set", "kind", "status"},
            "wsrouter_set_response_seconds_bucket": {"set", "kind", "le"},
            "wsrouter_connections_closed_total": {"set", "reason"},
            "wsrouter_set_replicas": {"set"}, "wsrouter_set_weight_percent": {"set"},
            "wsrouter_connections_active": {"set"}}
    for name, labels in need.items():
        have = [dict(k[1]) for k in after if k[0] == name]
        if not have:
            fail(f"{after_path}: no {name}")
        if not all(labels <= set(h) for h in have):
            fail(f"{after_path}: {name} without the labels {sorted(labels)}")
    sets = sorted({dict(k[1])["set"] for k in after if k[0] == "wsrouter_set_requests_total"})
    if len(sets) < 2:
        fail(f"{after_path}: one backend set ({sets}); the check wants the stable set and a canary")

    templates = {d["metadata"]["name"]: d["spec"]["query"]
                 for d in yaml.safe_load_all(Path(templates_path).read_text())
                 if d and d.get("kind") == "MetricTemplate"}
    if sorted(templates) != sorted(CHECKS):
        fail(f"{templates_path}: MetricTemplates {sorted(templates)}, this check knows {sorted(CHECKS)}")
    if analysis_path:
        argo = [normal(argo_as_flagger(m["provider"]["prometheus"]["query"]))
                for d in yaml.safe_load_all(Path(analysis_path).read_text())
                if d and d.get("kind") == "AnalysisTemplate" for m in d["spec"]["metrics"]]
        flagger = sorted(normal(q) for q in templates.values())
        if sorted(argo) != flagger:
            fail(f"{analysis_path}: its queries are not {templates_path}'s")

    rates = increases(before, after, types)
    offset = float(math.ceil(max([r * STEP for r in rates.values()] + [0.0])) + 1)

    input_series = []
    for key in sorted(set(before) | set(after)):
        name, labels = key
        # The target's labels, and the sample's own renamed where they clash, as Prometheus does.
        labels = tuple((f"exported_{k}" if k in TARGET else k, v) for k, v in labels) + tuple(TARGET.items())
        a, b = before.get(key), after.get(key)
        if is_counter(name, types):
            a = 0.0 if a is None else a
            exact = a.is_integer() and (b is None or b.is_integer())
            c = offset if exact else 0.0
            values = [number(a + c)] + ([number(b + c)] if b is not None else [])
        else:
            values = ["_" if a is None else number(a)] + ([number(b)] if b is not None else [])
        input_series.append({"series": series_text(name, sorted(labels)), "values": " ".join(values)})

    rules, tests, table = [], [], []
    for check in CHECKS:
        record = "wsrouter_canary_check:" + check.removeprefix("wsrouter-").replace("-", "_")
        exp = []
        for s in sets:
            want = expected(check, rates, s)
            table.append((check, s, want))
            if math.isnan(want):
                continue  # no requests (or no pod answered): Prometheus has no value either
            rules.append({"record": record, "expr": render(templates[check], s), "labels": {"set": s}})
            exp.append({"labels": f'{record}{{set="{s}"}}', "value": want})
        if len(exp) < 2:
            fail(f"{check}: a value for {len(exp)} set(s) only; send traffic to the stable set and a canary between the scrapes")
        tests.append({"expr": record, "eval_time": f"{STEP}s", "exp_samples": exp})

    work = Path(tempfile.mkdtemp(prefix="canary-promql-"))
    (work / "canary-rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "wsrouter-canary-checks", "rules": rules}]}, sort_keys=False))
    (work / "canary-test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["canary-rules.yaml"],
        "evaluation_interval": f"{STEP}s",
        "tests": [{"interval": f"{STEP}s", "input_series": input_series, "promql_expr_test": tests}],
    }, sort_keys=False))
    for cmd in (["promtool", "check", "rules", "canary-rules.yaml"], ["promtool", "test", "rules", "canary-test.yaml"]):
        run = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if run.returncode != 0:
            sys.stderr.write(run.stdout + run.stderr)
            fail(f"`{' '.join(cmd)}` failed (its files are in {work})")
    shutil.rmtree(work)
    for check, s, want in table:
        print(f"  {check:<30} set={s:<10} {'no data' if math.isnan(want) else f'{want:.6g}'}")
    print(f"canary queries: {len(rules)} rules over {len(input_series)} scraped series give, in promtool, "
          f"what the scrapes say ({', '.join(sets)})")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__.strip().splitlines()[-1])
    main(*sys.argv[1:])
