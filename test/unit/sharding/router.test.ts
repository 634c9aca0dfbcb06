import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseShardingConfig, type ShardingConfigInput } from '../../../functions/core/sharding/config.js';
import { RoutingError, SlotMapError } from '../../../functions/core/sharding/errors.js';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { ShardRouter, type DirectoryLookup } from '../../../functions/core/sharding/router.js';
import { addShard, buildSlotMap, moveSlots } from '../../../functions/core/sharding/slot-map.js';

const shards = ['shard_001', 'shard_002', 'shard_003', 'shard_004', 'shard_005'].map((id, i) => ({ shard_id: id, database_url: `postgresql://app:pw@db${i}:5432/ca_dms` }));
const config = (extra: Partial<ShardingConfigInput> = {}) => parseShardingConfig({ shards, default_shard: 'shard_001', ...extra });
const fourEqual = buildSlotMap(shards.slice(0, 4).map((s) => ({ shardId: s.shard_id, weight: 1 })));

/** The directory port as a plain map: the unit under test is the router, not the catalog. */
const directoryOf = (entries: Record<string, string>): DirectoryLookup & { asked: string[] } => {
  const asked: string[] = [];
  return {
    asked,
    get: (key) => {
      asked.push(key);
      return Promise.resolve(entries[key] ?? null);
    },
  };
};

const vectors = JSON.parse(readFileSync(new URL('../../../docs/routing-test-vectors.json', import.meta.url), 'utf8')) as {
  keys: { key: string; slot: number; shardFourEqual: string; shardAfterFifth: string }[];
};

describe('hash_based routing', () => {
  it.each(vectors.keys.map((k) => [JSON.stringify(k.key), k] as const))('routes %s as the spec vectors say, before and after a fifth shard', (_name, k) => {
    const router = new ShardRouter(config(), fourEqual);
    expect(router.route(k.key)).toEqual({ shardId: k.shardFourEqual, slot: k.slot, mapVersion: 1, strategy: 'hash_based', source: 'hash' });
    router.setSlotMap(addShard(fourEqual, 'shard_005', 1));
    expect(router.route(k.key)).toEqual({ shardId: k.shardAfterFifth, slot: k.slot, mapVersion: 2, strategy: 'hash_based', source: 'hash' });
  });

  it('routes a document with its owner (co-location)', () => {
    const router = new ShardRouter(config(), fourEqual);
    const ownerId = 'f47ac10b-58cc-4372-a567-0e02b2c3d479';
    expect(router.routeDocument({ ownerId })).toEqual(router.route(ownerId));
  });

  it('builds version 1 of the map from the configured weights when given none', () => {
    const router = ShardRouter.fromConfig(parseShardingConfig({ shards: shards.slice(0, 2).map((s, i) => ({ ...s, weight: i + 1 })), default_shard: 'shard_001' }));
    expect(router.slotMap).toEqual(buildSlotMap([{ shardId: 'shard_001', weight: 1 }, { shardId: 'shard_002', weight: 2 }]));
  });

  it('ignores a slot map older than the one it holds', () => {
    const router = new ShardRouter(config(), moveSlots(fourEqual, [0], 'shard_002'));
    expect(router.setSlotMap(fourEqual)).toBe(false);
    expect(router.slotMap.version).toBe(2);
  });

  it('refuses a slot map naming a shard that is not configured', () => {
    expect(() => new ShardRouter(config(), moveSlots(fourEqual, [7], 'shard_999'))).toThrow(SlotMapError);
  });

  it('lets a directory entry override the hash (a hot tenant on its own shard)', async () => {
    const key = 'tenant-hot';
    const router = new ShardRouter(config(), fourEqual, directoryOf({ [key]: 'shard_005' }));
    expect(await router.resolve(key)).toEqual({ shardId: 'shard_005', slot: slotOf(key), mapVersion: 1, strategy: 'hash_based', source: 'directory' });
    expect(await router.resolve('tenant-cold')).toMatchObject({ source: 'hash', shardId: fourEqual.assignments[slotOf('tenant-cold')] });
  });

  it('does not consult the directory when overrides are off', async () => {
    const directory = directoryOf({ k: 'shard_005' });
    const router = new ShardRouter(config({ directory: { override_hash: false } }), fourEqual, directory);
    expect((await router.resolve('k')).source).toBe('hash');
    expect(directory.asked).toEqual([]);
  });

  it('rejects numeric keys that are not safe integers', () => {
    const router = new ShardRouter(config(), fourEqual);
    expect(() => router.route(1.5)).toThrow(RoutingError);
    expect(router.route(42).slot).toBe(slotOf('42'));
  });
});

describe('directory_based routing', () => {
  it('routes a key in the directory to its shard', async () => {
    const router = new ShardRouter(config({ strategy: 'directory_based' }), fourEqual, directoryOf({ 'user-1': 'shard_003' }));
    expect(await router.resolve('user-1')).toMatchObject({ shardId: 'shard_003', source: 'directory', strategy: 'directory_based' });
  });

  it('falls back to the hash for keys not in the directory', async () => {
    const router = new ShardRouter(config({ strategy: 'directory_based', directory: { fallback: 'hash' } }), fourEqual, directoryOf({}));
    expect(await router.resolve('user-2')).toMatchObject({ shardId: fourEqual.assignments[slotOf('user-2')], source: 'hash' });
  });

  it('rejects keys not in the directory when the fallback is reject', async () => {
    const router = new ShardRouter(config({ strategy: 'directory_based', directory: { fallback: 'reject' } }), fourEqual, directoryOf({}));
    await expect(router.resolve('user-3')).rejects.toMatchObject({ name: 'RoutingError', reason: 'not-in-directory' });
  });

  it('refuses a directory entry naming a shard that is not configured', async () => {
    const router = new ShardRouter(config({ strategy: 'directory_based' }), fourEqual, directoryOf({ 'user-4': 'shard_404' }));
    await expect(router.resolve('user-4')).rejects.toMatchObject({ reason: 'unknown-shard' });
  });

  it('turns a failing directory into a RoutingError with the cause', async () => {
    const failing: DirectoryLookup = { get: () => Promise.reject(new Error('connection refused')) };
    const router = new ShardRouter(config({ strategy: 'directory_based' }), fourEqual, failing);
    await expect(router.resolve('user-5')).rejects.toMatchObject({ reason: 'directory-unavailable', message: expect.stringContaining('connection refused') });
  });

  it('asks the synchronous path for the directory answer rather than guessing', () => {
    const router = new ShardRouter(config({ strategy: 'directory_based' }), fourEqual);
    expect(() => router.route('user-6')).toThrow(/needs the directory/);
    expect(router.route('user-6', { directoryShard: 'shard_002' }).shardId).toBe('shard_002');
  });
});

describe('range_based routing', () => {
  const ranged = config({
    strategy: 'range_based',
    range_key_type: 'number',
    ranges: [
      { shard_id: 'shard_001', to: 1_000_000 },
      { shard_id: 'shard_002', from: 1_000_000 },
    ],
  });

  it('routes by range and still reports the hash slot of the key', () => {
    const router = new ShardRouter(ranged, fourEqual);
    expect(router.route(999_999)).toEqual({ shardId: 'shard_001', slot: slotOf('999999'), mapVersion: 1, strategy: 'range_based', source: 'range' });
    expect(router.route(1_000_000).shardId).toBe('shard_002');
  });

  it('refuses keys of the wrong type for the ranges', () => {
    const router = new ShardRouter(ranged, fourEqual);
    expect(() => router.route('abc')).toThrow(expect.objectContaining({ reason: 'invalid-key' }) as Error);
  });

  it('refuses keys outside bounded ranges', () => {
    const closed = config({ strategy: 'range_based', range_key_type: 'string', ranges: [{ shard_id: 'shard_001', from: 'a', to: 'n' }] });
    expect(() => new ShardRouter(closed, fourEqual).route('zebra')).toThrow(expect.objectContaining({ reason: 'out-of-range' }) as Error);
  });

  // Keys are compared in their canonical form (lower-case UUIDs); a bound written as a UUID in
  // another spelling (upper case, braces, urn:uuid:) must be compared in that form too, or
  // 'b1...' sorts above 'C0...' and lands on the range after the bound (#15).
  it('compares a UUID bound written in any spelling as its canonical form', () => {
    const hex = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'.split('')), minLength: n, maxLength: n });
    const uuid = fc.tuple(hex(8), hex(4), hex(4), hex(4), hex(12)).map((p) => p.join('-'));
    const spell = (u: string, form: number): string =>
      [u.toUpperCase(), `{${u.toUpperCase()}}`, `URN:UUID:${u}`, u.replace(/-/g, '').toUpperCase(), u][form] as string;
    fc.assert(
      fc.property(uuid, uuid, fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 4 }), (bound, key, boundForm, keyForm) => {
        const ranges = (b: string) => [
          { shard_id: 'shard_001', to: b },
          { shard_id: 'shard_002', from: b },
        ];
        const written = new ShardRouter(config({ strategy: 'range_based', range_key_type: 'string', ranges: ranges(spell(bound, boundForm)) }), fourEqual);
        const expected = key < bound ? 'shard_001' : 'shard_002';
        expect(written.route(spell(key, keyForm)).shardId).toBe(expected);
      }),
      { numRuns: 300 },
    );
  });
});

describe('sharding disabled', () => {
  it('sends everything to the default shard', async () => {
    const router = new ShardRouter(config({ enabled: false, default_shard: 'shard_004' }), fourEqual, directoryOf({ k: 'shard_002' }));
    expect(await router.resolve('k')).toEqual({ shardId: 'shard_004', slot: slotOf('k'), mapVersion: 1, strategy: 'hash_based', source: 'default' });
  });
});
