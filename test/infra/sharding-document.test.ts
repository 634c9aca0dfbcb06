/** The sharding document the app tasks and the scaling API receive as SHARDING_CONFIG_JSON. */
import { describe, expect, it } from 'vitest';
import { shardingDocument } from '../../lib/data/sharding-document.js';

describe('shardingDocument', () => {
  it('points each shard at its primary and replicas with verified TLS and no credentials', () => {
    const doc = shardingDocument(
      [
        { id: 'shard-001', host: 'p1.example', replicas: ['r1.example'] },
        { id: 'shard-002', host: 'p2.example', replicas: [] },
      ],
      'ca_dms',
      'hash_based',
    );

    expect(doc).toEqual({
      strategy: 'hash_based',
      default_shard: 'shard-001',
      shards: [
        { shard_id: 'shard-001', database_url: 'postgresql://p1.example:5432/ca_dms?sslmode=verify-full', weight: 1, read_replicas: ['postgresql://r1.example:5432/ca_dms?sslmode=verify-full'] },
        { shard_id: 'shard-002', database_url: 'postgresql://p2.example:5432/ca_dms?sslmode=verify-full', weight: 1, read_replicas: [] },
      ],
    });
  });

  it('is rejected by the sharding schema when two shards share an id', () => {
    const twice = [
      { id: 'shard-001', host: 'a.example', replicas: [] },
      { id: 'shard-001', host: 'b.example', replicas: [] },
    ];

    expect(() => shardingDocument(twice, 'ca_dms', 'hash_based')).toThrow(/duplicate shard id/);
  });
});
