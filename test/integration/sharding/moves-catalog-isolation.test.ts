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
import { heldAtCommit } from '../../support/held-commit.js';

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
      keysInSlot: (...args) => env.directory.keysInSlot(...args),
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

/** A cancel request through `pool` whose transaction is held at its commit until a statement of another catalog session waits on a lock. */
function cancelHeldUntilWaitedOn(pool: pg.Pool): { request: (id: number) => Promise<unknown>; updated: Promise<void> } {
  let updated: () => void = () => undefined;
  const made = new Promise<void>((r) => (updated = r));
  let release: () => void = () => undefined;
  const gate = new Promise<void>((r) => (release = r));
  const api = new Mover({
    catalog: heldAtCommit(
      pool,
      () => {
        updated();
        void lockWaitOn(env.catalog, 'catalog').then(release);
      },
      gate,
    ),
    shards: env.shards,
    slotMaps: env.slotMaps,
    directory: env.directory,
    readerGraceMs: 0,
  });
  return { request: (id) => api.requestCancel(id).catch((e: unknown) => e), updated: made };
}

describe("a run's single statements on its job row (outside its transactions), its catalog login defaulting to REPEATABLE READ", () => {
  it("a run's update of its job that waited for a cancel request's transaction judges the row that committed: the run rolls the move back, not failed by a serialization error", async () => {
    const slot = 1603;
    const from = await env.ownerOf(slot);
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    await seedUsers(env.shards.get(from) as pg.Pool, slot, keysInSlot(slot, 2), 1);
    const catalog = repeatableReadCatalog();
    const cancel = cancelHeldUntilWaitedOn(catalog);
    let asked: Promise<unknown> | null = null;
    // Copied: the run's next statement is its update of the job (the transition `copied`), which
    // waits for the cancel request's update of the row, made and not yet committed.
    const hook = async (point: MoveHookPoint, job: { id: number }): Promise<void> => {
      if (point !== 'copied' || asked !== null) return;
      asked = cancel.request(job.id);
      await cancel.updated;
    };
    const mover = new Mover({ catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

    const ended = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );

    // Before: the update's snapshot, older than the cancel's commit, failed it with "could not
    // serialize access due to concurrent update" (40001): the run failed (the worker's tick
    // reported it), the cancellation left to the next run.
    expect(await asked).toMatchObject({ cancelRequested: true });
    expect(ended).toBe('ended: cancelled');
    expect(await env.ownerOf(slot)).toBe(from);
  }, 60_000);

  it("a run's release of its job that waited for a cancel request's transaction gives the job back: the next run rolls it back at once, not refused as busy until the lease lapses", async () => {
    const slot = 1604;
    const from = await env.ownerOf(slot);
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    await seedUsers(env.shards.get(from) as pg.Pool, slot, keysInSlot(slot, 2), 1);
    const catalog = repeatableReadCatalog();
    const cancel = cancelHeldUntilWaitedOn(catalog);
    const stop = new AbortController();
    let asked: Promise<unknown> | null = null;
    // The run is told to stop (a worker near its timeout) as it starts copying, and a cancel is
    // requested: its next statement on the job row is the release of its lease.
    const hook = async (point: MoveHookPoint, job: { id: number }): Promise<void> => {
      if (point !== 'copying' || asked !== null) return;
      stop.abort();
      asked = cancel.request(job.id);
      await cancel.updated;
    };
    const mover = new Mover({ catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const paused = await mover.run(planned.id, { stop: stop.signal });
    expect(await asked).toMatchObject({ cancelRequested: true });

    const next = await mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );

    // Before: the release failed with 40001 (and was let go: "the claim lapses at its expiry"),
    // so the job stayed claimed by a run that had ended, and every run was refused for the
    // lease's 30 s ("is being run by mover pid ...").
    expect(paused.state).toBe('copying');
    expect(next).toBe('ended: cancelled');
  }, 60_000);

  it("a run's claim of a job whose previous run's flip holds the row past that run's lease judges the row the flip committed: it takes the job over, or stands aside for the run that renewed its lease, not failed by a serialization error", async () => {
    const slot = 1605;
    const from = await env.ownerOf(slot);
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    await seedUsers(env.shards.get(from) as pg.Pool, slot, keysInSlot(slot, 2), 1);
    const next = new Mover({ catalog: repeatableReadCatalog(), shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0 });
    let jobId = 0;
    let claiming: Promise<string> | null = null;
    // The flip, its job row locked and its map not yet published, outlives its run's lease (a
    // lock wait, a slow catalog: the renewal waits for the transaction); the next run's claim
    // then waits for the row.
    const slotMaps: MoverSlotMaps = {
      current: (...args) => env.slotMaps.current(...args),
      ownerOf: (...args) => env.slotMaps.ownerOf(...args),
      async publish(...args) {
        if (args[3] !== undefined && claiming === null) {
          await (args[3] as pg.ClientBase).query('select pg_sleep(1.5)');
          claiming = next.run(jobId).then(
            (j) => `ended: ${j.state}`,
            (e: Error) => `threw: ${e.message}`,
          );
          await lockWaitOn(env.catalog, 'catalog');
        }
        return env.slotMaps.publish(...args);
      },
    };
    const first = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps, directory: env.directory, readerGraceMs: 0, leaseTtlMs: 1000, fenceBudgetMs: 10_000 });
    jobId = (await first.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id;

    const ended = await first.run(jobId).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );
    const taken = await (claiming ?? Promise.resolve('never claimed'));

    // Before: the claim's snapshot, older than the flip's commit, failed it with 40001: the
    // worker's run failed (counted and logged as a failure), and the job waited for its next tick.
    // Now the claim judges the row as it is once sent again: the lease still lapsed (taken over:
    // this run finishes the move, the first stops at its next write), or renewed by the first run
    // as soon as its flip committed (busy: the first finishes it).
    expect(taken).toMatch(/^(ended: done|threw: move job #\d+ is being run by mover )/);
    expect([ended, taken]).toContain('ended: done');
    expect(await env.ownerOf(slot)).toBe(to);
    expect((await next.get(jobId)).state).toBe('done');
  }, 60_000);

  it("a run's update of its job that waited for another run's takeover of its lease, sent again, finds the job not its own: the run learns it lost its lease and writes nothing more", async () => {
    const slot = 1606;
    const from = await env.ownerOf(slot);
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    await seedUsers(env.shards.get(from) as pg.Pool, slot, keysInSlot(slot, 2), 1);
    const other = await env.catalog.connect();
    let committed: Promise<void> | null = null;
    // Copied: the run's next statement is its update of the job (the transition `copied`). Another
    // run's claim of the job (as if this run's lease had lapsed) is made meanwhile and committed
    // once that update waits for it.
    const hook = async (point: MoveHookPoint, job: { id: number }): Promise<void> => {
      if (point !== 'copied' || committed !== null) return;
      await other.query('begin');
      await other.query(`update catalog.move_jobs set lease_holder = 'mover of the next run', lease_epoch = lease_epoch + 1, lease_expires_at = clock_timestamp() + interval '1 minute' where id = $1`, [job.id]);
      committed = lockWaitOn(env.catalog, 'catalog').then(async () => {
        await other.query('commit');
      });
    };
    try {
      const mover = new Mover({ catalog: repeatableReadCatalog(), shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0, hook });
      const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

      const ended = await mover.run(planned.id).then(
        (j) => `ended: ${j.state}`,
        (e: Error) => `threw: ${e.message}`,
      );
      await committed;

      // Sent again, the update's lease condition is judged on the row the takeover committed: no
      // row, and the run stops (MoveLeaseLostError), its transition not made over the other run's job.
      expect(ended).toMatch(/^threw: .*this run's lease was taken over by mover of the next run/);
      const { rows } = await env.catalog.query<{ state: string; lease_holder: string; error: string | null }>('select state, lease_holder, error from catalog.move_jobs where id = $1', [planned.id]);
      expect(rows[0]).toMatchObject({ state: 'copying', lease_holder: 'mover of the next run', error: null });
    } finally {
      await other.query('rollback').catch(() => undefined);
      other.release();
    }
  }, 60_000);
});
