import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CloudWatchClient, GetMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import { DescribeDBInstancesCommand, RDSClient } from '@aws-sdk/client-rds';
import { mockClient } from 'aws-sdk-client-mock';
import { RdsInventory } from '../../../functions/adapters/aws/rds-inventory.js';
import { MAX_WHOLE_TABLE_BUDGET_MS, ShardInspectionError, ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { buildSlotMap, moveSlots, type SlotMap } from '../../../functions/core/sharding/slot-map.js';
import { refusedLoopbackPort } from '../../support/refused-port.js';
import type { TestReplica } from '../../support/replica.js';
import { shardServers, type ShardDatabase } from './fixtures/shard-databases.js';

const DOCS_PER_USER = 2;
/** A user placed on shard_002 by a directory entry although its hash slot belongs to shard_001. */
const DIRECTORY_USER_DOCS = 5;

/**
 * Two servers for the whole file; each describe block below fills a database of its own on them
 * (and the one that needs a standby starts one of the second server).
 */
const servers = shardServers(2);

describe('shard statistics and the rebalance check', () => {
  let cluster: ShardDatabase;
  let pools: ShardPools;
  let inspector: ShardInspector;
  let slotMap: SlotMap;
  let directoryUser: string;

  /** Users whose hash slot belongs to `shardId`, each with DOCS_PER_USER documents. */
  const seed = async (shardId: string, users: number): Promise<void> => {
    const url = cluster.config.shards.find((s) => s.shard_id === shardId)?.database_url;
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await insertUsers(client, shardId, users);
    } finally {
      await client.end();
    }
  };
  const insertUsers = async (client: pg.Client, shardId: string, users: number): Promise<void> => {
    let made = 0;
    while (made < users) {
      const id = randomUUID();
      const slot = slotOf(id);
      if (slotMap.assignments[slot] !== shardId) continue;
      await client.query(
        `with u as (insert into users (id, slot, email, display_name) values ($1::uuid, $2, $1::text || '@example.org', 'user') returning id)
         insert into documents (id, owner_id, slot, title, content) select gen_random_uuid(), u.id, $2, 'doc', '{"body":"lorem ipsum"}' from u, generate_series(1, $3)`,
        [id, slot, DOCS_PER_USER],
      );
      made += 1;
    }
  };

  beforeAll(async () => {
    cluster = await servers.database();
    slotMap = buildSlotMap([
      { shardId: 'shard_001', weight: 1 },
      { shardId: 'shard_002', weight: 1 },
    ]);
    await seed('shard_001', 300);
    await seed('shard_002', 100);
    directoryUser = randomUUID();
    const client = new pg.Client({ connectionString: cluster.config.shards[1]?.database_url });
    await client.connect();
    await client.query(
      `with u as (insert into users (id, slot, email, display_name) values ($1, $2, 'vip@example.org', 'vip') returning id)
       insert into documents (id, owner_id, slot, title) select gen_random_uuid(), u.id, $2, 'doc' from u, generate_series(1, $3)`,
      [directoryUser, slotOf(directoryUser), DIRECTORY_USER_DOCS],
    );
    await client.end();
    pools = ShardPools.fromConfig(cluster.config, { max: 2 });
    inspector = new ShardInspector(pools, { timeoutMs: 5000 });
  });
  afterAll(async () => {
    await pools?.end();
  });

  it('counts tables that were never analysed exactly, since no estimate exists yet', async () => {
    const stats = await inspector.statistics();
    const shard1 = stats.shards.find((s) => s.shardId === 'shard_001');

    expect(shard1?.tables).toEqual([
      expect.objectContaining({ table: 'users', rows: 300, method: 'exact' }),
      expect.objectContaining({ table: 'documents', rows: 600, method: 'exact' }),
      expect.objectContaining({ table: 'document_keys', rows: 0, method: 'exact' }),
    ]);
  });

  it('uses the planner estimates once tables are analysed, and exact counts on request', async () => {
    for (const s of cluster.shards) {
      const c = new pg.Client({ connectionString: s.primary.url });
      await c.connect();
      await c.query('analyze users, documents');
      await c.end();
    }

    const estimated = await inspector.statistics();
    const exact = await inspector.statistics({ exact: true });

    const users = (r: typeof exact) => r.shards.find((s) => s.shardId === 'shard_002')?.tables.find((t) => t.table === 'users');
    expect(users(estimated)).toMatchObject({ method: 'estimate', rows: 101 });
    expect(users(exact)).toMatchObject({ method: 'exact', rows: 101 });
    expect(users(exact)?.bytes).toBeGreaterThan(0);
  });

  it('reports users, documents, slots owned, shares of the total and the imbalance', async () => {
    const stats = await inspector.statistics({ exact: true, slotMap });
    const [a, b] = stats.shards;

    expect(a).toMatchObject({ shardId: 'shard_001', users: 300, documents: 600, rows: 900, slotsOwned: 2048 });
    expect(b).toMatchObject({ shardId: 'shard_002', users: 101, documents: 205, rows: 306, slotsOwned: 2048 });
    expect(stats.totals).toMatchObject({ rows: 1206, users: 401, documents: 805, slots: 4096 });
    expect((a?.shareOfRows ?? 0) + (b?.shareOfRows ?? 0)).toBeCloseTo(1, 10);
    expect(stats.imbalance.rows).toBeCloseTo(900 / 603, 10);
    expect(stats.complete).toBe(true);
  });

  it('counts exactly only the rows of units the shard owns: not a copy being moved in, nor one moved away and not yet cleaned up', async () => {
    const clientOf = async (shardId: string): Promise<pg.Client> => {
      const c = new pg.Client({ connectionString: cluster.config.shards.find((s) => s.shard_id === shardId)?.database_url });
      await c.connect();
      return c;
    };
    const [source, target] = [await clientOf('shard_001'), await clientOf('shard_002')];
    try {
      const before = await inspector.statistics({ exact: true, slotMap });
      // A slot of shard_001 with two users; one of them the directory keeps on shard_001 while the slot moves (excluded_keys).
      const { rows } = await source.query<{ slot: number; ids: string[] }>('select slot, array_agg(id::text order by id) as ids from users group by slot having count(*) >= 2 order by slot limit 1');
      const { slot, ids } = rows[0] as { slot: number; ids: string[] };
      const [pinned, ...moving] = ids as [string, ...string[]];
      // A move's bulk copy on shard_002 (rows first: the fence would refuse them once 'incoming').
      const copy = await source.query<{ users: string; documents: string }>(
        `select (select json_agg(u) from users u where slot = $1 and id::text = any($2))::text as users,
                (select json_agg(d) from documents d where slot = $1 and owner_id::text = any($2))::text as documents`,
        [slot, moving],
      );
      await target.query('insert into users select * from json_populate_recordset(null::users, $1::json)', [copy.rows[0]?.users]);
      await target.query('insert into documents select * from json_populate_recordset(null::documents, $1::json)', [copy.rows[0]?.documents]);
      await target.query(`insert into write_fences (kind, unit_id, state, excluded_keys) values ('slot', $1, 'incoming', $2)`, [String(slot), [pinned]]);
      // And shard_002's directory user has been moved away, its rows not yet deleted.
      await target.query(`insert into write_fences (kind, unit_id, state, moved_to) values ('directory', $1, 'moved', 'shard_001')`, [directoryUser]);
      // The directory as that move leaves it: the key pinned to shard_001. Given to the count and
      // the check alike, as the API gives them (its rows behind a moved row on a shard the
      // directory does not give the key are a finished move's leftovers, not shard_002's load).
      const directory = [{ key: directoryUser, shardId: 'shard_001' }];
      const copying = await inspector.statistics({ exact: true, slotMap, directory });
      const copyingChecks = [await inspector.rebalanceCheck({ slotMap, directory, by: 'rows' }), await inspector.rebalanceCheck({ slotMap, directory, by: 'bytes' })];
      // The flip: the target owns the slot, the source keeps its rows until the clean-up, but not
      // the pinned key's, which an 'open' directory row also keeps here (it decides over the slot row).
      await target.query(`update write_fences set state = 'open' where kind = 'slot' and unit_id = $1`, [String(slot)]);
      await source.query(`insert into write_fences (kind, unit_id, state, moved_to, excluded_keys) values ('slot', $1, 'moved', 'shard_002', $2), ('directory', $3, 'open', null, '{}')`, [String(slot), [pinned], pinned]);
      // The map the flip publishes: the slot on shard_002 (the source's rows behind its moved row
      // are then leftovers on a shard the map no longer names).
      const flippedMap = moveSlots(slotMap, [slot], 'shard_002');
      const flipped = await inspector.statistics({ exact: true, slotMap: flippedMap, directory });
      const flippedChecks = [await inspector.rebalanceCheck({ slotMap: flippedMap, directory, by: 'rows' }), await inspector.rebalanceCheck({ slotMap: flippedMap, directory, by: 'bytes' })];
      await source.query(`delete from write_fences where unit_id in ($1, $2)`, [String(slot), pinned]);
      await target.query(`delete from write_fences where unit_id in ($1, $2)`, [String(slot), directoryUser]);
      await target.query('delete from documents where slot = $1 and owner_id::text = any($2)', [slot, moving]);
      await target.query('delete from users where slot = $1 and id::text = any($2)', [slot, moving]);

      const counts = (r: typeof before) => r.shards.map((s) => ({ shardId: s.shardId, users: s.users, documents: s.documents }));
      const n = moving.length;
      expect(counts(copying)).toEqual([
        { shardId: 'shard_001', users: 300, documents: 600 },
        { shardId: 'shard_002', users: 100, documents: 205 - DIRECTORY_USER_DOCS },
      ]);
      expect(counts(flipped)).toEqual([
        { shardId: 'shard_001', users: 300 - n, documents: 600 - n * DOCS_PER_USER },
        { shardId: 'shard_002', users: 100 + n, documents: 205 - DIRECTORY_USER_DOCS + n * DOCS_PER_USER },
      ]);
      expect(copying.shards.every((s) => s.tables.every((t) => t.method === 'exact'))).toBe(true);
      // The rebalance check measures the shards in its own single pass: to the same rows and bytes.
      for (const [stats, [byRows, byBytes]] of [[copying, copyingChecks], [flipped, flippedChecks]] as const) {
        expect(byRows?.summary.shards.map((s) => s.before)).toEqual(stats.shards.map((s) => s.rows));
        expect(byBytes?.summary.shards.map((s) => s.before)).toEqual(stats.shards.map((s) => s.bytes));
      }
      expect(counts(await inspector.statistics({ exact: true, slotMap }))).toEqual(counts(before));
    } finally {
      await source.end();
      await target.end();
    }
  });

  it('lists every slot with rows as a unit, and a directory key as a unit of its own', async () => {
    const units = await inspector.movableUnits(slotMap, [{ key: directoryUser, shardId: 'shard_002' }]);

    const dir = units.filter((u) => u.kind === 'directory');
    expect(dir).toEqual([expect.objectContaining({ id: directoryUser, shardId: 'shard_002', rows: 1 + DIRECTORY_USER_DOCS })]);
    expect(units.filter((u) => u.shardId === 'shard_001').reduce((n, u) => n + u.rows, 0)).toBe(900);
    expect(units.filter((u) => u.shardId === 'shard_002').reduce((n, u) => n + u.rows, 0)).toBe(306);
    expect(units.every((u) => u.kind === 'directory' || slotMap.assignments[Number(u.id)] === u.shardId)).toBe(true);
  });

  it('proposes slot moves from the heavy shard that bring both within 10% by rows', async () => {
    const check = await inspector.rebalanceCheck({ slotMap, directory: [{ key: directoryUser, shardId: 'shard_002' }], by: 'rows' });

    expect(check.needed).toBe(true);
    expect(check.threshold).toBe(0.1);
    expect(check.moves.length).toBeGreaterThan(0);
    expect(check.moves.every((m) => m.from === 'shard_001' && m.to === 'shard_002' && m.unit.kind === 'slot')).toBe(true);
    expect(check.summary.balancedAfter).toBe(true);
    expect(check.summary.imbalanceAfter).toBeLessThanOrEqual(1.1);
  });

  it('proposes nothing when the shards are already within the threshold', async () => {
    const check = await inspector.rebalanceCheck({ slotMap, by: 'rows', threshold: 0.6 });

    expect(check.needed).toBe(false);
    expect(check.moves).toEqual([]);
  });

  it('proposes no move onto a shard that RDS says would be left with less free storage than the headroom', async () => {
    const rds = mockClient(RDSClient);
    const cw = mockClient(CloudWatchClient);
    try {
      const port = cluster.shards[1]?.primary.port;
      rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [{ DBInstanceIdentifier: 'shard-2', DBInstanceStatus: 'available', AllocatedStorage: 20, Endpoint: { Address: '127.0.0.1', Port: port } }] });
      cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [{ Id: 'fs0', Values: [1024 ** 3] }] });
      const cloud = new RdsInventory({ rds: new RDSClient({ region: 'eu-west-1' }), cloudwatch: new CloudWatchClient({ region: 'eu-west-1' }) });
      const withCloud = new ShardInspector(pools, { timeoutMs: 5000, cloud });

      const check = await withCloud.rebalanceCheck({ slotMap, by: 'rows', headroomBytes: 1024 ** 3 });

      expect(check.needed).toBe(true);
      expect(check.moves).toEqual([]);
      expect(check.summary.unresolved.join(' ')).toMatch(/free bytes/);
    } finally {
      rds.restore();
      cw.restore();
    }
  });

  it('names a shard the slot map gives slots to but the configuration does not list, with its slots, in the statistics, the health and the refusal to plan', async () => {
    // A map published for three shards (or shard_003 removed from the configuration before its
    // slots were moved off): shard_003 owns 1365 slots, some with rows still on shard_001/002.
    const threeShards = { ...buildSlotMap(['shard_001', 'shard_002', 'shard_003'].map((shardId) => ({ shardId, weight: 1 }))), version: 7 };
    const owned = threeShards.assignments.flatMap((o, slot) => (o === 'shard_003' ? [slot] : []));

    const stats = await inspector.statistics({ exact: true, slotMap: threeShards });
    const health = await inspector.health({ slotMap: threeShards });

    // Before: complete, no word of shard_003, and totals.slots 2731 of 4096 without saying why.
    expect(stats.totals.slots).toBe(4096 - owned.length);
    expect(stats.complete).toBe(false);
    expect(stats.unconfigured).toHaveLength(1);
    expect(stats.unconfigured[0]).toMatchObject({ shardId: 'shard_003', slotsOwned: owned.length });
    expect(stats.unconfigured[0]?.slotRanges.flatMap(([a, b]) => Array.from({ length: b - a + 1 }, (_, i) => a + i))).toEqual(owned);
    expect(health.status).toBe('down');
    expect(health.slotMap?.unconfigured.map((o) => [o.shardId, o.slotsOwned])).toEqual([['shard_003', owned.length]]);
    expect(health.slotMap?.reasons.map((r) => r.code)).toEqual(['slot_map_unconfigured_shard']);
    // Before: a plan over shard_001 and shard_002 alone, taking shard_003's slots for empty.
    await expect(inspector.rebalanceCheck({ slotMap: threeShards, by: 'rows' })).rejects.toThrow(
      new RegExp(`^cannot plan a rebalance: slot map version 7 gives slots to a shard not in the configured shard list \\(shard_001, shard_002\\): shard_003 \\(${owned.length} slots: \\d`),
    );
    expect((await inspector.statistics({ slotMap })).unconfigured).toEqual([]);
    expect((await inspector.health({ slotMap })).slotMap?.reasons).toEqual([]);
  });

  it('refuses to plan while a directory entry pins a key to a shard the configuration does not list, naming the key and the shard', async () => {
    // shard_003 was removed from the configuration with a key still pinned to it: the router
    // refuses to route that key, and the key's rows on shard_002 belong to no unit a move can take.
    const plan = inspector.rebalanceCheck({ slotMap, directory: [{ key: directoryUser, shardId: 'shard_003' }], by: 'rows' });

    // Before: a plan, the key's rows silently counted in shard_002's load but in none of its units.
    await expect(plan).rejects.toThrow(
      new RegExp(`^cannot plan a rebalance: the directory pins 1 key to a shard not in the configured shard list \\(shard_001, shard_002\\): ${directoryUser} -> shard_003;`),
    );
  });

  it('lists an unreachable shard instead of hiding it, and refuses to plan without it', async () => {
    const port = await refusedLoopbackPort();
    const partial = ShardPools.fromConfig({
      shards: [...cluster.config.shards, { shard_id: 'shard_gone', database_url: `postgresql://postgres:postgres@127.0.0.1:${port}/postgres`, read_replicas: [] }],
    });
    const partialInspector = new ShardInspector(partial, { timeoutMs: 2000 });
    try {
      const stats = await partialInspector.statistics();

      expect(stats.complete).toBe(false);
      expect(stats.unreachable).toEqual([expect.objectContaining({ shardId: 'shard_gone' })]);
      expect(stats.shards.map((s) => s.shardId)).toEqual(['shard_001', 'shard_002']);
      await expect(partialInspector.rebalanceCheck({ slotMap })).rejects.toBeInstanceOf(ShardInspectionError);
    } finally {
      await partial.end();
    }
  });
});

describe('bytes of the statistics and the rebalance check after moves: live data, not the files a clean-up leaves behind', () => {
  let cluster: ShardDatabase;
  let pools: ShardPools;
  let inspector: ShardInspector;
  let source: pg.Client;
  let target: pg.Client;
  let slotMap: SlotMap;
  /** The check's advice before any move: what an operator then followed. */
  let first: Awaited<ReturnType<ShardInspector['rebalanceCheck']>>;
  const clientOf = async (shardId: string): Promise<pg.Client> => {
    const c = new pg.Client({ connectionString: cluster.config.shards.find((s) => s.shard_id === shardId)?.database_url });
    await c.connect();
    return c;
  };
  const diskBytes = async (c: pg.Client): Promise<number> => Number((await c.query<{ b: string }>(`select pg_total_relation_size('users')::text as b`)).rows[0]?.b);

  beforeAll(async () => {
    cluster = await servers.database();
    pools = ShardPools.fromConfig(cluster.config, { max: 2 });
    inspector = new ShardInspector(pools, { timeoutMs: 5000 });
    [source, target] = [await clientOf('shard_001'), await clientOf('shard_002')];
    slotMap = buildSlotMap([
      { shardId: 'shard_001', weight: 1 },
      { shardId: 'shard_002', weight: 1 },
    ]);
    const slots = slotMap.assignments.flatMap((owner, slot) => (owner === 'shard_001' ? [slot] : [])).slice(0, 10);
    // 5,000 users over ten slots of shard_001, interleaved in the heap (as rows arrive in real
    // life): deleting five slots' rows frees space in every page, and leaves no page at the end
    // for VACUUM to truncate.
    await source.query(
      `insert into users (id, slot, email, display_name)
       select gen_random_uuid(), ($1::int[])[1 + i % 10], 'user' || i || '@example.org', repeat('n', 200) from generate_series(0, 4999) i`,
      [slots],
    );
    await source.query('analyze users, documents');
    first = await inspector.rebalanceCheck({ slotMap });
    // Each proposed move carried out as the mover does: copy to the target, flip the map, clean up the source.
    const assignments = [...slotMap.assignments];
    for (const move of first.moves) {
      const slot = Number(move.unit.id);
      const { rows } = await source.query<{ users: string }>('select json_agg(u)::text as users from users u where slot = $1', [slot]);
      await target.query('insert into users select * from json_populate_recordset(null::users, $1::json)', [rows[0]?.users]);
      assignments[slot] = move.to;
      await source.query('delete from users where slot = $1', [slot]);
    }
    slotMap = { ...slotMap, version: slotMap.version + 1, assignments };
    // What autovacuum would do on both; only VACUUM FULL or pg_repack would give the space back.
    for (const c of [source, target]) await c.query('vacuum analyze users, documents, document_keys');
  });
  afterAll(async () => {
    await source?.end();
    await target?.end();
    await pools?.end();
  });

  it('says no rebalance is needed once the moves it proposed by bytes are done, though the source keeps its on-disk size', async () => {
    expect(first).toMatchObject({ by: 'bytes', threshold: 0.1, needed: true });
    expect(first.moves).toHaveLength(5);
    expect(first.moves.every((m) => m.from === 'shard_001' && m.to === 'shard_002')).toBe(true);
    // The premise: the clean-up's deletes and VACUUM left the source's files as big as before.
    expect(await diskBytes(source)).toBeGreaterThan(1.5 * (await diskBytes(target)));

    expect((await inspector.rebalanceCheck({ slotMap, by: 'rows' })).needed).toBe(false);
    const byBytes = await inspector.rebalanceCheck({ slotMap });
    expect({ needed: byBytes.needed, moves: byBytes.moves }).toEqual({ needed: false, moves: [] });
    expect(byBytes.imbalance).toBeLessThan(1.02);
  });

  it('reports balanced bytes in the exact and the estimated statistics, and the on-disk size apart', async () => {
    const exact = await inspector.statistics({ slotMap, exact: true });
    const estimated = await inspector.statistics({ slotMap });

    expect(exact.imbalance.bytes).toBeLessThan(1.02);
    expect(estimated.shards.every((s) => s.tables.every((t) => t.method === 'estimate'))).toBe(true);
    expect(estimated.imbalance.bytes).toBeLessThan(1.05);
    // The estimate of live bytes is close to the exact measure.
    expect(Math.abs(estimated.totals.bytes / exact.totals.bytes - 1)).toBeLessThan(0.1);
    // Where storage headroom matters, the files as they are stay reported.
    const [a, b] = exact.shards;
    expect((a?.diskBytes ?? 0) / (b?.diskBytes ?? 1)).toBeGreaterThan(1.3);
    expect(exact.totals.diskBytes).toBe((a?.diskBytes ?? 0) + (b?.diskBytes ?? 0));
  });
});

describe('estimated bytes of TOASTed documents: the stored values, not whole TOAST chunks nor dead ones', () => {
  let cluster: ShardDatabase;
  let pools: ShardPools;
  let inspector: ShardInspector;
  /** One that estimates from a sample of a few pages, as a table far bigger than the default sample would be. */
  let sampling: ShardInspector;
  let shard: pg.Client;
  let slotMap: SlotMap;

  beforeAll(async () => {
    cluster = await servers.database();
    pools = ShardPools.fromConfig(cluster.config, { max: 2 });
    inspector = new ShardInspector(pools, { timeoutMs: 5000 });
    sampling = new ShardInspector(pools, { timeoutMs: 5000, samplePages: 8 });
    slotMap = buildSlotMap([
      { shardId: 'shard_001', weight: 1 },
      { shardId: 'shard_002', weight: 1 },
    ]);
    shard = new pg.Client({ connectionString: cluster.config.shards[0]?.database_url });
    await shard.connect();
    const slot = slotMap.assignments.indexOf('shard_001');
    await shard.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), $1, 'u' || i || '@example.org', 'user' from generate_series(1, 2000) i`, [slot]);
    // About 2.3 kB of md5 text per document: too big to stay in the row, too random to compress,
    // so each value is stored out of line in two TOAST chunks, the second a small one.
    await shard.query(
      `insert into documents (id, owner_id, slot, title, content)
       select gen_random_uuid(), u.id, $1, 'doc', jsonb_build_object('body', (select string_agg(md5(u.id::text || g), '') from generate_series(1, 70) g))
       from users u`,
      [slot],
    );
    await shard.query('vacuum analyze users, documents');
  });
  afterAll(async () => {
    await shard?.end();
    await pools?.end();
  });

  const documents = (r: Awaited<ReturnType<ShardInspector['statistics']>>) => r.shards.find((s) => s.shardId === 'shard_001')?.tables.find((t) => t.table === 'documents');

  it('estimates the live bytes of out-of-line values close to the exact measure', async () => {
    const exact = documents(await inspector.statistics({ slotMap, exact: true }));
    const whole = documents(await inspector.statistics({ slotMap }));
    const sampled = documents(await sampling.statistics({ slotMap }));

    expect(exact?.bytes).toBeGreaterThan(2000 * 2000);
    for (const estimated of [whole, sampled]) {
      expect(estimated?.method).toBe('estimate');
      expect((estimated?.bytes ?? 0) / (exact?.bytes ?? 1)).toBeGreaterThan(0.9);
      expect((estimated?.bytes ?? 0) / (exact?.bytes ?? 1)).toBeLessThan(1.1);
    }
  });

  it('leaves out the values of deleted documents once ANALYZE has counted the rows, before any VACUUM', async () => {
    await shard.query('delete from documents where owner_id in (select id from users order by id limit 1600)');
    // What autoanalyze does at 10% of the rows changed, before autovacuum's 20% are reached.
    await shard.query('analyze users, documents');

    const exact = documents(await inspector.statistics({ slotMap, exact: true }));
    const whole = documents(await inspector.statistics({ slotMap }));
    const sampled = documents(await sampling.statistics({ slotMap }));

    expect(exact?.rows).toBe(400);
    for (const estimated of [whole, sampled]) {
      expect(estimated).toMatchObject({ method: 'estimate', rows: 400 });
      expect((estimated?.bytes ?? 0) / (exact?.bytes ?? 1)).toBeGreaterThan(0.9);
      expect((estimated?.bytes ?? 0) / (exact?.bytes ?? 1)).toBeLessThan(1.1);
    }
  });
});

describe('the movable units of directory keys: found in one scan of each table, not one scan per key', () => {
  const KEYS = 20;
  let cluster: ShardDatabase;
  let shard: pg.Client;
  let slotMap: SlotMap;
  let directory: { key: string; shardId: string }[];

  beforeAll(async () => {
    cluster = await servers.database();
    slotMap = buildSlotMap([
      { shardId: 'shard_001', weight: 1 },
      { shardId: 'shard_002', weight: 1 },
    ]);
    shard = new pg.Client({ connectionString: cluster.config.shards[0]?.database_url });
    await shard.connect();
    const slot = slotMap.assignments.indexOf('shard_001');
    // Users of one of shard_001's slots (the slot units) under that slot, as if hashed there; the
    // directory keys under their own slots, as the router writes them (a key with rows under
    // another slot is not offered: the mover refuses to plan its move).
    const keys = Array.from({ length: KEYS }, () => randomUUID()).sort();
    const ids = [...keys, ...Array.from({ length: 100 - KEYS }, () => randomUUID())];
    const slots = ids.map((id, i) => (i < KEYS ? slotOf(id) : slot));
    await shard.query(
      `with u as (insert into users (id, slot, email, display_name) select id, s, 'u' || i || '@example.org', 'user' from unnest($1::uuid[], $2::int[]) with ordinality as t(id, s, i) returning id, slot)
       insert into documents (id, owner_id, slot, title) select gen_random_uuid(), u.id, u.slot, 'doc' from u, generate_series(1, 3)`,
      [ids, slots],
    );
    directory = keys.map((key) => ({ key, shardId: 'shard_001' }));
  });
  afterAll(async () => {
    await shard?.end();
  });

  /** Sequential scans of documents on shard_001 so far, once every backend has reported its counts. */
  const seqScans = async (): Promise<number> => {
    const { rows } = await shard.query<{ n: string }>(`select pg_stat_clear_snapshot(), seq_scan::text as n from pg_stat_user_tables where relname = 'documents'`);
    return Number(rows[0]?.n);
  };

  it('lists each key as a unit with its rows, reading the documents once for all the keys', async () => {
    const before = await seqScans();
    const pools = ShardPools.fromConfig(cluster.config, { max: 1 });
    let units;
    try {
      units = await new ShardInspector(pools, { timeoutMs: 5000 }).movableUnits(slotMap, directory);
    } finally {
      // A backend reports its counters at the latest when it exits.
      await pools.end();
    }
    let scans = before;
    for (let i = 0; i < 100 && scans === before; i++) {
      await new Promise((r) => setTimeout(r, 50));
      scans = await seqScans();
    }
    await new Promise((r) => setTimeout(r, 200));
    scans = await seqScans();

    expect(units.filter((u) => u.kind === 'directory').map((u) => [u.id, u.rows])).toEqual(directory.map((d) => [d.key, 4]));
    expect(units.filter((u) => u.kind === 'slot').reduce((n, u) => n + u.rows, 0)).toBe((100 - KEYS) * 4);
    expect(scans - before).toBeGreaterThan(0);
    expect(scans - before).toBeLessThanOrEqual(2);
  });
});

describe('the rebalance check with a shard whose primary is in recovery (read-only)', () => {
  let cluster: ShardDatabase;
  let replica: TestReplica | undefined;
  let pools: ShardPools;
  let slotMap: SlotMap;

  beforeAll(async () => {
    cluster = await servers.database();
    replica = await servers.standby(1);
    slotMap = buildSlotMap([
      { shardId: 'shard_001', weight: 1 },
      { shardId: 'shard_002', weight: 1 },
    ]);
    const heavy = new pg.Client({ connectionString: cluster.config.shards[0]?.database_url });
    await heavy.connect();
    const slots = slotMap.assignments.flatMap((owner, slot) => (owner === 'shard_001' ? [slot] : [])).slice(0, 10);
    await heavy.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), ($1::int[])[1 + i % 10], 'u' || i || '@example.org', 'user' from generate_series(0, 199) i`, [slots]);
    await heavy.end();
    // shard_002's configured primary answers as a standby does (a failover that left the
    // endpoint on the old primary, or an instance restored and still replaying): every query
    // of the check succeeds on it, but no move can write there.
    const standby = replica.urlFor(cluster.database);
    pools = ShardPools.fromConfig({ shards: cluster.config.shards.map((s) => (s.shard_id === 'shard_002' ? { ...s, database_url: standby, read_replicas: [] } : s)) }, { max: 2 });
  });
  afterAll(async () => {
    await pools?.end();
    await replica?.stop();
  });

  it('refuses to plan, naming the shard and why, instead of proposing moves onto it', async () => {
    const check = new ShardInspector(pools, { timeoutMs: 5000 }).rebalanceCheck({ slotMap });

    await expect(check).rejects.toBeInstanceOf(ShardInspectionError);
    await expect(check).rejects.toThrow(/shard_002.*in recovery/);
  });
});

describe('a shard whose tables do not answer: the checks that read whole tables give up in time to say which', () => {
  let cluster: ShardDatabase;
  let pools: ShardPools;
  let locker: pg.Client;
  const slotMap = buildSlotMap([
    { shardId: 'shard_001', weight: 1 },
    { shardId: 'shard_002', weight: 1 },
  ]);

  beforeAll(async () => {
    cluster = await servers.database();
    pools = ShardPools.fromConfig(cluster.config, { max: 2 });
    locker = new pg.Client({ connectionString: cluster.config.shards[1]?.database_url });
    await locker.connect();
  });
  afterAll(async () => {
    await locker?.end();
    await pools?.end();
  });

  it('waits ten node budgets, but never so long that API Gateway (29 s) answers first', () => {
    expect(new ShardInspector(pools, { timeoutMs: 1000 }).wholeTableBudgetMs).toBe(10_000);
    // health_check_timeout_seconds: 5 would give 50 s.
    expect(new ShardInspector(pools, { timeoutMs: 5000 }).wholeTableBudgetMs).toBe(MAX_WHOLE_TABLE_BUDGET_MS);
    expect(MAX_WHOLE_TABLE_BUDGET_MS).toBeLessThan(29_000);
  });

  it('names the shard that did not answer within the budget, in the exact statistics and in the refusal to plan', async () => {
    const inspector = new ShardInspector(pools, { timeoutMs: 5000, wholeTableBudgetMs: 1000 });
    // A shard under a long DDL (or a stalled disk): its queries of the documents wait.
    await locker.query('begin; lock table documents in access exclusive mode');
    try {
      const stats = await inspector.statistics({ slotMap, exact: true });
      const check = inspector.rebalanceCheck({ slotMap });

      expect(stats.complete).toBe(false);
      expect(stats.unreachable).toEqual([expect.objectContaining({ shardId: 'shard_002' })]);
      expect(stats.shards.map((s) => s.shardId)).toEqual(['shard_001']);
      await expect(check).rejects.toBeInstanceOf(ShardInspectionError);
      // The client's deadline or the server's statement_timeout (set to the time left), whichever comes first.
      await expect(check).rejects.toThrow(/shard_002 \(.*(no answer within 1000 ms|a statement ran past its time limit)/);
    } finally {
      await locker.query('rollback');
    }
  });
});
