import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compileRanges, findRange, normaliseRangeValue, rangeProblems, type RangeSpec } from '../../../functions/core/sharding/strategies/range.js';

const numbers: RangeSpec[] = [
  { shard_id: 'low', to: 1000 },
  { shard_id: 'mid', from: 1000, to: 2000 },
  { shard_id: 'high', from: 2000 },
];

const shardFor = (keyType: 'number' | 'string' | 'timestamp', specs: RangeSpec[], key: unknown): string | undefined => {
  const norm = normaliseRangeValue(keyType, key);
  if (!norm.ok) throw new Error(norm.why);
  return findRange(compileRanges(keyType, specs), norm.value)?.shardId;
};

describe('range strategy', () => {
  it('sends keys below the first bound to the open first range', () => {
    expect(shardFor('number', numbers, -1e12)).toBe('low');
  });

  it('sends keys above the last bound to the open last range', () => {
    expect(shardFor('number', numbers, 1e15)).toBe('high');
  });

  it('includes the lower bound and excludes the upper bound', () => {
    expect(shardFor('number', numbers, 999.999)).toBe('low');
    expect(shardFor('number', numbers, 1000)).toBe('mid');
    expect(shardFor('number', numbers, 1999)).toBe('mid');
    expect(shardFor('number', numbers, 2000)).toBe('high');
  });

  it('finds nothing outside bounded first and last ranges', () => {
    const closed: RangeSpec[] = [{ shard_id: 'only', from: 0, to: 10 }];
    expect(shardFor('number', closed, -1)).toBeUndefined();
    expect(shardFor('number', closed, 10)).toBeUndefined();
    expect(shardFor('number', closed, 0)).toBe('only');
  });

  it('compares string keys by code point', () => {
    const letters: RangeSpec[] = [
      { shard_id: 'a-m', to: 'n' },
      { shard_id: 'n-z', from: 'n', to: '\uff5e' },
      { shard_id: 'rest', from: '\uff5e' },
    ];
    expect(shardFor('string', letters, 'mango')).toBe('a-m');
    expect(shardFor('string', letters, 'n')).toBe('n-z');
    expect(shardFor('string', letters, 'Zebra')).toBe('a-m');
    // U+1F600 is above U+FF5E by code point although its first UTF-16 unit (0xD83D) is below.
    expect(shardFor('string', letters, '\u{1f600}')).toBe('rest');
  });

  it('compares timestamps as instants, whatever the zone they are written in', () => {
    const years: RangeSpec[] = [
      { shard_id: 'y2025', to: '2026-01-01T00:00:00Z' },
      { shard_id: 'y2026', from: '2026-01-01T00:00:00Z' },
    ];
    expect(shardFor('timestamp', years, '2025-12-31T23:59:59.999Z')).toBe('y2025');
    expect(shardFor('timestamp', years, '2026-01-01T01:00:00+01:00')).toBe('y2026');
    expect(shardFor('timestamp', years, new Date('2025-12-31T23:00:00-01:00'))).toBe('y2026');
    expect(shardFor('timestamp', years, Date.UTC(2025, 11, 31))).toBe('y2025');
  });

  it('refuses timestamps without a zone', () => {
    expect(normaliseRangeValue('timestamp', '2026-01-01T00:00:00')).toEqual({ ok: false, why: expect.stringContaining('time zone') });
  });

  it('reports nothing for a contiguous, ordered list', () => {
    expect(rangeProblems('number', numbers)).toEqual([]);
  });

  it('reports a range whose from is not below its to', () => {
    expect(rangeProblems('number', [{ shard_id: 'a', from: 5, to: 5 }])).toEqual(['ranges[0] a [5, 5) is empty: from must be below to']);
  });

  it('finds the right range among many', () => {
    const many: RangeSpec[] = Array.from({ length: 100 }, (_, i) => ({ shard_id: `s${i}`, ...(i > 0 ? { from: i * 10 } : {}), ...(i < 99 ? { to: (i + 1) * 10 } : {}) }));
    const ranges = compileRanges('number', many);
    for (let k = -5; k < 1005; k += 7) expect(findRange(ranges, k)?.shardId).toBe(`s${Math.min(99, Math.max(0, Math.floor(k / 10)))}`);
  });

  it('agrees with a linear scan for any contiguous ranges and key', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: -1e6, max: 1e6 }), { minLength: 1, maxLength: 30 }), fc.integer({ min: -2e6, max: 2e6 }), (cuts, key) => {
        const bounds = [...cuts].sort((a, b) => a - b);
        const specs: RangeSpec[] = [{ shard_id: 'r0', to: bounds[0] }, ...bounds.map((from, i) => ({ shard_id: `r${i + 1}`, from, ...(i + 1 < bounds.length ? { to: bounds[i + 1] } : {}) }))];
        expect(rangeProblems('number', specs)).toEqual([]);
        const expected = specs.find((s) => (s.from === undefined || key >= (s.from as number)) && (s.to === undefined || key < (s.to as number)));
        expect(findRange(compileRanges('number', specs), key)?.shardId).toBe(expected?.shard_id);
      }),
    );
  });
});
