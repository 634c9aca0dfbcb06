/**
 * The policies' settings in a simulation: the benchmark's anchor settings (issue #2 section 5)
 * on the simulated fleet's bounds.
 */
import type { PolicyName, ServiceScalingConfig } from '../config.js';
import { parseScalingConfig, resolveServiceConfig } from '../config.js';
import { getPolicy } from '../policies/index.js';
import { SIMULATED_SERVICE } from './drive.js';
import type { SimulationModel } from './model.js';
import type { Contestant } from './simulate.js';
import { contestant } from './simulate.js';

/** The benchmark's base configuration document (the guide's JSON shape). */
export const ANCHOR_DOCUMENT: Readonly<Record<string, unknown>> = {
  scale_cooldown: 300,
  targets: { cpu: 70 },
  step: {
    metric: 'cpu',
    adjustment_type: 'ChangeInCapacity',
    scale_out_threshold: 70,
    scale_in_threshold: 40,
    scale_out_steps: [
      { lower: 0, upper: 15, adjustment: 1 },
      { lower: 15, upper: 25, adjustment: 2 },
      { lower: 25, upper: null, adjustment: 3 },
    ],
    scale_in_steps: [{ lower: null, upper: 0, adjustment: -1 }],
  },
};

/**
 * The configuration a policy runs with in the simulator: the guide's defaults (which are the
 * `threshold` anchor), CPU targeted at 70 % (`hpa`, `target-tracking`), step scaling +1 at
 * CPU >= 70, +2 at >= 85, +3 at >= 95 and -1 below 40 with a 300 s cooldown, and the model's
 * bounds. `document` replaces that base (`simulate --config`); the policy and the model's bounds
 * are set over it.
 *
 * @example
 * ```ts
 * const config = simulationConfig('hpa', DEFAULT_MODEL); // config.targets.cpu === 70
 * ```
 */
export function simulationConfig(policy: PolicyName, model: SimulationModel, document: Readonly<Record<string, unknown>> = ANCHOR_DOCUMENT): ServiceScalingConfig {
  // Per-service overrides name real services; the simulated one runs on the global settings.
  const config = parseScalingConfig({ ...document, policy, min_instances: model.minTasks, max_instances: model.maxTasks, services: {} });
  return resolveServiceConfig(config, SIMULATED_SERVICE);
}

/** The registered policies named, each with its simulation configuration. */
export function contestantsFor(names: readonly PolicyName[], model: SimulationModel, document?: Readonly<Record<string, unknown>>): Contestant[] {
  return names.map((name) => contestant(name, getPolicy(name), simulationConfig(name, model, document)));
}
