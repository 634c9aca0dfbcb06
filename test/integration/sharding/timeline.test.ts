import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createShardReader } from '../../../functions/adapters/postgres/read-transaction.js';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createShardWriter, ShardWriteError, type WriteRouter } from '../../../functions/adapters/postgres/write-transaction.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import type { ReadToken } from '../../../functions/core/sharding/read-token.js';
import { cutWalReceiver, startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { SilentRelay } from './fixtures/silent-relay.js';

const SHARD = 'shard_001';
const generous: FreshnessBounds = { maxLagSeconds: 60, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 60_000 };
/** One shard, every key in slot 7: the unit under test is the token's timeline, not routing. */
const router: WriteRouter = { routeForWrite: () => Promise.resolve({ shardId: SHARD, slot: 7, version: 1, viaDirectory: false }) };

/**
 * The `tl=N` part of read-your-writes tokens against a real timeline change: a streaming replica
 * promoted with `pg_promote()` starts timeline 2, and a token written on timeline 1 is read on the
 * new primary, as docs/sharding-spec.md says (a replica of the new timeline could be behind on
 * WAL that a position of the old one does not describe).
 */
describe('read-your-writes tokens across a failover', () => {
  let cluster: TestShardCluster;
  const closers: (() => Promise<void>)[] = [];

  /**
   * A plain pool whose idle clients may hear the server's shutdown: `pool.end()` resolves once it
   * has asked its clients to close, and a server stopped right after can still send them 57P01,
   * which an unheard pool raises as an uncaught error.
   */
  const poolFor = (url: string): Map<string, pg.Pool> => {
    const pool = new pg.Pool({ connectionString: url, max: 2 });
    pool.on('error', () => undefined);
    closers.push(() => pool.end());
    return new Map([[SHARD, pool]]);
  };

  const readerFor = async (primaryUrl: string, replicaUrls: string[]): Promise<ReplicaReader> => {
    const pools = ShardPools.fromConfig({ shards: [{ shard_id: SHARD, database_url: primaryUrl, read_replicas: replicaUrls }] }, { max: 2, connectionTimeoutMillis: 2000 });
    const reader = new ReplicaReader(pools, { bounds: generous, intervalMs: 60_000, probeTimeoutMs: 2000 });
    closers.push(async () => {
      reader.stop();
      await pools.end();
    });
    await reader.refresh();
    return reader;
  };
  const readUser = async (reader: ReplicaReader, id: string, token: ReadToken): Promise<{ servedBy: string; found: number }> => {
    const { value, servedBy } = await createShardReader({ router, reader }).withShardRead(
      id,
      async ({ client }) => (await client.query<{ n: number }>('select count(*)::int as n from users where id = $1', [id])).rows[0]?.n ?? 0,
      { token },
    );
    return { servedBy, found: value };
  };

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 2, schema: true });
  });
  afterAll(async () => {
    for (const close of closers.splice(0)) await close();
    await cluster?.stop();
  });

  it('serves a token from a replica while its timeline is current, and from the promoted primary once pg_promote() has started timeline 2', async () => {
    const shard = cluster.shards[0];
    const [promoted, follower] = shard?.replicas ?? [];
    if (!shard || !promoted || !follower) throw new Error('the cluster has no two replicas');
    const primaries = poolFor(shard.primary.url);
    const id = randomUUID();
    const written = await createShardWriter({ router, primaries }).withShardWrite(id, ({ client }) =>
      client.query("insert into users (id, slot, email, display_name) values ($1, 7, 'a@example.org', 'A')", [id]),
    );
    await Promise.all([promoted.waitForCatchUp(), follower.waitForCatchUp()]);
    // Before the failover: the token's timeline is the primary's, so a replica past it may serve it.
    const before = await readUser(await readerFor(shard.primary.url, [follower.url]), id, written.readToken);

    await withClient(promoted.url, (c) => c.query('select pg_promote(true, 60)'));
    // The promoted node as the shard's primary; the other replica still streams timeline 1.
    const after = await readerFor(promoted.url, [follower.url]);
    const onOldTimeline = await readUser(after, id, written.readToken);
    const newPrimaries = poolFor(promoted.url);
    const second = randomUUID();
    const rewritten = await createShardWriter({ router, primaries: newPrimaries }).withShardWrite(second, ({ client }) =>
      client.query("insert into users (id, slot, email, display_name) values ($1, 7, 'b@example.org', 'B')", [second]),
    );

    expect(written.readToken.timeline).toBe(1);
    expect(before).toEqual({ servedBy: `${SHARD}/replica-1`, found: 1 });
    expect(after.primaryTimeline(SHARD)).toBe(2);
    expect(onOldTimeline).toEqual({ servedBy: `${SHARD}/primary`, found: 1 });
    expect(rewritten.readToken.timeline).toBe(2);
    expect(await readUser(after, second, rewritten.readToken)).toEqual({ servedBy: `${SHARD}/primary`, found: 1 });
  }, 120_000);
});

/**
 * After a promotion, a replica still streaming the OLD timeline (not yet re-pointed; its old
 * primary not yet fenced, a stale client still writing there) replays past every position of the
 * new primary: it must not pass for a fresh replica of the new primary, nor serve its tokens.
 */
describe('a replica that follows the old timeline after a promotion', () => {
  let cluster: TestShardCluster;
  const closers: (() => Promise<void>)[] = [];
  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 2, schema: true });
  });
  afterAll(async () => {
    for (const close of closers.splice(0)) await close().catch(() => undefined);
    await cluster?.stop();
  });

  it('is ineligible (timeline and position), and neither a timeline-2 token nor a plain read is served by it', async () => {
    const shard = cluster.shards[0];
    const [promoted, follower] = shard?.replicas ?? [];
    if (!shard || !promoted || !follower) throw new Error('the cluster has no two replicas');
    await Promise.all([promoted.waitForCatchUp(), follower.waitForCatchUp()]);
    await withClient(promoted.url, (c) => c.query('select pg_promote(true, 60)'));
    const newPrimary = new pg.Pool({ connectionString: promoted.url, max: 2 });
    newPrimary.on('error', () => undefined);
    closers.push(() => newPrimary.end());
    const id = randomUUID();
    const written = await createShardWriter({ router, primaries: new Map([[SHARD, newPrimary]]) }).withShardWrite(id, ({ client }) =>
      client.query("insert into users (id, slot, email, display_name) values ($1, 7, 'new@example.org', 'on timeline 2')", [id]),
    );
    // The old primary is not fenced yet and a stale client still writes there; the follower replays it.
    await withClient(shard.primary.url, (c) =>
      c.query("insert into users (id, slot, email, display_name) select gen_random_uuid(), 7, 'old' || g || '@example.org', repeat('x', 500) from generate_series(1, 5000) g"),
    );
    await follower.waitForCatchUp();

    const pools = ShardPools.fromConfig({ shards: [{ shard_id: SHARD, database_url: promoted.url, read_replicas: [follower.url] }] }, { max: 2, connectionTimeoutMillis: 2000 });
    const reader = new ReplicaReader(pools, { bounds: { maxLagSeconds: 5, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 25_000 }, intervalMs: 60_000, probeTimeoutMs: 2000 });
    closers.push(async () => {
      reader.stop();
      await pools.end();
    });
    await reader.refresh();
    const [state] = reader.replicaStates(SHARD);
    const reads = createShardReader({ router, reader });
    const count = async ({ client }: { client: pg.PoolClient }) => (await client.query<{ n: number }>('select count(*)::int as n from users where id = $1', [id])).rows[0]?.n ?? 0;
    const withToken = await reads.withShardRead(id, count, { token: written.readToken });
    const plain = await reads.withShardRead(id, count);
    // A process still configured with the old primary: the follower is on its primary's timeline
    // and past the token's position, yet not on the token's timeline, which the read checks live.
    const stalePools = ShardPools.fromConfig({ shards: [{ shard_id: SHARD, database_url: shard.primary.url, read_replicas: [follower.url] }] }, { max: 2, connectionTimeoutMillis: 2000 });
    const staleReader = new ReplicaReader(stalePools, { bounds: { maxLagSeconds: 5, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 25_000 }, intervalMs: 60_000, probeTimeoutMs: 2000 });
    closers.push(async () => {
      staleReader.stop();
      await stalePools.end();
    });
    await staleReader.refresh();
    const staleEligible = staleReader.replicaStates(SHARD).map((s) => s.ineligible);
    const liveChecked = await staleReader.withReadClient(SHARD, async (_client, servedBy) => servedBy, { token: written.readToken.lsn, tokenTimeline: written.readToken.timeline });

    expect(written.readToken.timeline).toBe(2);
    expect({ servedBy: withToken.servedBy, found: withToken.value }).toEqual({ servedBy: `${SHARD}/primary`, found: 1 });
    expect({ servedBy: plain.servedBy, found: plain.value }).toEqual({ servedBy: `${SHARD}/primary`, found: 1 });
    expect(staleEligible).toEqual([null]);
    expect(liveChecked).toBe(`${SHARD}/primary`);
    expect({ timeline: state?.state.timeline, primaryTimeline: state?.state.primaryTimeline, ineligible: state?.ineligible }).toEqual({
      timeline: 1,
      primaryTimeline: 2,
      ineligible: 'on timeline 1, its primary on 2',
    });
    expect(state?.state.replayLsn).toBeGreaterThan(state?.state.primaryLsn ?? 0n);
  }, 120_000);
});

/**
 * A write's connection fails after its COMMIT was acknowledged, and the pool's next connection
 * (the read token's, see write-transaction.ts) reaches another server: the shard's address now
 * names a promoted replica that never received the commit (asynchronous replication). A token
 * read there vouches for nothing about the write: the answer must be outcome-unknown (a 504
 * whose `check` looks on the new primary), not a success whose document is gone.
 */
describe('a write whose token is read after a failover to a replica that missed its commit', () => {
  let cluster: TestShardCluster;
  const closers: (() => Promise<void>)[] = [];
  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
  });
  afterAll(async () => {
    for (const close of closers.splice(0)) await close().catch(() => undefined);
    await cluster?.stop();
  });

  it('is outcome-unknown, not a success with a token of the new timeline', async () => {
    const shard = cluster.shards[0];
    const replica = shard?.replicas[0];
    if (!shard || !replica) throw new Error('the cluster has no replica');
    await replica.waitForCatchUp();
    const relay = await SilentRelay.start(shard.primary.port);
    closers.push(() => relay.stop());
    // The shard's address: the old primary (through the relay) until the failover, then the promoted replica.
    let port = relay.port;
    const primaryUrl = new URL(shard.primary.url);
    class FollowingTheAddress extends pg.Client {
      constructor() {
        super({ host: '127.0.0.1', port, user: decodeURIComponent(primaryUrl.username), password: decodeURIComponent(primaryUrl.password), database: primaryUrl.pathname.slice(1) });
      }
    }
    const pool = new pg.Pool({ max: 2, Client: FollowingTheAddress });
    pool.on('error', () => undefined);
    closers.push(() => pool.end());
    const writer = createShardWriter({ router, primaries: new Map([[SHARD, pool]]) });
    const before = await writer.withShardWrite(randomUUID(), ({ client, slot }) =>
      client.query("insert into users (id, slot, email, display_name) values (gen_random_uuid(), $1, 'before@example.org', 'before')", [slot]),
    );
    await replica.waitForCatchUp();
    const restoreReceiver = await cutWalReceiver(replica.url);
    closers.push(restoreReceiver);
    const id = randomUUID();
    const outcome = await writer
      .withShardWrite(id, async ({ client, slot }) => {
        await client.query("insert into users (id, slot, email, display_name) values ($1, $2, 'lost@example.org', 'lost in the failover')", [id, slot]);
        // The failover happens while the write is open: the replica (cut off, so it never gets the
        // commit) is promoted and the shard's address names it from now on.
        await withClient(replica.url, (c) => c.query('select pg_promote(true, 60)'));
        port = replica.port;
        // The old primary acknowledges the COMMIT; the connection fails as the token is asked for.
        relay.resetAt('pg_current_wal_insert_lsn', { delivered: true });
      })
      .then(
        (r) => `committed (token timeline ${r.readToken.timeline})`,
        (err: unknown) => (err instanceof ShardWriteError ? err.reason : String(err)),
      );
    const onNewPrimary = await withClient(replica.url, async (c) => (await c.query('select 1 from users where id = $1', [id])).rowCount);

    expect({ before: before.readToken.timeline, outcome, onNewPrimary }).toEqual({ before: 1, outcome: 'outcome-unknown', onNewPrimary: 0 });
  }, 120_000);
});
