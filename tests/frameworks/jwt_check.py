"""The router's `--auth jwt` door against tokens minted by an independent implementation:
PyJWT on `cryptography` keys made at run time, never the router's own crate. Run by
jwt.sh, which starts every process; this driver has four parts:

  keys     RSA 2048 (RS256, two keys), P-256 (ES256) and Ed25519 (EdDSA) keys, each with
           a kid, their public JWKs (kty/crv/x/y/n/e/kid, built from the key numbers) in
           a JWKS file, the private halves beside it; and a stranger: an RSA key that is
           not in the set but claims an RSA kid that is.
  relay    a TCP relay in front of each echo backend that counts the connections it
           accepts and keeps the first bytes each one sent towards the backend (the
           request heads the router wrote), served as JSON on a stats port.
  check    the cases (websocket-client, requests, the run's CA): tokens that open their
           tenant (101, the counter from the contract's pod, an echo), every way to be
           refused (status, WWW-Authenticate, and no new connection at any backend),
           what the pod is sent (claims header, no token), a socket ended with 1008 when
           its token expires.
  browser  headless Chromium (chromium.py): a `WebSocket` with the token in the query and
           in the bearer subprotocol opens and echoes; another tenant's token and none
           at all fire `error` and `close` without `open`.

`check` and `browser` append the tokens they sent to OUT/tokens.txt and the refusal
reasons the router must have counted to OUT/refusals.txt; jwt.sh then greps the router's
log for the tokens and compares /metrics. Exit status 1 on any mismatch; loopback only,
every wait bounded.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request

ISSUER = "https://id.test"
AUDIENCE = "wsrouter"
TENANT = "acme"
OTHER = "globex"
REPLICAS = 2
CLAIMS_HEADER = "x-wsrouter-claims"
BEARER_PROTOCOL = "base64url.bearer.authorization.k8s.io."
# How long a refused request is given to (wrongly) reach a backend before the relay's
# count is read.
SETTLE = 0.15
TIMEOUT = 10
# Bytes of each relayed connection kept (towards the backend): the heads and a little more.
CAPTURE = 64 * 1024

# (kid, algorithm, kind) of the keys in the set. Two RSA keys: a token without a kid is
# let in only when a single key fits its algorithm.
KEYS = [("rsa-1", "RS256", "rsa"), ("rsa-2", "RS256", "rsa"), ("ec-1", "ES256", "ec"),
        ("ed-1", "EdDSA", "ed")]
# Not in the set, but its tokens name rsa-1.
STRANGER = ("rsa-1", "RS256", "rsa")


def log(msg):
    print(f"[jwt {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Mismatch(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Mismatch(msg)


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- keys -------------------------------------------------------------------------------

def make_key(kind):
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(key, kid):
    """The public half as a JWK, from the key's numbers (not PyJWT's to_jwk)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        n = pub.public_numbers()
        as_bytes = lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big")
        return {"kty": "RSA", "kid": kid, "n": b64u(as_bytes(n.n)), "e": b64u(as_bytes(n.e))}
    if isinstance(pub, ec.EllipticCurvePublicKey):
        n = pub.public_numbers()
        return {"kty": "EC", "crv": "P-256", "kid": kid,
                "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}
    assert isinstance(pub, ed25519.Ed25519PublicKey)
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64u(raw)}


def cmd_keys(args):
    from cryptography.hazmat.primitives import serialization
    os.makedirs(args.dir, exist_ok=True)
    jwks = []
    for name, (kid, _alg, kind) in [(k[0], k) for k in KEYS] + [("stranger", STRANGER)]:
        key = make_key(kind)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path = os.path.join(args.dir, f"{name}.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        if name != "stranger":
            jwks.append(public_jwk(key, kid))
    tmp = args.jwks + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"keys": jwks}, f, indent=1)
    os.replace(tmp, args.jwks)
    log(f"JWKS {args.jwks}: {', '.join(k['kty'] + ':' + k['kid'] for k in jwks)} "
        f"(and a stranger RSA key claiming kid {STRANGER[0]})")
    return 0


# --- relay ------------------------------------------------------------------------------

async def relay_main(args):
    conns = {}  # backend name -> [bytearray of what each connection sent the backend]

    async def pipe(reader, writer, capture=None):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if capture is not None and len(capture) < CAPTURE:
                    capture.extend(data[:CAPTURE - len(capture)])
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            writer.close()

    def serve(name, target):
        async def handle(creader, cwriter):
            capture = bytearray()
            conns[name].append(capture)
            try:
                breader, bwriter = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", target), TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                cwriter.close()
                return
            await asyncio.gather(pipe(creader, bwriter, capture), pipe(breader, cwriter))
            for w in (bwriter, cwriter):
                w.close()
        return handle

    async def stats(reader, writer):
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            body = json.dumps({name: [c.decode("latin-1") for c in caps]
                               for name, caps in conns.items()}).encode()
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    servers = []
    for pair in args.pair:
        name, ports = pair.split("=")
        listen, target = (int(p) for p in ports.split(":"))
        conns[name] = []
        servers.append(await asyncio.start_server(serve(name, target), "127.0.0.1", listen))
        log(f"relay 127.0.0.1:{listen} -> 127.0.0.1:{target} ({name})")
    servers.append(await asyncio.start_server(stats, "127.0.0.1", args.stats_port))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def cmd_relay(args):
    try:
        asyncio.run(relay_main(args))
    except KeyboardInterrupt:
        pass
    return 0


# --- tokens -----------------------------------------------------------------------------

class Minter:
    """Signs with PyJWT (and by hand where PyJWT rightly refuses to)."""

    def __init__(self, key_dir):
        from cryptography.hazmat.primitives import serialization
        self.keys = {}
        for name in [kid for kid, _, _ in KEYS] + ["stranger"]:
            with open(os.path.join(key_dir, f"{name}.pem"), "rb") as f:
                self.keys[name] = serialization.load_pem_private_key(f.read(), password=None)
        self.alg = {kid: alg for kid, alg, _ in KEYS}
        self.alg["stranger"] = STRANGER[1]

    @staticmethod
    def claims(**over):
        now = int(time.time())
        c = {"iss": ISSUER, "aud": AUDIENCE, "sub": "jwt-check", "iat": now, "exp": now + 600,
             "tenant": TENANT}
        for k, v in over.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        return c

    def sign(self, key, claims, alg=None, kid="same"):
        """A token signed by `key` (a kid, or "stranger"); kid=None leaves it out."""
        import jwt
        headers = {}
        if kid == "same":
            kid = STRANGER[0] if key == "stranger" else key
        if kid is not None:
            headers["kid"] = kid
        return jwt.encode(claims, self.keys[key], algorithm=alg or self.alg[key], headers=headers)

    @staticmethod
    def unsigned(claims, kid):
        """`alg: none`, built by hand: header, payload, an empty signature."""
        head = b64u(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        return f"{head}.{b64u(json.dumps(claims).encode())}."

    def hs256_with_public_pem(self, claims, kid):
        """HS256 whose HMAC secret is the RSA key's public PEM: the classic confusion,
        which PyJWT refuses to sign, so built with hmac."""
        from cryptography.hazmat.primitives import serialization
        secret = self.keys[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        head = b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = b64u(json.dumps(claims).encode())
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64u(mac)}"


def record(out, name, lines):
    with open(os.path.join(out, name), "a") as f:
        for line in lines:
            f.write(f"{line}\n")


def route(wsrouter, ns):
    out = subprocess.run([wsrouter, "route", ns, "--replicas", str(REPLICAS), "--json"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    return json.loads(out)["pod"]


def relay_conns(stats_url):
    with urllib.request.urlopen(stats_url, timeout=5) as r:
        return json.load(r)


def relay_total(stats_url):
    return sum(len(c) for c in relay_conns(stats_url).values())


def header_values(head, name):
    out = []
    for line in head.split("\r\n")[1:]:
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == name:
            out.append(v.strip())
    return out


def challenge_ok(got, status, want):
    """`want`: None for the bare challenge (no token), else the error_description (401)
    or the error (403)."""
    if not got.startswith('Bearer realm="wsrouter"'):
        return False
    if want is None:
        return got == 'Bearer realm="wsrouter"'
    if status == 403:
        return f'error="{want}"' in got
    return 'error="invalid_token"' in got and f'error_description="{want}"' in got


# --- check ------------------------------------------------------------------------------

class Check:
    def __init__(self, args):
        self.args = args
        self.minter = Minter(args.keys)
        self.base = f"wss://localhost:{args.port}"
        self.https = f"https://localhost:{args.port}"
        self.stats = f"http://127.0.0.1:{args.relay_stats}/"
        self.pod = {ns: route(args.wsrouter, ns) for ns in (TENANT, OTHER)}
        self.tokens = []
        self.refusals = []
        # Tokens only ever sent in the query or the subprotocol: the pod must never see them.
        self.hidden = set()
        self.shown = set()
        self.cases = 0

    def note(self, token, hidden):
        if token not in self.tokens:
            self.tokens.append(token)
        (self.hidden if hidden else self.shown).add(token)

    def connect(self, path, headers=(), subprotocols=None, cookie=None):
        import websocket
        return websocket.create_connection(
            self.base + path, timeout=TIMEOUT, sslopt={"ca_certs": self.args.ca},
            header=list(headers), subprotocols=subprotocols, cookie=cookie)

    def opens(self, name, token, path, ns=TENANT, where="query", pod_path=None, claims=None,
              extra_headers=()):
        """A WebSocket let in: 101, the first counter from the contract's pod, an echo; the
        pod got one new connection, with the verified claims and without the token."""
        import websocket
        headers, subprotocols, cookie = list(extra_headers), None, None
        if where == "query":
            sep = "&" if "?" in path else "?"
            path = f"{path}{sep}access_token={token}"
        elif where == "bearer":
            headers.append(f"Authorization: Bearer {token}")
        elif where == "subprotocol":
            subprotocols = [BEARER_PROTOCOL + b64u(token.encode()), "chat"]
        elif where == "cookie":
            cookie = f"access_token={token}"
        self.note(token, hidden=where in ("query", "subprotocol"))
        before = relay_conns(self.stats)
        try:
            ws = self.connect(path, headers, subprotocols, cookie)
        except websocket.WebSocketBadStatusException as e:
            www = (e.resp_headers or {}).get("www-authenticate")
            raise Mismatch(f"{name}: want 101, got {e.status_code} (WWW-Authenticate: {www})")
        try:
            check(ws.getstatus() == 101, f"{name}: status {ws.getstatus()}")
            resp = json.dumps(ws.getheaders())
            check(token not in resp and "bearer.authorization" not in resp,
                  f"{name}: the 101 repeats the token or its subprotocol entry: {resp}")
            if where == "subprotocol":
                check(ws.getsubprotocol() == "chat",
                      f"{name}: subprotocol {ws.getsubprotocol()!r}, want chat (the pod's pick)")
            first = json.loads(ws.recv())
            check(first.get("ns") == ns and first.get("server") == self.pod[ns],
                  f"{name}: first message {first}, want ns {ns} from {self.pod[ns]}")
            msg = f"echo {name} {time.time()}"
            ws.send(msg)
            for _ in range(5):
                got = ws.recv()
                if got == msg:
                    break
            else:
                raise Mismatch(f"{name}: no echo of {msg!r}")
        finally:
            ws.close()
        after = relay_conns(self.stats)
        new = {pod: after[pod][len(before[pod]):] for pod in after}
        want_new = {pod: (1 if pod == self.pod[ns] else 0) for pod in after}
        check({p: len(c) for p, c in new.items()} == want_new,
              f"{name}: new backend connections {({p: len(c) for p, c in new.items()})}, want {want_new}")
        head = new[self.pod[ns]][0].split("\r\n\r\n", 1)[0]
        want_line = f"GET {pod_path or path.split('?access_token=')[0]} HTTP/1.1"
        check(head.startswith(want_line + "\r\n"),
              f"{name}: the pod got {head.splitlines()[0]!r}, want {want_line!r}")
        check("access_token" not in head.split("\r\n", 1)[0] and "bearer.authorization" not in head,
              f"{name}: the token's query parameter or subprotocol entry reached the pod")
        if where in ("query", "subprotocol"):
            check(token not in head, f"{name}: the token reached the pod")
        sent = header_values(head, CLAIMS_HEADER)
        check(len(sent) == 1, f"{name}: the pod got {len(sent)} {CLAIMS_HEADER} headers: {sent}")
        got_claims = json.loads(unb64u(sent[0]))
        if claims is not None:
            check(got_claims == claims,
                  f"{name}: {CLAIMS_HEADER} says {got_claims}, the token's claims are {claims}")
        self.cases += 1
        log(f"opened  {name}: 101 via {where}, echo from {self.pod[ns]}, the pod got "
            f"{want_line.split()[1]!r} and the claims (tenant {got_claims.get('tenant')!r})")
        return got_claims

    def refused(self, name, token, path, status, want, reason, where="query", headers=()):
        """A WebSocket turned away: status, challenge, no token in the answer, and no
        backend connection."""
        import websocket
        headers, subprotocols, cookie = list(headers), None, None
        if token is not None:
            if where == "query":
                sep = "&" if "?" in path else "?"
                path = f"{path}{sep}access_token={token}"
            elif where == "bearer":
                headers.append(f"Authorization: Bearer {token}")
            elif where == "subprotocol":
                subprotocols = [BEARER_PROTOCOL + b64u(token.encode()), "chat"]
            if token.count(".") == 2 and len(token) > 40:
                self.note(token, hidden=where in ("query", "subprotocol"))
        before = relay_total(self.stats)
        try:
            ws = self.connect(path, headers, subprotocols, cookie)
            ws.close()
            raise Mismatch(f"{name}: want {status}, the WebSocket opened")
        except websocket.WebSocketBadStatusException as e:
            got_status, resp, body = e.status_code, e.resp_headers or {}, e.resp_body or b""
        www = resp.get("www-authenticate", "")
        check(got_status == status and challenge_ok(www, status, want),
              f"{name}: want {status} with {want!r}, got {got_status} WWW-Authenticate: {www!r}")
        text = body.decode("utf-8", "replace")
        check((token is None or token not in text + json.dumps(resp)) and "eyJ" not in text,
              f"{name}: the answer repeats the token")
        time.sleep(SETTLE)
        after = relay_total(self.stats)
        check(after == before, f"{name}: refused, but {after - before} backend connection(s) opened")
        self.refusals.append(reason)
        self.cases += 1
        log(f"refused {name}: {got_status} {www}; no backend connection")

    def plain(self, name, token, path, status, want=None, reason=None, where="query"):
        """A plain HTTPS GET (requests): let in (the echo backend's JSON) or refused."""
        import requests
        headers = {}
        url = self.https + path
        if where == "query":
            url += ("&" if "?" in path else "?") + f"access_token={token}"
        else:
            headers["Authorization"] = f"Bearer {token}"
        self.note(token, hidden=where == "query")
        before = relay_total(self.stats)
        r = requests.get(url, headers=headers, verify=self.args.ca, timeout=TIMEOUT)
        www = r.headers.get("www-authenticate", "")
        check(token not in r.text and token not in json.dumps(dict(r.headers)),
              f"{name}: the answer repeats the token")
        if status == 200:
            check(r.status_code == 200, f"{name}: want 200, got {r.status_code} ({www!r}): {r.text[:200]}")
            body = r.json()
            ns = path.split("/")[2]
            want_path = path
            check(body.get("ns") == ns and body.get("server") == self.pod[ns]
                  and body.get("path") == want_path,
                  f"{name}: the backend answered {body}, want ns {ns} from {self.pod[ns]}, path {want_path}")
            log(f"plain   {name}: 200 from {body['server']}, the pod saw path {body['path']!r}")
        else:
            check(r.status_code == status and challenge_ok(www, status, want),
                  f"{name}: want {status} with {want!r}, got {r.status_code} WWW-Authenticate: {www!r}")
            time.sleep(SETTLE)
            after = relay_total(self.stats)
            check(after == before, f"{name}: refused, but {after - before} backend connection(s) opened")
            self.refusals.append(reason)
            log(f"plain   {name}: {r.status_code} {www}; no backend connection")
        self.cases += 1

    def expiring_socket(self):
        """A socket whose token expires in a few seconds, opened first; a thread waits
        (bounded) for its close frame while the other cases run."""
        import websocket
        exp = int(time.time()) + 4
        token = self.minter.sign("ec-1", self.minter.claims(exp=exp))
        self.note(token, hidden=True)
        ws = self.connect(f"/ws/{TENANT}?access_token={token}")
        first = json.loads(ws.recv())
        check(first.get("ns") == TENANT, f"expiring: first message {first}")
        ws.send("before expiry")
        check(ws.recv() == "before expiry", "expiring: no echo before expiry")
        seen = {}

        def watch():
            deadline = time.monotonic() + exp - time.time() + 15
            try:
                while time.monotonic() < deadline:
                    ws.settimeout(max(deadline - time.monotonic(), 0.1))
                    opcode, frame = ws.recv_data_frame(True)
                    if opcode == websocket.ABNF.OPCODE_CLOSE:
                        seen["at"] = time.time()
                        seen["code"] = (struct.unpack("!H", frame.data[:2])[0]
                                        if len(frame.data) >= 2 else None)
                        return
                    if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                        seen.setdefault("frames", []).append(frame.data[:80])
            except Exception as e:  # noqa: BLE001 -- reported by expiry_close
                seen["error"] = repr(e)
            finally:
                ws.close()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return thread, seen, exp

    def expiry_close(self, thread, seen, exp):
        thread.join(max(exp - time.time(), 0) + 20)
        check(not thread.is_alive() and "code" in seen,
              f"expiring: no close frame within 15 s of its exp ({seen})")
        check(seen["code"] == 1008, f"expiring: the socket ended with close code {seen['code']}, want 1008")
        # exp is whole seconds; the router reads its clock in whole seconds too.
        check(seen["at"] + 1 >= exp, f"expiring: closed at {seen['at']:.1f}, before its exp {exp}")
        check(not seen.get("frames"), f"expiring: unexpected frames before the close: {seen.get('frames')}")
        self.cases += 1
        log(f"expired socket: closed with 1008 at exp{seen['at'] - exp:+.1f} s (PyJWT exp {exp})")

    def run(self):
        m = self.minter
        c = m.claims
        expiring = self.expiring_socket()
        acme = f"/ws/{TENANT}"
        rs = m.sign("rsa-1", c())
        log(f"contract: {TENANT} -> {self.pod[TENANT]}, {OTHER} -> {self.pod[OTHER]}")

        # Let in: each algorithm, each place a token goes, the tenant claim's forms.
        self.opens("RS256 query", rs, acme + "?room=7", pod_path=acme + "?room=7", claims=None)
        es_claims = c()
        self.opens("ES256 query", m.sign("ec-1", es_claims), acme, claims=es_claims)
        ed_claims = c()
        self.opens("EdDSA query", m.sign("ed-1", ed_claims), acme, claims=ed_claims)
        self.opens("PS256 (RSA key) query", m.sign("rsa-1", c(), alg="PS256"), acme)
        self.opens("RS256 second RSA key", m.sign("rsa-2", c()), acme)
        self.opens("RS256 Authorization: Bearer", rs, acme, where="bearer")
        self.opens("ES256 bearer subprotocol", m.sign("ec-1", c()), acme, where="subprotocol")
        self.opens("EdDSA access_token cookie", m.sign("ed-1", c()), acme, where="cookie")
        self.opens("tenant list holding acme", m.sign("rsa-1", c(tenant=[OTHER, TENANT])), acme)
        self.opens("tenant wildcard *", m.sign("ed-1", c(tenant="*")), acme)
        self.opens("ES256 without kid (one P-256 key)", m.sign("ec-1", c(), kid=None), acme)
        self.opens(f"{OTHER} token on /ws/{OTHER}", m.sign("ec-1", c(tenant=OTHER)),
                   f"/ws/{OTHER}/room", ns=OTHER)
        forged_claims = c()
        got = self.opens("forged claims header", m.sign("rsa-1", forged_claims), acme,
                         claims=forged_claims,
                         extra_headers=[f"X-Wsrouter-Claims: {b64u(json.dumps(c(tenant='*')).encode())}"])
        check(got.get("tenant") == TENANT, "forged claims header: the pod got the client's copy")

        # Turned away.
        now = int(time.time())
        self.refused("no token", None, acme, 401, None, "missing")
        self.refused("expired", m.sign("ec-1", c(exp=now - 3600, iat=now - 7200)), acme, 401,
                     "token expired", "expired")
        self.refused("expired (Authorization)", m.sign("rsa-1", c(exp=now - 120)), acme, 401,
                     "token expired", "expired", where="bearer")
        self.refused("not yet valid (nbf)", m.sign("ed-1", c(nbf=now + 3600)), acme, 401,
                     "token not yet valid", "not_yet_valid")
        self.refused("wrong issuer", m.sign("rsa-1", c(iss="https://evil.test")), acme, 401,
                     "issuer not accepted", "issuer")
        self.refused("no issuer", m.sign("ec-1", c(iss=None)), acme, 401,
                     "issuer not accepted", "issuer")
        self.refused("wrong audience", m.sign("ec-1", c(aud="someone-else")), acme, 401,
                     "audience not accepted", "audience")
        self.refused("no exp", m.sign("ed-1", c(exp=None)), acme, 401, "malformed token", "malformed")
        self.refused("stranger key, kid rsa-1", m.sign("stranger", c()), acme, 401,
                     "bad signature", "signature")
        good = m.sign("ed-1", c())
        head, body, sig = good.split(".")
        raw = bytearray(unb64u(sig))
        raw[len(raw) // 2] ^= 0x01
        self.refused("EdDSA signature altered", f"{head}.{body}.{b64u(bytes(raw))}", acme, 401,
                     "bad signature", "signature")
        self.refused("claims altered (tenant *)",
                     f"{head}.{b64u(json.dumps(c(tenant='*')).encode())}.{sig}", acme, 401,
                     "bad signature", "signature")
        self.refused("alg none", m.unsigned(c(), "rsa-1"), acme, 401, "algorithm refused", "algorithm")
        self.refused("HS256 keyed with the RSA public PEM", m.hs256_with_public_pem(c(), "rsa-1"),
                     acme, 401, "algorithm refused", "algorithm")
        self.refused("unknown kid", m.sign("ec-1", c(), kid="nobody"), acme, 401, "unknown key",
                     "unknown_key")
        self.refused("ES256 naming the Ed25519 key's kid", m.sign("ec-1", c(), kid="ed-1"), acme,
                     401, "unknown key", "unknown_key")
        self.refused("RS256 without kid (two RSA keys)", m.sign("rsa-1", c(), kid=None), acme, 401,
                     "unknown key", "no_kid")
        self.refused("not a token", "not.a.token", acme, 401, "malformed token", "malformed")
        self.refused(f"{OTHER} token on /ws/{TENANT}", m.sign("rsa-1", c(tenant=OTHER)), acme,
                     403, "insufficient_scope", "wrong_tenant")
        self.refused("tenant list without acme", m.sign("ec-1", c(tenant=[OTHER, "initech"])), acme,
                     403, "insufficient_scope", "wrong_tenant")
        self.refused("tenant prefix acm", m.sign("ed-1", c(tenant="acm")), acme, 403,
                     "insufficient_scope", "wrong_tenant")
        self.refused("no tenant claim", m.sign("rsa-1", c(tenant=None)), acme, 403,
                     "insufficient_scope", "no_tenant_claim")
        self.refused(f"{TENANT} token on /ws/{OTHER}", rs, f"/ws/{OTHER}", 403,
                     "insufficient_scope", "wrong_tenant", where="bearer")
        # First found wins: Authorization (expired) before the query (good).
        behind = m.sign("ec-1", c())
        self.note(behind, hidden=True)
        self.refused("expired Authorization before a good access_token",
                     m.sign("ec-1", c(exp=now - 3600)), f"{acme}?access_token={behind}",
                     401, "token expired", "expired", where="bearer")

        # Plain requests are checked the same way.
        self.plain("GET good token", m.sign("rsa-1", c()), f"{acme}/some/path", 200)
        self.plain("GET good token, Authorization", m.sign("ed-1", c()), f"{acme}/some/path?x=1", 200,
                   where="bearer")
        self.plain("GET expired token", m.sign("ec-1", c(exp=now - 3600)), f"{acme}/some/path", 401,
                   "token expired", "expired")
        self.plain("GET bad signature", m.sign("stranger", c()), f"{acme}/some/path", 401,
                   "bad signature", "signature", where="bearer")
        self.plain(f"GET {OTHER} token", m.sign("ec-1", c(tenant=OTHER)), f"{acme}/some/path", 403,
                   "insufficient_scope", "wrong_tenant")

        self.expiry_close(*expiring)

        # The pod never saw a token sent only in the query or the subprotocol.
        seen = "".join(cap for caps in relay_conns(self.stats).values() for cap in caps)
        leaked = [t for t in self.hidden - self.shown if t in seen]
        check(not leaked, f"{len(leaked)} token(s) sent in the query or subprotocol reached a pod")
        log(f"{self.cases} cases; no token sent in the query or the subprotocol reached a pod "
            f"({len(self.hidden - self.shown)} checked)")


def cmd_check(args):
    run = Check(args)
    try:
        run.run()
    except Mismatch as e:
        log(f"FAIL: {e}")
        return 1
    finally:
        record(args.out, "tokens.txt", run.tokens)
        record(args.out, "refusals.txt", run.refusals)
    return 0


# --- browser ----------------------------------------------------------------------------

# Opens one WebSocket per case and records what the page saw: open, messages, error,
# close code, the subprotocol. The subprotocol entry is the README's recipe.
BROWSER_JS = """(() => {
  const rec = window.wsRec = {};
  const b64url = (s) => btoa(s).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  for (const c of %s) {
    const r = rec[c.name] = { opened: false, messages: [], error: false, code: null,
                              protocol: null, done: false };
    const ws = c.subprotocol
      ? new WebSocket(c.url, ["chat", "base64url.bearer.authorization.k8s.io." + b64url(c.subprotocol)])
      : new WebSocket(c.url);
    ws.onopen = () => { r.opened = true; r.protocol = ws.protocol; ws.send(c.send); };
    // Closed once it has both the echo and the pod's first counter, whichever came first.
    ws.onmessage = (e) => {
      r.messages.push(e.data);
      if (r.messages.includes(c.send) && r.messages.some((m) => m.startsWith("{"))) ws.close(1000, "done");
    };
    ws.onerror = () => { r.error = true; };
    ws.onclose = (e) => { r.code = e.code; r.done = true; };
  }
  return true;
})()"""


def cmd_browser(args):
    from chromium import BrowserError, Chromium
    # jwt.sh's `timeout` sends SIGTERM: close Chromium on the way out, not leave it behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    m = Minter(args.keys)
    pod = route(args.wsrouter, TENANT)
    stats = f"http://127.0.0.1:{args.relay_stats}/"
    base = f"wss://localhost:{args.port}/ws/{TENANT}"
    query_token = m.sign("ed-1", m.claims())
    proto_token = m.sign("rsa-1", m.claims())
    other_token = m.sign("ec-1", m.claims(tenant=OTHER))
    cases = [
        {"name": "query", "url": f"{base}?access_token={query_token}", "send": "hello from chromium"},
        {"name": "subprotocol", "url": base, "subprotocol": proto_token, "send": "hello again"},
        {"name": "other tenant", "url": f"{base}?access_token={other_token}", "send": "x"},
        {"name": "no token", "url": base, "send": "x"},
    ]
    tokens = [query_token, proto_token, other_token]
    refusals = ["wrong_tenant", "missing"]
    browser = None
    try:
        before = relay_total(stats)
        browser = Chromium(args.chromium_log)
        browser.call("Network.enable")
        browser.evaluate(BROWSER_JS % json.dumps(cases))
        browser.wait_for("Object.values(window.wsRec).every((r) => r.done)", 30,
                         "every WebSocket in the page closed")
        rec = browser.evaluate("window.wsRec")
        for name, send in (("query", cases[0]["send"]), ("subprotocol", cases[1]["send"])):
            r = rec[name]
            check(r["opened"] and not r["error"] and r["code"] == 1000,
                  f"browser {name}: opened {r['opened']}, error {r['error']}, close {r['code']}")
            # The pod's first counter and the echo race each other: take the counter
            # wherever it is.
            first = next((json.loads(x) for x in r["messages"] if x.startswith("{")), {})
            check(first.get("ns") == TENANT and first.get("server") == pod and send in r["messages"],
                  f"browser {name}: messages {r['messages']}, want a counter from {pod} and the echo")
            if name == "subprotocol":
                check(r["protocol"] == "chat", f"browser subprotocol: ws.protocol {r['protocol']!r}")
            log(f"browser {name}: open, counter from {first['server']}, echo {send!r}, closed 1000"
                + (", protocol chat" if name == "subprotocol" else ""))
        for name in ("other tenant", "no token"):
            r = rec[name]
            check(not r["opened"] and r["error"] and r["code"] == 1006,
                  f"browser {name}: opened {r['opened']}, error {r['error']}, close {r['code']}")
            log(f"browser {name}: error and close {r['code']} without open")
        statuses = sorted(ev["params"]["response"]["status"] for ev in browser.events
                          if ev["method"] == "Network.webSocketHandshakeResponseReceived")
        log(f"browser: handshake statuses DevTools reported {statuses}")
        check(statuses.count(101) == 2, f"browser: want two 101 handshakes, DevTools saw {statuses}")
        after = relay_total(stats)
        check(after - before == 2, f"browser: {after - before} backend connections, want 2")
    except (Mismatch, BrowserError) as e:
        log(f"FAIL: {e}")
        return 1
    finally:
        if browser is not None:
            browser.close()
        record(args.out, "tokens.txt", tokens)
        record(args.out, "refusals.txt", refusals)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keys")
    k.add_argument("--dir", required=True)
    k.add_argument("--jwks", required=True)
    r = sub.add_parser("relay")
    r.add_argument("--stats-port", type=int, required=True)
    r.add_argument("--pair", action="append", required=True, help="NAME=LISTEN_PORT:TARGET_PORT")
    for name in ("check", "browser"):
        c = sub.add_parser(name)
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--relay-stats", type=int, required=True)
        c.add_argument("--keys", required=True)
        c.add_argument("--wsrouter", required=True)
        c.add_argument("--out", required=True)
        if name == "check":
            c.add_argument("--ca", required=True)
        else:
            c.add_argument("--chromium-log", required=True)
    args = ap.parse_args()
    return {"keys": cmd_keys, "relay": cmd_relay, "check": cmd_check, "browser": cmd_browser}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
