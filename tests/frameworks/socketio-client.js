#!/usr/bin/env node
// Socket.IO clients through the router (tests/frameworks/socketio.sh): the real
// `socket.io-client` (package.json pins it), default transports, so each client starts
// with HTTP long-polling (plain requests the router forwards) and then upgrades to a
// WebSocket (which the router relays). Every request of one client carries its tenant in
// the query (`?tenant=`), so with `--tenant-from query:tenant` they must all reach the one
// pod that holds the client's engine.io session: the pod `wsrouter route` names.
//
//   node socketio-client.js --url https://127.0.0.1:18543 [--clients 50] [--shared 10]
//       [--echoes 100] [--replicas 4] [--h2] [--polling-only] [--idle-ms MS]
//       [--prefix sio] [--timeout-ms 60000]
//
// --clients N: N clients with distinct tenants PREFIX-00..; --shared K: K more clients on
// one tenant (PREFIX-shared). Each waits for `hello`, for the upgrade to WebSocket, then
// sends --echoes `echo` events one after another, each ack checked (payload back, pod name).
// --polling-only: no upgrade (a client whose WebSocket is blocked somewhere stays on
// long-polling), and --idle-ms: a pause after `hello` before the echoes, during which the
// client's long-poll GET is held by the pod (up to its pingInterval, 25 s), as it is for
// any quiet polling client; the router must let that response take its time.
// --h2: polling over engine.io-client's Fetch transport with undici's fetch and an
// `allowH2` Agent, so the router (which offers h2 by ALPN) serves the polling as HTTP/2.
// The expected pod comes from `$BIN/wsrouter route TENANT --replicas R --json`.
// Prints one JSON summary line on stdout; exit status 1 on any mismatch or timeout.
"use strict";

const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const { isDeepStrictEqual } = require("node:util");
const { io } = require("socket.io-client");

function parseArgs(argv) {
  const out = {
    url: "", path: "/ws/socket.io/", clients: 50, shared: 10, echoes: 100, replicas: 4,
    h2: false, "polling-only": false, "idle-ms": 0, prefix: "sio", "timeout-ms": 60000,
  };
  for (let i = 2; i < argv.length; i += 1) {
    const key = argv[i].replace(/^--/, "");
    if (key === "h2" || key === "polling-only") {
      out[key] = true;
      continue;
    }
    if (!(key in out) || argv[i + 1] === undefined) usage(`bad argument ${argv[i]}`);
    const value = argv[++i];
    out[key] = typeof out[key] === "number" ? Number(value) : value;
  }
  if (!out.url) usage("--url is required");
  return out;
}

function usage(why) {
  console.error(`socketio-client.js: ${why}`);
  console.error("usage: socketio-client.js --url URL [--path P] [--clients N] [--shared K] [--echoes E] [--replicas R] [--h2] [--prefix S] [--timeout-ms MS]");
  process.exit(2);
}

const opts = parseArgs(process.argv);
const BIN = process.env.BIN || path.resolve(__dirname, "../../target/debug");
const ca = process.env.FW_CA ? fs.readFileSync(process.env.FW_CA) : undefined;

// The routing contract's answer for a tenant, from the binary under test.
const contractCache = new Map();
function contractPod(tenant) {
  if (!contractCache.has(tenant)) {
    const out = execFileSync(path.join(BIN, "wsrouter"), ["route", tenant, "--replicas", String(opts.replicas), "--json"]);
    contractCache.set(tenant, JSON.parse(out.toString()).pod);
  }
  return contractCache.get(tenant);
}

// The transports: default (XHR polling, then `ws`), or for --h2 the Fetch transport on
// undici's fetch (global `fetch` is read at call time by engine.io-client) with an Agent
// that negotiates h2 and trusts the run's CA.
function transportOptions() {
  if (opts["polling-only"] && !opts.h2) return { transports: ["polling"], upgrade: false };
  if (!opts.h2) return {};
  const undici = require("undici");
  // NodeWebSocket (the `ws` package): the plain `WebSocket` export wants a global
  // WebSocket, which node 20 does not have.
  const { Fetch, NodeWebSocket } = require("engine.io-client");
  undici.setGlobalDispatcher(new undici.Agent({ allowH2: true, connect: { ca } }));
  globalThis.fetch = undici.fetch;
  globalThis.Headers = undici.Headers;
  if (opts["polling-only"]) return { transports: [Fetch], upgrade: false };
  return { transports: [Fetch, NodeWebSocket] };
}
const transports = transportOptions();

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// A transport error carries the HTTP status (or the cause) in `description`; for the XHR
// transport a network failure is status 0 with the node error in the request's statusText.
function transportError(err) {
  const parts = [err.message];
  const d = err.description;
  if (d !== undefined) parts.push(d instanceof Error ? d.message : String(d));
  const ctx = err.context;
  if (ctx && ctx.statusText instanceof Error) parts.push(`${ctx.statusText.code || ""} ${ctx.statusText.message}`.trim());
  return parts.join(": ");
}

// One client: connect, hello, upgrade, echoes. Resolves to its record; never rejects.
async function runClient(tenant, index) {
  const record = { tenant, index, expected: contractPod(tenant), pods: new Set(), echoed: 0, upgraded: false, errors: [] };
  const socket = io(opts.url, {
    path: opts.path,
    query: { tenant },
    forceNew: true, // one engine per client: io() would otherwise share one per URL
    reconnection: false, // a drop is a failure here, not something to paper over
    timeout: 10000,
    ca,
    ...transports,
  });
  const engine = socket.io.engine;
  // The engine opens its first transport at once: polling, unless something is wrong.
  record.firstTransport = engine.transport && engine.transport.name;
  const upgraded = new Promise((resolve) => engine.once("upgrade", (t) => resolve(t.name)));
  const hello = new Promise((resolve) => socket.once("hello", resolve));
  const connected = new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", (err) => reject(new Error(`connect_error: ${transportError(err)}`)));
  });
  socket.on("disconnect", (reason, details) => {
    if (record.done) return;
    record.errors.push(`disconnect before the end: ${reason}${details && details.message ? ` (${transportError(details)})` : ""}`);
  });
  try {
    await withTimeout(connected, 15000, `${tenant} connect`);
    const h = await withTimeout(hello, 10000, `${tenant} hello`);
    record.pods.add(h.server);
    if (!opts["polling-only"]) {
      const transportName = await withTimeout(upgraded, 15000, `${tenant} upgrade`);
      record.upgraded = transportName === "websocket" && engine.transport.name === "websocket";
    }
    if (opts["idle-ms"] > 0) {
      // The scenario itself (a quiet client), not a wait for anything to be ready.
      await new Promise((resolve) => setTimeout(resolve, opts["idle-ms"]));
    }
    for (let i = 0; i < opts.echoes; i += 1) {
      const payload = { tenant, i, text: `echo ${i} from ${tenant}#${index}` };
      const ack = await socket.timeout(5000).emitWithAck("echo", payload);
      record.pods.add(ack.server);
      if (!isDeepStrictEqual(ack.payload, payload)) {
        record.errors.push(`echo ${i}: payload came back as ${JSON.stringify(ack.payload)}`);
        break;
      }
      record.echoed += 1;
    }
    record.finalTransport = engine.transport.name;
  } catch (err) {
    record.errors.push(err.message);
  } finally {
    record.done = true;
    socket.disconnect();
  }
  return record;
}

function check(record) {
  const problems = [...record.errors];
  const pods = [...record.pods];
  if (pods.length !== 1 || pods[0] !== record.expected) {
    problems.push(`reached ${pods.join(",") || "no pod"}, the contract says ${record.expected}`);
  }
  if (opts["polling-only"]) {
    if (record.finalTransport !== "polling") problems.push(`ended on ${record.finalTransport}, not polling`);
  } else if (!record.upgraded) problems.push("no upgrade to websocket");
  if (record.echoed !== opts.echoes) problems.push(`${record.echoed}/${opts.echoes} echoes acked`);
  return problems;
}

async function main() {
  const started = Date.now();
  const tenants = [];
  for (let i = 0; i < opts.clients; i += 1) tenants.push(`${opts.prefix}-${String(i).padStart(2, "0")}`);
  for (let i = 0; i < opts.shared; i += 1) tenants.push(`${opts.prefix}-shared`);
  const records = await withTimeout(
    Promise.all(tenants.map((t, i) => runClient(t, i))),
    opts["timeout-ms"],
    "all clients",
  );
  let failed = 0;
  const byPod = {};
  const upgradesByPod = {};
  for (const record of records) {
    const problems = check(record);
    byPod[record.expected] = (byPod[record.expected] || 0) + 1;
    if (!opts["polling-only"]) upgradesByPod[record.expected] = (upgradesByPod[record.expected] || 0) + 1;
    if (problems.length) {
      failed += 1;
      console.error(`FAIL ${record.tenant}#${record.index}: ${problems.join("; ")}`);
    }
  }
  const summary = {
    client: "socket.io-client",
    version: require("socket.io-client/package.json").version,
    mode: (opts.h2 ? "fetch-h2" : "polling") + (opts["polling-only"] ? " only" : "+websocket"),
    clients: records.length,
    tenants: new Set(tenants).size,
    passed: records.length - failed,
    failed,
    upgraded: records.filter((r) => r.upgraded).length,
    first_transport: [...new Set(records.map((r) => r.firstTransport).filter(Boolean))],
    echoes_acked: records.reduce((s, r) => s + r.echoed, 0),
    clients_by_pod: byPod,
    upgrades_by_pod: upgradesByPod, // what each pod should have seen, by the contract
    seconds: (Date.now() - started) / 1000,
  };
  console.log(JSON.stringify(summary));
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  console.error(`socketio-client.js: ${err.message}`);
  process.exit(1);
});
