/**
 * The HTML report of a simulation run: one self-contained file (the chart library, its styles
 * and the data inlined; nothing fetched). Per policy row a zoomable time-series chart of demand,
 * tasks and SLO violations drawn by uPlot from a downsampled series that keeps every peak (the
 * lowest and the highest value of each column), the score table, and the trade-off chart
 * (task-minutes against violation minutes) with each anchor's swept curve and the oracle.
 *
 * Pure: the caller reads the chart library's files and passes them in ({@link ReportAssets}).
 */
import type { Timeline } from './fleet.js';
import type { SimulationModel } from './model.js';
import { violatesSlo } from './score.js';
import type { PolicyResult, PreparedTrace, SimulationResult, SimulationRun } from './simulate.js';
import { ANCHOR_SWEEPS, caDmsCurve, runAnchors } from './sweep.js';

/**
 * Columns a series is reduced to. Each keeps its lowest and highest value (two points), so a
 * two-month trace of minutes (86,400 ticks) becomes 8,000 points per series: every peak stays
 * visible at a zoom of about four screen widths, and the file stays well under a few MB.
 */
export const REPORT_COLUMNS = 4000;

/** The chart library's stylesheet and the scripts, in load order, that the report inlines. */
export interface ReportAssets {
  readonly css: string;
  readonly scripts: readonly string[];
}

/** One point of the trade-off chart. */
export interface TradeoffPoint {
  readonly label: string;
  readonly taskMinutes: number;
  readonly sloViolationMinutes: number;
}

/** One swept curve, drawn in the order of its points. */
export interface TradeoffCurve {
  readonly name: string;
  readonly points: readonly TradeoffPoint[];
}

/** What the trade-off chart shows: swept curves, the oracle, and single rows as points. */
export interface Tradeoff {
  readonly trace: string;
  readonly curves: readonly TradeoffCurve[];
  readonly oracle: TradeoffPoint;
  readonly points: readonly TradeoffPoint[];
}

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

/**
 * The first tick of each column when `n` ticks are reduced to at most `columns` columns, with
 * `n` appended. Columns differ in width by at most one tick.
 *
 * @example
 * ```ts
 * columnStarts(10, 4); // [0, 2, 5, 7, 10]
 * ```
 */
export function columnStarts(n: number, columns: number): number[] {
  const k = Math.max(1, Math.min(n, columns));
  return Array.from({ length: k + 1 }, (_, c) => Math.floor((c * n) / k));
}

/**
 * The tick indices the downsampled series are drawn at: a column of one tick is one point,
 * a wider column two (its first tick and its middle one), where the lowest and the highest
 * value of the column go.
 */
function pointTicks(starts: readonly number[]): number[] {
  const out: number[] = [];
  for (let c = 0; c + 1 < starts.length; c++) {
    const from = starts[c] as number;
    const to = starts[c + 1] as number;
    out.push(from);
    if (to - from > 1) out.push(from + Math.floor((to - from) / 2));
  }
  return out;
}

/**
 * A series reduced to the columns of `starts`: per column its lowest then its highest value
 * (one value for a one-tick column), so no peak or trough is lost however long the series.
 *
 * @example
 * ```ts
 * minMaxColumns([1, 9, 2, 3, 7, 4], columnStarts(6, 2)); // [1, 9, 3, 7]
 * ```
 */
export function minMaxColumns(values: ArrayLike<number>, starts: readonly number[]): number[] {
  const out: number[] = [];
  for (let c = 0; c + 1 < starts.length; c++) {
    const from = starts[c] as number;
    const to = starts[c + 1] as number;
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = from; i < to; i++) {
      const v = values[i] as number;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    out.push(lo);
    if (to - from > 1) out.push(hi);
  }
  return out;
}

/** Per column the ticks for which `hit` holds, on the column's first point (0 on its second). */
function countColumns(n: number, starts: readonly number[], hit: (i: number) => boolean): number[] {
  const out: number[] = [];
  for (let c = 0; c + 1 < starts.length; c++) {
    const from = starts[c] as number;
    const to = starts[c + 1] as number;
    let count = 0;
    for (let i = from; i < to && i < n; i++) if (hit(i)) count++;
    out.push(count);
    if (to - from > 1) out.push(0);
  }
  return out;
}

const round = (v: number): number => Math.round(v * 100) / 100;

/** The data the report's charts draw (embedded as JSON). */
export interface ReportSeries {
  /** Epoch seconds of each point. */
  readonly x: number[];
  /** Demand in task-units (the same for every row). */
  readonly demand: number[];
  readonly rows: ReadonlyArray<{
    readonly name: string;
    readonly running: number[];
    readonly tasks: number[];
    /** SLO-violation minutes within each point's span. */
    readonly violations: number[];
  }>;
  /** Ticks per column at most: the coarsest span one point stands for. */
  readonly ticksPerColumn: number;
}

/**
 * The downsampled series of every named timeline, on one shared time axis.
 *
 * @example
 * ```ts
 * const series = reportSeries(run, ['ca-dms', 'oracle']);
 * series.x.length; // <= 2 * REPORT_COLUMNS
 * ```
 */
export function reportSeries(run: SimulationRun, names: readonly string[], columns = REPORT_COLUMNS): ReportSeries {
  const timelines = names.map((name) => [name, run.timelines.get(name)] as const).filter((e): e is readonly [string, Timeline] => e[1] !== undefined);
  const first = timelines[0]?.[1];
  if (first === undefined) return { x: [], demand: [], rows: [], ticksPerColumn: 1 };
  const n = first.demand.length;
  const starts = columnStarts(n, columns);
  const minutesPerTick = first.tickMs / 60_000;
  const slo = run.result.model.sloUtilization;
  return {
    x: pointTicks(starts).map((i) => (first.startAt + i * first.tickMs) / 1000),
    demand: minMaxColumns(first.demand, starts).map(round),
    rows: timelines.map(([name, t]) => {
      const tasks = Float64Array.from(t.running, (r, i) => r + (t.starting[i] as number));
      return {
        name,
        running: minMaxColumns(t.running, starts),
        tasks: minMaxColumns(tasks, starts),
        violations: countColumns(n, starts, (i) => violatesSlo(t.demand[i] as number, t.running[i] as number, slo)).map((c) => c * minutesPerTick),
      };
    }),
    ticksPerColumn: Math.ceil(n / Math.max(1, starts.length - 1)),
  };
}

/**
 * The trade-off chart's data: every anchor swept on this trace (replayed here), ca-dms's own line
 * over its target violation rate, the oracle, and this run's rows as points.
 *
 * @example
 * ```ts
 * renderTradeoffSvg(tradeoffOf(run.result, trace, model));
 * ```
 */
export function tradeoffOf(result: SimulationResult, trace: PreparedTrace, model: SimulationModel): Tradeoff {
  const anchors = runAnchors(trace, model);
  const point = (label: string, r: { taskMinutes: number; sloViolationMinutes: number }) => ({ label, taskMinutes: r.taskMinutes, sloViolationMinutes: r.sloViolationMinutes });
  return {
    trace: result.trace,
    curves: anchors.curves.map((c) => {
      const sweep = ANCHOR_SWEEPS.find((s) => s.curve === c.anchor);
      return { name: c.anchor, points: [...c.points].sort((a, b) => a.knob - b.knob).map((p) => point(sweep ? sweep.spec(p.knob) : `${c.anchor} ${p.knob}`, p)) };
    }).concat({ name: 'ca-dms', points: caDmsCurve(trace, model).map((r) => point(r.policy, r)) }),
    oracle: point('oracle', result.oracle),
    points: result.results.map((r) => point(r.policy, r)),
  };
}

const CURVE_COLOURS: Readonly<Record<string, string>> = {
  hpa: '#1f77b4',
  'target-tracking': '#ff7f0e',
  step: '#2ca02c',
  threshold: '#9467bd',
  'ca-dms': '#d62728',
};
const SPARE_COLOURS = ['#8c564b', '#e377c2', '#17becf', '#bcbd22'];

/** Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi]. */
function niceTicks(lo: number, hi: number, count: number): number[] {
  const span = hi - lo || 1;
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw) as number;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
  return out;
}

const grouped = (v: number): string => Math.round(v).toLocaleString('en-US');

/**
 * The trade-off chart as a standalone SVG: task-minutes on x, SLO-violation minutes on y, each
 * swept curve as a line through its settings, the oracle, and every single row as a labelled
 * point. Every point carries a `<title>` (a tooltip in browsers). Presentation attributes
 * rather than CSS, so the file renders the same in a page, an image tag and on GitHub.
 *
 * @example
 * ```ts
 * writeFileSync('docs/tradeoff-nasa.svg', renderTradeoffSvg(tradeoff));
 * ```
 */
export function renderTradeoffSvg(t: Tradeoff, size: { width: number; height: number } = { width: 820, height: 500 }): string {
  const { width: W, height: H } = size;
  const pad = { left: 78, right: 190, top: 36, bottom: 52 };
  const all = [...t.curves.flatMap((c) => c.points), t.oracle, ...t.points];
  const xs = all.map((p) => p.taskMinutes);
  const ys = all.map((p) => p.sloViolationMinutes);
  const xSpan = Math.max(...xs) - Math.min(...xs) || Math.max(...xs) || 1;
  const x0 = Math.max(0, Math.min(...xs) - 0.04 * xSpan);
  const x1 = Math.max(...xs) + 0.04 * xSpan;
  const y1 = Math.max(1, Math.max(...ys) * 1.05);
  const px = (v: number): number => pad.left + ((v - x0) / (x1 - x0 || 1)) * (W - pad.left - pad.right);
  const py = (v: number): number => H - pad.bottom - (v / y1) * (H - pad.top - pad.bottom);
  const f = (v: number): string => v.toFixed(1);
  const tip = (p: TradeoffPoint): string => `<title>${escapeHtml(p.label)}: ${grouped(p.taskMinutes)} task-minutes, ${grouped(p.sloViolationMinutes)} SLO-violation minutes</title>`;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" class="tradeoff" font-family="system-ui, sans-serif" font-size="12">`);
  out.push(`<title>Cost against SLO violations on ${escapeHtml(t.trace)}</title>`);
  out.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="#fff"/>`);
  out.push(`<text x="${pad.left}" y="22" font-size="14" font-weight="bold" fill="#222">Trade-off on ${escapeHtml(t.trace)}: lower and further left is better</text>`);
  for (const v of niceTicks(x0, x1, 6)) {
    out.push(`<line x1="${f(px(v))}" y1="${pad.top}" x2="${f(px(v))}" y2="${H - pad.bottom}" stroke="#eee"/>`);
    out.push(`<text x="${f(px(v))}" y="${H - pad.bottom + 16}" text-anchor="middle" fill="#555" class="tick x">${grouped(v)}</text>`);
  }
  for (const v of niceTicks(0, y1, 6)) {
    out.push(`<line x1="${pad.left}" y1="${f(py(v))}" x2="${W - pad.right}" y2="${f(py(v))}" stroke="#eee"/>`);
    out.push(`<text x="${pad.left - 6}" y="${f(py(v))}" text-anchor="end" dominant-baseline="middle" fill="#555" class="tick y">${grouped(v)}</text>`);
  }
  out.push(`<rect x="${pad.left}" y="${pad.top}" width="${W - pad.left - pad.right}" height="${H - pad.top - pad.bottom}" fill="none" stroke="#999"/>`);
  out.push(`<text x="${(pad.left + W - pad.right) / 2}" y="${H - 12}" text-anchor="middle" fill="#222" class="axis-label x">task-minutes (running + starting tasks x minutes)</text>`);
  out.push(`<text transform="translate(18 ${(pad.top + H - pad.bottom) / 2}) rotate(-90)" text-anchor="middle" fill="#222" class="axis-label y">SLO-violation minutes</text>`);
  const legend: string[] = [];
  let spare = 0;
  t.curves.forEach((c) => {
    const colour = CURVE_COLOURS[c.name] ?? SPARE_COLOURS[spare++ % SPARE_COLOURS.length];
    const pts = c.points.map((p) => `${f(px(p.taskMinutes))},${f(py(p.sloViolationMinutes))}`).join(' ');
    out.push(`<g class="curve" data-name="${escapeHtml(c.name)}"><polyline points="${pts}" fill="none" stroke="${colour}" stroke-width="1.5"/>`);
    for (const p of c.points) out.push(`<circle cx="${f(px(p.taskMinutes))}" cy="${f(py(p.sloViolationMinutes))}" r="3.5" fill="${colour}">${tip(p)}</circle>`);
    out.push('</g>');
    legend.push(`<line x1="0" y1="${legend.length * 18}" x2="18" y2="${legend.length * 18}" stroke="${colour}" stroke-width="2"/><text x="24" y="${legend.length * 18}" dominant-baseline="middle" fill="#222">${escapeHtml(c.name)} (swept)</text>`);
  });
  const o = t.oracle;
  out.push(`<g class="oracle"><rect x="${f(px(o.taskMinutes) - 5)}" y="${f(py(o.sloViolationMinutes) - 5)}" width="10" height="10" fill="#222">${tip(o)}</rect>`);
  out.push(`<text x="${f(px(o.taskMinutes) + 8)}" y="${f(py(o.sloViolationMinutes) - 8)}" fill="#222">${escapeHtml(o.label)}</text></g>`);
  legend.push(`<rect x="4" y="${legend.length * 18 - 5}" width="10" height="10" fill="#222"/><text x="24" y="${legend.length * 18}" dominant-baseline="middle" fill="#222">oracle (clairvoyant)</text>`);
  for (const p of t.points) {
    const colour = CURVE_COLOURS[p.label] ?? '#444';
    const cx = px(p.taskMinutes);
    const cy = py(p.sloViolationMinutes);
    out.push(`<g class="point" data-name="${escapeHtml(p.label)}"><path d="M${f(cx)},${f(cy - 7)}L${f(cx + 7)},${f(cy)}L${f(cx)},${f(cy + 7)}L${f(cx - 7)},${f(cy)}Z" fill="${colour}" stroke="#fff">${tip(p)}</path>`);
    out.push(`<text x="${f(cx + 9)}" y="${f(cy + 14)}" fill="${colour}" font-weight="bold">${escapeHtml(p.label)}</text></g>`);
  }
  legend.push(`<path d="M9,${legend.length * 18 - 7}L16,${legend.length * 18}L9,${legend.length * 18 + 7}L2,${legend.length * 18}Z" fill="#d62728"/><text x="24" y="${legend.length * 18}" dominant-baseline="middle" fill="#222">a policy at its settings</text>`);
  out.push(`<g class="legend" transform="translate(${W - pad.right + 16} ${pad.top + 10})">${legend.join('')}</g>`);
  out.push('</svg>');
  return out.join('\n');
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

/** Text safe inside a `<script>` element: no `</script` can close it early. */
function scriptText(text: string): string {
  return text.replace(/<\/(script)/gi, '<\\/$1');
}

/** JSON safe inside a `<script type="application/json">` element. */
function jsonText(value: unknown): string {
  return JSON.stringify(value).replace(/</g, '\\u003c');
}

/** The report's options: the inlined chart library, and the trade-off data when it was run. */
export interface ReportOptions {
  readonly assets: ReportAssets;
  readonly tradeoff?: Tradeoff;
}

/**
 * Renders a run as one self-contained HTML document.
 *
 * @example
 * ```ts
 * writeFileSync('out.html', renderReport(simulate(trace, contestants, model), { assets: await readReportAssets() }));
 * ```
 */
export function renderReport(run: SimulationRun, options: ReportOptions): string {
  const { result } = run;
  const rows = [...result.results, result.oracle]
    .map((r) => `<tr>${COLUMNS_SHOWN.map(([k]) => `<td>${cell(r[k])}</td>`).join('')}</tr>`)
    .join('\n');
  const model = Object.entries(result.model)
    .map(([k, v]) => `<li><code>${escapeHtml(k)}</code>: ${escapeHtml(String(v ?? 'auto'))}</li>`)
    .join('');
  const series = reportSeries(run, [...result.results.map((r) => r.policy), 'oracle']);
  const minutesPerTick = result.model.tickSeconds / 60;
  const span = series.ticksPerColumn > 1 ? `Each column of a chart covers up to ${series.ticksPerColumn * minutesPerTick} minutes and keeps their lowest and highest values, so no peak is lost.` : 'Every tick is drawn.';
  const tradeoff = options.tradeoff
    ? `<h2>Trade-off</h2>
<p>Each anchor swept over its main setting draws a curve of cost (task-minutes) against SLO-violation minutes; each row of this run is a point. Hover a point for its setting and figures.</p>
<figure id="tradeoff">${renderTradeoffSvg(options.tradeoff)}</figure>`
    : '';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Scaling simulation: ${escapeHtml(result.trace)}</title>
<style>
${options.assets.css}
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5rem 0; }
.series-chart { position: relative; }
.chart-tooltip { position: absolute; z-index: 10; pointer-events: none; white-space: pre; font-size: 12px; background: rgba(255, 255, 255, 0.95); border: 1px solid #bbb; border-radius: 3px; padding: 4px 6px; box-shadow: 0 1px 3px rgba(0, 0, 0, 0.2); }
</style>
</head>
<body>
<h1>Scaling simulation: ${escapeHtml(result.trace)}</h1>
<p>${result.ticks} ticks of ${result.model.tickSeconds} s. Demand in task-units (one task-unit keeps one task at 100 % CPU; ${result.model.requestsPerTaskUnitMinute} requests/min).</p>
<table>
<thead><tr>${COLUMNS_SHOWN.map(([, h]) => `<th>${escapeHtml(h)}</th>`).join('')}</tr></thead>
<tbody>
${rows}
</tbody>
</table>
${tradeoff}
<h2>Over time</h2>
<p>Drag across a chart to zoom every chart to that time range; double-click to see the whole trace. ${span}</p>
<div id="charts"></div>
<h2>Model</h2>
<ul>${model}</ul>
<script type="application/json" id="report-data">${jsonText(series)}</script>
${options.assets.scripts.map((s) => `<script>${scriptText(s)}</script>`).join('\n')}
</body>
</html>
`;
}
