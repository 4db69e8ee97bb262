#!/usr/bin/env python3
"""Socket.IO through the router with a second implementation: python-socketio's sync
Client (requirements.txt pins it; it polls with `requests`, then upgrades with
`websocket-client`). The same checks as socketio-client.js, for a handful of clients:

    socketio_client.py --url https://127.0.0.1:18543 [--clients 6] [--shared 3]
        [--echoes 100] [--replicas 4] [--prefix siopy]

Each client connects with its tenant in the query (`?tenant=`), polling first and then
the upgrade to WebSocket; it must receive `hello`, end on the websocket transport, and get
every `echo` acked with its payload from the pod `$BIN/wsrouter route TENANT` names.
Both `requests` and `websocket-client` trust $FW_CA (the router's run CA). Prints one JSON
summary line; exit status 1 on any mismatch or timeout.
"""

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import time

import requests
import socketio

BIN = os.environ.get("BIN") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/debug")


def contract_pod(tenant, replicas):
    out = subprocess.run(
        [os.path.join(BIN, "wsrouter"), "route", tenant, "--replicas", str(replicas), "--json"],
        check=True, capture_output=True, timeout=30,
    )
    return json.loads(out.stdout)["pod"]


def run_client(args, tenant, index, record):
    """One client, start to end; fills `record` and never raises."""
    record.update(tenant=tenant, index=index, pods=set(), echoed=0, errors=[], transport=None)
    try:
        record["expected"] = contract_pod(tenant, args.replicas)
        session = requests.Session()
        if os.environ.get("FW_CA"):
            # engineio hands a str `verify` to websocket-client as sslopt ca_certs too.
            # trust_env off: a REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment would
            # otherwise win over the session's verify (and proxies have no place here).
            session.trust_env = False
            session.verify = os.environ["FW_CA"]
        sio = socketio.Client(reconnection=False, http_session=session, request_timeout=10)
        hello = threading.Event()

        @sio.on("hello")
        def on_hello(data):
            record["pods"].add(data.get("server"))
            hello.set()

        sep = "&" if "?" in args.url else "?"
        sio.connect(f"{args.url}{sep}tenant={tenant}", transports=["polling", "websocket"],
                    socketio_path=args.path.strip("/"), wait_timeout=10)
        try:
            if not hello.wait(10):
                record["errors"].append("no hello within 10 s")
            # The sync client upgrades inside connect(): polling handshake, then the probe.
            record["transport"] = sio.transport()
            for i in range(args.echoes):
                payload = {"tenant": tenant, "i": i, "text": f"echo {i} from {tenant}#{index}"}
                ack = sio.call("echo", payload, timeout=5)
                record["pods"].add(ack.get("server"))
                if ack.get("payload") != payload:
                    record["errors"].append(f"echo {i}: payload came back as {ack.get('payload')!r}")
                    break
                record["echoed"] += 1
        finally:
            sio.disconnect()
    except Exception as err:  # every failure is reported per client, never swallowed
        record["errors"].append(f"{type(err).__name__}: {err}")


def problems(args, record):
    out = list(record["errors"])
    pods = sorted(p for p in record["pods"] if p)
    if pods != [record.get("expected")]:
        out.append(f"reached {','.join(pods) or 'no pod'}, the contract says {record.get('expected')}")
    if record["transport"] != "websocket":
        out.append(f"transport is {record['transport']}, not websocket after the upgrade")
    if record["echoed"] != args.echoes:
        out.append(f"{record['echoed']}/{args.echoes} echoes acked")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", default="/ws/socket.io/")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--shared", type=int, default=3)
    parser.add_argument("--echoes", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--prefix", default="siopy")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()

    started = time.monotonic()
    tenants = [f"{args.prefix}-{i:02d}" for i in range(args.clients)]
    tenants += [f"{args.prefix}-shared"] * args.shared
    records = [{} for _ in tenants]
    threads = [threading.Thread(target=run_client, args=(args, t, i, records[i]), daemon=True)
               for i, t in enumerate(tenants)]
    for thread in threads:
        thread.start()
    deadline = started + args.timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    failed = 0
    for thread, record in zip(threads, records):
        found = ["still running at the deadline"] if thread.is_alive() else problems(args, record)
        if found:
            failed += 1
            print(f"FAIL {record.get('tenant')}#{record.get('index')}: {'; '.join(found)}", file=sys.stderr)
    by_pod = {}
    for record in records:
        by_pod[record.get("expected")] = by_pod.get(record.get("expected"), 0) + 1
    print(json.dumps({
        "client": "python-socketio",
        "version": importlib.metadata.version("python-socketio"),
        "mode": "polling+websocket",
        "clients": len(records),
        "tenants": len(set(tenants)),
        "passed": len(records) - failed,
        "failed": failed,
        "upgraded": sum(1 for r in records if r.get("transport") == "websocket"),
        "echoes_acked": sum(r.get("echoed", 0) for r in records),
        "clients_by_pod": by_pod,
        "seconds": round(time.monotonic() - started, 3),
    }))
    # Daemon threads still blocked on a socket must not hold the exit.
    sys.stdout.flush()
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
