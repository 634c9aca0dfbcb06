import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ensureLogin, MOVER_ROLE } from '../../../functions/adapters/postgres/app-role.js';
import { clusterIdReadableKnown } from '../../../functions/adapters/postgres/cluster-identity.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import type { MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { fenceState, firstSlotOwnedBy, keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

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
  const moveOff = async (shards: Map<string, pg.Pool>, hook?: (point: MoveHookPoint) => Promise<void>): Promise<{ slot: number; owner: string; outcome: string; id: string | null }> => {
    const slot = await firstSlotOwnedBy(env, SOURCE, from);
    from = slot + 1;
    const [owner] = keysInSlot(slot, 1) as [string];
    await seedUsers(env.shards.get(SOURCE) as pg.Pool, slot, [owner], 1);
    const mover = env.mover({ readerGraceMs: 0, shards, ...(hook === undefined ? {} : { hook }) });
    const job = await mover.plan({ kind: 'slot', slot, to: TARGET, createdBy: 'test' });
    const outcome = await mover.run(job.id).then(
      (j) => `${j.state}${j.error ? `: ${j.error}` : ''}`,
      (e: unknown) => `threw ${(e as { code?: string }).code ?? ''}: ${e instanceof Error ? e.message : String(e)}`,
    );
    const { rows } = await env.catalog.query<{ id: string | null }>('select source_cluster_id as id from catalog.move_jobs where id = $1', [job.id]);
    return { slot, owner, outcome, id: rows[0]?.id ?? null };
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
});
