"""ws_costs.sh's arithmetic: one TSV row per measured process from the files a window left.

    python3 ws_costs.py header          # the TSV header
    python3 ws_costs.py events          # the perf stat events, comma-separated
    python3 ws_costs.py record-events   # perf record's -e/--filter arguments
    python3 ws_costs.py row key=value ...
    python3 ws_costs.py summary RESULTS.tsv   # medians over rounds, a Markdown table

The row's inputs (all written by ws_costs.sh for one window):
  round, cell, conns, size, in_flight, target, measured  labels, copied to the row
                (in_flight: wsload's --window; measured: proxy, echo-backend or wsload)
  port, backend_ports  the target's port (the backend's for direct), the echo backends'
  wsload        wsload's --json report: its messages/s as compare.sh counts them, errors
  perf          `perf stat -o` output (syscall tracepoints, context switches), counted
                between t_en and t_dis ("begun,ended" epoch seconds of the enable and
                disable commands)
  ss0, ss1      `ss -tinH state established` of every socket on those ports, just before
                and just after the window; t_ss0, t_ss1 when each was taken ("begun,ended"
                epoch seconds: the midpoint counts)
  ticks0, ticks1  "utime stime" clock ticks of the measured processes (/proc/PID/stat),
                taken at t_ticks0 and t_ticks1; hz: clock ticks per second
  record        optional: `perf script -F time,event,trace` of sys_exit_* tracepoints
                recorded (ret > 0 only) over the window, the cross-check of the bytes

The messages echoed in the window are counted exactly, not estimated from wsload's average
over its whole run: the bytes the echo backends wrote between the two listings, divided by
one echo's frame (each echo is one binary frame, payload plus a 2- or 4-byte header). That
rate, times each figure's own window, divides the figure. wsload's messages/s over its whole
run is reported beside it (they differ as much as the load drifts within the run).
"""

import json
import sys

READS = ("read", "recvfrom", "recvmsg", "readv")
WRITES = ("write", "sendto", "sendmsg", "writev")
WAITS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
URING = ("io_uring_enter",)
# The perf events ws_costs.sh counts, in this order (it reads them from here).
EVENTS = (
    ["raw_syscalls:sys_enter"]
    + [f"syscalls:sys_enter_{s}" for s in READS + WRITES + WAITS + URING]
    + ["context-switches"]
)
RECORD = [f"syscalls:sys_exit_{s}" for s in READS + WRITES]

COLUMNS = [
    "round", "cell", "conns", "size", "in_flight", "target", "measured",
    "window_s", "msgs_per_s", "wsload_msgs_per_s", "msgs_in_window", "errors",
    "syscalls_per_msg", "reads_per_msg", "writes_per_msg", "epoll_waits_per_msg",
    "io_uring_enters_per_msg", "other_syscalls_per_msg",
    "read_B_per_msg", "write_B_per_msg", "B_per_read_call", "B_per_write_call",
    "ctx_switches_per_msg", "cpu_us_per_msg", "user_us_per_msg", "sys_us_per_msg",
    "perf_read_B_per_msg", "perf_write_B_per_msg",
]


def perf_counts(path):
    """Event name -> count from `perf stat -o` output."""
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0:2] == ["<not", "counted>"]:
                counts[parts[2]] = 0.0  # the process made no call in the window
            elif len(parts) >= 2 and parts[1] in EVENTS:
                counts[parts[1]] = float(parts[0].replace(",", ""))
    missing = [e for e in EVENTS if e not in counts]
    if missing:
        sys.exit(f"ws_costs.py: {path} lacks {', '.join(missing)}")
    return counts


def sockets(path):
    """(local port, peer port, local, peer) -> (bytes the owner has read, bytes it has
    written) for each socket of an `ss -tinH state established` listing.

    Read = bytes_received - Recv-Q (what arrived less what still waits to be read);
    written = bytes_acked + Send-Q (what the peer acknowledged plus what is still queued):
    at any instant, exactly what passed through the owner's read- and write-kind calls
    (no kTLS, splice or sendfile here). bytes_acked counts the SYN on the connecting
    side, a constant that a difference cancels.
    """
    out = {}
    key = None
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            if not line[0].isspace():
                recv_q, send_q, local, peer = line.split()[:4]
                key = (int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1]), local, peer)
                out[key] = [int(recv_q), int(send_q), 0, 0]
            elif key is not None:
                for tok in line.split():
                    name, _, v = tok.partition(":")
                    if name == "bytes_received":
                        out[key][2] = int(v)
                    elif name == "bytes_acked":
                        out[key][3] = int(v)
    return {k: (rx - rq, ack + sq) for k, (rq, sq, rx, ack) in out.items()}


def moved(s0, s1, mine):
    """Bytes read and written between two listings by the sockets `mine` selects."""
    both = [k for k in s0.keys() & s1.keys() if mine(k)]
    if not both:
        sys.exit("ws_costs.py: no socket of the measured process in both listings")
    return (sum(s1[k][0] - s0[k][0] for k in both), sum(s1[k][1] - s0[k][1] for k in both))


def echo_frame(size):
    """Bytes of one echo as the echo backend writes it: one unmasked binary frame."""
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


def recorded(path):
    """Sum of the positive returns of the recorded read- and write-kind calls, and the
    seconds between the first record and the last (`perf script -F time,event,trace`)."""
    rd = wr = 0
    first = last = None
    kinds = {f"syscalls:sys_exit_{s}:": "r" for s in READS}
    kinds.update({f"syscalls:sys_exit_{s}:": "w" for s in WRITES})
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or parts[1] not in kinds:
                continue
            t = float(parts[0].rstrip(":"))
            first = t if first is None else first
            last = t
            n = int(parts[2], 16)
            if n > 0x7FFFFFFFFFFFFFFF:  # a negative long printed as hex
                continue
            if kinds[parts[1]] == "r":
                rd += n
            else:
                wr += n
    if first is None or last <= first:
        sys.exit(f"ws_costs.py: nothing recorded in {path}")
    return rd, wr, last - first


def mid(t):
    """The midpoint of "begun,ended" epoch seconds."""
    ts = [float(x) for x in t.split(",")]
    return sum(ts) / len(ts)


def row(a):
    with open(a["wsload"]) as f:
        report = json.load(f)
    wsload_rate = float(report["messages_per_second"])
    errors = int(report.get("errors", 0)) + int(report.get("connect_failures", 0))
    size, port, measured = int(a["size"]), int(a["port"]), a["measured"]
    backend_ports = {int(p) for p in a["backend_ports"].split(",")}

    # The messages echoed in the window: what the echo backends wrote, frame by frame,
    # between the two listings (which enclose the perf window by a few milliseconds).
    s0, s1 = sockets(a["ss0"]), sockets(a["ss1"])
    ss_secs = mid(a["t_ss1"]) - mid(a["t_ss0"])
    _, echoed = moved(s0, s1, lambda k: k[0] in backend_ports)
    ss_msgs = echoed / echo_frame(size)
    if ss_msgs <= 0:
        sys.exit(f"ws_costs.py: no messages echoed in the window ({a['ss0']})")
    rate = ss_msgs / ss_secs
    if measured == "proxy":
        mine = lambda k: k[0] == port or k[1] in backend_ports
    elif measured == "echo-backend":
        mine = lambda k: k[0] in backend_ports
    else:  # wsload
        mine = lambda k: k[1] == port
    rd, wr = moved(s0, s1, mine)

    c = perf_counts(a["perf"])
    window = mid(a["t_dis"]) - mid(a["t_en"])
    msgs = rate * window
    per = lambda n: n / msgs
    kind = lambda names: sum(c[f"syscalls:sys_enter_{s}"] for s in names)
    total, reads, writes = c["raw_syscalls:sys_enter"], kind(READS), kind(WRITES)
    waits, uring = kind(WAITS), kind(URING)
    other = total - reads - writes - waits - uring

    hz = float(a["hz"])
    u0, y0 = map(int, a["ticks0"].split())
    u1, y1 = map(int, a["ticks1"].split())
    cpu_msgs = rate * (float(a["t_ticks1"]) - float(a["t_ticks0"]))
    us = lambda ticks: ticks / hz * 1e6 / cpu_msgs

    rec_r = rec_w = "-"
    if a.get("record"):
        # Divided by the messages of the records' own span (perf record's window is not
        # exactly perf stat's).
        r, w, span = recorded(a["record"])
        rec_r, rec_w = f"{r / (rate * span):.1f}", f"{w / (rate * span):.1f}"

    f2 = lambda x: f"{x:.2f}"
    f3 = lambda x: f"{x:.3f}"
    vals = [
        a["round"], a["cell"], a["conns"], a["size"], a["in_flight"], a["target"], measured,
        f3(window), f"{rate:.0f}", f"{wsload_rate:.0f}", f"{msgs:.0f}", str(errors),
        f2(per(total)), f2(per(reads)), f2(per(writes)), f3(per(waits)), f3(per(uring)),
        f2(per(other)),
        f"{rd / ss_msgs:.1f}", f"{wr / ss_msgs:.1f}",
        f"{rd / ss_msgs / per(reads):.1f}" if reads else "-",
        f"{wr / ss_msgs / per(writes):.1f}" if writes else "-",
        f3(per(c["context-switches"])),
        f2(us(u1 - u0 + y1 - y0)), f2(us(u1 - u0)), f2(us(y1 - y0)),
        rec_r, rec_w,
    ]
    assert len(vals) == len(COLUMNS)
    print("\t".join(vals))


def summary(path):
    """Medians over rounds of each (cell, target, measured): the table RESULTS.md quotes."""
    import statistics

    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    head, body = rows[0], [r for r in rows[1:] if r != rows[0]]
    col = {name: i for i, name in enumerate(head)}
    shown = [
        ("msgs_per_s", "msg/s", "{:.0f}"),
        ("syscalls_per_msg", "syscalls", "{:.2f}"),
        ("reads_per_msg", "reads", "{:.2f}"),
        ("writes_per_msg", "writes", "{:.2f}"),
        ("epoll_waits_per_msg", "epoll waits", "{:.3f}"),
        ("io_uring_enters_per_msg", "io_uring enters", "{:.3f}"),
        ("read_B_per_msg", "B read", "{:.0f}"),
        ("write_B_per_msg", "B written", "{:.0f}"),
        ("ctx_switches_per_msg", "switches", "{:.3f}"),
        ("cpu_us_per_msg", "CPU µs", "{:.2f}"),
        ("sys_us_per_msg", "of it kernel", "{:.2f}"),
    ]
    groups = {}
    for r in body:
        if r[col["in_flight"]] != "8":
            continue
        key = (int(r[col["conns"]]), int(r[col["size"]]), r[col["target"]], r[col["measured"]])
        groups.setdefault(key, []).append(r)
    print("| cell | target (measured) | rounds | " + " | ".join(s[1] for s in shown) + " |")
    print("|---|---|---:|" + "---:|" * len(shown))
    for (conns, size, target, measured), rs in sorted(groups.items()):
        cells = []
        for name, _, fmt in shown:
            vals = [float(r[col[name]]) for r in rs if r[col[name]] not in ("-", "")]
            cells.append(fmt.format(statistics.median(vals)) if vals else "-")
        who = target if measured == "proxy" else f"{target} ({measured})"
        print(f"| {size} B × {conns} | {who} | {len(rs)} | " + " | ".join(cells) + " |")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "header":
        print("\t".join(COLUMNS))
    elif len(sys.argv) >= 2 and sys.argv[1] == "events":
        print(",".join(EVENTS))
    elif len(sys.argv) >= 2 and sys.argv[1] == "record-events":
        # perf record arguments: each exit tracepoint, only calls that moved bytes.
        print(" ".join(f"-e {e} --filter ret>0" for e in RECORD))
    elif len(sys.argv) >= 2 and sys.argv[1] == "row":
        row(dict(arg.split("=", 1) for arg in sys.argv[2:]))
    elif len(sys.argv) == 3 and sys.argv[1] == "summary":
        summary(sys.argv[2])
    else:
        sys.exit("usage: ws_costs.py header | events | record-events | row key=value ... | summary FILE")


if __name__ == "__main__":
    main()
