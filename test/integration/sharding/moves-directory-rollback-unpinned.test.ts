/**
 * Issue #15 (the concurrent move torture, seed 1412, run 6): a directory move whose key's pin an
 * operator deleted mid-move (the key then routes by hash to its slot's owner, the move's source)
 * and that was then cancelled left the key unpinned, with the `directory` fence rows the move
 * wrote on both shards (`open` on the source, `moved` to the source on the target). A later move
 * of the key's slot took the key with it, but those rows decide over the slot's: the key's writes
 * and reads bounced between the shards (the documents API answered 503). The rollback now pins the
 * key back to its source (docs/sharding-spec.md section 9, "A rollback pins an unpinned key back
 * to its source").
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mover, type MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { startKeyedApi, type KeyedApi } from './fixtures/keyed-writes.js';
import { documentsOf, keysInSlot, type MoveEnv, seedUsers, sides, startMoveEnv, UnguardedOperatorDirectory, unitFenceState, documentWrittenFor } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

/** A write of one document of `key` straight into a shard, as any writer routed there makes it: `accepted`, or the SQLSTATE that refused it. */
async function writeOf(pool: pg.Pool, slot: number, key: string): Promise<string> {
  return pool.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'direct', '{"rev": 0}')`, [key, slot]).then(
    () => 'accepted',
    (e: { code?: string }) => `refused ${e.code ?? '?'}`,
  );
}

/**
 * The key of `slot` (3 documents and a keyed one, on the slot's owner, beside another key of the
 * slot) pinned to that owner, moved by a directory move to the other shard; the operator deletes
 * the pin as the move catches up (the run dies there), and the move is cancelled and rolled back.
 */
async function cancelledAfterUnpin(slot: number, api: KeyedApi): Promise<{ from: string; to: string; source: pg.Pool; target: pg.Pool; key: string; jobId: number; sent: { key: string; id: unknown } }> {
  const { from, to, source, target } = await sides(env, slot);
  const [key, other] = keysInSlot(slot, 2) as [string, string];
  await seedUsers(source, slot, [key, other], 3);
  await env.directory.set(key, from, 'ops@example.com');
  // A keyed document of the key (its 4th), whose key is sent again after the moves.
  const first = await api.post({ owner_id: key, title: 'keyed', content: { rev: 0 } }, 'order-1412');
  expect({ status: first.status, shard: first.body['shard_id'] }).toEqual({ status: 201, shard: from });
  // Its deletions go past sharding migration 010's guard (CAF06 for a key a directory move
  // wrote fence rows for): this test is of what the mover does with a pin deleted all the same.
  const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
  const hook = async (point: MoveHookPoint): Promise<void> => {
    if (point !== 'catching_up') return;
    await operator.delete(key);
    throw new Error('the mover process died here');
  };
  const crashing = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
  const planned = await crashing.plan({ kind: 'directory', key, to, createdBy: 'test' });
  await expect(crashing.run(planned.id)).rejects.toThrow(/the mover process died here/);
  env.directory.invalidate(key);
  expect(await env.directory.entry(key)).toBeNull();
  expect((await env.mover({ readerGraceMs: 0 }).cancel(planned.id)).state).toBe('cancelled');
  return { from, to, source, target, key, jobId: planned.id, sent: { key: 'order-1412', id: first.body['id'] } };
}

describe("a directory move cancelled after an operator deleted its key's pin, then a move of the key's slot", () => {
  it("leaves the key where its rows are: its writes and its Idempotency-Key's replay are answered there, and refused on the other shard", async () => {
    const slot = 1412;
    const api = await startKeyedApi(env);
    try {
      const { from, to, source, target, key, sent } = await cancelledAfterUnpin(slot, api);
      const fences = { source: await unitFenceState(source, 'directory', key), target: await unitFenceState(target, 'directory', key) };
      expect(fences).toEqual({ source: 'open', target: 'moved' });

      // The key's slot moves to the directory move's target (other keys of the slot with it).
      const slotMove = env.mover({ readerGraceMs: 0 });
      const planned = await slotMove.plan({ kind: 'slot', slot, to, createdBy: 'test' });
      expect((await slotMove.run(planned.id)).state).toBe('done');
      expect(await env.ownerOf(slot)).toBe(to);

      // Where the catalog sends the key now, and where its rows are: one shard, the same.
      env.directory.invalidate(key);
      const home = (await env.directory.entry(key))?.shardId ?? (await env.ownerOf(slot));
      const away = home === from ? target : source;
      const homePool = home === from ? source : target;
      expect({ home: (await documentsOf(homePool, [key])).size, away: (await documentsOf(away, [key])).size }).toEqual({ home: 4, away: 0 });

      // Before: the key was left unpinned and moved with its slot, but the `directory` rows of the
      // cancelled move decided over the slot's: the target's said `moved` to the source (every
      // write and read there refused, CAF02, re-routed by hash to the target again, until the writer
      // gave up: "routing is not converging", the API's 503), the source's `open` (a writer holding
      // the old map wrote there, out of sight, or was refused 23503 once the user was cleaned up).
      const written = await documentWrittenFor(env, key);
      expect(written).toBe(`written on ${home}`);
      const again = await api.post({ owner_id: key, title: 'keyed', content: { rev: 0 } }, sent.key);
      expect({ status: again.status, replayed: again.replayed, id: again.body['id'], shard: again.body['shard_id'] }).toEqual({ status: 201, replayed: true, id: sent.id, shard: home });
      expect({ home: await writeOf(homePool, slot, key), away: await writeOf(away, slot, key) }).toEqual({ home: 'accepted', away: 'refused CAF02' });
      // How: the rollback pinned the key back to its source, where it routed by hash (so nothing was
      // sent elsewhere), and the slot's move left it there with its `directory` rows.
      expect({ home, pin: (await env.directory.entry(key))?.shardId, excluded: planned.excludedKeys }).toEqual({ home: from, pin: from, excluded: [key] });
    } finally {
      await api.close();
    }
  }, 60_000);
});
