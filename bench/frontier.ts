/**
 * The trade-off benchmark (`npm run bench:frontier [-- --traces DIR]`): for every trace in
 * `../shared/traces/`, the anchors' lower envelope of issue #13 and the line ca-dms draws
 * against it as its one trade-off setting (`ca_dms.target_violation_rate`) moves, each point
 * with its verdict (win / tie / lose) and both ratios.
 *
 * Where ca-dms at its defaults does not win, it also measures what a simple rule can reach
 * with information no policy has: the reference rule of `simulator/frontier.ts` (an
 * exponentially weighted level plus Poisson-scaled headroom whose noise scale is measured on
 * the whole trace in hindsight), seeing what a policy sees, or given one or three minutes of
 * foresight; for each, the best violation ratio any of its margins reaches against the same
 * envelope. A trace where even foresight does not win shows a gap no causal rule closes.
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { readTraceFile } from '../functions/adapters/sim/trace-file.js';
import { CA_DMS_DEFAULTS } from '../functions/core/scaling/config.js';
import { getPolicy } from '../functions/core/scaling/policies/index.js';
import { simulationConfig } from '../functions/core/scaling/simulator/anchors.js';
import type { FrontierVerdict } from '../functions/core/scaling/simulator/criterion.js';
import { judgeFrontier } from '../functions/core/scaling/simulator/criterion.js';
import { runFleet } from '../functions/core/scaling/simulator/fleet.js';
import { hindsightNoiseScale, referenceController } from '../functions/core/scaling/simulator/frontier.js';
import { DEFAULT_MODEL } from '../functions/core/scaling/simulator/model.js';
import { contestant, prepareTrace, simulate } from '../functions/core/scaling/simulator/simulate.js';
import { scoreTimeline } from '../functions/core/scaling/simulator/score.js';
import { runAnchors } from '../functions/core/scaling/simulator/sweep.js';
import { DEFAULT_TRACES_DIR, traceFiles } from './support/traces.js';

/** The trade-off settings swept (the default is marked). */
const RATES = [0.01, 0.02, 0.05, 0.1, 0.2];
const REFERENCE_MARGINS = Array.from({ length: 13 }, (_, i) => 0.5 + i / 4);
const REFERENCE_WEIGHT = 0.05;
const FORESIGHTS = [0, 1, 3];

const flags = z
  .object({ traces: z.string().min(1).default(DEFAULT_TRACES_DIR) })
  .safeParse(parseArgs({ options: { traces: { type: 'string' } }, strict: true }).values);
if (!flags.success) {
  console.error(flags.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('\n'));
  process.exit(2);
}
const dir = flags.data.traces;
const files = await traceFiles('bench:frontier', dir);

const model = DEFAULT_MODEL;
const fmt = (x: number): string => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : 'inf');
const ratio = (x: number | undefined): string => (x === undefined ? '-' : Number.isFinite(x) ? x.toFixed(2) : 'inf');
const pad = (cells: readonly string[], widths: readonly number[]): string => cells.map((c, i) => c.padStart(widths[i] ?? 0)).join('  ');
const verdictCells = (v: FrontierVerdict): string[] => [fmt(v.envelope), v.outcome, ratio(v.violationRatio), ratio(v.costRatio)];

console.log('trade-off benchmark: the ca-dms line against the anchors\' lower envelope (issue #13), per trace');
for (const file of files) {
  const started = performance.now();
  const trace = await readTraceFile(join(dir, file));
  const prepared = prepareTrace(trace.name, trace.points, model);
  const anchors = runAnchors(prepared, model);
  const F = anchors.oracle.sloViolationMinutes;
  console.log(`\n${file} (${prepared.demand.length} minutes): oracle ${F} violation minutes, ${fmt(anchors.oracle.taskMinutes)} task-minutes`);
  const widths = [6, 9, 10, 8, 7, 7, 7, 12];
  console.log(`  ${pad(['rate', 'viol-min', 'task-min', 'E(c0)', 'verdict', 'v ratio', 'c ratio', 'actions/hpa'], widths)}`);
  const base = simulationConfig('ca-dms', model);
  const contestants = RATES.map((rate) => contestant(String(rate), getPolicy('ca-dms'), { ...base, ca_dms: { ...base.ca_dms, target_violation_rate: rate } }));
  const rows = simulate(prepared, contestants, model).result.results;
  let defaultWins = false;
  for (const [i, r] of rows.entries()) {
    const v = judgeFrontier(r, F, anchors.curves);
    const isDefault = RATES[i] === CA_DMS_DEFAULTS.target_violation_rate;
    if (isDefault) defaultWins = v.outcome === 'win';
    console.log(`  ${pad([String(RATES[i]), String(r.sloViolationMinutes), fmt(r.taskMinutes), ...verdictCells(v), `${r.actions}/${anchors.hpaActions}`], widths)}${isDefault ? ' (default)' : ''}`);
  }
  if (!defaultWins) referenceLimits(prepared.demand, prepared.startAt, F, anchors.curves);
  console.log(`  (${((performance.now() - started) / 1000).toFixed(1)} s)`);
}

/** The best violation ratio the reference rule reaches against the envelope, with and without foresight. */
function referenceLimits(demand: Float64Array, startAt: number, F: number, curves: Parameters<typeof judgeFrontier>[2]): void {
  const noiseScale = hindsightNoiseScale(demand);
  console.log(
    `  reference rule (level weight ${REFERENCE_WEIGHT}, headroom margin x ${noiseScale.toFixed(3)} x sqrt(level) with the noise scale measured in hindsight, margins ${REFERENCE_MARGINS[0]}..${REFERENCE_MARGINS.at(-1)}):`,
  );
  for (const foresight of FORESIGHTS) {
    let best: { margin: number; v: FrontierVerdict } | undefined;
    for (const margin of REFERENCE_MARGINS) {
      const controller = referenceController(demand, { levelWeight: REFERENCE_WEIGHT, margin, noiseScale, foresight }, model);
      const s = scoreTimeline(runFleet(demand, startAt, model, controller), model);
      const v = judgeFrontier(s, F, curves);
      const rank = (x: FrontierVerdict): number => (x.outcome === 'win' ? 0 : x.outcome === 'tie' ? 1 : 2) + Math.min(x.violationRatio ?? 1, x.costRatio) / 10;
      if (best === undefined || rank(v) < rank(best.v)) best = { margin, v };
    }
    const sees = foresight === 0 ? 'sees what a policy sees' : `given ${foresight} minute${foresight === 1 ? '' : 's'} of foresight`;
    if (best) console.log(`    ${sees}: best margin ${best.margin}: ${best.v.outcome}, v ratio ${ratio(best.v.violationRatio)}, c ratio ${ratio(best.v.costRatio)}`);
  }
}
