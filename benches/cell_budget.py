"""cell_budget.sh's arithmetic: one TSV row per (round, cell, target), and the summary.

    python3 cell_budget.py header
    python3 cell_budget.py row ROUND CELL TARGET WINDOW_S HZ WSLOAD_JSON P0 P1 L0 L1 B0 B1
    python3 cell_budget.py summary RESULTS.tsv

P, L, B: "user system" clock ticks of the proxy, wsload and the echo backends at the
window's start (0) and end (1). Per message: ticks / HZ / (msgs/s x window) in us.

The summary's bound: on a machine the cell saturates, messages/s is the CPU there is
divided by what one message costs everyone. Had the proxy spent none of its user-space CPU
(or none at all), with everyone else's cost per message as measured, its messages/s would
be msgs/s x total / (total - that part). Set against the best peer of the same round, that
is the most any change to the proxy's own code (or to the proxy altogether) could lead by.
"""

import csv
import json
import statistics
import sys

COLUMNS = [
    "round", "cell", "target", "window_s", "msgs_per_s", "errors",
    "proxy_user_us", "proxy_sys_us", "wsload_us", "backends_us", "total_us",
]


def ticks(s):
    u, k = s.split()
    return int(u), int(k)


def row(args):
    rnd, cell, target, window, hz, report, p0, p1, l0, l1, b0, b1 = args
    window, hz = float(window), float(hz)
    with open(report) as f:
        r = json.load(f)
    rate = float(r["messages_per_second"])
    msgs = rate * window
    if msgs <= 0:
        sys.exit(f"cell_budget: no messages echoed by {target} in {cell}")
    per = lambda t: t / hz / msgs * 1e6
    (pu0, ps0), (pu1, ps1) = ticks(p0), ticks(p1)
    load = sum(ticks(l1)) - sum(ticks(l0))
    back = sum(ticks(b1)) - sum(ticks(b0))
    vals = [per(pu1 - pu0), per(ps1 - ps0), per(load), per(back)]
    vals.append(sum(vals))
    print("\t".join([rnd, cell, target, f"{window:g}", f"{rate:.0f}", str(r.get("errors", 0))]
                    + [f"{v:.2f}" for v in vals]))


def is_wsrouter(t):
    return t.startswith("wsrouter")


def summary(path):
    with open(path) as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t")]
    if not rows:
        sys.exit("cell_budget: no rows")
    for r in rows:
        for c in COLUMNS[4:]:
            r[c] = float(r[c])
    cells = sorted({r["cell"] for r in rows}, key=lambda c: (int(c.split("_s")[1]), int(c[1:].split("_")[0])))
    print("Medians over rounds, per message echoed (µs of CPU):\n")
    print("| cell | target | rounds | msg/s | proxy user | proxy system | wsload | backends | total |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for cell in cells:
        targets = sorted({r["target"] for r in rows if r["cell"] == cell})
        for t in targets:
            rs = [r for r in rows if r["cell"] == cell and r["target"] == t]
            med = {c: statistics.median(r[c] for r in rs) for c in COLUMNS[4:]}
            print(f"| {cell} | {t} | {len(rs)} | {med['msgs_per_s']:,.0f} | {med['proxy_user_us']:.2f} "
                  f"| {med['proxy_sys_us']:.2f} | {med['wsload_us']:.2f} | {med['backends_us']:.2f} "
                  f"| {med['total_us']:.2f} |")
    print("\nwsrouter against the best peer of each round: as measured, had its user-space CPU "
          "been zero, had it cost nothing:\n")
    print("| cell | round | wsrouter msg/s | best peer | as measured | user CPU zero | proxy free |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for cell in cells:
        for rnd in sorted({r["round"] for r in rows if r["cell"] == cell}, key=int):
            here = [r for r in rows if r["cell"] == cell and r["round"] == rnd]
            peers = [r for r in here if not is_wsrouter(r["target"]) and r["target"] != "direct"]
            for w in (r for r in here if r["target"] == "wsrouter"):
                if not peers:
                    continue
                best = max(peers, key=lambda r: r["msgs_per_s"])
                tot = w["total_us"]
                no_user = w["msgs_per_s"] * tot / (tot - w["proxy_user_us"])
                free = w["msgs_per_s"] * tot / (tot - w["proxy_user_us"] - w["proxy_sys_us"])
                b = best["msgs_per_s"]
                print(f"| {cell} | {rnd} | {w['msgs_per_s']:,.0f} | {best['target']} {b:,.0f} "
                      f"| {w['msgs_per_s'] / b:.2f} | {no_user / b:.2f} | {free / b:.2f} |")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "header":
        print("\t".join(COLUMNS))
    elif cmd == "row" and len(sys.argv) == 14:
        row(sys.argv[2:])
    elif cmd == "summary" and len(sys.argv) == 3:
        summary(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
