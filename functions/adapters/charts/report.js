// The simulator report's time-series charts: one uPlot chart per policy row from the
// downsampled series embedded in #report-data. Drag across a chart to zoom every chart to that
// time range, double-click to see the whole trace again; hover for the values.
/* global document, window, uPlot */
'use strict';

(function () {
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const { tooltipPlugin, zoomSyncPlugin, num } = window.CaDmsCharts;
  const root = document.getElementById('charts');
  const group = [];
  const utc = (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC');
  const when = (ts) => `${new Date(ts * 1e3).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
  const width = () => Math.max(320, root.clientWidth - 8);
  const stepped = uPlot.paths.stepped({ align: 1 });
  const bars = uPlot.paths.bars({ size: [1, Infinity], align: 1 });

  for (const row of data.rows) {
    const figure = document.createElement('figure');
    figure.className = 'series-chart';
    figure.dataset.policy = row.name;
    root.appendChild(figure);
    const opts = {
      title: row.name,
      width: width(),
      height: 260,
      tzDate: utc,
      cursor: { drag: { x: true, y: false }, sync: { key: 'report' } },
      scales: { x: { time: true }, viol: { range: (u, min, max) => [0, Math.max(1, max) * 8] } },
      axes: [
        { label: 'time (UTC)' },
        { label: 'task-units (demand) / tasks', values: (u, vals) => vals.map((v) => num(v, 1)) },
      ],
      series: [
        { value: (u, v) => (v === null ? '–' : when(v)) },
        { label: 'demand (task-units)', stroke: '#1f77b4', width: 1, value: (u, v) => num(v, 2) },
        { label: 'running tasks', stroke: '#2ca02c', width: 1.5, paths: stepped, value: (u, v) => num(v, 0) },
        { label: 'running + starting tasks', stroke: '#ff7f0e', width: 1, dash: [4, 3], paths: stepped, value: (u, v) => num(v, 0) },
        { label: 'SLO-violation minutes', scale: 'viol', stroke: '#d62728', fill: 'rgba(214, 39, 40, 0.45)', paths: bars, points: { show: false }, value: (u, v) => num(v, 0) },
      ],
      plugins: [tooltipPlugin(when), zoomSyncPlugin(group)],
    };
    group.push(new uPlot(opts, [data.x, data.demand, row.running, row.tasks, row.violations], figure));
  }
  window.addEventListener('resize', () => {
    for (const u of group) u.setSize({ width: width(), height: 260 });
  });
  // For the browser test and for anyone poking at the page from the console.
  window.reportCharts = group;
  document.body.dataset.charts = String(group.length);
})();
