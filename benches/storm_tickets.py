#!/usr/bin/env python3
"""What sharing session-ticket keys saves a storm (benches/storm.sh with TICKETS=1).

Reads OUT/{own-keys,shared-keys}/{events,samples,ops}.tsv and prints, per run: the
reconnects router B took after router A's SIGTERM, B's handshakes by kind (from its
/metrics at the end: every handshake of the run, the first ramp included), and B's CPU
per reconnect: its CPU ticks from the SIGTERM to a second after the last reconnect,
over the reconnects (the idle sockets B already held cost next to nothing meanwhile).
"""
import json
import os
import sys

HZ = os.sysconf("SC_CLK_TCK")


def run(d):
    ops = {}
    with open(os.path.join(d, "ops.tsv")) as f:
        next(f)
        for line in f:
            t, event, detail = (line.rstrip("\n").split("\t") + ["", ""])[:3]
            ops.setdefault(event, (int(t), detail))
    sigterm = ops["sigterm"][0]
    reconnects, last = 0, sigterm
    with open(os.path.join(d, "events.tsv")) as f:
        next(f)
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) >= 6 and p[4] == "dialed" and p[5] == "1" and int(p[0]) >= sigterm:
                reconnects += 1
                last = max(last, int(p[0]))
    ticks = []
    with open(os.path.join(d, "samples.tsv")) as f:
        head = next(f).rstrip("\n").split("\t")
        at, cpu = head.index("t_ms"), head.index("cpu_ticks")
        for line in f:
            p = line.rstrip("\n").split("\t")
            ticks.append((int(p[at]), int(p[cpu])))
    before = max((c for t, c in ticks if t <= sigterm), default=0)
    after = min((c for t, c in ticks if t >= last + 1000), default=ticks[-1][1])
    cpu_s = (after - before) / HZ
    full = ops.get("b_handshakes_full", (0, "-"))[1]
    resumed = ops.get("b_handshakes_resumed", (0, "-"))[1]
    return {
        "reconnects_at_b": reconnects,
        "b_handshakes_full": full,
        "b_handshakes_resumed": resumed,
        "b_cpu_seconds_while_reconnecting": round(cpu_s, 2),
        "b_cpu_us_per_reconnect": round(cpu_s * 1e6 / max(reconnects, 1), 1),
    }


def main():
    out = sys.argv[1]
    runs = {name: run(os.path.join(out, name)) for name in ("own-keys", "shared-keys")}
    for name, r in runs.items():
        full, resumed = r["b_handshakes_full"], r["b_handshakes_resumed"]
        try:
            ratio = f"{int(resumed) / (int(full) + int(resumed)):.0%} resumed"
        except (ValueError, ZeroDivisionError):
            ratio = "no handshake counts"
        print(f"{name:<12} {r['reconnects_at_b']} reconnects at B; B's handshakes: "
              f"{full} full, {resumed} resumed ({ratio}); B's CPU "
              f"{r['b_cpu_us_per_reconnect']} µs per reconnect "
              f"({r['b_cpu_seconds_while_reconnecting']} s)")
    with open(os.path.join(out, "tickets.json"), "w") as f:
        json.dump(runs, f, indent=2)


if __name__ == "__main__":
    main()
