import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { countSlot, keysInSlot, seedUsers, sides } from './fixtures/move-env.js';
import { startFaultEnv, type FaultEnv } from './fixtures/restartable.js';

let env: FaultEnv;
beforeAll(async () => {
  env = await startFaultEnv();
}, 120_000);
afterAll(async () => {
  // A hung run keeps its clients checked out, and the pools' end() would wait for them for ever.
  await Promise.race([env?.stop(), delay(10_000)]);
  await Promise.all(Object.values(env?.servers ?? {}).map((s) => s.stop()));
}, 60_000);

describe("the target's session dropped in the middle of a copy page", () => {
  it('fails the run (resumable) instead of hanging with the lease renewed and a source transaction open', async () => {
    const slot = 1500;
    const { to, source, target } = await sides(env, slot);
    const owners = keysInSlot(slot, 5);
    await seedUsers(source, slot, owners, 400);
    // Pages larger than the sockets' buffers: the source's COPY is still streaming when the target goes.
    await source.query(`update documents set content = jsonb_build_object('rev', 0, 'body', repeat(md5(id::text), 100)) where slot = $1`, [slot]);
    const { rows } = await source.query<{ id: string; owner: string }>('select id::text, owner_id::text as owner from documents where slot = $1 order by id limit 1', [slot]);
    const doc = rows[0] as { id: string; owner: string };
    // An uncommitted row with the id of the page's first document holds the page's COPY on the
    // target (unique index) until its session goes away: the COPY is then surely in progress.
    const blocker = new pg.Client({ connectionString: env.urls.shards[to] });
    blocker.on('error', () => undefined);
    await blocker.connect();
    await blocker.query('begin');
    await blocker.query('set local session_replication_role = replica');
    await blocker.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'blocker')`, [doc.id, doc.owner, slot]);
    const mover = env.mover({ readerGraceMs: 0, leaseTtlMs: 1000 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const run = mover.run(planned.id).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.message}`,
    );
    // Wait for the mover's COPY to wait on the blocker, then drop its session (a restart, a failover, an operator).
    let copyPid: number | undefined;
    for (let i = 0; i < 200 && copyPid === undefined; i++) {
      const { rows: a } = await target.query<{ pid: number }>(`select pid from pg_stat_activity where query like 'copy documents%from stdin%' and wait_event_type = 'Lock'`);
      copyPid = a[0]?.pid;
      if (copyPid === undefined) await delay(25);
    }
    expect(copyPid).toBeDefined();
    await target.query('select pg_terminate_backend($1)', [copyPid]);
    await blocker.query('rollback');
    await blocker.end();
    const outcome = await Promise.race([run, delay(15_000).then(() => 'still running after 15 s')]);
    const open = await source.query<{ state: string; q: string }>(`select state, left(query, 60) as q from pg_stat_activity where datname = current_database() and state like 'idle in transaction%'`);
    const observed = { outcome: outcome.startsWith('threw') ? 'threw' : outcome, openOnSource: open.rows };
    expect(observed).toEqual({ outcome: 'threw', openOnSource: [] });
    // Resumed, the move finishes.
    expect((await env.mover({ readerGraceMs: 0, leaseTtlMs: 1000 }).run(planned.id)).state).toBe('done');
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(target, slot)).toEqual({ users: 5, documents: 2000 });
  }, 90_000);
});
