#!/usr/bin/env node
// One Socket.IO backend "pod" for tests/frameworks/socketio.sh: the real `socket.io`
// server (package.json pins it) on 127.0.0.1:PORT, its engine under the router's prefix,
// default transports (HTTP long-polling first, then the upgrade to WebSocket).
//
//   node socketio-server.js --port 18600 --name backend-0 [--path /ws/socket.io/]
//
// On connect it emits `hello` naming its pod; it answers `echo` with an ack carrying the
// payload and its pod name, so a client can tell which pod it reached. A polling session
// lives in one pod's memory: a request for it that lands on another pod gets engine.io's
// "Session ID unknown", which is what a router without sticky routing produces. So the pod
// counts its engine's `connection_error`s by message, and `GET /stats` (same port, outside
// the engine path) reports them with the connections and upgrades seen.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function args(argv) {
  const out = { port: 0, name: "backend-0", path: "/ws/socket.io/" };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in out) || argv[i + 1] === undefined) {
      console.error(`usage: socketio-server.js --port P --name NAME [--path /ws/socket.io/] (bad: ${argv[i]})`);
      process.exit(2);
    }
    out[key] = key === "port" ? Number(argv[i + 1]) : argv[i + 1];
  }
  return out;
}

const opts = args(process.argv);
const stats = {
  server: opts.name,
  connections: 0, // Socket.IO connections (the default namespace)
  engine_connections: 0, // engine.io sessions opened (handshakes)
  upgrades: 0, // sessions that moved from polling to WebSocket
  websocket_sessions: 0, // sessions whose transport is WebSocket now or at close
  unknown_sid: 0, // connection_error "Session ID unknown": a request for another pod's session
  other_errors: 0, // any other connection_error
  errors: {}, // every connection_error message, counted
  close_reasons: {}, // engine sessions closed, by reason
  hello_sent: 0,
  echoes: 0,
};

const httpServer = http.createServer((req, res) => {
  // Socket.IO takes the requests under its path; everything else comes here.
  if (req.method === "GET" && req.url === "/stats") {
    const body = JSON.stringify(stats);
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found\n");
});

const io = new Server(httpServer, { path: opts.path, serveClient: false });

io.engine.on("connection", (conn) => {
  stats.engine_connections += 1;
  conn.on("upgrade", () => {
    stats.upgrades += 1;
  });
  conn.on("close", (reason, description) => {
    if (conn.transport && conn.transport.name === "websocket") stats.websocket_sessions += 1;
    // Why sessions end: "transport close" is a client leaving; "transport error" (e.g. two
    // polls at once on one session) or "ping timeout" point at the path in between.
    stats.close_reasons[reason] = (stats.close_reasons[reason] || 0) + 1;
    if (reason !== "transport close" && reason !== "forced close") {
      const detail = description && description.message ? `: ${description.message}` : "";
      console.error(`${opts.name}: session ${conn.id} (${conn.request && conn.request.url}) closed on ${conn.transport && conn.transport.name}: ${reason}${detail}`);
    }
  });
});

io.engine.on("connection_error", (err) => {
  const message = (err && err.message) || "unknown";
  stats.errors[message] = (stats.errors[message] || 0) + 1;
  if (message === "Session ID unknown") stats.unknown_sid += 1;
  else stats.other_errors += 1;
  const req = err && err.req;
  console.error(`${opts.name}: connection_error ${err && err.code} ${message} ${req ? `${req.method} ${req.url}` : ""}`);
});

io.on("connection", (socket) => {
  stats.connections += 1;
  socket.emit("hello", { server: opts.name, tenant: socket.handshake.query.tenant || null });
  stats.hello_sent += 1;
  socket.on("echo", (payload, ack) => {
    stats.echoes += 1;
    if (typeof ack === "function") ack({ server: opts.name, payload });
  });
});

httpServer.listen(opts.port, "127.0.0.1", () => {
  console.error(`${opts.name}: socket.io ${require("socket.io/package.json").version} on 127.0.0.1:${httpServer.address().port}${opts.path}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
