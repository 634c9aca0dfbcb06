/**
 * The clairvoyant oracle: it knows demand ahead and provisions just enough, for now and for
 * every minute until a task started now would be serving. No policy can do better on
 * violations within the bounds and the startup delay, so its task-minutes are the cost floor.
 */
import type { Controller } from './fleet.js';
import type { SimulationModel } from './model.js';
import { tasksNeeded } from './model.js';

/**
 * Builds the oracle's controller for a demand series.
 *
 * @example
 * ```ts
 * const timeline = runFleet(demand, 0, DEFAULT_MODEL, oracleController(demand, DEFAULT_MODEL));
 * ```
 */
export function oracleController(demand: Float64Array, model: SimulationModel): Controller {
  const lookahead = Math.ceil(model.startupSeconds / model.tickSeconds);
  const needed = Int32Array.from(demand, (d) => tasksNeeded(d, model));
  return ({ tick }) => {
    let want = 0;
    const end = Math.min(needed.length - 1, tick + lookahead);
    for (let j = tick; j <= end; j++) want = Math.max(want, needed[j] as number);
    return want;
  };
}
