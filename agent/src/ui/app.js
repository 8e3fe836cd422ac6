// berth's web UI: one page, no build step, no external assets. It polls the read-only JSON API
// (the query API for the charts, /api/v1/ports for what the published ranges cost,
// /api/v1/diagnose for findings) every step of the chosen window, without reloading.
// The filters live in the URL's hash (#engine=docker&name=web&window=300s), so a view can be
// bookmarked and the browser test can open one. window.berthView holds what the last poll
// drew: the query URL and its response's timestamps; charts.js keeps the plotted arrays.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const { units } = BerthCharts;
// Steps the history keeps for each window (1 s frames for 10 minutes, 1 min frames for 1 h).
const STEPS = { "60s": "1s", "300s": "5s", "600s": "10s", "3600s": "60s" };

window.berthView = { polls: 0, errors: [] };

function filters() {
  const f = { engine: "", name: "", window: "300s", sort: "cpu", top: "10" };
  new URLSearchParams(location.hash.slice(1)).forEach((v, k) => { if (k in f) f[k] = v; });
  if (!(f.window in STEPS)) f.window = "300s";
  return f;
}

function syncForm() {
  const f = filters();
  const form = $("#filters");
  for (const [k, v] of Object.entries(f)) {
    const el = form.elements[k];
    if (el.tagName === "SELECT" && ![...el.options].some((o) => o.value === v)) el.add(new Option(v, v));
    el.value = v;
  }
}

function onFilter() {
  const form = $("#filters");
  const p = new URLSearchParams();
  for (const k of ["engine", "name", "window", "sort", "top"]) {
    const v = form.elements[k].value.trim();
    if (v) p.set(k, v);
  }
  history.replaceState(null, "", `#${p}`);
  schedule(0);
}

async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) {
    let detail = "";
    try { detail = (await r.json()).error || ""; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${r.status}${detail ? ` ${detail}` : ""}`);
  }
  return r.json();
}

function fmt(v, f, suffix = "") { return v == null ? "–" : `${f(v)}${suffix}`; }
function range(r) { return r.start === r.end ? `${r.start}` : `${r.start}-${r.end}`; }

function renderFindings(d) {
  const f = d.findings || [];
  $("#findings").innerHTML = f.length === 0
    ? '<p class="ok">No problems found.</p>'
    : f.map((x) => `<div class="finding ${esc(x.severity)}" data-subject="${esc(x.subject)}">
        <strong>${esc(x.severity.toUpperCase())} ${esc(x.subject)}</strong>: ${esc(x.cause)}
        <ul>${(x.evidence || []).map((e) => `<li>${esc(e)}</li>`).join("")}</ul>
        <div class="fix"><strong>Fix:</strong> ${esc(x.fix)}</div></div>`).join("");
}

function renderEngines(list) {
  const sel = $("#filters").elements.engine;
  const have = new Set([...sel.options].map((o) => o.value));
  for (const e of new Set(list.map((c) => c.engine || "berth"))) if (!have.has(e)) sel.add(new Option(e, e));
}

// The containers table: the latest value of each series, one row per container the query
// returned (same order: the server sorts and cuts to top-N).
function renderRows(q) {
  const rows = q.containers.map((c) => {
    const s = c.series || {};
    const l = (k) => BerthCharts.last(s[k] || []);
    return `<tr data-id="${esc(c.id)}" data-name="${esc(c.name)}" data-engine="${esc(c.engine)}">
      <td><a href="" data-charts="chart-${esc(c.id)}" title="its charts">${esc(c.name)}</a><div class="muted">${esc(c.id.slice(0, 12))}</div></td>
      <td>${esc(c.engine)}</td><td class="${esc(c.status)}">${esc(c.status)}</td>
      <td class="num">${fmt(l("cpu_cores"), units.cores)}</td>
      <td class="num">${fmt(l("memory_bytes"), units.bytes)}</td>
      <td class="num">${fmt(l("pids"), String)}</td>
      <td class="num">${fmt(l("net_rx_bytes_per_second"), units.bytesps)}</td>
      <td class="num">${fmt(l("net_tx_bytes_per_second"), units.bytesps)}</td>
      <td class="num">${fmt(l("syscalls_per_second"), units.rate)}</td>
      <td class="num">${fmt(l("netfilter_us_per_packet"), units.us)}</td>
      <td class="num">${fmt(l("new_flows_per_second"), units.rate)}</td></tr>`;
  });
  $("#containers tbody").innerHTML = rows.join("") || '<tr><td colspan="11" class="muted">no containers match</td></tr>';
}

// One card per container with a row of charts; cards persist across polls (keyed by id) so
// uPlot instances are updated in place.
function renderCharts(q) {
  const host = $("#host-charts");
  const keep = BerthCharts.row(host, "host", q.timestamps, q.host, "host");
  const box = $("#container-charts");
  const cards = new Map([...box.children].map((el) => [el.dataset.id, el]));
  let prev = null;
  for (const c of q.containers) {
    let card = cards.get(c.id);
    if (!card) {
      card = document.createElement("div");
      card.className = "card";
      card.id = `chart-${c.id}`;
      card.dataset.id = c.id;
      card.innerHTML = '<h3></h3><div class="chart-row"></div>';
    }
    cards.delete(c.id);
    card.querySelector("h3").innerHTML = `${esc(c.name)} <span class="muted">${esc(c.engine)} · ${esc(c.id.slice(0, 12))}</span>`;
    // Keep the server's order.
    if (prev ? prev.nextSibling !== card : box.firstChild !== card) box.insertBefore(card, prev ? prev.nextSibling : box.firstChild);
    prev = card;
    for (const k of BerthCharts.row(card.querySelector(".chart-row"), c.id, q.timestamps, c.series, c.id)) keep.add(k);
  }
  for (const el of cards.values()) el.remove();
  BerthCharts.prune(keep);
}

// Published ranges, the costliest first: netfilter time per second over the window (what
// /api/v1/ports sorts by), else a new flow's path cost times the new flows per second.
function renderPorts(rows) {
  const cost = (r) => {
    const nf = r.netfilter || {};
    if (nf.window_us_per_second != null) return nf.window_us_per_second;
    return ((nf.new_flow_ns_per_packet || 0) / 1000) * (nf.new_flows_per_second || 0);
  };
  const perPacket = (r) => r.netfilter?.window_us_per_packet ?? (r.netfilter?.prerouting_ns_per_packet ?? 0) / 1000;
  rows = rows.slice().sort((a, b) => cost(b) - cost(a) || perPacket(b) - perPacket(a));
  const max = Math.max(...rows.map(cost), 1e-9);
  const us = (ns) => units.us(ns / 1000);
  $("#ports tbody").innerHTML = rows.map((r) => {
    const nf = r.netfilter || {};
    const top = (nf.ports || [])[0];
    const busiest = top
      ? `${top.port}: ${top.window_us_per_packet != null ? `${units.us(top.window_us_per_packet)} µs/pkt` : fmt(top.prerouting_ns_per_packet, us, " µs/pkt")}${top.new_flows_per_second != null ? `, ${units.rate(top.new_flows_per_second)} flows/s` : ""}`
      : "–";
    const perPkt = nf.window_us_per_packet ?? (nf.prerouting_ns_per_packet != null ? nf.prerouting_ns_per_packet / 1000 : null);
    return `<tr data-container="${esc(r.container)}" data-cost="${cost(r)}" data-us-per-packet="${perPkt ?? ""}">
      <td>${esc(r.name)}</td><td>${esc(r.engine || "berth")}</td>
      <td>${esc(r.publish.host_ip || "0.0.0.0")}:${range(r.publish.host)}</td>
      <td>${esc(r.ip || "")}:${range(r.publish.container)}</td>
      <td>${esc(r.publish.proto)}</td><td>${esc(r.backend || "(its engine's)")}</td>
      <td class="num">${fmt(nf.new_flows_per_second, units.rate)}</td>
      <td class="num">${fmt(nf.new_flow_ns_per_packet, us)}</td>
      <td class="num">${fmt(perPkt, units.us)}</td>
      <td class="num">${fmt(nf.window_us_per_second, units.rate)}</td>
      <td>${esc(busiest)}</td>
      <td class="bar-col"><div class="bar" data-share="${((cost(r) / max) * 100).toFixed(1)}"></div></td></tr>`;
  }).join("") || '<tr><td colspan="12" class="muted">no published ports</td></tr>';
  // The policy (style-src 'self') refuses style attributes in markup; the CSSOM is fine.
  for (const bar of document.querySelectorAll("#ports .bar")) bar.style.width = `${bar.dataset.share}%`;
}

function renderProbes(sys) {
  $("#host").textContent = `kernel ${sys.kernel} · cgroup ${sys.cgroup.mode} · runtime ${sys.runtime ? `${sys.runtime.name}` : "none"}`;
  $("#probes tbody").innerHTML = sys.probes.map((p) => `<tr><td>${esc(p.name)}</td><td>${esc(p.attach)}</td>
    <td class="${p.attached ? "ok" : "down"}">${p.attached ? "attached" : p.enabled ? "down" : "disabled"}</td>
    <td>${esc(p.error || Object.entries(p.paths || {}).map(([k, v]) => `${k}: ${v}`).join("; "))}</td></tr>`).join("");
}

function queryUrl(f) {
  const p = new URLSearchParams({ window: f.window, step: STEPS[f.window], sort: f.sort, top: f.top });
  if (f.engine) p.set("engine", f.engine);
  if (f.name) p.set("name", f.name);
  return `/api/v1/query?${p}`;
}

let timer = null;
let running = false;

function schedule(ms) {
  clearTimeout(timer);
  timer = setTimeout(tick, ms);
}

async function tick() {
  if (running) return schedule(200);
  running = true;
  const f = filters();
  const url = queryUrl(f);
  let next = 2000;
  // Each part renders on its own: a failing route leaves the others live.
  const [q, ports, diag, sys, list] = await Promise.allSettled([
    get(url), get(`/api/v1/ports?window=${f.window}`), get("/api/v1/diagnose"), get("/api/v1/system"),
    get("/api/v1/containers?all=true"),
  ]);
  const failed = [];
  const use = (r, render) => {
    if (r.status === "rejected") return failed.push(r.reason.message);
    try { render(r.value); } catch (e) { failed.push(`${e.message}`); }
  };
  use(diag, renderFindings);
  use(sys, renderProbes);
  use(list, renderEngines);
  use(q, (v) => {
    renderRows(v);
    renderCharts(v);
    $("#host-window").textContent = `last ${v.window_seconds} s, ${v.step_seconds} s steps`;
    next = Math.min(10, Math.max(1, v.step_seconds)) * 1000;
  });
  use(ports, (rows) => {
    const shown = q.status === "fulfilled" ? new Set(q.value.containers.map((c) => c.id)) : null;
    renderPorts(shown ? rows.filter((r) => shown.has(r.container)) : rows);
  });
  const v = q.status === "fulfilled" ? q.value : null;
  window.berthView = {
    polls: window.berthView.polls + 1, errors: window.berthView.errors.concat(failed).slice(-20), url, filters: f,
    window_seconds: v?.window_seconds, step_seconds: v?.step_seconds, timestamps: v?.timestamps,
    containers: v ? v.containers.map((c) => ({ id: c.id, name: c.name, engine: c.engine })) : null,
  };
  const upd = $("#updated");
  upd.textContent = failed.length ? `${failed.join("; ")}` : `updated ${new Date().toLocaleTimeString()}`;
  upd.className = failed.length ? "down" : "";
  running = false;
  schedule(next);
}

syncForm();
$("#filters").addEventListener("change", onFilter);
$("#filters").addEventListener("submit", (e) => { e.preventDefault(); onFilter(); });
window.addEventListener("hashchange", () => { syncForm(); schedule(0); });
// A container's name scrolls to its charts (the hash holds the filters, not anchors).
$("#containers").addEventListener("click", (e) => {
  const a = e.target.closest("a[data-charts]");
  if (!a) return;
  e.preventDefault();
  document.getElementById(a.dataset.charts)?.scrollIntoView({ block: "start" });
});
let resized = null;
window.addEventListener("resize", () => { clearTimeout(resized); resized = setTimeout(() => schedule(0), 300); });
tick();
