// The local dashboard: polls the scaling API and draws what it says. No framework, no build.
/* global document, fetch, setInterval */
'use strict';

const API = '/api/v1/scaling';
const POLL_MS = 2000;
const SHARDS_EVERY = 3; // shard health and statistics every third poll
const KEEP = 180; // samples per service (6 minutes at 2 s)
const SVG = 'http://www.w3.org/2000/svg';

const samples = new Map(); // service -> [{at, demand, cpu, running, desired}]
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
  const node = tag.startsWith('svg:') ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
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

function polyline(points, cls) {
  return el('svg:polyline', { class: cls, points: points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ') });
}

/** One service's chart: demand and CPU (scaled to the height), running and desired tasks, decisions. */
function chart(service, series, maxTasks) {
  const W = 400, H = 150, L = 26, R = 30, T = 6, B = 16;
  const svg = el('svg:svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${service}: demand, CPU, tasks and decisions`, 'data-service': service, 'data-points': series.length });
  if (series.length === 0) return svg;
  const t0 = series[0].at, t1 = Math.max(series[series.length - 1].at, t0 + 1);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const top = Math.max(maxTasks, ...series.map((s) => Math.max(s.running ?? 0, s.desired ?? 0)), 1);
  const yTasks = (n) => H - B - (n / top) * (H - B - T);
  const yPct = (p) => H - B - (Math.min(100, p) / 100) * (H - B - T);
  const maxDemand = Math.max(...series.map((s) => s.demand ?? 0), 1);
  const yDemand = (d) => H - B - (d / maxDemand) * (H - B - T);
  svg.append(el('svg:line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(el('svg:line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  svg.append(el('svg:text', { x: 2, y: T + 8 }, String(top)));
  svg.append(el('svg:text', { x: 2, y: H - B }, '0'));
  svg.append(el('svg:text', { x: W - R + 3, y: T + 8 }, '100%'));
  svg.append(el('svg:text', { x: L, y: H - 3 }, new Date(t0).toLocaleTimeString()));
  svg.append(el('svg:text', { x: W - R - 44, y: H - 3 }, new Date(t1).toLocaleTimeString()));
  const pts = (f, y) => series.filter((s) => f(s) !== null && f(s) !== undefined).map((s) => [x(s.at), y(f(s))]);
  const step = (f) => {
    const out = [];
    for (const s of series) {
      if (f(s) === null || f(s) === undefined) continue;
      if (out.length > 0) out.push([x(s.at), out[out.length - 1][1]]);
      out.push([x(s.at), yTasks(f(s))]);
    }
    return out;
  };
  svg.append(polyline(pts((s) => s.demand, yDemand), 'demand'));
  svg.append(polyline(pts((s) => s.cpu, yPct), 'cpu'));
  svg.append(polyline(step((s) => s.desired), 'desired'));
  svg.append(polyline(step((s) => s.running), 'running'));
  for (const d of decisions) {
    // Only changes get a mark; a hold-back repeated every round would hide them.
    if (d.service !== service || (d.outcome !== 'applied' && d.outcome !== 'failed')) continue;
    const at = Date.parse(d.at);
    if (at < t0 || at > t1) continue;
    const g = el('svg:g', { class: 'decision-mark', 'data-outcome': d.outcome });
    g.append(el('svg:title', {}, `${new Date(at).toLocaleTimeString()} ${d.from} → ${d.to} (${d.outcome}): ${why(d)}`));
    g.append(el('svg:line', { class: 'decision', x1: x(at), y1: T, x2: x(at), y2: H - B }));
    g.append(el('svg:circle', { class: 'decision', cx: x(at), cy: yTasks(d.to ?? 0), r: 3.5 }));
    svg.append(g);
  }
  return svg;
}

function renderServices(status) {
  const root = $('services');
  const cards = [];
  for (const s of status.services) {
    const series = samples.get(s.service) || [];
    const last = series[series.length - 1] || {};
    const card = el('div', { class: 'card', 'data-service': s.service });
    const h = el('h3');
    h.append(el('span', {}, s.service), el('span', { class: 'muted' }, `${s.policy}${s.enabled ? '' : ' · disabled'}`));
    card.append(h);
    card.append(el('div', { class: 'figures' },
      `running ${fmt(s.running)} · pending ${fmt(s.pending)} · desired ${fmt(s.desired)} (min ${s.min}, max ${s.max}) · CPU ${fmt(last.cpu)}% · demand ${fmt(last.demand)} req/min` +
      (s.last_action ? ` · last change ${s.last_action.from} → ${s.last_action.to} at ${new Date(s.last_action.at).toLocaleTimeString()}` : '')));
    card.append(chart(s.service, series, s.max));
    cards.push(card);
  }
  root.replaceChildren(...cards);
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
    const [status, metrics, history] = await Promise.all([api('/status'), api('/metrics'), api('/history?kind=decision&limit=200')]);
    lastStatus = status.body;
    const now = Date.now();
    const byService = new Map(metrics.body.services.map((m) => [m.service, m]));
    for (const s of status.body.services) {
      const m = byService.get(s.service);
      const series = samples.get(s.service) || [];
      series.push({ at: now, demand: m ? m.request_count.value : null, cpu: m ? m.cpu_percent.value : null, running: s.running, desired: s.desired });
      while (series.length > KEEP) series.shift();
      samples.set(s.service, series);
    }
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
