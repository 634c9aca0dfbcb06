import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { APPLICATION_ROLE, ensureLogin } from '../../../functions/adapters/postgres/app-role.js';
import { clusterIdReadableKnown } from '../../../functions/adapters/postgres/cluster-identity.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { commitHeartbeat } from '../../../functions/adapters/postgres/replica-lag.js';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createShardWriter, type ShardWriter, type WriteRouter } from '../../../functions/adapters/postgres/write-transaction.js';
import { clusterIdFromSystemIdentifier } from '../../../functions/core/sharding/read-token.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';

const LOGIN = 'revoked_app';
const PASSWORD = 'app pass';

/**
 * Whether a pool's login may read the cluster id (`clusterIdReadable`, cluster-identity.ts) is
 * learned once per pool. When the grant goes later (`REVOKE EXECUTE ON FUNCTION
 * pg_control_system() FROM ...`, or a switchover that puts a cluster behind the address where the
 * login lacks it), every statement that embedded the id failed with 42501 until the process
 * restarted: each write (its BEGIN), each read with a token of a cluster (the primary check, a
 * replica's token check) and the reader's heartbeat (so no replica was vouched for). Now such a
 * refusal forgets the answer, asks again, and the statement is sent again without the id: the
 * write's BEGIN (nothing of the write ran), a read's check and the heartbeat's position (they
 * change nothing). (h149)
 */
describe('the cluster id, its grant revoked after the pool learned it may read it', () => {
  let cluster: TestShardCluster;
  let shardId = '';
  let primaryUrl = '';
  const closers: (() => Promise<void>)[] = [];
  const asLogin = (url: string): string => {
    const u = new URL(url);
    u.username = LOGIN;
    u.password = PASSWORD;
    return u.toString();
  };
  const revoke = (): Promise<unknown> => withClient(primaryUrl, (c) => c.query('revoke execute on function pg_control_system() from public'));
  const clusterId = (): Promise<string | undefined> =>
    withClient(primaryUrl, async (c) => clusterIdFromSystemIdentifier((await c.query<{ id: string }>('select system_identifier::text as id from pg_control_system()')).rows[0]?.id ?? ''));
  /** Waits until the replica has replayed the primary's WAL as of now (the grant's change with it). */
  const replayed = async (): Promise<void> => {
    await cluster.shards[0]?.replicas[0]?.waitForCatchUp();
  };
  /** The application login's pools over the shard's primary and replica, a writer and a reader over them (each test its own: a fresh cache). */
  const stack = (): { pools: ShardPools; reader: ReplicaReader; writer: ShardWriter; primary: pg.Pool } => {
    const replica = cluster.shards[0]?.replicas[0];
    const pools = ShardPools.fromConfig({ shards: [{ shard_id: shardId, database_url: asLogin(primaryUrl), read_replicas: replica === undefined ? [] : [asLogin(replica.url)] }] }, { max: 2, connectionTimeoutMillis: 5000 });
    const reader = new ReplicaReader(pools, { bounds: { maxLagSeconds: 60, maxLagBytes: 1 << 24, maxStateAgeMs: 120_000 }, intervalMs: 60_000, probeTimeoutMs: 5000 });
    closers.push(async () => {
      reader.stop();
      await pools.end();
    });
    const primary = pools.primary(shardId).pool;
    const router: WriteRouter = { routeForWrite: () => Promise.resolve({ shardId, slot: 7, version: 1, viaDirectory: false }) };
    return { pools, reader, writer: createShardWriter({ router, primaries: new Map([[shardId, primary]]) }), primary };
  };
  const insertUser = (writer: ShardWriter) => {
    const id = randomUUID();
    return writer.withShardWrite(id, ({ client, slot }) => client.query("insert into users (id, slot, email, display_name) values ($1, $2, 'revoked@example.org', 'revoked')", [id, slot]));
  };
  const outcome = <T>(p: Promise<T>): Promise<T | string> => p.catch((e: unknown) => `failed ${(e as { code?: string }).code ?? ''}: ${e instanceof Error ? e.message : String(e)}`);

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    const shard = cluster.shards[0];
    if (shard === undefined) throw new Error('the cluster has no shard');
    shardId = shard.shardId;
    primaryUrl = shard.primary.url;
    const admin = new pg.Pool({ connectionString: primaryUrl, max: 1 });
    admin.on('error', () => undefined);
    try {
      await ensureLogin(admin, { username: LOGIN, password: PASSWORD }, { role: APPLICATION_ROLE });
    } finally {
      await admin.end();
    }
  }, 180_000);
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await withClient(primaryUrl, (c) => c.query('grant execute on function pg_control_system() to public'));
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('commits the next write, once, with a token without the id, where its BEGIN was refused the id', async () => {
    const { writer, primary } = stack();
    const first = await insertUser(writer);
    await revoke();
    const second = await outcome(insertUser(writer));
    const third = await outcome(insertUser(writer));

    // The premise: the pool had learned its login may read the id, and the first token carries it.
    expect(first.readToken.clusterId).toBe(await clusterId());
    expect(typeof second === 'string' ? second : { clusterId: second.readToken.clusterId }).toEqual({ clusterId: undefined });
    expect(typeof third === 'string' ? third : { clusterId: third.readToken.clusterId }).toEqual({ clusterId: undefined });
    expect(clusterIdReadableKnown(primary)).toBe(false);
    // Each write committed once.
    const held = await withClient(primaryUrl, async (c) => (await c.query<{ n: number }>("select count(*)::int as n from users where email = 'revoked@example.org'")).rows[0]?.n);
    expect(held).toBe(3);
  }, 60_000);

  // `query` sends the check in its transaction's BEGIN; `withReadClient` without a BEGIN (its
  // callers that give none) as a statement of its own.
  it.each([{ check: 'in the BEGIN of its transaction' }, { check: 'as a statement of its own' }])(
    'serves a read with a token of the cluster on the primary, whose check ($check) was refused the id',
    async ({ check }) => {
      const { writer, reader } = stack();
      const { readToken } = await insertUser(writer);
      const options = { primary: true, token: readToken.lsn, tokenTimeline: readToken.timeline, ...(readToken.clusterId === undefined ? {} : { tokenClusterId: readToken.clusterId }) };
      await revoke();
      const read = await outcome(
        check === 'as a statement of its own'
          ? reader.withReadClient(shardId, async (client, servedBy, node) => ({ servedBy, begun: node.begun !== undefined, rows: (await client.query('select 1 as one')).rowCount }), options)
          : reader.query(shardId, 'select 1 as one', [], options).then((r) => ({ servedBy: r.servedBy, begun: true, rows: r.rowCount })),
      );

      expect(readToken.clusterId).toBe(await clusterId());
      expect(read).toEqual({ servedBy: `${shardId}/primary`, begun: check !== 'as a statement of its own', rows: 1 });
    },
    60_000,
  );

  it("serves a read with a token of the cluster on the replica, whose token check was refused the id, and the heartbeat still measures it", async () => {
    const { writer, reader, pools } = stack();
    // Measured before the write: its token is past what the reader vouches for, so the replica is
    // asked (its token check), and its pool learns its login may read the id.
    await reader.refresh();
    const { readToken } = await insertUser(writer);
    const tokenOptions = { token: readToken.lsn, tokenTimeline: readToken.timeline, ...(readToken.clusterId === undefined ? {} : { tokenClusterId: readToken.clusterId }) };
    await replayed();
    const before = await reader.query(shardId, 'select 1 as one', [], tokenOptions);
    await revoke();
    await replayed();
    const heartbeat = await commitHeartbeat(pools.primary(shardId), { timeoutMs: 5000 });
    const read = await outcome(reader.query(shardId, 'select 1 as one', [], tokenOptions));

    expect(before.servedBy).toBe(`${shardId}/replica-1`);
    expect(heartbeat === null ? null : { clusterId: heartbeat.clusterId }).toEqual({ clusterId: undefined });
    expect(typeof read === 'string' ? read : { servedBy: read.servedBy, rows: read.rowCount }).toEqual({ servedBy: `${shardId}/replica-1`, rows: 1 });
  }, 60_000);
});
