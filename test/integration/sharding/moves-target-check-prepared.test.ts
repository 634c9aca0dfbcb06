/**
 * The check of a directory move's target (checkedIncoming, issue #15) reuses the source's drain,
 * which skips a prepared transaction whose transaction id is not older than the drain's snapshot:
 * on the source that is right (the change capture is an AFTER trigger, run after the row took its
 * transaction id), but the target's fence is a BEFORE trigger: a writer reads the fence, then
 * takes its transaction id when it writes the row. An `insert ... on conflict` of the key's id
 * that read no fence and then waited for another writer's insert of that id (rolled back) took
 * its id after the fence's commit and the drain's snapshot, and prepared: the drain did not wait
 * for it, the count could not see it, and the target was taken for checked while a prepared row
 * of the key, committed afterwards by its transaction manager, was there.
 *
 * Now the target's drain also waits for every prepared transaction that wrote the sharded tables
 * and was prepared before the writers older than the fence had all ended (one of them could be
 * it): here it names it and puts the row back (never taken for checked); committed, the next run
 * fences and checks anew and finds its row.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { outcomeOf, pinnedAway, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2, settings: { max_prepared_transactions: 10 } });
});
afterAll(async () => {
  await env?.stop();
});

async function checkPending(pool: pg.Pool, key: string): Promise<boolean | undefined> {
  const { rows } = await pool.query<{ unchecked: boolean }>(`select check_undo is not null as unchecked from write_fences where kind = 'directory' and unit_id = $1`, [key]);
  return rows[0]?.unchecked;
}

async function until(what: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 3000; i++) {
    if (await what()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('condition not reached');
}

describe("a directory move's check of its target and a prepared writer of the key", () => {
  it('waits for a writer prepared after the fence whose fence read came before it, and does not take the target for checked', async () => {
    const { key, target: hashOwner } = await pinnedAway(env, 1604, 1);
    const target = env.shards.get(hashOwner) as pg.Pool;
    const slot = 1604;
    const insertUser = `insert into users (id, slot, email, display_name) values ($1::uuid, $2, $1::text || '@example.com', 'by hash') on conflict (id) do nothing`;
    const b = await target.connect();
    const w = await target.connect();
    const gid = `h31_target_check_${key}`;
    try {
      // B: an uncommitted insert of the key's user on the target (sent there by hash).
      await b.query('begin isolation level read committed');
      await b.query(insertUser, [key, slot]);
      // W: the same insert, idempotent form; it passes the fence (none yet) and waits for B.
      await w.query('begin isolation level read committed');
      // One message: the prepare follows the insert at once, with no round trip in between.
      const wDone = w.query(`insert into users (id, slot, email, display_name) values ('${key}', ${slot}, '${key}@example.com', 'by hash') on conflict (id) do nothing; prepare transaction '${gid}'`);
      await until(async () => (await target.query(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like 'insert into users%'`)).rowCount === 1);

      const mover = env.mover({ readerGraceMs: 0, drainTimeoutMs: 1500 });
      const planned = await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' });
      const run = outcomeOf(mover.run(planned.id));
      // The drain is polling (its snapshot taken after the fence's commit): B ends, W inserts and prepares.
      // (The pattern is split so that this query's own text, left on a pooled connection, never matches it;
      // it is the drain's, which reads pg_stat_activity, not the wait for prepared transactions before the fence.)
      await until(async () => (await target.query(`select 1 from pg_stat_activity where pid <> pg_backend_pid() and query like '%from ' || 'pg_stat_activity a%'`)).rowCount === 1);
      await b.query('rollback');
      await wDone;
      // Either the run ends (the drain's bound, with the fix), or it takes the target for checked.
      const first = await Promise.race([run, until(async () => (await checkPending(target, key)) === false).then(() => 'checked while a prepared row of the key was on the target')]);
      await target.query(`commit prepared '${gid}'`);
      expect(first).toMatch(/1 prepared transaction\(s\) that wrote users, documents or document_keys \(pg_prepared_xacts\) on shard_\w+ still open after 1500 ms; the target is checked for rows of the key once they have ended/);
      // Not taken for checked: put back as it was (no row) while the prepared transaction is open.
      expect(await checkPending(target, key)).toBeUndefined();
      // Committed now: the next run fences anew, finds the key's row and stops, the fence put back.
      const again = await outcomeOf(env.mover({ readerGraceMs: 0 }).run(planned.id));
      expect(again).toMatch(/which already holds rows of it \(1 in users\)/);
      expect(await checkPending(target, key)).toBeUndefined();
      await run;
    } finally {
      await b.query('rollback').catch(() => undefined);
      await w.query('rollback').catch(() => undefined);
      await target.query(`rollback prepared '${gid}'`).catch(() => undefined);
      b.release();
      w.release();
    }
  }, 60_000);
});
