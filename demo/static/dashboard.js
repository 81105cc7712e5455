// The live dashboard: counts arrive over Server-Sent Events from the hub (/stream).
// Each "hit" event carries the hub's own running counts, so a missed event never skews them;
// a reconnect starts with a fresh "snapshot".
"use strict";

const state = { total: 0, paths: {}, recent: [], times: [] };
const $ = (id) => document.getElementById(id);
let renderQueued = false;

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
  $("total").textContent = String(state.total);
  const now = Date.now();
  state.times = state.times.filter((t) => now - t < 10000);
  $("rate").textContent = (state.times.length / 10).toFixed(1);

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

  const list = $("recent");
  list.replaceChildren(
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
}

function connect() {
  const source = new EventSource("/stream");
  source.addEventListener("open", () => setStatus("live", "live"));
  source.addEventListener("error", () => setStatus("connecting", "reconnecting…"));
  source.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    state.total = snap.total;
    state.paths = snap.paths;
    setStatus("live", "live");
    scheduleRender();
  });
  source.addEventListener("hit", (e) => {
    const hit = JSON.parse(e.data);
    state.total = Math.max(state.total, hit.total);
    state.paths[hit.path] = Math.max(state.paths[hit.path] || 0, hit.count);
    state.recent.unshift(hit);
    state.recent.length = Math.min(state.recent.length, 12);
    state.times.push(Date.now());
    scheduleRender();
  });
}

setInterval(scheduleRender, 1000); // keeps the rate fresh when traffic stops
connect();
