// InferMesh dashboard: the live socket (/ws/dashboard/), in-place status updates, the event feed, htmx refreshes
// and the GPU telemetry charts (uPlot). No build step; served as is.
(function () {
  "use strict";

  var refreshTimer = null;
  var seen = {};

  function setState(text, cls) {
    var el = document.getElementById("ws-state");
    if (el) { el.textContent = text; el.className = cls; }
  }

  // Fragments carrying hx-trigger="im-refresh from:body" re-fetch themselves; debounced so a burst costs one fetch.
  function scheduleRefresh() {
    if (refreshTimer) { return; }
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      document.body.dispatchEvent(new CustomEvent("im-refresh"));
    }, 400);
  }

  function setStatus(selector, status, reason, reasonSelector) {
    document.querySelectorAll(selector).forEach(function (el) {
      el.textContent = status;
      el.className = "status st-" + status;
    });
    if (reasonSelector && reason !== undefined) {
      document.querySelectorAll(reasonSelector).forEach(function (el) { el.textContent = reason; });
    }
  }

  function addToFeed(msg) {
    var feed = document.getElementById("feed");
    if (!feed) { return; }
    var key = msg.kind === "audit" ? "a" + msg.id : null;
    if (key) {
      if (seen[key] || feed.querySelector('[data-feed-id="' + msg.id + '"]')) { return; }
      seen[key] = true;
    }
    var empty = feed.querySelector(".feed-empty");
    if (empty) { empty.remove(); }
    var li = document.createElement("li");
    li.className = "feed-item fresh";
    if (msg.kind === "audit") { li.dataset.feedId = msg.id; }
    var time = document.createElement("time");
    time.textContent = (msg.at || new Date().toISOString()).slice(11, 19);
    var actor = document.createElement("span");
    actor.className = "actor";
    actor.textContent = msg.actor || msg.kind;
    var summary = document.createElement("span");
    summary.className = "summary";
    summary.textContent = msg.summary || msg.message || JSON.stringify(msg);
    li.append(time, " ", actor, " ", summary);
    if (msg.tenant) {
      var tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = msg.tenant;
      li.append(" ", tag);
    }
    feed.prepend(li);
    var limit = parseInt(feed.dataset.limit || "50", 10);
    while (feed.children.length > limit) { feed.lastElementChild.remove(); }
  }

  // Events of the portal's services come as {"kind", "data": {...}, "tenant_id"}; audit entries come flat.
  var QUIET = { "telemetry": true, "link": true, "node.status": true, "job.status": true };
  var telemetryTimer = null;
  var jobTelemetryTimers = {};

  function describe(kind, d) {
    if (kind === "quarantine") {
      return "node " + d.node + " " + (d.state || "quarantined") + (d.reason ? ": " + d.reason : "");
    }
    if (kind === "node.event") { return "node " + d.node + ": " + d.kind + (d.message ? " (" + d.message + ")" : ""); }
    if (kind === "job.event") { return "job " + d.job + ": " + (d.kind || "") + " " + (d.message || ""); }
    return kind + " " + JSON.stringify(d);
  }

  function handle(msg) {
    if (!msg || typeof msg !== "object") { return; }
    if (msg.kind === "hello" || msg.kind === "pong") { return; }
    var d = msg.data && typeof msg.data === "object" ? msg.data : msg;
    if (msg.kind === "telemetry") {
      // Frequent: refresh charts and figures at most every few seconds, and keep them out of the feed.
      if (!telemetryTimer) {
        telemetryTimer = setTimeout(function () {
          telemetryTimer = null;
          document.body.dispatchEvent(new CustomEvent("im-telemetry"));
          var box = document.getElementById("charts");
          if (box && window.imRefreshCharts) { window.imRefreshCharts(); }
        }, 3000);
      }
      return;
    }
    if (msg.kind === "route") {
      // The routing page's live report (about once a second): only that page listens.
      document.body.dispatchEvent(new CustomEvent("im-route", { detail: msg }));
      return;
    }
    if (msg.kind === "job.telemetry") {
      // About one a second per running job: no feed line and no page-wide refresh; only that job's page listens
      // (hx-trigger "im-job-telemetry[detail.job==N] from:body"), at most once a second per job.
      var jobId = d.job;
      if (!jobTelemetryTimers[jobId]) {
        jobTelemetryTimers[jobId] = setTimeout(function () {
          delete jobTelemetryTimers[jobId];
          document.body.dispatchEvent(new CustomEvent("im-job-telemetry", { detail: { job: jobId } }));
        }, 1000);
      }
      return;
    }
    var node = typeof d.node === "string" ? d.node : null;
    if (node && d.status && (msg.kind === "node.status" || msg.kind === "audit")) {
      setStatus('[data-node-status="' + node + '"]', d.status, d.reason, '[data-node-reason="' + node + '"]');
      window.imLastNodeUpdate = { node: node, status: d.status, via: msg.kind };  // what the socket last said
    }
    var job = d.job !== undefined ? d.job : d.job_id;
    if (job !== undefined && job !== null && d.status && (msg.kind === "job.status" || msg.kind === "audit")) {
      setStatus('[data-job-status="' + job + '"]', d.status);
    }
    if (!QUIET[msg.kind]) {
      addToFeed(msg.kind === "audit" ? msg : { kind: msg.kind, actor: msg.kind, summary: describe(msg.kind, d), at: d.at });
    }
    scheduleRefresh();
  }

  var backoff = 500;
  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + (document.body.dataset.wsPath || "/ws/dashboard/"));
    ws.onopen = function () {
      backoff = 500;
      setState("live", "ws-on");
      document.body.dispatchEvent(new CustomEvent("im-socket-open", { detail: ws }));
    };
    ws.onmessage = function (ev) {
      try { handle(JSON.parse(ev.data)); } catch (e) { console.error("dashboard: bad message", e); }
    };
    ws.onclose = function (ev) {
      setState(ev.code === 4401 || ev.code === 4403 ? "refused" : "offline", "ws-off");
      if (ev.code === 4401 || ev.code === 4403) { return; }
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 15000);
    };
    window.imDashboardSocket = ws;
  }

  // GPU telemetry charts on a node's page: one chart per metric, one line per GPU.
  var CHARTS = [
    ["utilization", "GPU utilization %"],
    ["memory_used_pct", "memory used %"],
    ["temperature_c", "temperature °C"],
    ["power_w", "power W"]
  ];
  var COLORS = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c", "#5c940d"];
  var plots = [];

  function drawCharts(box, data) {
    plots.forEach(function (p) { p.destroy(); });
    plots = [];
    box.querySelectorAll(".chart").forEach(function (el) { el.remove(); });
    var empty = document.getElementById("charts-empty");
    var gpus = data.gpus || [];
    if (!gpus.length || typeof uPlot === "undefined") { if (empty) { empty.hidden = false; } return; }
    if (empty) { empty.hidden = true; }
    // Align every GPU on the union of timestamps (samples of one report share a timestamp).
    var stamps = Array.from(new Set([].concat.apply([], gpus.map(function (g) { return g.t; })))).sort(function (a, b) { return a - b; });
    var width = Math.max(320, Math.min(560, box.clientWidth / 2 - 16));
    CHARTS.forEach(function (spec) {
      var series = [{}];
      var columns = [stamps];
      gpus.forEach(function (g, i) {
        var byT = {};
        g.t.forEach(function (t, j) { byT[t] = g[spec[0]][j]; });
        columns.push(stamps.map(function (t) { return byT[t] === undefined ? null : byT[t]; }));
        series.push({ label: "GPU " + g.index, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true });
      });
      var el = document.createElement("div");
      el.className = "chart";
      el.dataset.metric = spec[0];
      box.appendChild(el);
      plots.push(new uPlot({ title: spec[1], width: width, height: 200, series: series, scales: { x: { time: true } } }, columns, el));
    });
  }

  function loadCharts() {
    var box = document.getElementById("charts");
    if (!box) { return; }
    fetch(box.dataset.telemetryUrl, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : { gpus: [] }; })
      .then(function (data) { drawCharts(box, data); })
      .catch(function (e) { console.error("dashboard: telemetry", e); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    window.imPageId = Math.random().toString(36).slice(2);
    document.querySelectorAll("#feed [data-feed-id]").forEach(function (li) { seen["a" + li.dataset.feedId] = true; });
    connect();
    if (document.getElementById("charts")) {
      window.imRefreshCharts = loadCharts;
      loadCharts();
    }
  });
})();
