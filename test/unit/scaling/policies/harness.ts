/**
 * Small builders shared by the policy specs: a resolved service configuration from a
 * configuration document, task counts, and states with applied events.
 */
import { parseScalingConfig, resolveServiceConfig, type ServiceScalingConfig } from '../../../../functions/core/scaling/config.js';
import {
  initialState,
  type MetricsSnapshot,
  type PolicyOutput,
  type ScaleEvent,
  type ScalingPolicy,
  type ServiceState,
  type TaskCounts,
} from '../../../../functions/core/scaling/types.js';

export const T0 = Date.UTC(2026, 10, 2, 12, 0, 0);
export const SECOND = 1000;
export const MINUTE = 60 * SECOND;

/** The effective configuration of `frontend` for a configuration document. */
export function serviceConfig(document: Record<string, unknown> = {}, service = 'frontend'): ServiceScalingConfig {
  return resolveServiceConfig(parseScalingConfig(document), service);
}

export function tasks(desired: number, running = desired, extra: Partial<TaskCounts> = {}): TaskCounts {
  return { running, pending: desired - running, desired, ...extra };
}

/** A state whose applied events are `events` (oldest first). */
export function withEvents(events: ScaleEvent[], service = 'frontend'): ServiceState {
  return { ...initialState(service), events };
}

/** One evaluation at `now` with metrics stamped `now`. */
export function evaluateAt(
  policy: ScalingPolicy<ServiceScalingConfig>,
  config: ServiceScalingConfig,
  state: ServiceState,
  now: number,
  metrics: Omit<MetricsSnapshot, 'at'>,
  counts: TaskCounts,
): PolicyOutput {
  return policy.evaluate({ config, state, metrics: { at: now, ...metrics }, tasks: counts, now });
}
