// Drives the sse-hub dashboard in headless Debian chromium (playwright-core,
// no downloaded browser). Usage:
//   node dashboard.mjs <hub-url> <screenshot.png> <lease-ip> <log-message> <device-entity-id> <version>
// Protocol with the Rust test (tests/dashboard.rs): after the page is live,
// a task started from the page has completed and the device subscription is
// confirmed, this prints "subscribed"; the test then appends <lease-ip> to
// the lease file and publishes <log-message> to Mosquitto; this waits for
// both on the page, then prints "awaiting version"; the test pushes
// <version> to every stream; this waits for the header to show it and the
// reload banner to appear, saves a screenshot, prints "screenshot: <path>" and
// "dashboard ok", and exits 0. Any failure exits 1 with a message; so does
// any error the page itself reports (an uncaught exception or a console
// error), checked after every step.
import { chromium } from "playwright-core";

const [url, shot, leaseIp, logMessage, device, version] = process.argv.slice(2);
if (!url || !shot || !leaseIp || !logMessage || !device || !version) {
  console.error("usage: node dashboard.mjs <url> <screenshot> <lease-ip> <log-message> <device> <version>");
  process.exit(2);
}
const T = 15000;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let code = 0;
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push("uncaught: " + (e && e.stack || e)));
page.on("console", (m) => { if (m.type() === "error") pageErrors.push("console error: " + m.text()); });
function noPageErrors(step) {
  if (pageErrors.length) throw new Error(`the page reported errors (by ${step}):\n  ` + pageErrors.join("\n  "));
}
try {
  await page.goto(url, { timeout: T });
  await page.waitForSelector('#conn-state[data-state="live"]', { timeout: T });
  await page.waitForSelector('body[data-ready="1"]', { timeout: T });
  await page.waitForSelector("#leases tr[data-ip]", { timeout: T });
  console.log("live: " + (await page.textContent("#request-id")));

  noPageErrors("page live");

  // A task started from the page shows its progress step by step and completes.
  await page.selectOption("#task-type", "demo");
  await page.fill("#task-steps", "3");
  await page.fill("#task-delay", "400");
  await page.click("#task-start");
  // Midway: a running task whose bar shows a step's value (k/3, 0 < k < 3)
  // next to its "Step k/3" text. (The completed bar is set to 1 by
  // task_completed alone, so the final value does not prove progress works.)
  const midway = await page.waitForFunction(() => {
    const task = document.querySelector('.task[data-status="running"]');
    const bar = task && task.querySelector("progress");
    if (!bar || !(bar.value > 0 && bar.value < 1)) return null;
    return { value: bar.value, text: task.querySelector(".text").textContent };
  }, null, { timeout: T });
  const { value: midValue, text: midText } = await midway.jsonValue();
  const step = /^Step ([12])\/3$/.exec(midText);
  if (!step || Math.abs(midValue - Number(step[1]) / 3) > 1e-6) {
    throw new Error(`running task shows ${JSON.stringify(midText)} with progress ${midValue}`);
  }
  console.log("progress midway");
  await page.waitForSelector('.task[data-status="completed"]', { timeout: T });
  const value = await page.$eval('.task[data-status="completed"] progress', (p) => p.value);
  if (value !== 1) throw new Error("progress bar of the completed task is " + value);
  noPageErrors("task completed");
  console.log("task completed");

  await page.fill("#device-input", device);
  await page.click("#subscribe-btn");
  await page.waitForSelector('#subscribe-status[data-ok="1"]', { timeout: T });
  noPageErrors("subscribed");
  console.log("subscribed");

  await page.waitForSelector(`#leases tr[data-ip="${leaseIp}"]`, { timeout: T });
  const cls = await page.getAttribute(`#leases tr[data-ip="${leaseIp}"]`, "class");
  if (!cls.includes("hl-added")) throw new Error("new lease row not highlighted: " + cls);
  console.log("lease shown");
  await page.waitForFunction((msg) => [...document.querySelectorAll("#log-lines .log-line")].some((l) => l.textContent.includes(msg)), logMessage, { timeout: T });
  console.log("log line shown");
  const before = await page.textContent("#version");
  if (before === version) throw new Error("the header already shows " + version);
  console.log("awaiting version");
  await page.waitForFunction((v) => document.querySelector("#version").textContent === v
    && document.querySelector("#version-banner").classList.contains("show")
    && document.querySelector("#new-version").textContent === v, version, { timeout: T });
  noPageErrors("version pushed");
  console.log("version shown");
  await page.screenshot({ path: shot, fullPage: true });
  console.log("screenshot: " + shot);
  noPageErrors("the end");
  console.log("no page errors");
  console.log("dashboard ok");
} catch (e) {
  console.error("dashboard test failed: " + (e && e.stack || e));
  try { await page.screenshot({ path: shot, fullPage: true }); console.log("screenshot: " + shot); } catch { /* ignore */ }
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
