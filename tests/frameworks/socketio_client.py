#!/usr/bin/env python3
"""Socket.IO through the router with a second implementation: python-socketio
(requirements.txt pins it). The same checks as socketio-client.js, for a handful of clients:

    socketio_client.py --url https://127.0.0.1:18543 [--clients 6] [--shared 3]
        [--echoes 100] [--replicas 4] [--prefix siopy] [--sync]

Each client connects with its tenant in the query (`?tenant=`), polling first and then
the upgrade to WebSocket; it must receive `hello`, end on the websocket transport, and get
every `echo` acked with its payload from the pod `$BIN/wsrouter route TENANT` names.
Prints one JSON summary line; exit status 1 on any mismatch or timeout.

By default the clients are `socketio.AsyncClient` (aiohttp for the polling and the
WebSocket). `--sync` uses the threaded `socketio.Client` (requests, then websocket-client)
instead; over wss:// it stalls now and then with no router involved (an ack the pod sent
never arrives): its read and write threads share one SSL socket, which Python's ssl does
not allow (python-engineio issue 461, python-socketio issue 1577; seen here against a TLS
pod directly in 3 of 16 runs). So the run in socketio.sh uses the async client.
Both trust $FW_CA (the run's CA) and nothing from the environment.
"""

import argparse
import asyncio
import importlib.metadata
import json
import os
import ssl
import subprocess
import sys
import threading
import time

BIN = os.environ.get("BIN") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/debug")


def contract_pod(tenant, replicas):
    out = subprocess.run(
        [os.path.join(BIN, "wsrouter"), "route", tenant, "--replicas", str(replicas), "--json"],
        check=True, capture_output=True, timeout=30,
    )
    return json.loads(out.stdout)["pod"]


def client_url(args, tenant):
    sep = "&" if "?" in args.url else "?"
    return f"{args.url}{sep}tenant={tenant}"


def payload_of(tenant, index, i):
    return {"tenant": tenant, "i": i, "text": f"echo {i} from {tenant}#{index}"}


def record_ack(record, payload, ack):
    """Notes one ack; False when its payload is not the one sent."""
    record["pods"].add(ack.get("server"))
    if ack.get("payload") != payload:
        record["errors"].append(f"echo {payload['i']}: payload came back as {ack.get('payload')!r}")
        return False
    record["echoed"] += 1
    return True


async def run_client_async(args, tenant, index, record):
    """One AsyncClient, start to end; fills `record` and never raises."""
    import aiohttp
    import socketio

    ctx = ssl.create_default_context(cafile=os.environ["FW_CA"]) if os.environ.get("FW_CA") else None
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx) if ctx else None)
    sio = socketio.AsyncClient(reconnection=False, http_session=session, request_timeout=10)
    hello = asyncio.Event()

    @sio.on("hello")
    async def on_hello(data):
        record["pods"].add(data.get("server"))
        hello.set()

    try:
        await sio.connect(client_url(args, tenant), transports=["polling", "websocket"],
                          socketio_path=args.path.strip("/"), wait_timeout=10)
        try:
            await asyncio.wait_for(hello.wait(), 10)
            # Polling handshake first; the client upgrades inside connect().
            record["transport"] = sio.transport()
            for i in range(args.echoes):
                payload = payload_of(tenant, index, i)
                if not record_ack(record, payload, await sio.call("echo", payload, timeout=5)):
                    break
        finally:
            await sio.disconnect()
    except Exception as err:  # every failure is reported per client, never swallowed
        record["errors"].append(f"{type(err).__name__}: {err}")
    finally:
        await session.close()


def run_client_sync(args, tenant, index, record):
    """One threaded Client, start to end; fills `record` and never raises."""
    import requests
    import socketio

    try:
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

        sio.connect(client_url(args, tenant), transports=["polling", "websocket"],
                    socketio_path=args.path.strip("/"), wait_timeout=10)
        try:
            if not hello.wait(10):
                record["errors"].append("no hello within 10 s")
            record["transport"] = sio.transport()
            for i in range(args.echoes):
                payload = payload_of(tenant, index, i)
                if not record_ack(record, payload, sio.call("echo", payload, timeout=5)):
                    break
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


def run_all_async(args, tenants, records):
    """Runs every client on one event loop; the names of those cut by the deadline."""
    async def all_clients():
        tasks = [asyncio.ensure_future(run_client_async(args, t, i, records[i])) for i, t in enumerate(tenants)]
        _, pending = await asyncio.wait(tasks, timeout=args.timeout)
        for task in pending:
            task.cancel()
        return {tasks.index(t) for t in pending}
    return asyncio.run(all_clients())


def run_all_sync(args, tenants, records):
    threads = [threading.Thread(target=run_client_sync, args=(args, t, i, records[i]), daemon=True)
               for i, t in enumerate(tenants)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {i for i, thread in enumerate(threads) if thread.is_alive()}


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
    parser.add_argument("--sync", action="store_true", help="the threaded socketio.Client (see above)")
    args = parser.parse_args()

    started = time.monotonic()
    tenants = [f"{args.prefix}-{i:02d}" for i in range(args.clients)]
    tenants += [f"{args.prefix}-shared"] * args.shared
    records = [{"tenant": t, "index": i, "pods": set(), "echoed": 0, "errors": [], "transport": None,
                "expected": contract_pod(t, args.replicas)} for i, t in enumerate(tenants)]
    cut = (run_all_sync if args.sync else run_all_async)(args, tenants, records)
    failed = 0
    by_pod = {}
    for i, record in enumerate(records):
        by_pod[record["expected"]] = by_pod.get(record["expected"], 0) + 1
        found = ["still running at the deadline"] if i in cut else problems(args, record)
        if found:
            failed += 1
            print(f"FAIL {record['tenant']}#{i}: {'; '.join(found)}", file=sys.stderr)
    print(json.dumps({
        "client": "python-socketio " + ("Client" if args.sync else "AsyncClient"),
        "version": importlib.metadata.version("python-socketio"),
        "mode": "polling+websocket",
        "clients": len(records),
        "tenants": len(set(tenants)),
        "passed": len(records) - failed,
        "failed": failed,
        "upgraded": sum(1 for r in records if r["transport"] == "websocket"),
        "echoes_acked": sum(r["echoed"] for r in records),
        "clients_by_pod": by_pod,
        "upgrades_by_pod": by_pod,
        "seconds": round(time.monotonic() - started, 3),
    }))
    # Daemon threads (--sync) still blocked on a socket must not hold the exit.
    sys.stdout.flush()
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
