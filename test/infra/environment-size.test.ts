/**
 * Lambda refuses a function whose environment is over 4 KB. Every shipped configuration
 * (config/*.json, prod with the domain it must have) is synthesized and every
 * function's environment estimated (references counted at 128 characters): each must stay under
 * 3 KB, leaving room for users' additions. What grows with the deployment lives in SSM
 * Parameter Store instead, one parameter per variable, within the parameter limits.
 *
 * The same syntheses check that every stateful resource keeps the logical ID it had before the
 * environments became Stages (test/infra/fixtures/stateful-logical-ids.json): a changed ID is a
 * new database, secret, key or log group beside (or instead of) the old one.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ADVANCED_PARAMETER_MAX, estimatedEnvironmentSize, estimatedSize, STANDARD_PARAMETER_MAX } from '../../lib/control-plane/config-parameters.js';
import { deployable, resourcesOf, ROOT, synthesize } from './support/synth.js';

const LIMIT = 3 * 1024;
const configs = readdirSync(join(ROOT, 'config')).filter((f) => f.endsWith('.json'));
const statefulIds = JSON.parse(readFileSync(join(ROOT, 'test', 'infra', 'fixtures', 'stateful-logical-ids.json'), 'utf8')) as Record<string, Record<string, Record<string, string>>>;

describe.each(configs)('config/%s', (file) => {
  const raw = JSON.parse(readFileSync(join(ROOT, 'config', file), 'utf8')) as { production?: boolean };
  const s = synthesize(deployable(raw));
  const functions = Object.values(s.stacks).flatMap((stack) =>
    resourcesOf(s.template(stack), 'AWS::Lambda::Function').map(([id, fn]) => ({
      id: `${stack.stackName}/${id}`,
      variables: ((fn.Properties?.['Environment'] as { Variables?: Record<string, unknown> } | undefined)?.Variables ?? {}),
    })),
  );

  it('synthesizes', () => {
    expect(s.error).toBeUndefined();
    expect(functions.length).toBeGreaterThanOrEqual(5);
  });

  it.each(functions.map((f) => [f.id, f] as const))('keeps the environment of %s under 3 KB', (_id, fn) => {
    expect(estimatedEnvironmentSize(fn.variables)).toBeLessThanOrEqual(LIMIT);
  });

  it('keeps the logical ID and type of every stateful resource synthesized before the stages', () => {
    const recorded = statefulIds[s.config.environment];
    expect(recorded, `no recorded IDs for environment ${s.config.environment}`).toBeDefined();
    for (const [stackName, ids] of Object.entries(recorded ?? {})) {
      const stack = Object.values(s.stacks).find((st) => st.stackName === stackName);
      expect(stack, `stack ${stackName}`).toBeDefined();
      if (!stack) continue;
      const resources = (s.template(stack).toJSON() as { Resources: Record<string, { Type: string }> }).Resources;
      const synthesizedIds = Object.fromEntries(Object.keys(ids).map((id) => [id, resources[id]?.Type]));
      expect(synthesizedIds, stackName).toEqual(ids);
    }
  });

  it('keeps each SSM parameter within its tier', () => {
    const parameters = resourcesOf(s.template(s.stacks.controlPlane), 'AWS::SSM::Parameter');
    expect(parameters.length).toBeGreaterThan(0);
    for (const [, p] of parameters) {
      const size = estimatedSize(p.Properties?.['Value']);
      expect(size).toBeLessThanOrEqual(p.Properties?.['Tier'] === 'Advanced' ? ADVANCED_PARAMETER_MAX : STANDARD_PARAMETER_MAX);
    }
  });
});
