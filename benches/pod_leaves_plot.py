#!/usr/bin/env python3
"""Plots `cargo bench -p router --bench pod_leaves`: per second since the swap that took
pod 3 out of the table, the closes of its sockets and their reopens on the pods their
tenants route to now, for the pod stopping at once (as before the drain scheduler) and for
the router's spread. Usage: pod_leaves_plot.py DIR OUT.png (DIR holds
pod_leaves-{pod_stops,spread}.tsv)."""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TITLES = {
    "pod_stops": "before: the pod stops, its sockets close at once (1001)",
    "spread": "now: the router closes them (1012) spread over --drain-grace (20 s)",
}


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def main():
    src, png = sys.argv[1], sys.argv[2]
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, sharey=True)
    for ax, name in zip(axes, ("pod_stops", "spread")):
        rows = read(os.path.join(src, f"pod_leaves-{name}.tsv"))
        x = [int(r["second"]) for r in rows]
        ax.bar(x, [int(r["closes"]) for r in rows], color="#bbbbbb", label="closes (pod 3's sockets)")
        for b in range(3):
            ax.plot(x, [int(r[f"backend-{b}"]) for r in rows], marker=".", label=f"reopens on backend-{b}")
        ax.set_title(TITLES[name], fontsize=10)
        ax.set_ylabel("per second")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("seconds since the swap (4 → 3 replicas)")
    fig.suptitle("A pod leaves the table with 490 live sockets (2,000 over 4 pods)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
