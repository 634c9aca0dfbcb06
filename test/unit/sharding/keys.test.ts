import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { RoutingError } from '../../../functions/core/sharding/errors.js';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { canonicalKey, canonicalUuid, keySlot, uuidForm } from '../../../functions/core/sharding/keys.js';
import { ShardRouter } from '../../../functions/core/sharding/router.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { keySpelling, spell } from '../../support/key-spellings.js';

const shards = ['shard_001', 'shard_002', 'shard_003', 'shard_004'].map((id, i) => ({ shard_id: id, database_url: `postgresql://app:pw@db${i}:5432/ca_dms` }));
const fourEqual = buildSlotMap(shards.map((s) => ({ shardId: s.shard_id, weight: 1 })));
const router = new ShardRouter(parseShardingConfig({ shards, default_shard: 'shard_001' }), fourEqual);

const vectors = JSON.parse(readFileSync(new URL('../../../docs/routing-test-vectors.json', import.meta.url), 'utf8')) as {
  keyForms: { forms: { key: string; canonical: string; isUuid: boolean; slot: number; shardFourEqual: string }[] };
};

/** Every accepted spelling of a canonical UUID, with random letter case. */
const spellings = fc.tuple(fc.uuid(), keySpelling).map(([id, s]) => ({ id, spelled: spell(id, s) }));

describe('key normalisation (docs/sharding-spec.md section 1)', () => {
  it.each(vectors.keyForms.forms.map((f) => [JSON.stringify(f.key), f] as const))('normalises %s as the spec vectors say', (_name, f) => {
    expect(canonicalKey(f.key)).toBe(f.canonical);
    expect(uuidForm(f.key) !== undefined).toBe(f.isUuid);
    expect(router.route(f.key)).toEqual({ shardId: f.shardFourEqual, slot: f.slot, mapVersion: 1, strategy: 'hash_based', source: 'hash' });
  });

  it('routes every spelling of a UUID to the slot and shard of its canonical form', () => {
    fc.assert(
      fc.property(spellings, ({ id, spelled }) => {
        expect(canonicalKey(spelled)).toBe(id);
        expect(keySlot(spelled)).toBe(slotOf(id));
        expect(router.route(spelled)).toEqual(router.route(id));
        expect(router.routeDocument({ ownerId: spelled })).toEqual(router.route(id));
      }),
    );
  });

  it('leaves every string that is not a UUID exactly as it is', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 60 }), (key) => {
        fc.pre(uuidForm(key) === undefined);
        expect(canonicalKey(key)).toBe(key);
        expect(router.route(key).slot).toBe(slotOf(key));
      }),
    );
  });

  it('is idempotent', () => {
    fc.assert(
      fc.property(fc.oneof(spellings.map((s) => s.spelled), fc.string()), (key) => {
        expect(canonicalKey(canonicalKey(key))).toBe(canonicalKey(key));
      }),
    );
  });

  it('refuses a user id that is not a UUID, naming it', () => {
    expect(() => canonicalUuid('alice')).toThrow(RoutingError);
    expect(() => router.routeDocument({ ownerId: 'alice' })).toThrow(/"alice" is not a UUID/);
    expect(canonicalUuid('{F47AC10B-58CC-4372-A567-0E02B2C3D479}')).toBe('f47ac10b-58cc-4372-a567-0e02b2c3d479');
  });

  it('looks up the directory under the canonical key', async () => {
    const asked: string[] = [];
    const id = 'f47ac10b-58cc-4372-a567-0e02b2c3d479';
    const withDirectory = new ShardRouter(parseShardingConfig({ shards, default_shard: 'shard_001' }), fourEqual, {
      get: (key) => {
        asked.push(key);
        return Promise.resolve(key === id ? 'shard_004' : null);
      },
    });
    expect((await withDirectory.resolve(id.toUpperCase())).shardId).toBe('shard_004');
    expect(asked).toEqual([id]);
  });
});
