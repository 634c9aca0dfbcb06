/**
 * A database goes silent under a move: no reset, no answer (a black-holed network path, the old
 * address of a failed-over instance). While the mover holds the source's write fence, the fence
 * budget promises writes to the unit are held at most `fenceBudgetMs`; on Lambda a hung run would
 * hold them until the function's timeout (15 min) killed it and the next tick reopened them.
 * Whichever side goes silent, and however (open connections silent, or reset with new ones never
 * answered), the run must end within a bound of the budget, the fence given back. Outside the
 * fence, a run waiting on a silent shard during the copy, or leaving a transaction open there,
 * must neither outlive its invocation nor keep the next run from taking the job over. The same
 * holds for the catalog going silent under a run (inside the flip; under the fence before the
 * flip; with the moves function's pool settings), for one idle pooled connection going silent
 * while new ones work, and for the moves handler itself near its timeout.
 */
import '../../support/quiet-powertools.js';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ListeningClient } from '../../../functions/adapters/postgres/listening-client.js';
import { Mover, MoveBusyError, type MoveJob, type MoverOptions } from '../../../functions/adapters/postgres/mover.js';
import type { MovesResult } from '../../../functions/handlers/moves.js';
import { createPool } from '../../../functions/handlers/shared/db.js';
import { cancelledInCopy, countSlot, fenceHeldMs, fenceState, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { lambdaContext, tick, withMovesHandler } from './fixtures/moves-handler.js';
import { SilentRelay } from './fixtures/silent-relay.js';
import { waitForLeaseLapsed } from './fixtures/kill.js';

/**
 * The fence's slack (`fenceSlackMs`: how long past the budget a fenced statement may stay
 * unanswered, and the bound of giving the fence up), shortened from its 5 s: every run below that
 * holds a fence on a silent path waits it out, once or twice, and the bounds asserted scale with it.
 */
const FENCE_SLACK_MS = 1000;

let env: MoveEnv;
const pools: pg.Pool[] = [];
const relays: SilentRelay[] = [];
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  for (const r of relays) await r.stop();
  await Promise.race([Promise.all(pools.map((p) => p.end().catch(() => undefined))), delay(5000)]);
  await Promise.race([env?.stop(), delay(20_000)]);
}, 60_000);

/** How a move run ended, as text: `ended: <state>` or `threw: <message>`. */
const settle = (run: Promise<MoveJob>): Promise<string> =>
  run.then(
    (j) => `ended: ${j.state}`,
    (e: Error) => `threw: ${e.message}`,
  );

/** The job run by a fresh mover (one taking it over from a silent run): its final state, `threw: ...`, or `stuck` after `withinMs`. */
const takeOver = (id: number, withinMs: number, stuck: string): Promise<string> =>
  Promise.race([
    env
      .mover({ leaseTtlMs: 1500 })
      .run(id)
      .then(
        (j) => j.state,
        (e: Error) => `threw: ${e.message}`,
      ),
    delay(withinMs).then(() => stuck),
  ]);

/** A pool of `max` connections to `url`'s server through a relay that can go silent. */
async function relayedPool(url: string, max = 4): Promise<{ relay: SilentRelay; pool: pg.Pool }> {
  const u = new URL(url);
  const relay = await SilentRelay.start(Number(u.port));
  relays.push(relay);
  const pool = new pg.Pool({ connectionString: relay.url(url), max, Client: ListeningClient });
  pool.on('error', () => undefined);
  pools.push(pool);
  return { relay, pool };
}

/**
 * The moves function's catalog pool (`createPool`: one connection, a 12 s query timeout,
 * keepalive; `overrides` replace its settings) reaching the catalog through a relay that can go silent.
 */
async function relayedCatalog(overrides?: Parameters<typeof createPool>[2]): Promise<{ relay: SilentRelay; catalog: pg.Pool }> {
  const relay = await SilentRelay.start(Number(new URL(env.urls.catalog).port));
  relays.push(relay);
  const catalog = await createPool({ url: relay.url(env.urls.catalog) }, undefined, overrides);
  pools.push(catalog);
  return { relay, catalog };
}

describe("the target's connection goes silent while the source is fenced", () => {
  it('gives the fence up within a bound of its budget, so writes to the unit are not held until the function is killed', async () => {
    const slot = 630;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const { relay, pool: relayed } = await relayedPool(env.urls.shards[to] as string, 1);
    const mover = env.mover({
      shards: new Map([
        [from, source],
        [to, relayed],
      ]),
      fenceBudgetMs: 1000,
      fenceSlackMs: FENCE_SLACK_MS,
      hook: (point) => {
        if (point === 'fenced') relay.blackhole();
      },
    });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    let fencedAt = 0;
    const run = settle(mover.run(planned.id, { until: Date.now() + 60_000 }));
    for (let i = 0; i < 400 && fencedAt === 0; i++) {
      if ((await fenceState(source, slot)) === 'fenced') fencedAt = Date.now();
      else await delay(25);
    }
    expect(fencedAt).toBeGreaterThan(0);

    // Within ten budgets: polled, the checks below made as soon as both hold (or at the ten budgets' end).
    let state = await fenceState(source, slot);
    let outcome = await Promise.race([run, delay(10).then(() => 'still running')]);
    while ((state !== 'open' || outcome === 'still running') && Date.now() - fencedAt < 10_000) {
      await delay(50);
      state = await fenceState(source, slot);
      outcome = await Promise.race([run, delay(10).then(() => 'still running')]);
    }

    expect({ state, outcome }).toEqual({ state: 'open', outcome: expect.stringMatching(/^(threw|ended)/) as unknown as string });
    await relay.stop();
    await Promise.race([run, delay(5000)]);
    // Resumed over a healthy connection, the move finishes.
    expect((await env.mover().run(planned.id)).state).toBe('done');
  }, 60_000);
});

async function runUntilSilent(slot: number, side: 'source' | 'target', how: 'blackhole' | 'failOver'): Promise<{ outcome: string; planned: number }> {
  const { from, to, source, target } = await sides(env, slot);
  await seedUsers(source, slot, keysInSlot(slot, 3), 2);
  const relayed = await relayedPool(env.urls.shards[side === 'source' ? from : to] as string);
  const mover = env.mover({
    shards: new Map([
      [from, side === 'source' ? relayed.pool : source],
      [to, side === 'target' ? relayed.pool : target],
    ]),
    fenceBudgetMs: 1000,
    fenceSlackMs: FENCE_SLACK_MS,
    hook: (point) => {
      if (point === 'fenced') relayed.relay[how]();
    },
  });
  const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
  const run = settle(mover.run(planned.id, { until: Date.now() + 60_000 }));
  let fenced = false;
  for (let i = 0; i < 400 && !fenced; i++) {
    if ((await fenceState(source, slot)) === 'fenced') fenced = true;
    else await delay(25);
  }
  expect(fenced).toBe(true);
  // Fifteen budgets later (the budget, its slack, and the unfence's own bound).
  const ran = await Promise.race([run, delay(15_000).then(() => 'still running 15 s after the fence')]);
  const outcome = `${ran} (source fence ${(await fenceState(source, slot)) ?? '-'})`;
  await relayed.relay.stop();
  await Promise.race([run, delay(5000)]);
  return { outcome, planned: planned.id };
}

describe('a shard silent while the source is fenced: the run ends', () => {
  it("ends the run when the source's path goes silent under the fence (its unfence must not wait for ever)", async () => {
    const { outcome } = await runUntilSilent(631, 'source', 'blackhole');
    expect(outcome).toMatch(/^(threw|ended)/);
  }, 60_000);

  it('ends the run when the target fails over under the fence (a new connection to the old address never completes)', async () => {
    const { outcome } = await runUntilSilent(632, 'target', 'failOver');
    expect(outcome).toMatch(/^(threw|ended).*\(source fence open\)$/);
  }, 60_000);
});

/**
 * The source's connection goes silent (a black-holed path: the server sees no reset) just as
 * the mover sends the statement that fences the unit: the server runs it and waits, idle in
 * transaction, for a commit that never comes, with the unit's fence row locked. The mover gives
 * the connection up on its side (the tests above); the server does not, and
 * every write to the unit waits on that row lock for as long as the server keeps the session.
 */
describe("the source goes silent inside the mover's fence transaction", () => {
  it('lets writes to the unit through again within about a lease TTL', async () => {
    const slot = 670;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    const { relay, pool: relayed } = await relayedPool(env.urls.shards[from] as string, 2);
    const mover = env.mover({
      shards: new Map([
        [from, relayed],
        [to, target],
      ]),
      fenceBudgetMs: 1000,
      fenceSlackMs: FENCE_SLACK_MS,
      leaseTtlMs: 1500,
    });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    relay.blackholeAfter("set state = 'fenced'");
    const run = settle(mover.run(planned.id, { until: Date.now() + 20_000, abandonAt: Date.now() + 25_000 }));
    let locked = false;
    for (let i = 0; i < 300 && !locked; i++) {
      const { rows } = await source.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity where state = 'idle in transaction' and query like '%set state = ''fenced''%'`);
      locked = (rows[0]?.n ?? 0) > 0;
      if (!locked) await delay(50);
    }
    expect(locked).toBe(true);
    const lockedAt = Date.now();

    let written: number | 'never' = 'never';
    while (Date.now() - lockedAt < 9000) {
      const ok = await env.writer.withShardWrite(user, ({ client }) => client.query(`update users set display_name = 'after the silence' where id = $1`, [user]), { deadlineMs: 1000 }).then(
        () => true,
        () => false,
      );
      if (ok) {
        written = Date.now() - lockedAt;
        break;
      }
    }

    expect(written === 'never' ? 'no write got through in 9 s' : written < 5000).toBe(true);
    await relay.stop();
    await Promise.race([run, delay(5000)]);
  }, 45_000);
});

/**
 * A shard goes silent (no reset: a black-holed path, the old address of a failed-over instance)
 * while a move copies, with no fence held. The run's catalog connection is healthy and renews
 * its lease, so no other run may take the job over while this one waits. The moves function
 * promises that an invocation ends normally, its leases given back, before the function's
 * timeout (a run stops at a safe point from its `until`): a run waiting on a silent shard must be
 * over by its `abandonAt`, not wait until the process is killed.
 */
describe('a shard goes silent during the copy (no fence held)', () => {
  it("ends the run by its abandonAt and gives the job up, so the next run takes it over", async () => {
    const slot = 640;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 40), 5);
    const { relay, pool: relayed } = await relayedPool(env.urls.shards[to] as string, 2);
    const mover = env.mover({
      shards: new Map([
        [from, source],
        [to, relayed],
      ]),
      copyBatchRows: 20,
      leaseTtlMs: 1500,
      hook: (point) => {
        if (point === 'copying') relay.blackhole();
      },
    });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // As the moves function passes them, shortened: stop at a safe point from `until`, be over by `abandonAt`.
    const until = Date.now() + 2000;
    const abandonAt = until + 2000;
    const run = mover.run(planned.id, { until, abandonAt }).then(
      (j) => `ended: ${j.state}`,
      (e: Error) => `threw: ${e.name}`,
    );

    const outcome = await Promise.race([run, delay(4000 + 3000).then(() => 'still running')]);
    const takeover = await env
      .mover()
      .run(planned.id)
      .then(
        (j) => j.state,
        (e: unknown) => (e instanceof MoveBusyError ? 'busy: the silent run still holds the job' : `threw: ${String(e)}`),
      );

    expect({ outcome, takeover }).toEqual({ outcome: expect.stringMatching(/^(threw|ended)/) as unknown as string, takeover: 'done' });
  }, 40_000);
});

/**
 * A shard connection of a move run goes silent (a black-holed path: the server sees no reset)
 * in the middle of one of the run's write transactions on that shard. The server keeps the
 * transaction open, idle, for as long as it keeps the session, holding the run's permit there;
 * the run that takes the job over waits for the permit at most PERMIT_CLAIM_WAIT_MS and fails,
 * at every tick, until the server drops that session.
 */
describe("a shard goes silent inside one of the mover's transactions", () => {
  it.each([
    { at: 'between two statements of a copy page', slot: 660, after: 'delete from users where', waiting: 'delete from users where%' },
    { at: "in a copy page's COPY FROM STDIN", slot: 661, after: 'from stdin', waiting: 'copy users%' },
  ])('$at: lets the next run claim the job on that shard once the silent run has lost its lease, and finish the move', async ({ slot, after, waiting }) => {
    const { from, to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 5), 2);
    const { relay, pool: relayed } = await relayedPool(env.urls.shards[to] as string, 2);
    const silent = env.mover({
      shards: new Map([
        [from, source],
        [to, relayed],
      ]),
      leaseTtlMs: 1500,
    });
    const planned = await silent.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // The copy's first page on the target: the statement runs, its answer never comes back.
    relay.blackholeAfter(after);
    const run = settle(silent.run(planned.id, { until: Date.now() + 1000, abandonAt: Date.now() + 2000 }));
    let seen = false;
    for (let i = 0; i < 200 && !seen; i++) {
      const { rows } = await target.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity where state <> 'idle' and query like $1 and pid <> pg_backend_pid()`, [waiting]);
      seen = (rows[0]?.n ?? 0) > 0;
      if (!seen) await delay(50);
    }
    expect(seen).toBe(true);
    await Promise.race([run, delay(5000)]);
    await waitForLeaseLapsed(env.catalog, planned.id);

    const takeover = await takeOver(planned.id, 15_000, 'still waiting');
    const rows = { source: await countSlot(source, slot), target: await countSlot(target, slot) };

    expect({ takeover, rows }).toEqual({ takeover: 'done', rows: { source: { users: 0, documents: 0 }, target: { users: 5, documents: 10 } } });
  }, 45_000);
});

/**
 * The moves worker's catalog connection goes silent (a black-holed path, a failed-over
 * catalog's old address) inside the flip: the flip's transaction has locked the job row and
 * published the new map version, and its next statement's answer never comes. The server keeps
 * that transaction open, idle, for as long as it keeps the session: the job row stays locked, so
 * no other run can claim the job once the silent run's lease has lapsed, and the source stays
 * fenced (writes to the unit wait) all that time.
 */
describe('the catalog goes silent inside the flip', () => {
  it('lets another run take the job over once the silent run has lost its lease, and finish the move', async () => {
    const slot = 650;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 5), 2);
    // The moves function's catalog pool (one connection, its query timeout, keepalive).
    const { relay, catalog } = await relayedCatalog();
    const silent = new Mover({ catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, leaseTtlMs: 1500, readerGraceMs: 100 });
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    relay.blackholeAfter('flip_started_at = clock_timestamp()');
    const run = settle(silent.run(planned.id));
    // Wait for the flip's statement to have been sent, then for its lease to lapse.
    for (let i = 0; i < 200; i++) {
      const { rows } = await env.catalog.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity where state = 'idle in transaction' and query like '%flip_started_at = clock_timestamp()%'`);
      if ((rows[0]?.n ?? 0) > 0) break;
      await delay(50);
    }
    await waitForLeaseLapsed(env.catalog, planned.id); // its renewals went to the silent path, none can land late

    const takeover = await takeOver(planned.id, 12_000, 'still waiting for the job row');
    const rows = { source: await countSlot(source, slot), target: await countSlot(target, slot) };

    expect({ takeover, rows }).toEqual({ takeover: 'done', rows: { source: { users: 0, documents: 0 }, target: { users: 5, documents: 10 } } });
    await relay.stop();
    await Promise.race([run, delay(5000)]);
  }, 45_000);
});

/**
 * The moves worker's catalog connection goes silent during the copy. With the Lambda pool
 * settings the client's `query_timeout` ends each catalog statement (the server cannot answer
 * it), and the run fails, resumable. The connection must not go back to the pool as it is: its
 * unanswered statement stays at the head of its queue, so every later statement on it (the
 * next invocation's, in a warm container whose pool holds one connection) waits its own
 * query timeout and fails, even once new connections work again.
 */
describe('the catalog goes silent under a move run (Lambda pool settings)', () => {
  it('ends the run, and the next run on the same pool finishes the move once the catalog answers again', async () => {
    const slot = 680;
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 5), 2);
    // The moves function's catalog pool, its query timeout shortened from 12 s.
    const { relay, catalog } = await relayedCatalog({ query_timeout: 1500 });
    const mover = (hook?: () => void): Mover =>
      new Mover({ catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, leaseTtlMs: 1500, readerGraceMs: 100, ...(hook ? { hook: (point) => (point === 'copied' ? hook() : undefined) } : {}) });
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const first = await Promise.race([
      mover(() => relay.blackhole())
        .run(planned.id)
        .then(
          (j) => `ended: ${j.state}`,
          (e: Error) => `threw: ${e.message}`,
        ),
      delay(15_000).then(() => 'still running'),
    ]);
    relay.heal(); // the catalog answers new connections again (a failover finished)
    await waitForLeaseLapsed(env.catalog, planned.id); // its renewals went to the silent path, none can land late

    const next = await mover()
      .run(planned.id)
      .then(
        (j) => j.state,
        (e: Error) => `threw: ${e.message}`,
      );

    expect({ first: first.startsWith('threw'), next }).toEqual({ first: true, next: 'done' });
  }, 45_000);
});

/**
 * The moves worker's catalog connection goes silent in the cutover, after the source is fenced
 * and before the flip's statement is sent (the final catch-up, the `drained` transition, the
 * verification's record). No flip can have been published (it was never sent), so the fence must
 * be given back within a bound of its budget, as when a shard goes silent: with the Lambda pool's
 * `query_timeout` (12 s) each catalog statement would hold it that long, and a run that can no
 * longer read its job back must not leave the fence to the next run.
 */
describe('the catalog goes silent under the fence, before the flip (Lambda pool settings)', () => {
  it.each([
    { at: 'as the fence is taken', slot: 690, point: 'fenced' as const },
    { at: 'as the verification starts', slot: 691, point: 'verifying' as const },
  ])('$at: gives the fence back within a bound of its budget, and the job resumes', async ({ slot, point }) => {
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 5), 2);
    // The moves function's catalog pool, as it is (one connection, a 12 s query timeout).
    const { relay, catalog } = await relayedCatalog();
    let fencedAt = 0;
    const silent = new Mover({
      catalog,
      shards: env.shards,
      slotMaps: env.slotMaps,
      directory: env.directory,
      leaseTtlMs: 1500,
      readerGraceMs: 100,
      fenceBudgetMs: 1000,
      fenceSlackMs: FENCE_SLACK_MS,
      hook: (p) => {
        if (p === 'fenced') fencedAt = Date.now();
        if (p === point) relay.blackhole();
      },
    });
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const run = settle(silent.run(planned.id));
    for (let i = 0; i < 400 && fencedAt === 0; i++) await delay(25);
    expect(fencedAt).toBeGreaterThan(0);
    const heldMs = await fenceHeldMs(source, slot, fencedAt, 30_000);
    const outcome = await Promise.race([run, delay(10).then(() => 'still running')]);

    // The budget, the slack, and the unfence's own bound at most.
    expect({ held: heldMs >= 0 && heldMs < 1000 + FENCE_SLACK_MS + 2000 ? 'within its bound' : `${heldMs < 0 ? 'over 30 s' : `${heldMs} ms`}`, outcome }).toEqual({
      held: 'within its bound',
      outcome: expect.stringMatching(/^(threw|ended)/) as unknown as string,
    });
    await relay.stop();
    await Promise.race([run, delay(15_000)]);
    await waitForLeaseLapsed(env.catalog, planned.id); // its renewals went to the silent path, none can land late
    expect(await takeOver(planned.id, 20_000, 'stuck')).toBe('done');
    expect(await countSlot(target, slot)).toEqual({ users: 5, documents: 10 });
  }, 90_000);
});

/**
 * The moves function's own wiring: the handler passes its run an `abandonAt` 20 s before the
 * function's timeout (ABANDON_BEFORE_TIMEOUT_MS), and a run waiting on a silent shard (no safe
 * point reached, so its `until` never stops it) must be over by then. An invocation with a little
 * over two minutes left: `until` 5 s away, `abandonAt` 105 s away, the timeout 125 s away.
 */
describe('the moves handler near its timeout with a shard gone silent during the copy', () => {
  it('returns before the function times out, and leaves the job for the next run to finish', async () => {
    const slot = 692;
    const { from, to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 40), 5);
    const { relay, pool: relayed } = await relayedPool(env.urls.shards[to] as string, 2);
    const options: MoverOptions = {
      catalog: env.catalog,
      slotMaps: env.slotMaps,
      directory: env.directory,
      readerGraceMs: 100,
      shards: new Map([
        [from, source],
        [to, relayed],
      ]),
      copyBatchRows: 20,
      leaseTtlMs: 1500,
      hook: (point) => {
        if (point === 'copying') relay.blackhole();
      },
    };
    const planned = await env.mover(options).plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // The worker runs every unfinished job; the other tests of this file leave some behind.
    const mover = new (class extends Mover {
      override async unfinished(): Promise<MoveJob[]> {
        return (await super.unfinished()).filter((j) => j.id === planned.id);
      }
    })(options);
    // The handler's margins scaled from minutes to seconds (stop 120 s and abandon 20 s before the
    // timeout): the wiring from the context's remaining time to the run's abandonAt is the same.
    // `until` 2 s away, `abandonAt` 4 s away: the run must end at the latter.
    const margins = { stopBeforeTimeoutMs: 4000, abandonBeforeTimeoutMs: 2000 };
    const timeoutMs = 6000;
    const out: { result: MovesResult | 'timed out'; tookMs: number } = { result: 'timed out', tookMs: 0 };
    await withMovesHandler(
      env,
      async (handler) => {
        const started = Date.now();
        const ends = started + timeoutMs;
        const context = { ...lambdaContext, getRemainingTimeInMillis: () => Math.max(0, ends - Date.now()) };
        out.result = await Promise.race([handler(tick, context), delay(timeoutMs).then(() => 'timed out' as const)]);
        out.tookMs = Date.now() - started;
      },
      { mover, margins },
    );

    const { result, tookMs } = out;
    expect({ result: result === 'timed out' ? result : { ran: result.ran, failed: result.failed.map((f) => f.id) }, beforeTimeout: tookMs < timeoutMs }).toEqual({
      result: { ran: [], failed: [planned.id] },
      beforeTimeout: true,
    });
    // Abandoned at its abandonAt, not at its until (no safe point came) nor at once.
    expect(tookMs).toBeGreaterThan(timeoutMs - margins.abandonBeforeTimeoutMs - 1000);
    await relay.stop();
    await waitForLeaseLapsed(env.catalog, planned.id); // if it was not given back
    expect(await takeOver(planned.id, 20_000, 'stuck')).toBe('done');
    expect(await countSlot(target, slot)).toEqual({ users: 40, documents: 200 });
  }, 60_000);
});

/**
 * One idle pooled connection's path goes silent (a black-holed path, a failed-over instance's old
 * address reached through a connection opened before the failover) while new connections work.
 * The pool cannot tell: it lends that connection to the next run. The run must end by its bound
 * (a shard: its abandonAt; the catalog: the Lambda pool's query timeout), and the connection must
 * not be lent again: the next run, on the same pools, finishes the move.
 */
describe('one idle pooled connection goes silent, new connections work', () => {
  it("a shard pool's (the moves function's two connections per shard): the run ends by its abandonAt, and the next run on the same pool finishes", async () => {
    const slot = 693;
    const { from, to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 5), 2);
    const { relay, pool: relayed } = await relayedPool(env.urls.shards[to] as string, 2);
    await relayed.query('select 1'); // one connection, idle in the pool
    const shards = new Map([
      [from, source],
      [to, relayed],
    ]);
    const planned = await env.mover({ shards }).plan({ kind: 'slot', slot, to, createdBy: 'test' });
    relay.blackholeOpen();
    const started = Date.now();
    const first = await Promise.race([settle(env.mover({ shards, leaseTtlMs: 1500 }).run(planned.id, { until: started + 2000, abandonAt: started + 4000 })), delay(10_000).then(() => 'still running')]);
    const tookMs = Date.now() - started;
    await waitForLeaseLapsed(env.catalog, planned.id); // if it was not given back

    const next = await Promise.race([settle(env.mover({ shards }).run(planned.id)), delay(15_000).then(() => 'still running')]);

    expect({ first: first.startsWith('threw'), byAbandonAt: tookMs < 4000 + 1500, next }).toEqual({ first: true, byAbandonAt: true, next: 'ended: done' });
    expect(await countSlot(target, slot)).toEqual({ users: 5, documents: 10 });
  }, 45_000);

  it("the catalog's Lambda pool of one: the run fails by the pool's query timeout, and the next run on the same pool finishes", async () => {
    const slot = 694;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 5), 2);
    // The moves function's catalog pool (one connection), its query timeout shortened from 12 s.
    const queryTimeoutMs = 3000;
    const { relay, catalog } = await relayedCatalog({ query_timeout: queryTimeoutMs });
    await catalog.query('select 1'); // its one connection, idle in the pool (a warm container)
    const mover = (): Mover => new Mover({ catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, leaseTtlMs: 1500, readerGraceMs: 100 });
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    relay.blackholeOpen();
    const started = Date.now();
    const first = await Promise.race([settle(mover().run(planned.id)), delay(20_000).then(() => 'still running')]);
    const tookMs = Date.now() - started;

    const next = await Promise.race([settle(mover().run(planned.id)), delay(15_000).then(() => 'still running')]);

    expect({ first: first.startsWith('threw'), byQueryTimeout: tookMs < queryTimeoutMs + 2000, next }).toEqual({ first: true, byQueryTimeout: true, next: 'ended: done' });
    expect(await countSlot(target, slot)).toEqual({ users: 5, documents: 10 });
  }, 60_000);
});

/**
 * The catalog answers, but an operator's lock on the jobs table holds the run's next catalog
 * statement under the fence (longer than the budget and its slack). The statement is cancelled at
 * the budget's end (moves-fence-catalog-budget.test.ts) and the fence given back; the run ends once
 * the lock goes (its error is recorded then), and the next run, on the same pool of one, finishes
 * the move.
 */
describe('the catalog is slow under the fence: a lock holds the run (Lambda pool settings)', () => {
  it('gives the fence back within its bound, and the next run on the same pool finishes', async () => {
    const slot = 695;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 5), 2);
    const catalog = await createPool({ url: env.urls.catalog }, undefined);
    pools.push(catalog);
    const locker = await env.catalog.connect();
    let fencedAt = 0;
    let unlock: Promise<unknown> = Promise.resolve();
    // The held run waits out the shortened slack; the next one (no hook), which must finish, keeps the production slack.
    const mover = (hook?: MoverOptions['hook']): Mover =>
      new Mover({ catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, leaseTtlMs: 1500, readerGraceMs: 100, fenceBudgetMs: 1000, ...(hook ? { hook, fenceSlackMs: FENCE_SLACK_MS } : {}) });
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const run = settle(
      mover(async (p) => {
        if (p !== 'fenced') return;
        fencedAt = Date.now();
        await locker.query('begin');
        await locker.query('lock table catalog.move_jobs in exclusive mode');
        // Past the fence's bound below (the budget, the slack, 2 s): the fence is given back while the lock holds.
        unlock = delay(1000 + FENCE_SLACK_MS + 3000).then(() => locker.query('rollback'));
      }).run(planned.id),
    );
    for (let i = 0; i < 400 && fencedAt === 0; i++) await delay(25);
    const heldMs = await fenceHeldMs(source, slot, fencedAt, 20_000);
    await unlock;
    locker.release();
    const first = await Promise.race([run, delay(3000).then(() => 'still running')]);
    await delay(1600); // its lease has lapsed (a renewal that waited on the lock may land after the run ended: a fixed TTL)
    const next = await Promise.race([settle(mover().run(planned.id)), delay(20_000).then(() => 'still running')]);

    expect({ held: heldMs >= 0 && heldMs < 1000 + FENCE_SLACK_MS + 2000 ? 'within its bound' : `${heldMs} ms`, first: first.startsWith('threw'), next, total: catalog.totalCount }).toEqual({
      held: 'within its bound',
      first: true,
      next: 'ended: done',
      total: 1,
    });
    expect(await countSlot(target, slot)).toEqual({ users: 5, documents: 10 });
  }, 60_000);
});

/**
 * The run's first fence attempt gives up in the flip (a lock on the map outlasts the budget: the
 * flip was sent, and rolled back), its second goes silent under the fence before any flip. That
 * first flip cannot have committed (the server cancelled it, and its transaction rolled back),
 * so it must not keep the second attempt from giving its fence back.
 */
describe('the catalog goes silent under the fence after an earlier attempt gave its flip up (Lambda pool settings)', () => {
  it('gives the second fence back within a bound of its budget, and the job resumes', async () => {
    const slot = 696;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 5), 2);
    const { relay, catalog } = await relayedCatalog();
    const locker = await env.catalog.connect();
    let fences = 0;
    let fencedAt = 0;
    let unlock: Promise<unknown> = Promise.resolve();
    const silent = new Mover({
      catalog,
      shards: env.shards,
      slotMaps: env.slotMaps,
      directory: env.directory,
      leaseTtlMs: 1500,
      readerGraceMs: 100,
      fenceBudgetMs: 1000,
      fenceSlackMs: FENCE_SLACK_MS,
      fenceAttempts: 2,
      fenceRetryPauseMs: 100,
      hook: async (p) => {
        if (p === 'verifying' && fences === 1) {
          // The first attempt's flip reads the map, then its publication waits past the budget:
          // over budget, rolled back.
          await locker.query('begin');
          await locker.query('lock table catalog.slot_maps in share mode');
          unlock = delay(1500).then(() => locker.query('rollback'));
        }
        if (p !== 'fenced') return;
        fences += 1;
        if (fences === 2) {
          fencedAt = Date.now();
          relay.blackhole();
        }
      },
    });
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const run = settle(silent.run(planned.id));
    for (let i = 0; i < 800 && fencedAt === 0; i++) await delay(25);
    expect(fencedAt).toBeGreaterThan(0);
    const heldMs = await fenceHeldMs(source, slot, fencedAt, 30_000);
    await unlock;
    locker.release();

    // The budget, the slack, and the unfence's own bound at most.
    expect({ held: heldMs >= 0 && heldMs < 1000 + FENCE_SLACK_MS + 2000 ? 'within its bound' : `${heldMs < 0 ? 'over 30 s' : `${heldMs} ms`}` }).toEqual({ held: 'within its bound' });
    await relay.stop();
    await Promise.race([run, delay(15_000)]);
    await waitForLeaseLapsed(env.catalog, planned.id); // its renewals went to the silent path, none can land late
    expect(await takeOver(planned.id, 20_000, 'stuck')).toBe('done');
    expect(await countSlot(target, slot)).toEqual({ users: 5, documents: 10 });
  }, 90_000);
});

/**
 * A cancelled move is rolled back while its source goes silent. The rollback asks the source's
 * fence row whether a flip the catalog lost was released forward there; that question is put
 * before the decision's catalog transaction, bounded as giving the fence up is (the 5 s slack):
 * asked inside it, a silent source held the job row locked (and the run) until the run's abandon
 * time, and an operator's cancellation request or another run's claim waited on it.
 */
describe('the source goes silent as a cancelled move is rolled back', () => {
  it('keeps the job row unlocked meanwhile, and ends the run within the bound of giving the fence up', async () => {
    const slot = 697;
    const { from, to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 4), 3);
    const jobId = await cancelledInCopy(env, slot, to);
    const { relay, pool: relayed } = await relayedPool(env.urls.shards[from] as string, 1);
    // The run's first checkout of the source is its permit claim; from its second on (the rollback's) the path is silent.
    let checkouts = 0;
    let silentAt = 0;
    const silentAfterClaim = new Proxy(relayed, {
      get(t, prop, receiver): unknown {
        if (prop === 'connect') {
          return (...args: unknown[]): unknown => {
            if (++checkouts === 2) {
              relay.blackhole();
              silentAt = Date.now();
            }
            return (t.connect as (...a: unknown[]) => unknown).apply(t, args);
          };
        }
        return Reflect.get(t, prop, receiver) as unknown;
      },
    });
    const abandonAt = Date.now() + 25_000;
    const run = settle(env.mover({ shards: new Map([[from, silentAfterClaim], [to, target]]), fenceSlackMs: FENCE_SLACK_MS }).run(jobId, { abandonAt }));
    for (let i = 0; i < 400 && silentAt === 0; i++) await delay(25);
    expect(silentAt).toBeGreaterThan(0);
    await delay(500);
    // An operator asks again (the scaling API's DELETE): answered, not held behind the silent source.
    const asked = await Promise.race([env.mover().requestCancel(jobId).then(() => 'answered', (e: Error) => `threw: ${e.message}`), delay(3000).then(() => 'waits on the job row')]);
    const outcome = await Promise.race([run, delay(9000).then(() => 'still running')]);

    // Before: the check waited inside the decision's transaction until the abandon time (25 s),
    // the job row locked all along.
    expect({ asked, outcome }).toEqual({ asked: 'answered', outcome: expect.stringMatching(/^threw/) as unknown as string });
    await Promise.race([run, delay(25_000)]);
    expect((await env.mover().run(jobId)).state).toBe('cancelled');
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(source, slot)).toEqual({ users: 4, documents: 12 });
  }, 90_000);
});

describe('the fence slack a run is given', () => {
  it('refuses a fenceSlackMs that is not a whole number of ms of at least 500, naming it', async () => {
    await expect(env.mover({ fenceSlackMs: 0 }).run(999_999)).rejects.toThrow(/fenceSlackMs must be a whole number of ms, at least 500 \(got 0\)/);
    await expect(env.mover({ fenceSlackMs: 1500.5 }).run(999_999)).rejects.toThrow(/fenceSlackMs must be/);
  });
});
