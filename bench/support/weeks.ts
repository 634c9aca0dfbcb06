/**
 * The synthetic weeks the policy benchmarks replay besides the real traces: plateaus, daily
 * cycles, a ramp, a step and recurring spikes, each a week long at 0, 10 % and 30 %
 * per-minute noise (seed 7), so that a setting tuned on the real traces shows what it does
 * elsewhere.
 */
import type { SimulationModel } from '../../functions/core/scaling/simulator/model.js';
import { mulberry32 } from '../../functions/core/scaling/simulator/prng.js';
import type { PreparedTrace } from '../../functions/core/scaling/simulator/simulate.js';
import { prepareTrace } from '../../functions/core/scaling/simulator/simulate.js';
import type { Shape } from '../../functions/core/scaling/simulator/synthetic.js';
import { syntheticTrace } from '../../functions/core/scaling/simulator/synthetic.js';

const SHAPES: ReadonlyArray<readonly [string, Shape]> = [
  ['daily 1..8', { kind: 'daily', low: 1, high: 8, peakMinute: 840 }],
  ['daily 3..6', { kind: 'daily', low: 3, high: 6, peakMinute: 840 }],
  ['ramp 1->8 in 10 h', { kind: 'ramp', from: 1, to: 8, start: 1440, minutes: 600 }],
  ['step 2->7', { kind: 'step', from: 2, to: 7, at: 3000 }],
  ['spikes +5 10 min/h', { kind: 'spikes', base: 2, height: 5, every: 60, width: 10 }],
  ['spikes +3 30 min/3 h', { kind: 'spikes', base: 3, height: 3, every: 180, width: 30 }],
];
const NOISES = [0, 0.1, 0.3];

/** The names of the synthetic weeks, e.g. `synthetic daily 1..8, noise 10%`. */
export const SYNTHETIC_WEEKS: readonly string[] = SHAPES.flatMap(([label]) => NOISES.map((n) => weekName(label, n)));

function weekName(label: string, noise: number): string {
  return `synthetic ${label}, noise ${noise * 100}%`;
}

/** The synthetic week named `name` (one of {@link SYNTHETIC_WEEKS}), prepared for `model`. */
export function syntheticWeek(name: string, model: SimulationModel): PreparedTrace {
  for (const [label, shape] of SHAPES) {
    for (const noise of NOISES) {
      if (weekName(label, noise) === name) return prepareTrace(name, syntheticTrace(shape, 7 * 1440, { noise, random: mulberry32(7) }), model);
    }
  }
  throw new RangeError(`no synthetic week named ${name}`);
}
