// The official SignalR client (@microsoft/signalr, pinned in package.json) against the
// echo backend's test hub, one transport forced at a time. For every tenant: connect to
// BASE?tenant=T, check that the transport asked for is the one in use, call Echo 100
// times (each result must be what was sent), then Whoami, which must name the pod the
// caller expects for T and the tenant itself; then stop.
//
// usage: node signalr.mjs BASE_URL TRANSPORT TENANT=POD...
//   BASE_URL   e.g. https://localhost:8443/ws/hub (the tenant goes in ?tenant=)
//   TRANSPORT  WebSockets | ServerSentEvents | LongPolling
// Prints one line per tenant; exits 1 on any mismatch, 2 when it runs out of time.
import { isDeepStrictEqual } from "node:util";
import signalR from "@microsoft/signalr";

const [base, transportName, ...pairs] = process.argv.slice(2);
const ECHOES = Number(process.env.SIGNALR_ECHOES ?? 100);
const DEADLINE_MS = Number(process.env.SIGNALR_DEADLINE_MS ?? 120000);

if (!base || !transportName || pairs.length === 0) {
  console.error("usage: node signalr.mjs BASE_URL TRANSPORT TENANT=POD...");
  process.exit(64);
}
const transport = signalR.HttpTransportType[transportName];
if (transport === undefined) {
  console.error(`unknown transport ${transportName}`);
  process.exit(64);
}
// The client's class for each transport (what the connection must end up using).
const transportClass = {
  WebSockets: "WebSocketTransport",
  ServerSentEvents: "ServerSentEventsTransport",
  LongPolling: "LongPollingTransport",
}[transportName];

setTimeout(() => {
  console.error(`signalr.mjs: not done after ${DEADLINE_MS} ms`);
  process.exit(2);
}, DEADLINE_MS).unref();

const failures = [];
function check(ok, what) {
  if (!ok) failures.push(what);
  return ok;
}

// Values of several JSON shapes, so the hub's echo is checked for more than strings.
function payload(tenant, i) {
  switch (i % 4) {
    case 0:
      return `${tenant}-${i}`;
    case 1:
      return i * 1.5;
    case 2:
      return { tenant, i, nested: [i, null, true, "x".repeat(i)] };
    default:
      return [tenant, i, "\u00e9\u2603\n\"quoted\""];
  }
}

async function session(tenant, pod) {
  const url = `${base}${base.includes("?") ? "&" : "?"}tenant=${encodeURIComponent(tenant)}`;
  const connection = new signalR.HubConnectionBuilder()
    .withUrl(url, { transport })
    .configureLogging(signalR.LogLevel.Warning)
    .build();
  await connection.start();
  try {
    const used = connection.connection?.transport?.constructor?.name;
    check(used === transportClass, `${tenant}: transport ${used}, wanted ${transportClass}`);
    let echoed = 0;
    for (let i = 0; i < ECHOES; i++) {
      const sent = payload(tenant, i);
      const got = await connection.invoke("Echo", sent);
      // Deep equality: JSON objects have no key order to keep.
      if (check(isDeepStrictEqual(got, sent),
        `${tenant}: Echo #${i} gave ${JSON.stringify(got)}, sent ${JSON.stringify(sent)}`)) {
        echoed++;
      }
    }
    const who = await connection.invoke("Whoami");
    check(who?.server === pod, `${tenant}: Whoami says server ${who?.server}, route says ${pod}`);
    check(who?.ns === tenant, `${tenant}: Whoami says ns ${who?.ns}`);
    console.log(`${transportName} ${tenant}: ${echoed}/${ECHOES} echoes, whoami ${JSON.stringify(who)}`);
  } finally {
    await connection.stop();
  }
}

for (const pair of pairs) {
  const [tenant, pod] = pair.split("=");
  try {
    await session(tenant, pod);
  } catch (e) {
    failures.push(`${tenant}: ${e?.message ?? e}`);
  }
}
if (failures.length > 0) {
  for (const f of failures.slice(0, 10)) console.error(`MISMATCH ${transportName} ${f}`);
  process.exit(1);
}
process.exit(0);
