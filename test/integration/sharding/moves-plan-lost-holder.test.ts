/**
 * Two plans naming the same new shard at once, the first one's connection lost mid-transaction (a
 * black-holed path: its server never hears that the client gave up). The first plan's insert into
 * catalog.move_jobs wrote the shard's row of catalog.move_job_shards (sharding migration 025) and
 * its session then sat "idle in transaction", holding the row for as long as the server kept it:
 * the second plan's insert, which waits for that row's transaction (the table's unique index),
 * waited with it, for ever where nothing else set a bound (no lock_timeout or statement_timeout of
 * its own). Shown before the fix: the second plan still waiting once the first one's client had
 * given up, and no later plan of any slot naming the shard recorded.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { Mover, MoveConflictError } from '../../../functions/adapters/postgres/mover.js';
import { SilentRelay } from './fixtures/silent-relay.js';
import { firstSlotOwnedBy, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2 });
});
afterAll(async () => {
  await env?.stop();
});

/** Resolves once no session of the catalog sits in a transaction (the lost plan's ended by its server). */
async function noSessionInTransaction(): Promise<void> {
  for (;;) {
    const { rows } = await env.catalog.query(`select 1 from pg_stat_activity where datname = 'catalog' and state like 'idle in transaction%'`);
    if (rows.length === 0) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Plans slot `lostSlot` through a relay that goes silent once its insert of the job has reached the
 * server (the plan's client gives up on its own, query_timeout; the server never hears of it),
 * then, once that session sits in its transaction, plans `racingSlot` directly. Unbounded, the
 * second waited as long as the server kept the lost session: past 30 s (twice the bounds) the test
 * ends that session itself so that the race settles, and fails.
 */
async function raceLostPlan(lostSlot: number, racingSlot: number): Promise<{ lost: string; waited: string; racing: unknown; close: () => Promise<void> }> {
  const relay = await SilentRelay.start(Number(new URL(env.urls.catalog).port));
  const pool = new pg.Pool({ connectionString: relay.url(env.urls.catalog), max: 1, query_timeout: 2000 });
  pool.on('error', () => undefined);
  // Stopping the relay closes its server side: kept until the test is done, so that only the
  // server's own bound can end the lost session.
  const close = async (): Promise<void> => {
    await pool.end().catch(() => undefined);
    await relay.stop();
  };
  try {
    relay.blackholeAfter('insert into catalog.move_jobs');
    const lostOutcome = new Mover({ catalog: pool, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory }).plan({ kind: 'slot', slot: lostSlot, to: 'shard_b', createdBy: 'test' }).then(
      () => 'recorded',
      (err: unknown) => String(err),
    );
    for (;;) {
      const { rows } = await env.catalog.query(`select 1 from pg_stat_activity where datname = 'catalog' and state = 'idle in transaction'`);
      if (rows.length > 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const racing = env.mover().plan({ kind: 'slot', slot: racingSlot, to: 'shard_b', createdBy: 'test' }).then(
      () => 'recorded',
      (err: unknown) => err,
    );
    let timer: NodeJS.Timeout | undefined;
    const waited = await Promise.race([racing.then(() => 'settled'), new Promise<string>((r) => (timer = setTimeout(() => r('still waiting after 30 s'), 30_000)))]);
    clearTimeout(timer);
    if (waited !== 'settled') await env.catalog.query(`select pg_terminate_backend(pid) from pg_stat_activity where datname = 'catalog' and state = 'idle in transaction'`);
    return { lost: await lostOutcome, waited, racing: await racing, close };
  } catch (err) {
    await close();
    throw err;
  }
}

describe('a plan racing another plan whose connection was lost mid-transaction', () => {
  it('is refused after a bounded wait naming the new shard held, and the lost plan ends on the server', async () => {
    const first = await firstSlotOwnedBy(env, 'shard_a', 0);
    const second = await firstSlotOwnedBy(env, 'shard_a', first + 1);
    const third = await firstSlotOwnedBy(env, 'shard_a', second + 1);
    // No job named shard_a or shard_b yet: each plan's insert writes their rows of catalog.move_job_shards.
    const { lost, waited, racing, close } = await raceLostPlan(first, second);
    onTestFinished(close);

    expect(lost).toMatch(/could not record the move/);
    expect(waited).toBe('settled');
    expect(racing).toBeInstanceOf(MoveConflictError);
    expect(String((racing as Error).message)).toMatch(/cannot plan the move of slot \d+: another plan naming shard_a and shard_b, .* of catalog\.move_job_shards .*Nothing was recorded: plan it again/);
    // The lost plan's transaction ends on the server (its idle bound), its rows with it: a plan
    // made after that is recorded.
    await noSessionInTransaction();
    const recorded = await env.mover().plan({ kind: 'slot', slot: third, to: 'shard_b', createdBy: 'test' });
    expect(recorded.state).toBe('planned');
    const { rows } = await env.catalog.query<{ slot: number }>(`select slot from catalog.move_jobs order by id`);
    expect(rows.map((r) => r.slot)).toEqual([third]);
  }, 60_000);

  it('is refused after a bounded wait naming the unfinished move of the same slot', async () => {
    // Both shards are known to the jobs now: the second plan waits only on the first's job row.
    const slot = await firstSlotOwnedBy(env, 'shard_a', 100);
    const { lost, waited, racing, close } = await raceLostPlan(slot, slot);
    onTestFinished(close);

    expect(lost).toMatch(/could not record the move/);
    expect(waited).toBe('settled');
    expect(racing).toBeInstanceOf(MoveConflictError);
    expect(String((racing as Error).message)).toMatch(new RegExp(`cannot plan the move of slot ${slot}: a move of slot ${slot} planned by another transaction and not yet committed held its row of catalog\\.move_jobs .*Nothing was recorded: plan it again`));
    await noSessionInTransaction();
    expect((await env.mover().plan({ kind: 'slot', slot, to: 'shard_b', createdBy: 'test' })).state).toBe('planned');
  }, 60_000);
});
