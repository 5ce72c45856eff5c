// InferMesh dashboard, a training job's page: step time, all-reduce time and bus bandwidth over steps, one line per
// node (labelled with the ranks placed there), drawn with uPlot. The portal keeps only a job's latest telemetry
// roll-up, so the charts start from it and gain a point per node with every later report: the #job-state fragment
// re-renders when the live socket rings (and every 15 s), carrying the roll-up as JSON in #job-telemetry-data, and
// #job-charts survives those swaps (hx-preserve). No build step; served as is.
(function () {
  "use strict";

  var MAX_STEPS = 2000;  // a page left open on a long job keeps the latest points, not all of them
  // [field of a node, chart title, field of the roll-up drawn as the plan's prediction]
  var CHARTS = [
    ["step_s", "step time s", "predicted_step_s"],
    ["allreduce_s", "all-reduce time s", null],
    ["busbw_gbps", "all-reduce bus bandwidth GB/s", "predicted_busbw_gbps"]
  ];
  var COLORS = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c", "#5c940d"];

  var seen = { reports: 0, at: null };
  var byStep = {};     // step -> {node -> {step_s, allreduce_s, busbw_gbps}}
  var predicted = {};  // step -> {predicted_step_s, predicted_busbw_gbps} of the report that brought the step
  var nodes = [];      // every node seen, sorted
  var labels = {};
  var plots = [];
  var shape = "";      // what the plots were built for: rebuilt when nodes or predictions come or go

  function readRollup() {
    var el = document.getElementById("job-telemetry-data");
    if (!el) { return null; }
    try { return JSON.parse(el.textContent); } catch (e) { console.error("job page: bad telemetry", e); return null; }
  }

  function label(n) {
    var ranks = n.placed_ranks || [];
    if (ranks.length) { return n.node + " (rank" + (ranks.length > 1 ? "s " : " ") + ranks.join(", ") + ")"; }
    return n.ranks ? n.node + " (" + n.ranks + " ranks)" : n.node;
  }

  function isNumber(v) { return typeof v === "number" && isFinite(v); }

  // Adds the roll-up's points; false when the page has seen this report already (a refresh for another reason).
  function absorb(rollup) {
    if (!rollup || !rollup.reports) { return false; }
    if (rollup.reports === seen.reports && rollup.at === seen.at) { return false; }
    seen = { reports: rollup.reports, at: rollup.at };
    (rollup.nodes || []).forEach(function (n) {
      labels[n.node] = label(n);
      if (nodes.indexOf(n.node) < 0) { nodes.push(n.node); nodes.sort(); }
      if (!isNumber(n.step) || n.step < 0) { return; }  // the workers have not finished a step yet
      var row = byStep[n.step] || (byStep[n.step] = {});
      row[n.node] = { step_s: n.step_s, allreduce_s: n.allreduce_s, busbw_gbps: n.busbw_gbps };
      predicted[n.step] = { predicted_step_s: rollup.predicted_step_s, predicted_busbw_gbps: rollup.predicted_busbw_gbps };
    });
    var steps = Object.keys(byStep).map(Number).sort(function (a, b) { return a - b; });
    steps.slice(0, Math.max(0, steps.length - MAX_STEPS)).forEach(function (s) { delete byStep[s]; delete predicted[s]; });
    return true;
  }

  function columnsFor(spec, steps) {
    var columns = [steps];
    nodes.forEach(function (node) {
      columns.push(steps.map(function (s) {
        var v = byStep[s][node] ? byStep[s][node][spec[0]] : null;
        return isNumber(v) ? v : null;
      }));
    });
    if (spec[2]) {
      var line = steps.map(function (s) { var v = predicted[s][spec[2]]; return isNumber(v) ? v : null; });
      if (line.some(isNumber)) { columns.push(line); }
    }
    return columns;
  }

  function draw() {
    var box = document.getElementById("job-charts");
    if (!box || typeof uPlot === "undefined") { return; }
    var steps = Object.keys(byStep).map(Number).sort(function (a, b) { return a - b; });
    box.dataset.steps = String(steps.length);
    box.dataset.reports = String(seen.reports);
    if (!steps.length) { return; }
    var all = CHARTS.map(function (spec) { return columnsFor(spec, steps); });
    var key = nodes.join("\n") + "|" + all.map(function (c) { return c.length; }).join(",");
    if (key === shape && plots.length === CHARTS.length) {
      plots.forEach(function (p, i) { p.setData(all[i]); });
      return;
    }
    plots.forEach(function (p) { p.destroy(); });
    plots = [];
    box.querySelectorAll(".chart").forEach(function (el) { el.remove(); });
    shape = key;
    var width = Math.max(320, Math.min(460, Math.floor(box.clientWidth / 3) - 16));
    CHARTS.forEach(function (spec, i) {
      var series = [{ label: "step" }];
      nodes.forEach(function (node, j) {
        series.push({ label: labels[node] || node, stroke: COLORS[j % COLORS.length], width: 1.5, spanGaps: true });
      });
      if (all[i].length > nodes.length + 1) {
        series.push({ label: "predicted", stroke: "#868e96", dash: [6, 4], width: 1, spanGaps: true, points: { show: false } });
      }
      var el = document.createElement("div");
      el.className = "chart";
      el.dataset.metric = spec[0];
      box.appendChild(el);
      plots.push(new uPlot({
        title: spec[1],
        width: width,
        height: 200,
        series: series,
        // Steps, not time; one step alone still gets a visible range.
        scales: { x: { time: false, range: function (u, min, max) { return min === max ? [min - 1, max + 1] : [min, max]; } } },
        axes: [{ label: "step" }, {}]
      }, all[i], el));
    });
  }

  function update() {
    if (absorb(readRollup())) { draw(); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    update();
    document.body.addEventListener("htmx:afterSettle", function (ev) {
      var target = ev.detail && ev.detail.target;
      if (target && target.id === "job-state") { update(); }
    });
  });
})();
