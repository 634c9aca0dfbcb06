import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SlotMapError } from '../../../functions/core/sharding/errors.js';
import { SLOT_COUNT } from '../../../functions/core/sharding/hash.js';
import {
  addShard,
  buildSlotMap,
  compareCodePoints,
  diffSlotMaps,
  moveSlots,
  parseSlotMap,
  slotCounts,
  slotQuotas,
  type ShardWeight,
  type SlotMap,
} from '../../../functions/core/sharding/slot-map.js';

interface Run {
  from: number;
  to: number;
  shardId: string;
}
const vectors = JSON.parse(readFileSync(new URL('../../../docs/routing-test-vectors.json', import.meta.url), 'utf8')) as {
  slotQuotas: { shards: ShardWeight[]; counts: Record<string, number>; runs: Run[] }[];
  fourEqualShards: { map: { version: number; runs: Run[] } };
  addFifthShard: { map: { version: number; runs: Run[] }; movedSlots: number };
  keys: { key: string; slot: number; shardFourEqual: string; shardAfterFifth: string }[];
};

const expand = (runs: Run[]): string[] => runs.flatMap((r) => Array.from({ length: r.to - r.from + 1 }, () => r.shardId));

/** 1 to 8 shards with distinct ids and weights from 0.1 to 10. */
const shardSets = fc
  .uniqueArray(fc.stringMatching(/^[a-z][a-z0-9_]{0,7}$/), { minLength: 1, maxLength: 8 })
  .chain((ids) => fc.tuple(...ids.map((id) => fc.double({ min: 0.1, max: 10, noNaN: true }).map((weight): ShardWeight => ({ shardId: id, weight })))));

const exactShare = (shards: readonly ShardWeight[], id: string): number => {
  const total = [...shards].sort((a, b) => compareCodePoints(a.shardId, b.shardId)).reduce((a, s) => a + s.weight, 0);
  return (SLOT_COUNT * (shards.find((s) => s.shardId === id) as ShardWeight).weight) / total;
};

describe('buildSlotMap', () => {
  it.each(vectors.slotQuotas.map((c) => [JSON.stringify(c.shards.map((s) => `${s.shardId}:${s.weight}`)), c] as const))(
    'reproduces the documented map for weights %s',
    (_name, c) => {
      const map = buildSlotMap(c.shards);
      expect(Object.fromEntries(slotQuotas(c.shards))).toEqual(c.counts);
      expect(map.assignments).toEqual(expand(c.runs));
    },
  );

  it('gives every shard its proportional share to within one slot', () => {
    fc.assert(
      fc.property(shardSets, (shards) => {
        const counts = slotCounts(buildSlotMap(shards));
        for (const s of shards) expect(Math.abs((counts.get(s.shardId) ?? 0) - exactShare(shards, s.shardId))).toBeLessThan(1);
      }),
    );
  });

  it('assigns every slot, whatever the order the shards are listed in', () => {
    fc.assert(
      fc.property(shardSets, (shards) => {
        const map = buildSlotMap(shards);
        expect(map.assignments).toHaveLength(SLOT_COUNT);
        expect(buildSlotMap([...shards].reverse())).toEqual(map);
      }),
    );
  });

  it('starts at version 1', () => {
    expect(buildSlotMap([{ shardId: 'a', weight: 1 }]).version).toBe(1);
  });

  it('refuses duplicate shards and non-positive weights', () => {
    expect(() => buildSlotMap([{ shardId: 'a', weight: 1 }, { shardId: 'a', weight: 1 }])).toThrow(SlotMapError);
    expect(() => buildSlotMap([{ shardId: 'a', weight: 0 }])).toThrow(/weights must be positive/);
    expect(() => buildSlotMap([])).toThrow(/at least one shard/);
  });
});

describe('addShard', () => {
  it('reproduces the documented fifth-shard map', () => {
    const four = buildSlotMap(['shard_001', 'shard_002', 'shard_003', 'shard_004'].map((shardId) => ({ shardId, weight: 1 })));
    const five = addShard(four, 'shard_005', 1);
    expect(four.assignments).toEqual(expand(vectors.fourEqualShards.map.runs));
    expect(five.assignments).toEqual(expand(vectors.addFifthShard.map.runs));
    expect(diffSlotMaps(four, five)).toHaveLength(vectors.addFifthShard.movedSlots);
  });

  it('moves exactly the new shard quota, every moved slot going to the new shard', () => {
    fc.assert(
      fc.property(shardSets, fc.double({ min: 0.1, max: 10, noNaN: true }), (shards, weight) => {
        const before = buildSlotMap(shards);
        const all = [...shards, { shardId: 'zz_new', weight }];
        const quota = slotQuotas(all).get('zz_new') as number;
        fc.pre(quota > 0);
        const after = addShard(before, 'zz_new', weight, Object.fromEntries(shards.map((s) => [s.shardId, s.weight])));
        const changes = diffSlotMaps(before, after);
        expect(changes).toHaveLength(quota);
        expect(changes.every((c) => c.to === 'zz_new')).toBe(true);
        expect(after.version).toBe(before.version + 1);
      }),
    );
  });

  it('leaves every shard within one slot of its new proportional share', () => {
    fc.assert(
      fc.property(shardSets, fc.double({ min: 0.1, max: 10, noNaN: true }), (shards, weight) => {
        const all = [...shards, { shardId: 'zz_new', weight }];
        fc.pre((slotQuotas(all).get('zz_new') as number) > 0);
        const after = addShard(buildSlotMap(shards), 'zz_new', weight, Object.fromEntries(shards.map((s) => [s.shardId, s.weight])));
        const counts = slotCounts(after);
        for (const s of all) expect(Math.abs((counts.get(s.shardId) ?? 0) - exactShare(all, s.shardId))).toBeLessThan(1);
      }),
    );
  });

  it('takes slots from the shards most over their share', () => {
    // a owns 3072 slots, b 1024: with equal weights a is the one far over its share.
    const skewed = moveSlots(buildSlotMap([{ shardId: 'a', weight: 1 }, { shardId: 'b', weight: 1 }]), Array.from({ length: 1024 }, (_, i) => 2048 + i), 'a');
    const after = addShard(skewed, 'c', 1, { a: 1, b: 1 });
    const counts = slotCounts(after);
    expect(counts.get('b')).toBe(1024);
    expect(counts.get('a')).toBe(3072 - 1365);
  });

  it('infers existing weights from slot counts when none are given', () => {
    const map = buildSlotMap([{ shardId: 'a', weight: 3 }, { shardId: 'b', weight: 1 }]);
    const after = addShard(map, 'c', 1);
    // inferred weights a 1.5, b 0.5 (average 1), c 1: shares 1.5 : 0.5 : 1 of 4096.
    expect(Object.fromEntries(slotCounts(after))).toEqual({ a: 2048, b: 683, c: 1365 });
  });

  it('is deterministic', () => {
    fc.assert(
      fc.property(shardSets, (shards) => {
        const map = buildSlotMap(shards);
        expect(addShard(map, 'zz_new', 1)).toEqual(addShard(map, 'zz_new', 1));
      }),
    );
  });

  it('refuses a shard that is already in the map', () => {
    expect(() => addShard(buildSlotMap([{ shardId: 'a', weight: 1 }]), 'a', 1)).toThrow(/already owns slots/);
  });
});

describe('moveSlots', () => {
  it('reassigns exactly the given slots and bumps the version', () => {
    const before = buildSlotMap([{ shardId: 'a', weight: 1 }, { shardId: 'b', weight: 1 }]);
    const after = moveSlots(before, [0, 5, 4095], 'b');
    expect(diffSlotMaps(before, after)).toEqual([
      { slot: 0, from: 'a', to: 'b' },
      { slot: 5, from: 'a', to: 'b' },
    ]);
    expect(after.version).toBe(2);
  });

  it('refuses slots outside the slot space', () => {
    const map = buildSlotMap([{ shardId: 'a', weight: 1 }]);
    expect(() => moveSlots(map, [4096], 'a')).toThrow(/outside 0..4095/);
    expect(() => moveSlots(map, [1.5], 'a')).toThrow(SlotMapError);
  });
});

describe('slot map JSON', () => {
  it('round-trips through JSON', () => {
    const map = buildSlotMap([{ shardId: 'a', weight: 1 }, { shardId: 'b', weight: 2 }]);
    expect(parseSlotMap(JSON.parse(JSON.stringify(map)))).toEqual(map);
  });

  it('rejects a map whose assignments do not cover the slot count', () => {
    const bad: SlotMap = { version: 1, slotCount: 4, assignments: ['a', 'a'] };
    expect(() => parseSlotMap(bad)).toThrow(/assignments: assignments must have exactly slotCount entries/);
  });

  it('rejects unknown fields and version 0', () => {
    expect(() => parseSlotMap({ version: 0, slotCount: 1, assignments: ['a'] })).toThrow(/version/);
    expect(() => parseSlotMap({ version: 1, slotCount: 1, assignments: ['a'], extra: true })).toThrow(SlotMapError);
  });
});

describe('compareCodePoints', () => {
  it('orders by code point, as Python orders str, not by UTF-16 unit', () => {
    // U+FF5E (one UTF-16 unit 0xFF5E) sorts after U+1F600 (surrogates 0xD83D 0xDE00) in UTF-16
    // order but before it by code point.
    expect(compareCodePoints('\uff5e', '\u{1f600}')).toBe(-1);
    expect('\uff5e' < '\u{1f600}').toBe(false);
  });
});
