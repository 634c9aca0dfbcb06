import { describe, expect, it } from 'vitest';
import { POLICY_NAMES } from '../../../../functions/core/scaling/config.js';
import { getPolicy, UnknownPolicyError } from '../../../../functions/core/scaling/policies/index.js';

describe('policy registry', () => {
  it('has a policy under every configurable name, answering to that name', () => {
    for (const name of POLICY_NAMES) expect(getPolicy(name).name).toBe(name);
  });

  it('rejects an unknown name with a typed error listing the valid ones', () => {
    expect(() => getPolicy('aggressive')).toThrow(UnknownPolicyError);
    expect(() => getPolicy('aggressive')).toThrow(/ca-dms, threshold, target-tracking, step, hpa/);
  });
});
