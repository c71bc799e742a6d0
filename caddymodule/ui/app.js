// switchback dashboard.
//
// Plain JavaScript, no framework and no build step. It polls the switchback
// API and renders three panels: switches (with live per-arm error rate and
// p99, a 5-minute sparkline kept in memory, the rules, the rollout and the
// shadow report), rollback points and operations.
//
// The same page is served in two places, and every URL in it is relative:
//   - the admin endpoint's /switchback/ui/, with the API at ../ (Caddy's
//     admin origin enforcement applies to its POSTs as to any client's);
//   - a site's switchback_dashboard handler, at any path prefix, with the
//     API at api/, behind the site's own authentication. There every POST
//     must be same-origin and carry the X-Switchback-Action header, which
//     this page sends and a cross-site form cannot.
// The server says where the API is in <meta name="switchback-api">, and
// GET session says who the page acts as and whether it may act at all.
//
// The rollout and shadow views render what the API offers: a switch with
// no rollout has no "rollout" object, and a gateway without shadow answers
// GET .../shadow with 404; either view then stays hidden.
//
// The page is served with a strict Content-Security-Policy: no inline
// scripts or styles. Everything is built with DOM calls and styled through
// classes in style.css; user-supplied text is only ever set as textContent.

const API = (document.querySelector('meta[name="switchback-api"]') || {}).content || "..";
const ACTION_HEADER = "X-Switchback-Action";
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
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") opts.headers[ACTION_HEADER] = "1";
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(API + path, opts);
  } catch (err) {
    const e = new Error(`gateway unreachable (${err.message}): is switchback running? From a shell, try the CLI with --config FILE for offline mode`);
    e.status = 0;
    throw e;
  }
  const type = resp.headers.get("Content-Type") || "";
  const payload = type.includes("json") ? await resp.json().catch(() => null) : await resp.text();
  if (!resp.ok) {
    const msg = payload && payload.error ? payload.error : (typeof payload === "string" && payload.trim()) || resp.statusText;
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

// num renders a number generically: at most two decimals, no trailing
// zeros (12.5, 0.01, 30).
function num(x) {
  if (!Number.isFinite(x)) return "–";
  return String(+x.toFixed(2));
}

// pctOf renders a percentage that is already in percent (a weight, a step).
function pctOf(p) { return num(p) + "%"; }

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
    type: "number", min: "0", max: "100", step: "0.01", inputmode: "decimal", className: "act",
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
    el("div", { className: "both-unhealthy alert hidden", role: "alert", text: "BOTH ARMS UNHEALTHY: legacy fails like consolidated, so no trip" }),
    el("p", { className: "last-change" },
      el("span", { className: "reason" }), " ",
      el("span", { className: "by muted" }), " ",
      el("time", { className: "since muted" })),
    el("p", { className: "rules muted" }),
    el("div", { className: "arms" }, ...ARMS.map((a) => buildArm(name, a))),
    el("section", { className: "rollout hidden", "aria-label": `Rollout of switch ${name}` }),
    el("section", { className: "shadow hidden", "aria-label": `Shadow report of switch ${name}` }),
    el("form", { className: "actions act", dataset: { form: "weight" }, "aria-label": `Actions for switch ${name}` },
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
  card.querySelector("details.history").open = true;
  return card;
}

function modeText(sw) {
  if (sw.mode === "split") return `${pctOf(100 - sw.weight)} legacy / ${pctOf(sw.weight)} consolidated`;
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
  renderRollout(card, sw);
  const both = $(".both-unhealthy", card);
  if (both) toggle(both, Boolean(sw.both_unhealthy));
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
      el("td", { text: ev.weight === undefined ? "" : pctOf(ev.weight) }),
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
  let added = false;
  for (const sw of details) {
    seen.add(sw.name);
    let card = switchCards.get(sw.name);
    if (!card) {
      card = buildSwitch(sw.name);
      switchCards.set(sw.name, card);
      added = true;
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
  // A new card shows its shadow report now, not at the next slow poll.
  if (added) pollShadow().catch((err) => say(`shadow report failed: ${err.message}`, "error"));
}

// --- rollout -------------------------------------------------------------

// ROLLOUT_ACTIONS lists the buttons offered in each rollout state. The
// server decides; a refused action shows its reason.
const ROLLOUT_ACTIONS = {
  idle: ["start", "promote"],
  running: ["pause", "abort", "promote"],
  paused: ["resume", "abort", "promote"],
  waiting_approval: ["approve", "pause", "abort", "promote"],
  aborted: ["retry", "promote"],
  completed: [],
};
const ALL_ROLLOUT_ACTIONS = ["start", "pause", "resume", "approve", "abort", "retry", "promote"];

// renderRollout draws a switch's rollout: its steps as a progress bar,
// what it waits for, the actions and each decision with its evidence. It
// rebuilds only when the rollout changed, so open details stay open.
function renderRollout(card, sw) {
  const box = $(".rollout", card);
  const ro = sw.rollout;
  if (!ro || !Array.isArray(ro.steps)) {
    toggle(box, false);
    box.dataset.sig = "";
    return;
  }
  toggle(box, true);
  const sig = JSON.stringify([ro, sw.rollout_evidence]);
  if (box.dataset.sig === sig) {
    const since = $(".rollout-since", box);
    if (since) setText(since, ro.step_started ? `since ${ago(ro.step_started)}` : "");
    return;
  }
  box.dataset.sig = sig;
  const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.dataset.key));
  const state = ro.state || "idle";
  const gates = new Set(ro.gates || []);
  const approved = new Set((ro.approvals || []).map((a) => a.step));
  const steps = ro.steps.map((p, i) => {
    let cls = "todo";
    if (state === "completed" || i < ro.step) cls = "done";
    else if (i === ro.step && state !== "idle") cls = "current";
    const label = [pctOf(p)];
    if (gates.has(p)) label.push(approved.has(p) ? "✓ approved" : "needs approval");
    return el("li", { className: `step step-${cls}${gates.has(p) ? " step-gate" : ""}`, dataset: { step: String(p), index: String(i) },
      title: cls === "current" ? "current step" : cls }, label.join(" · "));
  });
  const current = ro.steps[ro.step];
  const facts = [
    state === "idle" ? "not started" : `step ${ro.step + 1} of ${ro.steps.length} (${pctOf(current)})`,
    ro.hold && `hold ${ro.hold}`,
    ro.min_requests && `min ${ro.min_requests} requests`,
    gates.size && `approval at ${[...gates].map(pctOf).join(", ")}`,
  ].filter(Boolean).join(" · ");
  const actions = ROLLOUT_ACTIONS[state] || ALL_ROLLOUT_ACTIONS;
  const decisions = (ro.decisions || []).slice().reverse();
  box.replaceChildren(
    el("h4", {}, "Rollout ", el("span", { className: `badge rollout-state state-${state}`, text: state.replace("_", " ") })),
    el("ol", { className: "step-bar", "aria-label": "rollout steps" }, ...steps),
    el("p", { className: "rollout-facts muted" }, facts, " ", el("span", { className: "rollout-since", text: ro.step_started && state !== "idle" ? `since ${ago(ro.step_started)}` : "" })),
    ro.waiting ? el("p", { className: "rollout-waiting", text: ro.waiting }) : "",
    sw.rollout_evidence ? el("details", { className: "evidence current-evidence", dataset: { key: "current" } },
      el("summary", { text: "evidence at this step, so far" }), renderEvidence(sw.rollout_evidence)) : "",
    (ro.approvals || []).length ? el("p", { className: "muted", text: "approvals: " + ro.approvals.map((a) => `${pctOf(a.step)} by ${a.by} ${ago(a.at)}`).join("; ") }) : "",
    actions.length ? el("div", { className: "rollout-actions act" }, ...actions.map((a) =>
      el("button", { type: "button", className: a === "abort" ? "danger" : a === "promote" ? "warn" : "",
        dataset: { action: "rollout", rollout: a, switch: sw.name }, text: a === "promote" ? "Promote…" : a[0].toUpperCase() + a.slice(1) + "…" }))) : "",
    decisions.length ? el("details", { className: "decisions", dataset: { key: "decisions" } },
      el("summary", { text: `Decisions (${decisions.length}), newest first` }),
      el("ol", { className: "decision-list" }, ...decisions.map((d, i) => renderDecision(d, i, open)))) : "");
  const cur = $("details.current-evidence", box);
  if (cur && open.has("current")) cur.open = true;
  const det = $("details.decisions", box);
  // The decisions start open; once seen, they stay as the user left them.
  if (det && (open.has("decisions") || !box.dataset.seen)) det.open = true;
  if (det) box.dataset.seen = "1";
}

// renderDecision shows one decision: what, when, who, why, and the
// evidence it was made on.
function renderDecision(d, i, open) {
  const move = d.from !== undefined && d.to !== undefined && d.from !== d.to ? ` ${pctOf(d.from)} → ${pctOf(d.to)}` : "";
  const head = el("div", { className: "decision-head" },
    el("span", { className: `badge kind-${d.kind}`, text: d.kind }),
    el("span", { text: move }),
    el("time", { className: "muted", datetime: d.at, title: stamp(d.at), text: ago(d.at) }),
    d.by ? el("span", { className: "muted", text: `by ${d.by}` }) : "",
    d.rule ? el("span", { className: "mono", text: d.rule }) : "",
    d.reason ? el("span", { text: `“${d.reason}”` }) : "");
  const key = `d-${d.at}-${d.kind}`;
  const ev = d.evidence;
  const item = el("li", { className: "decision", dataset: { kind: d.kind } }, head);
  if (ev) {
    const det = el("details", { className: "evidence", dataset: { key } }, el("summary", { text: "evidence" }), renderEvidence(ev));
    det.open = open.has(key) || (i === 0 && !open.size);
    item.append(det);
  }
  return item;
}

// renderEvidence shows the numbers a decision rests on.
function renderEvidence(ev) {
  const rows = ARMS.filter((a) => ev.arms && ev.arms[a]).map((a) => {
    const s = ev.arms[a];
    return el("tr", { dataset: { arm: a } }, el("th", { text: a }),
      el("td", { className: "num", text: String(s.requests ?? "–") }), el("td", { className: "num", text: String(s.failures ?? "–") }),
      el("td", { className: "num", text: pct(s.error_rate) }), el("td", { className: "num", text: msText(s.p50_ms) }), el("td", { className: "num", text: msText(s.p99_ms) }));
  });
  const facts = [
    ev.rule && `rule ${ev.rule}`,
    ev.threshold && `threshold ${ev.threshold}`,
    Number.isFinite(ev.p_value) && `p = ${ev.p_value < 0.001 ? ev.p_value.toExponential(1) : +ev.p_value.toFixed(4)}`,
    (ev.gateways || []).length && `gateways ${ev.gateways.join(", ")}`,
  ].filter(Boolean);
  const sh = ev.shadow;
  if (sh && sh.compared !== undefined) {
    facts.push(`shadow ${sh.mismatched}/${sh.compared} mismatched (${pct(sh.mismatch_rate)})${sh.worst_route ? `, worst ${sh.worst_route}` : ""}`);
  }
  return el("div", { className: "evidence-body" },
    rows.length ? el("table", { className: "evidence-arms" },
      el("thead", {}, el("tr", {}, ...["arm", "requests", "failures", "error rate", "p50", "p99"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows)) : "",
    facts.length ? el("p", { className: "muted", text: facts.join(" · ") }) : "");
}

// --- shadow --------------------------------------------------------------

// shadowRoute remembers, per switch, the route whose samples are shown.
const shadowRoute = new Map();

// pollShadow reads each switch's shadow report. A 404 means the gateway or
// the switch has no shadow traffic: the view stays hidden.
async function pollShadow() {
  await Promise.all([...switchCards].map(async ([name, card]) => {
    const box = $(".shadow", card);
    let rep;
    try {
      rep = await api("GET", `/switches/${encodeURIComponent(name)}/shadow`);
    } catch (err) {
      if (err.status === 404 || err.status === 405) { toggle(box, false); box.dataset.sig = ""; return; }
      throw err;
    }
    if (!rep || typeof rep !== "object" || !Array.isArray(rep.routes)) { toggle(box, false); return; }
    toggle(box, true);
    const sig = JSON.stringify(rep) + "|" + (shadowRoute.get(name) || "");
    if (box.dataset.sig === sig) return;
    box.dataset.sig = sig;
    renderShadow(box, name, rep);
  }));
}

function renderShadow(box, name, rep) {
  const routes = rep.routes.slice().sort((a, b) => (b.mismatch_rate - a.mismatch_rate) || (b.mismatched - a.mismatched) || a.route.localeCompare(b.route));
  let chosen = shadowRoute.get(name);
  if (!routes.some((r) => r.route === chosen)) chosen = (routes.find((r) => (r.samples || []).length) || {}).route;
  const rows = routes.map((r) => el("tr", { className: r.route === chosen ? "chosen" : "", dataset: { route: r.route } },
    el("td", { className: "mono", text: r.route }),
    el("td", { className: "num", text: String(r.compared) }),
    el("td", { className: "num", text: String(r.mismatched) }),
    el("td", { className: "num" + (r.mismatch_rate > 0 ? " bad" : ""), text: pct(r.mismatch_rate) }),
    el("td", {}, ...(r.paths || []).slice(0, 6).map((p) => el("span", { className: "tag" + (p.noise ? " noise" : ""), title: p.noise ? "noise: differs as often between two answers of one arm" : "", text: `${p.path} ×${p.count}${p.noise ? " (noise)" : ""}` }))),
    el("td", {}, (r.samples || []).length ? el("button", { type: "button", dataset: { action: "shadow-route", route: r.route, switch: name }, text: `${r.samples.length} sample${r.samples.length > 1 ? "s" : ""}` }) : "")));
  const chosenRoute = routes.find((r) => r.route === chosen);
  box.replaceChildren(
    el("h4", {}, "Shadow traffic ", el("span", { className: "muted", text: `copies to ${rep.direction || "the other arm"}` })),
    el("p", { className: "shadow-totals" },
      `${rep.compared} compared, `, el("strong", { className: rep.mismatched ? "bad" : "ok", text: `${rep.mismatched} mismatched (${pct(rep.mismatch_rate)})` }),
      `, ${rep.noise_only || 0} noise only · ${rep.sampled} sampled, ${rep.skipped || 0} skipped, ${rep.dropped || 0} dropped`),
    routes.length ? el("div", { className: "table-wrap" }, el("table", { className: "shadow-routes" },
      el("thead", {}, el("tr", {}, ...["Route", "Compared", "Mismatched", "Rate", "Differing paths", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows))) : el("p", { className: "muted", text: "No answers compared yet." }),
    chosenRoute ? renderSamples(chosenRoute, rep.direction) : "",
    el("div", { className: "act" }, el("button", { type: "button", className: "warn", dataset: { action: "shadow-reset", switch: name }, text: "Reset shadow report…" })));
}

// renderSamples shows a route's samples side by side, served answer and
// shadow answer, with the differing parts highlighted.
function renderSamples(route, direction) {
  return el("div", { className: "samples" },
    el("h5", { text: `Samples of ${route.route}` }),
    ...(route.samples || []).map((s) => {
      const diffs = s.diffs || [];
      return el("article", { className: "sample" },
        el("p", { className: "muted" }, el("span", { className: "mono", text: s.request }), ` · ${ago(s.at)} · differs in `, el("span", { className: "mono", text: diffs.join(", ") || "nothing" })),
        el("div", { className: "side-by-side" },
          answerView(ARMS.includes(direction) ? `served (${ARMS.find((a) => a !== direction)})` : "served", s.serving, diffs),
          answerView(`shadow (${direction || "other arm"})`, s.shadow, diffs)));
    }));
}

// answerView renders one answer: status, headers and body, marking what
// the diff paths name: "status", "header Name", "body" or a JSON pointer
// into the body ("/items/3/price").
function answerView(title, a, diffs) {
  a = a || {};
  const headerDiffs = new Set(diffs.filter((d) => d.startsWith("header ")).map((d) => d.slice(7).toLowerCase()));
  const ptrs = diffs.filter((d) => d.startsWith("/"));
  const headers = Object.entries(a.headers || {}).sort(([x], [y]) => x.localeCompare(y)).map(([k, vs]) =>
    el("div", { className: "hdr" + (headerDiffs.has(k.toLowerCase()) ? " diff" : ""), text: `${k}: ${[].concat(vs).join(", ")}` }));
  for (const h of headerDiffs) {
    if (!Object.keys(a.headers || {}).some((k) => k.toLowerCase() === h)) headers.push(el("div", { className: "hdr diff missing", text: `${h}: (absent)` }));
  }
  return el("section", { className: "answer" },
    el("h6", { text: title }),
    el("div", { className: "status-line mono" + (diffs.includes("status") ? " diff" : ""), text: `status ${a.status ?? "–"}` }),
    el("div", { className: "headers mono" }, ...headers),
    bodyView(a.body, ptrs, diffs.includes("body")));
}

// bodyView pretty-prints a JSON body line by line, each line tagged with
// its JSON pointer, and marks the lines at or under a differing pointer.
// Any other body is shown as text, marked whole when it differs.
function bodyView(body, ptrs, whole) {
  const pre = el("pre", { className: "body mono" });
  if (body === undefined || body === null || body === "") { pre.textContent = "(empty body)"; pre.classList.toggle("diff", whole); return pre; }
  let v;
  try { v = JSON.parse(body); } catch { v = undefined; }
  if (v === undefined || typeof v !== "object" || v === null) {
    pre.textContent = body;
    pre.classList.toggle("diff", whole || ptrs.length > 0);
    return pre;
  }
  const lines = [];
  jsonLines(v, "", null, 0, true, lines);
  const hit = (p) => ptrs.some((d) => p === d || p.startsWith(d + "/"));
  for (const l of lines) pre.append(el("span", { className: "line" + (hit(l.ptr) ? " diff" : ""), dataset: { ptr: l.ptr }, text: l.text + "\n" }));
  return pre;
}

// jsonLines appends the lines of v pretty-printed, each with its JSON
// pointer (RFC 6901).
function jsonLines(v, ptr, key, depth, last, out) {
  const pad = "  ".repeat(depth);
  const k = key === null ? "" : JSON.stringify(key) + ": ";
  const comma = last ? "" : ",";
  if (v && typeof v === "object") {
    const isArr = Array.isArray(v);
    const entries = isArr ? v.map((x, i) => [i, x]) : Object.entries(v);
    if (entries.length === 0) { out.push({ text: pad + k + (isArr ? "[]" : "{}") + comma, ptr }); return; }
    out.push({ text: pad + k + (isArr ? "[" : "{"), ptr });
    entries.forEach(([ek, ev], i) => jsonLines(ev, ptr + "/" + String(ek).replace(/~/g, "~0").replace(/\//g, "~1"), isArr ? null : ek, depth + 1, i === entries.length - 1, out));
    out.push({ text: pad + (isArr ? "]" : "}") + comma, ptr });
    return;
  }
  out.push({ text: pad + k + JSON.stringify(v) + comma, ptr });
}

// --- session -------------------------------------------------------------

// session is GET session: who this page acts as, and whether it may act.
let session = null;

async function loadSession() {
  session = await api("GET", "/session");
  document.body.classList.toggle("read-only", Boolean(session.read_only));
  const node = $("#session");
  let text = session.via === "dashboard" ? (session.user ? `signed in as ${session.user}` : "not signed in") : "admin endpoint";
  if (session.read_only) text += " · read-only";
  setText(node, text);
  node.title = `changes are recorded as “${session.actor}”`;
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
      el("td", { text: p.type + (p.components && p.components.length ? ` (${p.components.join(", ")})` : "") }),
      el("td", { className: "host", text: p.host || "", title: p.host_id ? `host id ${p.host_id}: its objects are on that host's disk` : "" }),
      el("td", { title: stamp(p.created) }, el("time", { datetime: p.created, text: ago(p.created) })),
      el("td", { className: "num", text: humanSize(p.size) }),
      el("td", { className: "num", text: p.files.toLocaleString() }),
      el("td", {}, ...(p.tags || []).map((t) => el("span", { className: "tag", text: t }))),
      verifiedCell(p),
      el("td", { className: "act" }, el("button", { type: "button", dataset: { action: "verify", point: p.id }, text: "Verify…" }))));
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "9", className: "muted", text: "No rollback points yet. Create one before any change you may need to undo." })));
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
    el("div", { className: "op-links" },
      el("button", { type: "button", dataset: { action: "report", op: op.id }, text: "Incident report" }),
      el("a", { href: `${API}/operations/${encodeURIComponent(op.id)}/report`, download: `incident-${op.id}.md`, className: "report-link", text: "Download report (.md)" })));
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

// run performs an action, reports its outcome in words and refreshes the
// panels. fn returns the message to show, or null when the user cancelled.
async function run(label, fn) {
  try {
    const out = await fn();
    if (out === null) return; // cancelled
    say(out.warning ? `${label}: ${out.text}; ${out.warning}` : `${label}: ${out.text}`, out.warning ? "error" : "ok");
  } catch (err) {
    say(`${label} failed: ${err.message}`, "error");
  }
  refreshAll();
}

// by is the author the page names in a body; on the dashboard the server
// ignores it and records the signed-in user.
const by = "dashboard";

// switchResult words the answer of a mode, weight or reset change.
function switchResult(sw) {
  return { text: `${sw.name} is now ${sw.mode} (${modeText(sw)})`, warning: sw.warning };
}

// checkWeight parses a weight typed as a percent: 0 to 100, in steps of
// 0.01.
function checkWeight(text) {
  const w = Number(String(text).trim());
  if (String(text).trim() === "" || !Number.isFinite(w) || w < 0 || w > 100) throw new Error(`the weight must be a percent from 0 to 100, not “${text}”`);
  if (Math.abs(w * 100 - Math.round(w * 100)) > 1e-6) throw new Error(`the weight ${text} has more than two decimals: the resolution is 0.01%`);
  return +w.toFixed(2);
}

const ROLLOUT_TEXT = {
  start: "It begins at the first step and advances when each step's hold and minimum requests pass.",
  pause: "It stays at the current step and weight until resumed.",
  resume: "It continues from the current step.",
  approve: "The step waiting for approval may go ahead; your name is recorded.",
  abort: "The rollout stops and traffic moves back to legacy at once, as a trip does.",
  retry: "It starts again from the step where it was aborted.",
  promote: "It skips the remaining steps and sends 100% to consolidated now. Say why: the reason is recorded.",
};

const actions = {
  "force-legacy": (btn) => run(`force ${btn.dataset.switch} to legacy`, async () => {
    setText($("#legacy-switch"), btn.dataset.switch);
    const reason = await ask($("#legacy-dialog"), $("#legacy-reason"), true);
    if (reason === null) return null;
    return switchResult(await api("POST", `/switches/${encodeURIComponent(btn.dataset.switch)}/mode`, { mode: "legacy", reason, by }));
  }),
  "reset": (btn) => run(`reset ${btn.dataset.switch}`, async () => {
    const reason = await confirmAction(`Reset switch ${btn.dataset.switch}?`,
      "It goes back to split at its weight before the trip, and consolidated takes traffic again.", "Reset", false);
    if (reason === null) return null;
    return switchResult(await api("POST", `/switches/${encodeURIComponent(btn.dataset.switch)}/reset`, { reason: reason || "reset from dashboard", by }));
  }),
  "set-weight": (btn) => run(`set weight of ${btn.dataset.switch}`, async () => {
    const input = btn.form.querySelector('[data-field="weight"]');
    const weight = checkWeight(input.value);
    const reason = await confirmAction(`Set the weight of ${btn.dataset.switch} to ${pctOf(weight)}?`,
      `${pctOf(weight)} of users go to consolidated in mode split; a user already on an arm stays there unless the weight drops below them.`, "Set weight", false);
    if (reason === null) return null;
    const out = await api("POST", `/switches/${encodeURIComponent(btn.dataset.switch)}/weight`, { weight, reason: reason || `weight ${pctOf(weight)} from dashboard`, by });
    delete input.dataset.dirty;
    return switchResult(out);
  }),
  "rollout": (btn) => run(`${btn.dataset.rollout} rollout of ${btn.dataset.switch}`, async () => {
    const act = btn.dataset.rollout;
    const required = act === "promote";
    const reason = await confirmAction(`${act[0].toUpperCase() + act.slice(1)} the rollout of ${btn.dataset.switch}?`, ROLLOUT_TEXT[act] || "", act[0].toUpperCase() + act.slice(1), required);
    if (reason === null) return null;
    const out = await api("POST", `/switches/${encodeURIComponent(btn.dataset.switch)}/rollout`, { action: act, reason, by });
    const ro = out && out.rollout;
    if (!ro) return { text: "done", warning: out && out.warning };
    const step = Array.isArray(ro.steps) ? ro.steps[ro.step] : undefined;
    return { text: `the rollout is ${String(ro.state).replace("_", " ")}${step === undefined ? "" : ` at step ${pctOf(step)}`}${out.weight === undefined ? "" : `, weight ${pctOf(out.weight)}`}`, warning: out.warning };
  }),
  "shadow-reset": (btn) => run(`reset shadow report of ${btn.dataset.switch}`, async () => {
    const reason = await confirmAction(`Clear the shadow report of ${btn.dataset.switch}?`, "Its counts and samples start afresh; shadow traffic goes on.", "Clear report", false);
    if (reason === null) return null;
    await api("POST", `/switches/${encodeURIComponent(btn.dataset.switch)}/shadow/reset`, { reason, by });
    return { text: "the report is cleared" };
  }),
  "shadow-route": (btn) => {
    shadowRoute.set(btn.dataset.switch, btn.dataset.route);
    pollShadow().catch((err) => say(`shadow report failed: ${err.message}`, "error"));
  },
  "emergency": () => run("emergency rollback", async () => {
    const reason = await confirmAction("Emergency rollback?",
      "This forces every switch to legacy, then restores the newest verified full_system point (or the newest partial one) and validates it.",
      "Run emergency rollback", true);
    if (reason === null) return null;
    say("emergency rollback running…");
    return opResult(await api("POST", "/emergency", { reason, by }));
  }),
  "verify": (btn) => run(`verify ${btn.dataset.point}`, async () => {
    const ok = await confirmAction(`Verify point ${btn.dataset.point}?`, "Every object of the point is read and re-hashed; on a large point this takes a while.", "Verify", false);
    if (ok === null) return null;
    btn.disabled = true;
    try {
      return verifyResult([await api("POST", `/points/${encodeURIComponent(btn.dataset.point)}/verify`)]);
    } finally { btn.disabled = false; }
  }),
  "verify-all": () => run("verify all points", async () => {
    const ok = await confirmAction("Verify every point?", "Every object of every point is read and re-hashed.", "Verify all", false);
    if (ok === null) return null;
    return verifyResult(await api("POST", "/points/verify"));
  }),
  "create-point": () => run("create point", async () => {
    const type = $("#point-type").value;
    const component = $("#point-component").value.trim();
    const tags = $("#point-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
    const reason = await confirmAction(`Create a ${type} point?`, "A verified snapshot of the paths configured for this type, to restore later.", "Create point", false);
    if (reason === null) return null;
    const body = { type, tags, metadata: { source: "dashboard", reason: reason || undefined }, trigger: "manual" };
    if (component) body.component = component;
    say(`creating a ${type} point…`);
    const p = await api("POST", "/points", body);
    return { text: `created ${p.id}: ${p.files} files, ${humanSize(p.size)}` };
  }),
  "report": (btn) => showReport(btn.dataset.op).catch((err) => say(`report failed: ${err.message}`, "error")),
};

// opResult words an operation record.
function opResult(op) {
  return { text: `operation ${op.id} ${op.status}${op.duration ? ` in ${op.duration}` : ""}` };
}

// verifyResult words verify reports.
function verifyResult(reps) {
  const bad = reps.filter((r) => !r.ok);
  if (bad.length === 0) return { text: `${reps.length} point${reps.length === 1 ? "" : "s"} intact` };
  return { text: `${bad.length} of ${reps.length} FAILED: ${bad.map((r) => `${r.point}${r.manifest_error ? " (" + r.manifest_error + ")" : ` (${(r.problems || []).length} problems)`}`).join(", ")}`, warning: "see the point list" };
}

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
  const results = await Promise.allSettled([pollPoints(), pollOperations(), pollShadow()]);
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
  loadSession().catch((err) => banner(`Cannot read the session: ${err.message}`)).finally(() => {
    every(POLL_MS, tick);
    every(SLOW_POLL_MS, slowTick);
  });
}

init();
