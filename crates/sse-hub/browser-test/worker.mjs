// Runs the dashboard's stream worker (src/dashboard-worker.js) under node,
// as the dedicated-Worker variant, with a fake EventSource and a fake fetch,
// and checks its lease bookkeeping against the hub's seq rules: the
// snapshot before `ready` is the base; the next seq is applied, an older one
// dropped; a jump in seq, or the gateway's `gap` event, asks the hub for a
// snapshot once (POST /api/dhcp/leases/snapshot) and drops lease events until
// it arrives; a stream without a snapshot by `ready` asks for one; a tab that
// joins later gets the current list. A reconnect that resumes (the new
// stream's snapshot, then the missed events replayed with their ids, then
// `ready`) drops what the snapshot holds, applies the rest, asks for nothing
// and counts the replayed events; a stream the browser gave up on (CLOSED)
// is reopened naming the last id (`lastEventId`). Usage: node worker.mjs <dashboard-worker.js>
// Prints "worker ok" and exits 0, or exits 1 with the first difference.
import { readFileSync } from "node:fs";
import vm from "node:vm";
import assert from "node:assert/strict";

const source = readFileSync(process.argv[2], "utf8");

const streams = [];
class FakeEventSource {
  static CLOSED = 2;
  constructor(url) { this.url = url; this.readyState = 0; this.listeners = {}; streams.push(this); }
  addEventListener(name, fn) { (this.listeners[name] ||= []).push(fn); }
  close() { this.readyState = FakeEventSource.CLOSED; }
  open() { this.readyState = 1; this.onopen(); }
  // `id`: the event's lastEventId (a browser keeps the previous one for an event without id:).
  app(type, payload, id = "") { this.onmessage({ data: JSON.stringify({ type, payload }), lastEventId: id }); }
  named(name, data, id = "") { for (const fn of this.listeners[name] || []) fn({ data, lastEventId: id }); }
}

const fetches = [];
async function fakeFetch(url, init) {
  fetches.push({ url, body: JSON.parse(init.body) });
  return { ok: true, status: 202, json: async () => ({ delivered: true }) };
}

const received = []; // what the tab got, in order
const self = {
  addEventListener() {},
  postMessage(msg) { received.push(msg); },
};
const context = vm.createContext({ self, EventSource: FakeEventSource, fetch: fakeFetch, crypto, setTimeout, console });
vm.runInContext(source, context, { filename: "dashboard-worker.js" });

const turn = () => new Promise((r) => setTimeout(r, 5));
async function until(what, cond, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await turn();
  }
}
const lastStats = () => received.filter((m) => m.op === "batch").flatMap((m) => m.items).filter((i) => i.type === "$stats").map((i) => JSON.parse(JSON.stringify(i.payload))).pop();
const lease = (ip, host) => ({ ip_address: ip, hostname: host, is_active: true });
const items = () => received.filter((m) => m.op === "batch").flatMap((m) => m.items).filter((i) => !i.type.startsWith("$"));
const summary = () => items().map((i) => i.type === "leases_snapshot"
  ? `snapshot ${i.payload.seq}: ${i.payload.leases.map((l) => l.hostname).join(",")}`
  : i.type === "gap" ? "gap" : `${i.type} ${i.payload.seq} ${i.payload.lease.hostname}`);

try {
  self.onmessage({ data: { op: "hello" } });
  const init = received.find((m) => m.op === "init");
  assert.ok(init && /^[a-z0-9]{20,32}$/.test(init.requestId), "init with the stream's request_id");
  const es = streams[0];
  assert.match(es.url, new RegExp(`^/api/sse/stream\\?request_id=${init.requestId}&snapshot=leases$`));

  es.open();
  es.app("leases_snapshot", { seq: 5, leases: [lease("10.0.0.1", "a"), lease("10.0.0.2", "b")] });
  es.named("ready", "");
  es.app("lease_added", { seq: 5, lease: lease("10.0.0.9", "stale") }); // already in the snapshot
  es.app("lease_added", { seq: 6, lease: lease("10.0.0.3", "c") });
  await turn();
  assert.equal(fetches.length, 0, "no snapshot asked while in order");

  es.app("lease_added", { seq: 8, lease: lease("10.0.0.4", "d") }); // 7 was lost
  await turn();
  assert.equal(fetches.length, 1, "a seq jump asks for a snapshot");
  assert.deepEqual(fetches[0], { url: "/api/dhcp/leases/snapshot", body: { request_id: init.requestId } });
  es.named("gap", JSON.stringify({ last_event_id: "42" }));
  es.app("lease_added", { seq: 9, lease: lease("10.0.0.5", "e") }); // before the snapshot: dropped
  await turn();
  assert.equal(fetches.length, 1, "one request while one is outstanding");
  es.app("leases_snapshot", { seq: 9, leases: ["a", "b", "c", "d", "e"].map((h, i) => lease(`10.0.0.${i + 1}`, h)) });
  es.app("lease_removed", { seq: 10, lease: lease("10.0.0.1", "a") });
  await turn();
  assert.deepEqual(summary(), [
    "snapshot 5: a,b", "lease_added 6 c", "gap", "snapshot 9: a,b,c,d,e", "lease_removed 10 a",
  ]);

  // The gateway's gap alone (seq in order) also asks for a snapshot.
  es.named("gap", JSON.stringify({ last_event_id: "43" }));
  await turn();
  assert.equal(fetches.length, 2, "gap asks for a snapshot");
  es.app("leases_snapshot", { seq: 10, leases: [lease("10.0.0.2", "b")] });
  await turn();

  // A tab that joins now gets the current list at once.
  received.length = 0;
  self.onmessage({ data: { op: "hello" } });
  const late = received.find((m) => m.op === "init");
  assert.deepEqual(JSON.parse(JSON.stringify(late.leases)), { seq: 10, leases: [lease("10.0.0.2", "b")] });

  // A new stream without a snapshot before `ready` asks for one at `ready`.
  es.onerror();
  es.open();
  es.app("lease_added", { seq: 11, lease: lease("10.0.0.7", "g") }); // no base yet: dropped
  es.named("ready", "");
  await turn();
  assert.equal(fetches.length, 3, "ready without a snapshot asks for one");
  assert.ok(!summary().some((s) => s.includes(" g")), "no event applied without a base");
  es.app("leases_snapshot", { seq: 11, leases: [lease("10.0.0.2", "b"), lease("10.0.0.7", "g")] });
  es.app("lease_added", { seq: 12, lease: lease("10.0.0.8", "h") }, "e-12");
  await turn();
  const before = lastStats();
  assert.deepEqual(before, { streams: 2, replayed: 0, gaps: 2, resyncs: 3, synced: true });

  // A network blip: the browser reconnects the same EventSource (with
  // Last-Event-ID e-12). The new stream's snapshot (seq 14, sent by its
  // connect: no id of its own) comes first, then the replay of what was
  // missed, then ready. 13 and 14 are in the snapshot, so is a snapshot a
  // page asked for earlier; 15 was published after the snapshot was taken.
  received.length = 0;
  es.onerror();
  es.open();
  es.app("leases_snapshot", { seq: 14, leases: ["b", "g", "h2", "i"].map((h, i) => lease(`10.0.0.${[2, 7, 8, 9][i]}`, h)) }, "e-12");
  es.app("lease_added", { seq: 13, lease: lease("10.0.0.9", "i") }, "e-13");
  es.app("leases_snapshot", { seq: 13, leases: [lease("10.0.0.2", "b")] }, "e-13b");
  es.app("lease_updated", { seq: 14, lease: lease("10.0.0.8", "h2") }, "e-14");
  es.app("lease_added", { seq: 15, lease: lease("10.0.0.10", "j") }, "e-15");
  es.named("ready", "", "e-15");
  es.app("lease_removed", { seq: 16, lease: lease("10.0.0.2", "b") }, "e-16");
  await turn();
  assert.equal(fetches.length, 3, "a resumed stream asks for no snapshot");
  assert.deepEqual(summary(), ["snapshot 14: b,g,h2,i", "lease_added 15 j", "lease_removed 16 b"]);
  assert.deepEqual(lastStats(), { streams: 3, replayed: 4, gaps: 2, resyncs: 3, synced: true });
  received.length = 0;
  self.onmessage({ data: { op: "hello" } });
  const joined = received.find((m) => m.op === "init");
  assert.equal(joined.leases.seq, 16);
  assert.deepEqual(JSON.parse(JSON.stringify(joined.leases.leases.map((l) => l.hostname).sort())), ["g", "h2", "i", "j"]);

  // The browser gave up on the stream (CLOSED, e.g. an error status from a
  // proxy): the worker opens a new one that names the last id.
  es.readyState = FakeEventSource.CLOSED;
  es.onerror();
  await until("a new stream", () => streams.length === 2);
  assert.match(streams[1].url, new RegExp(`^/api/sse/stream\\?request_id=${init.requestId}&snapshot=leases&lastEventId=e-16$`));
  console.log("worker ok");
} catch (e) {
  console.error("worker test failed: " + (e && e.stack || e));
  console.error("tab received: " + JSON.stringify(summary()));
  process.exit(1);
}
