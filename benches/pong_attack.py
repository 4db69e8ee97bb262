#!/usr/bin/env python3
"""The pong attack against a release build: with --ping-interval set, a client that holds
back its pong and sends a frame whose 64-bit length is 2^64 - 14 once made the router's
pong search spin its I/O thread for good (header + payload wrapped to 0).

Starts an echo backend and the router (one I/O thread, so the attacker and a bystander
share it) from BIN (default target/release), then:
  1. measures the router's CPU while idle (a bystander socket open, 5 s);
  2. the attacker opens a socket, waits for the router's ping, sends the frame, and
     reads what comes back (close 1002 expected), then closes;
  3. meanwhile the bystander echoes every 100 ms on the same thread;
  4. measures the router's CPU for 5 s after the attacker is gone.
Prints one JSON line; exits 1 if the attacker got no 1002, the bystander missed an echo,
or the router used more than 5% of a core after the attack. Loopback only; every wait
is bounded.

    python3 benches/pong_attack.py            # BIN=target/release
"""

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(os.environ.get("BIN", os.path.join(ROOT, "target", "release")))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=10.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never answered")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def ws(port, path):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b:
            raise SystemExit(f"{path}: closed before a 101")
        head += b
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"{path}: {head!r}")
    return s


def read_exact(s, n):
    out = b""
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            raise EOFError
        out += b
    return out


def read_frame(s):
    b0, b1 = read_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", read_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", read_exact(s, 8))[0]
    return b0, read_exact(s, n)


def masked_text(payload):
    key = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def echo(s, text):
    s.sendall(masked_text(text))
    while True:
        b0, p = read_frame(s)
        if b0 == 0x89:  # the router's ping: answer it, as a browser would
            key = os.urandom(4)
            s.sendall(bytes([0x8A, 0x80 | len(p)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(p)))
            continue
        if b0 == 0x81 and p == text:
            return


def main():
    tmp = tempfile.mkdtemp(prefix="wsrouter-pong-")
    procs = []
    try:
        subprocess.run([f"{BIN}/wsrouter", "cert", "--host", "localhost", "--out", tmp], check=True, capture_output=True)
        echo_port, port, admin = free_port(), free_port(), free_port()
        procs.append(subprocess.Popen([f"{BIN}/echo-backend", "--listen", f"127.0.0.1:{echo_port}", "--mode", "echo"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(echo_port)
        router = subprocess.Popen(
            [f"{BIN}/wsrouter", "--workers", "1", "serve", "--listen", f"127.0.0.1:{port}",
             "--admin-listen", f"127.0.0.1:{admin}", "--tls-cert", f"{tmp}/tls.crt", "--tls-key", f"{tmp}/tls.key",
             "--backend", f"127.0.0.1:{echo_port}", "--ping-interval", "1s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        procs.append(router)
        wait_port(port)
        bystander = ws(port, "/ws/bystander")
        echo(bystander, b"hello")
        c0 = cpu_seconds(router.pid)
        time.sleep(5)
        idle = (cpu_seconds(router.pid) - c0) / 5

        attacker = ws(port, "/ws/attacker")
        while read_frame(attacker)[0] != 0x89:
            pass
        attacker.sendall(bytes([0x82, 0xFF]) + struct.pack(">Q", 2**64 - 14) + os.urandom(4) + bytes(64))
        close_code = None
        try:
            while True:
                b0, p = read_frame(attacker)
                if b0 == 0x88:
                    close_code = struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None
                    break
        except (EOFError, OSError):
            pass
        echoes, missed = 0, 0
        for i in range(20):
            try:
                echo(bystander, f"during {i}".encode())
                echoes += 1
            except (OSError, EOFError):
                missed += 1
            time.sleep(0.1)
        attacker.close()
        c1 = cpu_seconds(router.pid)
        time.sleep(5)
        after = (cpu_seconds(router.pid) - c1) / 5
        echo(bystander, b"still here")
        report = {
            "attacker_close_code": close_code,
            "bystander_echoes": echoes,
            "bystander_missed": missed,
            "router_cpu_idle_cores": round(idle, 4),
            "router_cpu_after_attack_cores": round(after, 4),
        }
        print(json.dumps(report))
        ok = close_code == 1002 and missed == 0 and after < 0.05
        sys.exit(0 if ok else 1)
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
