/**
 * The policy registry: every policy behind the one {@link ScalingPolicy} interface, by name.
 *
 * @example
 * ```ts
 * const policy = getPolicy(config.policy);
 * const { decision, state: next } = policy.evaluate({ config, state, metrics, tasks, now });
 * ```
 */
import { POLICY_NAMES, type PolicyName, type ServiceScalingConfig } from '../config.js';
import type { ScalingPolicy } from '../types.js';
import { caDmsPolicy } from './ca-dms.js';
import { thresholdPolicy } from './threshold.js';

/** The registered policies by name. */
export const POLICIES: Partial<Record<PolicyName, ScalingPolicy<ServiceScalingConfig>>> = {
  'ca-dms': caDmsPolicy,
  threshold: thresholdPolicy,
};

/** A policy name that is not registered. */
export class UnknownPolicyError extends Error {
  override readonly name = 'UnknownPolicyError';
  constructor(readonly policy: string) {
    super(`unknown scaling policy "${policy}"; valid policies: ${POLICY_NAMES.join(', ')}`);
  }
}

/** The policy registered under `name`; throws {@link UnknownPolicyError} if there is none. */
export function getPolicy(name: PolicyName): ScalingPolicy<ServiceScalingConfig> {
  const policy = POLICIES[name];
  if (!policy) throw new UnknownPolicyError(name);
  return policy;
}
