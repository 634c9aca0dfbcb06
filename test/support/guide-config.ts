/**
 * The flat scaling document exactly as the CA-DMS scaling guide prints it ("Scaling
 * Configuration"), shared by the tests that prove we accept the guide's own example.
 *
 * @example
 * ```ts
 * import { GUIDE_FLAT_CONFIG } from '../../support/guide-config.js';
 * expect(parseScalingConfig(GUIDE_FLAT_CONFIG)).toMatchObject(GUIDE_FLAT_CONFIG);
 * ```
 */
export const GUIDE_FLAT_CONFIG = Object.freeze({
  cpu_scale_up: 80.0,
  cpu_scale_down: 30.0,
  memory_scale_up: 85.0,
  memory_scale_down: 40.0,
  response_time_scale_up: 1000.0,
  connections_scale_up: 80,
  connections_scale_down: 20,
  min_instances: 2,
  max_instances: 10,
  scale_cooldown: 300,
});
