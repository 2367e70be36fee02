// Draws every chart on the page from its JSON block; no inline script anywhere (the CSP).
"use strict";
(function () {
  var PALETTE = ["#2f5bea", "#12805c", "#c0362c", "#b26b00", "#7d5bea", "#0e8aa8", "#8a8f99"];
  var STATUS_COLOURS = { processed: "#12805c", ignored: "#8a8f99", pending: "#b26b00", failed: "#c0362c" };

  function read(id) {
    var block = document.getElementById(id);
    return block ? JSON.parse(block.textContent) : null;
  }

  function size(element) {
    var width = element.clientWidth || 600;
    return { width: width, height: width < 500 ? 220 : 260 };
  }

  // Cumulative sums so bars stack: each series is drawn as the total up to and including it.
  function stacked(element, data) {
    var names = Object.keys(data.series);
    var running = data.x.map(function () { return 0; });
    var columns = [data.x];
    var series = [{}];
    names.forEach(function (name, i) {
      running = running.map(function (sum, j) { return sum + data.series[name][j]; });
      columns.push(running.slice());
      var colour = STATUS_COLOURS[name] || PALETTE[i % PALETTE.length];
      series.push({ label: name, stroke: colour, fill: colour + "55", width: 1,
        paths: uPlot.paths.bars({ size: [0.8, 40] }) });
    });
    // Drawn last first, so the smaller totals sit on top of the larger ones.
    var order = columns.slice(1).map(function (_, i) { return i + 1; }).reverse();
    var reordered = [columns[0]].concat(order.map(function (i) { return columns[i]; }));
    var reseries = [series[0]].concat(order.map(function (i) { return series[i]; }));
    return draw(element, reseries, reordered, { y: "events" });
  }

  function lines(element, data) {
    var series = [{}];
    var columns = [data.x];
    Object.keys(data.series).forEach(function (name, i) {
      columns.push(data.series[name]);
      series.push({ label: name, stroke: PALETTE[i % PALETTE.length], width: 2,
        points: { show: true, size: 4 } });
    });
    if (columns.length === 1) {
      element.textContent = "No data in this period.";
      return null;
    }
    return draw(element, series, columns, { y: "amount" });
  }

  function account(element, data) {
    var series = [
      {},
      { label: "equity", stroke: "#2f5bea", width: 2, scale: "money" },
      { label: "drawdown %", stroke: "#c0362c", fill: "#c0362c22", width: 1, scale: "pct" },
    ];
    var options = {
      width: size(element).width, height: size(element).height, series: series,
      scales: { x: { time: true }, pct: { range: function (u, min, max) { return [0, Math.max(5, max)]; } } },
      axes: [{}, { scale: "money", label: "equity" },
        { scale: "pct", side: 1, label: "drawdown %", grid: { show: false } }],
    };
    return new uPlot(options, [data.x, data.equity, data.drawdown], element);
  }

  function draw(element, series, columns, labels) {
    var options = {
      width: size(element).width, height: size(element).height, series: series,
      scales: { x: { time: true } }, axes: [{}, { label: labels.y }],
    };
    return new uPlot(options, columns, element);
  }

  var kinds = { stacked: stacked, lines: lines, account: account };
  var plots = [];
  document.querySelectorAll("[data-chart]").forEach(function (element) {
    var data = read(element.getAttribute("data-source"));
    var make = kinds[element.getAttribute("data-chart")];
    if (!data || !make) return;
    var plot = make(element, data);
    if (plot) {
      element.setAttribute("data-drawn", "true");
      plots.push([element, plot]);
    }
  });
  window.addEventListener("resize", function () {
    plots.forEach(function (pair) { pair[1].setSize(size(pair[0])); });
  });
})();
