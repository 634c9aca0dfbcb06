/**
 * Drives a scaling policy through the simulated fleet exactly as the controller does: build the
 * metrics snapshot and task counts, call `evaluate`, apply `decision.to` unless the decision
 * says it must not be applied, and record the applied change in the service state.
 */
import type { Decision, ScalingPolicy, ServiceState } from '../types.js';
import { initialState, recordApplied } from '../types.js';
import type { Controller } from './fleet.js';
import { metricsFor, SimulationError } from './fleet.js';
import type { SimulationModel } from './model.js';

/** The service name the simulated fleet evaluates under. */
export const SIMULATED_SERVICE = 'simulated';

/**
 * Whether the controller applies a decision (not when it is disabled or a dry run).
 *
 * @example
 * ```ts
 * if (isApplicable(decision)) fleet.setDesired(decision.to);
 * ```
 */
export function isApplicable(decision: Decision): boolean {
  return decision.to !== decision.from && !decision.blocked.some((b) => b.kind === 'dry_run' || b.kind === 'disabled');
}

/**
 * A controller that evaluates `policy` each tick on the previous tick's metrics. `dropped[i]`
 * set means the metrics of tick i are missing (only the timestamp is reported).
 *
 * @example
 * ```ts
 * const timeline = runFleet(demand, start, model, policyController(policy, config, model, dropped));
 * ```
 */
export function policyController<C>(
  policy: ScalingPolicy<C>,
  config: C,
  model: SimulationModel,
  dropped: Uint8Array,
  onDecision?: (decision: Decision) => void,
): Controller {
  let state: ServiceState = initialState(SIMULATED_SERVICE);
  return (view) => {
    const prev = view.tick - 1;
    const metrics = dropped[prev] === 1
      ? { at: view.now }
      : metricsFor(view.demand[prev] as number, view.pastRunning[prev] as number, view.now, model);
    const tasks = { running: view.running, pending: view.pending, desired: view.desired };
    const out = policy.evaluate({ config, state, metrics, tasks, now: view.now });
    state = out.state;
    const decision = out.decision;
    onDecision?.(decision);
    if (decision.from !== view.desired) {
      throw new SimulationError(`tick ${view.tick}: policy ${policy.name} decided from ${decision.from} but the desired count was ${view.desired}`);
    }
    if (!isApplicable(decision)) return view.desired;
    state = recordApplied(state, { at: view.now, from: decision.from, to: decision.to });
    return decision.to;
  };
}
