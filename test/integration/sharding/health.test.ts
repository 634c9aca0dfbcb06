import { createServer, type Server, type Socket } from 'node:net';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector, type ShardHealthReport } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { CloudWatchClient, GetMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import { DescribeDBInstancesCommand, RDSClient } from '@aws-sdk/client-rds';
import { mockClient } from 'aws-sdk-client-mock';
import { RdsInventory } from '../../../functions/adapters/aws/rds-inventory.js';
import { parseHealthThresholds } from '../../../functions/core/sharding/health.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';

/** A TCP endpoint that accepts connections and never answers: a hung database host. */
async function blackHole(): Promise<{ url: string; close(): Promise<void> }> {
  const sockets: Socket[] = [];
  const server: Server = createServer((s) => {
    sockets.push(s);
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `postgresql://postgres:postgres@127.0.0.1:${port}/postgres`,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

const TIMEOUT_MS = 3000;

describe('shard health', () => {
  let cluster: TestShardCluster;
  let holes: Awaited<ReturnType<typeof blackHole>>[];
  let pools: ShardPools;
  let inspector: ShardInspector;
  let deadPools: ShardPools;

  const shard = (report: { shards: readonly ShardHealthReport[] }, id: string): ShardHealthReport => {
    const s = report.shards.find((x) => x.shardId === id);
    if (!s) throw new Error(`no shard ${id} in the report`);
    return s;
  };
  const onPrimary = async <T>(shardId: string, fn: (c: pg.Client) => Promise<T>): Promise<T> => {
    const s = cluster.shards.find((x) => x.shardId === shardId);
    const client = new pg.Client({ connectionString: s?.primary.url });
    await client.connect();
    try {
      return await fn(client);
    } finally {
      await client.end();
    }
  };

  beforeAll(async () => {
    [cluster, ...holes] = await Promise.all([
      startShardCluster({ shards: 2, replicasPerShard: 1, schema: true, primary: { settings: { shared_preload_libraries: 'pg_stat_statements' } } }),
      blackHole(),
      blackHole(),
      blackHole(),
    ]);
    // Shard migration 008 created pg_stat_statements on both preloaded primaries: shard_002 goes without.
    await onPrimary('shard_002', (c) => c.query('drop extension pg_stat_statements'));
    await Promise.all(cluster.shards.flatMap((s) => s.replicas.map((r) => r.waitForCatchUp())));
    const [h1, h2, h3] = holes;
    pools = ShardPools.fromConfig(cluster.config, { max: 2, connectionTimeoutMillis: TIMEOUT_MS });
    inspector = new ShardInspector(pools, { timeoutMs: TIMEOUT_MS });
    deadPools = ShardPools.fromConfig({
      shards: [
        ...cluster.config.shards.slice(0, 1),
        { shard_id: 'shard_dead', database_url: h1?.url ?? '', read_replicas: [h2?.url ?? '', h3?.url ?? ''] },
      ],
      // The pool's own connect timeout longer than the inspector's: the two equal, the pool's timer
      // (set first, as its connect starts) fired first on a loaded host, and the reason read "no
      // answer in time" (node-postgres's words) rather than the inspector's budget (the exact CI at
      // 2f36e00, once): the inspector's timeout is the one under test.
    }, { max: 2, connectionTimeoutMillis: 2 * TIMEOUT_MS });
  });
  afterEach(async () => {
    for (const r of cluster.shards.flatMap((s) => s.replicas)) {
      await r.startReplica();
      await r.resumeReplay();
    }
  });
  afterAll(async () => {
    await pools?.end();
    await deadPools?.end();
    await Promise.all((holes ?? []).map((h) => h.close()));
    await cluster?.stop();
  });

  it('reports a live primary with its role, connections, storage and no replication facts', async () => {
    const report = await inspector.health();
    const primary = shard(report, 'shard_001').primary;

    expect(primary.status).toBe('healthy');
    expect(primary.facts).toMatchObject({ reachable: true, inRecovery: false, maxConnections: 100 });
    expect(primary.facts.connections).toBeGreaterThanOrEqual(1);
    expect(primary.facts.databaseSizeBytes).toBeGreaterThan(1_000_000);
    expect(primary.facts.replication).toBeUndefined();
  });

  it('marks a primary degraded while PUBLIC may create in the shard schema (an app login could shadow the functions the mover and monitor call), and healthy once revoked', async () => {
    expect(shard(await inspector.health(), 'shard_001').primary.facts.schemaCreators).toEqual([]);
    await onPrimary('shard_001', (c) => c.query('grant create on schema public to public'));
    try {
      const open = shard(await inspector.health(), 'shard_001');
      expect(open.primary.facts.schemaCreators).toEqual(['PUBLIC']);
      expect(open.primary.reasons.map((r) => [r.code, r.status])).toEqual([['schema_open_to_create', 'degraded']]);
      expect(open.primary.reasons[0]?.message).toMatch(/REVOKE CREATE ON SCHEMA <schema> FROM PUBLIC/);
      expect(open.status).toBe('degraded');
      // A replica replays the same catalog; the primary alone reports it.
      expect(open.replicas.flatMap((r) => r.reasons.map((x) => x.code))).not.toContain('schema_open_to_create');
    } finally {
      await onPrimary('shard_001', (c) => c.query('revoke create on schema public from public'));
    }
    const closed = shard(await inspector.health(), 'shard_001');
    expect(closed.primary.reasons.map((r) => r.code)).not.toContain('schema_open_to_create');
    // A grant to the application role alone is named as such.
    await onPrimary('shard_001', (c) => c.query('grant create on schema public to ca_dms_app'));
    try {
      expect(shard(await inspector.health(), 'shard_001').primary.facts.schemaCreators).toEqual(['ca_dms_app']);
    } finally {
      await onPrimary('shard_001', (c) => c.query('revoke create on schema public from ca_dms_app'));
    }
  });

  it('reports a caught-up replica of an idle primary as in recovery, streaming, with no lag', async () => {
    await cluster.shards[1]?.replicas[0]?.waitForCatchUp();
    const report = await inspector.health();
    const replica = shard(report, 'shard_002').replicas[0];

    expect(replica?.status).toBe('healthy');
    expect(replica?.facts.inRecovery).toBe(true);
    expect(replica?.facts.replication).toMatchObject({ lagSeconds: 0, lagBytes: 0, streaming: true, replayPaused: false });
  });

  it('reports a dead shard as down with the reason, after one timeout rather than the sum of its nodes', async () => {
    const report = await new ShardInspector(deadPools, { timeoutMs: TIMEOUT_MS }).health();
    const dead = shard(report, 'shard_dead');

    expect(report.status).toBe('down');
    expect(dead.status).toBe('down');
    expect([dead.primary, ...dead.replicas].map((n) => n.reasons.map((r) => r.code))).toEqual([['unreachable'], ['unreachable'], ['unreachable']]);
    expect(dead.primary.reasons[0]?.message).toBe(`cannot query the node: no answer within ${TIMEOUT_MS} ms`);
    expect(dead.primary.checkMs).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
    // Three hung nodes checked one after another would take three timeouts.
    expect(report.durationMs).toBeLessThan(2 * TIMEOUT_MS);
    expect(shard(report, 'shard_001').reasons).toEqual([]);
  });

  it('computes pg_stat_database rates from the previous sample', async () => {
    await inspector.health();
    await onPrimary('shard_002', async (c) => {
      for (let i = 0; i < 20; i += 1) await c.query('select 1');
    });
    const report = await inspector.health();
    const rates = shard(report, 'shard_002').primary.facts.rates;

    expect(rates?.intervalSeconds).toBeGreaterThan(0);
    expect(rates?.commitsPerSecond).toBeGreaterThan(0);
    expect(rates?.cacheHitRatio).toBeGreaterThan(0);
  });

  it('reports the slowest statements where pg_stat_statements is installed, and why not elsewhere', async () => {
    await onPrimary('shard_001', (c) => c.query('select count(*) from documents'));
    const report = await inspector.health();
    const withExtension = shard(report, 'shard_001').primary.statements;
    const without = shard(report, 'shard_002').primary.statements;

    expect(withExtension?.available).toBe(true);
    expect(withExtension?.available === true ? withExtension.top.length : 0).toBeGreaterThan(0);
    expect(without).toEqual({ available: false, reason: 'the pg_stat_statements extension is not installed in this database' });
  });

  it('reports deadlocks that happened since the previous check', async () => {
    await onPrimary('shard_002', (c) => c.query("insert into users (id, slot, email, display_name) values ('00000000-0000-4000-8000-000000000001', 1, 'a', 'a'), ('00000000-0000-4000-8000-000000000002', 1, 'b', 'b') on conflict do nothing"));
    await inspector.health();
    const url = cluster.shards[1]?.primary.url;
    const [a, b] = [new pg.Client({ connectionString: url }), new pg.Client({ connectionString: url })];
    await Promise.all([a.connect(), b.connect()]);
    await a.query("begin; update users set email = 'x' where id = '00000000-0000-4000-8000-000000000001'");
    await b.query("begin; update users set email = 'y' where id = '00000000-0000-4000-8000-000000000002'");
    const outcomes = await Promise.allSettled([
      a.query("update users set email = 'x' where id = '00000000-0000-4000-8000-000000000002'"),
      b.query("update users set email = 'y' where id = '00000000-0000-4000-8000-000000000001'"),
    ]);
    await Promise.all([a.query('rollback'), b.query('rollback')]);
    await Promise.all([a.end(), b.end()]);
    expect(outcomes.map((o) => o.status).sort()).toEqual(['fulfilled', 'rejected']);

    const primary = shard(await inspector.health(), 'shard_002').primary;

    expect(primary.status).toBe('degraded');
    expect(primary.reasons.map((r) => r.code)).toContain('deadlocks');
  });

  it('marks a shard degraded, not down, when its replica is stopped', async () => {
    await cluster.shards[0]?.replicas[0]?.stopReplica();
    const report = await inspector.health();
    const s = shard(report, 'shard_001');

    expect(s.status).toBe('degraded');
    expect(s.primary.status).toBe('healthy');
    expect(s.replicas[0]?.status).toBe('down');
    expect(s.reasons).toEqual([expect.objectContaining({ code: 'unreachable', nodeId: 'shard_001/replica-1', status: 'degraded' })]);
  });

  it('reports a replica whose replay is paused as degraded, with its lag in bytes', async () => {
    const strict = new ShardInspector(pools, { timeoutMs: TIMEOUT_MS, thresholds: parseHealthThresholds({ maxReplicaLagBytes: 0 }) });
    await cluster.shards[0]?.replicas[0]?.pauseReplay();
    await onPrimary('shard_001', (c) => c.query("insert into users (id, slot, email, display_name) values (gen_random_uuid(), 3, 'p', 'p')"));
    await new Promise((r) => setTimeout(r, 300));

    const replica = shard(await strict.health(), 'shard_001').replicas[0];

    expect(replica?.status).toBe('degraded');
    expect(replica?.reasons.map((r) => r.code)).toEqual(expect.arrayContaining(['replay_paused', 'replication_lag_bytes']));
    expect(replica?.facts.replication?.lagBytes).toBeGreaterThan(0);
  });

  it('measures lag from the primary: a replica of an idle shard replaying a fresh commit is current, one that stays behind is not', async () => {
    const strict = new ShardInspector(pools, { timeoutMs: TIMEOUT_MS, thresholds: parseHealthThresholds({ maxReplicaLagSeconds: 1 }) });
    const replica = cluster.shards[0]?.replicas[0];
    const onReplica = async (sql: string): Promise<void> => {
      const client = new pg.Client({ connectionString: replica?.url });
      client.on('error', () => undefined);
      await client.connect();
      try {
        await client.query(sql);
        await client.query('select pg_reload_conf()');
      } finally {
        await client.end();
      }
    };
    const idle = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
    const replicaOf = async (): Promise<ShardHealthReport['replicas'][number] | undefined> => shard(await strict.health(), 'shard_001').replicas[0];
    try {
      // Every commit reaches the replica at once and is applied 400 ms later: WAL received, not replayed.
      await onReplica("alter system set recovery_min_apply_delay = '400ms'");
      await replica?.waitForCatchUp();
      await idle(1500);
      // Measured on the replica alone, the fresh commit makes the replica look as old as its last
      // replayed commit (1.5 s, over the 1 s bound) although it is 400 ms behind at most.
      await onPrimary('shard_001', (c) => c.query('select txid_current()'));
      const current = await replicaOf();

      expect(current?.reasons).toEqual([]);
      expect(current?.facts.replication?.lagSeconds).toBe(0);

      // A replica that takes longer than the health check's wait to replay is behind. The wait is
      // counted in polls, so a starved machine stretches it: at load 20 it outlasted a 3 s delay
      // (1 run of 3 reported the replica healthy). Caught up first, then a delay no wait reaches.
      await replica?.waitForCatchUp();
      await onReplica("alter system set recovery_min_apply_delay = '60s'");
      await idle(1200);
      const behind = await replicaOf();

      expect(behind?.status).toBe('degraded');
      expect(behind?.reasons.map((r) => r.code)).toContain('replication_lag_seconds');
      expect(behind?.facts.replication?.lagSeconds).toBeGreaterThan(1);
      expect(behind?.facts.replication?.lagBytes).toBeGreaterThan(0);
    } finally {
      await onReplica('alter system reset recovery_min_apply_delay');
    }
  });

  it('merges what RDS and CloudWatch say about an instance into its health', async () => {
    const rds = mockClient(RDSClient);
    const cw = mockClient(CloudWatchClient);
    try {
      const port = cluster.shards[1]?.primary.port;
      rds.on(DescribeDBInstancesCommand).resolves({
        DBInstances: [{ DBInstanceIdentifier: 'shard-2', DBInstanceStatus: 'available', AllocatedStorage: 100, Endpoint: { Address: '127.0.0.1', Port: port } }],
      });
      cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [{ Id: 'fs0', Values: [2 * 1024 ** 3] }] });
      const cloud = new RdsInventory({ rds: new RDSClient({ region: 'eu-west-1' }), cloudwatch: new CloudWatchClient({ region: 'eu-west-1' }) });

      const report = await new ShardInspector(pools, { timeoutMs: TIMEOUT_MS, cloud }).health();
      const primary = shard(report, 'shard_002').primary;

      expect(report.cloud).toEqual({ available: true });
      expect(primary.facts.rds).toEqual({ status: 'available', freeStorageBytes: 2 * 1024 ** 3, allocatedStorageBytes: 100 * 1024 ** 3, replicaLagSeconds: null });
      expect(primary.reasons).toEqual([expect.objectContaining({ code: 'free_storage', status: 'degraded' })]);
    } finally {
      rds.restore();
      cw.restore();
    }
  });

  it('still reports database health when RDS cannot be read, saying so', async () => {
    const rds = mockClient(RDSClient);
    const cw = mockClient(CloudWatchClient);
    try {
      rds.on(DescribeDBInstancesCommand).rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }));
      const cloud = new RdsInventory({ rds: new RDSClient({ region: 'eu-west-1' }), cloudwatch: new CloudWatchClient({ region: 'eu-west-1' }) });

      const report = await new ShardInspector(pools, { timeoutMs: TIMEOUT_MS, cloud }).health();

      // The call that failed and the SDK's error name; the SDK's message (which may name accounts and roles) is for the log.
      expect(report.cloud).toEqual({ available: false, error: "the cloud inventory could not be read (DescribeDBInstances failed: ThrottlingException); the log has the SDK's message (throttling, or the function's RDS and CloudWatch permissions)" });
      expect(shard(report, 'shard_002').primary.facts.reachable).toBe(true);
    } finally {
      rds.restore();
      cw.restore();
    }
  });
});
