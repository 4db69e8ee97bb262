#!/usr/bin/env python3
"""Summarise benches/h2.sh's results.tsv: medians over rounds per target and protocol,
each target's HTTP/2 ÷ HTTP/1.1 ratio, and wsrouter's HTTP/2 figures against the best
peer's. The goals checked are memory's (HTTP/2 per socket at most half of HTTP/1.1's, and
below every peer's HTTP/2); where wsrouter trails a peer on another figure it is said. `--markdown` prints the table for RESULTS.md."""

import sys

from medians import medians

# metric → True if higher is better
METRICS = {
    "kb_per_socket": False,
    "kb_per_socket_after_burst": False,
    "fds_per_socket": False,
    "sockets_per_s": True,
    "tcp_connections": None,
    "msg_per_s": True,
    "cpu_s_per_M_msgs": False,
    "still_echoing": None,
    "errors": None,
}


def fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 100 else f"{v:,.0f}"


def main(path: str, markdown: bool) -> int:
    med = medians(path, ("target", "protocol", "metric"))
    targets = [t for t in ("wsrouter", "haproxy", "envoy", "caddy", "nginx") if any(k[0] == t for k in med)]
    cols = [(t, p) for t in targets for p in ("h1", "h2") if any(k[:2] == (t, p) for k in med)]
    peers = [t for t in targets if t != "wsrouter"]

    head = ["metric"] + [f"{t} {p}" for t, p in cols] + ["wsrouter h2 / best peer h2"]
    rows = []
    for m, higher in METRICS.items():
        cells = [fmt(med[(t, p, m)]) if (t, p, m) in med else "-" for t, p in cols]
        ratio = ""
        peer_vals = [med[(t, "h2", m)] for t in peers if (t, "h2", m) in med]
        if higher is not None and ("wsrouter", "h2", m) in med and peer_vals:
            best = max(peer_vals) if higher else min(peer_vals)
            ratio = f"{med[('wsrouter', 'h2', m)] / best:.2f}" if best else ""
        rows.append([m] + cells + [ratio])
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|---|" + "---:|" * (len(head) - 1))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        print(f"medians over rounds ({path})")
        width = [max(len(h), 10) for h in head]
        print("  ".join(h.rjust(w) for h, w in zip(head, width)))
        for r in rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, width)))

    # The goals.
    failed = []
    for t in targets:
        h1, h2 = med.get((t, "h1", "kb_per_socket")), med.get((t, "h2", "kb_per_socket"))
        if h1 and h2 is not None:
            print(f"{t}: HTTP/2 memory per socket = {h2 / h1:.2f} × HTTP/1.1's")
    h1, h2 = med.get(("wsrouter", "h1", "kb_per_socket")), med.get(("wsrouter", "h2", "kb_per_socket"))
    if h1 and h2 is not None and h2 > 0.5 * h1:
        failed.append(f"wsrouter's HTTP/2 memory per socket {h2:.2f} KB > half of HTTP/1.1's {h1:.2f} KB")
    behind_lines = []
    for m in ("kb_per_socket", "kb_per_socket_after_burst", "sockets_per_s", "msg_per_s", "cpu_s_per_M_msgs"):
        ours = med.get(("wsrouter", "h2", m))
        for t in peers:
            theirs = med.get((t, "h2", m))
            if ours is None or theirs is None:
                continue
            behind = ours < theirs if METRICS[m] else ours > theirs
            if behind:
                line = f"h2 {m}: wsrouter {fmt(ours)} behind {t} {fmt(theirs)}"
                # The goal is memory; the rest is reported, not judged here.
                (failed if m.startswith("kb_") else behind_lines).append(line)
    for f in behind_lines:
        print("behind a peer (not a goal of this benchmark): " + f)
    for f in failed:
        print("GOAL MISSED: " + f)
    if not failed:
        print("memory goals met: HTTP/2 at most half of HTTP/1.1, and below every peer's HTTP/2")
    return 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--markdown"]
    sys.exit(main(args[0], "--markdown" in sys.argv))
