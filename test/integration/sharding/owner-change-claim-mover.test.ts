/**
 * Issue #15's review of the checked `rowsLeftOn: 'move job #<id>'` claim: the mover's own
 * publications, made through stores given the shards' pools as the sharding runtime gives them
 * (the move fixture's stores have none: they count nothing and check no claim, so the rollback,
 * lost-flip and torture tests never reach the check). A slot move's flip and a directory move's
 * preparation and flip are run through such stores in owner-change-rows-left.test.ts; here, the
 * rollback's pin of an unpinned key back to its source (after an operator deleted the move's pin).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { Mover, type MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import type { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { countingStores, documentsOf, keysInSlot, type MoveEnv, seedUsers, sides, startMoveEnv, UnguardedOperatorDirectory } from './fixtures/move-env.js';

let env: MoveEnv;
let slotMaps: SlotMapStore;
let directory: DirectoryStore;
beforeAll(async () => {
  env = await startMoveEnv();
  // As the sharding runtime builds them: the claim is checked, the rows counted.
  ({ directory, slotMaps } = countingStores(env));
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

const mover = (hook?: (point: MoveHookPoint) => Promise<void>): Mover =>
  new Mover({ catalog: env.catalog, shards: env.shards, slotMaps, directory, readerGraceMs: 0, ...(hook ? { hook } : {}) });

describe("the mover's publications through counting stores (rowsLeftOn 'move job #<id>' checked)", () => {
  it("a directory move cancelled after an operator deleted its key's pin pins the key back to its source", async () => {
    const slot = 1603;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 2);
    const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    const crashing = mover(async (point) => {
      if (point !== 'catching_up') return;
      await operator.delete(key);
      throw new Error('the mover process died here');
    });
    const planned = await crashing.plan({ kind: 'directory', key, to, createdBy: 'test' });
    await expect(crashing.run(planned.id)).rejects.toThrow(/the mover process died here/);
    expect(await directory.entry(key)).toBeNull();
    expect((await mover().cancel(planned.id)).state).toBe('cancelled');
    expect((await directory.entry(key))?.shardId).toBe(from);
    expect((await documentsOf(source, [key])).size).toBe(2);
  }, 60_000);
});
