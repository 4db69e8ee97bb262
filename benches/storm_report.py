"""Reads a reconnect-storm run (benches/storm.sh), prints its table and plots it.

usage: storm_report.py OUT_DIR

Reads OUT_DIR/{old,new}/events.tsv and samples.tsv (from `wsload --mode soak
--log-opens`, with router B's pid watched) and ops.tsv (the script's: the SIGTERM's time,
the socket count, the grace); prints one table (a column per variant), writes
OUT_DIR/summary.json (also benches/results/storm.json) and OUT_DIR/storm.png (also
benches/results/storm.png), and exits 1 if a goal is not met.

Time is in seconds since the SIGTERM to router A. A new connection at router B is a
`dialed` event with router 1; one at a backend is an `opened` event naming it (both are
written once the socket is up, the second once the backend's first counter came). The
watch: from the SIGTERM to the grace's end plus TAIL seconds. A peak rate is the most new
connections in any 1 s window of the watch (sliding: OLD's wave lasts about a second and
would otherwise be split between two whole seconds, by chance); the plot counts per
whole second since the SIGTERM.

The goals (the issue's bar), for NEW:
- peak new connections per second, at router B and at each backend, at most a fifth of
  OLD's;
- no refusals (`refused` or `open_failed` events), and no socket broken;
- router B's CPU at most 80 % of one core over every 1 s window of the watch;
- every socket A closed open again (on B) within the grace + 10 s of the SIGTERM, and
  every socket open at that moment.
"""

import csv
import json
import os
import shutil
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sys.argv[1])
results = Path(__file__).resolve().parent / "results"
TICKS = os.sysconf("SC_CLK_TCK")
VARIANTS = ("old", "new")
BACKENDS = [f"backend-{i}" for i in range(4)]
# Seconds before the SIGTERM shown in the plot (the quiet before it).
BEFORE_S = 5


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def per_second(times_ms, t0, lo_s, hi_s):
    """Counts per whole second since t0, for the seconds lo_s .. hi_s - 1."""
    c = Counter((t - t0) // 1000 for t in times_ms)
    return [c.get(s, 0) for s in range(lo_s, hi_s)]


def peak_window(times_ms, lo_ms, hi_ms, width_ms=1000):
    """Most events in any width_ms window (sliding, not bins: a wave that straddles a
    second's boundary counts whole) of those from lo_ms to hi_ms."""
    t = sorted(x for x in times_ms if lo_ms <= x < hi_ms)
    best, j = 0, 0
    for i, x in enumerate(t):
        while t[j] <= x - width_ms:
            j += 1
        best = max(best, i - j + 1)
    return best


def variant(name):
    d = out / name
    ops = rows(d / "ops.tsv")
    op = {o["event"]: o for o in ops}
    sig = int(op["sigterm"]["t_ms"])
    sockets = int(op["sockets"]["detail"])
    grace_s = int(op["grace_s"]["detail"])
    tail_s = int(op["tail_s"]["detail"])
    watch_s = grace_s + tail_s
    deadline_ms = sig + (grace_s + 10) * 1000
    report = json.loads((d / "report.json").read_text())
    samples = rows(d / "samples.tsv")
    events = sorted(rows(d / "events.tsv"), key=lambda e: int(e["t_ms"]))
    for e in events:
        e["t"] = int(e["t_ms"])

    # Where each slot was when A got its SIGTERM: its last `dialed` before it.
    router_of = {}
    for e in events:
        if e["t"] >= sig:
            break
        if e["event"] == "dialed":
            router_of[e["slot"]] = e["detail"]
    on = Counter(router_of.values())

    # The closes after the SIGTERM: A's (1001 on a slot that was on A), and anything else.
    closed_by_a = {}
    other_closes = Counter()
    for e in events:
        if e["t"] < sig or not e["event"].startswith("closed_"):
            continue
        if e["event"] == "closed_1001" and router_of.get(e["slot"]) == "0":
            closed_by_a.setdefault(e["slot"], e["t"])
        else:
            other_closes[e["event"]] += 1
    close_times = sorted(closed_by_a.values())

    # Each of those slots' next socket: its first `opened` after the close, and the router
    # its `dialed` named.
    reopened, reopened_on = {}, Counter()
    for e in events:
        s = e["slot"]
        if s not in closed_by_a or e["t"] < closed_by_a[s]:
            continue
        if e["event"] == "dialed" and s not in reopened:
            reopened_on[e["detail"]] += 1
        elif e["event"] == "opened" and s not in reopened:
            reopened[s] = e["t"]
    last_reopen_s = (max(reopened.values()) - sig) / 1000 if reopened else None
    not_reopened = len(closed_by_a) - len(reopened)
    late = sum(1 for t in reopened.values() if t > deadline_ms)

    bad_kinds = ("refused", "open_failed", "broke", "final_echo_failed")
    bad = Counter(e["event"] for e in events if e["event"] in bad_kinds)
    bad_after = Counter(e["event"] for e in events if e["event"] in bad_kinds and e["t"] >= sig)
    first_bad = next((e for e in events if e["event"] in bad_kinds), None)

    # New connections per second since the SIGTERM, at B and at each backend: per whole
    # second (the plot), and the most in any 1 s window of the watch (the peaks).
    lo, hi = -BEFORE_S, watch_s
    b_times = [e["t"] for e in events if e["event"] == "dialed" and e["detail"] == "1"]
    backend_times = {
        b: [e["t"] for e in events if e["event"] == "opened" and e["backend"] == b]
        for b in BACKENDS
    }
    at_b = per_second(b_times, sig, lo, hi)
    at_backend = {b: per_second(t, sig, lo, hi) for b, t in backend_times.items()}
    watch_end = sig + watch_s * 1000
    peak_b = peak_window(b_times, sig, watch_end)
    peak_backend = {b: peak_window(t, sig, watch_end) for b, t in backend_times.items()}
    watched = slice(BEFORE_S, BEFORE_S + watch_s)  # the seconds 0 .. watch_s - 1
    peak_b_bin = max(at_b[watched])
    peak_backend_bin = {b: max(v[watched]) for b, v in at_backend.items()}

    # B's CPU, % of one core, over each sample interval (about 1 s) ending in the watch.
    cpu = []
    for a, b in zip(samples, samples[1:]):
        ta, tb = int(a["t_ms"]), int(b["t_ms"])
        da = int(b["cpu_ticks"]) - int(a["cpu_ticks"])
        if tb > ta and da >= 0 and int(a["cpu_ticks"]) > 0:
            cpu.append(((tb - sig) / 1000, da / TICKS / ((tb - ta) / 1000) * 100))
    cpu_watch = [c for t, c in cpu if 0 < t <= watch_s]
    cpu_before = [c for t, c in cpu if -BEFORE_S < t <= 0]
    fds_b = [int(s["fds"]) for s in samples if int(s["fds"]) > 0]

    # Sockets open at the deadline (SIGTERM + grace + 10 s): the first sample at or after it.
    at_deadline = next((s for s in samples if int(s["t_ms"]) >= deadline_ms), None)
    open_at_deadline = int(at_deadline["open"]) if at_deadline else None

    return {
        "binary": op["binary"]["detail"],
        "router_args": op.get("router_args", {}).get("detail", ""),
        "sockets": sockets,
        "grace_s": grace_s,
        "on_a_before": on.get("0", 0),
        "on_b_before": on.get("1", 0),
        "closed_by_a": len(closed_by_a),
        "closes_by_a_first_s": (close_times[0] - sig) / 1000 if close_times else None,
        "closes_by_a_last_s": (close_times[-1] - sig) / 1000 if close_times else None,
        "other_closes_after_sigterm": dict(other_closes),
        "reopened": len(reopened),
        "reopened_on_router": {"a": reopened_on.get("0", 0), "b": reopened_on.get("1", 0)},
        "not_reopened": not_reopened,
        "reopened_after_deadline": late,
        "last_reconnect_s": last_reopen_s,
        "peak_per_s_router_b": peak_b,
        "peak_per_s_backend": peak_backend,
        "peak_per_whole_second_router_b": peak_b_bin,
        "peak_per_whole_second_backend": peak_backend_bin,
        "refused": bad.get("refused", 0),
        "open_failed": bad.get("open_failed", 0),
        "broke": bad.get("broke", 0),
        "final_echo_failed": bad.get("final_echo_failed", 0),
        "failures_after_sigterm": dict(bad_after),
        "first_failure": first_bad
        and {k: first_bad[k] for k in ("t_ms", "slot", "event", "detail")},
        "cpu_b_max_percent": max(cpu_watch) if cpu_watch else None,
        "cpu_b_median_percent": statistics.median(cpu_watch) if cpu_watch else None,
        "cpu_b_before_percent": statistics.median(cpu_before) if cpu_before else None,
        "fds_b_max": max(fds_b) if fds_b else None,
        "open_at_deadline": open_at_deadline,
        "wsload": report,
        "_series": {"seconds": list(range(lo, hi)), "router_b": at_b, **at_backend, "cpu": cpu},
    }


runs = {v: variant(v) for v in VARIANTS if (out / v / "ops.tsv").exists()}
if not runs:
    sys.exit(f"no runs in {out}")

# --- the goals (NEW against OLD) ----------------------------------------------------------
failures = []
if "new" in runs:
    n = runs["new"]
    if "old" in runs:
        o = runs["old"]
        if n["peak_per_s_router_b"] * 5 > o["peak_per_s_router_b"]:
            failures.append(
                f"peak at B {n['peak_per_s_router_b']}/s, over a fifth of OLD's "
                f"{o['peak_per_s_router_b']}/s"
            )
        for b in BACKENDS:
            if n["peak_per_s_backend"][b] * 5 > o["peak_per_s_backend"][b]:
                failures.append(
                    f"peak at {b} {n['peak_per_s_backend'][b]}/s, over a fifth of OLD's "
                    f"{o['peak_per_s_backend'][b]}/s"
                )
    if n["refused"] or n["open_failed"] or n["broke"]:
        failures.append(
            f"{n['refused']} refused, {n['open_failed']} failed opens, {n['broke']} broken"
        )
    if n["cpu_b_max_percent"] is None or n["cpu_b_max_percent"] >= 80:
        failures.append(f"router B's CPU peaked at {n['cpu_b_max_percent']} % of a core")
    if n["not_reopened"] or n["reopened_after_deadline"]:
        failures.append(
            f"{n['not_reopened']} of A's sockets never reopened, "
            f"{n['reopened_after_deadline']} after grace + 10 s"
        )
    if n["open_at_deadline"] != n["sockets"]:
        failures.append(f"{n['open_at_deadline']} of {n['sockets']} open at grace + 10 s")


# --- the table ------------------------------------------------------------------------------
def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


lines = [
    (
        "sockets (on A / on B before)",
        lambda r: f"{r['sockets']} ({r['on_a_before']} / {r['on_b_before']})",
    ),
    ("closed by A (1001)", lambda r: r["closed_by_a"]),
    (
        "A's closes from .. to (s)",
        lambda r: f"{fmt(r['closes_by_a_first_s'])} .. {fmt(r['closes_by_a_last_s'])}",
    ),
    ("reopened (on B)", lambda r: f"{r['reopened']} ({r['reopened_on_router']['b']})"),
    ("peak new conns in 1 s, router B", lambda r: r["peak_per_s_router_b"]),
    ("  (in a whole second, as plotted)", lambda r: r["peak_per_whole_second_router_b"]),
    *(
        (f"peak new conns in 1 s, {b}", lambda r, b=b: r["peak_per_s_backend"][b])
        for b in BACKENDS
    ),
    ("SIGTERM to last reconnect (s)", lambda r: r["last_reconnect_s"]),
    (
        "not reopened / after grace+10s",
        lambda r: f"{r['not_reopened']} / {r['reopened_after_deadline']}",
    ),
    ("open at grace + 10 s", lambda r: r["open_at_deadline"]),
    (
        "refused / open_failed / broke",
        lambda r: f"{r['refused']} / {r['open_failed']} / {r['broke']}",
    ),
    ("other closes after SIGTERM", lambda r: sum(r["other_closes_after_sigterm"].values())),
    ("router B CPU, max 1 s (% core)", lambda r: r["cpu_b_max_percent"]),
    ("router B CPU, median in watch", lambda r: r["cpu_b_median_percent"]),
    ("router B descriptors, max", lambda r: r["fds_b_max"]),
]
w = max(len(k) for k, _ in lines)
print(f"{'':<{w}}  " + "  ".join(f"{v.upper():>16}" for v in runs))
for k, f in lines:
    print(f"{k:<{w}}  " + "  ".join(f"{fmt(f(r)):>16}" for r in runs.values()))
print("goals:", "all met" if not failures else "NOT MET: " + "; ".join(failures))

# --- the summary ------------------------------------------------------------------------------
summary = {
    "runs": {v: {k: x for k, x in r.items() if k != "_series"} for v, r in runs.items()},
    "failures": failures,
}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
results.mkdir(exist_ok=True)
shutil.copy(out / "summary.json", results / "storm.json")

# --- the plot -----------------------------------------------------------------------------------
colors = dict(zip(BACKENDS, ["tab:blue", "tab:orange", "tab:green", "tab:red"]))
fig, ax = plt.subplots(len(runs) + 1, 1, figsize=(11, 4 + 3 * len(runs)), sharex=True)
for a, (v, r) in zip(ax, runs.items()):
    s = r["_series"]
    a.step(s["seconds"], s["router_b"], where="post", color="black", linewidth=2,
           label=f"router B (most in any 1 s: {r['peak_per_s_router_b']})")
    for b in BACKENDS:
        a.step(s["seconds"], s[b], where="post", color=colors[b], linewidth=1,
               label=f"{b} ({r['peak_per_s_backend'][b]})")
    a.set_ylabel("new connections / s")
    a.set_title(
        f"{v.upper()}: {r['closed_by_a']} sockets closed by A, last back after "
        f"{fmt(r['last_reconnect_s'])} s, {r['refused'] + r['open_failed']} refusals",
        fontsize=10,
    )
    a.legend(loc="upper right", fontsize=8)
# The same scale for both runs: the point is how far apart they are.
top = max(r["peak_per_whole_second_router_b"] for r in runs.values()) * 1.1 or 1
for a in ax[:-1]:
    a.set_ylim(0, top)
for v, r in runs.items():
    c = r["_series"]["cpu"]
    ax[-1].plot([t for t, _ in c], [p for _, p in c], marker=".", linewidth=1,
                label=f"{v.upper()} (max {fmt(r['cpu_b_max_percent'])} %)")
ax[-1].axhline(80, color="gray", linewidth=0.8, linestyle=":")
ax[-1].set_ylabel("router B CPU (% of a core)")
ax[-1].set_xlabel("seconds since SIGTERM to router A")
ax[-1].legend(loc="upper right", fontsize=8)
grace = next(iter(runs.values()))["grace_s"]
for a in ax:
    a.axvline(0, color="black", linewidth=0.8, linestyle="--")
    a.axvline(grace, color="gray", linewidth=0.8, linestyle="--")
    a.axvline(grace + 10, color="gray", linewidth=0.8, linestyle=":")
    a.grid(alpha=0.3)
ax[-1].set_xlim(-BEFORE_S, max(r["_series"]["seconds"][-1] + 1 for r in runs.values()))
fig.suptitle(
    f"wsrouter: SIGTERM to router A of two, {next(iter(runs.values()))['sockets']} sockets, "
    f"--drain-grace {grace}s (dashed: SIGTERM, grace's end; dotted: grace + 10 s)"
)
fig.tight_layout()
fig.savefig(out / "storm.png", dpi=90)
shutil.copy(out / "storm.png", results / "storm.png")
print(f"plot: {out / 'storm.png'} and {results / 'storm.png'}")
sys.exit(1 if failures else 0)
