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
import { firstSlotOwnedBy, lockWaitOn, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
/** Three shards, no move planned before h132's test: shard_a and shard_c are new to catalog.move_job_shards there. */
let env3: MoveEnv;
beforeAll(async () => {
  [env, env3] = await Promise.all([startMoveEnv({ shards: 2 }), startMoveEnv({ shards: 3 })]);
});
afterAll(async () => {
  await Promise.all([env?.stop(), env3?.stop()]);
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

    // Named: the catalog and the cause (h166), not "could not record the move: Query read timeout".
    expect(lost).toMatch(/the catalog did not answer a statement of the job's transaction within the client's query timeout \(.*Nothing was recorded/);
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

    // Named: the catalog and the cause (h166), not "could not record the move: Query read timeout".
    expect(lost).toMatch(/the catalog did not answer a statement of the job's transaction within the client's query timeout \(.*Nothing was recorded/);
    expect(waited).toBe('settled');
    expect(racing).toBeInstanceOf(MoveConflictError);
    expect(String((racing as Error).message)).toMatch(new RegExp(`cannot plan the move of slot ${slot}: a move of slot ${slot} planned by another transaction and not yet committed held its row of catalog\\.move_jobs .*Nothing was recorded: plan it again`));
    await noSessionInTransaction();
    expect((await env.mover().plan({ kind: 'slot', slot, to: 'shard_b', createdBy: 'test' })).state).toBe('planned');
  }, 60_000);
});

describe("a plan racing a healthy plan that names the same new shard and waits out both of its own lock waits (h132)", () => {
  it("is not refused for the first plan's healthy waits: the first holds the new shard's row for less than the second's bound", async () => {
    // The first plan's insert writes shard_a's and shard_c's rows of catalog.move_job_shards; it
    // then waits for its slot's pin lock and for the SHARE lock of catalog.slot_maps, each bounded
    // (5 s). Held 4.4 s each by other transactions, a first plan bounded by each wait alone held
    // those rows about 9 s, past the second plan's 8 s (PLAN_RECORD_WAIT_MS), which was refused
    // ("another plan naming shard_a and shard_c ... of catalog.move_job_shards") while the first,
    // healthy, went on to record its job.
    const first = await firstSlotOwnedBy(env3, 'shard_a', 0);
    const second = await firstSlotOwnedBy(env3, 'shard_a', first + 1);
    const pins = await env3.catalog.connect();
    const maps = await env3.catalog.connect();
    pins.on('error', () => undefined);
    maps.on('error', () => undefined);
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    try {
      await pins.query('begin');
      await pins.query('insert into catalog.slot_pin_locks (slot) values ($1) on conflict do nothing', [first]);
      await pins.query('select slot from catalog.slot_pin_locks where slot = $1 for update', [first]);
      const outcome = (p: Promise<unknown>) =>
        p.then(
          () => 'recorded',
          (err: unknown) => `${(err as Error).name}: ${(err as Error).message}`,
        );
      const one = outcome(env3.mover().plan({ kind: 'slot', slot: first, to: 'shard_c', createdBy: 'test' }));
      await lockWaitOn(env3.catalog, 'catalog');
      const two = outcome(env3.mover().plan({ kind: 'slot', slot: second, to: 'shard_c', createdBy: 'test' }));
      await sleep(4400);
      // The slot maps held (a map being published in a caller's transaction) before the pin lock is let go.
      await maps.query('begin');
      await maps.query('lock table catalog.slot_maps in row exclusive mode');
      await pins.query('commit');
      await sleep(4400);
      await maps.query('commit');
      const [a, b] = await Promise.all([one, two]);
      // The first: recorded, or refused by its own waits, naming the lock it waited for.
      expect(a).toMatch(/^(recorded|MoveConflictError: cannot plan the move of slot \d+: a slot map inserted into catalog\.slot_maps)/);
      // The second: never refused for a row of catalog.move_job_shards that a healthy plan held.
      expect(b).not.toMatch(/move_job_shards/);
    } finally {
      await pins.query('rollback').catch(() => undefined);
      await maps.query('rollback').catch(() => undefined);
      pins.release();
      maps.release();
    }
  }, 60_000);
});
