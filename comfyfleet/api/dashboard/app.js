// The comfyfleet dashboard: plain ES module, no build step. Served by the API at /dashboard/.
//
// Sign-in: a bearer token (a static API token, or a Firebase ID token) kept in sessionStorage, or a
// provider set by an embedding page before this module loads:
//     window.comfyfleetTokenProvider = () => firebase.auth().currentUser.getIdToken();
// The bearer token only ever goes in the Authorization header. Event streams and thumbnails use each
// job's short-lived accessToken, which the API puts in the URLs it returns.
// Admin controls are shown only when /api/comfyui/me says admin; the API checks every admin call again.

const API = ""; // same origin as the dashboard
const REFRESH_MS = 3000;
const USAGE_DAYS = 7;
const MAX_LIVE_STREAMS = 5; // below the API's per-user stream cap, leaving room for other tabs
const FINAL = new Set(["succeeded", "failed", "cancelled"]);

const $ = (sel) => document.querySelector(sel);
const state = { me: null, historyUser: "", jobs: new Map(), streams: new Map(), timer: null };

async function token() {
  if (typeof window.comfyfleetTokenProvider === "function") return await window.comfyfleetTokenProvider();
  return sessionStorage.getItem("comfyfleet.token");
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const t = await token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const err = new Error(data?.error?.message ?? `${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

function showError(err) {
  const box = $("#error");
  box.hidden = !err;
  box.textContent = err ? String(err.message ?? err) : "";
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (v !== undefined && v !== null) node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

// 0 → "0 s", 75 → "1 min 15 s", 7300 → "2 h 1 min".
function duration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
const gpuSeconds = (s) => `${s.toFixed(1)} GPU-s`;

const gib = (bytes) => (typeof bytes === "number" ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : "—");

// ---- pods and queue ----

function renderPods(body) {
  const rows = body.workers.map((w) => el("tr", { dataset: { pod: w.id, state: w.state } },
    el("td", {}, el("code", {}, w.id)),
    el("td", {}, w.pool),
    el("td", { className: `state-${w.state}` }, w.state, w.lastError ? el("div", { className: "err" }, w.lastError) : null),
    el("td", {}, w.currentJob ? el("code", {}, w.currentJob.slice(0, 8)) : "—"),
    el("td", {}, w.checkpoints.join(", ") || "—"),
    el("td", {}, w.loras.join(", ") || "—"),
    el("td", {}, `${gib(w.info?.vram_free)} / ${gib(w.info?.vram_total)}`),
    el("td", { className: "admin-only" }, el("button", {
      type: "button", textContent: "Withdraw",
      on: { click: () => adminAction(() => api("DELETE", `/api/comfyui/workers/${w.id}`)) },
    })),
  ));
  $("#pods tbody").replaceChildren(...rows);
  $("#pods-summary").textContent = `${body.ready} ready · ${body.busy} busy · ${body.unhealthy} unhealthy`;
  const pools = {};
  for (const w of body.workers) {
    pools[w.pool] ??= { ready: 0, busy: 0, unhealthy: 0 };
    pools[w.pool][w.state] += 1;
  }
  $("#by-pool").textContent = Object.entries(pools)
    .map(([p, c]) => `${p}: ${c.ready} ready, ${c.busy} busy, ${c.unhealthy} unhealthy`).join(" · ") || "—";
}

function renderQueue(q) {
  const items = ["waiting", "active", "retrying", "completed", "failed", "cancelled"].map((k) =>
    el("div", { dataset: { stat: k } }, el("dt", {}, k), el("dd", {}, q[k])));
  $("#queue").replaceChildren(...items);
  $("#by-priority").textContent = Object.entries(q.byPriority).filter(([, n]) => n > 0)
    .map(([p, n]) => `p${p}: ${n}`).join(" · ") || "none waiting";
  // byPool has every known pool (0 when none waits) plus "any"; sorted with the busiest first.
  const oldest = q.oldestAgeSeconds ?? {};
  const rows = Object.entries(q.byPool ?? {}).sort(([a, x], [b, y]) => y - x || a.localeCompare(b))
    .map(([pool, n]) => el("tr", { dataset: { pool, waiting: String(n) } },
      el("td", {}, pool),
      el("td", { className: "waiting" }, n),
      el("td", { className: "oldest" }, n > 0 ? duration(oldest[pool] ?? 0) : "—")));
  $("#queue-pools tbody").replaceChildren(...rows);
}

// ---- usage: GPU-seconds per UTC day (the signed-in user, and for admins the user picked for the history) ----

function usagePanel(u, label) {
  const max = Math.max(...u.days.map((d) => d.gpuSeconds), 0);
  return el("table", { className: "usage", dataset: { user: u.user, total: String(u.totalGpuSeconds) } },
    el("caption", {}, el("strong", {}, u.user), label ? ` (${label})` : "", " · total ",
      el("span", { className: "total" }, gpuSeconds(u.totalGpuSeconds))),
    el("thead", {}, el("tr", {}, el("th", {}, "Day (UTC)"), el("th", {}, "GPU-seconds"), el("th", {}, "Runs"),
      el("th", {}))),
    el("tbody", {}, ...u.days.map((d) => el("tr", { dataset: { date: d.date, gpuSeconds: String(d.gpuSeconds) } },
      el("td", {}, d.date), el("td", {}, gpuSeconds(d.gpuSeconds)), el("td", {}, d.attempts),
      el("td", { className: "spark" }, el("div", { style: `width:${max > 0 ? (100 * d.gpuSeconds) / max : 0}%` })))),
    ));
}

async function fetchUsage() {
  // Own usage; admins also see the user picked in the history view (the API refuses that to others).
  const users = [null];
  if (state.me.admin && state.historyUser && state.historyUser !== state.me.owner) users.push(state.historyUser);
  try {
    return await Promise.all(users.map((u) =>
      api("GET", `/api/comfyui/usage?days=${USAGE_DAYS}${u ? `&user=${encodeURIComponent(u)}` : ""}`)));
  } catch (err) {
    if (err.status === 404) return null; // an API without usage accounting: the panel says so
    throw err;
  }
}

function renderUsage(panels) {
  $("#usage-days").textContent = String(USAGE_DAYS);
  if (!panels) {
    $("#usage").textContent = "usage is not recorded by this server";
    return;
  }
  $("#usage").replaceChildren(...panels.map((u, i) => usagePanel(u, i === 0 ? "you" : "selected user")));
}

async function adminAction(fn) {
  try {
    await fn();
    showError(null);
  } catch (err) {
    showError(err);
  }
  await refresh();
}

// ---- jobs, with live progress and thumbnails ----

function jobCard(job) {
  const card = el("article", { className: "job", dataset: { job: job.jobId } });
  updateCard(card, job);
  return card;
}

function updateCard(card, job) {
  card.dataset.state = job.state;
  card.dataset.percent = String(job.progress.percent);
  const thumbs = job.outputs.filter((o) => o.url && o.contentType.startsWith("image/"))
    .map((o) => el("img", { className: "thumb", src: o.url, alt: o.filename, loading: "lazy" }));
  const canCancel = !FINAL.has(job.state) && (state.me.admin || job.owner === state.me.owner);
  card.replaceChildren(...[
    el("div", {}, el("code", {}, job.jobId.slice(0, 8)), " ", el("span", { className: `state state-${job.state}` }, job.state),
      " ", el("small", {}, job.owner)),
    el("div", { className: "bar", title: `${job.progress.percent}%` },
      el("div", { style: `width:${job.progress.percent}%` })),
    el("small", { className: "progress" }, `${job.progress.percent}%`,
      job.progress.node ? ` · node ${job.progress.node} ${job.progress.value}/${job.progress.max}` : ""),
    job.error ? el("div", { className: "state-failed" }, `${job.error.code}: ${job.error.message}`) : null,
    ...thumbs,
    canCancel ? el("button", { type: "button", textContent: "Cancel",
      on: { click: () => adminAction(() => api("DELETE", `/api/comfyui/job/${job.jobId}`)) } }) : null,
  ].filter(Boolean));
}

function follow(job) {
  if (FINAL.has(job.state) || state.streams.has(job.jobId) || !job.accessToken) return;
  if (state.streams.size >= MAX_LIVE_STREAMS) return; // the others are refreshed by polling
  const url = `${API}/api/comfyui/job/${encodeURIComponent(job.jobId)}/events?token=${encodeURIComponent(job.accessToken)}`;
  const source = new EventSource(url);
  state.streams.set(job.jobId, source);
  const onEvent = (msg) => {
    const next = JSON.parse(msg.data);
    state.jobs.set(next.jobId, next);
    const card = document.querySelector(`[data-job="${CSS.escape(next.jobId)}"]`);
    if (card) updateCard(card, next);
    if (FINAL.has(next.state)) stop(next.jobId);
  };
  source.addEventListener("state", onEvent);
  source.addEventListener("progress", onEvent);
  source.onerror = () => stop(job.jobId); // the next refresh reopens it with a fresh token if still running
}

function stop(jobId) {
  state.streams.get(jobId)?.close();
  state.streams.delete(jobId);
}

function renderJobs(page) {
  const container = $("#jobs");
  const cards = [];
  for (const job of page.jobs) {
    const known = state.jobs.get(job.jobId);
    // A streamed job may be newer than the list: keep the fresher of the two.
    const fresh = known && state.streams.has(job.jobId) && Date.parse(known.updatedAt) > Date.parse(job.updatedAt)
      ? { ...known, accessToken: job.accessToken } : job;
    state.jobs.set(job.jobId, fresh);
    const card = container.querySelector(`[data-job="${CSS.escape(job.jobId)}"]`) ?? jobCard(fresh);
    if (!state.streams.has(job.jobId)) updateCard(card, fresh);
    cards.push(card);
    follow(fresh);
  }
  container.replaceChildren(...cards);
  if (!cards.length) container.textContent = "no jobs yet";
}

// ---- wiring ----

async function refresh() {
  if (!state.me) return;
  try {
    const user = state.historyUser ? `&user=${encodeURIComponent(state.historyUser)}` : "";
    const [workers, queue, jobs, usage] = await Promise.all([
      api("GET", "/api/comfyui/workers"), api("GET", "/api/queue/stats"), api("GET", `/api/comfyui/jobs?limit=24${user}`),
      fetchUsage(),
    ]);
    renderPods(workers);
    renderQueue(queue);
    renderJobs(jobs);
    renderUsage(usage);
    document.body.dataset.loaded = "true";
  } catch (err) {
    showError(err);
  }
}

async function signIn() {
  try {
    state.me = await api("GET", "/api/comfyui/me");
  } catch (err) {
    state.me = null;
    showError(err.status === 401 ? new Error("that token was not accepted") : err);
    return;
  }
  showError(null);
  document.body.classList.toggle("is-admin", state.me.admin);
  $("#owner").textContent = state.me.owner;
  $("#admin-badge").hidden = !state.me.admin;
  $("#whoami").hidden = false;
  $("#signin").hidden = true;
  $("#main").hidden = false;
  await refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
}

function signOut() {
  sessionStorage.removeItem("comfyfleet.token");
  for (const id of [...state.streams.keys()]) stop(id);
  clearInterval(state.timer);
  state.me = null;
  document.body.classList.remove("is-admin");
  $("#main").hidden = true;
  $("#whoami").hidden = true;
  $("#signin").hidden = false;
}

$("#signin").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("comfyfleet.token", $("#token").value.trim());
  $("#token").value = "";
  void signIn();
});
$("#signout").addEventListener("click", signOut);
$("#clean").addEventListener("click", () => adminAction(() => api("POST", "/api/queue/clean", {})));
$("#add-endpoint").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  void adminAction(() => api("POST", "/api/comfyui/workers", { url: form.get("url"), pool: form.get("pool") }));
});
$("#history").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.historyUser = $("#history-user").value.trim();
  $("#jobs").replaceChildren();
  void refresh();
});

if (await token()) void signIn();
