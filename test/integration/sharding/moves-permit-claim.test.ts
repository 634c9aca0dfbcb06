/**
 * The permit claim ends the sessions that block it (move-port.ts `endStaleRun`): only the
 * transactions of an earlier run of the same job may be ended, never an operator's or a
 * migration's lock on move_permits, and every stale transaction of that run, not only the first.
 */
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { countSlot, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
const clients: pg.Client[] = [];
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  for (const c of clients) await c.end().catch(() => undefined);
  await Promise.race([env?.stop(), delay(20_000)]);
}, 60_000);

async function session(url: string): Promise<{ client: pg.Client; pid: number }> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => undefined);
  await client.connect();
  clients.push(client);
  const { rows } = await client.query<{ pid: number }>('select pg_backend_pid() as pid');
  return { client, pid: rows[0]?.pid ?? -1 };
}

async function alive(pool: pg.Pool, pid: number): Promise<boolean> {
  const { rows } = await pool.query<{ n: number }>('select count(*)::int as n from pg_stat_activity where pid = $1', [pid]);
  return (rows[0]?.n ?? 0) > 0;
}

function outcome(p: Promise<{ state: string }>): Promise<string> {
  return p.then(
    (j) => j.state,
    (e: Error) => `threw: ${e.message}`,
  );
}

describe('a permit claim that waits', () => {
  it("does not terminate an operator's session holding a table lock on move_permits", async () => {
    const slot = 901;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 2), 1);
    const mover = env.mover({ leaseTtlMs: 3000 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // An operator (or a migration: alter table, vacuum full) holds a lock on the table.
    const operator = await session(env.urls.shards[to] as string);
    await operator.client.query('begin; lock table move_permits in share mode');
    const run = outcome(mover.run(planned.id));
    await delay(1500);
    const operatorAlive = await alive(target, operator.pid);
    await operator.client.query('rollback').catch(() => undefined);
    await run;
    expect(operatorAlive).toBe(true);
  }, 30_000);

  it("ends every transaction of the earlier run that holds the permit, not only the first", async () => {
    const slot = 902;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 2), 1);
    const mover = env.mover({ leaseTtlMs: 3000 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // An earlier run (epoch 1) has two write transactions open on the target, both stuck; its
    // lease has lapsed, so the next run claims epoch 2.
    await env.catalog.query('update catalog.move_jobs set lease_epoch = 1 where id = $1', [planned.id]);
    await target.query('select move_permit_claim($1, 1)', [planned.id]);
    const lanes = [await session(env.urls.shards[to] as string), await session(env.urls.shards[to] as string)];
    for (const lane of lanes) {
      await lane.client.query('begin');
      await lane.client.query('select move_permit_hold($1, 1)', [planned.id]);
    }
    const started = Date.now();
    const state = await outcome(mover.run(planned.id));
    expect({ state, withinMs: Date.now() - started < 8000 }).toEqual({ state: 'done', withinMs: true });
  }, 30_000);
});

describe('a move whose source and target reach one database (two spellings of one endpoint)', () => {
  it('is refused at its permit claim, naming the two shards and the configuration, not a catalog failover, and nothing is touched', async () => {
    const slot = 1800;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 2), 2);
    // The source's database under another host name: the configuration's check of distinct endpoints compares the spellings.
    const alias = new pg.Pool({ connectionString: (env.urls.shards[from] as string).replace('127.0.0.1', 'localhost'), max: 2 });
    try {
      const mover = new Mover({ catalog: env.catalog, shards: new Map([[from, source], [to, alias]]), slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 0 });
      const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

      const first = await outcome(mover.run(planned.id));
      const second = await outcome(mover.run(planned.id));

      // Before: "another run of the job claimed it with this same epoch (the catalog lost that
      // claim: a failover to a standby behind it?); the job's next run claims a higher epoch", at
      // every run: the next run claims the epoch twice on the one database again.
      const refusal = `threw: move job #${planned.id}: ${from} and ${to}, the move's source and target, reach one database (the permit claimed on ${from} is found on ${to}); a move between them would copy the unit onto itself. Give each shard its own database in the sharding configuration, then cancel this move`;
      expect({ first, second }).toEqual({ first: refusal, second: refusal });
      expect((await mover.get(planned.id)).error).toBe(`planned: ${refusal.slice('threw: '.length)}`);
      expect(await countSlot(source, slot)).toEqual({ users: 2, documents: 4 });
    } finally {
      await alias.end();
    }
  }, 30_000);
});
