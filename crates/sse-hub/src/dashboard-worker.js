// The sse-hub dashboard's stream worker (served at /dashboard-worker.js).
//
// Why: a browser opens at most 6 HTTP/1.1 connections per origin and every
// EventSource holds one for good, so a dashboard tab per stream stalls from
// the 6th tab on. Loaded as a SharedWorker, this script holds the ONE stream
// of every dashboard tab of the browser (one request_id, reused on every
// reconnect) and relays its events to the tabs; a browser without
// SharedWorker loads it as a dedicated Worker per tab (one stream per tab).
//
// Leases: the stream is opened with `snapshot=leases`, so the hub writes a
// `leases_snapshot` (every lease and `seq`, the number of the last lease
// event) before `ready`; each later lease event carries the next `seq`. This
// worker keeps the lease table: a delta with seq <= the table's is already
// in it (dropped), seq = table + 1 is applied, a larger one means events were
// lost, and so does the gateway's `gap` event: then the worker asks the hub
// for a new snapshot on the stream (POST /api/dhcp/leases/snapshot) and drops
// deltas until it arrives. A tab that joins gets the table at once.
//
// Reconnects: EventSource comes back with `Last-Event-ID` (the hub's gateway
// keeps history). After a network blip the new stream brings its snapshot,
// then the missed events replayed before `ready`: those already in the
// snapshot (seq not larger) are dropped, later ones applied, so nothing is
// missing or applied twice and no snapshot is asked for. After a hub restart
// the new process does not know the old id: the snapshot, then `gap`, and
// the worker asks for a snapshot as for any gap.
//
// To the tabs: {op:"init", requestId, conn, ready, leases, version, stats}
// once, then {op:"batch", items:[{type, payload}]} with every event since the
// last batch (one message per task turn, whatever the event rate), where
// lease events are only those to apply; `$conn` items carry the stream
// state, `$stats` items the stream counters when they changed: streams that
// went live, events replayed to them, gaps, snapshots asked for, and whether
// the lease table is in step (a snapshot applied and none awaited).
// Device-log lines go only to the tabs that subscribed to that device.
// From the tabs: hello, bye, subscribe, unsubscribe, alive-lock (a Web Lock
// the tab holds for its life: when this worker is granted it, the tab is gone).
"use strict";

const SNAPSHOT_RETRY_MS = 2000;
const MAX_RETRY_MS = 30000;
const requestId = Array.from(crypto.getRandomValues(new Uint8Array(24)), (b) => (b % 36).toString(36)).join("");

const clients = new Set(); // {port, devices: Set<string>}
const lease = { seq: null, map: new Map(), requesting: false };
let version = null;
let conn = "connecting";
let ready = false;
let es = null;
let attempt = 0;
let retryTimer = null;
let outbox = [];
let flushQueued = false;
let fatal = null; // why there is no stream at all (told to every tab that joins)
const stats = { streams: 0, replayed: 0, gaps: 0, resyncs: 0 };
let sentStats = "";
let lastId = ""; // the id of the last event seen (what EventSource resumes from)

function post(client, msg) {
  try { client.port.postMessage(msg); } catch { clients.delete(client); }
}

function scheduleFlush() {
  if (!flushQueued) { flushQueued = true; setTimeout(flush, 0); }
}

function queue(type, payload) {
  outbox.push({ type, payload });
  scheduleFlush();
}

function currentStats() {
  return { ...stats, synced: lease.seq !== null && !lease.requesting };
}

function flush() {
  flushQueued = false;
  const s = currentStats();
  const key = JSON.stringify(s);
  if (key !== sentStats) { sentStats = key; outbox.push({ type: "$stats", payload: s }); }
  if (!outbox.length) return;
  const items = outbox;
  outbox = [];
  for (const c of clients) {
    const mine = items.filter((it) => it.type !== "device-logs" || c.devices.has(it.payload && it.payload.device_entity_id));
    if (mine.length) post(c, { op: "batch", items: mine });
  }
}

function reportError(message) {
  for (const c of clients) post(c, { op: "error", message: String(message) });
}
self.addEventListener("error", (e) => reportError(e.message || e));
self.addEventListener("unhandledrejection", (e) => reportError((e.reason && e.reason.stack) || e.reason));

function setConn(state) {
  conn = state;
  queue("$conn", { state, ready });
}

function connect() {
  if (typeof EventSource !== "function") {
    fatal = "this browser has no EventSource in workers: the dashboard cannot open its stream";
    reportError(fatal);
    return;
  }
  if (es) es.close();
  ready = false;
  setConn(attempt ? "reconnecting" : "connecting");
  // The browser resumes its own reconnects with Last-Event-ID; a new
  // EventSource (after a CLOSED one) names the last id in the query instead.
  const resume = lastId ? `&lastEventId=${encodeURIComponent(lastId)}` : "";
  es = new EventSource(`/api/sse/stream?request_id=${encodeURIComponent(requestId)}&snapshot=leases${resume}`);
  es.onopen = () => {
    attempt = 0;
    ready = false;
    // A new stream: its snapshot comes before `ready`; older deltas are void.
    lease.seq = null;
    lease.requesting = false;
    setConn("live");
  };
  es.addEventListener("ready", (m) => {
    if (m.lastEventId) lastId = m.lastEventId;
    ready = true;
    stats.streams++;
    setConn("live");
    resubscribe();
    if (lease.seq === null) requestSnapshot("no snapshot before ready");
  });
  // Gateway event (not an envelope): events for this stream were lost.
  es.addEventListener("gap", (m) => {
    let info = null;
    try { info = JSON.parse(m.data); } catch { info = m.data; }
    stats.gaps++;
    queue("gap", info);
    lease.seq = null;
    requestSnapshot("the gateway reported a gap");
  });
  es.onmessage = (m) => {
    // Before `ready`, an event with a new id is one the gateway replayed
    // (what the stream's own connect sent, such as its snapshot, has none).
    if (m.lastEventId && m.lastEventId !== lastId) {
      lastId = m.lastEventId;
      if (!ready) { stats.replayed++; scheduleFlush(); }
    }
    let msg;
    try { msg = JSON.parse(m.data); } catch { return; }
    if (msg && typeof msg.type === "string") onEvent(msg.type, msg.payload);
  };
  es.onerror = () => {
    ready = false;
    setConn("reconnecting");
    // The browser retries by itself while the stream is CONNECTING; a CLOSED
    // one is reopened here with a capped backoff (same request_id).
    if (es.readyState === EventSource.CLOSED && !retryTimer) {
      const delay = Math.min(MAX_RETRY_MS, 1000 * 2 ** attempt++);
      retryTimer = setTimeout(() => { retryTimer = null; connect(); }, delay);
    }
  };
}

function onEvent(type, p) {
  switch (type) {
    case "leases_snapshot": {
      if (!p || !Array.isArray(p.leases)) return;
      if (lease.seq !== null && typeof p.seq === "number" && p.seq < lease.seq) return;
      lease.map = new Map(p.leases.map((l) => [l.ip_address, l]));
      lease.seq = typeof p.seq === "number" ? p.seq : 0;
      lease.requesting = false;
      queue(type, p);
      return;
    }
    case "lease_added": case "lease_updated": case "lease_expired": case "lease_removed": {
      if (!p || !p.lease) return;
      if (typeof p.seq === "number") {
        if (lease.seq === null || p.seq <= lease.seq) return; // covered by the (awaited) snapshot
        if (p.seq !== lease.seq + 1) {
          const missed = `lease events ${lease.seq + 1}..${p.seq - 1} missed`;
          lease.seq = null;
          requestSnapshot(missed);
          return;
        }
        lease.seq = p.seq;
      }
      if (type === "lease_removed") lease.map.delete(p.lease.ip_address);
      else lease.map.set(p.lease.ip_address, p.lease);
      queue(type, p);
      return;
    }
    case "version":
      version = p;
      queue(type, p);
      return;
    default:
      queue(type, p);
  }
}

async function requestSnapshot(why) {
  if (lease.requesting) return;
  lease.requesting = true;
  stats.resyncs++;
  queue("$resync", { why });
  let ok = false;
  try {
    const r = await fetch("/api/dhcp/leases/snapshot", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ request_id: requestId }),
    });
    ok = r.ok && (await r.json().catch(() => ({}))).delivered === true;
  } catch { /* retried below */ }
  if (!ok) {
    lease.requesting = false;
    scheduleFlush();
    // Until a snapshot arrives; a new stream brings its own.
    setTimeout(() => { if (lease.seq === null && ready) requestSnapshot(why); }, SNAPSHOT_RETRY_MS);
  }
}

async function subscription(action, device) {
  try {
    const r = await fetch(`/api/device-logs/${action}`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ request_id: requestId, device_entity_id: device }),
    });
    return r.status;
  } catch {
    return 0;
  }
}

function wanted(device) {
  for (const c of clients) if (c.devices.has(device)) return true;
  return false;
}

function resubscribe() {
  const all = new Set();
  for (const c of clients) for (const d of c.devices) all.add(d);
  for (const d of all) subscription("subscribe", d);
}

function removeClient(c) {
  if (!clients.delete(c)) return;
  for (const d of c.devices) if (!wanted(d)) subscription("unsubscribe", d);
}

function init(c) {
  flush(); // what the table already holds is not sent again
  const leases = lease.seq === null && lease.map.size === 0 ? null : { seq: lease.seq, leases: [...lease.map.values()] };
  post(c, { op: "init", requestId, conn, ready, leases, version, stats: currentStats() });
  if (fatal) post(c, { op: "error", message: fatal });
}

async function onClientMessage(c, msg) {
  switch (msg && msg.op) {
    case "hello":
      clients.add(c);
      init(c);
      break;
    case "bye":
      removeClient(c);
      break;
    case "alive-lock":
      if (self.navigator && navigator.locks && typeof msg.name === "string") {
        navigator.locks.request(msg.name, () => removeClient(c));
      }
      break;
    case "subscribe": {
      c.devices.add(msg.device);
      const status = await subscription("subscribe", msg.device);
      post(c, { op: "subscribed", device: msg.device, ok: status >= 200 && status < 300, status });
      break;
    }
    case "unsubscribe":
      c.devices.delete(msg.device);
      if (!wanted(msg.device)) await subscription("unsubscribe", msg.device);
      break;
  }
}

function attach(port) {
  const c = { port, devices: new Set() };
  port.onmessage = (m) => { onClientMessage(c, m.data); };
  if (typeof port.start === "function") port.start();
}

if (typeof SharedWorkerGlobalScope === "function" && self instanceof SharedWorkerGlobalScope) {
  self.onconnect = (e) => attach(e.ports[0]);
} else {
  attach(self); // a dedicated worker: its one tab talks through `self`
}
connect();
