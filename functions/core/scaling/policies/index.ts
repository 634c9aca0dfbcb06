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
import { hpaPolicy } from './hpa.js';
import { stepPolicy } from './step.js';
import { targetTrackingPolicy } from './target-tracking.js';
import { thresholdPolicy } from './threshold.js';

/** The registered policies by name; the type makes sure every configurable name has one. */
export const POLICIES: Readonly<Record<PolicyName, ScalingPolicy<ServiceScalingConfig>>> = {
  'ca-dms': caDmsPolicy,
  threshold: thresholdPolicy,
  'target-tracking': targetTrackingPolicy,
  step: stepPolicy,
  hpa: hpaPolicy,
};

/** A policy name that is not registered. */
export class UnknownPolicyError extends Error {
  override readonly name = 'UnknownPolicyError';
  constructor(readonly policy: string) {
    super(`unknown scaling policy "${policy}"; valid policies: ${POLICY_NAMES.join(', ')}`);
  }
}

/**
 * The policy registered under `name`. Names that reached here without validation (a CLI flag,
 * a stored row) throw {@link UnknownPolicyError} listing the valid names.
 */
export function getPolicy(name: PolicyName | string): ScalingPolicy<ServiceScalingConfig> {
  if (!isPolicyName(name)) throw new UnknownPolicyError(name);
  return POLICIES[name];
}

/** True when `name` is one of the configurable policy names. */
export function isPolicyName(name: string): name is PolicyName {
  return (POLICY_NAMES as readonly string[]).includes(name);
}
