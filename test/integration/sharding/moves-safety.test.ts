import '../../support/quiet-powertools.js';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import type { MoveRequestError } from '../../../functions/adapters/postgres/mover.js';
import { MoveFenceTimeoutError } from '../../../functions/adapters/postgres/mover.js';
import { STOP_BEFORE_TIMEOUT_MS } from '../../../functions/handlers/moves.js';
import { countSlot, fenceState, keysInSlot, publishPastOwnerGuard, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { lambdaContext, tick, withMovesHandler } from './fixtures/moves-handler.js';
import { insertFenceRows, readFenceVectors } from './fixtures/fence-rows.js';

/** A raw SQL write (another language's writer, no withShardWrite): resolves to its SQLSTATE, or 'ok'. */
async function rawInsert(pool: pg.Pool, owner: string, slot: number): Promise<string> {
  return pool.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'raw writer')`, [owner, slot]).then(
    () => 'ok',
    (err: { code?: string }) => err.code ?? 'error',
  );
}

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

describe('moves that hold under hostile conditions', () => {
  it('runs a move through the moves handler with the Lambda pool settings (one catalog connection, one per shard)', async () => {
    const slot = 400;
    const { to, target } = await sides(env, slot);
    await seedUsers((await sides(env, slot)).source, slot, keysInSlot(slot, 5), 4);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await withMovesHandler(env, async (handler, catalog) => {
      const result = await handler(tick, lambdaContext);

      expect(catalog.options.max).toBe(1);
      expect(result.failed).toEqual([]);
      expect(result.ran).toContainEqual({ id: planned.id, state: 'done' });
      expect(await countSlot(target, slot)).toEqual({ users: 5, documents: 20 });
    });
  });

  it('runs a directory move through the moves handler with the Lambda pool settings too (its checks of the key under other slots at preparation and under the fence beside the summaries)', async () => {
    const slot = 420;
    const { from, to, source, target } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 3);
    await env.directory.set(key, from, 'test');
    const planned = await env.mover().plan({ kind: 'directory', key: key.toUpperCase(), to, createdBy: 'test' });
    await withMovesHandler(env, async (handler, catalog) => {
      const result = await handler(tick, lambdaContext);

      expect(catalog.options.max).toBe(1);
      expect(result.failed).toEqual([]);
      expect(result.ran).toContainEqual({ id: planned.id, state: 'done' });
      const { rows } = await target.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [key]);
      expect(rows[0]?.n).toBe(3);
    });
  });

  it('stops an invocation near its timeout before it starts a job, and the next invocation runs it', async () => {
    const slot = 411;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 3), 2);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await withMovesHandler(env, async (handler) => {
      const nearTimeout = await handler(tick, { ...lambdaContext, getRemainingTimeInMillis: () => STOP_BEFORE_TIMEOUT_MS - 1 });
      expect(nearTimeout).toEqual({ accepted: true, ran: [], busy: [], failed: [] });
      expect((await env.mover().get(planned.id)).state).toBe('planned');
      const next = await handler(tick, lambdaContext);
      expect(next.ran).toContainEqual({ id: planned.id, state: 'done' });
      expect(await countSlot(target, slot)).toEqual({ users: 3, documents: 6 });
    });
  });

  it('stops a run whose time is up at its next safe point, with no error, and the next run finishes the move', async () => {
    const slot = 412;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 4), 3);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // The run looks at the clock when it starts, before each step and before each copy page: the
    // time is up at its fifth look, after the users' page (at the start, before planned, before
    // copying, before the users' page), so it stops inside the copy step, before the documents'
    // first page.
    const until = Date.now() + 60_000;
    let looks = 0;
    const wallClock = (): number => (++looks >= 5 ? until : until - 1);
    const paused = await env.mover({ wallClock }).run(planned.id, { until });
    expect(paused.state).toBe('copying');
    expect(paused.error).toBeNull();
    expect(paused.rowsCopied).toBe(4);
    expect(await countSlot(target, slot)).toEqual({ users: 4, documents: 0 });
    // A run whose time is already up at the start changes nothing.
    expect((await env.mover().run(planned.id, { until: Date.now() - 1 })).state).toBe('copying');
    const done = await env.mover().run(planned.id);
    expect(done.state).toBe('done');
    expect(await countSlot(target, slot)).toEqual({ users: 4, documents: 12 });
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
    await expect(env.mover().run(planned.id, { until: Number.NaN })).rejects.toThrow(/until must be a time/);
  });

  it('gives the fence up within its budget when a reader holds share locks, leaves writes flowing, and finishes on a later run', async () => {
    const slot = 401;
    const { from, to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 3);
    const reader = new pg.Client({ connectionString: env.urls.shards[from] });
    await reader.connect();
    const mover = env.mover({
      readerGraceMs: 0,
      fenceBudgetMs: 200,
      fenceAttempts: 2,
      fenceRetryPauseMs: 10,
      async hook(point) {
        if (point !== 'cutover') return;
        await reader.query('begin');
        await reader.query(`select * from write_fences where kind = 'slot' and unit_id = $1 for share`, [String(slot)]);
      },
    });
    try {
      const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
      const run = await mover.run(planned.id).catch((e: unknown) => e);
      const stopped = await mover.get(planned.id);
      const stateWhileReading = await fenceState(source, slot);
      const rawWhileReading = await rawInsert(source, user, slot);
      await reader.query('commit');
      const done = await env.mover({ readerGraceMs: 0 }).run(planned.id);

      expect(run).toBeInstanceOf(MoveFenceTimeoutError);
      expect(stopped).toMatchObject({ state: 'catching_up', fenceTimeouts: 2 });
      expect(stopped.error).toMatch(/not held within its budget \(attempt 2 of 2\); writes were released/);
      expect(stateWhileReading).toBe('open');
      expect(rawWhileReading).toBe('ok');
      expect(done.state).toBe('done');
      expect(await countSlot(env.shards.get(to) as pg.Pool, slot)).toEqual({ users: 1, documents: 4 });
    } finally {
      await reader.end();
    }
  });

  it('gives the fence up when the verification would keep writes blocked past the budget, lets writes through, and publishes on the next attempt', async () => {
    const slot = 407;
    const { from, to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 3);
    // The budget's clock is moved on while the unit is fenced, as if the verification were slow.
    let skew = 0;
    let fenced = 0;
    const seen: { state?: string; write?: string; timeouts?: number }[] = [];
    const mover = env.mover({
      readerGraceMs: 0,
      fenceBudgetMs: 2000,
      fenceRetryPauseMs: 10,
      clock: () => performance.now() + skew,
      async hook(point, job) {
        if (point === 'verifying' && fenced++ === 0) skew += 2001;
        if (point === 'cutover' && fenced === 1) {
          const now = await mover.get(job.id);
          seen.push({ state: await fenceState(source, slot), write: await rawInsert(source, user, slot), timeouts: now.fenceTimeouts });
        }
      },
    });

    const done = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    // Back in the cutover after giving up: the fence was open again and a raw write went through.
    expect(seen).toEqual([{ state: 'open', write: 'ok', timeouts: 1 }]);
    expect(done).toMatchObject({ state: 'done', fenceTimeouts: 1 });
    expect(await countSlot(env.shards.get(to) as pg.Pool, slot)).toEqual({ users: 1, documents: 4 });
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
    expect(from).not.toBe(to);
  });

  it('refuses a rollback that would delete the copy the catalog names as the owner: the cancel is refused and the move finishes there', async () => {
    const slot = 402;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 4), 5);
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point, job) {
        if (point !== 'verifying') return;
        // Another publisher names the target as the owner, and a cancellation arrives. Past the
        // catalog's guard (CAF08, sharding migration 013: a slot whose move is unfinished keeps its
        // owner), as a superuser may: this is the move's own defence against such a map.
        await publishPastOwnerGuard(env.catalog, env.slotMaps, moveSlots(await env.slotMaps.current(), [slot], to), 'someone-else', 'manual edit');
        await env.catalog.query('update catalog.move_jobs set cancel_requested = true where id = $1', [job.id]);
      },
    });

    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    const run = await mover.run(planned.id);

    const job = await mover.get(planned.id);
    expect({ run: run.state, state: job.state, cancelRequested: job.cancelRequested }).toEqual({ run: 'done', state: 'done', cancelRequested: false });
    expect(job.error).toMatch(/^cancel refused: the catalog names the target .* deleting its copy would lose data\. The move goes on to finish on /);
    expect(await countSlot(target, slot)).toEqual({ users: 4, documents: 20 });
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
  });

  it('enforces the fence in the database for writers that bypass withShardWrite', async () => {
    const slot = 403;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    const seen: Record<string, string> = {};
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        if (point === 'catching_up') {
          seen.targetWhileCopying = await rawInsert(target, user, slot);
          seen.truncateWhileCapturing = await source.query('truncate documents').then(
            () => 'ok',
            (err: { code?: string }) => err.code ?? 'error',
          );
        }
        if (point === 'fenced') seen.sourceWhileFenced = await rawInsert(source, user, slot);
      },
    });

    await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    seen.sourceAfterMove = await rawInsert(source, user, slot);
    seen.targetAfterMove = await rawInsert(target, user, slot);

    expect(from).not.toBe(to);
    expect(seen).toEqual({ targetWhileCopying: 'CAF01', truncateWhileCapturing: 'CAF03', sourceWhileFenced: 'CAF01', sourceAfterMove: 'CAF02', targetAfterMove: 'ok' });
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(target, slot)).toEqual({ users: 1, documents: 3 });
  });

  it('does not wait for a long read-only transaction (a pg_dump) before copying', async () => {
    const slot = 404;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 2), 2);
    const dump = new pg.Client({ connectionString: env.urls.shards[from] });
    await dump.connect();
    try {
      await dump.query('begin isolation level repeatable read read only');
      await dump.query('select count(*) from documents');
      const mover = env.mover({ readerGraceMs: 0, drainTimeoutMs: 1000 });

      const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

      expect(job.state).toBe('done');
    } finally {
      await dump.end();
    }
  });

  describe('a unit whose fence row exists from an earlier move (writers in flight hold it FOR SHARE)', () => {
    /** A writer of the unit whose transaction stays open (its trigger holds the fence row FOR SHARE). */
    async function openWriter(from: string, owner: string, slot: number): Promise<pg.Client> {
      const writer = new pg.Client({ connectionString: env.urls.shards[from] });
      await writer.connect();
      await writer.query('begin');
      await writer.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'long writer')`, [owner, slot]);
      return writer;
    }

    it('starts the move without queueing new writers behind the writers in flight', async () => {
      const slot = 409;
      const { from, to, source } = await sides(env, slot);
      const [user] = keysInSlot(slot, 1) as [string];
      await seedUsers(source, slot, [user], 3);
      await source.query(`insert into write_fences (kind, unit_id) values ('slot', $1)`, [String(slot)]);
      const writer = await openWriter(from, user, slot);
      const mover = env.mover({ readerGraceMs: 0, drainTimeoutMs: 30_000 });
      const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
      let committed = false;
      try {
        const run = mover.run(planned.id);
        // Either the move's change capture is in place (it is draining: waiting for the open writer
        // without a lock), or the move waits for a lock on the fence row (new writers queue behind it).
        let seen: 'draining' | 'locked' | undefined;
        while (seen === undefined) {
          const { rows } = await source.query<{ draining: boolean; locked: boolean }>(
            `select exists (select 1 from move_captures where job_id = $1) as draining,
                    exists (select 1 from pg_stat_activity where wait_event_type = 'Lock' and query ilike 'update write_fences%') as locked`,
            [planned.id],
          );
          seen = rows[0]?.locked ? 'locked' : rows[0]?.draining ? 'draining' : undefined;
          if (seen === undefined) await new Promise((r) => setTimeout(r, 10));
        }
        const second = await rawInsert(source, user, slot).then((code) => ({ code, whileFirstOpen: !committed }));
        await writer.query('commit');
        committed = true;
        const done = await run;

        expect(seen).toBe('draining');
        expect(second).toEqual({ code: 'ok', whileFirstOpen: true });
        expect(done.state).toBe('done');
        expect(await countSlot(env.shards.get(to) as pg.Pool, slot)).toEqual({ users: 1, documents: 5 });
      } finally {
        if (!committed) await writer.query('commit');
        await writer.end();
      }
    });

    it('gives up within the fence budget when it must change the row\'s excluded keys under a writer that holds it, and starts again later', async () => {
      const slot = 410;
      const { from, to, source } = await sides(env, slot);
      const [user] = keysInSlot(slot, 1) as [string];
      await seedUsers(source, slot, [user], 3);
      // Excluded keys other than the job's (none): the row must be updated, which waits for the writer.
      await source.query(`insert into write_fences (kind, unit_id, excluded_keys) values ('slot', $1, $2)`, [String(slot), ['some-other-key']]);
      const writer = await openWriter(from, user, slot);
      const mover = env.mover({ readerGraceMs: 0, fenceBudgetMs: 200 });
      const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
      let committed = false;
      try {
        const refused = await mover.run(planned.id).catch((err: unknown) => err);
        const stopped = await mover.get(planned.id);
        const whileStopped = await rawInsert(source, user, slot);
        await writer.query('commit');
        committed = true;
        const done = await mover.run(planned.id);

        expect((refused as Error).message).toMatch(/held its fence row past the fence budget \(200 ms\)/);
        expect(stopped.state).toBe('copying');
        expect(whileStopped).toBe('ok');
        expect(done.state).toBe('done');
        expect(await countSlot(env.shards.get(to) as pg.Pool, slot)).toEqual({ users: 1, documents: 5 });
        expect((await source.query(`select excluded_keys from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)])).rows[0]).toEqual({ excluded_keys: [] });
      } finally {
        if (!committed) await writer.query('commit');
        await writer.end();
      }
    });
  });

  it('refuses moves of a unit the configured strategy does not route by, and records nothing', async () => {
    const [key] = keysInSlot(405, 1) as [string];
    const { to } = await sides(env, 405);
    const before = (await env.catalog.query<{ n: number }>('select count(*)::int as n from catalog.move_jobs')).rows[0]?.n;
    const range = env.mover({ routing: { strategy: 'range_based', overrideHash: true, fallback: 'hash' } });
    const hashOnly = env.mover({ routing: { strategy: 'hash_based', overrideHash: false, fallback: 'hash' } });

    const slotUnderRange = await range.plan({ kind: 'slot', slot: 405, to, createdBy: 'test' }).catch((e: unknown) => e as MoveRequestError);
    const keyUnderHashOnly = await hashOnly.plan({ kind: 'directory', key, to, createdBy: 'test' }).catch((e: unknown) => e as MoveRequestError);

    expect(slotUnderRange).toMatchObject({ problem: 'strategy', message: expect.stringMatching(/strategy range_based routes keys by the configured ranges/) });
    expect(keyUnderHashOnly).toMatchObject({ problem: 'strategy', message: expect.stringMatching(/override_hash false/) });
    const after = (await env.catalog.query<{ n: number }>('select count(*)::int as n from catalog.move_jobs')).rows[0]?.n;
    expect(after).toBe(before);
  });

  it('moves a pinned key with its slot when the directory does not override hash routing', async () => {
    const slot = 406;
    const { from, to, source, target } = await sides(env, slot);
    const [pinned] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [pinned], 3);
    await env.directory.set(pinned, from, 'test');
    const mover = env.mover({ readerGraceMs: 0, routing: { strategy: 'hash_based', overrideHash: false, fallback: 'hash' } });

    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);

    expect(job.excludedKeys).toEqual([]);
    expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(target, slot)).toEqual({ users: 1, documents: 3 });
  });

  it('refuses a unit with more rows in a table than one move takes, naming the table and the limit, and records nothing', async () => {
    const slot = 413;
    const { to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(source, slot, keysInSlot(slot, 2), 3);
    const mover = env.mover({ maxUnitRows: 5 });
    const before = await env.catalog.query<{ n: number }>('select count(*)::int as n from catalog.move_jobs');
    const bySlot = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }).catch((e: unknown) => e as MoveRequestError);
    expect(bySlot).toMatchObject({ problem: 'too-large' });
    expect((bySlot as Error).message).toMatch(/slot 413 has 6 rows in documents on shard_[ab]; one move takes at most 5 rows per table/);
    // One user's 3 documents are within the limit.
    const byKey = await mover.plan({ kind: 'directory', key: user.toUpperCase(), to, createdBy: 'test' });
    expect(byKey.state).toBe('planned');
    await mover.cancel(byKey.id);
    expect((await env.mover().run(byKey.id)).state).toBe('cancelled');
    const after = await env.catalog.query<{ n: number }>('select count(*)::int as n from catalog.move_jobs');
    expect(after.rows[0]?.n).toBe((before.rows[0]?.n ?? 0) + 1);
    await expect(env.mover({ maxUnitRows: 0 }).plan({ kind: 'slot', slot, to, createdBy: 'test' })).rejects.toThrow(/maxUnitRows must be/);
  });

  it('refuses a move to the unit\'s own shard or to an unknown shard, naming the problem', async () => {
    const { from } = await sides(env, 407);
    const mover = env.mover();

    const own = await mover.plan({ kind: 'slot', slot: 407, to: from, createdBy: 'test' }).catch((e: unknown) => e);
    const unknown = await mover.plan({ kind: 'slot', slot: 407, to: 'shard_x', createdBy: 'test' }).catch((e: unknown) => e);

    expect(own).toMatchObject({ problem: 'same-shard' });
    expect(unknown).toMatchObject({ problem: 'unknown-shard' });
  });
});

describe('the write-fence contract (docs/fence-test-vectors.json)', () => {
  const vectors = readFenceVectors();
  it('has the key in the slot it names', () => {
    expect(slotOf(vectors.key)).toBe(vectors.slot);
  });

  it.each(vectors.cases)('$name: $outcome', async ({ fences, outcome, isolation }) => {
    const shard = env.shards.get('shard_a') as pg.Pool;
    const client = await shard.connect();
    try {
      expect([undefined, 'repeatable read', 'serializable']).toContain(isolation);
      await client.query(`begin isolation level ${isolation ?? 'read committed'}`);
      // The setup writes as the mover (the test login is a superuser), the case's write as anyone else.
      await client.query("set local ca_dms.move_writer = 'on'");
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'v@example.com', 'vector')`, [vectors.key, vectors.slot]);
      await insertFenceRows(client, fences);
      await client.query("set local ca_dms.move_writer = 'off'");
      const got = await client.query('savepoint w').then(() =>
        client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'vector')`, [vectors.key, vectors.slot]).then(
          () => 'ok',
          (err: { code?: string }) => err.code ?? 'error',
        ),
      );
      expect(got).toBe(outcome);
    } finally {
      await client.query('rollback');
      client.release();
    }
  });
});
