// rf-ray dashboard: the experiments list, one experiment's runs, curves and ops.
// Plain JS, no libraries, nothing fetched from the network but this server's JSON API.
// The page polls for what changed (cursors: the server sends only new rows) every pollMs.
"use strict";

const CONFIG = JSON.parse(document.querySelector('meta[name="rf-ray-config"]').content);
const SVG = "http://www.w3.org/2000/svg";
const LIVE = new Set(["pending", "running"]);
const OPS = [ // op, label, statuses it applies to (the scheduler decides; this only greys out)
  ["stop", "stop", (s) => LIVE.has(s)],
  ["resume", "resume", (s) => s === "stopped" || s === "pruned"],
  ["prune", "prune", (s) => LIVE.has(s)],
  ["delete", "delete", (s) => s !== "deleted"],
  ["clone", "clone…", (s) => s !== "deleted"],
];
const $ = (sel) => document.querySelector(sel);

let view = null; // the experiment shown: {name, cursor, runs, steps, chunks, ...}
let timer = null;

// ------------------------------------------------------------------ helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  return typeof v === "string" ? v : JSON.stringify(v);
}

function color(runId) { return `hsl(${(runId * 137.508) % 360}, 62%, 44%)`; }

function message(text, isError = false) {
  const box = $("#message");
  box.textContent = text;
  box.className = isError ? "error" : "";
}

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

async function post(url, body) {
  const r = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-RF-Ray-CSRF": CONFIG.csrf },
    body: JSON.stringify(body || {}),
  });
  const answer = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(answer.error || `HTTP ${r.status}`);
  return answer;
}

// ------------------------------------------------------------------ routing

function route() {
  clearTimeout(timer);
  const m = location.hash.match(/^#\/e\/(.+)$/);
  if (m) openExperiment(decodeURIComponent(m[1])); else showExperiments();
}

async function showExperiments() {
  view = null;
  $("#experiment-view").hidden = true;
  $("#experiments-view").hidden = false;
  try {
    const data = await getJSON("/api/experiments");
    renderExperimentList(data);
    if (data.experiments.length === 1 && !location.hash) {
      location.hash = `#/e/${encodeURIComponent(data.experiments[0].name)}`;
      return;
    }
  } catch (e) { $("#root-path").textContent = e.message; }
  timer = setTimeout(showExperiments, Math.max(CONFIG.pollMs, 2000));
}

function renderExperimentList(data) {
  $("#root-path").textContent = data.root;
  const body = $("#experiments tbody");
  body.replaceChildren(...data.experiments.map((x) => el("tr", {},
    el("td", {}, el("a", { href: `#/e/${encodeURIComponent(x.name)}`, text: x.name })),
    el("td", { text: x.running ? "running" : x.status }),
    el("td", { class: "num", text: String(x.runs) }),
    el("td", { text: x.error || Object.entries(x.by_status).map(([s, n]) => `${n} ${s}`).join(", ") }),
  )));
  $("#experiment-links").replaceChildren(...data.experiments.map((x) =>
    el("a", { href: `#/e/${encodeURIComponent(x.name)}`, text: x.name })));
}

// ------------------------------------------------------------------ one experiment

function openExperiment(name) {
  view = { name, cursor: {}, runs: new Map(), steps: new Map(), chunks: new Map(),
           differing: null, running: false, rows: new Map(), mlflow: {} };
  $("#experiments-view").hidden = true;
  $("#experiment-view").hidden = false;
  $("#exp-title").textContent = name;
  $("#runs tbody").replaceChildren();
  message("");
  getJSON("/api/experiments").then(renderExperimentList).catch(() => {});
  poll(view);
}

async function poll(v) {
  const q = new URLSearchParams(v.cursor).toString();
  let delay = CONFIG.pollMs;
  try {
    const data = await getJSON(`/api/experiments/${encodeURIComponent(v.name)}?${q}`);
    if (v !== view) return; // the user moved on
    merge(v, data);
    render(v);
    if (data.more) delay = 0;
  } catch (e) {
    if (v !== view) return;
    message(`cannot read the experiment: ${e.message}`, true);
  }
  timer = setTimeout(() => poll(v), delay);
}

function merge(v, data) {
  v.cursor = data.cursor;
  v.running = data.running;
  v.status = data.status;
  v.metric = data.metric;
  v.mode = data.mode;
  v.pruner = data.pruner;
  v.knobsChanged = Boolean(data.evals) !== Boolean(v.evals);
  v.evals = Boolean(data.evals);
  Object.assign(v.mlflow, data.mlflow || {});
  v.knobsChanged ||= JSON.stringify(data.differing) !== JSON.stringify(v.differing);
  v.differing = data.differing;
  v.changed = new Set();
  for (const row of data.runs) { v.runs.set(row.run_id, row); v.changed.add(row.run_id); }
  for (const [kind, points] of [["steps", data.steps], ["chunks", data.chunks]]) {
    for (const [runId, pts] of Object.entries(points)) {
      const series = v[kind].get(Number(runId)) || new Map();
      for (const [x, y] of pts) series.set(x, y);
      v[kind].set(Number(runId), series);
      v.chartsChanged = true;
    }
  }
  if (data.runs.length) v.chartsChanged = true;
}

function render(v) {
  const section = $("#experiment-view");
  section.classList.toggle("readonly", !v.running);
  const badge = $("#exp-badge");
  // Not running with "running" recorded: the driver ended or died without recording the end.
  const ended = v.status === "running" ? "not running" : v.status;
  badge.textContent = v.running ? "running" : `${ended} (read-only)`;
  badge.className = v.running ? "badge running" : "badge";
  const counts = {};
  for (const r of v.runs.values()) counts[r.status] = (counts[r.status] || 0) + 1;
  $("#exp-summary").textContent = `${v.runs.size} runs: ` +
    Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ") +
    ` · pruner ${v.pruner || "-"} on ${v.metric} (${v.mode || "-"})`;
  $("#metric-name").textContent = v.metric;
  if (v.knobsChanged) renderHead(v);
  const ids = v.knobsChanged ? [...v.runs.keys()] : [...v.changed];
  for (const id of ids.sort((a, b) => a - b)) renderRow(v, v.runs.get(id));
  for (const [id, tr] of v.rows) setButtons(tr, v.runs.get(id).status, v.running);
  if (v.chartsChanged) {
    drawChart($("#chart-chunks"), v.chunks, v, "chunk");
    drawChart($("#chart-steps"), v.steps, v, "step");
    v.chartsChanged = false;
  }
}

function renderHead(v) {
  const metric = v.metric;
  // An evals pipeline is judged by its last shard's estimate: its interval, not a best shard.
  const judged = v.evals ? `${metric} [interval]` : `best ${metric}`;
  const cells = ["run", "status", "progress", "steps", `last ${metric}`, judged,
    "pruned@", ...v.differing, "error", "MLflow"].map((h) => el("th", { text: h }));
  cells.push(el("th", { class: "actions", text: "steer" }));
  $("#runs thead").replaceChildren(el("tr", {}, ...cells));
  v.rows.clear();
  $("#runs tbody").replaceChildren();
}

function renderRow(v, r) {
  let tr = v.rows.get(r.run_id);
  if (!tr) {
    tr = el("tr", { "data-run-id": String(r.run_id) });
    tr.addEventListener("mouseenter", () => highlight(r.run_id, true));
    tr.addEventListener("mouseleave", () => highlight(r.run_id, false));
    const before = [...v.rows.keys()].filter((id) => id > r.run_id).sort((a, b) => a - b)[0];
    $("#runs tbody").insertBefore(tr, before === undefined ? null : v.rows.get(before));
    v.rows.set(r.run_id, tr);
  }
  const swatch = el("span", { class: "swatch" });
  swatch.style.background = color(r.run_id);
  const runCell = el("td", {}, swatch, String(r.run_id));
  if (r.parent_run_id !== null) runCell.append(el("span", { class: "muted", text: ` ← ${r.parent_run_id}` }));
  const error = r.error ? r.error.trim().split("\n").pop() : "";
  const link = v.mlflow[r.run_id];
  const cells = [
    runCell,
    el("td", { class: `status status-${r.status}`, text: r.status }),
    el("td", { class: "num progress", title: `${r.chunks_done} of ${r.total_chunks} ${v.evals ? "shards" : "chunks"} in all`,
               text: r.progress }),
    el("td", { class: "num", text: `${r.steps_done}/${r.total_steps}` }),
    el("td", { class: "num", text: fmt(r.last_metric) }),
    v.evals ? el("td", { class: "num interval", title: "the estimate over every row so far, with its confidence interval",
                         text: r.interval || "-" })
            : el("td", { class: "num", text: fmt(r.best_metric) }),
    el("td", { class: "num", text: fmt(r.pruned_at) }),
    ...v.differing.map((k) => el("td", { text: fmt((r.params || {})[k]) })),
    el("td", { class: "error", title: r.error || "", text: error }),
    el("td", {}, link ? el("a", { href: link, target: "_blank", rel: "noopener", text: "open" })
                      : el("span", { class: "muted", title: "start the dashboard with --mlflow to link runs",
                                     text: r.mlflow_run_id ? r.mlflow_run_id.slice(0, 8) : "-" })),
    el("td", { class: "actions" }, ...OPS.map(([op, label]) =>
      el("button", { type: "button", "data-op": op, text: label }))),
  ];
  tr.replaceChildren(...cells);
  for (const b of tr.querySelectorAll("button")) b.addEventListener("click", () => steer(v, r.run_id, b.dataset.op, b));
  setButtons(tr, r.status, v.running);
}

function setButtons(tr, status, running) {
  for (const b of tr.querySelectorAll("button")) {
    const rule = OPS.find(([op]) => op === b.dataset.op)[2];
    b.disabled = !running || b.dataset.busy === "1" || !rule(status);
  }
}

function highlight(runId, on) {
  for (const node of document.querySelectorAll(`[data-series="${runId}"]`)) node.classList.toggle("hot", on);
  const tr = view && view.rows.get(runId);
  if (tr) tr.classList.toggle("hot", on);
}

// ------------------------------------------------------------------ steering

async function steer(v, runId, op, button) {
  if (op === "clone") { openClone(v, runId); return; }
  if (op === "delete" && !confirm(`Delete run ${runId}? Its adapter is removed.`)) return;
  button.dataset.busy = "1";
  button.disabled = true;
  message(`${op} run ${runId}…`);
  try {
    const answer = await post(`/api/experiments/${encodeURIComponent(v.name)}/runs/${runId}/${op}`);
    message(`run ${runId}: ${op} applied (status ${answer.status})`);
  } catch (e) {
    message(`${op} run ${runId} refused: ${e.message}`, true);
  } finally {
    delete button.dataset.busy;
  }
}

async function openClone(v, runId) {
  const dialog = $("#clone-dialog");
  $("#clone-error").textContent = "";
  $("#clone-extra").value = "";
  $("#clone-warm").checked = false;
  $("#clone-title").textContent = `Clone run ${runId}`;
  let params, readOnly;
  try {
    const answer = await getJSON(`/api/experiments/${encodeURIComponent(v.name)}/runs/${runId}/params`);
    params = answer.params;
    readOnly = new Set(answer.read_only); // functions (text cannot carry code), model, trainer
  } catch (e) { message(`clone run ${runId}: ${e.message}`, true); return; }
  const fields = $("#clone-fields");
  fields.replaceChildren();
  for (const [key, value] of Object.entries(params)) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    const input = el("input", { name: key, id: `knob-${key}`, "data-original": value === "***" ? "" : text });
    if (value === "***") input.placeholder = "hidden (kept unless you type a new value)";
    else input.value = text;
    if (readOnly.has(key)) {
      input.readOnly = true;
      input.title = "a clone keeps this (functions: clone from Python with exp.clone_modify)";
    }
    fields.append(el("label", { for: `knob-${key}`, text: key }), input);
  }
  dialog.dataset.runId = String(runId);
  dialog.showModal();
}

async function submitClone(event) {
  event.preventDefault();
  const dialog = $("#clone-dialog");
  const runId = Number(dialog.dataset.runId);
  const changes = {};
  for (const input of $("#clone-fields").querySelectorAll("input")) {
    if (!input.readOnly && input.value !== input.dataset.original) changes[input.name] = input.value;
  }
  for (const line of $("#clone-extra").value.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    changes[at < 0 ? line.trim() : line.slice(0, at).trim()] = at < 0 ? "" : line.slice(at + 1).trim();
  }
  const submit = $("#clone-submit");
  submit.disabled = true;
  try {
    const answer = await post(`/api/experiments/${encodeURIComponent(view.name)}/runs/${runId}/clone`,
      { changes, warm_start: $("#clone-warm").checked });
    dialog.close();
    message(`run ${runId} cloned as run ${answer.run_id}`);
  } catch (e) {
    $("#clone-error").textContent = e.message;
  } finally {
    submit.disabled = false;
  }
}

// ------------------------------------------------------------------ charts (inline SVG)

const BOX = { left: 48, right: 624, top: 10, bottom: 236 };
const MAX_DRAWN = 300; // points per run drawn; longer series are thinned evenly

function drawChart(node, seriesByRun, v, xName) {
  const lines = [];
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const [runId, series] of seriesByRun) {
    const run = v.runs.get(runId);
    if (!run) continue;
    let pts = [...series.entries()].sort((a, b) => a[0] - b[0]);
    if (pts.length > MAX_DRAWN) {
      const step = pts.length / MAX_DRAWN;
      pts = Array.from({ length: MAX_DRAWN }, (_, i) => pts[Math.floor(i * step)]).concat([pts[pts.length - 1]]);
    }
    for (const [x, y] of pts) {
      if (y === null) continue;
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
    lines.push([runId, run, pts]);
  }
  const children = [];
  if (!lines.length) {
    children.push(svg("text", { x: 260, y: 130 }));
    children[0].textContent = "no points yet";
    node.replaceChildren(...children);
    return;
  }
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y1 += 0.5; y0 -= 0.5; }
  const sx = (x) => BOX.left + ((x - x0) / (x1 - x0)) * (BOX.right - BOX.left);
  const sy = (y) => BOX.bottom - ((y - y0) / (y1 - y0)) * (BOX.bottom - BOX.top);
  children.push(svg("line", { class: "axis", x1: BOX.left, y1: BOX.bottom, x2: BOX.right, y2: BOX.bottom }));
  children.push(svg("line", { class: "axis", x1: BOX.left, y1: BOX.top, x2: BOX.left, y2: BOX.bottom }));
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    const t = svg("text", { x: 2, y: sy(y) + 4 });
    t.textContent = y.toPrecision(3);
    children.push(t);
  }
  for (const xv of xTicks(x0, x1)) {
    const tx = svg("text", { x: sx(xv), y: 252, "text-anchor": "middle" });
    tx.textContent = String(xv);
    children.push(tx);
  }
  for (const [runId, run, pts] of lines) {
    const shown = pts.filter(([, y]) => y !== null);
    const attrs = { "data-series": runId, stroke: color(runId),
                    points: shown.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ") };
    if (run.status !== "running" && run.status !== "pending" && run.status !== "completed") {
      attrs["stroke-dasharray"] = "4 3"; // stopped, pruned, failed or deleted
    }
    children.push(svg("polyline", attrs));
    if (xName === "chunk") { // few points per run: mark each one (a single point has no line)
      for (const [x, y] of shown) {
        children.push(svg("circle", { "data-series": runId, cx: sx(x).toFixed(1), cy: sy(y).toFixed(1),
                                      r: 2.5, fill: color(runId) }));
      }
    }
    if (run.status === "pruned" && shown.length) {
      // The pruning point: where the run's curve stops (its last chunk at or before the rung).
      const at = xName === "chunk" && run.pruned_at !== null
        ? (shown.filter(([x]) => x <= run.pruned_at).pop() || shown[shown.length - 1])
        : shown[shown.length - 1];
      const [cx, cy] = [sx(at[0]), sy(at[1])];
      children.push(svg("path", { class: "pruned", "data-series": runId, stroke: color(runId),
        d: `M${cx - 4},${cy - 4}L${cx + 4},${cy + 4}M${cx - 4},${cy + 4}L${cx + 4},${cy - 4}` }));
    }
  }
  node.replaceChildren(...children);
}

function xTicks(x0, x1) {
  // Whole numbers (steps and chunks are counts), a 1-2-5 stride giving about five ticks.
  const first = Math.ceil(x0);
  const raw = Math.max((Math.floor(x1) - first) / 5, 1);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const stride = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let x = first; x <= x1; x += stride) ticks.push(x);
  return ticks;
}

// ------------------------------------------------------------------ start

$("#clone-form").addEventListener("submit", submitClone);
$("#clone-cancel").addEventListener("click", () => $("#clone-dialog").close());
window.addEventListener("hashchange", route);
route();
