import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { applyShardingEnv, loadShardingConfig, parseShardingConfig, redactUrl } from '../../../functions/core/sharding/config.js';
import { ShardingConfigError } from '../../../functions/core/sharding/errors.js';

const SECRET = 'hunter2-s3cret';
const url = (host: string): string => `postgresql://app:${SECRET}@${host}:5432/ca_dms`;

/** The guide's example, as written there. */
const guideExample = {
  strategy: 'hash_based',
  shards: [
    { shard_id: 'shard_001', database_url: 'postgresql://user:pass@shard1:5432/ca_dms', weight: 1.0, read_replicas: ['postgresql://user:pass@replica1:5432/ca_dms'] },
    { shard_id: 'shard_002', database_url: 'postgresql://user:pass@shard2:5432/ca_dms', weight: 1.0, read_replicas: ['postgresql://user:pass@replica2:5432/ca_dms'] },
  ],
  default_shard: 'shard_001',
};

function problemsOf(fn: () => unknown): readonly string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ShardingConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ShardingConfigError');
}

describe('sharding configuration', () => {
  it("accepts the guide's ShardingConfig as it stands, with defaults for the rest", () => {
    const config = parseShardingConfig(guideExample);
    expect(config.strategy).toBe('hash_based');
    expect(config.shards.map((s) => s.shard_id)).toEqual(['shard_001', 'shard_002']);
    expect(config).toMatchObject({ enabled: true, directory: { fallback: 'hash', cache_ttl_seconds: 5, override_hash: true }, max_replica_lag_seconds: 5, health_check_interval_seconds: 10 });
  });

  it('defaults weight to 1 and read_replicas to none', () => {
    const config = parseShardingConfig({ shards: [{ shard_id: 'a', database_url: url('a') }], default_shard: 'a' });
    expect(config.shards[0]).toMatchObject({ weight: 1, read_replicas: [] });
  });

  it('refuses a max_replica_lag_seconds of 0, which no replica can meet, and says how to read from primaries only', () => {
    // Accepted, 0 made every replica ineligible by accident (its last probe is always some ms old),
    // while the reader kept probing them and committing heartbeats on the primaries.
    expect(problemsOf(() => parseShardingConfig({ ...guideExample, max_replica_lag_seconds: 0 }))).toEqual([
      'max_replica_lag_seconds: must be more than 0 seconds (no replica is ever 0 s behind; to read from primaries only, list no read_replicas)',
    ]);
    expect(problemsOf(() => parseShardingConfig({ ...guideExample, max_replica_lag_seconds: -1 }))).toHaveLength(1);
    expect(parseShardingConfig({ ...guideExample, max_replica_lag_seconds: 0.5 }).max_replica_lag_seconds).toBe(0.5);
  });

  it('names every problem at once', () => {
    const problems = problemsOf(() =>
      parseShardingConfig({
        strategy: 'hash_based',
        shards: [
          { shard_id: 'a', database_url: url('a'), weight: 0 },
          { shard_id: 'a', database_url: 'not a url', weight: -1 },
          { shard_id: 'b', database_url: url('b'), read_replicas: ['mysql://x:y@z/db'] },
        ],
        default_shard: 'missing',
      }),
    );
    expect(problems).toEqual(
      expect.arrayContaining([
        'shards[0].weight: must be a positive number',
        'shards[1].weight: must be a positive number',
        'shards[1].database_url: must be a postgres:// or postgresql:// URL with a host',
        'shards[2].read_replicas[0]: must be a postgres:// or postgresql:// URL with a host',
        'shards[1].shard_id: duplicate shard id "a" (also shards[0])',
        'default_shard: "missing" is not one of the shards (a, b)',
      ]),
    );
    expect(problems).toHaveLength(6);
  });

  it('rejects a database used by two shards, showing the URL without its password', () => {
    const problems = problemsOf(() =>
      parseShardingConfig({ shards: [{ shard_id: 'a', database_url: url('db') }, { shard_id: 'b', database_url: url('DB') }], default_shard: 'a' }),
    );
    expect(problems).toEqual(['shards[1].database_url: same database as shards[0].database_url (postgresql://app:***@DB:5432/ca_dms); every primary and replica must be a distinct endpoint']);
  });

  it('never lets a password reach the error, its message or its cause', () => {
    let caught: unknown;
    try {
      loadShardingConfig(
        { shards: [{ shard_id: 'a', database_url: `postgres://app:${SECRET}@/nohost` }, { shard_id: 'b', database_url: url('b'), read_replicas: [url('b')] }], default_shard: 'a' },
        { DATABASE_REPLICA_URLS: `a=postgresql://app:${SECRET}@` },
      );
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ShardingConfigError);
    expect(inspect(caught, { depth: 20 })).not.toContain(SECRET);
    expect(JSON.stringify(caught)).not.toContain(SECRET);
  });

  it('rejects unknown keys and strategies', () => {
    const problems = problemsOf(() => parseShardingConfig({ ...guideExample, strategy: 'round_robin', shard_count: 3 }));
    expect(problems.some((p) => p.startsWith('strategy:'))).toBe(true);
    expect(problems.some((p) => p.includes('shard_count'))).toBe(true);
  });

  it('requires ranges for range_based and checks that they name configured shards', () => {
    expect(problemsOf(() => parseShardingConfig({ ...guideExample, strategy: 'range_based' }))).toEqual(['ranges: strategy range_based needs at least one range']);
    expect(
      problemsOf(() => parseShardingConfig({ ...guideExample, strategy: 'range_based', range_key_type: 'number', ranges: [{ shard_id: 'shard_009' }] })),
    ).toEqual(['ranges[0].shard_id: "shard_009" is not one of the shards']);
  });

  it('names both ranges of an overlap and of a gap', () => {
    const problems = problemsOf(() =>
      parseShardingConfig({
        ...guideExample,
        strategy: 'range_based',
        range_key_type: 'number',
        ranges: [
          { shard_id: 'shard_001', to: 100 },
          { shard_id: 'shard_002', from: 50, to: 200 },
          { shard_id: 'shard_001', from: 300 },
        ],
      }),
    );
    expect(problems).toEqual([
      'ranges[0] shard_001 [.., 100) and ranges[1] shard_002 [50, 200) overlap: ranges must be listed in ascending order, each starting where the previous one ends',
      'ranges[1] shard_002 [50, 200) and ranges[2] shard_001 [300, ..) leave a gap: keys from 200 up to 300 belong to no shard',
    ]);
  });

  it('rejects an open bound in the middle and bounds of the wrong type', () => {
    const problems = problemsOf(() =>
      parseShardingConfig({
        ...guideExample,
        strategy: 'range_based',
        range_key_type: 'timestamp',
        ranges: [{ shard_id: 'shard_001', to: '2026-01-01T00:00:00Z' }, { shard_id: 'shard_002' }, { shard_id: 'shard_001', from: 'yesterday' }],
      }),
    );
    expect(problems).toEqual([
      'ranges[2].from: must be an ISO 8601 timestamp with a time zone (e.g. 2026-01-01T00:00:00Z) or epoch milliseconds for range_key_type timestamp',
      'ranges[1] shard_002 [.., ..) is open below, so it overlaps ranges[0] shard_001 [.., "2026-01-01T00:00:00Z"); only the first range may omit from',
      'ranges[1] shard_002 [.., ..) is open above, so it overlaps ranges[2] shard_001 ["yesterday", ..); only the last range may omit to',
    ]);
  });
});

describe('environment variables', () => {
  it('SHARDING_ENABLED and SHARDING_STRATEGY override the document', () => {
    const config = loadShardingConfig({ ...guideExample, directory: { fallback: 'reject' } }, { SHARDING_ENABLED: 'false', SHARDING_STRATEGY: 'directory_based' });
    expect(config.enabled).toBe(false);
    expect(config.strategy).toBe('directory_based');
  });

  it('plain DATABASE_REPLICA_URLS become the replicas of the only shard', () => {
    const config = loadShardingConfig({ shards: [{ shard_id: 'a', database_url: url('a') }], default_shard: 'a' }, { DATABASE_REPLICA_URLS: `${url('r1')}, ${url('r2')}` });
    expect(config.shards[0]?.read_replicas).toEqual([url('r1'), url('r2')]);
  });

  it('shard_id=url pairs replace the replicas of the shards they name', () => {
    const config = loadShardingConfig(guideExample, { DATABASE_REPLICA_URLS: `shard_002=${url('r2a')}?sslmode=require,shard_002=${url('r2b')}` });
    expect(config.shards[0]?.read_replicas).toEqual(['postgresql://user:pass@replica1:5432/ca_dms']);
    expect(config.shards[1]?.read_replicas).toEqual([`${url('r2a')}?sslmode=require`, url('r2b')]);
  });

  it('refuses plain replica URLs when there are several shards', () => {
    expect(problemsOf(() => loadShardingConfig(guideExample, { DATABASE_REPLICA_URLS: url('r') }))).toEqual([
      'DATABASE_REPLICA_URLS: plain URLs are only allowed with exactly one shard (there are 2); use shard_id=url pairs',
    ]);
  });

  it('reports bad variables together with problems in the document', () => {
    const problems = problemsOf(() => loadShardingConfig({ ...guideExample, default_shard: 'nope' }, { SHARDING_ENABLED: 'maybe', SHARDING_STRATEGY: 'random', DATABASE_REPLICA_URLS: `shard_404=${url('x')}` }));
    expect(problems).toEqual([
      'SHARDING_ENABLED: must be true or false, got "maybe"',
      'SHARDING_STRATEGY: must be one of hash_based, range_based, directory_based, got "random"',
      'DATABASE_REPLICA_URLS: entry 1 names shard "shard_404", which is not configured',
      'default_shard: "nope" is not one of the shards (shard_001, shard_002)',
    ]);
  });

  it('does not change the document it is given', () => {
    const doc = structuredClone(guideExample);
    applyShardingEnv(doc, { SHARDING_STRATEGY: 'range_based', DATABASE_REPLICA_URLS: `shard_001=${url('r')}` });
    expect(doc).toEqual(guideExample);
  });
});

describe('redactUrl', () => {
  it.each([
    ['postgresql://app:s3cret@db:5432/ca_dms', 'postgresql://app:***@db:5432/ca_dms'],
    ['postgres://app:p@ss:w/rd@db/ca_dms', 'postgres://app:***@db/ca_dms'],
    ['postgresql://db/ca_dms?user=app&password=s3cret&sslmode=require', 'postgresql://db/ca_dms?user=app&password=***&sslmode=require'],
    ['postgresql://app@db/ca_dms', 'postgresql://app@db/ca_dms'],
  ])('redacts %s', (input, expected) => {
    expect(redactUrl(input)).toBe(expected);
  });
});
