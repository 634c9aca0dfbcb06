/**
 * The rebalance check's census of a shard (one scan per table) against the exact statistics,
 * with directory lists as callers may give them, and the estimated bytes of a table whose
 * sampled pages hold no live row.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import type { MovableUnit } from '../../../functions/core/sharding/rebalance.js';
import { buildSlotMap, type SlotMap } from '../../../functions/core/sharding/slot-map.js';
import { shardServers, type ShardDatabase } from './fixtures/shard-databases.js';

const VIP_DOCS = 5;

/** Two servers for the whole file; each describe block below fills a database of its own on them. */
const servers = shardServers(2);

/** The one shard of a describe block (a database of its own on the first server): its pools, and one-off queries on it. */
interface OneShard {
  readonly pools: () => ShardPools;
  readonly query: <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => Promise<pg.QueryResult<R>>;
}

/**
 * One shard without replicas, for the describe block that calls it (a fresh database with the shard
 * schema on the file's first server), filled by `fill` on a client of it. `pools()` and `query()`
 * once the block's beforeAll has run.
 */
function oneShard(fill: (shard: pg.Client) => Promise<void>): OneShard {
  let cluster: ShardDatabase | undefined;
  let pools: ShardPools | undefined;
  const connected = async (): Promise<pg.Client> => {
    if (cluster === undefined) throw new Error('the shard of this describe block is not started (beforeAll)');
    const client = new pg.Client({ connectionString: cluster.shards[0]?.primary.url });
    await client.connect();
    return client;
  };
  beforeAll(async () => {
    cluster = await servers.database(1);
    const shard = await connected();
    try {
      await fill(shard);
    } finally {
      await shard.end();
    }
    pools = ShardPools.fromConfig(cluster.config, { max: 2 });
  });
  afterAll(async () => {
    await pools?.end();
  });
  return {
    pools: () => {
      if (pools === undefined) throw new Error('the shard of this describe block is not started (beforeAll)');
      return pools;
    },
    query: async (text, values) => {
      const client = await connected();
      try {
        return await client.query(text, values);
      } finally {
        await client.end();
      }
    },
  };
}

/**
 * {@link oneShard} holding one owner whose documents `fill` writes; autovacuum is off on
 * documents, so pg_class says what the test's own ANALYZE or VACUUM made it say.
 */
function oneShardOfOwner(fill: (shard: pg.Client, owner: string, slot: number) => Promise<void>): OneShard {
  return oneShard(async (shard) => {
    const owner = randomUUID();
    await shard.query('alter table documents set (autovacuum_enabled = false)');
    await shard.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'o@example.org', 'owner')`, [owner, slotOf(owner)]);
    await fill(shard, owner, slotOf(owner));
  });
}

describe('the census of the rebalance check against the exact statistics', () => {
  let cluster: ShardDatabase;
  let pools: ShardPools;
  let inspector: ShardInspector;
  let slotMap: SlotMap;
  /** A user whose hash slot is shard_001's, placed on shard_002 by the directory. */
  let vip: string;

  const clientOf = async (shardId: string): Promise<pg.Client> => {
    const c = new pg.Client({ connectionString: cluster.config.shards.find((s) => s.shard_id === shardId)?.database_url });
    await c.connect();
    return c;
  };

  beforeAll(async () => {
    cluster = await servers.database();
    slotMap = buildSlotMap([
      { shardId: 'shard_001', weight: 1 },
      { shardId: 'shard_002', weight: 1 },
    ]);
    const [one, two] = [await clientOf('shard_001'), await clientOf('shard_002')];
    try {
      for (const [client, shardId] of [[one, 'shard_001'], [two, 'shard_002']] as const) {
        const slot = slotMap.assignments.indexOf(shardId);
        await client.query(
          `with u as (insert into users (id, slot, email, display_name) select gen_random_uuid(), $1, 'u' || i || '@example.org', 'user' from generate_series(1, 40) i returning id)
           insert into documents (id, owner_id, slot, title) select gen_random_uuid(), u.id, $1, 'doc' from u, generate_series(1, 3)`,
          [slot],
        );
      }
      do vip = randomUUID();
      while (slotMap.assignments[slotOf(vip)] !== 'shard_001');
      await two.query(
        `with u as (insert into users (id, slot, email, display_name) values ($1, $2, 'vip@example.org', 'vip') returning id)
         insert into documents (id, owner_id, slot, title) select gen_random_uuid(), u.id, $2, 'doc' from u, generate_series(1, $3)`,
        [vip, slotOf(vip), VIP_DOCS],
      );
    } finally {
      await one.end();
      await two.end();
    }
    pools = ShardPools.fromConfig(cluster.config, { max: 2 });
    inspector = new ShardInspector(pools, { timeoutMs: 5000 });
  });
  afterAll(async () => {
    await pools?.end();
  });

  const rowsOf = (units: readonly MovableUnit[], shardId: string): number => units.filter((u) => u.shardId === shardId).reduce((n, u) => n + u.rows, 0);

  it('counts a directory key listed twice once: in its unit, in the shard totals, and the units sum to the exact statistics', async () => {
    const directory = [
      { key: vip, shardId: 'shard_002' },
      { key: vip, shardId: 'shard_002' },
    ];

    const units = await inspector.movableUnits(slotMap, directory);
    const check = await inspector.rebalanceCheck({ slotMap, directory, by: 'rows' });
    const exact = await inspector.statistics({ exact: true, slotMap });

    expect(units.filter((u) => u.kind === 'directory')).toEqual([expect.objectContaining({ id: vip, shardId: 'shard_002', rows: 1 + VIP_DOCS })]);
    expect(check.summary.shards.map((s) => s.before)).toEqual(exact.shards.map((s) => s.rows));
    expect(['shard_001', 'shard_002'].map((s) => rowsOf(units, s))).toEqual(exact.shards.map((s) => s.rows));
  });

  it('refuses a directory that places one key (in two spellings) on two shards, naming both', async () => {
    const directory = [
      { key: vip, shardId: 'shard_002' },
      { key: vip.toUpperCase(), shardId: 'shard_001' },
    ];

    await expect(inspector.rebalanceCheck({ slotMap, directory })).rejects.toThrow(`directory key ${vip} is listed on two shards (shard_002 and shard_001)`);
  });

  it('finds the rows of a directory key given in another spelling (upper case, braces) under its canonical key', async () => {
    for (const spelling of [vip.toUpperCase(), `{${vip}}`]) {
      const units = await inspector.movableUnits(slotMap, [{ key: spelling, shardId: 'shard_002' }]);
      const exact = await inspector.statistics({ exact: true, slotMap });

      expect(units.filter((u) => u.kind === 'directory')).toEqual([expect.objectContaining({ id: vip, shardId: 'shard_002', rows: 1 + VIP_DOCS })]);
      expect(rowsOf(units, 'shard_002')).toBe(exact.shards[1]?.rows);
    }
  });
});

describe('estimated bytes of a table whose sampled pages hold no live row', () => {
  const shard = oneShardOfOwner(async (client, owner, slot) => {
    // Some 200 pages of documents, all deleted but the 10 written last (on the last page).
    await client.query(`insert into documents (id, owner_id, slot, title) select gen_random_uuid(), $1, $2, 'gone' from generate_series(1, 20000)`, [owner, slot]);
    await client.query(`insert into documents (id, owner_id, slot, title) select gen_random_uuid(), $1, $2, 'kept' from generate_series(1, 10)`, [owner, slot]);
    await client.query(`delete from documents where title = 'gone'`);
    await client.query('analyze users, documents');
  });

  it('widens the sample until it finds live rows instead of reporting 0 bytes for rows the planner counts', async () => {
    const inspector = new ShardInspector(shard.pools(), { timeoutMs: 5000, samplePages: 1 });
    // What the first sample reads: one page's share of the table, and no live row in it.
    const { rows } = await shard.query<{ pages: number; sampled: number }>(
      `select (pg_relation_size('documents') / 8192)::int as pages,
              (select count(*) from documents tablesample system ((100.0 / (pg_relation_size('documents') / 8192))::float4) repeatable (0))::int as sampled`,
    );

    const estimated = (await inspector.statistics()).shards[0]?.tables.find((t) => t.table === 'documents');
    const exact = (await inspector.statistics({ exact: true })).shards[0]?.tables.find((t) => t.table === 'documents');

    expect(rows[0]?.pages).toBeGreaterThan(100);
    expect(rows[0]?.sampled).toBe(0);
    expect(estimated).toMatchObject({ method: 'estimate' });
    expect(estimated?.rows).toBeGreaterThan(0);
    expect(exact?.rows).toBe(10);
    expect(estimated?.bytes).toBeGreaterThan(0);
    expect(Math.abs((estimated?.bytes ?? 0) / (estimated?.rows ?? 1) - (exact?.bytes ?? 0) / 10)).toBeLessThan(1);
  });
});

describe('estimates of a big table: the row count of pg_class, and bytes per row from a sample of its pages', () => {
  const shard = oneShardOfOwner(async (client, owner, slot) => {
    await client.query(`insert into documents (id, owner_id, slot, title) select gen_random_uuid(), $1, $2, 'doc ' || i from generate_series(1, 20000) i`, [owner, slot]);
    await client.query('analyze users, documents');
    // Written since the last ANALYZE: the planner's count does not have them yet.
    await client.query(`insert into documents (id, owner_id, slot, title) select gen_random_uuid(), $1, $2, 'doc ' || i from generate_series(1, 5000) i`, [owner, slot]);
  });

  it('reports the rows of pg_class (a sample of 10 pages is not a count), with bytes per row as the exact measure has them', async () => {
    const inspector = new ShardInspector(shard.pools(), { timeoutMs: 5000, samplePages: 10 });

    const estimated = (await inspector.statistics()).shards[0]?.tables.find((t) => t.table === 'documents');
    const exact = (await inspector.statistics({ exact: true })).shards[0]?.tables.find((t) => t.table === 'documents');

    expect(exact?.rows).toBe(25_000);
    expect(estimated).toMatchObject({ method: 'estimate', rows: 20_000 });
    expect((estimated?.bytes ?? 0) / 20_000).toBeCloseTo((exact?.bytes ?? 0) / 25_000, 0);
  });
});

describe('statistics of partitioned tables', () => {
  const shard = oneShard(async (client) => {
    await client.query(`create table p_users (id uuid not null, slot int not null, email text) partition by range (slot);
      create table p_users_low partition of p_users for values from (0) to (2048);
      create table p_users_high partition of p_users for values from (2048) to (4096);
      create table p_documents (id uuid not null, owner_id uuid not null, slot int not null, title text) partition by range (slot);
      create table p_documents_all partition of p_documents for values from (0) to (4096);
      insert into p_users select gen_random_uuid(), i % 4096, 'u' || i from generate_series(1, 4000) i;
      insert into p_documents select gen_random_uuid(), gen_random_uuid(), i % 4096, 'doc' from generate_series(1, 4000) i;
      analyze p_users, p_documents`);
  });

  it('reports the on-disk size of a partitioned table as that of its partitions, and samples all of them', async () => {
    const inspector = new ShardInspector(shard.pools(), { timeoutMs: 5000, tables: { users: 'p_users', documents: 'p_documents' }, samplePages: 5 });
    const { rows } = await shard.query<{ users: number; documents: number }>(
      `select (pg_total_relation_size('p_users_low') + pg_total_relation_size('p_users_high'))::float8 as users, pg_total_relation_size('p_documents_all')::float8 as documents`,
    );

    const estimated = (await inspector.statistics()).shards[0]?.tables;
    const exact = (await inspector.statistics({ exact: true })).shards[0]?.tables;

    expect(estimated?.map((t) => [t.table, t.method, t.rows, t.diskBytes])).toEqual([
      ['p_users', 'estimate', 4000, rows[0]?.users],
      ['p_documents', 'estimate', 4000, rows[0]?.documents],
    ]);
    expect(exact?.map((t) => [t.table, t.rows, t.diskBytes])).toEqual([
      ['p_users', 4000, rows[0]?.users],
      ['p_documents', 4000, rows[0]?.documents],
    ]);
    expect(rows[0]?.users).toBeGreaterThan(0);
  });
});

describe('estimates of a table filled after pg_class counted it empty (ANALYZE or VACUUM of an empty table, then rows)', () => {
  const shard = oneShardOfOwner(async (client, owner, slot) => {
    // As a shard whose every slot was moved off and cleaned up, then vacuumed: 0 pages, 0 rows.
    await client.query('vacuum analyze documents');
    // Then slots moved back in, before autovacuum analyses the table again.
    await client.query(`insert into documents (id, owner_id, slot, title) select gen_random_uuid(), $1, $2, 'doc ' || i from generate_series(1, 5000) i`, [owner, slot]);
  });

  it('estimates the rows of the pages pg_class has not counted from the sample, instead of reporting 0 rows and 0 bytes', async () => {
    const inspector = new ShardInspector(shard.pools(), { timeoutMs: 5000, samplePages: 10 });
    const { rows } = await shard.query<{ relpages: number; reltuples: number; pages: number }>(
      `select relpages, reltuples::float8 as reltuples, (pg_relation_size('documents') / 8192)::int as pages from pg_class where relname = 'documents'`,
    );

    const estimated = (await inspector.statistics()).shards[0]?.tables.find((t) => t.table === 'documents');
    const exact = (await inspector.statistics({ exact: true })).shards[0]?.tables.find((t) => t.table === 'documents');

    expect(rows[0]).toMatchObject({ relpages: 0, reltuples: 0 });
    expect(rows[0]?.pages).toBeGreaterThan(30);
    expect(exact?.rows).toBe(5000);
    expect(estimated?.method).toBe('estimate');
    // A sample of some 10 of about 60 pages, scaled up by the share it read: an estimate, not 0.
    expect(estimated?.rows).toBeGreaterThan(3500);
    expect(estimated?.rows).toBeLessThan(6500);
    expect((estimated?.bytes ?? 0) / (estimated?.rows ?? 1)).toBeCloseTo((exact?.bytes ?? 0) / 5000, 0);
  });
});

describe('the rebalance check under hash_based routing with directory entries left over (override_hash false)', () => {
  let cluster: ShardDatabase;
  let pools: ShardPools;
  let slotMap: SlotMap;
  /** A user with 15 rows in a slot of its own on shard_001, and a directory entry the router ignores. */
  let owner: string;
  const hashOnly = { strategy: 'hash_based', overrideHash: false, fallback: 'hash' } as const;

  beforeAll(async () => {
    cluster = await servers.database();
    slotMap = buildSlotMap([
      { shardId: 'shard_001', weight: 1 },
      { shardId: 'shard_002', weight: 1 },
    ]);
    const clients = await Promise.all(cluster.config.shards.map(async (s) => {
      const c = new pg.Client({ connectionString: s.database_url });
      await c.connect();
      return c;
    }));
    const [one, two] = clients as [pg.Client, pg.Client];
    try {
      // 60 rows in one slot of shard_001, 45 in one of shard_002.
      for (const [client, shardId, users] of [[one, 'shard_001', 20], [two, 'shard_002', 15]] as const) {
        await client.query(
          `with u as (insert into users (id, slot, email, display_name) select gen_random_uuid(), $1, 'u' || i || '@example.org', 'user' from generate_series(1, $2::int) i returning id)
           insert into documents (id, owner_id, slot, title) select gen_random_uuid(), u.id, $1, 'doc' from u, generate_series(1, 2)`,
          [slotMap.assignments.indexOf(shardId), users],
        );
      }
      do owner = randomUUID();
      while (slotMap.assignments[slotOf(owner)] !== 'shard_001' || slotOf(owner) === slotMap.assignments.indexOf('shard_001'));
      await one.query(
        `with u as (insert into users (id, slot, email, display_name) values ($1, $2, 'owner@example.org', 'owner') returning id)
         insert into documents (id, owner_id, slot, title) select gen_random_uuid(), u.id, $2, 'doc' from u, generate_series(1, 14)`,
        [owner, slotOf(owner)],
      );
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
    pools = ShardPools.fromConfig(cluster.config, { max: 2 });
  });
  afterAll(async () => {
    await pools?.end();
  });

  it("counts a listed key's rows in its hash slot, which a slot move takes along, and proposes that slot", async () => {
    const inspector = new ShardInspector(pools, { timeoutMs: 5000 });
    const unlisted = await inspector.rebalanceCheck({ slotMap, routing: hashOnly, by: 'rows' });

    for (const home of ['shard_001', 'shard_002']) {
      const listed = await inspector.rebalanceCheck({ slotMap, directory: [{ key: owner, shardId: home }], routing: hashOnly, by: 'rows' });
      expect(listed.moves).toEqual(unlisted.moves);
      expect(listed.summary.balancedAfter).toBe(true);
    }
    expect(unlisted.moves).toEqual([{ unit: { kind: 'slot', id: String(slotOf(owner)) }, from: 'shard_001', to: 'shard_002', rows: 15, bytes: expect.any(Number) }]);
  });
});

describe('estimates of a partitioned table ANALYZEd while empty, its partitions filled and analysed since (as autovacuum does)', () => {
  const shard = oneShard(async (client) => {
    // An ANALYZE of the whole database (as after a restore or an upgrade) while they were empty:
    // the partitioned tables' own reltuples say 0, and only another ANALYZE of them changes it.
    await client.query(`create table p_users (id uuid not null, slot int not null, email text) partition by range (slot);
      create table p_users_low partition of p_users for values from (0) to (2048) with (autovacuum_enabled = false);
      create table p_users_high partition of p_users for values from (2048) to (4096) with (autovacuum_enabled = false);
      create table p_documents (id uuid not null, owner_id uuid not null, slot int not null, title text) partition by range (slot);
      create table p_documents_low partition of p_documents for values from (0) to (2048) with (autovacuum_enabled = false);
      create table p_documents_high partition of p_documents for values from (2048) to (4096) with (autovacuum_enabled = false);
      analyze p_users, p_documents;
      insert into p_users select gen_random_uuid(), i % 4096, 'u' || i from generate_series(1, 4000) i;
      insert into p_documents select gen_random_uuid(), gen_random_uuid(), i % 4096, 'doc' from generate_series(1, 4000) i`);
  });

  const tables = { users: 'p_users', documents: 'p_documents' };

  it("counts the rows of the partitions one of them has analysed, and scales the sample's for the one not analysed since it was empty", async () => {
    // Autovacuum analyses partitions, never the partitioned table: here one of them so far.
    await shard.query('analyze p_users_low, p_documents_low');
    const inspector = new ShardInspector(shard.pools(), { timeoutMs: 5000, tables, samplePages: 20 });
    const { rows } = await shard.query<{ reltuples: number; low: number }>(
      `select (select reltuples::float8 from pg_class where relname = 'p_documents') as reltuples, (select reltuples::float8 from pg_class where relname = 'p_documents_low') as low`,
    );

    const estimated = (await inspector.statistics()).shards[0]?.tables;
    const exact = (await inspector.statistics({ exact: true })).shards[0]?.tables;

    expect(rows[0]).toEqual({ reltuples: 0, low: 2047 });
    expect(exact?.map((t) => t.rows)).toEqual([4000, 4000]);
    for (const table of estimated ?? []) {
      expect(table.method).toBe('estimate');
      // 2,047 counted by pg_class and the sample's share for the other partition's pages.
      expect(table.rows).toBeGreaterThan(3000);
      expect(table.rows).toBeLessThan(5000);
      expect(table.bytes).toBeGreaterThan(0);
    }
  });

  it('counts the rows of every partition analysed since, not the 0 of the partitioned table', async () => {
    await shard.query('analyze p_users_low, p_users_high, p_documents_low, p_documents_high');
    const inspector = new ShardInspector(shard.pools(), { timeoutMs: 5000, tables, samplePages: 5 });

    const estimated = (await inspector.statistics()).shards[0]?.tables;
    const exact = (await inspector.statistics({ exact: true })).shards[0]?.tables;

    expect(estimated?.map((t) => [t.table, t.method, t.rows])).toEqual([
      ['p_users', 'estimate', 4000],
      ['p_documents', 'estimate', 4000],
    ]);
    for (const [i, table] of (estimated ?? []).entries()) {
      expect(table.bytes / 4000).toBeCloseTo((exact?.[i]?.bytes ?? 0) / 4000, -1);
    }
  });
});
