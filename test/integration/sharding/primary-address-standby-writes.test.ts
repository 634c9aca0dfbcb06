import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createShardWriter } from '../../../functions/adapters/postgres/write-transaction.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.js';

/**
 * After a failover the shard's primary address can reach a server in recovery for a while (a
 * cached DNS answer naming the old writer, now a reader). A write there fails (SQLSTATE 25006,
 * read-only). The connection it failed on still reaches that standby, and always will: were it
 * pooled again, every write lent it would fail the same way after the address names the primary
 * again, for as long as traffic keeps the connection from idling out. It is dropped instead.
 */
const SHARD = 'shard_001';

describe('a write through a primary address that reaches a standby', () => {
  let cluster: TestShardCluster;
  let proxy: TcpProxy;
  let pools: ShardPools;

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    const standby = cluster.shards[0]?.replicas[0];
    if (!standby) throw new Error('cluster has no replica');
    // The primary's address, as a name whose answer changes: it reaches the standby first.
    proxy = await startTcpProxy(standby.port);
    const url = new URL(cluster.shards[0]?.primary.url ?? '');
    url.port = String(proxy.port);
    pools = ShardPools.fromConfig({ shards: [{ shard_id: SHARD, database_url: url.toString(), read_replicas: [] }] }, { max: 1, connectionTimeoutMillis: 1000 });
  }, 120_000);
  afterAll(async () => {
    await pools?.end();
    await proxy?.close();
    await cluster?.stop();
  });

  it('is refused there (25006) and its connection dropped: once the address reaches the primary, the next write is written', async () => {
    const primary = cluster.shards[0]?.primary;
    if (!primary) throw new Error('cluster has no primary');
    const router = { routeForWrite: () => Promise.resolve({ shardId: SHARD, slot: 7, version: 1, viaDirectory: false }) };
    const writer = createShardWriter({ router, primaries: new Map([[SHARD, pools.primary(SHARD).pool]]) });
    const write = (key: string): Promise<string> =>
      writer
        .withShardWrite(key, ({ client, slot }) => client.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [key, slot, `${key}@example.org`, 'standby']), { deadlineMs: 5000 })
        .then(
          () => 'written',
          (error: unknown) => `${(error as { code?: string }).code ?? ''} ${error instanceof Error ? error.name : String(error)}`,
        );

    const onStandby = await write(randomUUID());
    // The address names the primary again (the DNS answer expired, the configuration was fixed).
    proxy.retarget(primary.port);
    const key = randomUUID();
    const afterward = await write(key);
    const stored = await pools.primary(SHARD).pool.query<{ n: number }>('select count(*)::int as n from users where id = $1', [key]);

    expect({ onStandby, afterward, stored: stored.rows[0]?.n }).toEqual({
      onStandby: expect.stringMatching(/^25006 /),
      // Not '25006 error': the pooled connection, still on the standby, lent again.
      afterward: 'written',
      stored: 1,
    });
  }, 60_000);
});
