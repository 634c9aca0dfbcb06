// The local dashboard: polls the scaling API and draws what it says. No framework, no build.
/* global document, fetch, setInterval, window, uPlot */
'use strict';

const API = '/api/v1/scaling';
const POLL_MS = 2000;
const SHARDS_EVERY = 3; // shard health and statistics every third poll

const series = new Map(); // service -> {points, decisions, step_seconds} from GET /timeseries
let decisions = [];
let polls = 0;
let lastStatus = null;

const $ = (id) => document.getElementById(id);

function say(text) {
  $('message').textContent = text;
}

async function api(path, init = {}) {
  const res = await fetch(API + path, { ...init, headers: { accept: 'application/json', ...(init.headers || {}) } });
  const text = await res.text();
  const body = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const detail = body && (body.detail || body.title) ? body.detail || body.title : res.statusText;
    throw new Error(`${init.method || 'GET'} ${path}: ${res.status} ${detail}`);
  }
  return { body, etag: res.headers.get('etag') };
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(n, digits = 0) {
  return n === null || n === undefined || Number.isNaN(n) ? '–' : Number(n).toFixed(digits);
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function why(d) {
  const parts = [...(d.reasons || []).map((r) => r.message), ...(d.blocked || []).map((b) => b.message)];
  return parts.join('; ') || d.error || '';
}

const charts = new Map(); // service -> uPlot
const existingRange = new Map(); // service -> the time range last shown
const WINDOW_MS = 3_600_000; // the charts show the last hour, backfilled from GET /timeseries
const TASKS = 'tasks', PCT = '%', RPM = 'rpm';

function decisionText(d) {
  return `${new Date(d.at).toLocaleTimeString()} ${d.from} → ${d.to} (${d.outcome}${d.dry_run ? ', dry run' : ''}): ${d.why}`;
}

/** Draws each change of the desired count as a vertical line and a dot at the new count. */
function decisionMarks(service) {
  return {
    hooks: {
      draw(u) {
        const ctx = u.ctx;
        ctx.save();
        for (const d of (series.get(service) || { decisions: [] }).decisions) {
          const x = u.valToPos(Date.parse(d.at) / 1000, 'x', true);
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          ctx.strokeStyle = ctx.fillStyle = d.outcome === 'failed' ? '#687085' : '#d62728';
          ctx.lineWidth = 1;
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.beginPath();
          ctx.arc(x, u.valToPos(d.to, TASKS, true), 4, 0, 2 * Math.PI);
          ctx.fill();
        }
        ctx.restore();
      },
    },
  };
}

/**
 * The decisions within one bucket either side of the point under the cursor, for the tooltip.
 * The cursor snaps to the nearest bucket start, which can be the bucket after a decision's mark
 * when the pointer sits on the mark itself.
 */
function decisionsNear(service, ts, stepSeconds) {
  const list = (series.get(service) || { decisions: [] }).decisions;
  return list.filter((d) => { const t = Date.parse(d.at) / 1000; return t >= ts - stepSeconds && t < ts + stepSeconds; });
}

function chartData(s) {
  const x = s.points.map((p) => Date.parse(p.at) / 1000);
  return [x, s.points.map((p) => p.demand), s.points.map((p) => p.cpu), s.points.map((p) => p.tasks)];
}

/** One service's chart: demand, CPU and desired tasks over the last hour, decisions marked. */
function chart(service, s, maxTasks, host) {
  const { tooltipPlugin, num } = window.CaDmsCharts;
  const existing = charts.get(service);
  const now = Date.now() / 1000;
  // The last hour, or since the first evaluation on record when that is more recent.
  const first = s.points.length > 0 ? Date.parse(s.points[0].at) / 1000 : now - 60;
  const range = { min: Math.max(now - WINDOW_MS / 1000, Math.min(first, now - 60)), max: now };
  if (existing) {
    existing.setData(chartData(s), false);
    existing.setScale('x', range);
    existingRange.set(service, range);
    existing.root.dataset.points = String(s.points.length);
    existing.root.dataset.decisions = String(s.decisions.length);
    return;
  }
  const tip = tooltipPlugin((ts) => {
    const near = decisionsNear(service, ts, (series.get(service) || {}).step_seconds || 10);
    return [new Date(ts * 1000).toLocaleTimeString(), ...near.map((d) => `decision ${decisionText(d)}`)].join('\n');
  });
  const u = new uPlot({
    width: Math.max(300, host.clientWidth - 4),
    height: 190,
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true, range: () => { const r = existingRange.get(service) || range; return [r.min, r.max]; } }, [TASKS]: { range: (u, min, max) => [0, Math.max(maxTasks, max || 0, 1)] }, [PCT]: { range: [0, 100] }, [RPM]: { range: (u, min, max) => [0, Math.max(1, max || 0) * 1.1] } },
    axes: [
      { label: 'time' },
      { scale: TASKS, label: 'tasks', values: (u, v) => v.map((n) => num(n, 0)) },
      { scale: PCT, label: 'CPU %', side: 1, grid: { show: false } },
      { scale: RPM, label: 'requests/min', side: 1, grid: { show: false }, values: (u, v) => v.map((n) => num(n, 0)) },
    ],
    series: [
      {},
      { label: 'demand (requests/min)', scale: RPM, stroke: '#8a63d2', width: 1.5, value: (u, v) => num(v, 0) },
      { label: 'CPU %', scale: PCT, stroke: '#e07b24', width: 1.5, value: (u, v) => num(v, 1) },
      { label: 'desired tasks', scale: TASKS, stroke: '#1f77b4', width: 2, paths: uPlot.paths.stepped({ align: 1 }), value: (u, v) => num(v, 0) },
    ],
    plugins: [tip, decisionMarks(service)],
  }, chartData(s), host);
  u.root.classList.add('series-chart');
  u.root.dataset.service = service;
  u.root.dataset.points = String(s.points.length);
  u.root.dataset.decisions = String(s.decisions.length);
  charts.set(service, u);
  window.dashboardCharts = charts;
}

const cardsByService = new Map(); // service -> {card, title, figures, host}; kept so a hovered chart stays put

function renderServices(status) {
  const root = $('services');
  for (const s of status.services) {
    let c = cardsByService.get(s.service);
    if (!c) {
      c = { card: el('div', { class: 'card', 'data-service': s.service }), title: el('h3'), figures: el('div', { class: 'figures' }), host: el('div', { class: 'chart-host' }) };
      c.card.append(c.title, c.figures, c.host);
      root.append(c.card);
      cardsByService.set(s.service, c);
    }
    const sr = series.get(s.service) || { points: [], decisions: [] };
    const last = sr.points[sr.points.length - 1] || {};
    c.title.replaceChildren(el('span', {}, s.service), el('span', { class: 'muted' }, `${s.policy}${s.enabled ? '' : ' · disabled'}`));
    c.figures.textContent =
      `running ${fmt(s.running)} · pending ${fmt(s.pending)} · desired ${fmt(s.desired)} (min ${s.min}, max ${s.max}) · CPU ${fmt(last.cpu)}% · demand ${fmt(last.demand)} req/min` +
      (s.last_action ? ` · last change ${s.last_action.from} → ${s.last_action.to} at ${new Date(s.last_action.at).toLocaleTimeString()}` : '');
    chart(s.service, sr, s.max, c.host);
  }
}

function renderControls(status) {
  const running = status.enabled;
  const badge = $('scaling-status');
  badge.dataset.state = running ? 'running' : 'stopped';
  badge.textContent = running ? 'scaling: running' : 'scaling: stopped';
  const dry = $('dry-run-status');
  dry.dataset.state = status.dry_run ? 'dry-run' : 'running';
  dry.textContent = status.dry_run ? 'dry run: on' : 'dry run: off';
  $('stop-button').disabled = !running;
  $('start-button').disabled = running;
  $('evaluated-at').textContent = status.last_evaluation_at
    ? `config v${status.config_version} · evaluated every ${status.check_interval_seconds} s · last ${new Date(status.last_evaluation_at).toLocaleTimeString()}`
    : `config v${status.config_version} · every ${status.check_interval_seconds} s`;
}

function renderDecisions() {
  const rows = decisions.slice(0, 15).map((d) => {
    const tr = el('tr', { 'data-outcome': d.outcome });
    tr.append(el('td', {}, new Date(d.at).toLocaleTimeString()), el('td', {}, d.service ?? ''), el('td', {}, d.from === d.to ? String(d.to) : `${d.from} → ${d.to}`), el('td', {}, d.outcome ?? ''), el('td', {}, why(d)));
    return tr;
  });
  if (rows.length === 0) {
    const tr = el('tr');
    tr.append(el('td', { colspan: 5, class: 'muted' }, 'no change decided yet: every evaluation so far kept the task counts'));
    rows.push(tr);
  }
  $('decisions').tBodies[0].replaceChildren(...rows);
}

function renderHealth(report) {
  $('shards-checked').textContent = `${report.status} · checked ${new Date(report.checkedAt).toLocaleTimeString()}`;
  const rows = [];
  for (const shard of report.shards) {
    for (const node of [shard.primary, ...shard.replicas]) {
      const f = node.facts || {};
      const rep = f.replication;
      const tr = el('tr', { 'data-node': node.nodeId, 'data-status': node.status });
      tr.append(
        el('td', {}, node.nodeId),
        el('td', {}, node.role),
        el('td', { class: `status-${node.status}` }, node.status),
        el('td', {}, rep ? `${fmt(rep.lagSeconds, 1)} s · ${bytes(rep.lagBytes)}${rep.streaming ? '' : ' · not streaming'}` : '–'),
        el('td', {}, f.connections === undefined ? '–' : `${f.connections}/${f.maxConnections}`),
        el('td', {}, bytes(f.databaseSizeBytes)),
        el('td', {}, (node.reasons || []).map((r) => r.message).join('; ')),
      );
      rows.push(tr);
    }
  }
  $('shards').tBodies[0].replaceChildren(...rows);
}

function renderStatistics(stats) {
  const rows = stats.shards.map((s) => {
    const tr = el('tr', { 'data-shard': s.shardId });
    tr.append(el('td', {}, s.shardId), el('td', {}, fmt(s.users)), el('td', {}, fmt(s.documents)), el('td', {}, fmt(s.slotsOwned)), el('td', {}, `${fmt(100 * s.shareOfRows, 1)} %`), el('td', {}, `${fmt(100 * s.targetShare, 1)} %`));
    return tr;
  });
  $('statistics').tBodies[0].replaceChildren(...rows);
  $('imbalance').textContent = `imbalance (largest over mean, 1 = perfect): rows ${fmt(stats.imbalance.rows, 2)}, bytes ${fmt(stats.imbalance.bytes, 2)}`;
}

/** Newest first; of a run of identical hold-backs of one service only the newest is kept. */
function withoutRepeats(items) {
  const seen = new Map();
  return items.filter((d) => {
    const key = `${d.outcome}:${d.from}:${d.to}:${(d.blocked || []).map((b) => b.kind).join(',')}`;
    const repeat = d.outcome !== 'applied' && seen.get(d.service) === key;
    seen.set(d.service, key);
    return !repeat;
  });
}

async function poll() {
  polls += 1;
  try {
    // The last hour from the decision record: what happened before the page was opened too.
    const since = new Date(Date.now() - WINDOW_MS).toISOString();
    const [status, timeseries, history] = await Promise.all([api('/status'), api(`/timeseries?since=${encodeURIComponent(since)}`), api('/history?kind=decision&limit=200')]);
    lastStatus = status.body;
    for (const s of timeseries.body.services) series.set(s.service, { ...s, step_seconds: timeseries.body.step_seconds });
    decisions = withoutRepeats(history.body.items.filter((d) => d.kind === 'decision' && d.outcome !== 'unchanged'));
    renderControls(status.body);
    renderServices(status.body);
    renderDecisions();
    if (polls % SHARDS_EVERY === 1) {
      const [health, stats] = await Promise.all([api('/shards/health'), api('/shards/statistics')]);
      renderHealth(health.body);
      renderStatistics(stats.body);
    }
    document.body.dataset.live = 'true';
  } catch (err) {
    say(`could not reach the API: ${err.message}`);
  }
}

async function act(what, work) {
  for (const b of document.querySelectorAll('button')) b.disabled = true;
  try {
    await work();
    say(what);
  } catch (err) {
    say(err.message);
  } finally {
    await poll();
    if (lastStatus) renderControls(lastStatus);
    $('dry-run-button').disabled = false;
  }
}

const json = () => ({ 'content-type': 'application/json' });

function wire() {
  $('stop-button').addEventListener('click', () => act('scaling stopped', () => api('/stop', { method: 'POST', headers: json(), body: JSON.stringify({ reason: 'stopped from the local dashboard' }) })));
  $('start-button').addEventListener('click', () => act('scaling started', () => api('/start', { method: 'POST', headers: json(), body: JSON.stringify({ reason: 'started from the local dashboard' }) })));
  $('dry-run-button').addEventListener('click', () => act('dry run switched', async () => {
    // A merge patch names only dry_run, so nothing else can be reset; If-Match names the version
    // whose dry_run was read, so a concurrent switch wins a 412 rather than being undone.
    const { body, etag } = await api('/config');
    await api('/config', { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json', 'if-match': etag }, body: JSON.stringify({ dry_run: !body.config.dry_run }) });
  }));
  void poll();
  setInterval(poll, POLL_MS);
}

wire();
