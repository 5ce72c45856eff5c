// The routing page of a model: asks the dashboard socket for the router's live report of this model (route.watch)
// and draws it: the policy in force, the ranking with each term's share of the score, the targets' fused state and
// this router's traffic per target, and a trend of requests/s and score per target.
(function () {
  "use strict";
  var TERM_COLORS = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c", "#5c940d"];
  var termColor = {};
  var history = { t: [], byTarget: {} };  // per target: {rps: [], score: []}
  var plots = [];
  var MAX_POINTS = 300;
  var lastDraw = 0;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }
  function fmt(v, digits, suffix) {
    if (v === null || v === undefined) { return "–"; }
    return Number(v).toFixed(digits) + (suffix || "");
  }
  function pct(v) { return v === null || v === undefined ? "–" : Math.round(v * 100) + "%"; }
  function colorOf(term) {
    if (!termColor[term]) { termColor[term] = TERM_COLORS[Object.keys(termColor).length % TERM_COLORS.length]; }
    return termColor[term];
  }
  function short(id) { return id.length > 48 ? "…" + id.slice(-47) : id; }

  function drawPolicy(r) {
    var p = r.policy || {};
    var parts = ["strategy " + p.strategy + " (" + p.source + ")"];
    if (p.ab_split && Object.keys(p.ab_split).length) {
      parts.push("A/B " + Object.keys(p.ab_split).map(function (k) { return k + " " + p.ab_split[k] + "%"; }).join(" · "));
    }
    if (p.shadow_strategy) { parts.push("shadow " + p.shadow_strategy); }
    parts.push(p.hedging ? "hedging on (≤ " + Math.round(p.hedge_max_delay_ms) + " ms)" : "hedging off");
    if (p.pin_nodes && p.pin_nodes.length) { parts.push("pinned to nodes " + p.pin_nodes.join(", ")); }
    if (p.pin_zones && p.pin_zones.length) { parts.push("pinned to zones " + p.pin_zones.join(", ")); }
    if (p.slo_ttft_ms) { parts.push("TTFT SLO " + p.slo_ttft_ms + " ms"); }
    (r.placements || []).forEach(function (d) {  // a deployment's placement, where it constrains more than a revision
      var on = [d.zone, d.gpu_type, d.mig_profile ? "MIG " + d.mig_profile : "", d.nodes ? "nodes " + d.nodes.join(", ") : ""];
      on = on.filter(function (x) { return x; });
      if (on.length) { parts.push(d.revision + " on " + on.join(" ")); }
    });
    var box = document.getElementById("route-policy");
    box.textContent = parts.join(" · ");
    box.className = "";
    box.dataset.strategy = p.strategy;
    document.getElementById("route-ranked-by").textContent = "(by " + r.ranked_by + ")";
  }

  // This router's place in the mesh (the network term's source) and gossip's degraded flag: while it is set the
  // router ranks only the targets on its own node (or zone), and the page says so in red.
  function drawMesh(r) {
    var m = r.mesh || {};
    var box = document.getElementById("route-mesh");
    var where = m.node
      ? "router on node " + m.node + (m.zone ? " (zone " + m.zone + ")" : "") + ": network cost counted from there"
      : "router's node not set (agent.node): no network term in the ranking";
    if (m.degraded) {
      box.textContent = "LOCAL-ONLY: gossip reports the mesh degraded, only targets on this router's node (or zone) are ranked · " + where;
      box.className = "error";
    } else {
      box.textContent = where;
      box.className = "muted";
    }
    box.dataset.degraded = m.degraded ? "true" : "false";
  }

  function drawRanking(r) {
    var tbody = document.querySelector("#route-ranking tbody");
    tbody.innerHTML = "";
    var ranking = r.ranking || [];
    if (!ranking.length) {
      var row = el("tr"); var td = el("td", "no target to rank", "muted"); td.colSpan = 4; row.appendChild(td); tbody.appendChild(row);
      return;
    }
    var maxTotal = 0;
    ranking.forEach(function (e) {
      var s = 0; Object.keys(e.terms || {}).forEach(function (k) { s += Math.abs(e.terms[k] || 0); });
      maxTotal = Math.max(maxTotal, s);
    });
    var terms = {};
    ranking.forEach(function (e, i) {
      var tr = el("tr");
      tr.dataset.target = e.target;
      tr.dataset.rank = e.rank;
      tr.appendChild(el("td", e.rank));
      tr.appendChild(el("td", short(e.target)));
      tr.appendChild(el("td", fmt(e.score, 4)));
      var cell = el("td");
      var bar = el("div", null, "termbar");
      Object.keys(e.terms || {}).forEach(function (k) {
        var v = e.terms[k] || 0;
        if (!v) { return; }
        terms[k] = true;
        var seg = el("span", null, "term");
        seg.style.width = (maxTotal > 0 ? Math.abs(v) / maxTotal * 100 : 0) + "%";
        seg.style.background = colorOf(k);
        seg.title = k + " " + v.toFixed(4);
        bar.appendChild(seg);
      });
      cell.appendChild(bar);
      cell.appendChild(el("div", Object.keys(e.terms || {}).filter(function (k) { return e.terms[k]; })
        .map(function (k) { return k + " " + e.terms[k].toFixed(3); }).join(" · "), "small muted"));
      tr.appendChild(cell);
      if (i === 0) { tr.className = "best"; }
      tbody.appendChild(tr);
    });
    var legend = document.getElementById("route-legend");
    legend.innerHTML = "";
    Object.keys(terms).forEach(function (k) {
      var s = el("span", k, "key"); s.style.borderLeftColor = colorOf(k); legend.appendChild(s);
    });
  }

  function drawTargets(r) {
    var tbody = document.querySelector("#route-targets tbody");
    tbody.innerHTML = "";
    (r.targets || []).forEach(function (t) {
      var tr = el("tr");
      tr.dataset.target = t.id;
      if (!t.allowed) { tr.className = "muted"; tr.title = "outside the policy's pins or its deployments' placements"; }
      var health = t.healthy ? (t.health || "healthy") : "unroutable";
      var where = t.node + (t.zone ? " · " + t.zone : "") + (t.gpu_type ? " · " + t.gpu_type : "") +
        (t.mig_profile ? " MIG " + t.mig_profile : "");
      [short(t.id), where, health, fmt(t.waiting, 0), fmt(t.running, 0),
       pct(t.kv_cache_usage), fmt(t.gpu_utilization, 0, "%"), pct(t.vram_used_frac), fmt(t.thermal_margin_c, 0, " °C"),
       fmt(t.freshness, 2), fmt(t.rps, 1), fmt(t.ttft_ms, 0), fmt(t.errors_per_s, 2)].forEach(function (v) {
        tr.appendChild(el("td", v));
      });
      tbody.appendChild(tr);
    });
  }

  function drawWinRates(r) {
    var tbody = document.querySelector("#route-winrates tbody");
    if (!tbody) { return; }
    tbody.innerHTML = "";
    var rows = r.strategies || [];
    if (!rows.length) {
      var row = el("tr"); var td = el("td", "no A/B arm or shadow in this policy", "muted"); td.colSpan = 9; row.appendChild(td); tbody.appendChild(row);
      return;
    }
    rows.forEach(function (c) {
      var w = c.win_rates || {};
      var tr = el("tr");
      tr.dataset.strategy = c.strategy;
      tr.dataset.mode = c.mode;
      tr.dataset.winRate = c.win_rate === null || c.win_rate === undefined ? "" : String(c.win_rate);
      [short(c.strategy), c.mode === "ab" ? "A/B arm" : "shadow", c.live, c.compared, pct(w.overall), pct(w.ttft),
       pct(w.latency), pct(w.errors), c.mode === "shadow" ? pct(c.agree_rate) : "–"].forEach(function (v) {
        tr.appendChild(el("td", v));
      });
      if (w.overall !== null && w.overall !== undefined) { tr.className = w.overall > 0.55 ? "best" : (w.overall < 0.45 ? "muted" : ""); }
      tbody.appendChild(tr);
    });
  }

  function remember(r) {
    var now = Date.now() / 1000;
    history.t.push(now);
    var scores = {};
    (r.ranking || []).forEach(function (e) { scores[e.target] = e.score; });
    var ids = {};
    (r.targets || []).forEach(function (t) { ids[t.id] = t; });
    Object.keys(ids).forEach(function (id) {
      if (!history.byTarget[id]) {
        history.byTarget[id] = { rps: history.t.slice(0, -1).map(function () { return null; }), score: history.t.slice(0, -1).map(function () { return null; }) };
      }
    });
    Object.keys(history.byTarget).forEach(function (id) {
      var h = history.byTarget[id];
      h.rps.push(ids[id] ? ids[id].rps : null);
      h.score.push(scores[id] === undefined ? null : scores[id]);
      if (h.rps.length > MAX_POINTS) { h.rps.shift(); h.score.shift(); }
    });
    if (history.t.length > MAX_POINTS) { history.t.shift(); }
  }

  function drawCharts() {
    var box = document.getElementById("route-charts");
    if (typeof uPlot === "undefined" || history.t.length < 2) { return; }
    plots.forEach(function (p) { p.destroy(); });
    plots = [];
    box.innerHTML = "";
    var ids = Object.keys(history.byTarget).sort();
    var width = Math.max(320, Math.min(560, box.clientWidth / 2 - 16));
    [["rps", "requests/s per target"], ["score", "score per target (lower is preferred)"]].forEach(function (spec) {
      var series = [{}];
      var cols = [history.t.slice()];
      ids.forEach(function (id, i) {
        series.push({ label: short(id).slice(-24), stroke: TERM_COLORS[i % TERM_COLORS.length], width: 1.5, spanGaps: true });
        cols.push(history.byTarget[id][spec[0]].slice());
      });
      var div = el("div", null, "chart");
      div.dataset.metric = spec[0];
      box.appendChild(div);
      plots.push(new uPlot({ title: spec[1], width: width, height: 200, series: series, scales: { x: { time: true } } }, cols, div));
    });
  }

  function onRoute(ev) {
    var msg = ev.detail || {};
    var root = document.getElementById("route");
    if (!root || String(msg.model_id) !== root.dataset.modelId) { return; }
    var r = msg.data || {};
    var err = document.getElementById("route-error");
    if (r.error) { err.hidden = false; err.className = "error"; err.textContent = r.error; return; }
    err.hidden = true;
    drawPolicy(r);
    drawMesh(r);
    drawRanking(r);
    drawTargets(r);
    drawWinRates(r);
    remember(r);
    root.dataset.updates = String(parseInt(root.dataset.updates || "0", 10) + 1);
    var best = r.ranking && r.ranking.length ? r.ranking[0].target : "";
    root.dataset.best = best;
    if (Date.now() - lastDraw > 2000) { lastDraw = Date.now(); drawCharts(); }
  }

  function watch(ws) {
    var root = document.getElementById("route");
    if (!root || !ws || ws.readyState !== 1) { return; }
    ws.send(JSON.stringify({ kind: "route.watch", model_id: parseInt(root.dataset.modelId, 10) }));
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.body.addEventListener("im-route", onRoute);
    document.body.addEventListener("im-socket-open", function (ev) { watch(ev.detail); });
    watch(window.imDashboardSocket);  // the socket may already be open
  });
})();
