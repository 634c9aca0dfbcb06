/**
 * What `shards fences` judges a key's rows by, from SHARDING_CONFIG_JSON's routing and the ones the
 * runtimes recorded (runtime-routings.ts `routingForReview`); the real catalog's side is
 * test/integration/sharding/runtime-routings.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_RECORDED_WITHIN_MS, routingForReview, type RecordedRouting } from '../../../functions/adapters/postgres/runtime-routings.js';
import type { MoveRouting } from '../../../functions/core/sharding/move-machine.js';

const PINS: MoveRouting = { strategy: 'hash_based', overrideHash: true, fallback: 'hash', enabled: true };
const HASH_ONLY: MoveRouting = { strategy: 'hash_based', overrideHash: false, fallback: 'hash', enabled: true };

function record(actor: string, routing: MoveRouting | undefined, ageMs = 3_600_000): RecordedRouting {
  const seenAt = new Date(Date.UTC(2026, 11, 7, 12) - ageMs);
  return { actor, routing, raw: routing === undefined ? '{"strategy":"consistent"}' : JSON.stringify(routing), firstSeenAt: seenAt, seenAt, ageMs, superseded: false, byApplication: false };
}

const within = DEFAULT_RECORDED_WITHIN_MS;

describe('routingForReview', () => {
  it('takes the given routing where every recent record is the same (enabled absent is true)', () => {
    const r = routingForReview({ strategy: 'hash_based', overrideHash: true, fallback: 'hash' }, [record('scaling-api', PINS), record('scaling-moves', PINS)], within);
    expect(r.from).toBe('SHARDING_CONFIG_JSON');
    expect(r.conflict).toBeUndefined();
    expect(r.note).toMatch(/the one the runtimes recorded within the last 24 h: scaling-api .*, scaling-moves /);
  });

  it('refuses a settle where the given routing differs from a recent record, offering --recorded-within only for a record older than a minute', () => {
    const old = routingForReview(PINS, [record('scaling-api', PINS, 1_000), record('scaling-moves', HASH_ONLY, 7_200_000)], within);
    expect(old.routing).toEqual(PINS);
    expect(old.conflict).toMatch(/recorded by scaling-moves \(last built with it .*, 2 h ago\)/);
    expect(old.conflict).toMatch(/more than one routing .*--recorded-within SECONDS under 7200 leaves its records out/);
    const young = routingForReview(PINS, [record('scaling-api', HASH_ONLY, 5_000)], within);
    expect(young.conflict).toMatch(/Unset SHARDING_CONFIG_JSON to judge by the recorded routing.* built with it 5 s ago: its routers most likely still run with it\./);
    expect(young.conflict).not.toMatch(/--recorded-within/);
  });

  it('takes the recorded routing where none is given and every record agrees; none where they differ or one cannot be read', () => {
    expect(routingForReview(undefined, [record('scaling-api', HASH_ONLY)], within)).toMatchObject({ routing: HASH_ONLY, from: 'recorded' });
    const differ = routingForReview(undefined, [record('scaling-api', PINS), record('scaling-moves', HASH_ONLY)], within);
    expect(differ).toMatchObject({ routing: undefined, from: undefined });
    expect(differ.unknown).toMatch(/different routings within the last 24 h/);
    const unreadable = routingForReview(undefined, [record('scaling-api', undefined)], within);
    expect(unreadable.routing).toBeUndefined();
    expect(unreadable.note).toContain('a routing this version cannot read ({"strategy":"consistent"})');
    expect(routingForReview(PINS, [record('scaling-api', undefined)], within).conflict).toMatch(/^--settle refused/);
  });

  it('says where the catalog has no table or no record, judging by the given routing unchecked, else by none', () => {
    expect(routingForReview(PINS, undefined, within).note).toMatch(/unchecked: the catalog has no catalog.runtime_routings \(sharding migration 022 not applied/);
    expect(routingForReview(PINS, [], within).note).toMatch(/unchecked: no runtime recorded its routing/);
    expect(routingForReview(undefined, [], within)).toMatchObject({ routing: undefined, unknown: expect.stringMatching(/no runtime recorded its routing within the last 24 h/) });
  });
});
