import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createShardWriter, ShardWriteError, type WriteRouter } from '../../../functions/adapters/postgres/write-transaction.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';

/**
 * The question whether a pool's login may read the cluster id (`clusterIdReadable`,
 * cluster-identity.ts) is sent on the connection of the first write or read that needs it. It
 * was one promise per pool, which every other caller awaited meanwhile: a write on a healthy
 * connection of the pool waited for the first connection's answer, and failed with that
 * connection's failure. Here the first connection's server is slow to answer it (the statement
 * sleeps first, on the server): its write's 300 ms deadline cancels it (57014, the deadline's
 * own cancel request), and the second write, started meanwhile with a deadline of its own that
 * sent no cancel, was reported "cancelled on the server by another session's request" (without a
 * deadline: the raw 57014), nothing committed, though its own connection never failed. Now a
 * caller asks on its own connection until an answer is known, and a failure is only its own.
 * A read with a token of a cluster asks the same question before its primary check: the second
 * read was a ReadCancelledError ("another session's" cancel request). (h133)
 */
/**
 * Makes `pool`'s first connection slow to answer the question (and only it: the statement sleeps
 * on the server first), lent to the next caller, as an idle connection is lent before another is
 * opened. `asking` resolves once the question is sent on it.
 */
async function slowToAnswer(pool: pg.Pool): Promise<{ readonly asking: Promise<void> }> {
  let asked!: () => void;
  const asking = new Promise<void>((resolve) => {
    asked = resolve;
  });
  const slow = await pool.connect();
  slow.on('error', () => undefined);
  const query = slow.query.bind(slow) as (...args: unknown[]) => unknown;
  (slow as unknown as { query: (...args: unknown[]) => unknown }).query = (text: unknown, ...rest: unknown[]) => {
    if (typeof text !== 'string' || !text.startsWith('select (select lpad(to_hex(system_identifier)')) return query(text, ...rest);
    asked();
    return query(text.replace(/^select /, 'select pg_sleep(3), '), ...rest);
  };
  slow.release();
  return { asking };
}

describe("the cluster id question: a write or a read never fails with another connection's failure", () => {
  let cluster: TestShardCluster;
  const pools: pg.Pool[] = [];
  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 0, schema: true });
  }, 180_000);
  afterAll(async () => {
    await Promise.all(pools.splice(0).map((p) => p.end().catch(() => undefined)));
    await cluster?.stop();
  });

  it.each([
    { second: 'with a deadline', options: { deadlineMs: 20_000 } },
    { second: 'without a deadline', options: {} },
  ])('a write $second, started while the first connection is asked, commits on its own connection', async ({ options }) => {
    const shard = cluster.shards[0];
    if (shard === undefined) throw new Error('the cluster has no shard');
    const pool = new pg.Pool({ connectionString: shard.primary.url, max: 2 });
    pool.on('error', () => undefined);
    pools.push(pool);
    const { asking } = await slowToAnswer(pool);

    const router: WriteRouter = { routeForWrite: () => Promise.resolve({ shardId: shard.shardId, slot: 7, version: 1, viaDirectory: false }) };
    const writer = createShardWriter({ router, primaries: new Map([[shard.shardId, pool]]) });
    const insert = (id: string) => async ({ client, slot }: { client: pg.PoolClient; slot: number }) =>
      client.query("insert into users (id, slot, email, display_name) values ($1, $2, 'probe@example.org', 'probe')", [id, slot]);
    const outcome = (e: unknown): string => (e instanceof ShardWriteError ? e.reason : `${(e as { code?: string }).code ?? ''} ${String(e)}`);
    const [first, second] = [randomUUID(), randomUUID()];
    // Each write's own connection: the second opens one of its own (the first holds the slow one).
    const firstDone = writer.withShardWrite(first, insert(first), { deadlineMs: 300 }).then(() => 'done', outcome);
    await asking;
    const secondDone = writer.withShardWrite(second, insert(second), options).then(() => 'done', outcome);

    expect({ first: await firstDone, second: await secondDone }).toEqual({ first: 'deadline-exceeded', second: 'done' });
    const held = await pool.query<{ id: string }>('select id::text from users where id = any($1::uuid[])', [[first, second]]);
    expect(held.rows.map((r) => r.id)).toEqual([second]);
  }, 60_000);

  it('a read with a token of the cluster, started while the first connection is asked, is served on its own connection', async () => {
    const shard = cluster.shards[0];
    if (shard === undefined) throw new Error('the cluster has no shard');
    const pools = ShardPools.fromConfig({ shards: [{ shard_id: shard.shardId, database_url: shard.primary.url, read_replicas: [] }] }, { max: 2 });
    const reader = new ReplicaReader(pools, { bounds: { maxLagSeconds: 60, maxLagBytes: 1 << 24, maxStateAgeMs: 120_000 }, intervalMs: 60_000 });
    try {
      const pool = pools.primary(shard.shardId).pool;
      const { rows } = await pool.query<{ lsn: string; id: string }>("select pg_current_wal_insert_lsn()::text as lsn, lpad(to_hex(system_identifier), 16, '0') as id from pg_control_system()");
      const row = rows[0];
      if (row === undefined) throw new Error('no position');
      const { asking } = await slowToAnswer(pool);
      const read = (deadlineMs: number) =>
        reader
          .query(shard.shardId, 'select 1 as one', [], { primary: true, token: row.lsn, tokenTimeline: 1, tokenClusterId: row.id, deadlineAt: Date.now() + deadlineMs })
          .then(
            (r) => `rows ${r.rowCount}`,
            (e: unknown) => (e instanceof Error ? ((e as { code?: string }).code ?? e.name) : String(e)),
          );
      const firstDone = read(300);
      await asking;
      const secondDone = read(20_000);
      // The first read's own statement cancelled at its own deadline (the deadline's error, not the
      // driver's raw 57014: h139); the second read is served.
      expect({ first: await firstDone, second: await secondDone }).toEqual({ first: 'DeadlinePassedError', second: 'rows 1' });
    } finally {
      reader.stop();
      await pools.end();
    }
  }, 60_000);
});
