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

describe("every spelling PostgreSQL's uuid type reads, and nothing it refuses (docs/sharding-spec.md section 1)", () => {
  const id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
  const hex = (bytes: Uint8Array): string => [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  const standard = (digits: string): string => `${digits.slice(0, 8)}-${digits.slice(8, 12)}-${digits.slice(12, 16)}-${digits.slice(16, 20)}-${digits.slice(20)}`;
  /** 32 hex digits with a hyphen after group `g` (of four digits, 0-6) for every `g` in `after`. */
  const hyphenate = (digits: string, after: ReadonlySet<number>): string =>
    Array.from({ length: 8 }, (_, g) => digits.slice(4 * g, 4 * g + 4) + (after.has(g) ? '-' : '')).join('');

  it.each([
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
    '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}',
    'a0eebc999c0b4ef8bb6d6bb9bd380a11',
    'a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11',
    '{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}',
    '{a0eebc999c0b4ef8bb6d6bb9bd380a11}',
    '{A0EEBC999C0B4EF8BB6D6BB9BD380A11}',
    'A0eE-bC99-9c0B4ef8bb6d-6BB9bd380A11',
  ])('reads %s as the id PostgreSQL reads it as', (spelled) => {
    expect(canonicalKey(spelled)).toBe(id);
    expect(uuidForm(spelled)).toBe(id);
    expect(canonicalUuid(spelled)).toBe(id);
    expect(keySlot(spelled)).toBe(slotOf(id));
    expect(router.route(spelled)).toEqual(router.route(id));
    expect(router.routeDocument({ ownerId: spelled })).toEqual(router.route(id));
  });

  it.each([
    ' a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ',
    '\ta0eebc999c0b4ef8bb6d6bb9bd380a11',
    'a0eebc999c0b4ef8bb6d6bb9bd380a11\n',
    '{ a0eebc999c0b4ef8bb6d6bb9bd380a11}',
    '{a0eebc999c0b4ef8bb6d6bb9bd380a11',
    'a0eebc999c0b4ef8bb6d6bb9bd380a11}',
    '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{{a0eebc999c0b4ef8bb6d6bb9bd380a11}}',
    'a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    'a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1-1',
    '-a0eebc999c0b4ef8bb6d6bb9bd380a11',
    'a0eebc999c0b4ef8bb6d6bb9bd380a11-',
    '{-a0eebc999c0b4ef8bb6d6bb9bd380a11}',
    '{a0eebc999c0b4ef8bb6d6bb9bd380a11-}',
    'a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11',
    'a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11-',
    'a0eebc999c0b4ef8bb6d6bb9bd380a1',
    'a0eebc999c0b4ef8bb6d6bb9bd380a111',
    'a0eebc999c0b4ef8bb6d6bb9bd380a1g',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111',
    'urn:uuid:a0eebc999c0b4ef8bb6d6bb9bd380a11',
    'urn:uuid:{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}',
    'urn:uuid:a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11',
  ])('does not read %j as a UUID, as PostgreSQL refuses it', (text) => {
    expect(uuidForm(text)).toBeUndefined();
    expect(canonicalKey(text)).toBe(text);
    expect(keySlot(text)).toBe(slotOf(text));
    expect(() => canonicalUuid(text)).toThrow(RoutingError);
  });

  it('reads every spelling built from 16 random bytes (any case, braces or not, hyphens after any groups of four) as the standard form', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.array(fc.boolean(), { minLength: 32, maxLength: 32 }),
        fc.subarray([0, 1, 2, 3, 4, 5, 6]),
        fc.boolean(),
        (bytes, upper, after, braces) => {
          const digits = hex(bytes);
          const mixed = [...digits].map((c, i) => (upper[i] ? c.toUpperCase() : c)).join('');
          const body = hyphenate(mixed, new Set(after));
          const spelled = braces ? `{${body}}` : body;
          expect(canonicalKey(spelled)).toBe(standard(digits));
          expect(keySlot(spelled)).toBe(keySlot(standard(digits)));
          expect(canonicalKey(spelled)).toBe(canonicalKey(standard(digits).toUpperCase()));
        },
      ),
    );
  });

  it('does not read as a UUID an accepted spelling with one hyphen more at any other place, a doubled hyphen, a lone brace or a space', () => {
    // Where a hyphen may go, counted in digits before it: after 4, 8, ..., 28 digits, one at most.
    const badHyphen = fc.oneof(
      fc.integer({ min: 0, max: 32 }).filter((at) => at % 4 !== 0 || at === 0 || at === 32).map((at) => ({ at, hyphen: '-' })),
      fc.integer({ min: 1, max: 7 }).map((g) => ({ at: 4 * g, hyphen: '--' })),
    );
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.subarray([4, 8, 12, 16, 20, 24, 28]),
        fc.boolean(),
        fc.oneof(
          badHyphen.map(({ at, hyphen }) => ({ at, hyphen, wrap: (body: string, braces: boolean) => (braces ? `{${body}}` : body) })),
          fc
            .constantFrom((b: string) => `{${b}`, (b: string) => `${b}}`, (b: string) => `}${b}{`, (b: string) => ` ${b}`, (b: string) => `${b}\n`, (b: string) => `{${b}} `)
            .map((wrap) => ({ at: -1, hyphen: '', wrap: (body: string) => wrap(body) })),
        ),
        (bytes, goodHyphens, braces, { at, hyphen, wrap }) => {
          const digits = hex(bytes);
          const body = [...digits].map((c, i) => (i === at ? hyphen : goodHyphens.includes(i) && at !== i ? '-' : '') + c).join('') + (at === 32 ? hyphen : '');
          const text = wrap(body, braces);
          expect(uuidForm(text)).toBeUndefined();
          expect(canonicalKey(text)).toBe(text);
        },
      ),
    );
  });
});
