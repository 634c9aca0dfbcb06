/**
 * The trade-off benchmark (`npm run bench:frontier [-- --traces DIR]`): for every trace in
 * `../shared/traces/`, the goal box of issue #2 section 6 (violation minutes and task-minutes
 * the `ca-dms` policy may not exceed), the line `ca-dms` draws through it as its headroom
 * margin moves, and where that line crosses the violation limit.
 *
 * Where no margin meets the goal, it also measures the information limit with the reference
 * rule of `simulator/frontier.ts` (an exponentially weighted level plus Poisson-scaled
 * headroom whose noise scale is measured on the whole trace in hindsight, best of three level
 * weights): the task-minutes it needs at the violation limit when it sees what a policy sees,
 * and when it is given one or three minutes of foresight.
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { readTraceFile } from '../functions/adapters/sim/trace-file.js';
import { DEFAULT_TRACES_DIR, traceFiles } from './support/traces.js';
import { createCaDmsPolicy, DEFAULT_CA_DMS_TUNING } from '../functions/core/scaling/policies/ca-dms.js';
import { contestantsFor, simulationConfig } from '../functions/core/scaling/simulator/anchors.js';
import { runFleet } from '../functions/core/scaling/simulator/fleet.js';
import type { FrontierPoint, ReferenceRule } from '../functions/core/scaling/simulator/frontier.js';
import { hindsightNoiseScale, referenceController, taskMinutesAtViolations } from '../functions/core/scaling/simulator/frontier.js';
import { ANCHORS, checkGoal } from '../functions/core/scaling/simulator/goal.js';
import { DEFAULT_MODEL } from '../functions/core/scaling/simulator/model.js';
import type { PreparedTrace, SimulationResult } from '../functions/core/scaling/simulator/simulate.js';
import { contestant, prepareTrace, simulate } from '../functions/core/scaling/simulator/simulate.js';
import { scoreTimeline } from '../functions/core/scaling/simulator/score.js';

/** The ca-dms headroom margins swept (the default is 2.6). */
const MARGINS = [2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.2];
/** The reference rule's level weights (the best one counts) and margins. */
const REFERENCE_WEIGHTS = [0.03, 0.05, 0.08];
const REFERENCE_MARGINS = Array.from({ length: 31 }, (_, i) => 1 + i / 10);
const FORESIGHTS = [0, 1, 3];
/**
 * Settings found by a coordinate search on the NASA trace (throwaway, issue #2 note): a level
 * that rises with weight 0.1 and falls with 0.03, and 0.05 tasks of scale-in hysteresis.
 */
const SEARCHED_ON_NASA = { levelWeight: 0.1, levelWeightDown: 0.03, hysteresis: 0.05 };

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
const fmt = (x: number): string => Math.round(x).toLocaleString('en-US');
const pad = (cells: readonly string[], widths: readonly number[]): string => cells.map((c, i) => c.padStart(widths[i] ?? 0)).join('  ');

console.log('trade-off benchmark: the ca-dms line through the goal box of issue #2, per trace');
for (const file of files) {
  const trace = await readTraceFile(join(dir, file));
  const prepared = prepareTrace(trace.name, trace.points, model);
  const started = performance.now();
  const anchors = simulate(prepared, contestantsFor(ANCHORS, model), model).result;
  const oracle = anchors.oracle;
  const best = anchors.results.reduce((a, b) =>
    b.sloViolationMinutes < a.sloViolationMinutes || (b.sloViolationMinutes === a.sloViolationMinutes && b.taskMinutes < a.taskMinutes) ? b : a,
  );
  const violationLimit = oracle.sloViolationMinutes + 0.5 * Math.max(0, best.sloViolationMinutes - oracle.sloViolationMinutes);
  const costLimit = Math.min(1.3 * oracle.taskMinutes, 1.1 * best.taskMinutes);
  console.log(`\n${file} (${prepared.demand.length} minutes)`);
  console.log(
    `  goal box: violation minutes <= ${fmt(violationLimit)} (oracle ${oracle.sloViolationMinutes} + half of ${best.policy}'s ${best.sloViolationMinutes - oracle.sloViolationMinutes} avoidable), ` +
      `task-minutes <= ${fmt(costLimit)} (1.3x oracle ${fmt(oracle.taskMinutes)}, 110% of ${best.policy}'s ${fmt(best.taskMinutes)})`,
  );

  const widths = [8, 10, 10, 9, 8, 0];
  console.log(`  ${pad(['margin', 'viol-min', 'task-min', 'x oracle', 'actions', 'goal'], widths)}`);
  const line: FrontierPoint[] = [];
  let anyPass = false;
  for (const margin of MARGINS) {
    const policy = createCaDmsPolicy({ ...DEFAULT_CA_DMS_TUNING, errorMargin: margin });
    const run = simulate(prepared, [contestant('ca-dms', policy, simulationConfig('ca-dms', model))], model).result;
    const merged: SimulationResult = { ...anchors, results: [...anchors.results, ...run.results] };
    const verdict = checkGoal(merged);
    const r = run.results[0];
    if (r === undefined) continue;
    anyPass ||= verdict.pass;
    line.push({ knob: margin, sloViolationMinutes: r.sloViolationMinutes, taskMinutes: r.taskMinutes });
    const failed = verdict.checks.filter((c) => !c.pass).map((c) => c.label);
    const tag = margin === DEFAULT_CA_DMS_TUNING.errorMargin ? ' (default)' : '';
    console.log(
      `  ${pad([margin.toFixed(1), String(r.sloViolationMinutes), fmt(r.taskMinutes), (r.taskMinutes / oracle.taskMinutes).toFixed(3), String(r.actions), verdict.pass ? 'PASS' : `FAIL: ${failed.join('; ')}`], widths)}${tag}`,
    );
  }
  const atLimit = taskMinutesAtViolations(line, violationLimit);
  console.log(
    atLimit === undefined
      ? `  the swept margins do not reach ${fmt(violationLimit)} violation minutes`
      : `  ca-dms at the violation limit (interpolated): ${fmt(atLimit)} task-minutes, ${(atLimit / oracle.taskMinutes).toFixed(3)}x the oracle, ${atLimit <= costLimit ? 'inside' : 'outside'} the box`,
  );
  console.log(`  some swept margin meets the whole goal: ${anyPass ? 'yes' : 'no'}`);

  if (!anyPass) referenceLimits(prepared, violationLimit, costLimit, oracle.taskMinutes);
  console.log(`  (${((performance.now() - started) / 1000).toFixed(1)} s)`);
}

/** The reference rule's task-minutes at the violation limit, with and without foresight. */
function referenceLimits(prepared: PreparedTrace, violationLimit: number, costLimit: number, oracleTaskMinutes: number): void {
  const noiseScale = hindsightNoiseScale(prepared.demand);
  console.log(
    `  information limit: reference rule (level + margin x ${noiseScale.toFixed(3)} x sqrt(level), noise scale measured on the whole trace in hindsight, best of level weights ${REFERENCE_WEIGHTS.join('/')})`,
  );
  const atLimit = (rule: Omit<ReferenceRule, 'margin'>): number | undefined =>
    taskMinutesAtViolations(
      REFERENCE_MARGINS.map((margin) => {
        const controller = referenceController(prepared.demand, { ...rule, margin }, model);
        const s = scoreTimeline(runFleet(prepared.demand, prepared.startAt, model, controller), model);
        return { knob: margin, sloViolationMinutes: s.sloViolationMinutes, taskMinutes: s.taskMinutes };
      }),
      violationLimit,
    );
  const report = (label: string, cost: number | undefined, detail: string): void => {
    console.log(
      cost === undefined
        ? `    ${label}: does not reach the violation limit`
        : `    ${label}: ${fmt(cost)} task-minutes at the violation limit (${(cost / oracleTaskMinutes).toFixed(3)}x the oracle${detail}): ${cost <= costLimit ? 'inside' : 'outside'} the box`,
    );
  };
  for (const foresight of FORESIGHTS) {
    let best: number | undefined;
    let bestWeight = 0;
    for (const levelWeight of REFERENCE_WEIGHTS) {
      const at = atLimit({ levelWeight, noiseScale, foresight });
      if (at !== undefined && (best === undefined || at < best)) {
        best = at;
        bestWeight = levelWeight;
      }
    }
    const sees = foresight === 0 ? 'sees what a policy sees (up to the previous minute)' : `given ${foresight} minute${foresight === 1 ? '' : 's'} of foresight`;
    report(sees, best, `, level weight ${bestWeight}`);
  }
  const s = SEARCHED_ON_NASA;
  report(
    `no foresight, settings searched on NASA (level weight ${s.levelWeight} rising / ${s.levelWeightDown} falling, ${s.hysteresis}-task scale-in hysteresis)`,
    atLimit({ ...s, noiseScale, foresight: 0 }),
    '',
  );
}
