"""Per-request times from a loopback capture of the HTTP cell (benches/http_hops.sh).

parse PCAP PROXY_PORT BACKEND_PORT... [--from T --to T --round N --target T --wrk FILE]
    one JSON line for the packets between --from and --to (Unix seconds): the client side's and the backend side's per-request times, and the
    proxy's two hops, each as p50/p90/p99 in µs.
summary FILE
    each target's medians over its rounds, as a table.

On loopback every packet is captured once, stamped as it is sent. A flow carries one
request at a time (wrk waits for each answer), so a request is its flow's first data
packet after an answer, and its answer the next data packet the other way.
"""

import argparse
import collections
import json
import statistics
import struct
import sys


def packets(path):
    """(time, source port, destination port) of each IPv4 TCP data packet."""
    with open(path, "rb") as f:
        head = f.read(24)
        magic, = struct.unpack("<I", head[:4])
        nano = magic == 0xA1B23C4D
        link, = struct.unpack("<I", head[20:24])
        offset = {1: 14, 113: 16, 0: 4}.get(link, 14)
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, incl, _ = struct.unpack("<IIII", rec)
            data = f.read(incl)
            ip = data[offset:]
            if len(ip) < 20 or ip[0] >> 4 != 4:
                continue
            ihl = (ip[0] & 15) * 4
            total, = struct.unpack(">H", ip[2:4])
            tcp = ip[ihl:]
            if len(tcp) < 13:
                continue
            if total - ihl - (tcp[12] >> 4) * 4 <= 0:
                continue
            sport, dport = struct.unpack(">HH", tcp[:4])
            yield sec + frac / (1e9 if nano else 1e6), sport, dport


def exchanges(path, proxy, backends, window):
    """Every request/answer pair: (asked, answered, side), side 'client' or 'backend'.
    A client connection's first two exchanges are its TLS handshake's flights: skipped."""
    pending = {}
    seen = collections.Counter()
    out = []
    start, end = window
    for t, sport, dport in packets(path):
        if t < start or t > end:
            continue
        if dport == proxy:
            side, flow, ask = "client", sport, True
        elif sport == proxy:
            side, flow, ask = "client", dport, False
        elif dport in backends:
            side, flow, ask = "backend", (sport, dport), True
        elif sport in backends:
            side, flow, ask = "backend", (dport, sport), False
        else:
            continue
        key = (side, flow)
        if ask:
            pending.setdefault(key, t)
        elif key in pending:
            asked = pending.pop(key)
            seen[key] += 1
            if side == "backend" or seen[key] > 2:
                out.append((asked, t, side))
    return out


# A request or answer left unpaired this long is dropped from the queue (one the capture
# cut in two, say), so that it does not shift every pairing after it.
STALE = 0.005


def hops(pairs):
    """The proxy's hops, pairing first in first out: a client's request with the next
    request to a pod, a pod's answer with the next answer to a client."""
    events = []
    for asked, answered, side in pairs:
        events.append((asked, side, "ask"))
        events.append((answered, side, "answer"))
    events.sort()
    waiting = {"in": collections.deque(), "out": collections.deque()}
    times = {"in": [], "out": []}
    for t, side, kind in events:
        if side == "client" and kind == "ask":
            waiting["in"].append(t)
        elif side == "backend" and kind == "answer":
            waiting["out"].append(t)
        else:
            hop = "in" if side == "backend" else "out"
            queue = waiting[hop]
            while queue and t - queue[0] > STALE:
                queue.popleft()
            if queue:
                times[hop].append(t - queue.popleft())
    return times


def quantiles(xs):
    xs = sorted(xs)
    if not xs:
        return None
    at = lambda q: round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1e6)
    return {"n": len(xs), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}


def parse(args):
    pairs = exchanges(args.pcap, args.proxy, set(args.backends), (args.start, args.end))
    line = {"round": args.round, "target": args.target}
    if args.wrk:
        with open(args.wrk) as f:
            for text in f:
                if text.startswith("JSON "):
                    report = json.loads(text[5:])
                    line["req_per_s"] = round(report["requests_per_second"])
                    line["wrk"] = {k: report["latency"][f"{k}_us"] for k in ("p50", "p99")}
    for side in ("client", "backend"):
        line[side] = quantiles([b - a for a, b, s in pairs if s == side])
    for name, xs in hops(pairs).items():
        line[name] = quantiles(xs)
    print(json.dumps(line))


def summary(args):
    rows = collections.defaultdict(lambda: collections.defaultdict(list))
    with open(args.file) as f:
        for text in f:
            line = json.loads(text)
            row = rows[line["target"]]
            row["req/s"].append(line.get("req_per_s", 0))
            for part in ("wrk", "client", "backend", "in", "out"):
                for q in ("p50", "p99"):
                    if line.get(part) and q in line[part]:
                        row[f"{part} {q}"].append(line[part][q])
    cols = ["req/s", "wrk p50", "wrk p99", "client p50", "client p99", "backend p50",
            "backend p99", "in p50", "in p99", "out p50", "out p99"]
    print("medians over rounds; times in µs (in, out: the proxy's hops, paired approximately)")
    print("| target | rounds | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    for target, row in rows.items():
        cells = [str(round(statistics.median(row[c]))) if row[c] else "-" for c in cols]
        print(f"| {target} | {len(row['req/s'])} | " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parse")
    p.add_argument("pcap")
    p.add_argument("proxy", type=int)
    p.add_argument("backends", type=int, nargs="+")
    p.add_argument("--from", dest="start", type=float, default=0.0)
    p.add_argument("--to", dest="end", type=float, default=float("inf"))
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--target", default="proxy")
    p.add_argument("--wrk")
    p.set_defaults(run=parse)
    s = sub.add_parser("summary")
    s.add_argument("file")
    s.set_defaults(run=summary)
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
