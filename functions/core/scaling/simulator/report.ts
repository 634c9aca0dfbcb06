/**
 * The HTML report of a simulation run: one self-contained file (inline SVG and CSS, no
 * scripts, nothing fetched) with a chart per policy and the score table.
 */
import type { Timeline } from './fleet.js';
import type { PolicyResult, SimulationRun } from './simulate.js';

const WIDTH = 960;
const HEIGHT = 200;
const PAD = { left: 40, right: 10, top: 10, bottom: 24 };
/** Columns a chart is bucketed into: a week of minutes would otherwise make megabytes of SVG. */
const COLUMNS = 480;

/**
 * Escapes text for HTML content and attribute values.
 *
 * @example
 * ```ts
 * escapeHtml('a<b'); // 'a&lt;b'
 * ```
 */
export function escapeHtml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

interface Bucketed {
  readonly demand: number[];
  readonly capacity: number[];
  readonly tasks: number[];
  readonly violated: boolean[];
}

/** Per column: peak demand, lowest capacity, most tasks, and whether any minute violated. */
function bucket(t: Timeline, slo: number): Bucketed {
  const n = t.demand.length;
  const cols = Math.min(COLUMNS, n);
  const out: Bucketed = { demand: [], capacity: [], tasks: [], violated: [] };
  for (let c = 0; c < cols; c++) {
    const from = Math.floor((c * n) / cols);
    const to = Math.max(from + 1, Math.floor(((c + 1) * n) / cols));
    let d = 0;
    let cap = Infinity;
    let tasks = 0;
    let violated = false;
    for (let i = from; i < to; i++) {
      const di = t.demand[i] as number;
      const r = t.running[i] as number;
      d = Math.max(d, di);
      cap = Math.min(cap, r);
      tasks = Math.max(tasks, r + (t.starting[i] as number));
      if (r === 0 ? di > 0 : di / r > slo) violated = true;
    }
    out.demand.push(d);
    out.capacity.push(cap);
    out.tasks.push(tasks);
    out.violated.push(violated);
  }
  return out;
}

function path(values: readonly number[], x: (i: number) => number, y: (v: number) => number, step: boolean): string {
  let d = '';
  values.forEach((v, i) => {
    const px = x(i).toFixed(1);
    const py = y(v).toFixed(1);
    if (i === 0) d += `M${px},${py}`;
    else if (step) d += `H${px}V${py}`;
    else d += `L${px},${py}`;
  });
  return d;
}

/**
 * One policy's chart: demand, capacity (running tasks), all tasks, violation minutes in red.
 *
 * @example
 * ```ts
 * const svgFigure = renderChart('ca-dms', timeline, 0.9);
 * ```
 */
export function renderChart(title: string, t: Timeline, slo: number): string {
  const b = bucket(t, slo);
  const top = Math.max(1, ...b.demand, ...b.tasks);
  const innerW = WIDTH - PAD.left - PAD.right;
  const innerH = HEIGHT - PAD.top - PAD.bottom;
  const cols = b.demand.length;
  const x = (i: number): number => PAD.left + (cols <= 1 ? 0 : (i * innerW) / (cols - 1));
  const y = (v: number): number => PAD.top + innerH - (v / top) * innerH;
  const colW = innerW / Math.max(1, cols);
  const marks = b.violated
    .map((v, i) => (v ? `<rect x="${(PAD.left + i * colW).toFixed(1)}" y="${HEIGHT - PAD.bottom + 2}" width="${Math.max(1, colW).toFixed(1)}" height="6" class="violation"/>` : ''))
    .join('');
  const ticks = [0, top / 2, top]
    .map((v) => `<text x="${PAD.left - 4}" y="${y(v).toFixed(1)}" class="axis" text-anchor="end" dominant-baseline="middle">${v.toFixed(1)}</text>`)
    .join('');
  const start = new Date(t.startAt).toISOString();
  const end = new Date(t.startAt + (t.demand.length - 1) * t.tickMs).toISOString();
  return `<figure>
<figcaption>${escapeHtml(title)}</figcaption>
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${WIDTH} ${HEIGHT}" width="${WIDTH}" height="${HEIGHT}" role="img" aria-label="${escapeHtml(title)}: demand, capacity and tasks over time">
<rect x="${PAD.left}" y="${PAD.top}" width="${innerW}" height="${innerH}" class="plot"/>
${ticks}
<text x="${PAD.left}" y="${HEIGHT - 4}" class="axis">${escapeHtml(start)}</text>
<text x="${WIDTH - PAD.right}" y="${HEIGHT - 4}" class="axis" text-anchor="end">${escapeHtml(end)}</text>
<path d="${path(b.tasks, x, y, true)}" class="tasks"/>
<path d="${path(b.capacity, x, y, true)}" class="capacity"/>
<path d="${path(b.demand, x, y, false)}" class="demand"/>
${marks}
</svg>
</figure>`;
}

const COLUMNS_SHOWN: ReadonlyArray<[keyof PolicyResult, string]> = [
  ['policy', 'policy'],
  ['sloViolationMinutes', 'SLO-violation min'],
  ['taskMinutes', 'task-minutes'],
  ['actions', 'actions'],
  ['reversals', 'reversals'],
  ['accuracyU', 'accuracy_U %'],
  ['accuracyO', 'accuracy_O %'],
  ['timeshareU', 'timeshare_U %'],
  ['timeshareO', 'timeshare_O %'],
  ['maxTasks', 'max tasks'],
];

function cell(v: string | number): string {
  return typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : escapeHtml(v);
}

/**
 * Renders a run as one self-contained HTML document.
 *
 * @example
 * ```ts
 * writeFileSync('out.html', renderReport(simulate(trace, contestants, model)));
 * ```
 */
export function renderReport(run: SimulationRun): string {
  const { result, timelines } = run;
  const rows = [...result.results, result.oracle]
    .map((r) => `<tr>${COLUMNS_SHOWN.map(([k]) => `<td>${cell(r[k])}</td>`).join('')}</tr>`)
    .join('\n');
  const model = Object.entries(result.model)
    .map(([k, v]) => `<li><code>${escapeHtml(k)}</code>: ${escapeHtml(String(v ?? 'auto'))}</li>`)
    .join('');
  const charts = [...result.results.map((r) => r.policy), 'oracle']
    .map((name) => {
      const t = timelines.get(name);
      return t ? renderChart(name, t, result.model.sloUtilization) : '';
    })
    .join('\n');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Scaling simulation: ${escapeHtml(result.trace)}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5rem 0; }
figcaption { font-weight: bold; }
.plot { fill: #fafafa; stroke: #ddd; }
.axis { font-size: 11px; fill: #555; }
.demand { fill: none; stroke: #1f77b4; stroke-width: 1; }
.capacity { fill: none; stroke: #2ca02c; stroke-width: 1.2; }
.tasks { fill: none; stroke: #ff7f0e; stroke-width: 1; stroke-dasharray: 3 2; }
.violation { fill: #d62728; }
.legend span { margin-right: 1rem; }
</style>
</head>
<body>
<h1>Scaling simulation: ${escapeHtml(result.trace)}</h1>
<p>${result.ticks} ticks. Demand in task-units (one task-unit keeps one task at 100% CPU).</p>
<table>
<thead><tr>${COLUMNS_SHOWN.map(([, h]) => `<th>${escapeHtml(h)}</th>`).join('')}</tr></thead>
<tbody>
${rows}
</tbody>
</table>
<h2>Model</h2>
<ul>${model}</ul>
<h2>Charts</h2>
<p class="legend"><span style="color:#1f77b4">demand (peak per column)</span><span style="color:#2ca02c">capacity: running tasks (lowest per column)</span><span style="color:#ff7f0e">tasks: running + starting (most per column)</span><span style="color:#d62728">SLO-violation minutes</span></p>
${charts}
</body>
</html>
`;
}
