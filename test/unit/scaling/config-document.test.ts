import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { defaultScalingConfig } from '../../../functions/core/scaling/config.js';
import { applyMergePatch, missingSettings } from '../../../functions/core/scaling/config-document.js';

describe('JSON Merge Patch (RFC 7396)', () => {
  // RFC 7396 Appendix A, every example.
  it.each([
    [{ a: 'b' }, { a: 'c' }, { a: 'c' }],
    [{ a: 'b' }, { b: 'c' }, { a: 'b', b: 'c' }],
    [{ a: 'b' }, { a: null }, {}],
    [{ a: 'b', b: 'c' }, { a: null }, { b: 'c' }],
    [{ a: ['b'] }, { a: 'c' }, { a: 'c' }],
    [{ a: 'c' }, { a: ['b'] }, { a: ['b'] }],
    [{ a: { b: 'c' } }, { a: { b: 'd', c: null } }, { a: { b: 'd' } }],
    [{ a: [{ b: 'c' }] }, { a: [1] }, { a: [1] }],
    [['a', 'b'], ['c', 'd'], ['c', 'd']],
    [{ a: 'b' }, ['c'], ['c']],
    [{ a: 'foo' }, null, null],
    [{ a: 'foo' }, 'bar', 'bar'],
    [{ e: null }, { a: 1 }, { e: null, a: 1 }],
    [[1, 2], { a: 'b', c: null }, { a: 'b' }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
  ])('patches %j with %j into %j', (target, patch, result) => {
    expect(applyMergePatch(target, patch)).toEqual(result);
  });

  it('leaves its arguments alone and keeps a member named __proto__ a member', () => {
    const target = { a: { b: 1 } };
    const patch = JSON.parse('{"__proto__": {"polluted": true}, "a": {"c": 2}}') as unknown;
    const out = applyMergePatch(target, patch) as Record<string, unknown>;
    expect(target).toEqual({ a: { b: 1 } });
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(Object.hasOwn(out, '__proto__')).toBe(true);
    expect(out['a']).toEqual({ b: 1, c: 2 });
  });

  it('is idempotent: applying a patch twice is applying it once', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 3 }), fc.jsonValue({ maxDepth: 3 }), (target, patch) => {
        const once = applyMergePatch(target, patch);
        expect(applyMergePatch(once, patch)).toEqual(once);
      }),
    );
  });
});

describe('missingSettings: what a complete configuration document must name', () => {
  it('finds nothing missing in the configuration GET /config returns', () => {
    expect(missingSettings(defaultScalingConfig() as unknown as Record<string, unknown>)).toEqual([]);
  });

  it('lists every top-level and nested setting left out, but not services or HPA behaviour rules', () => {
    const complete = defaultScalingConfig() as unknown as Record<string, Record<string, unknown>>;
    const { check_interval: _dropped, ...rest } = complete;
    const { cpu: _cpu, ...targets } = complete['targets'] ?? {};
    const missing = missingSettings({ ...rest, targets, services: {}, hpa: { tolerance: 0.1, behavior: {} } });
    expect(missing).toEqual(['check_interval', 'targets.cpu']);
  });

  it('lists every setting for an empty document', () => {
    expect(missingSettings({})).toEqual(Object.keys(defaultScalingConfig()));
  });
});
