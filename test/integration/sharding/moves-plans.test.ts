/**
 * Planning and draining beside other work: a plan on a catalog pool of one connection (the
 * functions'), a prepared transaction newer than the change capture, and a key of the slot pinned
 * while the slot's move is being planned. Each failed before its fix (the second review of the
 * moves' fixes, 2026-12-05).
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mover, MoveConflictError } from '../../../functions/adapters/postgres/mover.js';
import { keysInSlot, otherProcess, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3, settings: { max_prepared_transactions: 10 } });
});
afterAll(async () => {
  await env?.stop();
});

describe('planning a move on a catalog pool of one connection (the functions run with max: 1, see handlers/shared/db.ts POOL_DEFAULTS)', () => {
  it('answers a second plan of a slot that already has an unfinished move with a MoveConflictError, not a pool timeout', async () => {
    const slot = 3101;
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 1), 1);
    const one = new pg.Pool({ connectionString: env.urls.catalog, max: 1, connectionTimeoutMillis: 3000 });
    one.on('error', () => undefined);
    let first: { id: number } | undefined;
    try {
      const mover = new Mover({ catalog: one, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0 });
      first = await mover.plan({ kind: 'slot', slot, to, createdBy: 'request 1' });
      const second = await mover.plan({ kind: 'slot', slot, to, createdBy: 'request 2' }).then(
        () => 'planned',
        (e: unknown) => e,
      );
      expect(second instanceof MoveConflictError ? 'MoveConflictError' : `${(second as Error).name}: ${(second as Error).message}`).toBe('MoveConflictError');
    } finally {
      if (first) await env.mover().cancel(first.id);
      await one.end();
    }
  });
});

describe('the drain before the copy', () => {
  it('does not wait for a prepared transaction that began after the change capture existed (its writes were fenced and captured)', async () => {
    const slot = 3102;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 1), 2);
    const map = await env.slotMaps.current();
    const otherSlot = map.assignments.findIndex((s, i) => s === from && i !== slot && i > 3000);
    const [early, late] = keysInSlot(otherSlot, 2) as [string, string];
    const gid = `review2_2pc_${slot}`;
    // An ordinary writer older than the move keeps the drain waiting a moment (as it must).
    const old = await source.connect();
    await old.query('begin isolation level read committed');
    await old.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'e@example.com', 'e')`, [early, otherSlot]);
    try {
      const mover = env.mover({ readerGraceMs: 0, drainTimeoutMs: 1500 });
      const id = (await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id;
      const run = mover.run(id).then(
        (j) => j.state,
        (e: unknown) => (e as Error).message,
      );
      // Once the capture exists, a new two-phase transaction starts, writes and prepares;
      // then the old writer commits.
      const end = Date.now() + 10_000;
      while ((await source.query('select 1 from move_captures where job_id = $1', [id])).rowCount === 0) {
        if (Date.now() > end) throw new Error('no capture');
        await new Promise((r) => setTimeout(r, 5));
      }
      const app = await source.connect();
      try {
        await app.query('begin isolation level read committed');
        await app.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'l@example.com', 'l')`, [late, otherSlot]);
        await app.query(`prepare transaction '${gid}'`);
      } finally {
        app.release();
      }
      await old.query('commit');
      expect(await run).toBe('done');
    } finally {
      await old.query('rollback').catch(() => undefined);
      old.release();
      await source.query(`rollback prepared '${gid}'`).catch(() => undefined);
    }
  });
});

describe('planning a slot move while a key of the slot gets pinned', () => {
  it("never moves (and deletes from its owner) the rows of a key the directory pins to the slot's old owner", async () => {
    const slot = 3104;
    const { from, to, source } = await sides(env, slot);
    const third = [...env.shards.keys()].find((s) => s !== from && s !== to) as string;
    const [key, neighbour] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, [key, neighbour], 2);

    let interleaved = false;
    // The planner reads the slot's directory keys; before it records the job, a directory move of the key
    // is started (which pins the key to where it is) and cancelled: the key stays pinned to `from`.
    const planner = new Mover({
      catalog: env.catalog,
      shards: env.shards,
      slotMaps: env.slotMaps,
      readerGraceMs: 0,
      directory: {
        entry: env.directory.entry.bind(env.directory),
        set: env.directory.set.bind(env.directory),
        invalidate: env.directory.invalidate.bind(env.directory),
        all: env.directory.all.bind(env.directory),
        async keysInSlot(planned, client) {
          const keys = await env.directory.keysInSlot(planned, client);
          if (!interleaved) {
            interleaved = true;
            const dirMover = env.mover({
              readerGraceMs: 0,
              hook(point) {
                if (point === 'copied') throw new Error('test: the directory move dies after its copy');
              },
            });
            const dirJob = await dirMover.plan({ kind: 'directory', key, to: third, createdBy: 'test' });
            await dirMover.run(dirJob.id).catch(() => undefined);
            expect((await env.mover({ readerGraceMs: 0 }).cancel(dirJob.id)).state).toBe('cancelled');
          }
          return keys;
        },
      },
    });
    // The plan sees the directory change and records nothing; planned again, the key is left out.
    await expect(planner.plan({ kind: 'slot', slot, to, createdBy: 'test' })).rejects.toThrow(MoveConflictError);
    expect((await env.directory.entry(key))?.shardId).toBe(from);
    const job = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect(job.excludedKeys).toEqual([key]);
    expect((await env.mover({ readerGraceMs: 0 }).run(job.id)).state).toBe('done');

    // The key is pinned to `from`: its reads go there and must find its two documents.
    const read = await (await otherProcess(env, { ttlMs: 0 })).reader.withShardRead(key, async ({ client }) => (await client.query('select id from documents where owner_id = $1', [key])).rowCount);
    expect({ readFrom: read.shardId, docs: read.value }).toEqual({ readFrom: from, docs: 2 });
    const copies = async (pool: pg.Pool): Promise<number> => (await pool.query('select id from documents where owner_id = $1', [key])).rowCount ?? 0;
    expect({ onPinnedOwner: await copies(source), onSlotTarget: await copies(env.shards.get(to) as pg.Pool) }).toEqual({ onPinnedOwner: 2, onSlotTarget: 0 });
  });
});
