// Headless Chromium, as a person would see comfyfleet: the dashboard (pods, a job with live progress and
// then its thumbnail, admin controls for admins only) and a page on another origin that generates an image
// with the TypeScript client through CORS. Run by tests/browser/test_chromium.py, which starts the stack
// and passes its address; screenshots go to $ARTIFACTS.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run through tests/browser/test_chromium.py`);
  return value;
};
const API = env("COMFYFLEET_TEST_API");
const TOKENS = JSON.parse(env("COMFYFLEET_TEST_TOKENS"));
const TS_DIR = env("TS_CLIENT_DIR");
const ARTIFACTS = env("ARTIFACTS");
const ALLOWED_PORT = Number(env("FOREIGN_PORT"));
const DENIED_PORT = Number(env("DENIED_PORT"));
const PODS = Number(env("EXPECTED_PODS"));

const { chromium } = createRequire(join(TS_DIR, "package.json"))("playwright-core");

const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];

// The page "on another origin": plain HTML that imports the built client (dist/client.js).
const PAGE = `<!doctype html><meta charset="utf-8"><title>another app</title>
<h1>another app</h1><p id="status">idle</p><progress id="bar" max="100" value="0"></progress><div id="out"></div>
<script type="module">
import { ComfyFleetClient } from "./client.js";
const client = new ComfyFleetClient({ baseUrl: window.API, getToken: async () => window.TEST_TOKEN });
const status = document.querySelector("#status");
try {
  const job = await client.generateWithComfyUI(
    { template: "txt2img", params: { seed: 7, steps: 12, prompt: "a lighthouse" } },
    { onProgress: (j) => { status.textContent = j.state; document.querySelector("#bar").value = j.progress.percent; } });
  const img = document.createElement("img");
  img.id = "result";
  img.src = window.API + job.outputs[0].url;
  document.querySelector("#out").append(img);
  status.textContent = "done " + job.state;
} catch (err) {
  status.textContent = "error " + err.name + ": " + err.message;
}
</script>`;

const servers = [];
let context;
let userDataDir;

function serve(port) {
  const client = readFileSync(join(TS_DIR, "dist", "client.js"));
  const server = createServer((req, res) => {
    if (req.url.startsWith("/client.js")) res.writeHead(200, { "content-type": "text/javascript" }).end(client);
    else res.writeHead(200, { "content-type": "text/html" }).end(PAGE);
  });
  servers.push(server);
  return new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
}

before(async () => {
  await serve(ALLOWED_PORT);
  await serve(DENIED_PORT);
  userDataDir = mkdtempSync(join(tmpdir(), "cf-chromium-"));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true, args: FLAGS,
    viewport: { width: 1280, height: 900 },
  });
});

after(async () => {
  await context?.close();
  for (const s of servers) s.close();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

async function submit(token, steps, extra = {}) {
  const res = await fetch(`${API}/api/comfyui/generate`, {
    method: "POST", headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ template: "txt2img", params: { seed: 99, steps, prompt: "a red fox" }, ...extra }),
  });
  const text = await res.text();
  assert.equal(res.status, 202, text);
  return JSON.parse(text);
}

async function signIn(page, token) {
  await page.goto(`${API}/dashboard/`);
  await page.fill("#token", token);
  await page.click("#signin button[type=submit]");
  await page.waitForSelector("#whoami:not([hidden])");
}

test("the dashboard shows the pods, a job's live progress and then its thumbnail", async () => {
  const page = await context.newPage();
  const streams = [];
  page.on("request", (r) => { if (r.url().includes("/events?")) streams.push(r.url()); });
  await signIn(page, TOKENS.admin);
  await page.waitForFunction((n) => document.querySelectorAll("#pods tbody tr[data-pod]").length === n, PODS);
  assert.equal(await page.locator("#pods-summary").textContent(), `${PODS} ready · 0 busy · 0 unhealthy`);
  await page.screenshot({ path: join(ARTIFACTS, "dashboard-pods.png"), fullPage: true });

  const job = await submit(TOKENS.admin, 40);
  const card = `[data-job="${job.jobId}"]`;
  await page.waitForSelector(`${card}[data-state="running"]`, { timeout: 30_000 });
  await page.waitForFunction((sel) => {
    const pct = Number(document.querySelector(sel)?.dataset.percent);
    return pct > 0 && pct < 100;
  }, card, { timeout: 30_000 });
  await page.waitForSelector(`[data-pod][data-state="busy"]`);
  await page.screenshot({ path: join(ARTIFACTS, "dashboard-progress.png"), fullPage: true });

  await page.waitForSelector(`${card}[data-state="succeeded"] img.thumb`, { timeout: 60_000 });
  await page.waitForFunction((sel) => {
    const img = document.querySelector(`${sel} img.thumb`);
    return img && img.complete && img.naturalWidth > 0;
  }, card);
  await page.screenshot({ path: join(ARTIFACTS, "dashboard-thumbnail.png"), fullPage: true });

  // The usage panel: the signed-in user's GPU-seconds per UTC day, with the finished job counted today.
  const me = await page.locator("#owner").textContent();
  const mine = `#usage table.usage[data-user="${me}"]`;
  await page.waitForFunction((sel) => Number(document.querySelector(sel)?.dataset.total) > 0, mine,
    { timeout: 30_000 });
  assert.equal(await page.locator(`${mine} tbody tr`).count(), 7, "one row per day of the last 7 UTC days");
  const today = page.locator(`${mine} tbody tr`).last();
  assert.match(await today.locator("td").nth(1).textContent(), /^[0-9.]+ GPU-s$/);
  assert.ok(Number(await today.getAttribute("data-gpu-seconds")) > 0, "today's row shows the job's GPU time");
  assert.match(await page.locator(`${mine} .total`).textContent(), /^[0-9.]*[1-9][0-9.]* GPU-s$/, "a non-zero total");
  await page.screenshot({ path: join(ARTIFACTS, "dashboard-usage.png"), fullPage: true });
  assert.ok(streams.some((u) => u.includes(job.jobId) && u.includes("token=")), "progress came over the job's stream");
  assert.ok(streams.every((u) => !u.includes(TOKENS.admin)), "the bearer token never goes in a URL");
  assert.equal(await page.locator("#clean").isVisible(), true, "admins see the admin controls");
  await page.close();
});

test("an admin cancels a running job and adds then withdraws an endpoint from the dashboard", async () => {
  const page = await context.newPage();
  await signIn(page, TOKENS.admin);
  const job = await submit(TOKENS.admin, 150);
  const card = `[data-job="${job.jobId}"]`;
  await page.waitForSelector(`${card}[data-state="running"]`, { timeout: 30_000 });
  await page.click(`${card} button:has-text("Cancel")`);
  await page.waitForSelector(`${card}[data-state="cancelled"]`, { timeout: 30_000 });

  await page.fill("#add-endpoint input[name=url]", "http://127.0.0.1:9");
  await page.fill("#add-endpoint input[name=pool]", "spare");
  await page.click("#add-endpoint button[type=submit]");
  const row = `tr[data-pod="url:http://127.0.0.1:9"]`;
  await page.waitForSelector(row);
  // A job for that pool waits (its only endpoint is unreachable): the pool's row in the queue table says so.
  const waiting = await submit(TOKENS.admin, 4, { pool: "spare" });
  const poolRow = page.locator(`#queue-pools tr[data-pool="spare"]`);
  await page.waitForSelector(`#queue-pools tr[data-pool="spare"][data-waiting="1"]`, { timeout: 30_000 });
  assert.equal(await poolRow.locator("td.waiting").textContent(), "1");
  assert.match(await poolRow.locator("td.oldest").textContent(), /^\d+ (s|min \d+ s)$/);
  // The admin picks a user for the history view: that user's usage panel appears beside their own.
  await page.fill("#history-user", "alice");
  await page.click("#history button[type=submit]");
  await page.waitForSelector(`#usage table.usage[data-user="alice"] caption`);
  assert.match(await page.locator(`#usage table.usage[data-user="alice"] caption`).textContent(), /selected user/);
  await page.screenshot({ path: join(ARTIFACTS, "dashboard-admin.png"), fullPage: true });
  await fetch(`${API}/api/comfyui/job/${waiting.jobId}`, { method: "DELETE",
    headers: { Authorization: `Bearer ${TOKENS.admin}` } });
  await page.waitForSelector(`#queue-pools tr[data-pool="spare"][data-waiting="0"]`, { timeout: 30_000 });
  await page.click(`${row} button:has-text("Withdraw")`);
  await page.waitForSelector(row, { state: "detached" });
  await page.waitForFunction((n) => document.querySelectorAll("#pods tbody tr[data-pod]").length === n, PODS);
  await page.close();
});

test("admin controls are hidden from users and refused by the API", async () => {
  const page = await context.newPage();
  await signIn(page, TOKENS.alice);
  await page.waitForSelector("body[data-loaded=true]");
  assert.equal(await page.locator("#clean").isVisible(), false);
  assert.equal(await page.locator("#add-endpoint").isVisible(), false);
  assert.equal(await page.locator("#admin-badge").isVisible(), false);
  const status = await page.evaluate(async (token) => (await fetch("/api/queue/clean", {
    method: "POST", headers: { Authorization: `Bearer ${token}` } })).status, TOKENS.alice);
  assert.equal(status, 403);
  // Own usage only: one panel, and the API refuses another user's.
  await page.waitForSelector(`#usage table.usage[data-user="alice"]`);
  assert.equal(await page.locator("#usage table.usage").count(), 1);
  const other = await page.evaluate(async (token) => (await fetch("/api/comfyui/usage?user=admin", {
    headers: { Authorization: `Bearer ${token}` } })).status, TOKENS.alice);
  assert.equal(other, 403);
  await page.screenshot({ path: join(ARTIFACTS, "dashboard-user.png"), fullPage: true });
  await page.close();
});

test("a page on an allowed origin generates an image with the TypeScript client through CORS", async () => {
  const page = await context.newPage();
  const urls = [];
  const sockets = [];
  page.on("request", (r) => urls.push(r.url()));
  page.on("websocket", (ws) => sockets.push(ws.url()));
  await page.addInitScript(([api, token]) => { window.API = api; window.TEST_TOKEN = token; }, [API, TOKENS.alice]);
  await page.goto(`http://localhost:${ALLOWED_PORT}/`);
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("done")
    || document.querySelector("#status").textContent.startsWith("error"), null, { timeout: 60_000 });
  assert.equal(await page.locator("#status").textContent(), "done succeeded");
  await page.waitForFunction(() => {
    const img = document.querySelector("#result");
    return img && img.complete && img.naturalWidth > 0;
  });
  assert.ok(sockets.some((u) => u.includes("/api/comfyui/ws?token=")), `progress over the WebSocket: ${sockets}`);
  assert.ok([...urls, ...sockets].every((u) => !u.includes(TOKENS.alice)), "the bearer token never goes in a URL");
  await page.screenshot({ path: join(ARTIFACTS, "foreign-origin.png"), fullPage: true });
  await page.close();
});

test("a page on an origin that is not allowed cannot call the API", async () => {
  const page = await context.newPage();
  await page.addInitScript(([api, token]) => { window.API = api; window.TEST_TOKEN = token; }, [API, TOKENS.alice]);
  await page.goto(`http://localhost:${DENIED_PORT}/`);
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("error"), null,
    { timeout: 30_000 });
  assert.match(await page.locator("#status").textContent(), /TypeError/);
  await page.close();
});
