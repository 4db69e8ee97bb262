"""Headless Chromium driven over the DevTools protocol (websocket-client, pinned in
requirements.txt), for the tests that need a real browser's state while it runs: its
page is read with Runtime.evaluate in bounded polls, its network events are kept. Unlike
`--virtual-time-budget`, this works with an EventSource open (a pending fetch stops
virtual time, so such a page never finishes). Loopback only; every wait is bounded.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import websocket

START_TIMEOUT = 30.0
CALL_TIMEOUT = 15.0


class BrowserError(Exception):
    pass


class Chromium:
    """One headless Chromium with one page, its DevTools session, and every event it sent."""

    def __init__(self, log_path):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if not binary:
            raise BrowserError("no chromium on PATH")
        self.profile = tempfile.mkdtemp(prefix="wsrouter-chromium-")
        self.log = open(log_path, "ab")
        # --no-sandbox: CI runs as root in a container. Port 0: Chromium picks one and
        # writes it to DevToolsActivePort in the profile.
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--ignore-certificate-errors", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.events = []
        self.next_id = 0
        self.ws = None
        try:
            self._attach()
        except Exception:
            self.close()
            raise

    def _attach(self):
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + START_TIMEOUT
        port = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode}")
            try:
                with open(port_file) as f:
                    port = int(f.readline().strip())
                break
            except (OSError, ValueError):
                time.sleep(0.1)
        if port is None:
            raise BrowserError(f"chromium wrote no DevTools port in {START_TIMEOUT:.0f} s")
        page = None
        while time.monotonic() < deadline and page is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                page = next((t for t in json.load(r) if t.get("type") == "page"), None)
            if page is None:
                time.sleep(0.1)
        if page is None:
            raise BrowserError("chromium shows no page target")
        # No Origin header: DevTools refuses origins it was not told to allow.
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=CALL_TIMEOUT, suppress_origin=True)

    def call(self, method, params=None, timeout=CALL_TIMEOUT):
        """A DevTools command's result; events that arrive meanwhile are kept."""
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"{method}: no answer in {timeout:.0f} s")
            self.ws.settimeout(left)
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mine:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (JSON-able), or an error."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression[:60]}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression, timeout, what):
        """Polls `expression` until it is truthy (then returns it), at most `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{what}: not within {timeout:.0f} s")
            time.sleep(0.1)

    def close(self):
        try:
            if self.ws is not None:
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.log.close()
            shutil.rmtree(self.profile, ignore_errors=True)
