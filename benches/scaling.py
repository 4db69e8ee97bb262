"""Fits benches/scaling.sh's numbers and predicts 100,000 and 1,000,000 sockets.

Per protocol: idle RSS = a + b·sockets by least squares (b is the cost of a socket, a
the router's own), how far each measured point is from the line (a cost that grows
worse than linearly shows as points above it at the high end), the CPU to open a socket,
the idle CPU, and the predicted RSS and idle CPU at the target counts.
"""

import collections
import sys

TARGETS = (100_000, 1_000_000)


def fit(points):
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def main(path):
    rows = collections.defaultdict(dict)
    with open(path) as f:
        next(f)
        for line in f:
            proto, n, metric, value = line.rstrip("\n").split("\t")
            rows[(proto, int(n))][metric] = float(value)
    for proto in sorted({p for p, _ in rows}):
        runs = sorted((n, m) for (p, n), m in rows.items() if p == proto)
        rss = [(m["sockets"], m["rss_idle_kb"]) for _, m in runs]
        a, b = fit(rss)
        print(f"== {proto}: idle RSS = {a / 1024:.1f} MiB + {b:.2f} KB per socket")
        for (n, m), (x, y) in zip(runs, rss):
            per = (y - m["rss_base_kb"]) / x
            off = y - (a + b * x)
            print(
                f"   {int(x):>6} sockets: {y / 1024:7.1f} MiB idle ({per:.2f} KB each over the "
                f"base, {off / 1024:+.2f} MiB off the line), "
                f"{(m['rss_after_burst_kb'] - m['rss_base_kb']) / x:.2f} KB each after a "
                f"16 KiB burst; opening {m['open_cpu_s'] / x * 1e6:.0f} µs CPU each; idle "
                f"{m['idle_cpu_s_per_s'] * 1000:.1f} ms CPU per s; "
                f"{int(m['still_echoing'])} still echo; kernel slab "
                f"{m['kernel_slab_kb'] / x:.1f} KB per WebSocket (its four TCP ends)"
            )
        open_us = sorted(m["open_cpu_s"] / m["sockets"] * 1e6 for _, m in runs)[len(runs) // 2]
        idle = [(m["sockets"], m["idle_cpu_s_per_s"]) for _, m in runs]
        _, idle_b = fit(idle)
        slab_per = sorted(m["kernel_slab_kb"] / m["sockets"] for _, m in runs)[len(runs) // 2]
        for t in TARGETS:
            print(
                f"   predicted at {t:>9,}: {(a + b * t) / 1024 / 1024:6.2f} GiB RSS idle, "
                f"{open_us * t / 1e6:6.0f} CPU s to open them all, "
                f"{max(idle_b, 0) * t * 1000:6.1f} ms CPU per s idle; the router's half of the "
                f"kernel's socket memory about {slab_per / 2 * t / 1024 / 1024:5.2f} GiB"
            )


if __name__ == "__main__":
    main(sys.argv[1])
