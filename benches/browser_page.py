"""Reads `wsrouter dev`'s page in headless Chromium (benches/browser.sh): waits, bounded,
until every tenant card shows a counter from its WebSocket and an event from its
EventSource, then prints {tenant: {"socket": pod, "events": pod}} as JSON. Driven over
the DevTools protocol (tests/frameworks/chromium.py), not --virtual-time-budget: an open
EventSource is a pending fetch, which stops virtual time.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "frameworks"))

from chromium import BrowserError, Chromium  # noqa: E402

CARDS = """[...document.querySelectorAll('.card')].map((c) => [
  c.querySelector('h2').textContent, c.dataset.backend || null, c.dataset.sseBackend || null])"""


def main():
    url, tenants, chromium_log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    browser = Chromium(chromium_log)
    try:
        browser.call("Page.navigate", {"url": url})
        try:
            browser.wait_for(
                f"(() => {{ const c = {CARDS}; return c.length === {tenants} && c.every((e) => e[1] && e[2]); }})()",
                30, "every card showing a counter and an event")
        except BrowserError as e:
            print(f"{e}", file=sys.stderr)
        cards = browser.evaluate(CARDS)
    finally:
        browser.close()
    print(json.dumps({t: {"socket": s, "events": e} for t, s, e in cards}))


if __name__ == "__main__":
    main()
