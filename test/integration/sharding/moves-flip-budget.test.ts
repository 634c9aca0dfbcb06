import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { FENCED_STATEMENT_SLACK_MS } from '../../../functions/adapters/postgres/move-port.js';
import { createPool } from '../../../functions/handlers/shared/db.js';
import { countSlot, fenceHeldMs, fenceState, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/**
 * The flip holds writes to the unit (the source's fence) only within the fence budget, plus a
 * small slack, however the catalog delays it: `statement_timeout` counts from each statement's
 * own start, and a COMMIT's wait for a synchronous standby is bounded by no server timeout at
 * all. And a flip whose COMMIT may have landed never reopens the old owner.
 */
/**
 * The runs' fence slack (`fenceSlackMs`), shortened from its 5 s: the run's catalog bound under
 * the fence is the budget left and this slack. The locks below outlast that bound (by
 * {@link LOCK_MARGIN_MS}), so a fence held until the bound closed the connection still shows.
 */
const FENCE_SLACK_MS = 2000;
const LOCK_MARGIN_MS = 1500;

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

/** How the tests name a fence given back within its budget and the slack they allow. */
const WITHIN = 'within the budget and a small slack';
/** {@link WITHIN} when the fence was held `heldMs` (>= 0: it was seen given back) under `budgetMs + slackMs`; else the figure, for the failure message. */
const heldWithin = (heldMs: number, budgetMs: number, slackMs: number): string => (heldMs >= 0 && heldMs < budgetMs + slackMs ? WITHIN : `${heldMs} ms`);

/** The source's fence and the target's rows of `slot`: {@link ROLLED_BACK} once a move was rolled back. */
async function unitOnSourceAlone(slot: number, source: pg.Pool, target: pg.Pool): Promise<{ source: string | undefined; rowsOnTarget: { users: number; documents: number } }> {
  return { source: await fenceState(source, slot), rowsOnTarget: await countSlot(target, slot) };
}
const ROLLED_BACK = { source: 'open', rowsOnTarget: { users: 0, documents: 0 } };

/** A cancelled move's end as the tests check it: `held` (see {@link heldWithin}), the run's outcome, whether the catalog names the target, and the unit's state. */
async function cancelledState(slot: number, held: string, outcome: string, to: string, source: pg.Pool, target: pg.Pool): Promise<Record<string, unknown>> {
  return { held, outcome, targetNamed: (await env.ownerOf(slot)) === to, unit: await unitOnSourceAlone(slot, source, target) };
}
const CANCELLED_IN_TIME = { held: WITHIN, outcome: 'ended: cancelled', targetNamed: false, unit: ROLLED_BACK };

/** The flip's transaction is the one run transaction opened with a statement timeout (see `PgMovePort.flip`; READ COMMITTED whatever the default). */
const FLIP_BEGIN = /^begin isolation level read committed; set local statement_timeout = '\d+ms'/;

type Query = (...args: unknown[]) => Promise<unknown>;

/** `pool` as it is, except that every lent client's `query` goes through `query(original, ...args)`. */
function withQueryHook(pool: pg.Pool, query: (original: Query, ...args: unknown[]) => Promise<unknown>): pg.Pool {
  const wrap = (client: pg.PoolClient): pg.PoolClient =>
    new Proxy(client, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target) as unknown;
        if (prop !== 'query') return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        return (...args: unknown[]) => query((target.query as Query).bind(target), ...args);
      },
    });
  return new Proxy(pool, {
    get(target, prop) {
      if (prop === 'connect') return async () => wrap(await target.connect());
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/**
 * `pool` as it is, except that on a lent client the flip's BEGIN first awaits `before` and is sent
 * as `rewrite` makes it.
 */
function atFlipBegin(pool: pg.Pool, before: () => Promise<void>, rewrite: (begin: string) => string = (b) => b): pg.Pool {
  return withQueryHook(pool, async (query, ...args) => {
    if (typeof args[0] === 'string' && FLIP_BEGIN.test(args[0])) {
      await before();
      return query(rewrite(args[0]));
    }
    return query(...args);
  });
}

/** `pool` as it is, except that on a lent client a statement matching `pattern` is followed by `after` before its answer is given. */
function afterStatement(pool: pg.Pool, pattern: RegExp, after: () => Promise<void>): pg.Pool {
  return withQueryHook(pool, async (query, ...args) => {
    const result = await query(...args);
    if (typeof args[0] === 'string' && pattern.test(args[0])) await after();
    return result;
  });
}

/**
 * Plans and starts a move of `slot` by a mover on `catalog` with `budgetMs` (one fence attempt),
 * waits for it to fence, and measures how long the source's fence is held. `atVerifying` runs when
 * the move starts verifying (given the job's id). The run's end is returned unawaited, as
 * `ended: <state>` or `threw: <name>: <message>`.
 */
/** An operator's cancellation of the move, requested while it verifies (the flip then finds it and publishes nothing). */
const cancelIt = (jobId: number): Promise<void> => env.mover().requestCancel(jobId).then(() => undefined);

async function fencedRun(
  catalog: pg.Pool,
  slot: number,
  budgetMs: number,
  atVerifying?: (jobId: number) => Promise<void>,
  plannedId?: (jobId: number) => void,
  leaseTtlMs?: number,
  fenceSlackMs: number = FENCE_SLACK_MS,
): Promise<{ jobId: number; heldMs: number; outcome: Promise<string> }> {
  const { to, source } = await sides(env, slot);
  let fencedAt = 0;
  let jobId = 0;
  const mover = new Mover({
    catalog,
    shards: env.shards,
    slotMaps: env.slotMaps,
    directory: env.directory,
    readerGraceMs: 100,
    fenceBudgetMs: budgetMs,
    fenceSlackMs,
    fenceAttempts: 1,
    ...(leaseTtlMs === undefined ? {} : { leaseTtlMs }),
    async hook(point) {
      if (point === 'fenced') fencedAt = Date.now();
      if (point === 'verifying') await atVerifying?.(jobId);
    },
  });
  jobId = (await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id;
  plannedId?.(jobId);
  const outcome = mover.run(jobId).then(
    (j) => `ended: ${j.state}`,
    (e: Error) => `threw: ${e.name}: ${e.message}`,
  );
  for (let i = 0; i < 400 && fencedAt === 0; i++) await delay(25);
  return { jobId, heldMs: await fenceHeldMs(source, slot, fencedAt, 15_000), outcome };
}

describe('the flip waits on two catalog locks in a row, each shorter than the budget left', () => {
  it('gives the fence back within the budget (plus a small slack), not after the sum of both waits', async () => {
    const slot = 1240;
    const budgetMs = 1500;
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const [jobLocker, mapLocker] = [await env.catalog.connect(), await env.catalog.connect()];
    let jobId = 0;
    let released: Promise<unknown> = Promise.resolve();
    // Another transaction holds the job row 1 s (an operator's cancel request that is slow to
    // commit, say), and a migration holds the maps: the flip's locked read of the job waits 1 s,
    // within the budget left; its read of the map then waits for the rest.
    const catalog = atFlipBegin(env.catalog, async () => {
      await jobLocker.query('begin');
      await jobLocker.query('select 1 from catalog.move_jobs where id = $1 for update', [jobId]);
      await mapLocker.query('begin');
      await mapLocker.query('lock table catalog.slot_maps in access exclusive mode');
      released = Promise.all([delay(1000).then(() => jobLocker.query('rollback')), delay(budgetMs + FENCE_SLACK_MS + LOCK_MARGIN_MS).then(() => mapLocker.query('rollback'))]);
    });
    const started = await fencedRun(catalog, slot, budgetMs, undefined, (id) => {
      jobId = id;
    });
    const { heldMs } = started;
    const outcome = await started.outcome;
    await released;
    jobLocker.release();
    mapLocker.release();

    // The sum of the two waits is about 1000 ms + what was left of the budget (2.3-2.5 s).
    expect({ held: heldWithin(heldMs, budgetMs, 500), outcome }).toEqual({
      held: WITHIN,
      outcome: expect.stringMatching(/^threw: MoveFenceTimeoutError: /) as unknown as string,
    });
    expect(await env.ownerOf(slot)).not.toBe(to);
    expect((await env.mover().run(started.jobId)).state).toBe('done');
    expect(await env.ownerOf(slot)).toBe(to);
  }, 60_000);
});

describe('a lease renewal queued ahead of the flip waits on a lock of the job table', () => {
  it('gives the fence back within the budget (plus a small slack), not after the run’s catalog bound', async () => {
    const slot = 1256;
    const budgetMs = 1000;
    // The production slack: the flip given up at the budget must end the run with the fence's
    // timeout before the run's catalog bound closes the connection (budget + slack), and with
    // the 2 s slack a loaded machine (three test files at once) closed it first.
    const slackMs = FENCED_STATEMENT_SLACK_MS;
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const locker = await env.catalog.connect();
    let unlock: Promise<unknown> = Promise.resolve();
    // Another session locks the job table (a migration, say) just after the verification's
    // summary, the run's last catalog statement before the flip; the lease (TTL 300 ms) is renewed
    // every 100 ms, and a renewal sent meanwhile is queued ahead of the flip and waits on the lock.
    const catalog = afterStatement(env.catalog, /set source_summary = /, async () => {
      await locker.query('begin');
      await locker.query('lock table catalog.move_jobs in exclusive mode');
      unlock = delay(budgetMs + slackMs + LOCK_MARGIN_MS).then(() => locker.query('rollback'));
      await delay(150);
    });
    const started = await fencedRun(catalog, slot, budgetMs, undefined, undefined, 300, slackMs);
    const { heldMs } = started;
    await unlock;
    locker.release();
    const outcome = await started.outcome;

    // Before: the flip waited for its turn behind the renewal, unguarded, until the run's catalog
    // bound (the budget left when the renewal was sent + 5 s) closed the connection: 5.8-6.0 s.
    expect({ held: heldWithin(heldMs, budgetMs, 500), outcome }).toEqual({
      held: WITHIN,
      // The fence's own timeout ends the run; on a machine loaded past what the production slack
      // allows for (load average 15), the run's catalog bound may close the connection first, the
      // fence given back within the budget all the same (what the first line proves: before, 5.8-6 s).
      outcome: expect.stringMatching(/^threw: (MoveFenceTimeoutError: |MoveError: move job #\d+ stopped in verifying: Client has encountered a connection error)/) as unknown as string,
    });
    expect(await env.ownerOf(slot)).not.toBe(to);
    // A renewal that waited on the lock may have extended the lease past the run's release.
    await delay(400);
    expect((await env.mover().run(started.jobId)).state).toBe('done');
    expect(await env.ownerOf(slot)).toBe(to);
  }, 60_000);
});

describe("the flip's COMMIT waits for a synchronous standby that is not there", () => {
  it.each([
    { pool: 'a pool of several connections', slot: 1250, lambda: false },
    // The moves function's catalog pool: one connection (the cancel request needs none of its own), a 12 s query timeout.
    { pool: 'the Lambda pool of one', slot: 1251, lambda: true },
  ])('$pool: is resolved within the budget, the commit it had sent lands, and the fence is released forward (never reopened on the old owner)', async ({ slot, lambda }) => {
    const budgetMs = 1000;
    const { to, source, target } = await sides(env, slot);
    const users = keysInSlot(slot, 3);
    await seedUsers(source, slot, users, 2);
    const lambdaPool = lambda ? await createPool({ url: env.urls.catalog }, undefined) : undefined;
    // The catalog's cluster (which also holds shard_a) waits for a standby named `ghost` that never
    // connects; the test clusters run with synchronous_commit = off, and only the flip's
    // transaction turns it on: its COMMIT waits, no other.
    await env.catalog.query("alter system set synchronous_standby_names = 'ghost'");
    await env.catalog.query('select pg_reload_conf()');
    try {
      const catalog = atFlipBegin(lambdaPool ?? env.catalog, async () => undefined, (begin) => `${begin}; set local synchronous_commit = on`);
      const started = await fencedRun(catalog, slot, budgetMs);
      const { heldMs } = started;
      const outcome = await started.outcome;

      // Without a bound of its own the COMMIT waited until the run's catalog bound closed the
      // connection (the budget + 5 s), the flip unresolved, and the fence was left to the next run.
      expect({ held: heldWithin(heldMs, budgetMs, 1000), outcome }).toEqual({
        held: WITHIN,
        outcome: 'ended: done',
      });
      expect(await env.ownerOf(slot)).toBe(to);
      expect({ source: await fenceState(source, slot), target: await fenceState(target, slot) }).toEqual({ source: 'moved', target: 'open' });
      expect(await countSlot(target, slot)).toEqual({ users: 3, documents: 6 });
      // The run's connection goes back fit for the pool's next user (in the pool of one, this
      // query's): not inside a transaction left open (or failed) by the cancelled wait.
      expect((await catalog.query<{ alone: boolean }>('select now() = statement_timestamp() as alone')).rows[0]?.alone).toBe(true);
    } finally {
      await env.catalog.query('alter system reset synchronous_standby_names');
      await env.catalog.query('select pg_reload_conf()');
      await lambdaPool?.end();
    }
  }, 60_000);
});

describe('a flip that publishes nothing, with its COMMIT waiting for a synchronous standby that is not there', () => {
  it('a cancellation the flip answers: the fence is reopened within the budget (plus a small slack) and the move rolled back', async () => {
    const slot = 1252;
    const budgetMs = 1000;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    await env.catalog.query("alter system set synchronous_standby_names = 'ghost'");
    await env.catalog.query('select pg_reload_conf()');
    try {
      // Only the flip's transaction waits for the standby (see the test above).
      const catalog = atFlipBegin(env.catalog, async () => undefined, (begin) => `${begin}; set local synchronous_commit = on`);
      // An operator cancels the move while it verifies: the flip finds the request and publishes nothing.
      const started = await fencedRun(catalog, slot, budgetMs, cancelIt);
      const { heldMs } = started;
      const outcome = await started.outcome;

      // Before: the flip committed its locked read of the job (an xid: the row lock), and that
      // COMMIT, not cancellable, waited until the run's catalog bound closed the connection (6.0 s).
      expect(await cancelledState(slot, heldWithin(heldMs, budgetMs, 1000), outcome, to, source, target)).toEqual(CANCELLED_IN_TIME);
    } finally {
      await env.catalog.query('alter system reset synchronous_standby_names');
      await env.catalog.query('select pg_reload_conf()');
    }
  }, 60_000);
});

describe('a cancellation the flip answers while every catalog COMMIT waits for a synchronous standby that is not there', () => {
  it('the rollback decided under the fence gives the fence back within the budget (plus a small slack), and the move ends cancelled', async () => {
    const slot = 1253;
    const budgetMs = 1000;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    // The run's commits wait for the standby once it is named; it is named as the flip begins
    // (the flip itself then publishes nothing, and rolls back: no wait).
    const runPool = new pg.Pool({ connectionString: env.urls.catalog, max: 1, options: '-c synchronous_commit=on' });
    const ghost = async (): Promise<void> => {
      await env.catalog.query("alter system set synchronous_standby_names = 'ghost'");
      await env.catalog.query('select pg_reload_conf()');
      await delay(100);
    };
    try {
      const catalog = atFlipBegin(runPool, ghost);
      const started = await fencedRun(catalog, slot, budgetMs, cancelIt);
      const { heldMs } = started;
      // The standby is back: the run's last commits (outside the fence) go through.
      await env.catalog.query('alter system reset synchronous_standby_names');
      await env.catalog.query('select pg_reload_conf()');
      const outcome = await started.outcome;

      // Before: the decision's COMMIT waited until the run's catalog bound closed the connection (6.0 s).
      expect(await cancelledState(slot, heldWithin(heldMs, budgetMs, 500), outcome, to, source, target)).toEqual(CANCELLED_IN_TIME);
    } finally {
      await env.catalog.query('alter system reset synchronous_standby_names');
      await env.catalog.query('select pg_reload_conf()');
      await runPool.end();
    }
  }, 60_000);
});

/**
 * Moves `slot` with a run killed once the fence was released forward, has a write acknowledged on
 * the target, then takes the flip back out of the catalog (the job and the map as the failed-over
 * standby had them).
 */
async function lostFlip(slot: number): Promise<{ jobId: number; to: string; source: pg.Pool; target: pg.Pool }> {
  const { to, source, target } = await sides(env, slot);
  const [user] = keysInSlot(slot, 1) as [string];
  await seedUsers(source, slot, [user], 2);
  const mover = new Mover({
    catalog: env.catalog,
    shards: env.shards,
    slotMaps: env.slotMaps,
    directory: env.directory,
    readerGraceMs: 100,
    hook(point) {
      // The run ends (killed, or its catalog gone) once the fence was released forward.
      if (point === 'cleaning_up') throw new Error('killed');
    },
  });
  const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
  await mover.run(planned.id).catch(() => undefined);
  expect({ source: await fenceState(source, slot), target: await fenceState(target, slot) }).toEqual({ source: 'moved', target: 'open' });
  // A writer following the published map writes on the target, and is acknowledged.
  await target.query(`insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'after the flip', '{}')`, [user, slot]);
  // The failed-over catalog never saw the flip.
  await env.catalog.query('delete from catalog.slot_maps where version = (select map_version_after from catalog.move_jobs where id = $1)', [planned.id]);
  await env.catalog.query(
    `update catalog.move_jobs set state = 'verifying', flip_started_at = null, map_version_after = null, unfenced_at = null, lease_holder = null, lease_expires_at = null where id = $1`,
    [planned.id],
  );
  return { jobId: planned.id, to, source, target };
}

/**
 * A flip committed only on the catalog primary (its wait for the synchronous standby cancelled at
 * the budget's end) is lost when the catalog fails over to that standby before it replicated;
 * the run had released the fence forward, and writers wrote on the target. Emulated here by
 * taking the flip back out of the catalog (the job and the map as the standby had them).
 */
describe('a flip lost by a catalog failover after the fence was released forward', () => {
  it('is not rolled back: a cancellation finds the flip on the source, publishes it again and finishes the move, and the writes acknowledged on the target stay', async () => {
    const slot = 1254;
    const { jobId, to, target } = await lostFlip(slot);
    const cancelled = await env
      .mover()
      .cancel(jobId)
      .then(
        (j) => `ended: ${j.state}`,
        (e: Error) => `threw: ${e.name}`,
      );

    // Before: the rollback, seeing the map name the source, deleted the target's copy with the write acknowledged there.
    // (The rollback still refuses such a unit; the run now publishes the lost flip before it gets there: see the next test.)
    expect({ cancelled, owner: await env.ownerOf(slot), onTarget: await countSlot(target, slot) }).toEqual({ cancelled: 'ended: done', owner: to, onTarget: { users: 1, documents: 3 } });
  }, 60_000);

  // The source's fence row is the flip's record: the next run publishes the target again and
  // finishes the move, rather than fail at every run (the fence refuses a moved unit, the rollback
  // refuses it too) with the slot's next move blocked behind it for good.
  it('is published again by the next run, which finishes the move with the writes acknowledged on the target', async () => {
    const slot = 1255;
    const { jobId, to, source, target } = await lostFlip(slot);
    expect(await env.ownerOf(slot)).not.toBe(to);

    const resumed = await env
      .mover()
      .run(jobId)
      .then(
        (j) => `ended: ${j.state}`,
        (e: Error) => `threw: ${e.name}: ${e.message}`,
      );

    // Before: every run threw "the fence row of slot 1255 on shard_a is missing or held by another move".
    expect({ resumed, owner: await env.ownerOf(slot), onTarget: await countSlot(target, slot), onSource: await countSlot(source, slot) }).toEqual({
      resumed: 'ended: done',
      owner: to,
      onTarget: { users: 1, documents: 3 },
      onSource: { users: 0, documents: 0 },
    });
    expect({ source: await fenceState(source, slot), target: await fenceState(target, slot) }).toEqual({ source: 'moved', target: 'open' });
  }, 60_000);
});

describe('another session locks the job table just after the flip commits', () => {
  it('the fence is released forward within the budget (plus a small slack), not left shut for the next run', async () => {
    const slot = 1257;
    const budgetMs = 1500;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const locker = await env.catalog.connect();
    let locked: Promise<unknown> = Promise.resolve();
    let unlock: Promise<unknown> = Promise.resolve();
    // A migration asks for the job table while the flip's transaction still holds its row: it
    // gets the table once the flip commits, ahead of the run's next statement (the job read back).
    const catalog = afterStatement(env.catalog, /set flip_started_at = clock_timestamp\(\), map_version_after = /, async () => {
      locked = locker.query('begin').then(() => locker.query('lock table catalog.move_jobs in access exclusive mode'));
      unlock = locked.then(() => delay(budgetMs + FENCE_SLACK_MS + LOCK_MARGIN_MS)).then(() => locker.query('rollback'));
      await delay(50);
    });
    const started = await fencedRun(catalog, slot, budgetMs);
    const { heldMs } = started;
    const stateAtBudgetEnd = { source: await fenceState(source, slot), target: await fenceState(target, slot) };
    await unlock;
    locker.release();
    const outcome = await started.outcome;

    // Before: the job read back after the flip waited on the lock until the run's catalog bound
    // (the budget left + 5 s) closed the connection; the run could then not tell the flip had
    // committed and left the fence shut, writes to the unit held until the next run.
    expect({ held: heldWithin(heldMs, budgetMs, 500), stateAtBudgetEnd }).toEqual({
      held: WITHIN,
      stateAtBudgetEnd: { source: 'moved', target: 'open' },
    });
    // The run goes on once the lock is gone, and finishes the move.
    expect({ outcome, owner: await env.ownerOf(slot), onTarget: await countSlot(target, slot) }).toEqual({ outcome: 'ended: done', owner: to, onTarget: { users: 3, documents: 6 } });
  }, 60_000);
});

describe('another session locks the job table just after the flip found a cancellation', () => {
  it('the fence is reopened within the budget (plus a small slack), and the move ends cancelled', async () => {
    const slot = 1258;
    const budgetMs = 1500;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const locker = await env.catalog.connect();
    let unlock: Promise<unknown> = Promise.resolve();
    let flipping = false;
    // A migration asks for the job table while the flip holds the job's row: it gets the table
    // once the flip has rolled back (it found the cancellation), ahead of the run's next statement.
    const catalog = afterStatement(
      atFlipBegin(env.catalog, async () => {
        flipping = true;
      }),
      /^select \* from catalog\.move_jobs where id = \$1 and .* for update$/,
      async () => {
        if (!flipping) return;
        flipping = false;
        const locked = locker.query('begin').then(() => locker.query('lock table catalog.move_jobs in access exclusive mode'));
        unlock = locked.then(() => delay(budgetMs + FENCE_SLACK_MS + LOCK_MARGIN_MS)).then(() => locker.query('rollback'));
        await delay(50);
      },
    );
    // An operator cancels the move while it verifies: the flip finds the request and publishes nothing.
    const started = await fencedRun(catalog, slot, budgetMs, cancelIt);
    const { heldMs } = started;
    await unlock;
    locker.release();
    await started.outcome;

    // Before: the job read back after the flip waited on the lock until the run's catalog bound
    // (the budget left + 5 s) closed the connection, writes to the unit held all along.
    expect(heldWithin(heldMs, budgetMs, 500)).toBe(WITHIN);
    expect(await env.ownerOf(slot)).not.toBe(to);
    expect((await env.mover().run(started.jobId)).state).toBe('cancelled');
    expect(await unitOnSourceAlone(slot, source, target)).toEqual(ROLLED_BACK);
  }, 60_000);
});
