#!/usr/bin/env python3
"""Summarise benches/compare.sh's results.tsv: the median of each figure over rounds, and
wsrouter's ratio to the best of the peers measured (HAProxy, NGINX, Envoy, Caddy), checked
against the bars."""

import sys

from medians import medians

PROXIES = ("haproxy", "nginx", "envoy", "caddy")
# metric → True if higher is better
HIGHER = {
    "msg_per_s": True,
    "req_per_s": True,
    "MB_per_s": True,
    "conns_per_s": True,
    "p50_us": False,
    "p99_us": False,
    "p999_us": False,
    "p50_sat_us": False,
    "p99_sat_us": False,
    "cpu_s_per_M_reqs": False,
    "cpu_s_per_M_msgs": False,
    "kb_per_conn": False,
    "kb_per_conn_after_burst": False,
}
# The bars: (workload, metric) → the ratio wsrouter must reach against the best peer.
BARS = {
    **{(w, "msg_per_s"): 1.0 for w in ("c50_s64", "c50_s16384", "c500_s64", "c500_s16384")},
    **{(w, "p99_us"): 1.0 for w in ("c50_s64", "c50_s16384", "c500_s64", "c500_s16384")},
    ("c50_s64", "cpu_s_per_M_msgs"): 1.0,
    ("c500_s64", "cpu_s_per_M_msgs"): 1.0,
    ("handshake", "conns_per_s"): 1.0,
    ("idle", "kb_per_conn"): 0.5,
    ("idle", "kb_per_conn_after_burst"): 0.5,
    # The HTTP cell (issue 26): at least the best peer's throughput, no worse p99.
    **{(w, m): 1.0 for w in ("http_get_c50", "http_post128_c50") for m in ("req_per_s", "p99_us")},
}


def main(path: str, markdown: bool = False) -> None:
    med = medians(path, ("target", "workload", "metric"))
    targets = [t for t in ("wsrouter", "wsrouter-b", *PROXIES, "direct") if any(k[0] == t for k in med)]
    rows = sorted({(w, m) for (_, w, m) in med if m in HIGHER})
    if markdown:
        print("| workload | metric | " + " | ".join(targets) + " | wsrouter / best peer | bar |")
        print("|---|---|" + "---:|" * len(targets) + "---:|---|")
    else:
        print(f"medians over rounds ({path})")
        header = f"{'workload':<17} {'metric':<24}" + "".join(f"{t:>12}" for t in targets) + f"{'ws/best':>9}  bar"
        print(header)
        print("-" * len(header))
    failed = []
    for w, m in rows:
        cells = "".join(
            f"{med[(t, w, m)]:>12.{2 if med[(t, w, m)] < 100 else 0}f}" if (t, w, m) in med else f"{'-':>12}"
            for t in targets
        )
        ratio_s, bar_s = "", ""
        others = [med[(p, w, m)] for p in PROXIES if (p, w, m) in med]
        # An A/B run (wsrouter and its variant, no peers): the ratio is variant / base.
        if not others and ("wsrouter-b", w, m) in med and ("wsrouter", w, m) in med:
            base = med[("wsrouter", w, m)]
            ratio_s = f"{med[('wsrouter-b', w, m)] / base if base else float('nan'):>9.3f}"
        if ("wsrouter", w, m) in med and others:
            best = max(others) if HIGHER[m] else min(others)
            ratio = med[("wsrouter", w, m)] / best if best else float("nan")
            ratio_s = f"{ratio:>9.2f}"
            if (w, m) in BARS:
                need = BARS[(w, m)]
                ok = ratio >= need if HIGHER[m] else ratio <= need
                bar_s = f"  {'≥' if HIGHER[m] else '≤'}{need:g} {'met' if ok else 'NOT MET'}"
                if not ok:
                    failed.append(f"{w} {m}")
        if markdown:
            md = " | ".join(
                (f"{med[(t, w, m)]:.{2 if med[(t, w, m)] < 100 else 0}f}" if (t, w, m) in med else "-") for t in targets
            )
            print(f"| {w} | {m} | {md} | {ratio_s.strip()} | {bar_s.strip()} |")
        else:
            print(f"{w:<17} {m:<24}{cells}{ratio_s}{bar_s}")
    for (t, w, m), v in sorted(med.items()):
        if m in ("errors",) and v:
            print(f"note: {t} {w} had {v:g} errors (median)")
        if m == "still_echoing" and v < med.get((t, w, "connections"), 0):
            print(f"note: {t} only {v:g} connections still echoed after holding")
        if m == "burst_ok" and v < med.get((t, w, "connections"), 0):
            print(f"note: {t} echoed only {v:g} of the 16 KiB bursts")
    if "wsrouter-b" in targets and not any(t in PROXIES for t in targets):
        print("(an A/B run: the ratio column is wsrouter-b / wsrouter)")
    print("bars not met: " + (", ".join(failed) if failed else "none"))


if __name__ == "__main__":
    main(sys.argv[1], markdown="--markdown" in sys.argv[2:])
