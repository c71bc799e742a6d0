// switchback dashboard.
//
// Plain JavaScript, no framework and no build step. It polls the admin API
// under /switchback/ and renders three panels: switches (with live per-arm
// error rate and p99, and a 5-minute sparkline kept in memory), rollback
// points and operations. Actions are same-origin POSTs to the same API, so
// Caddy's admin origin enforcement applies to them as to any client.
//
// The page is served with a strict Content-Security-Policy: no inline
// scripts or styles. Everything is built with DOM calls and styled through
// classes in style.css; user-supplied text is only ever set as textContent.

const API = "/switchback";
const POLL_MS = 1000;           // switches and arm windows
const SLOW_POLL_MS = 5000;      // points and operations
const SAMPLES = 300;            // 5 minutes of 1 s samples per arm
const HISTORY_SHOWN = 20;       // newest events in a switch's history
const ARMS = ["legacy", "consolidated"];

// samples holds, per "switch/arm", the last SAMPLES observations
// {rate, p99}. It lives only in this page; a reload starts it afresh.
const samples = new Map();

// --- API -----------------------------------------------------------------

// api calls the admin API and returns the decoded JSON (or text, for
// Markdown). A non-2xx answer throws an Error with the API's message.
async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(API + path, opts);
  } catch (err) {
    throw new Error(`gateway unreachable (${err.message}): is switchback running? From a shell, try the CLI with --config FILE for offline mode`);
  }
  const type = resp.headers.get("Content-Type") || "";
  const payload = type.includes("json") ? await resp.json().catch(() => null) : await resp.text();
  if (!resp.ok) {
    const msg = payload && payload.error ? payload.error : (typeof payload === "string" && payload) || resp.statusText;
    const err = new Error(`${method} ${path}: ${resp.status} ${msg}`);
    err.status = resp.status;
    throw err;
  }
  return payload;
}

// --- small DOM helpers ---------------------------------------------------

// el creates an element. attrs may hold className, text, dataset (an
// object) and any other attribute; children are nodes or strings.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "className") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function $(sel, root = document) { return root.querySelector(sel); }

// setText updates a node's text only when it changed, so polling does not
// disturb selection or screen readers.
function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

// show or hide a node.
function toggle(node, visible) { node.classList.toggle("hidden", !visible); }

// --- formatting ----------------------------------------------------------

function pct(rate) {
  if (!Number.isFinite(rate)) return "–";
  const p = rate * 100;
  return (p === 0 ? "0" : p < 0.1 ? p.toFixed(2) : p.toFixed(1)) + "%";
}

function msText(ms) {
  if (!Number.isFinite(ms)) return "–";
  if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
  return (ms >= 10 ? ms.toFixed(0) : ms.toFixed(1)) + " ms";
}

// humanSize renders bytes as B, KiB, MiB, GiB or TiB.
function humanSize(bytes) {
  if (!Number.isFinite(bytes)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let n = bytes;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

// ago renders a time as "12s ago", "5m ago", "3h ago" or "2d ago".
function ago(iso) {
  if (!iso) return "never";
  const t = Date.parse(iso);
  if (!Number.isFinite(t) || t <= 0) return "never";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}

// stamp renders a time as local date and time, for titles and tables.
function stamp(iso) {
  const t = Date.parse(iso);
  return Number.isFinite(t) && t > 0 ? new Date(t).toLocaleString() : "";
}

// --- messages ------------------------------------------------------------

let messageTimer = 0;

// say shows a transient message; kind is "ok" or "error". Errors stay
// until the next message.
function say(text, kind = "ok") {
  const box = $("#message");
  box.textContent = text;
  box.dataset.kind = kind;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  toggle(box, true);
  clearTimeout(messageTimer);
  if (kind !== "error") messageTimer = setTimeout(() => toggle(box, false), 6000);
}

// banner shows (or with "" hides) the connection problem bar.
function banner(text) {
  const b = $("#banner");
  setText(b, text);
  toggle(b, Boolean(text));
}

// --- sparklines ----------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

// record appends one observation of an arm.
function record(key, arm) {
  let list = samples.get(key);
  if (!list) { list = []; samples.set(key, list); }
  list.push({ rate: arm.error_rate, p99: arm.p99_ms });
  if (list.length > SAMPLES) list.splice(0, list.length - SAMPLES);
}

// sparkline makes an empty SVG sparkline; drawSpark fills it.
function sparkline(label) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${SAMPLES} 40`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label + ", last 5 minutes");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("class", "spark-line");
  const title = document.createElementNS(SVG, "title");
  svg.append(line, title);
  return svg;
}

// drawSpark plots values, newest at the right edge, scaled to the larger
// of their maximum and floor so a flat zero stays at the bottom. The time
// axis spans the samples kept, at least one minute, at most five, so a page
// opened a few seconds ago already shows a readable line.
function drawSpark(svg, values, floor, fmt) {
  const max = Math.max(floor, ...values);
  const span = Math.min(SAMPLES, Math.max(60, values.length));
  const step = SAMPLES / (span - 1);
  const x0 = span - values.length;
  const pts = values.map((v, i) => `${((x0 + i) * step).toFixed(1)},${(38 - (v / max) * 36).toFixed(1)}`);
  svg.firstChild.setAttribute("points", pts.join(" "));
  svg.dataset.samples = String(values.length);
  svg.lastChild.textContent = `now ${fmt(values[values.length - 1])}, max ${fmt(Math.max(0, ...values))} over ${values.length} s`;
}

// --- switches ------------------------------------------------------------

// switchCards holds the DOM of each switch, built once and updated in
// place every second so inputs keep their focus and value.
const switchCards = new Map();

function buildArm(name, arm) {
  const rate = sparkline(`${arm} error rate`);
  const p99 = sparkline(`${arm} p99 latency`);
  return el("div", { className: "arm", dataset: { arm } },
    el("h4", { text: arm }),
    el("div", { className: "probe hidden", role: "status" }),
    el("dl", { className: "stats" },
      el("dt", { text: "error rate" }), el("dd", { className: "error-rate", text: "–" }),
      el("dt", { text: "p99" }), el("dd", { className: "p99", text: "–" }),
      el("dt", { text: "requests" }), el("dd", { className: "requests", text: "–" }),
      el("dt", { text: "failures" }), el("dd", { className: "failures", text: "–" })),
    el("div", { className: "spark-row" }, el("span", { className: "spark-label", text: "error rate" }), rate),
    el("div", { className: "spark-row" }, el("span", { className: "spark-label", text: "p99" }), p99),
    el("div", { className: "window muted" }));
}

function buildSwitch(name) {
  const weightInput = el("input", {
    type: "number", min: "0", max: "100", step: "0.01", inputmode: "decimal",
    id: `weight-${name}`, dataset: { field: "weight" },
  });
  const card = el("article", { className: "switch", dataset: { switch: name } },
    el("header", { className: "switch-head" },
      el("h3", { text: name }),
      el("span", { className: "mode badge", text: "…" }),
      el("span", { className: "weight-text" }),
      el("span", { className: "tripped badge badge-bad hidden", text: "TRIPPED" }),
      el("span", { className: "pending badge badge-warn hidden", text: "not yet in store", title: "the change is applied here but not yet written to the state store" })),
    el("div", { className: "legacy-unhealthy alert hidden", role: "alert" }),
    el("p", { className: "last-change" },
      el("span", { className: "reason" }), " ",
      el("span", { className: "by muted" }), " ",
      el("time", { className: "since muted" })),
    el("p", { className: "rules muted" }),
    el("div", { className: "arms" }, ...ARMS.map((a) => buildArm(name, a))),
    el("form", { className: "actions", dataset: { form: "weight" }, "aria-label": `Actions for switch ${name}` },
      el("label", { for: `weight-${name}`, text: "Weight to consolidated (%)" }),
      weightInput,
      el("button", { type: "submit", dataset: { action: "set-weight", switch: name }, text: "Set weight" }),
      el("button", { type: "button", className: "danger", dataset: { action: "force-legacy", switch: name }, text: "Force legacy…" }),
      el("button", { type: "button", className: "warn", dataset: { action: "reset", switch: name }, text: "Reset to split…" })),
    el("details", { className: "history" },
      el("summary", { text: "Trip and recovery history" }),
      el("div", { className: "table-wrap" },
        el("table", {},
          el("thead", {}, el("tr", {}, ...["When", "Event", "Mode", "Weight", "Reason", "By"].map((h) => el("th", { text: h })))),
          el("tbody", { className: "history-rows" })))));
  card.querySelector("details").open = true;
  return card;
}

function modeText(sw) {
  // Weights are percents in 0.01 steps; subtract in hundredths so 100 - 0.07 reads 99.93.
  if (sw.mode === "split") return `${(10000 - Math.round(sw.weight * 100)) / 100}% legacy / ${sw.weight}% consolidated`;
  return `100% ${sw.mode}`;
}

function rulesText(r) {
  if (!r) return "";
  if (r.off) return "trip rules: off";
  const parts = [];
  if (r.error_rate) parts.push(`error rate > ${pct(r.error_rate)}`);
  if (r.latency_ms) parts.push(`p${+(r.latency_quantile * 100).toFixed(1)} > ${msText(r.latency_ms)}`);
  if (r.consecutive_failures) parts.push(`${r.consecutive_failures} consecutive failures`);
  let s = `trips on ${parts.join(", ") || "nothing"} over ${r.window} (min ${r.min_requests} requests)`;
  if (r.auto_recover) s += "; auto-recovers";
  if (!r.armed) s += "; not armed";
  return s;
}

// updateSwitch writes a switch's status into its card.
function updateSwitch(card, sw) {
  const mode = $(".mode", card);
  setText(mode, sw.mode);
  mode.dataset.mode = sw.mode;
  card.dataset.mode = sw.mode;
  setText($(".weight-text", card), modeText(sw));
  toggle($(".tripped", card), Boolean(sw.tripped));
  toggle($(".pending", card), Boolean(sw.pending));

  const unhealthy = $(".legacy-unhealthy", card);
  setText(unhealthy, sw.legacy_unhealthy ? `LEGACY ALSO UNHEALTHY: ${sw.legacy_unhealthy_reason || "legacy is failing too"}` : "");
  toggle(unhealthy, Boolean(sw.legacy_unhealthy));

  setText($(".reason", card), sw.reason ? `“${sw.reason}”` : "(no reason given)");
  setText($(".by", card), sw.by ? `by ${sw.by}${sw.gateway ? " on " + sw.gateway : ""}` : "");
  const since = $(".since", card);
  setText(since, sw.since ? ago(sw.since) : "");
  since.setAttribute("datetime", sw.since || "");
  since.title = stamp(sw.since);
  setText($(".rules", card), rulesText(sw.rules));

  const input = $('[data-field="weight"]', card);
  if (document.activeElement !== input && input.dataset.dirty !== "1") input.value = String(sw.weight);

  for (const armName of ARMS) updateArm(card, sw.name, armName, (sw.arms || {})[armName]);
}

function updateArm(card, swName, armName, arm) {
  const box = $(`[data-arm="${armName}"]`, card);
  if (!arm) return;
  const key = `${swName}/${armName}`;
  record(key, arm);
  setText($(".error-rate", box), pct(arm.error_rate));
  setText($(".p99", box), msText(arm.p99_ms));
  setText($(".requests", box), String(arm.requests));
  setText($(".failures", box), String(arm.failures));
  setText($(".window", box), `over ${arm.window} · p50 ${msText(arm.p50_ms)} · p90 ${msText(arm.p90_ms)}`);
  box.classList.toggle("bad", arm.error_rate > 0.05 || arm.probe_healthy === false);
  const probe = $(".probe", box);
  if (arm.probe_healthy === undefined || arm.probe_healthy === null) {
    toggle(probe, false);
  } else {
    setText(probe, arm.probe_healthy ? "probe: healthy" : `probe: FAILING ${arm.probe_error || ""}`);
    probe.dataset.healthy = String(arm.probe_healthy);
    toggle(probe, true);
  }
  const list = samples.get(key) || [];
  const [rateSvg, p99Svg] = box.querySelectorAll("svg.spark");
  drawSpark(rateSvg, list.map((s) => s.rate), 0.05, pct);
  drawSpark(p99Svg, list.map((s) => s.p99), 10, msText);
}

// renderHistory fills a switch's history table, newest first.
function renderHistory(card, history) {
  const rows = (history || []).slice(-HISTORY_SHOWN).reverse().map((ev) =>
    el("tr", { className: `ev ev-${ev.kind}`, dataset: { kind: ev.kind } },
      el("td", { title: stamp(ev.at) }, el("time", { datetime: ev.at, text: ago(ev.at) })),
      el("td", {}, el("span", { className: `badge kind-${ev.kind}`, text: ev.kind })),
      el("td", { text: ev.mode || "" }),
      el("td", { text: ev.weight === undefined ? "" : String(ev.weight) }),
      el("td", { text: [ev.rule, ev.reason].filter(Boolean).join(": ") }),
      el("td", { text: [ev.by, ev.gateway].filter(Boolean).join(" @ ") })));
  const body = $(".history-rows", card);
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "6", className: "muted", text: "no changes yet" })));
  body.replaceChildren(...rows);
}

// renderStore shows the state store's health in the header.
function renderStore(store, gateway) {
  setText($("#gateway"), gateway ? `gateway ${gateway}` : "");
  const node = $("#store-status");
  const status = store ? store.status : "unknown";
  const backend = store ? store.backend : "?";
  node.dataset.status = status;
  node.title = backend;
  // The backend is "local /path/to/state.db" or "consul ADDR/prefix"; the
  // header shows its kind and the title attribute the rest.
  let text = `store ${backend.split(" ")[0]}: ${status}`;
  if (status === "degraded") {
    text = `STORE DEGRADED (${backend})${store.error ? ": " + store.error : ""}${store.since ? " since " + ago(store.since) : ""}: serving on last known state`;
  }
  setText(node, text);
}

// pollSwitches reads every switch with its history, once a second.
async function pollSwitches() {
  const list = await api("GET", "/switches");
  renderStore(list.store, list.gateway);
  const details = await Promise.all(list.switches.map((s) =>
    api("GET", "/switches/" + encodeURIComponent(s.name)).catch(() => s)));
  const container = $("#switch-list");
  if (details.length === 0) {
    container.replaceChildren(el("p", { className: "muted", text: "No switches in the running config." }));
    switchCards.clear();
    return;
  }
  const seen = new Set();
  for (const sw of details) {
    seen.add(sw.name);
    let card = switchCards.get(sw.name);
    if (!card) {
      card = buildSwitch(sw.name);
      switchCards.set(sw.name, card);
    }
    updateSwitch(card, sw);
    if (sw.history) renderHistory(card, sw.history);
  }
  for (const [name, card] of switchCards) {
    if (!seen.has(name)) { card.remove(); switchCards.delete(name); }
  }
  // Keep the cards in name order, appending new ones.
  const ordered = [...seen].sort().map((n) => switchCards.get(n));
  if (ordered.some((c, i) => container.children[i] !== c) || container.children.length !== ordered.length) {
    container.replaceChildren(...ordered);
  }
}

// --- rollback points -----------------------------------------------------

function verifiedCell(p) {
  if (!p.last_verified) return el("td", { className: "muted", text: "never" });
  const ok = p.verified && !p.verify_error;
  return el("td", { className: ok ? "ok" : "bad", title: p.verify_error || stamp(p.last_verified) },
    `${ok ? "✓" : "✗"} ${ago(p.last_verified)}`);
}

async function pollPoints() {
  const points = await api("GET", "/points?limit=50");
  const rows = points.map((p) =>
    el("tr", { dataset: { point: p.id } },
      el("td", { className: "mono", text: p.id, title: p.metadata ? JSON.stringify(p.metadata) : "" }),
      el("td", {}, p.type + (p.components && p.components.length ? ` (${p.components.join(", ")})` : ""),
        el("div", { className: "muted", text: p.host ? `on ${p.host}` : "", title: p.host_id ? `host id ${p.host_id}: its objects are on that host's disk` : "" })),
      el("td", { title: stamp(p.created) }, el("time", { datetime: p.created, text: ago(p.created) })),
      el("td", { className: "num", text: humanSize(p.size) }),
      el("td", { className: "num", text: p.files.toLocaleString() }),
      el("td", {}, ...(p.tags || []).map((t) => el("span", { className: "tag", text: t }))),
      verifiedCell(p),
      el("td", {}, el("button", { type: "button", dataset: { action: "verify", point: p.id }, text: "Verify" }))));
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "8", className: "muted", text: "No rollback points yet. Create one before any change you may need to undo." })));
  $("#point-rows").replaceChildren(...rows);
}

// --- operations ----------------------------------------------------------

function renderOperation(op) {
  const steps = (op.steps_completed || []).map((s) =>
    el("li", { className: s.error ? "bad" : "" },
      el("span", { className: "step-name", text: s.name }), " ",
      el("span", { className: "step-dur mono", text: s.duration }),
      s.detail ? el("span", { className: "muted", text: ` ${s.detail}` }) : "",
      s.error ? el("span", { className: "step-err", text: ` ${s.error}` }) : ""));
  return el("article", { className: "operation", dataset: { op: op.id, status: op.status } },
    el("header", {},
      el("span", { className: "badge kind", text: op.kind }),
      el("span", { className: `badge status status-${op.status}`, text: op.status }),
      el("span", { className: "mono op-id", text: op.id })),
    el("p", { className: "muted" },
      [op.trigger && `trigger ${op.trigger}`, op.point && `point ${op.point}`, `started ${ago(op.started)}`, op.duration && `took ${op.duration}`]
        .filter(Boolean).join(" · ")),
    op.reason ? el("p", { text: `“${op.reason}”` }) : "",
    (op.errors || []).length ? el("p", { className: "step-err", text: op.errors.join("; ") }) : "",
    steps.length ? el("details", {}, el("summary", { text: `${steps.length} steps` }), el("ol", { className: "steps" }, ...steps)) : "",
    el("button", { type: "button", dataset: { action: "report", op: op.id }, text: "Incident report" }));
}

async function pollOperations() {
  const ops = await api("GET", "/operations?limit=20");
  // Keep open step lists open across refreshes.
  const open = new Set([...document.querySelectorAll("#operation-list details[open]")].map((d) => d.closest("[data-op]").dataset.op));
  const cards = ops.map(renderOperation);
  for (const c of cards) if (open.has(c.dataset.op)) { const d = c.querySelector("details"); if (d) d.open = true; }
  if (cards.length === 0) cards.push(el("p", { className: "muted", text: "No operations recorded yet." }));
  $("#operation-list").replaceChildren(...cards);
}

// --- dialogs -------------------------------------------------------------

// ask opens a dialog and resolves with the reason typed, or null if the
// user cancelled. reasonInput must be non-empty when required.
function ask(dialog, reasonInput, required) {
  return new Promise((resolve) => {
    reasonInput.value = "";
    reasonInput.required = required;
    const form = dialog.querySelector("form");
    const cancel = dialog.querySelector('button[value="cancel"]');
    const done = (value) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onSubmit = (e) => { e.preventDefault(); done(reasonInput.value.trim()); };
    const onCancel = (e) => { e.preventDefault(); done(null); };
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    reasonInput.focus();
  });
}

// confirmAction asks for confirmation (and a reason) with the generic
// dialog.
function confirmAction(title, text, button, required) {
  setText($("#confirm-title"), title);
  setText($("#confirm-text"), text);
  setText($("#confirm-ok"), button);
  $("#confirm-reason").placeholder = required ? "why (required)" : "why (optional)";
  return ask($("#confirm-dialog"), $("#confirm-reason"), required);
}

async function showReport(id) {
  const text = await api("GET", `/operations/${encodeURIComponent(id)}/report`);
  setText($("#report-title"), `Incident report: ${id}`);
  setText($("#report-text"), text);
  $("#report-dialog").showModal();
}

// --- actions -------------------------------------------------------------

// run performs an action, reports its outcome and refreshes the panels.
async function run(label, fn) {
  try {
    const out = await fn();
    if (out === null) return; // cancelled
    say(out && out.warning ? `${label}: ${out.warning}` : `${label}: done`, out && out.warning ? "error" : "ok");
  } catch (err) {
    say(`${label} failed: ${err.message}`, "error");
  }
  refreshAll();
}

const actions = {
  "force-legacy": (btn) => run(`force ${btn.dataset.switch} to legacy`, async () => {
    setText($("#legacy-switch"), btn.dataset.switch);
    const reason = await ask($("#legacy-dialog"), $("#legacy-reason"), true);
    if (reason === null) return null;
    return api("POST", `/switches/${encodeURIComponent(btn.dataset.switch)}/mode`, { mode: "legacy", reason, by: "dashboard" });
  }),
  "reset": (btn) => run(`reset ${btn.dataset.switch}`, async () => {
    const reason = await confirmAction(`Reset switch ${btn.dataset.switch}?`,
      "It goes back to split at its weight before the trip, and consolidated takes traffic again.", "Reset", false);
    if (reason === null) return null;
    return api("POST", `/switches/${encodeURIComponent(btn.dataset.switch)}/reset`, { reason: reason || "reset from dashboard", by: "dashboard" });
  }),
  "set-weight": (btn) => run(`set weight of ${btn.dataset.switch}`, async () => {
    const input = btn.form.querySelector('[data-field="weight"]');
    const weight = Number(input.value);
    if (input.value.trim() === "" || !Number.isFinite(weight) || weight < 0 || weight > 100 || !Number.isInteger(Math.round(weight * 1e6) / 1e4)) throw new Error("the weight must be a percent from 0 to 100 with at most 2 decimals");
    const out = await api("POST", `/switches/${encodeURIComponent(btn.dataset.switch)}/weight`, { weight, reason: `weight ${weight}% from dashboard`, by: "dashboard" });
    delete input.dataset.dirty;
    return out;
  }),
  "emergency": () => run("emergency rollback", async () => {
    const reason = await confirmAction("Emergency rollback?",
      "This forces every switch to legacy, then restores the newest verified full_system point (or the newest partial one) and validates it.",
      "Run emergency rollback", true);
    if (reason === null) return null;
    say("emergency rollback running…");
    return api("POST", "/emergency", { reason, by: "dashboard" });
  }),
  "verify": (btn) => run(`verify ${btn.dataset.point}`, async () => {
    btn.disabled = true;
    try {
      return await api("POST", `/points/${encodeURIComponent(btn.dataset.point)}/verify`);
    } finally { btn.disabled = false; }
  }),
  "verify-all": () => run("verify all points", () => api("POST", "/points/verify")),
  "create-point": () => run("create point", () => {
    const type = $("#point-type").value;
    const component = $("#point-component").value.trim();
    const tags = $("#point-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
    const body = { type, tags, metadata: { source: "dashboard" }, trigger: "manual" };
    if (component) body.component = component;
    say(`creating a ${type} point…`);
    return api("POST", "/points", body);
  }),
  "report": (btn) => showReport(btn.dataset.op).catch((err) => say(`report failed: ${err.message}`, "error")),
};

// One delegated listener handles every [data-action] button, including
// those in cards rebuilt by polling.
function onClick(e) {
  const btn = e.target.closest("button[data-action]");
  if (!btn || btn.type === "submit" || btn.closest("dialog")) return;
  const fn = actions[btn.dataset.action];
  if (fn) { e.preventDefault(); fn(btn); }
}

// Forms submit on Enter as well as on their button.
function onSubmit(e) {
  const form = e.target;
  if (form.closest("dialog")) return;
  e.preventDefault();
  const btn = form.querySelector('button[type="submit"][data-action]');
  if (btn) actions[btn.dataset.action](btn);
}

// --- polling -------------------------------------------------------------

let lastOK = 0;

async function tick() {
  try {
    await pollSwitches();
    lastOK = Date.now();
    banner("");
    setText($("#updated"), `updated ${new Date(lastOK).toLocaleTimeString()}`);
  } catch (err) {
    banner(`Cannot read switches: ${err.message}${lastOK ? ` (last update ${ago(new Date(lastOK).toISOString())})` : ""}`);
  }
}

async function slowTick() {
  const results = await Promise.allSettled([pollPoints(), pollOperations()]);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) say(failed.join("; "), "error");
}

function refreshAll() { tick(); slowTick(); }

// every runs fn now and then every ms, never overlapping itself.
function every(ms, fn) {
  const loop = async () => { await fn(); setTimeout(loop, ms); };
  loop();
}

function init() {
  document.addEventListener("click", onClick);
  document.addEventListener("submit", onSubmit);
  // A weight being edited is not overwritten by polling until it is set.
  document.addEventListener("input", (e) => {
    if (e.target.matches('[data-field="weight"]')) e.target.dataset.dirty = "1";
  });
  $("#report-close").addEventListener("click", () => $("#report-dialog").close());
  $("#report-copy").addEventListener("click", () => {
    navigator.clipboard.writeText($("#report-text").textContent).then(() => say("report copied"), (err) => say(`copy failed: ${err.message}`, "error"));
  });
  every(POLL_MS, tick);
  every(SLOW_POLL_MS, slowTick);
}

init();
