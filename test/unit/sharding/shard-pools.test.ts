import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { isNodeFailure, ReplicaReader, ShardUnavailableError } from '../../../functions/adapters/postgres/replica-reader.js';
import { endpointOf, ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { RoutingError } from '../../../functions/core/sharding/errors.js';
import { refusedLoopbackPort } from '../../support/refused-port.js';

const config = {
  shards: [
    { shard_id: 'shard_001', database_url: 'postgresql://app:s3cret@db1.internal:5432/ca_dms', read_replicas: ['postgresql://app:s3cret@db1-r1.internal:6432/ca_dms'] },
    { shard_id: 'shard_002', database_url: 'postgresql://app:s3cret@db2.internal/ca_dms', read_replicas: [] },
  ],
};

let pools: ShardPools | undefined;
afterEach(async () => {
  await pools?.end();
  pools = undefined;
});

describe('shard pools', () => {
  it('names every node by shard and role, with an endpoint that carries no credentials', () => {
    pools = ShardPools.fromConfig(config);

    expect(pools.nodes().map((n) => [n.nodeId, n.role, n.endpoint])).toEqual([
      ['shard_001/primary', 'primary', 'db1.internal:5432/ca_dms'],
      ['shard_001/replica-1', 'replica', 'db1-r1.internal:6432/ca_dms'],
      ['shard_002/primary', 'primary', 'db2.internal:5432/ca_dms'],
    ]);
    expect(JSON.stringify(pools.nodes().map((n) => n.endpoint))).not.toContain('s3cret');
  });

  it('rejects an unknown shard id with a routing error listing the configured ones', () => {
    pools = ShardPools.fromConfig(config);

    expect(() => pools?.primary('shard_009')).toThrow(RoutingError);
    expect(() => pools?.replicas('shard_009')).toThrow(/configured: shard_001, shard_002/);
  });

  it('does not echo an unparseable connection string', () => {
    expect(endpointOf('postgresql://app:s3cret@[broken')).toBe('(unparseable connection string)');
  });
});

describe('which failures move a read to another node', () => {
  const dbError = (code: string): pg.DatabaseError => Object.assign(new pg.DatabaseError('x', 1, 'error'), { code });

  it('retries connection-level failures elsewhere', () => {
    expect(isNodeFailure(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }))).toBe(true);
    expect(isNodeFailure(new Error('Connection terminated unexpectedly'))).toBe(true);
    expect(isNodeFailure(dbError('57P01'))).toBe(true);
    expect(isNodeFailure(dbError('08006'))).toBe(true);
    expect(isNodeFailure(dbError('40001'))).toBe(true);
  });

  it('lets SQL errors through', () => {
    expect(isNodeFailure(dbError('42P01'))).toBe(false);
    expect(isNodeFailure(dbError('23505'))).toBe(false);
    expect(isNodeFailure('not an error')).toBe(false);
  });

  it('raises ShardUnavailableError, with the last failure as cause, when no node answers', async () => {
    // One refused port for both: the primary and its replica are down.
    const [p, r] = Array<number>(2).fill(await refusedLoopbackPort());
    pools = ShardPools.fromConfig({
      shards: [{ shard_id: 's', database_url: `postgresql://u:p@127.0.0.1:${p}/d`, read_replicas: [`postgresql://u:p@127.0.0.1:${r}/d`] }],
    }, { connectionTimeoutMillis: 500 });
    const reader = new ReplicaReader(pools, { bounds: { maxLagSeconds: 5, maxLagBytes: 1000, maxStateAgeMs: 10_000 }, intervalMs: 60_000, probeTimeoutMs: 500 });
    await reader.refresh();

    const failure = reader.query('s', 'select 1');

    await expect(failure).rejects.toBeInstanceOf(ShardUnavailableError);
    await expect(failure).rejects.toMatchObject({ shardId: 's', cause: expect.objectContaining({ code: 'ECONNREFUSED' }) });
  });
});
