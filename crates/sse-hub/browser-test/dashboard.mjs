// Drives the sse-hub dashboard in headless Debian chromium (playwright-core,
// no downloaded browser). Usage:
//   node dashboard.mjs <hub-url> <screenshot.png> <lease-ip> <log-message> <device-entity-id>
// Protocol with the Rust test (tests/dashboard.rs): after the page is live,
// a task started from the page has completed and the device subscription is
// confirmed, this prints "subscribed"; the test then appends <lease-ip> to
// the lease file and publishes <log-message> to Mosquitto; this waits for
// both on the page, saves a screenshot, prints "screenshot: <path>" and
// "dashboard ok", and exits 0. Any failure exits 1 with a message.
import { chromium } from "playwright-core";

const [url, shot, leaseIp, logMessage, device] = process.argv.slice(2);
if (!url || !shot || !leaseIp || !logMessage || !device) {
  console.error("usage: node dashboard.mjs <url> <screenshot> <lease-ip> <log-message> <device>");
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
try {
  page.on("console", (m) => { if (m.type() === "error") console.error("page console:", m.text()); });
  await page.goto(url, { timeout: T });
  await page.waitForSelector('#conn-state[data-state="live"]', { timeout: T });
  await page.waitForSelector('body[data-ready="1"]', { timeout: T });
  await page.waitForSelector("#leases tr[data-ip]", { timeout: T });
  console.log("live: " + (await page.textContent("#request-id")));

  // A task started from the page shows its progress and completes.
  await page.selectOption("#task-type", "demo");
  await page.fill("#task-steps", "3");
  await page.fill("#task-delay", "150");
  await page.click("#task-start");
  await page.waitForSelector('.task[data-status="running"]', { timeout: T });
  await page.waitForSelector('.task[data-status="completed"]', { timeout: T });
  const value = await page.$eval('.task[data-status="completed"] progress', (p) => p.value);
  if (value !== 1) throw new Error("progress bar of the completed task is " + value);
  console.log("task completed");

  await page.fill("#device-input", device);
  await page.click("#subscribe-btn");
  await page.waitForSelector('#subscribe-status[data-ok="1"]', { timeout: T });
  console.log("subscribed");

  await page.waitForSelector(`#leases tr[data-ip="${leaseIp}"]`, { timeout: T });
  const cls = await page.getAttribute(`#leases tr[data-ip="${leaseIp}"]`, "class");
  if (!cls.includes("hl-added")) throw new Error("new lease row not highlighted: " + cls);
  console.log("lease shown");
  await page.waitForFunction((msg) => [...document.querySelectorAll("#log-lines .log-line")].some((l) => l.textContent.includes(msg)), logMessage, { timeout: T });
  console.log("log line shown");
  await page.screenshot({ path: shot, fullPage: true });
  console.log("screenshot: " + shot);
  console.log("dashboard ok");
} catch (e) {
  console.error("dashboard test failed: " + (e && e.stack || e));
  try { await page.screenshot({ path: shot, fullPage: true }); console.log("screenshot: " + shot); } catch { /* ignore */ }
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
