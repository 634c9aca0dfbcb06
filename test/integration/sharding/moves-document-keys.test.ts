/**
 * `Idempotency-Key` records (`document_keys`, shard migration 021) move with their owner, as
 * users and documents do: copied, caught up, compared under the fence, cleaned up from the source
 * after the flip, and deleted from the target by a rollback.
 */
import { createHash, randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureLogin } from '../../../functions/adapters/postgres/app-role.js';
import { MOVE_CRASH_POINTS } from '../../../functions/core/sharding/move-machine.js';
import { moverKilledAt } from './fixtures/kill.js';
import { keyRecords, keysInSlot, seedKeys, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

async function sidesOf(slot: number): Promise<{ from: string; to: string; source: pg.Pool; target: pg.Pool }> {
  const from = await env.ownerOf(slot);
  const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
  return { from, to, source: env.shards.get(from) as pg.Pool, target: env.shards.get(to) as pg.Pool };
}

/** Through the application's writer (fence and capture apply): a new key record of `owner`, and the deletion of another. */
async function keyWrites(owner: string, slot: number, gone: string): Promise<void> {
  await env.writer.withShardWrite(owner, async ({ client }) => {
    await client.query(
      `insert into document_keys (id, owner_id, slot, document_id, request_digest) values ($1, $2, $3, $4, sha256('late'::bytea))`,
      [randomUUID(), owner, slot, randomUUID()],
    );
    await client.query('delete from document_keys where id = $1', [gone]);
  });
}

const firstKeyOf = async (pool: pg.Pool, owner: string): Promise<string> =>
  String((await pool.query<{ id: string }>('select id::text from document_keys where owner_id = $1 order by id limit 1', [owner])).rows[0]?.id);

describe('a move of owners with Idempotency-Key records', () => {
  it('brings every key record to the target as it is on the source, changes made during the copy and the catch-up included, and leaves none on the source', async () => {
    const slot = 1701;
    const { to, source, target } = await sidesOf(slot);
    const owners = keysInSlot(slot, 4);
    await seedUsers(source, slot, owners, 3);
    await seedKeys(source, slot, owners, 5);
    let expected: string[] = [];
    const mover = env.mover({
      readerGraceMs: 0,
      batchRows: 3,
      copyBatchRows: 4,
      async hook(point) {
        if (point === 'copying') await keyWrites(owners[0] as string, slot, await firstKeyOf(source, owners[0] as string));
        if (point === 'catching_up') {
          await keyWrites(owners[1] as string, slot, await firstKeyOf(source, owners[1] as string));
          expected = await keyRecords(source, slot);
        }
      },
    });
    const done = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    expect({ state: done.state, error: done.error, owner: await env.ownerOf(slot) }).toEqual({ state: 'done', error: null, owner: to });
    expect(expected).toHaveLength(20);
    expect(await keyRecords(target, slot)).toEqual(expected);
    expect(await keyRecords(source, slot)).toEqual([]);
    // The comparison under the fence covered the table too.
    expect(done.sourceSummary?.['document_keys']).toEqual(done.targetSummary?.['document_keys']);
    expect(done.sourceSummary?.['document_keys']?.rows).toBe(20);
  });

  it('takes the key records of an owner deleted during the copy or the catch-up away from the target too (their cascade captured)', async () => {
    const slot = 1705;
    const { to, source, target } = await sidesOf(slot);
    const owners = keysInSlot(slot, 4);
    await seedUsers(source, slot, owners, 2);
    await seedKeys(source, slot, owners, 3);
    const [copyDeleted, catchUpDeleted] = owners as [string, string];
    const deleteOwner = (owner: string) => env.writer.withShardWrite(owner, ({ client }) => client.query('delete from users where id = $1', [owner]));
    let expected: string[] = [];
    const mover = env.mover({
      readerGraceMs: 0,
      copyBatchRows: 2,
      async hook(point) {
        if (point === 'copying') await deleteOwner(copyDeleted);
        if (point === 'catching_up') {
          await deleteOwner(catchUpDeleted);
          expected = await keyRecords(source, slot);
        }
      },
    });
    const done = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    const rowsOf = async (pool: pg.Pool, table: string) =>
      (await pool.query<{ n: number }>(`select count(*)::int as n from ${table} where owner_id = any($1::uuid[])`, [[copyDeleted, catchUpDeleted]])).rows[0]?.n;

    expect({ state: done.state, error: done.error }).toEqual({ state: 'done', error: null });
    expect(expected).toHaveLength(6);
    expect(await keyRecords(target, slot)).toEqual(expected);
    expect({ keys: await rowsOf(target, 'document_keys'), documents: await rowsOf(target, 'documents') }).toEqual({ keys: 0, documents: 0 });
    expect(await keyRecords(source, slot)).toEqual([]);
  });

  it.each(MOVE_CRASH_POINTS.map((point, i) => ({ point, slot: 1710 + i })))(
    'brings every key record over once when the mover dies at $point and another run resumes it, key records written in between',
    async ({ point, slot }) => {
      const { from, to, source, target } = await sidesOf(slot);
      const owners = keysInSlot(slot, 3);
      await seedUsers(source, slot, owners, 2);
      await seedKeys(source, slot, owners, 3);
      const job = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
      await expect(moverKilledAt(env, point).run(job.id)).rejects.toThrow(`killed at ${point}`);
      // Between the runs the application writes where the unit is open: not while a dead run's
      // fence holds it (from the cutover until the next run opens the unit on the target).
      const owning = (await env.ownerOf(slot)) === from ? source : target;
      const fenceHeld = ['cutover', 'fenced', 'verifying', 'published'].includes(point);
      if (!fenceHeld) await keyWrites(owners[0] as string, slot, await firstKeyOf(owning, owners[1] as string));
      const expected = await keyRecords(owning, slot);
      const done = await env.mover({ readerGraceMs: 0 }).run(job.id);

      expect({ state: done.state, error: done.error, owner: await env.ownerOf(slot) }).toEqual({ state: 'done', error: null, owner: to });
      // One record written and one deleted, or none.
      expect({ records: expected.length, written: expected.filter((r) => r.includes(`\\x${createHash('sha256').update('late').digest('hex')}`)).length }).toEqual({ records: 9, written: fenceHeld ? 0 : 1 });
      expect(await keyRecords(target, slot)).toEqual(expected);
      expect(await keyRecords(source, slot)).toEqual([]);
    },
  );

  it('moves a directory key with its key records', async () => {
    const slot = 1702;
    const { to, source, target } = await sidesOf(slot);
    const [owner, neighbour] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [owner, neighbour], 2);
    await seedKeys(source, slot, [owner, neighbour], 3);
    const mover = env.mover({ readerGraceMs: 0 });
    const done = await mover.run((await mover.plan({ kind: 'directory', key: owner, to, createdBy: 'test' })).id);
    const ownersOf = async (pool: pg.Pool) => (await pool.query<{ owner: string; n: number }>('select owner_id::text as owner, count(*)::int as n from document_keys where slot = $1 group by 1 order by 1', [slot])).rows;

    expect(done.state).toBe('done');
    expect(await ownersOf(target)).toEqual([{ owner, n: 3 }]);
    expect(await ownersOf(source)).toEqual([{ owner: neighbour, n: 3 }]);
  });

  it("leaves a directory-pinned owner's key records where the directory puts it when its slot moves, written during the move or not", async () => {
    const slot = 1706;
    const { from, to, source, target } = await sidesOf(slot);
    const [pinned, plain] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [pinned, plain], 2);
    await seedKeys(source, slot, [pinned, plain], 3);
    await env.directory.set(pinned, from, 'test');
    const ownersOf = async (pool: pg.Pool) => (await pool.query<{ owner: string; n: number }>('select owner_id::text as owner, count(*)::int as n from document_keys where slot = $1 group by 1 order by 1', [slot])).rows;
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        if (point === 'catching_up') await keyWrites(pinned, slot, await firstKeyOf(source, pinned));
      },
    });
    const done = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    expect({ state: done.state, excluded: done.excludedKeys }).toEqual({ state: 'done', excluded: [pinned] });
    expect(await ownersOf(target)).toEqual([{ owner: plain, n: 3 }]);
    expect(await ownersOf(source)).toEqual([{ owner: pinned, n: 3 }]);
  });

  it('leaves the key records on the source alone when the move is cancelled, its copy deleted from the target', async () => {
    const slot = 1703;
    const { from, to, source, target } = await sidesOf(slot);
    const owners = keysInSlot(slot, 3);
    await seedUsers(source, slot, owners, 2);
    await seedKeys(source, slot, owners, 4);
    const before = await keyRecords(source, slot);
    let copied = -1;
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point, job) {
        if (point !== 'catching_up') return;
        copied = (await keyRecords(target, slot)).length;
        await env.mover().cancel(job.id);
      },
    });
    const cancelled = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    expect({ state: cancelled.state, owner: await env.ownerOf(slot) }).toEqual({ state: 'cancelled', owner: from });
    expect(copied).toBe(12);
    expect(await keyRecords(source, slot)).toEqual(before);
    expect(await keyRecords(target, slot)).toEqual([]);
  });

  it('moves key records with a mover login that may not skip row triggers (foreign keys checked, the grants of ca_dms_mover alone)', async () => {
    const slot = 1704;
    const { to, source, target } = await sidesOf(slot);
    const owners = keysInSlot(slot, 3);
    await seedUsers(source, slot, owners, 2);
    await seedKeys(source, slot, owners, 3);
    const before = await keyRecords(source, slot);
    const moverPools = new Map<string, pg.Pool>();
    for (const [id, pool] of env.shards) {
      await ensureLogin(pool, { username: 'keys_mover', password: 'mover pass' }, { role: 'ca_dms_mover' });
      await pool.query('revoke set on parameter session_replication_role from ca_dms_mover; revoke execute on function mover_replica_role() from ca_dms_mover');
      const url = new URL(env.urls.shards[id] as string);
      url.username = 'keys_mover';
      url.password = 'mover pass';
      const moverPool = new pg.Pool({ connectionString: url.toString(), max: 4 });
      moverPool.on('error', () => undefined);
      moverPools.set(id, moverPool);
    }
    try {
      const mover = env.mover({ readerGraceMs: 0, shards: moverPools, copyBatchRows: 2 });
      const done = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

      expect({ state: done.state, error: done.error }).toEqual({ state: 'done', error: null });
      expect(await keyRecords(target, slot)).toEqual(before);
      expect(await keyRecords(source, slot)).toEqual([]);
      expect((await source.query<{ n: number }>('select count(*)::int as n from users where slot = $1', [slot])).rows[0]?.n).toBe(0);
    } finally {
      await Promise.all([...moverPools.values()].map((p) => p.end()));
    }
  });
});
