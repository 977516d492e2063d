// Drives one sse-hub dashboard page in headless Debian chromium through the
// reconnects of tests/dashboard_resume.rs (a hub restart, a network blip).
// Usage:
//   node resume.mjs <page-url> <hub-url> <screenshot.png>
// <page-url> is what the browser opens (the hub, or a relay in front of it);
// <hub-url> is the hub itself, where this script reads the current leases.
// It prints "live" once the page is live with its lease table, then obeys
// one command a line on stdin and answers each on stdout:
//   match <label> <expect-json>  waits until the page is live, its lease
//       table is in step (no snapshot awaited) and its rows are exactly the
//       hub's leases (GET /api/dhcp/leases: address, MAC, hostname, active;
//       no row twice), and the page's stream counters (data-stats of
//       #stream-stats) are as expected: a number must be equal, ">=N" at
//       least N; answers "match <label> <stats-json>";
//   state <label> <conn-state>   waits until the header shows that stream
//       state; answers "state <label>";
//   end                          answers "no page errors", "resume ok", exit 0.
// Any failure (a wait past its deadline, with what differed) and any error
// the page reports (an uncaught exception, a console error, which includes
// what the stream worker reports) exits 1.
import { chromium } from "playwright-core";
import readline from "node:readline";

const [url, hubUrl, shot] = process.argv.slice(2);
if (!url || !hubUrl || !shot) {
  console.error("usage: node resume.mjs <page-url> <hub-url> <screenshot.png>");
  process.exit(2);
}
// Deadline of one wait: a reconnect waits for the gateway's retry: (at most
// 5 s) and a restarted hub; far above what a working page needs.
const T = 30000;
const POLL_MS = 100;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push("uncaught: " + (e && e.stack || e)));
page.on("console", (m) => { if (m.type() === "error") pageErrors.push("console error: " + m.text()); });
function noPageErrors(step) {
  if (pageErrors.length) throw new Error(`the page reported errors (by ${step}):\n  ` + pageErrors.join("\n  "));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const row = (l) => `${l.ip_address} ${l.mac_address} ${l.hostname ?? "—"} ${l.is_active ? "yes" : "no"}`;

async function hubLeases() {
  const r = await fetch(new URL("/api/dhcp/leases", hubUrl));
  if (!r.ok) throw new Error(`GET /api/dhcp/leases: ${r.status}`);
  return (await r.json()).map(row).sort();
}

// What the page shows: its stream state, counters and lease rows (all in the
// DOM: the tests keep fewer leases than the viewport draws).
function pageView() {
  return page.evaluate(() => {
    const stats = document.querySelector("#stream-stats").dataset.stats;
    const rows = [...document.querySelectorAll("#leases tr[data-ip]")].map((tr) => {
      const td = [...tr.children].map((c) => c.textContent);
      return `${tr.dataset.ip} ${td[1]} ${td[2]} ${td[6]}`;
    });
    return {
      conn: document.querySelector("#conn-state").dataset.state,
      ready: document.body.dataset.ready === "1",
      count: Number(document.querySelector("#lease-summary").dataset.count),
      stats: stats ? JSON.parse(stats) : null,
      rows,
    };
  });
}

function statsDiffer(stats, expect) {
  if (!stats) return "no stream counters yet";
  for (const [k, want] of Object.entries(expect)) {
    const have = stats[k];
    const ok = typeof want === "string" && want.startsWith(">=") ? have >= Number(want.slice(2)) : have === want;
    if (!ok) return `${k} is ${have}, expected ${want}`;
  }
  return null;
}

async function match(label, expect) {
  const deadline = Date.now() + T;
  let why = "";
  for (;;) {
    const [want, view] = await Promise.all([hubLeases(), pageView()]);
    const rows = [...view.rows].sort();
    const twice = rows.filter((r, i) => i > 0 && r.split(" ")[0] === rows[i - 1].split(" ")[0]);
    if (view.conn !== "live" || !view.ready) why = `stream ${view.conn}`;
    else if (!view.stats || !view.stats.synced) why = "lease table not in step (snapshot awaited)";
    else if (twice.length) why = `rows shown twice: ${twice.join("; ")}`;
    else if (view.count !== want.length || rows.join("\n") !== want.join("\n")) {
      why = `the page shows (${view.count}):\n    ${rows.join("\n    ")}\n  the hub has:\n    ${want.join("\n    ")}`;
    } else why = statsDiffer(view.stats, expect) || "";
    if (!why) {
      console.log(`match ${label} ${JSON.stringify(view.stats)}`);
      return;
    }
    if (Date.now() > deadline) throw new Error(`match ${label}: after ${T} ms: ${why}; counters ${JSON.stringify(view.stats)}`);
    await sleep(POLL_MS);
  }
}

let code = 0;
try {
  await page.goto(url, { timeout: T });
  await page.waitForSelector('#conn-state[data-state="live"]', { timeout: T });
  await page.waitForSelector('body[data-ready="1"]', { timeout: T });
  await page.waitForSelector("#leases tr[data-ip]", { timeout: T });
  noPageErrors("live");
  console.log("live");
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const [cmd, label, ...rest] = line.trim().split(" ");
    if (cmd === "match") {
      await match(label, JSON.parse(rest.join(" ") || "{}"));
    } else if (cmd === "state") {
      await page.waitForSelector(`#conn-state[data-state="${rest[0]}"]`, { timeout: T });
      console.log(`state ${label}`);
    } else if (cmd === "end") {
      break;
    } else {
      throw new Error("unknown command: " + line);
    }
    noPageErrors(line);
  }
  await page.screenshot({ path: shot });
  console.log("screenshot: " + shot);
  noPageErrors("the end");
  console.log("no page errors");
  console.log("resume ok");
} catch (e) {
  console.error("resume test failed: " + (e && e.stack || e));
  try { await page.screenshot({ path: shot }); console.log("screenshot: " + shot); } catch { /* ignore */ }
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
