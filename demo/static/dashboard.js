// The live dashboard: everything arrives over Server-Sent Events from the hub (/stream).
// The first event, "snapshot", carries the hub's counts, latest hits, rate, push mode and the
// graph so far, so a (re)load shows the truth at once; the badge says "live" only after it.
// Each "hit" carries the hub's own running counts, so a missed event never skews them; each
// "tick" is one second of the graph (plotted by the hub 2 s after the second ends). With a status
// directory, the snapshot has "loops" (each gunicorn worker's asyncbridge figures, as the workers
// published them) and a "loops" event follows each change.
"use strict";

const MAX_RECENT = 12;
const MAX_POINTS = 300;
const state = {
  connected: false,
  total: 0,
  paths: {},
  recent: [],
  rate: 0,
  mode: null,
  series: [], // the hub's points: {t, requests, req_p50, req_p99, pushes, arr_p50, arr_p99, mode}
  loops: undefined, // {directory, workers: [row], all: row, exited}; null: none read yet
};
// The panel's number columns, in order, after the worker's pid and state.
const LOOP_FIGURES = [
  "accepted", "pending", "running", "completed", "failed", "dropped", "stalls", "lost", "received",
];
const $ = (id) => document.getElementById(id);
let renderQueued = false;
let chart = null;

function scheduleRender() {
  if (!renderQueued) {
    renderQueued = true;
    setTimeout(render, 50);
  }
}

function setStatus(cls, text) {
  const el = $("status");
  el.className = "status " + cls;
  el.textContent = text;
}

function render() {
  renderQueued = false;
  if (!state.connected) return;
  $("total").textContent = String(state.total);
  $("rate").textContent = state.rate.toFixed(1);

  const rows = Object.entries(state.paths).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const max = rows.length ? rows[0][1] : 1;
  const body = document.createElement("tbody");
  if (!rows.length) {
    body.innerHTML = '<tr class="empty"><td colspan="3">No hits yet. Send some traffic.</td></tr>';
  }
  for (const [path, count] of rows) {
    const tr = document.createElement("tr");
    tr.dataset.path = path;
    const name = document.createElement("td");
    name.className = "path";
    name.textContent = path;
    const num = document.createElement("td");
    num.className = "num";
    num.textContent = String(count);
    const barCell = document.createElement("td");
    barCell.className = "bar-col";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = ((100 * count) / max).toFixed(1) + "%";
    barCell.appendChild(bar);
    tr.append(name, num, barCell);
    body.appendChild(tr);
  }
  $("paths").replaceChild(body, $("paths").tBodies[0]);

  $("recent").replaceChildren(
    ...state.recent.map((hit) => {
      const li = document.createElement("li");
      const when = new Date(hit.at * 1000).toLocaleTimeString();
      li.innerHTML = '<span class="when"></span><span class="rpath"></span><span class="pid"></span>';
      li.children[0].textContent = when;
      li.children[1].textContent = hit.path;
      li.children[2].textContent = hit.pid ? "worker " + hit.pid : "";
      return li;
    }),
  );

  for (const button of document.querySelectorAll(".switch button")) {
    button.setAttribute("aria-pressed", String(button.dataset.mode === state.mode));
  }
  renderLoops();
}

// The background loops ----------------------------------------------------------------------

function loopRow(label, stateText, stateClass, figures) {
  const tr = document.createElement("tr");
  const name = document.createElement("td");
  name.className = "pid";
  name.textContent = label;
  const st = document.createElement("td");
  st.className = "state " + stateClass;
  st.textContent = stateText;
  tr.append(name, st);
  for (const key of LOOP_FIGURES) {
    const td = document.createElement("td");
    td.className = "num";
    td.dataset.key = key;
    let value = figures[key];
    if (key === "stalls" && figures.stalling) value = value + "!";
    td.textContent = String(value);
    const bad = ["failed", "dropped", "lost"].includes(key) && figures[key] > 0;
    if (bad || (key === "stalls" && figures.stalling)) td.classList.add("warn");
    tr.appendChild(td);
  }
  return tr;
}

function renderLoops() {
  const table = $("loops");
  const loops = state.loops;
  const body = document.createElement("tbody");
  const foot = document.createElement("tfoot");
  const empty = (text) => {
    body.innerHTML = '<tr class="empty"><td colspan="11"></td></tr>';
    body.querySelector("td").textContent = text;
  };
  if (loops === undefined) {
    empty("The hub is not watching the workers (start it with --status-dir).");
  } else if (loops === null) {
    empty("No figures yet.");
  } else if (!loops.workers.length) {
    empty("No worker has published yet.");
  }
  for (const w of loops ? loops.workers : []) {
    const tr = loopRow(String(w.pid), w.state, w.live ? "live" : "gone", w);
    tr.dataset.pid = String(w.pid);
    tr.dataset.live = String(w.live);
    body.appendChild(tr);
  }
  if (loops) {
    const label = loops.exited ? `all (${loops.exited} exited)` : "all";
    foot.appendChild(loopRow(label, "", "", loops.all));
  }
  table.replaceChild(body, table.tBodies[0]);
  table.replaceChild(foot, table.tFoot);
}

// The graph ------------------------------------------------------------------------------

const SERIES = [
  { key: "req_p50", label: "request p50", stroke: "#38bdf8", width: 2 },
  { key: "req_p99", label: "request p99", stroke: "#a78bfa", width: 1.5, dash: [6, 4] },
  { key: "arr_p50", label: "arrival delay p50", stroke: "#4ade80", width: 2 },
  { key: "arr_p99", label: "arrival delay p99", stroke: "#4ade80", width: 1.5, dash: [3, 4] },
];

function chartData() {
  const s = state.series;
  return [s.map((p) => p.t), ...SERIES.map((d) => s.map((p) => p[d.key]))];
}

function shadeInline(u) {
  // Seconds pushed inline, as light bands behind the lines.
  const ctx = u.ctx;
  const { left, top, width, height } = u.bbox;
  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, width, height);
  ctx.clip();
  ctx.font = `${Math.round(11 * devicePixelRatio)}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  let previous = null;
  for (const p of state.series) {
    if (p.mode === "inline") {
      const x0 = u.valToPos(p.t - 0.5, "x", true);
      const x1 = u.valToPos(p.t + 0.5, "x", true);
      ctx.fillStyle = "rgba(251, 191, 36, 0.09)";
      ctx.fillRect(x0, top, x1 - x0, height);
      if (previous !== "inline") { // label the start of each inline stretch
        ctx.fillStyle = "#fbbf24";
        ctx.fillText("inline", x0 + 4 * devicePixelRatio, top + 4 * devicePixelRatio);
      }
    }
    previous = p.mode;
  }
  ctx.restore();
}

function chartSize() {
  const width = Math.max(240, $("chart").clientWidth);
  return { width, height: width < 600 ? 220 : 280 };
}

function makeChart() {
  if (typeof uPlot === "undefined") return null; // the page still works without the graph
  const axis = { stroke: "#94a3b8", grid: { stroke: "#334155", width: 1 }, ticks: { stroke: "#334155" } };
  const ms = (u, v) => (v == null ? "–" : v.toFixed(v < 10 ? 2 : 1) + " ms");
  const opts = {
    ...chartSize(),
    scales: {
      // At least the last minute, ending at the newest point: the graph scrolls as it grows.
      x: {
        time: true,
        range: (u, min, max) => {
          const end = max ?? Math.floor(Date.now() / 1000) - 2;
          return [end - Math.max(60, end - (min ?? end)), end];
        },
      },
      y: { range: (u, min, max) => [0, Math.max(5, (max || 0) * 1.1)] },
    },
    series: [
      {},
      ...SERIES.map((d) => ({
        label: d.label, stroke: d.stroke, width: d.width, dash: d.dash, value: ms, spanGaps: false,
      })),
    ],
    axes: [
      { ...axis, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600] }, // whole seconds only
      { ...axis, size: 72, values: (u, vals) => vals.map((v) => v + " ms") },
    ],
    legend: { live: false },
    hooks: { drawClear: [shadeInline] },
    cursor: { drag: { x: false, y: false } },
  };
  const u = new uPlot(opts, chartData(), $("chart"));
  new ResizeObserver(() => u.setSize(chartSize())).observe($("chart"));
  return u;
}

function plot() {
  if (chart) chart.setData(chartData());
}

// The switch ------------------------------------------------------------------------------

async function setMode(mode) {
  const response = await fetch("/api/mode", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ mode }),
  });
  if (response.ok) {
    state.mode = (await response.json()).mode;
    render();
  }
}

for (const button of document.querySelectorAll(".switch button")) {
  button.addEventListener("click", () => setMode(button.dataset.mode));
}

// The event stream ---------------------------------------------------------------------------

function addPoint(point) {
  const last = state.series[state.series.length - 1];
  if (last && point.t <= last.t) return; // already in the snapshot
  state.series.push(point);
  if (state.series.length > MAX_POINTS) state.series.shift();
}

function connect() {
  const source = new EventSource("/stream");
  // "open" is not enough for "live": until the snapshot arrives the page knows nothing.
  source.addEventListener("error", () => {
    state.connected = false;
    setStatus("connecting", "reconnecting…");
  });
  source.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    state.total = snap.total;
    state.paths = snap.paths;
    state.recent = snap.recent.slice(0, MAX_RECENT);
    state.rate = snap.rate;
    state.mode = snap.mode;
    state.series = snap.series.slice(-MAX_POINTS);
    state.loops = snap.loops; // undefined when the hub has no status directory
    state.connected = true;
    setStatus("live", "live");
    render();
    plot();
  });
  source.addEventListener("hit", (e) => {
    const hit = JSON.parse(e.data);
    state.total = Math.max(state.total, hit.total);
    state.paths[hit.path] = Math.max(state.paths[hit.path] || 0, hit.count);
    state.recent.unshift(hit);
    state.recent.length = Math.min(state.recent.length, MAX_RECENT);
    scheduleRender();
  });
  source.addEventListener("tick", (e) => {
    const tick = JSON.parse(e.data);
    state.rate = tick.rate;
    addPoint(tick.point);
    plot();
    scheduleRender();
  });
  source.addEventListener("loops", (e) => {
    state.loops = JSON.parse(e.data);
    scheduleRender();
  });
  source.addEventListener("mode", (e) => {
    state.mode = JSON.parse(e.data).mode;
    scheduleRender();
  });
}

chart = makeChart();
window.dashboard = { state, chart: () => chart };
connect();
