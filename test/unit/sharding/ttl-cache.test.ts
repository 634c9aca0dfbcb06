import { describe, expect, it } from 'vitest';
import { TtlCache } from '../../../functions/core/sharding/ttl-cache.js';

describe('TtlCache', () => {
  it('serves an entry until its TTL has passed', () => {
    let now = 1_000;
    const cache = new TtlCache<string>(5_000, () => now);
    cache.set('k', 'v');
    now += 4_999;
    expect(cache.get('k')).toEqual({ value: 'v' });
    now += 1;
    expect(cache.get('k')).toBeUndefined();
  });

  it('caches a null answer, distinct from a miss', () => {
    const cache = new TtlCache<string | null>(1_000, () => 0);
    cache.set('absent', null);
    expect(cache.get('absent')).toEqual({ value: null });
    expect(cache.get('never-asked')).toBeUndefined();
  });

  it('caches nothing with a TTL of 0', () => {
    const cache = new TtlCache<string>(0, () => 0);
    cache.set('k', 'v');
    expect(cache.get('k')).toBeUndefined();
  });

  it('evicts the oldest entry beyond its bound', () => {
    const cache = new TtlCache<number>(1_000, () => 0, 2);
    cache.set('a', 1);
    cache.set('b', 2);
    cache.set('c', 3);
    expect([cache.get('a'), cache.get('b'), cache.get('c')]).toEqual([undefined, { value: 2 }, { value: 3 }]);
  });

  it('forgets one key or everything on invalidate', () => {
    const cache = new TtlCache<number>(1_000, () => 0);
    cache.set('a', 1);
    cache.set('b', 2);
    cache.invalidate('a');
    expect(cache.get('a')).toBeUndefined();
    expect(cache.get('b')).toEqual({ value: 2 });
    cache.invalidate();
    expect(cache.get('b')).toBeUndefined();
  });
});
