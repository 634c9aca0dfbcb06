/**
 * The mover's catalog transactions over a catalog login whose `default_transaction_isolation` is
 * REPEATABLE READ (an RDS parameter group, or `ALTER ROLE ... SET`, changes it under us; issue
 * #15). Every one of them reasons as READ COMMITTED: a read after a lock sees what committed while
 * the lock was waited for. At REPEATABLE READ a transaction's reads all use the snapshot of its
 * first statement, taken before the lock.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DirectoryEntry } from '../../../functions/adapters/postgres/directory-store.js';
import type { MoverDirectory, MoverSlotMaps } from '../../../functions/adapters/postgres/move-port.js';
import { Mover, MoveNotCancellableError, type MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { documentsOf, keysInSlot, lockWaitOn, readCommitted, seedUsers, startMoveEnv, UnguardedOperatorDirectory, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
const pools: pg.Pool[] = [];
/** A pool of the catalog whose login defaults to REPEATABLE READ, as a mover's might. */
const repeatableReadCatalog = (): pg.Pool => {
  const pool = new pg.Pool({ connectionString: env.urls.catalog, max: 2, options: '-c default_transaction_isolation=repeatable\\ read' });
  pool.on('error', () => undefined);
  pools.push(pool);
  return pool;
};

beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
});
afterAll(async () => {
  await Promise.all(pools.splice(0).map((p) => p.end()));
  await env?.stop();
});

describe("a directory move's flip of an unpinned key, its catalog login defaulting to REPEATABLE READ", () => {
  it('sees a slot map published after its transaction began and before its lock of the map: the move fails, and what was written where that map sends the key stays where the key routes', async () => {
    const slot = 1601;
    const from = await env.ownerOf(slot);
    const [to, other] = ['shard_a', 'shard_b', 'shard_c'].filter((s) => s !== from) as [string, string];
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(env.shards.get(from) as pg.Pool, slot, [key], 2);
    // Its deletion goes past sharding migration 010's guard: the flip decides by hash then.
    const operator = new UnguardedOperatorDirectory(env.catalog, { ttlMs: 0, shards: [...env.shards.keys()] });
    let unpinned = false;
    const hook = async (point: MoveHookPoint): Promise<void> => {
      if (point === 'verifying' && !unpinned) unpinned = await operator.delete(key);
    };
    // The flip's read of the key's entry (its transaction begun, the job row locked, the map not
    // yet): an operator publishes a map giving the slot to a third shard from another session,
    // which commits at once (nothing holds the map yet), and a writer routed by it writes there.
    let written: string | null = null;
    const directory: MoverDirectory = {
      all: (...args) => env.directory.all(...args),
      set: (...args) => env.directory.set(...args),
      invalidate: (...args) => env.directory.invalidate(...args),
      async entry(...args): Promise<DirectoryEntry | null> {
        const read = await env.directory.entry(...args);
        if (args[1] !== undefined && unpinned && read === null && written === null) {
          await env.slotMaps.publish(moveSlots(await env.slotMaps.current(), [slot], other), 'ops@example.com', 'by hand');
          const shard = (await env.slotMaps.ownerOf(slot))?.shardId as string;
          await readCommitted(env.shards.get(shard) as pg.Pool, (c) =>
            c.query(
              `with u as (insert into users (id, slot, email, display_name) values ($1::uuid, $2, $1::text || '@example.com', 'writer') on conflict (id) do nothing)
               insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1::uuid, $2, 'written by hash', '{"rev": 0}')`,
              [key, slot],
            ),
          );
          written = shard;
        }
        return read;
      },
    };
    const mover = new Mover({ catalog: repeatableReadCatalog(), shards: env.shards, slotMaps: env.slotMaps, directory, readerGraceMs: 0, hook });
    const planned = await mover.plan({ kind: 'directory', key, to, createdBy: 'test' });

    const ended = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );
    const routed = (await operator.entry(key))?.shardId ?? ((await env.slotMaps.ownerOf(slot))?.shardId as string);

    // Before: the flip read the map in its transaction's first snapshot, taken before the
    // publication, found the key routed to the source, and pinned it to the target: ended done,
    // the document written on the third shard out of every reader's sight.
    expect({ unpinned, written }).toEqual({ unpinned: true, written: other });
    expect({ ended, routed }).toEqual({ ended: 'ended: failed', routed: other });
    expect((await documentsOf(env.shards.get(other) as pg.Pool, [key])).size).toBe(1);
  }, 60_000);
});

describe('a request on a move job whose row a run holds locked, the requester defaulting to REPEATABLE READ', () => {
  /**
   * A slot move whose flip, once it has locked the job row and is publishing, waits until a
   * statement of another session waits on a lock in the catalog (`request`, sent meanwhile).
   */
  async function flipHeldFor<T>(slot: number, request: (jobId: number) => Promise<T>): Promise<{ ended: string; answer: T | Error }> {
    const from = await env.ownerOf(slot);
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    await seedUsers(env.shards.get(from) as pg.Pool, slot, keysInSlot(slot, 2), 1);
    let asked: Promise<T | Error> | null = null;
    let jobId = 0;
    const slotMaps: MoverSlotMaps = {
      current: (...args) => env.slotMaps.current(...args),
      ownerOf: (...args) => env.slotMaps.ownerOf(...args),
      async publish(...args) {
        if (args[3] !== undefined && asked === null) {
          asked = request(jobId).catch((e: unknown) => (e instanceof Error ? e : new Error(String(e))));
          await lockWaitOn(env.catalog, 'catalog');
        }
        return env.slotMaps.publish(...args);
      },
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps, directory: env.directory, readerGraceMs: 0 });
    jobId = (await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id;
    const ended = await mover.run(jobId).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );
    return { ended, answer: await (asked ?? Promise.resolve(new Error('never asked'))) };
  }

  it('a cancel request sent while the flip publishes is refused for the published owner, not failed by a serialization error', async () => {
    const api = new Mover({ catalog: repeatableReadCatalog(), shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0 });
    const { ended, answer } = await flipHeldFor(1602, (id) => api.requestCancel(id));

    // Before: the cancel's UPDATE waited for the flip, whose commit changed the row after the
    // cancel's snapshot: "could not serialize access due to concurrent update" (40001), which the
    // API answers 503 as if the catalog had not answered.
    expect(ended).toBe('ended: done');
    expect(answer).toBeInstanceOf(MoveNotCancellableError);
    expect((answer as Error).message).toMatch(/has published the new owner; it can only finish$/);
  }, 60_000);

});
