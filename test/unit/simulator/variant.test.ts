import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { simulationConfig } from '../../../functions/core/scaling/simulator/anchors.js';
import { DEFAULT_MODEL } from '../../../functions/core/scaling/simulator/model.js';
import { applyVariant, parseVariant, VariantError } from '../../../functions/core/scaling/simulator/variant.js';

const configOf = (spec: string) => {
  const v = parseVariant(spec);
  return applyVariant(simulationConfig(v.policy, DEFAULT_MODEL), v);
};

describe('parseVariant', () => {
  it('reads a bare policy as that policy with no overrides', () => {
    expect(parseVariant('hpa')).toEqual({ spec: 'hpa', policy: 'hpa', overrides: [] });
  });

  it('reads path=value pairs, values as JSON or bare text', () => {
    const v = parseVariant('step:step.scale_out_threshold=60,step.metric=memory,targets.memory=null');
    expect(v.overrides).toEqual([
      { path: 'step.scale_out_threshold', value: 60 },
      { path: 'step.metric', value: 'memory' },
      { path: 'targets.memory', value: null },
    ]);
  });

  it.each([
    ['kubernetes:targets.cpu=50', /unknown policy "kubernetes"; valid policies: ca-dms/],
    ['hpa:', /nothing after the colon/],
    ['hpa:targets.cpu', /"targets.cpu" is not path=value/],
    ['hpa:=5', /"=5" is not path=value/],
    ['hpa:targets.cpu=', /path "targets.cpu" has no value/],
    ['hpa:targets.cpu=50,targets.cpu=60', /path "targets.cpu" is given twice/],
    ['hpa:policy=step', /path "policy" cannot be set: the policy is the part before the colon/],
    ['hpa:cooldown_out=5', /path "cooldown_out" cannot be set: it is derived/],
    ['hpa:targets..cpu=5', /path "targets..cpu": "" is not a setting name/],
  ])('rejects %s', (spec, message) => {
    expect(() => parseVariant(spec)).toThrow(VariantError);
    expect(() => parseVariant(spec)).toThrow(message);
  });
});

describe('applyVariant', () => {
  it('sets the paths in the policy\'s resolved configuration and leaves the rest', () => {
    const base = simulationConfig('step', DEFAULT_MODEL);
    const config = configOf('step:step.scale_out_threshold=60,step.scale_in_threshold=30');
    expect(config.step.scale_out_threshold).toBe(60);
    expect(config.step.scale_in_threshold).toBe(30);
    expect({ ...config, step: base.step }).toEqual(base);
  });

  it('reaches into lists by index', () => {
    expect(configOf('step:step.scale_out_steps.0.adjustment=2').step.scale_out_steps[0]?.adjustment).toBe(2);
  });

  it('creates optional objects on the way (hpa behaviour rules)', () => {
    expect(configOf('hpa:hpa.behavior.scaleUp.stabilizationWindowSeconds=60').hpa.behavior.scaleUp?.stabilizationWindowSeconds).toBe(60);
  });

  it.each([
    ['hpa:targets.cpux=50', /unknown setting "targets.cpux"/],
    ['hpa:nothing.here=1', /unknown setting "nothing"/],
    ['hpa:targets.cpu=hot', /targets\.cpu: .*expected number/],
    ['hpa:targets.cpu=150', /targets\.cpu: .*100/],
    ['step:step.scale_out_threshold=20', /step\.scale_in_threshold \(40\) must be below step\.scale_out_threshold \(20\)/],
    ['hpa:min_instances.low=1', /path "min_instances.low": min_instances is not an object/],
    ['step:step.scale_out_steps.7.adjustment=1', /not an element of the list \(it has 3\)/],
  ])('rejects %s naming the path', (spec, message) => {
    expect(() => configOf(spec)).toThrow(VariantError);
    expect(() => configOf(spec)).toThrow(message);
  });

  it('sets any CPU target the schema accepts, and rejects any it does not', () => {
    fc.assert(
      fc.property(fc.integer({ min: -50, max: 200 }), (cpu) => {
        const spec = `target-tracking:targets.cpu=${cpu}`;
        if (cpu >= 0 && cpu <= 100) expect(configOf(spec).targets.cpu).toBe(cpu);
        else expect(() => configOf(spec)).toThrow(/targets\.cpu/);
      }),
      { numRuns: 60, verbose: true },
    );
  });
});
