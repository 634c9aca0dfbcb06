/**
 * The policy benchmark (`npm run bench:policies [-- --traces DIR --runs N]`): every policy and
 * the oracle on every trace in `../shared/traces/` (relative to the repository root), the score
 * table, the ca-dms goal of issue #2 section 6 with PASS/FAIL per trace, and the time to
 * replay the NASA trace through all five policies and the oracle (goal: under 2 s). Then the
 * same goal on synthetic shapes (plateaus, daily cycles, ramps, recurring spikes, at three
 * noise levels, seeded), so that a change tuned on the real traces shows what it does
 * elsewhere.
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { readTraceFile } from '../functions/adapters/sim/trace-file.js';
import { DEFAULT_TRACES_DIR, traceFiles } from './support/traces.js';
import { POLICY_NAMES } from '../functions/core/scaling/config.js';
import { contestantsFor } from '../functions/core/scaling/simulator/anchors.js';
import { describeModel, formatResultTable } from '../functions/core/scaling/simulator/format.js';
import { checkGoal } from '../functions/core/scaling/simulator/goal.js';
import { DEFAULT_MODEL } from '../functions/core/scaling/simulator/model.js';
import { mulberry32 } from '../functions/core/scaling/simulator/prng.js';
import { prepareTrace, simulate } from '../functions/core/scaling/simulator/simulate.js';
import type { Shape } from '../functions/core/scaling/simulator/synthetic.js';
import { syntheticTrace } from '../functions/core/scaling/simulator/synthetic.js';

const NASA_GOAL_MS = 2000;

const flags = z
  .object({
    traces: z.string().min(1).default(DEFAULT_TRACES_DIR),
    runs: z
      .string()
      .regex(/^[1-9]\d*$/, 'expected a whole number >= 1')
      .transform(Number)
      .default(3),
  })
  .safeParse(parseArgs({ options: { traces: { type: 'string' }, runs: { type: 'string' } }, strict: true }).values);
if (!flags.success) {
  console.error(flags.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('\n'));
  process.exit(2);
}
const { traces: dir, runs } = flags.data;

const files = await traceFiles('bench:policies', dir);

const model = DEFAULT_MODEL;
console.log(`policy benchmark: ${files.length} traces from ${dir}`);
console.log(`model: ${describeModel(model)}\n`);
const verdicts: string[] = [];
let allPass = true;
for (const file of files) {
  const trace = await readTraceFile(join(dir, file));
  const prepared = prepareTrace(trace.name, trace.points, model);
  const contestants = contestantsFor(POLICY_NAMES, model);
  let best = Infinity;
  let run = simulate(prepared, contestants, model);
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    run = simulate(prepared, contestantsFor(POLICY_NAMES, model), model);
    best = Math.min(best, performance.now() - started);
  }
  console.log(formatResultTable(run.result));
  const verdict = checkGoal(run.result);
  allPass &&= verdict.pass;
  console.log(`goal for ca-dms against ${verdict.bestAnchor} (the anchor with the fewest SLO-violation minutes): ${verdict.pass ? 'PASS' : 'FAIL'}`);
  for (const c of verdict.checks) console.log(`  ${c.pass ? 'PASS' : 'FAIL'}  ${c.label}: ${fmt(c.actual)} (limit ${fmt(c.limit)})`);
  const timing = `replay of ${prepared.demand.length} minutes through ${POLICY_NAMES.length} policies + oracle: ${best.toFixed(0)} ms (best of ${runs})`;
  if (file.includes('nasa')) console.log(`${timing}; goal < ${NASA_GOAL_MS} ms: ${best < NASA_GOAL_MS ? 'PASS' : 'FAIL'}`);
  else console.log(timing);
  console.log('');
  verdicts.push(`${verdict.pass ? 'PASS' : 'FAIL'}  ${file}`);
}
console.log(`ca-dms goal per trace:\n${verdicts.map((v) => `  ${v}`).join('\n')}`);
console.log(allPass ? 'ca-dms meets the goal on every trace' : 'ca-dms misses the goal on at least one trace');

/** Synthetic shapes: a week each, per-minute multiplicative noise of 0, 10 % and 30 %, seed 7. */
const SHAPES: ReadonlyArray<readonly [string, Shape]> = [
  ['daily 1..8', { kind: 'daily', low: 1, high: 8, peakMinute: 840 }],
  ['daily 3..6', { kind: 'daily', low: 3, high: 6, peakMinute: 840 }],
  ['ramp 1->8 in 10 h', { kind: 'ramp', from: 1, to: 8, start: 1440, minutes: 600 }],
  ['step 2->7', { kind: 'step', from: 2, to: 7, at: 3000 }],
  ['spikes +5 10 min/h', { kind: 'spikes', base: 2, height: 5, every: 60, width: 10 }],
  ['spikes +3 30 min/3 h', { kind: 'spikes', base: 3, height: 3, every: 180, width: 30 }],
];
console.log('\nsynthetic shapes (one week each, noise per minute, seed 7): the ca-dms goal against the same anchors');
console.log(`${'shape'.padEnd(22)}${'noise'.padStart(6)}  ${'ca-dms viol/task-min/actions'.padEnd(30)}${'best anchor'.padEnd(34)}${'oracle'.padEnd(16)}goal`);
let synthPass = 0;
for (const [label, shape] of SHAPES) {
  for (const noise of [0, 0.1, 0.3]) {
    const prepared = prepareTrace(label, syntheticTrace(shape, 7 * 1440, { noise, random: mulberry32(7) }), model);
    const result = simulate(prepared, contestantsFor(POLICY_NAMES, model), model).result;
    const verdict = checkGoal(result);
    if (verdict.pass) synthPass++;
    const ours = result.results.find((r) => r.policy === 'ca-dms');
    const anchor = result.results.find((r) => r.policy === verdict.bestAnchor);
    const o = result.oracle;
    const failed = verdict.checks.filter((c) => !c.pass).map((c) => `${c.label} (${fmt(c.actual)} > ${fmt(c.limit)})`);
    console.log(
      `${label.padEnd(22)}${`${noise * 100}%`.padStart(6)}  ${`${ours?.sloViolationMinutes}/${ours?.taskMinutes}/${ours?.actions}`.padEnd(30)}` +
        `${`${verdict.bestAnchor} ${anchor?.sloViolationMinutes}/${anchor?.taskMinutes}/${anchor?.actions}`.padEnd(34)}${`${o.sloViolationMinutes}/${o.taskMinutes}`.padEnd(16)}` +
        `${verdict.pass ? 'PASS' : `FAIL: ${failed.join('; ')}`}`,
    );
  }
}
console.log(`ca-dms meets the goal on ${synthPass} of ${SHAPES.length * 3} synthetic traces`);

function fmt(x: number): string {
  return Number.isInteger(x) ? String(x) : x.toFixed(1);
}
