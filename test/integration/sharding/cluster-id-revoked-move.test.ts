import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ensureLogin, MOVER_ROLE } from '../../../functions/adapters/postgres/app-role.js';
import { clusterIdReadableKnown, recheckClusterIdRefusal } from '../../../functions/adapters/postgres/cluster-identity.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import type { MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { fenceState, firstSlotOwnedBy, keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { interceptCheckouts } from './fixtures/pool-checkouts.js';

const SOURCE = 'shard_b';
const TARGET = 'shard_a';
const LOGIN = 'revoked_mover';
const PASSWORD = 'mover pass';

/**
 * The mover reads the source's cluster id in its fence's and its release's own statements (sharding
 * migration 032), once its pool learned the login may (cluster-identity.ts). When the grant goes
 * later (`REVOKE EXECUTE ON FUNCTION pg_control_system() FROM ...`), each of those statements
 * failed with 42501 until the process restarted: every move off the source failed at its fence
 * (nothing fenced: the transaction rolled back), and a move whose grant went between its flip and
 * its release left the unit fenced on the source and `incoming` on the target, the new owner
 * published, every write of the unit refused until a run in a new process released it. Now the
 * refused statement's transaction, rolled back, is sent again once without the id. (h149)
 */
describe("a move off a source whose mover login was refused pg_control_system() after its pool learned it may read it", () => {
  let env: MoveEnv;
  let sourceUrl = '';
  const closers: (() => Promise<void>)[] = [];
  let from = 100;

  /** A pool of the mover login on the source (a fresh one: its answer not known yet), with the env's target. */
  const moverShards = (): { shards: Map<string, pg.Pool>; pool: pg.Pool } => {
    const url = new URL(sourceUrl);
    url.username = LOGIN;
    url.password = PASSWORD;
    const pool = new pg.Pool({ connectionString: url.toString(), max: 6 });
    pool.on('error', () => undefined);
    closers.push(() => pool.end());
    return { shards: new Map([[TARGET, env.shards.get(TARGET) as pg.Pool], [SOURCE, pool]]), pool };
  };
  const revoke = (): Promise<unknown> => withClient(sourceUrl, (c) => c.query('revoke execute on function pg_control_system() from public'));
  /** Moves the next slot of the source to the target with a mover over `shards`; the job's state, or the run's error. */
  const moveOff = async (
    shards: Map<string, pg.Pool>,
    hook?: (point: MoveHookPoint) => Promise<void>,
    options: { readonly fenceBudgetMs?: number; readonly clock?: () => number } = {},
  ): Promise<{ slot: number; owner: string; outcome: string; id: string | null; job: number }> => {
    const slot = await firstSlotOwnedBy(env, SOURCE, from);
    from = slot + 1;
    const [owner] = keysInSlot(slot, 1) as [string];
    await seedUsers(env.shards.get(SOURCE) as pg.Pool, slot, [owner], 1);
    const mover = env.mover({ readerGraceMs: 0, shards, ...(hook === undefined ? {} : { hook }), ...options });
    const job = await mover.plan({ kind: 'slot', slot, to: TARGET, createdBy: 'test' });
    const outcome = await mover.run(job.id).then(
      (j) => `${j.state}${j.error ? `: ${j.error}` : ''}`,
      (e: unknown) => `threw ${(e as { code?: string }).code ?? ''}: ${e instanceof Error ? e.message : String(e)}`,
    );
    const { rows } = await env.catalog.query<{ id: string | null }>('select source_cluster_id as id from catalog.move_jobs where id = $1', [job.id]);
    return { slot, owner, outcome, id: rows[0]?.id ?? null, job: job.id };
  };
  /** A document written for `owner` through the env's writer (its unit's owner now): 'written' or why not. */
  const write = (owner: string): Promise<string> =>
    env.writer
      .withShardWrite(owner, ({ client, slot }) => client.query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'after the move')", [randomUUID(), owner, slot]))
      .then(
        (w) => `written on ${w.shardId}`,
        (e: unknown) => `${(e as { reason?: string; code?: string }).reason ?? (e as { code?: string }).code ?? ''}: ${e instanceof Error ? e.message : String(e)}`,
      );

  beforeAll(async () => {
    env = await startMoveEnv();
    sourceUrl = env.urls.shards[SOURCE] ?? '';
    const admin = new pg.Pool({ connectionString: sourceUrl, max: 1 });
    admin.on('error', () => undefined);
    try {
      await ensureLogin(admin, { username: LOGIN, password: PASSWORD }, { role: MOVER_ROLE });
    } finally {
      await admin.end();
    }
  }, 180_000);
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await withClient(sourceUrl, (c) => c.query('grant execute on function pg_control_system() to public'));
  });
  afterAll(async () => {
    await env?.stop();
  });

  it('fences, moves and releases the next unit without the cluster id, the grant revoked after an earlier move read it', async () => {
    const { shards, pool } = moverShards();
    const first = await moveOff(shards);
    const learned = clusterIdReadableKnown(pool);
    await revoke();
    const second = await moveOff(shards);

    // The premise: the first move read the id, the pool learned its login may.
    expect({ outcome: first.outcome, recorded: first.id !== null, learned }).toEqual({ outcome: 'done', recorded: true, learned: true });
    // Before: "threw 42501: permission denied for function pg_control_system" at the fence, every run.
    expect({ outcome: second.outcome, recorded: second.id, known: clusterIdReadableKnown(pool) }).toEqual({ outcome: 'done', recorded: null, known: false });
    expect(await write(second.owner)).toBe(`written on ${TARGET}`);
  }, 120_000);

  it("takes the fence without the cluster id when the grant went between the history's read and the fence", async () => {
    const { shards, pool } = moverShards();
    // The grant goes right after the fence's read of the source's history (which still read the
    // id): the fence's own statement is the first refused.
    let revoked = false;
    const connect = pool.connect.bind(pool) as () => Promise<pg.PoolClient>;
    (pool as unknown as { connect: (...args: unknown[]) => unknown }).connect = async (...args: unknown[]) => {
      if (args.length > 0) return (connect as (...a: unknown[]) => unknown)(...args);
      const client = await connect();
      const query = client.query.bind(client) as (...a: unknown[]) => unknown;
      // Only the history's read is awaited here; every other call (a stream, a callback) as it was.
      (client as unknown as { query: (...a: unknown[]) => unknown }).query = (...a: unknown[]) => {
        if (revoked || typeof a[0] !== 'string' || !a[0].includes('from timeline_history()') || !a[0].includes('pg_control_system')) return query(...a);
        revoked = true;
        return (async () => {
          const answer = await (query(...a) as Promise<unknown>);
          await revoke();
          return answer;
        })();
      };
      return client;
    };
    const moved = await moveOff(shards);

    // Before: "threw: move job #.. stopped in cutover: permission denied for function pg_control_system".
    expect({ revoked, outcome: moved.outcome, recorded: moved.id }).toEqual({ revoked: true, outcome: 'done', recorded: null });
    expect(await write(moved.owner)).toBe(`written on ${TARGET}`);
  }, 120_000);

  // The fence refused the id is taken again without it, its lock wait bounded from the
  // transaction's first statement by a lock_timeout written into the text: the whole fence budget
  // again, the first attempt's time (its round trip, the question asked again) not taken off it,
  // so fence and resend together could hold the unit's writers past the budget (h154). The
  // mover's clock is stepped by 400 ms while the refused fence's answer comes back.
  it("bounds the fence sent again without the id by what is left of the fence budget", async () => {
    const { shards, pool } = moverShards();
    let stepMs = 0;
    let revoked = false;
    const fences: { lockTimeoutMs: number; withId: boolean }[] = [];
    const BUDGET = 2000;
    // Each connection's last lock_timeout set (a fence's transaction sets it before the fence).
    const lockTimeoutOf = new WeakMap<pg.PoolClient, number>();
    interceptCheckouts(pool, (sent, send, client) => {
      const text = sent ?? '';
      const bound = /set local lock_timeout = '(\d+)ms'/.exec(text);
      if (bound !== null) lockTimeoutOf.set(client, Number(bound[1]));
      const lockTimeoutMs = lockTimeoutOf.get(client);
      if (text.includes("set state = 'fenced'") && lockTimeoutMs !== undefined) {
        const withId = text.includes('pg_control_system');
        fences.push({ lockTimeoutMs, withId });
        // The refused fence took 400 ms (on the mover's clock) to come back.
        if (withId && revoked) {
          return (async () => {
            try {
              return await (send() as Promise<unknown>);
            } finally {
              stepMs += 400;
            }
          })();
        }
      }
      // The grant goes right after the fence's read of the source's history (which still read the id).
      if (revoked || !text.includes('from timeline_history()') || !text.includes('pg_control_system')) return send();
      revoked = true;
      return (async () => {
        const answer = await (send() as Promise<unknown>);
        await revoke();
        return answer;
      })();
    });
    const moved = await moveOff(shards, undefined, { fenceBudgetMs: BUDGET, clock: () => performance.now() + stepMs });

    expect({ outcome: moved.outcome, withId: fences.map((f) => f.withId) }).toEqual({ outcome: 'done', withId: [true, false] });
    const [first, resent] = fences as [(typeof fences)[0], (typeof fences)[0]];
    expect(first.lockTimeoutMs).toBeGreaterThanOrEqual(BUDGET - 1);
    // Before: 2000 ms again. Now at most the budget less the 400 ms the first attempt took.
    expect(resent.lockTimeoutMs).toBeLessThanOrEqual(BUDGET - 400);
    expect(resent.lockTimeoutMs).toBeGreaterThan(0);
  }, 120_000);

  // A mover refused timeline_history() (its grant, shard migration 031, not given or revoked) but
  // allowed the cluster id: the history's read with the id was refused, the id's answer forgotten
  // and asked again (yes), at every move: a statement more per move, outside the fence, besides
  // the refused read itself (h154). Now the history's refusal is kept for the pool, as the id's
  // is: no read of it, nor question, until its interval has passed.
  it('asks neither the history nor the cluster id again at each move of a mover refused timeline_history() but allowed the id', async () => {
    const { shards, pool } = moverShards();
    const sent: string[] = [];
    interceptCheckouts(pool, (text, send) => {
      if (text !== undefined) sent.push(text);
      return send();
    });
    const counted = (): { questions: number; histories: number } => {
      const texts = sent.splice(0);
      return { questions: texts.filter((t) => t.startsWith('select (select lpad')).length, histories: texts.filter((t) => t.includes('from timeline_history()')).length };
    };
    await withClient(sourceUrl, (c) => c.query(`revoke execute on function timeline_history() from ${MOVER_ROLE}`));
    let first: Awaited<ReturnType<typeof moveOff>>;
    let second: Awaited<ReturnType<typeof moveOff>>;
    let third: Awaited<ReturnType<typeof moveOff>>;
    const statements: { questions: number; histories: number }[] = [];
    try {
      first = await moveOff(shards);
      statements.push(counted());
      second = await moveOff(shards);
      statements.push(counted());
      third = await moveOff(shards);
      statements.push(counted());
    } finally {
      await withClient(sourceUrl, (c) => c.query(`grant execute on function timeline_history() to ${MOVER_ROLE}`));
    }

    // Each move records the fence's cluster id (the login may read it), none a history.
    expect([first, second, third].map((m) => ({ outcome: m.outcome, recorded: m.id !== null }))).toEqual(Array.from({ length: 3 }, () => ({ outcome: 'done', recorded: true })));
    // The first move: the pool's question, the refused read, the question asked again. Before,
    // every later move: the refused read and the question again (1 and 1); now neither.
    expect(statements).toEqual([{ questions: 2, histories: 1 }, { questions: 0, histories: 0 }, { questions: 0, histories: 0 }]);
  }, 120_000);

  it('releases the fence of a move whose grant went between its flip and its release: the unit is not left fenced', async () => {
    const { shards } = moverShards();
    const moved = await moveOff(shards, async (point) => {
      if (point === 'published') await revoke();
    });
    const states = { source: await fenceState(env.shards.get(SOURCE) as pg.Pool, moved.slot), target: await fenceState(env.shards.get(TARGET) as pg.Pool, moved.slot) };

    // Before: the run threw 42501 at the release (and at the release retried after it), the source
    // left 'fenced' and the target 'incoming', the new owner published: the write below waited out
    // its fence wait and failed (fence-timeout).
    expect({ outcome: moved.outcome, ...states }).toEqual({ outcome: 'done', source: 'moved', target: 'open' });
    expect(await write(moved.owner)).toBe(`written on ${TARGET}`);
  }, 120_000);
  // A refusal expires (h154): past its interval while the fence was held, the grant given back
  // meanwhile, the release asked again and read the id, and the move's record took it for a
  // release on another cluster than the fence's (not known): its fence position was dropped
  // (NULL: never told copied, write_copied_off) for a move that never left its cluster (h157).
  it('keeps the fence position of a move fenced without the id whose refusal expired, the grant given back, before its release', async () => {
    const { shards, pool } = moverShards();
    let clock = 0;
    recheckClusterIdRefusal(pool, { intervalMs: 1000, now: () => clock });
    await revoke();
    const first = await moveOff(shards);
    const second = await moveOff(shards, async (point) => {
      if (point === 'published') {
        await withClient(sourceUrl, (c) => c.query('grant execute on function pg_control_system() to public'));
        clock += 1000;
      }
    });
    const record = async (slot: number): Promise<unknown> =>
      (
        await env.catalog.query<{ cluster: string | null; fenced: boolean }>(
          "select source_cluster_id as cluster, source_fence_lsn is not null as fenced from catalog.move_jobs where kind = 'slot' and unit_id = $1::text order by id desc limit 1",
          [String(slot)],
        )
      ).rows[0];
    const third = await moveOff(shards);

    expect([first.outcome, second.outcome, third.outcome]).toEqual(['done', 'done', 'done']);
    // The first move: fenced and released without the id, its fence position kept (timeline alone).
    expect(await record(first.slot)).toEqual({ cluster: null, fenced: true });
    // Before: { cluster: <the source's id>, fenced: false }, the release's id beside no fence position.
    expect(await record(second.slot)).toEqual({ cluster: null, fenced: true });
    // The grant back, the next move reads the id at its fence and records it.
    expect(await record(third.slot)).toEqual({ cluster: expect.stringMatching(/^[0-9a-f]{16}$/), fenced: true });
    expect(clusterIdReadableKnown(pool)).toBe(true);
    expect(await write(second.owner)).toBe(`written on ${TARGET}`);
  }, 120_000);

  // The same loss where the release runs in another process than the fence (h157's note on
  // 39cf252, whose rule was the run's own): the mover died after its flip, fenced without the id,
  // and the run that resumed it, with a pool of its own that may read the id (the grant given
  // back), read the id at the release, taken for a release on another cluster than the fence's
  // (not known): the fence position dropped for a move that never left its cluster (h162).
  it('keeps the fence position of a move fenced without the id and released by a resumed run whose pool may read it', async () => {
    const { shards } = moverShards();
    await revoke();
    const died = await moveOff(shards, async (point) => {
      if (point === 'published') throw new Error('test: the mover dies after the flip');
    });
    const fenced = await env.catalog.query<{ cluster: string | null; fenced: boolean; state: string }>(
      'select source_cluster_id as cluster, source_fence_lsn is not null as fenced, state from catalog.move_jobs where id = $1',
      [died.job],
    );
    await withClient(sourceUrl, (c) => c.query('grant execute on function pg_control_system() to public'));
    // A new process: a pool of its own, its answer not known yet (the grant is back: it may read the id).
    const { shards: resumedShards, pool: resumedPool } = moverShards();
    const resumed = await env
      .mover({ readerGraceMs: 0, shards: resumedShards })
      .run(died.job)
      .then(
        (j) => j.state,
        (e: unknown) => `threw: ${e instanceof Error ? e.message : String(e)}`,
      );
    const { rows } = await env.catalog.query<{ cluster: string | null; fenced: boolean }>(
      'select source_cluster_id as cluster, source_fence_lsn is not null as fenced from catalog.move_jobs where id = $1',
      [died.job],
    );

    // The premise: the first run died past its flip, fenced without the id, its position recorded.
    expect({ outcome: died.outcome, ...fenced.rows[0] }).toEqual({ outcome: expect.stringContaining('the mover dies after the flip'), cluster: null, fenced: true, state: 'verifying' });
    expect(resumed).toBe('done');
    // Before: { cluster: <the source's id>, fenced: false }, the release's id beside no fence position.
    expect(rows[0]).toEqual({ cluster: null, fenced: true });
    // The release asked nothing of the resumed pool: the job said the fence was taken without the id.
    expect(clusterIdReadableKnown(resumedPool)).toBeUndefined();
    expect(await write(died.owner)).toBe(`written on ${TARGET}`);
  }, 120_000);
});
