// Time-series charts for berth's page, drawn with the vendored uPlot (ui/vendor, MIT).
//
// Every chart is registered under a key ("host/cpu", "<container id>/net", ...) in
// window.berthCharts, whose `data` is the very array uPlot draws ([timestamps, series...]):
// the browser test (agent/tests/ui.rs) reads what is plotted from there, not a copy.
"use strict";

window.berthCharts = {};

const BerthCharts = (() => {
  const plots = new Map(); // key -> uPlot instance

  const units = {
    cores: (v) => v.toFixed(v < 0.1 ? 3 : 2),
    bytes: (v) => {
      const u = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0;
      while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
      return `${v.toFixed(i && v < 10 ? 1 : 0)} ${u[i]}`;
    },
    rate: (v) => (v >= 1e6 ? `${(v / 1e6).toFixed(1)}M` : v >= 1e3 ? `${(v / 1e3).toFixed(1)}k` : v.toFixed(v < 10 ? 1 : 0)),
    us: (v) => v.toFixed(v < 10 ? 2 : 0),
  };
  units.bytesps = (v) => `${units.bytes(v)}/s`;
  // Axis ticks: short, the unit is in the chart's title.
  const short = (v) => {
    const a = Math.abs(v);
    if (a >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
    if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
    return `${a < 1 ? +v.toPrecision(2) : +v.toFixed(1)}`;
  };
  const clock = (t) => {
    const d = new Date(t * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((x) => String(x).padStart(2, "0")).join(":");
  };

  // What each chart shows, from the query API's `series` (host or container).
  const metrics = [
    { metric: "cpu", title: "CPU", unit: "cores", fmt: units.cores, series: [["cores", "cpu_cores"]] },
    { metric: "memory", title: "memory", unit: "", fmt: units.bytes, series: [["bytes", "memory_bytes"]] },
    { metric: "net", title: "net", unit: "", fmt: units.bytesps, series: [["rx", "net_rx_bytes_per_second"], ["tx", "net_tx_bytes_per_second"]] },
    { metric: "syscalls", title: "syscalls", unit: "/s", fmt: units.rate, series: [["syscalls/s", "syscalls_per_second"]] },
    { metric: "netfilter", title: "netfilter", unit: "µs/pkt", fmt: units.us, series: [["µs/packet", "netfilter_us_per_packet"]] },
    { metric: "flows", title: "new flows", unit: "/s", fmt: units.rate, series: [["flows/s", "new_flows_per_second"]] },
    // Where a container's netfilter time goes (containers only: the host has no split).
    {
      metric: "hooks", title: "hooks µs/s", unit: "", fmt: units.rate, containers: true,
      series: [["pre", "prerouting"], ["in", "input"], ["fwd", "forward"], ["out", "output"], ["post", "postrouting"]]
        .map(([label, hook]) => [label, `netfilter_us_per_second_by_hook.${hook}`]),
    },
  ];
  const colors = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#c53030"];

  // Indices of known values with no known neighbour.
  const lone = (d) => d.flatMap((v, i) => (v != null && d[i - 1] == null && d[i + 1] == null ? [i] : []));

  // A field of a `series` object; a dot reaches into a nested one (by hook).
  const pick = (src, field) => field.split(".").reduce((o, k) => o?.[k], src);

  function last(arr) {
    for (let i = arr.length - 1; i >= 0; i--) if (arr[i] != null) return arr[i];
    return null;
  }

  function options(m, width, height) {
    return {
      width, height,
      title: m.title,
      cursor: { drag: { x: false, y: false } },
      legend: { show: false },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [
        { size: 20, font: "10px system-ui", ticks: { size: 3 }, space: 60, values: (u, splits) => splits.map(clock) },
        { size: 40, font: "10px system-ui", ticks: { size: 3 }, space: 18, values: (u, splits) => splits.map(short) },
      ],
      series: [{}].concat(m.series.map(([label], i) => ({
        label, stroke: colors[i], width: 1.5, fill: m.series.length === 1 ? `${colors[i]}22` : undefined,
        // A value between two gaps draws no line: a dot marks it.
        spanGaps: false, points: { size: 4, show: (u, si) => lone(u.data[si]).length > 0, filter: (u, si) => lone(u.data[si]) },
      }))),
    };
  }

  // "network rx 1.2 MiB/s tx 80 KiB/s": each series' latest value, in its line's colour.
  function title(el, m, data) {
    // Many series (the hooks): only those with time now, else the title outgrows the chart.
    const many = m.series.length > 2;
    const parts = m.series.map(([label], i) => {
      const v = last(data[i + 1]);
      if (many && !(v > 0)) return "";
      const text = `${v == null ? "–" : m.fmt(v)}${m.unit && v != null ? ` ${m.unit}` : ""}`;
      return m.series.length === 1 ? text : `<span style-color="${colors[i]}">${label} ${text}</span>`;
    });
    el.innerHTML = `${m.title} ${parts.filter(Boolean).join(" ") || "–"}`;
    for (const span of el.querySelectorAll("[style-color]")) span.style.color = span.getAttribute("style-color");
  }

  // Creates or updates one chart under `key` in `parent`; `src` is a `series` object of the
  // query API, `ts` its timestamps. Returns the chart's element.
  function draw(parent, key, m, ts, src, width, height, owner) {
    const data = [ts].concat(m.series.map(([, field]) => pick(src, field) ?? ts.map(() => null)));
    let plot = plots.get(key);
    if (plot && (plot.width !== width || plot.height !== height || plot.root.parentNode !== parent)) {
      plot.destroy();
      plots.delete(key);
      plot = null;
    }
    if (!plot) {
      plot = new uPlot(options(m, width, height), data, parent);
      plot.root.style.width = `${width}px`; // a long title must not widen the chart
      plot.root.dataset.chart = key;
      plot.root.dataset.metric = m.metric;
      plots.set(key, plot);
    } else {
      plot.setData(data);
    }
    const head = plot.root.querySelector(".u-title");
    if (head) title(head, m, data);
    window.berthCharts[key] = {
      owner, metric: m.metric, fields: m.series.map(([, f]) => f), labels: m.series.map(([l]) => l), data: plot.data,
    };
    return plot.root;
  }

  // One row of charts (every metric) for a series object; keys are `${prefix}/${metric}`.
  function row(parent, prefix, ts, src, owner) {
    const shown = metrics.filter((m) => owner !== "host" || !m.containers);
    const width = Math.max(150, Math.floor((parent.clientWidth - 6 * (shown.length - 1)) / shown.length));
    const keep = new Set();
    for (const m of shown) {
      const key = `${prefix}/${m.metric}`;
      draw(parent, key, m, ts, src, width, 120, owner);
      keep.add(key);
    }
    return keep;
  }

  // Destroys the charts whose keys are not in `keep` (containers gone or filtered out).
  function prune(keep) {
    for (const [key, plot] of plots) {
      if (!keep.has(key)) {
        plot.destroy();
        plots.delete(key);
        delete window.berthCharts[key];
      }
    }
  }

  return { row, prune, units, last };
})();
