// Drives the sse-hub over HTTPS in headless Debian chromium (playwright-core,
// no downloaded browser). Usage:
//   node h2.mjs <https-hub-url> <streams>
// Run from tests/tls.rs, which started the hub with a self-signed
// certificate: chromium is told to accept it (--ignore-certificate-errors).
// The dashboard must go live over h2; then the page opens <streams>
// EventSources on the same origin (beside the dashboard's own stream: more
// than the 6 connections per origin HTTP/1.1 allows) and waits for `ready`
// on each ("all ready"); then it posts a rotation nudge and waits until every
// one of them received `rotation-updated` ("all received"). Prints "h2 ok"
// and exits 0; any failure, or any error the page reports, exits 1.
import { chromium } from "playwright-core";

const [url, streamsArg] = process.argv.slice(2);
const streams = Number(streamsArg);
if (!url || !url.startsWith("https://") || !(streams > 0)) {
  console.error("usage: node h2.mjs <https-url> <streams>");
  process.exit(2);
}
const T = 15000;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--ignore-certificate-errors"],
});
let code = 0;
const context = await browser.newContext({ ignoreHTTPSErrors: true });
const page = await context.newPage();
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push("uncaught: " + (e && e.stack || e)));
page.on("console", (m) => { if (m.type() === "error") pageErrors.push("console error: " + m.text()); });
function noPageErrors(step) {
  if (pageErrors.length) throw new Error(`the page reported errors (by ${step}):\n  ` + pageErrors.join("\n  "));
}
try {
  await page.goto(url, { timeout: T });
  await page.waitForSelector('#conn-state[data-state="live"]', { timeout: T });
  const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
  if (protocol !== "h2") throw new Error("the page was loaded over " + protocol + ", not h2");
  noPageErrors("dashboard live");
  console.log("dashboard live over h2");

  // Each EventSource resolves on `ready`; one that errors first fails the run.
  await page.evaluate(async ([n, timeout]) => {
    window.__sources = [];
    const opened = [];
    for (let i = 0; i < n; i++) {
      const es = new EventSource(`/api/sse/stream?request_id=h2-browser-${i}`);
      window.__sources.push(es);
      opened.push(new Promise((resolve, reject) => {
        es.addEventListener("ready", () => resolve(), { once: true });
        es.addEventListener("error", () => reject(new Error(`stream ${i} failed before ready`)), { once: true });
      }));
    }
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`not every stream was ready within ${timeout} ms`)), timeout);
    });
    await Promise.race([Promise.all(opened), late]);
    clearTimeout(timer);
  }, [streams, T]);
  noPageErrors("streams ready");
  console.log("all ready");

  const received = await page.evaluate(async (timeout) => {
    const waits = window.__sources.map((es) => new Promise((resolve) => {
      es.addEventListener("message", (e) => {
        try {
          if (JSON.parse(e.data).type === "rotation-updated") resolve();
        } catch (_) { /* not an envelope */ }
      });
    }));
    const r = await fetch("/internal/rotation-nudge", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
    });
    if (!r.ok) throw new Error("rotation nudge answered " + r.status);
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`not every stream got the nudge within ${timeout} ms`)), timeout);
    });
    await Promise.race([Promise.all(waits), late]);
    clearTimeout(timer);
    window.__sources.forEach((es) => es.close());
    return waits.length;
  }, T);
  if (received !== streams) throw new Error(`${received} of ${streams} streams got the nudge`);
  noPageErrors("nudge received");
  console.log("all received");
  console.log("h2 ok");
} catch (e) {
  console.error(String(e && e.stack || e));
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
