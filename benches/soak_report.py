"""Checks a soak run (benches/soak.sh) and plots it.

usage: soak_report.py OUT_DIR CLK_TCK

Reads OUT_DIR/samples.tsv and events.tsv (from `wsload --mode soak`), ops.tsv (the
script's kills, restarts and swaps) and report.json; prints the figures and the checks,
writes OUT_DIR/summary.json and OUT_DIR/soak.png, and exits 1 if a check fails.

The checks (the issue's bar):
- RSS at the end (median of the last minute under load) within 5 % of RSS after the
  warm-up (median of the minute after it); the slope after warm-up is reported too.
- descriptors back to their count before the load once it stops.
- the streaming p99 stable: the median window p99 of the last quarter within 1.25x that
  of the first quarter after warm-up, over the windows not in the 30 s after a kill
  (those are reported on their own).
- zero unexpected closes: every close the client did not make is a 1011 or 1014 on a
  backend killed at most 1 s before; every refused open falls while a backend was down
  (kill to restart + 2 s); no socket broke, no open failed otherwise, and every socket
  open at the end echoed (a slot between two sockets then, churned or reconnecting, is
  counted apart).
"""

import csv
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sys.argv[1])
ticks = float(sys.argv[2])


def rows(name):
    with open(out / name, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


samples = rows("samples.tsv")
events = rows("events.tsv")
ops = rows("ops.tsv")
report = json.loads((out / "report.json").read_text())
if len(samples) < 3:
    sys.exit("too few samples")

t0 = int(samples[0]["t_ms"])
stopped = next((int(o["t_ms"]) for o in ops if o["event"] == "load_stopped"), None)
under_load = [s for s in samples if stopped is None or int(s["t_ms"]) <= stopped]
dur_s = (int(under_load[-1]["t_ms"]) - t0) / 1000
# A fifth of the run, at least a minute and at most five (half of a very short run).
warm_s = min(300.0, max(60.0, 0.2 * dur_s), dur_s / 2)


def t_of(s):
    return (int(s["t_ms"]) - t0) / 1000


def median_of(key, lo, hi):
    vals = [float(s[key]) for s in under_load if lo <= t_of(s) < hi and float(s[key]) > 0]
    return statistics.median(vals) if vals else 0.0


failures = []
summary = {"seconds": dur_s, "warm_up_seconds": warm_s, "wsload": report}

# --- RSS --------------------------------------------------------------------------------
rss_warm = median_of("rss_kb", warm_s, warm_s + 60)
rss_end = median_of("rss_kb", dur_s - 60, dur_s + 1)
post = [(t_of(s), float(s["rss_kb"])) for s in under_load if t_of(s) >= warm_s]
slope = statistics.linear_regression([p[0] for p in post], [p[1] for p in post]).slope
summary["rss"] = {
    "after_warm_up_kb": rss_warm,
    "end_kb": rss_end,
    "change": rss_end / rss_warm - 1 if rss_warm else None,
    "slope_kb_per_hour": slope * 3600,
    "min_kb": min(p[1] for p in post),
    "max_kb": max(p[1] for p in post),
}
if not rss_warm or abs(rss_end / rss_warm - 1) > 0.05:
    failures.append(f"RSS {rss_warm:.0f} KB after warm-up, {rss_end:.0f} KB at the end")

# --- descriptors --------------------------------------------------------------------------
op = {o["event"]: o["detail"] for o in ops}
fds_before, fds_after = int(op.get("fds_before", -1)), int(op.get("fds_after", -2))
summary["fds"] = {
    "before_load": fds_before,
    "after_load": fds_after,
    "max_under_load": max(int(s["fds"]) for s in under_load),
}
if fds_after > fds_before:
    failures.append(f"descriptors {fds_before} before the load, {fds_after} after")

# --- CPU ----------------------------------------------------------------------------------
cpu = []
for a, b in zip(under_load, under_load[1:]):
    dt = (int(b["t_ms"]) - int(a["t_ms"])) / 1000
    cpu.append((t_of(b), (int(b["cpu_ticks"]) - int(a["cpu_ticks"])) / ticks / dt * 100))
summary["cpu_percent_median"] = statistics.median(c[1] for c in cpu if c[0] >= warm_s)

# --- p99 ----------------------------------------------------------------------------------
kills = [(int(o["t_ms"]), o["detail"]) for o in ops if o["event"] == "kill"]
p99 = [(t_of(s), int(s["p99_us"])) for s in under_load if int(s["p99_us"]) > 0]
# Steady: after warm-up, and not in the 30 s after a kill (its sockets reconnecting).
steady = [
    p
    for p in p99
    if p[0] >= warm_s and not any(0 <= p[0] - (k[0] - t0) / 1000 <= 30 for k in kills)
]
after_kill = [p for p in p99 if p[0] >= warm_s and p not in steady]
if steady:
    q = max(1, len(steady) // 4)
    first_q = statistics.median(p[1] for p in steady[:q])
    last_q = statistics.median(p[1] for p in steady[-q:])
    summary["p99_us"] = {
        "median": statistics.median(p[1] for p in steady),
        "first_quarter_median": first_q,
        "last_quarter_median": last_q,
        "max_window": max(p[1] for p in steady),
        "max_window_after_a_kill": max((p[1] for p in after_kill), default=None),
    }
    if last_q > 1.25 * first_q:
        failures.append(f"p99 drifted: {first_q} µs in the first quarter, {last_q} in the last")
else:
    # A run too short for windows clear of kills: nothing to compare.
    summary["p99_us"] = {"max_window_after_a_kill": max((p[1] for p in after_kill), default=None)}

# --- closes -------------------------------------------------------------------------------
restarts = [int(o["t_ms"]) for o in ops if o["event"] == "restart"]
down = [(k[0], next((r for r in restarts if r >= k[0]), k[0] + 3_600_000) + 2000) for k in kills]
expected_closes, close_delays, refused_ok, unexpected = 0, [], 0, []
for e in events:
    t = int(e["t_ms"])
    what = e["event"]
    if what in ("closed_1011", "closed_1014"):
        hit = [k for k in kills if k[1] == e["backend"] and 0 <= t - k[0] <= 1000]
        if hit:
            expected_closes += 1
            close_delays.append(t - hit[-1][0])
            continue
    elif what == "refused" and any(a <= t <= b for a, b in down):
        refused_ok += 1
        continue
    unexpected.append(e)
summary["kills"] = len(kills)
summary["closed_on_killed_backends"] = expected_closes
summary["close_delay_ms"] = {
    "median": statistics.median(close_delays) if close_delays else None,
    "max": max(close_delays) if close_delays else None,
}
summary["refused_while_down"] = refused_ok
summary["unexpected"] = len(unexpected)
if unexpected:
    failures.append(f"{len(unexpected)} unexpected closes or failures, first: {unexpected[0]}")
if report["failed_at_end"]:
    failures.append(f"{report['failed_at_end']} sockets open at the end did not echo")
if kills and not expected_closes:
    failures.append("backends were killed but no socket saw a 1011/1014")

summary["failures"] = failures
(out / "summary.json").write_text(json.dumps(summary, indent=2))

# --- the plot -----------------------------------------------------------------------------
mins = [t_of(s) / 60 for s in under_load]
fig, ax = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
ax[0].plot(mins, [int(s["rss_kb"]) / 1024 for s in under_load], color="tab:blue")
ax[0].set_ylabel("router RSS (MB)")
ax[1].plot(mins, [int(s["fds"]) for s in under_load], color="tab:green", label="router fds")
ax[1].plot(mins, [int(s["open"]) for s in under_load], color="tab:gray", label="sockets open")
ax[1].set_ylabel("count")
ax[1].legend(loc="lower right")
ax[2].plot([c[0] / 60 for c in cpu], [c[1] for c in cpu], color="tab:orange")
ax[2].set_ylabel("router CPU (%)")
ax[3].plot([p[0] / 60 for p in p99], [p[1] / 1000 for p in p99], color="tab:red")
ax[3].set_ylabel("streaming p99 (ms)")
ax[3].set_xlabel("minutes")
for a in ax:
    a.axvline(warm_s / 60, color="black", linewidth=0.8, linestyle="--")
    for k in kills:
        a.axvline((k[0] - t0) / 60000, color="tab:red", linewidth=0.6, linestyle=":")
    a.grid(alpha=0.3)
fig.suptitle(
    f"wsrouter soak: {report['sockets']} sockets, {report['opened']} opened, "
    f"{len(kills)} backend kills (dotted), warm-up to the dashed line"
)
fig.tight_layout()
fig.savefig(out / "soak.png", dpi=90)

print(json.dumps({k: v for k, v in summary.items() if k != "wsload"}, indent=2))
print(json.dumps(report))
print("checks:", "all met" if not failures else "NOT MET: " + "; ".join(failures))
sys.exit(1 if failures else 0)
