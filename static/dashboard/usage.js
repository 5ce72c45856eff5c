// The usage page's chart: tokens per minute of the last hour, one line per tenant (data embedded in the page).
(function () {
  "use strict";
  function draw() {
    var el = document.getElementById("usage-chart");
    var data = JSON.parse(document.getElementById("usage-data").textContent);
    var names = Object.keys(data.series);
    if (!el || !names.length || typeof uPlot === "undefined") { return; }
    var palette = ["#2a6fdb", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285"];
    var series = [{}].concat(names.map(function (n, i) { return { label: n, stroke: palette[i % palette.length] }; }));
    var columns = [data.x].concat(names.map(function (n) { return data.series[n]; }));
    new uPlot({ title: "tokens / minute", width: Math.min(900, el.clientWidth || 900), height: 220,
                series: series, scales: { x: { time: true } } }, columns, el);
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", draw); } else { draw(); }
})();
