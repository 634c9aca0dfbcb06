import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { countSlot, keysInSlot, seedUsers, sides } from './fixtures/move-env.js';
import { startFaultEnv, type FaultEnv, type ShutdownMode } from './fixtures/restartable.js';

let env: FaultEnv;
beforeAll(async () => {
  env = await startFaultEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

describe('a prepared transaction left over on the source across a restart', () => {
  it.each([
    { mode: 'fast' as ShutdownMode, slot: 2201 },
    { mode: 'immediate' as ShutdownMode, slot: 2202 },
  ])('($mode) still holds the copy back until it ends, so its commit reaches the new owner', async ({ mode, slot }) => {
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    const doc = randomUUID();
    const app = await (env.shards.get(from) as pg.Pool).connect();
    try {
      await app.query('begin isolation level read committed');
      await app.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'two-phase')`, [doc, user, slot]);
      await app.query(`prepare transaction 'fault_2pc_${slot}'`);
    } finally {
      app.release();
    }
    await env.servers[from as 'shard_a' | 'shard_b'].restart(mode);
    expect((await source.query('select gid from pg_prepared_xacts')).rows).toEqual([{ gid: `fault_2pc_${slot}` }]);
    const mover = env.mover({ readerGraceMs: 0, drainTimeoutMs: 300 });
    const id = (await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id;
    const outcome = await mover.run(id).then((j) => j.state, (e: Error) => `threw: ${e.message}`);
    // The transaction manager commits it afterwards: the acknowledged commit must end up on the owner.
    await source.query(`commit prepared 'fault_2pc_${slot}'`);
    if (!outcome.startsWith('threw')) {
      // The move went ahead without waiting for it.
      const where = { source: (await source.query('select 1 from documents where id = $1', [doc])).rowCount, target: (await target.query('select 1 from documents where id = $1', [doc])).rowCount };
      expect({ outcome, where }).toEqual({ outcome: 'threw: (drain waits for the prepared transaction)', where: { source: 0, target: 1 } });
    }
    expect(outcome).toMatch(/1 prepared transaction\(s\) that wrote users, documents or document_keys/);
    expect((await env.mover({ readerGraceMs: 0 }).run(id)).state).toBe('done');
    expect((await target.query('select title from documents where id = $1', [doc])).rows).toEqual([{ title: 'two-phase' }]);
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
  }, 60_000);
});
