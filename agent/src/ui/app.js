// berth's web UI: one page, no build step, no external assets. Polls the read-only JSON API
// every 2 s and draws rates from cumulative counters as sparklines (last minute).
"use strict";

const history = new Map(); // container id -> [{t, bytes}]
const prev = new Map();    // container id -> {t, cpu}

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function range(r) { return r.start === r.end ? `${r.start}` : `${r.start}-${r.end}`; }

function spark(points) {
  if (points.length < 2) return '<span class="muted">…</span>';
  const max = Math.max(...points, 1);
  const step = 140 / (points.length - 1);
  const pts = points.map((v, i) => `${(i * step).toFixed(1)},${(27 - (v / max) * 25).toFixed(1)}`).join(" ");
  return `<svg class="spark" viewBox="0 0 140 28"><polyline points="${pts}"/></svg>`;
}

async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function renderFindings(d) {
  const f = d.findings || [];
  $("#findings").innerHTML = f.length === 0
    ? '<p class="ok">No problems found.</p>'
    : f.map((x) => `<div class="finding ${esc(x.severity)}">
        <strong>${esc(x.severity.toUpperCase())} ${esc(x.subject)}</strong>: ${esc(x.cause)}
        <ul>${(x.evidence || []).map((e) => `<li>${esc(e)}</li>`).join("")}</ul>
        <div class="fix"><strong>Fix:</strong> ${esc(x.fix)}</div></div>`).join("");
}

function renderContainers(list, cgroups) {
  const byPath = new Map(cgroups.map((c) => [c.path, c]));
  const now = Date.now() / 1000;
  $("#containers tbody").innerHTML = list.map((c) => {
    const cg = byPath.get(c.cgroup);
    const total = (cg?.net || []).reduce((s, n) => s + n.bytes, 0);
    const h = history.get(c.id) || [];
    h.push({ t: now, bytes: total });
    while (h.length > 31) h.shift();
    history.set(c.id, h);
    const rates = h.slice(1).map((p, i) => Math.max(0, (p.bytes - h[i].bytes) / Math.max(p.t - h[i].t, 0.001)));
    const net = c.network || {};
    return `<tr>
      <td>${esc(c.name)}<div class="muted">${esc(c.id.slice(0, 12))}</div></td>
      <td>${esc(c.engine || "berth")}</td>
      <td class="${esc(c.status)}">${esc(c.status)}${c.state?.exit_code != null && c.status !== "running" ? ` (${c.state.exit_code})` : ""}</td>
      <td>${esc(c.image)}</td>
      <td>${esc(net.mode)}${net.ip ? ` ${esc(net.ip)}` : ""}</td>
      <td data-cpu="${esc(c.id)}" class="muted">…</td>
      <td data-mem="${esc(c.id)}" class="muted">…</td>
      <td>${bytes(total)}</td>
      <td>${spark(rates)}</td></tr>`;
  }).join("") || '<tr><td colspan="9" class="muted">no containers</td></tr>';
}

async function fillStats(list) {
  await Promise.all(list.filter((c) => c.status === "running").map(async (c) => {
    try {
      const s = (await get(`/api/v1/containers/${c.id}/stats`)).stats;
      const t = Date.now() / 1000;
      const p = prev.get(c.id);
      prev.set(c.id, { t, cpu: s.cpu_usage_seconds });
      const cpu = p ? ((s.cpu_usage_seconds - p.cpu) / (t - p.t)) * 100 : null;
      const cpuCell = document.querySelector(`[data-cpu="${c.id}"]`);
      const memCell = document.querySelector(`[data-mem="${c.id}"]`);
      if (cpuCell) cpuCell.textContent = cpu == null ? "…" : `${cpu.toFixed(1)} %`;
      if (memCell) memCell.textContent = `${bytes(s.memory_usage_bytes)}${s.memory_limit_bytes ? ` / ${bytes(s.memory_limit_bytes)}` : ""}`;
    } catch (_) { /* the container may just have exited */ }
  }));
}

function renderPorts(rows) {
  $("#ports tbody").innerHTML = rows.map((r) => {
    const nf = r.netfilter || {};
    const ns = nf.prerouting_ns_per_packet;
    return `<tr><td>${esc(r.name)}</td><td>${esc(r.engine || "berth")}</td>
      <td>${esc(r.publish.host_ip || "0.0.0.0")}:${range(r.publish.host)}</td>
      <td>${esc(r.ip)}:${range(r.publish.container)}</td>
      <td>${esc(r.publish.proto)}</td><td>${esc(r.backend || "(its engine's)")}</td>
      <td>${nf.new_flows_per_second == null ? "–" : nf.new_flows_per_second.toFixed(1)}</td>
      <td>${ns == null ? "–" : `${(ns / 1000).toFixed(1)} µs`}</td></tr>`;
  }).join("") || '<tr><td colspan="8" class="muted">no published ports</td></tr>';
}

function renderProbes(sys) {
  $("#host").textContent = `kernel ${sys.kernel} · cgroup ${sys.cgroup.mode} · runtime ${sys.runtime ? `${sys.runtime.name}` : "none"}`;
  $("#probes tbody").innerHTML = sys.probes.map((p) => `<tr><td>${esc(p.name)}</td><td>${esc(p.attach)}</td>
    <td class="${p.attached ? "ok" : "down"}">${p.attached ? "attached" : p.enabled ? "down" : "disabled"}</td>
    <td>${esc(p.error || Object.entries(p.paths || {}).map(([k, v]) => `${k}: ${v}`).join("; "))}</td></tr>`).join("");
}

async function tick() {
  try {
    const [sys, list, cgroups, ports, diag] = await Promise.all([
      get("/api/v1/system"), get("/api/v1/containers?all=true"), get("/api/v1/cgroups"),
      get("/api/v1/ports"), get("/api/v1/diagnose"),
    ]);
    renderProbes(sys);
    renderFindings(diag);
    renderContainers(list, cgroups);
    renderPorts(ports);
    fillStats(list);
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("#updated").textContent = `agent unreachable: ${e.message}`;
  }
}

tick();
setInterval(tick, 2000);
