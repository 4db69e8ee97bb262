"""Headless Chromium's EventSource through `wsrouter dev` (run by sse_browser.sh).

1. The dev page's SSE cards each show events from the pod `wsrouter route` names.
2. An EventSource on TENANT receives 100 events, ids 0..99 in order, from its pod, on one
   connection, across a table swap that moves another tenant (OTHER) only.
3. A swap that moves TENANT: the router ends the stream (the request finishes, not
   fails), the EventSource reconnects once with Last-Event-ID, and the new pod (the one
   `wsrouter route` names under the new overrides) resumes the ids where the old stopped.
   The page's card for TENANT follows it.

Exit status 1 on any mismatch. Every wait is bounded.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

from chromium import BrowserError, Chromium

PAGE_TENANTS = ["ns-01", "ns-02", "acme-prod", "demo-4"]
TENANT = "acme-prod"
OTHER = "ns-02"
REPLICAS = 4


def log(msg):
    print(f"[sse-browser {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Mismatch(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Mismatch(msg)


class Run:
    def __init__(self, args):
        self.args = args

    def route(self, ns):
        """The pod the routing contract names for `ns` under the overrides file now."""
        out = subprocess.run(
            [self.args.wsrouter, "route", ns, "--replicas", str(REPLICAS),
             "--overrides", self.args.overrides, "--json"],
            check=True, capture_output=True, text=True, timeout=30).stdout
        return json.loads(out)["pod"]

    def table_version(self):
        with urllib.request.urlopen(f"{self.args.admin}/table", timeout=5) as r:
            return json.load(r)["version"]

    def write_overrides(self, data):
        """The manifest, renamed over the watched file as an editor saves it."""
        lines = "".join(f"  {k}: {v}\n" for k, v in data.items())
        text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wsrouter-overrides\n"
        text += f"data:\n{lines}" if data else "data: {}\n"
        tmp = self.args.overrides + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.args.overrides)

    def swap(self, data, what):
        """Writes the overrides and waits (bounded) until the router's table has them."""
        before = self.table_version()
        self.write_overrides(data)
        deadline = time.monotonic() + 15
        while self.table_version() == before:
            if time.monotonic() > deadline:
                raise Mismatch(f"{what}: the router's table is still version {before} after 15 s")
            time.sleep(0.05)
        log(f"{what}: table version {before} -> {self.table_version()}")

    def events_url(self, ns):
        """The test's own stream: `from=test` tells its requests from the page's card's."""
        prefix, mode = self.args.prefix, self.args.tenant_from
        if mode.startswith("query:"):
            return f"{prefix}events?{mode[6:]}={ns}&from=test"
        return f"{prefix}{ns}/events?from=test"


# What the test's own EventSource records in the page: every event's id, pod, counter
# and tenant; opens; errors with the readyState each left.
RECORDER = """(() => {
  const rec = window.sseRec = { events: [], opens: 0, errors: [] };
  const es = window.sseSource = new EventSource(%s);
  es.onopen = () => { rec.opens += 1; };
  es.onerror = () => { rec.errors.push(es.readyState); };
  es.onmessage = (e) => {
    const c = JSON.parse(e.data);
    rec.events.push([e.lastEventId, c.server, c.counter, c.ns]);
  };
  return true;
})()"""


def card_pods(browser):
    return browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('.card')].map((c) =>"
        " [c.querySelector('h2').textContent, c.dataset.sseBackend || null]))")


def check_page(run, browser):
    """Point 1: every card's EventSource shows events from its tenant's pod."""
    want = {ns: run.route(ns) for ns in PAGE_TENANTS}
    expr = ("(() => { const c = [...document.querySelectorAll('.card')];"
            " return c.length === 4 && c.every((e) => e.dataset.sseBackend); })()")
    browser.wait_for(expr, 20, "every dev page card showing an SSE event")
    got = card_pods(browser)
    check(got == want, f"the page's SSE cards show {got}, the contract says {want}")
    log(f"dev page: every card's event stream from its contract pod {want}")


def recorded(browser):
    return browser.evaluate("window.sseRec")


def wait_events(browser, n, timeout, what):
    browser.wait_for(f"window.sseRec.events.length >= {n}", timeout, what)
    return recorded(browser)


def check_ids(events, first=0):
    ids = [int(e[0]) for e in events]
    want = list(range(first, first + len(ids)))
    if ids != want:
        bad = next(i for i, (a, b) in enumerate(zip(ids, want)) if a != b)
        raise Mismatch(f"ids not consecutive at event {bad}: ...{ids[max(0, bad - 3):bad + 3]}...")
    for e in events:
        check(int(e[0]) == e[2] and e[3] == TENANT, f"event {e} is not {TENANT}'s counter {e[0]}")


def phase_keep(run, browser, pod, per_event):
    """Point 2: 100 events across a swap that moves OTHER only, on one connection."""
    wait_events(browser, 20, 20 + 20 * per_event, "20 events")
    other_was = run.route(OTHER)
    other_to = f"backend-{(int(other_was.split('-')[1]) + 1) % REPLICAS}"
    run.swap({OTHER: other_to}, f"{OTHER} {other_was} -> {other_to}")
    at_swap = len(recorded(browser)["events"])
    check(run.route(OTHER) == other_to and run.route(TENANT) == pod,
          "the contract disagrees with the overrides written")
    check(at_swap < 90, f"the swap was seen only after {at_swap} events: not across the 100")
    rec = wait_events(browser, 100, 20 + 100 * per_event, "100 events")
    events = rec["events"][:100]
    check_ids(events)
    servers = sorted({e[1] for e in events})
    check(servers == [pod], f"{TENANT}'s events came from {servers}, the contract says {pod}")
    check(rec["opens"] == 1 and rec["errors"] == [],
          f"the EventSource reconnected across a swap that did not move it: {rec['opens']} opens, errors {rec['errors']}")
    log(f"{TENANT}: 100 events (ids 0..99) from {pod} on one connection, the swap (at event {at_swap}) moved {OTHER} only")
    return {OTHER: other_to}


def event_source_requests(browser):
    """The test's EventSource requests, in order, with how each ended."""
    reqs, ends, extra = {}, {}, {}
    for ev in browser.events:
        p = ev.get("params", {})
        rid = p.get("requestId")
        if ev["method"] == "Network.requestWillBeSent" and p.get("type") == "EventSource":
            reqs.setdefault(rid, p["request"])
        elif ev["method"] == "Network.requestWillBeSentExtraInfo":
            extra[rid] = p.get("headers", {})
        elif ev["method"] in ("Network.loadingFinished", "Network.loadingFailed"):
            ends[rid] = (ev["method"].split(".")[1], p.get("errorText"))
    out = []
    for rid, req in reqs.items():
        if "from=test" not in req["url"]:
            continue
        headers = {k.lower(): v for k, v in {**req.get("headers", {}), **extra.get(rid, {})}.items()}
        out.append({"url": req["url"], "last_event_id": headers.get("last-event-id"),
                    "end": ends.get(rid)})
    return out


def phase_move(run, browser, pod, overrides, per_event, grace):
    """Point 3: the tenant moves; the stream ends cleanly and resumes on the new pod."""
    new_pod = f"backend-{(int(pod.split('-')[1]) + 2) % REPLICAS}"
    before = recorded(browser)
    last = int(before["events"][-1][0])
    run.swap({**overrides, TENANT: new_pod}, f"{TENANT} {pod} -> {new_pod}")
    check(run.route(TENANT) == new_pod, f"the contract does not route {TENANT} to {new_pod}")
    browser.wait_for(
        f"window.sseRec.events.some((e) => e[1] === '{new_pod}')", grace + 20,
        f"an event from {new_pod}")
    n = len(recorded(browser)["events"])
    rec = wait_events(browser, n + 20, 20 + 20 * per_event, "20 events after the move")
    events = rec["events"]
    check_ids(events)
    switch = next(i for i, e in enumerate(events) if e[1] == new_pod)
    old_side = sorted({e[1] for e in events[:switch]})
    new_side = sorted({e[1] for e in events[switch:]})
    check(old_side == [pod] and new_side == [new_pod],
          f"events before the reconnect from {old_side}, after from {new_side}: want {pod} then {new_pod}")
    check(switch > last, f"the stream ended at event {switch - 1}, before the swap (last id then {last})")
    check(rec["opens"] == 2 and rec["errors"] == [0],
          f"want one reconnect (2 opens, one error while CONNECTING): {rec['opens']} opens, errors {rec['errors']}")
    reqs = event_source_requests(browser)
    check(len(reqs) == 2, f"want 2 EventSource requests for {TENANT}, saw {reqs}")
    check(reqs[0]["end"] == ("loadingFinished", None),
          f"the first stream did not end cleanly: {reqs[0]['end']}")
    check(reqs[1]["last_event_id"] == str(switch - 1),
          f"the reconnect sent Last-Event-ID {reqs[1]['last_event_id']!r}, want {switch - 1}")
    log(f"{TENANT}: the router ended the stream cleanly after id {switch - 1}; the EventSource "
        f"reconnected with Last-Event-ID {switch - 1} to {new_pod} (the contract's), ids consecutive "
        f"through {events[-1][0]}")
    browser.wait_for(
        f"document.querySelectorAll('.card')[{PAGE_TENANTS.index(TENANT)}].dataset.sseBackend === '{new_pod}'",
        10, f"the dev page's {TENANT} card showing {new_pod}")
    log(f"dev page: the {TENANT} card's event stream now from {new_pod}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--page", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--overrides", required=True)
    ap.add_argument("--wsrouter", required=True)
    ap.add_argument("--tenant-from", default="path")
    ap.add_argument("--prefix", default="/ws/")
    ap.add_argument("--interval-ms", type=int, required=True)
    ap.add_argument("--grace-s", type=float, required=True)
    ap.add_argument("--chromium-log", required=True)
    args = ap.parse_args()
    run = Run(args)
    per_event = args.interval_ms / 1000
    browser = Chromium(args.chromium_log)
    try:
        browser.call("Network.enable")
        browser.call("Page.navigate", {"url": args.page})
        check_page(run, browser)
        pod = run.route(TENANT)
        browser.evaluate(RECORDER % json.dumps(run.events_url(TENANT)))
        overrides = phase_keep(run, browser, pod, per_event)
        phase_move(run, browser, pod, overrides, per_event, args.grace_s)
    except (Mismatch, BrowserError) as e:
        log(f"FAIL: {e}")
        return 1
    finally:
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
