import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { createShardReader } from '../../../functions/adapters/postgres/read-transaction.js';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { routerForWrites } from '../../../functions/adapters/postgres/write-transaction.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import { ShardRouter } from '../../../functions/core/sharding/router.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { keysInSlot, seedUsers } from './fixtures/move-env.js';

const migrations = resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations');
const bounds: FreshnessBounds = { maxLagSeconds: 5, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 25_000 };

const withAdmin = async <T>(url: string | undefined, fn: (c: pg.Client) => Promise<T>): Promise<T> => {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
};

/**
 * The first-owner rule for replica reads (docs/sharding-spec.md section 9, Readers) for keys the
 * directory places: such a key's rows begin where its first directory entry put it (sharding
 * migration 008), not where its slot's were. Units that never moved must still be read from fresh
 * replicas, and a lagging replica must never answer "nothing" for a key moved in.
 */
describe('replica reads of directory-placed keys', () => {
  let cluster: TestShardCluster;
  let pools: ShardPools;
  let catalog: pg.Pool;
  let slotMaps: SlotMapStore;
  let directory: DirectoryStore;
  const closers: (() => Promise<void>)[] = [];

  const catchUpAll = async (): Promise<void> => {
    await Promise.all(cluster.shards.flatMap((s) => s.replicas.map((r) => r.waitForCatchUp())));
  };
  const primaries = (): Map<string, pg.Pool> => new Map(pools.shardIds().map((id) => [id, pools.primary(id).pool]));
  const other = (shardId: string): string => (shardId === 'shard_001' ? 'shard_002' : 'shard_001');
  const readsOver = async (readerPools: ShardPools, readerBounds: FreshnessBounds = bounds) => {
    const reader = new ReplicaReader(readerPools, { bounds: readerBounds, intervalMs: 60_000, probeTimeoutMs: 1000 });
    closers.push(async () => reader.stop());
    await reader.refresh();
    const router = ShardRouter.fromConfig(parseShardingConfig(cluster.config), { slotMap: await slotMaps.current(), directory });
    return { reader, reads: createShardReader({ router: routerForWrites(router, slotMaps, directory), reader }) };
  };
  const countDocs = (user: string) => async ({ client }: { client: pg.PoolClient }) =>
    (await client.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [user])).rows[0]?.n;

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 2, replicasPerShard: 1, schema: true });
    pools = ShardPools.fromConfig(cluster.config, { max: 4, connectionTimeoutMillis: 1000 });
    await withAdmin(cluster.shards[0]?.primary.url, (c) => c.query('create database catalog'));
    catalog = new pg.Pool({ connectionString: cluster.shards[0]?.primary.urlFor('catalog'), max: 4 });
    await runMigrations(catalog, 'sharding', resolve(migrations, 'sharding'));
    slotMaps = new SlotMapStore(catalog);
    const config = parseShardingConfig(cluster.config);
    await slotMaps.initialise(buildSlotMap(config.shards.map((s) => ({ shardId: s.shard_id, weight: 1 }))), 'test', 'two shards');
    directory = new DirectoryStore(catalog, { ttlMs: 0 });
  }, 120_000);
  afterEach(async () => {
    for (const close of closers.splice(0)) await close().catch(() => undefined);
  });
  afterAll(async () => {
    await catalog?.end();
    await pools?.end();
    await cluster?.stop();
  });

  it('serves a directory-placed key (pinned to a shard before its rows were written, never moved) from a fresh replica', async () => {
    const slot = 200;
    const hashOwner = (await slotMaps.current()).assignments[slot] as string;
    const pinnedTo = other(hashOwner);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, pinnedTo, 'test');
    await seedUsers(pools.primary(pinnedTo).pool, slot, [key], 2);
    await catchUpAll();
    const { reader, reads } = await readsOver(pools);
    const read = await reads.withShardRead(key, countDocs(key));

    expect(reader.replicaStates(pinnedTo).map((s) => s.ineligible)).toEqual([null]);
    // Observed: servedBy `${pinnedTo}/primary`, on every read, for as long as the key is never moved.
    expect({ n: read.value, shardId: read.shardId, servedBy: read.servedBy }).toEqual({ n: 2, shardId: pinnedTo, servedBy: `${pinnedTo}/replica-1` });
  }, 60_000);

  it('reads a directory-placed key from its fresh replica while the primary is unreachable, as a hash-routed key still is', async () => {
    const slot = 201;
    const hashOwner = (await slotMaps.current()).assignments[slot] as string;
    const pinnedTo = other(hashOwner);
    const [pinned] = keysInSlot(slot, 1) as [string];
    await directory.set(pinned, pinnedTo, 'test');
    await seedUsers(pools.primary(pinnedTo).pool, slot, [pinned], 2);
    // A hash-routed key whose slot the pinned shard owns since version 1, for comparison.
    const ownSlot = (await slotMaps.current()).assignments.findIndex((s) => s === pinnedTo);
    const [hashed] = keysInSlot(ownSlot, 1) as [string];
    await seedUsers(pools.primary(pinnedTo).pool, ownSlot, [hashed], 2);
    await catchUpAll();
    // The pinned shard's primary is down (a port nothing listens on); its replica is up.
    const config = {
      ...cluster.config,
      shards: cluster.config.shards.map((s) => (s.shard_id === pinnedTo ? { ...s, database_url: 'postgres://postgres@127.0.0.1:1/postgres' } : s)),
    };
    const downPools = ShardPools.fromConfig(config, { max: 2, connectionTimeoutMillis: 1000 });
    closers.push(() => downPools.end());
    const { reads } = await readsOver(downPools);
    const outcome = async (key: string) =>
      reads.withShardRead(key, countDocs(key)).then(
        (r) => ({ n: r.value, servedBy: r.servedBy }),
        (err: unknown) => ({ error: String(err) }),
      );
    const hashedRead = await outcome(hashed);
    const pinnedRead = await outcome(pinned);

    expect(hashedRead).toEqual({ n: 2, servedBy: `${pinnedTo}/replica-1` });
    // Observed: { error: 'ShardUnavailableError: no node of shard ... could serve the read: connect ECONNREFUSED 127.0.0.1:1' }
    // (the read is sent to the primary only, never to the replica it was served by before).
    expect(pinnedRead).toEqual({ n: 2, servedBy: `${pinnedTo}/replica-1` });
  }, 60_000);

  it('serves a key the directory keeps on its slot\'s old owner (excluded from the slot\'s move) from a fresh replica after the move', async () => {
    const slot = 202;
    const home = (await slotMaps.current()).assignments[slot] as string;
    const away = other(home);
    const [kept, moved] = keysInSlot(slot, 2) as [string, string];
    await directory.set(kept, home, 'test');
    await seedUsers(pools.primary(home).pool, slot, [kept, moved], 2);
    const mover = new Mover({ catalog, shards: primaries(), slotMaps, directory, readerGraceMs: 0 });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to: away, createdBy: 'test' })).id);
    await catchUpAll();
    const { reader, reads } = await readsOver(pools);
    const keptRead = await reads.withShardRead(kept, countDocs(kept));
    const movedRead = await reads.withShardRead(moved, countDocs(moved));

    expect({ state: job.state, excluded: job.excludedKeys }).toEqual({ state: 'done', excluded: [kept] });
    expect(reader.replicaStates(home).map((s) => s.ineligible)).toEqual([null]);
    expect({ n: movedRead.value, servedBy: movedRead.servedBy }).toEqual({ n: 2, servedBy: `${away}/replica-1` });
    // Observed: servedBy `${home}/primary` on every read, for good: the home shard has the slot's
    // 'moved' row and no directory row of the key, which the reader takes as "only the primary can tell".
    expect({ n: keptRead.value, shardId: keptRead.shardId, servedBy: keptRead.servedBy }).toEqual({ n: 2, shardId: home, servedBy: `${home}/replica-1` });
  }, 90_000);

  /**
   * The first-owner rule for a directory-placed key takes its slot's version-1 owner for the
   * key's first owner. A key pinned elsewhere from the start and later moved (directory move) to
   * that very shard has never had a row there: a replica of it that lags the move has no
   * directory row of the key and no slot row, takes itself for the first owner, and answers
   * "nothing" for rows that exist (the defect the change meant to fix, left open for this case).
   */
  it("does not answer 'nothing' from a lagging replica for a directory-placed key moved to its slot's version-1 owner", async () => {
    const slot = 203;
    const hashOwner = (await slotMaps.current()).assignments[slot] as string;
    const pinnedTo = other(hashOwner);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, pinnedTo, 'test');
    await seedUsers(pools.primary(pinnedTo).pool, slot, [key], 3);
    // A recent commit on the key's hash owner, so that its replica's lag stays small while paused.
    await pools.primary(hashOwner).pool.query("insert into users (id, slot, email, display_name) values (gen_random_uuid(), 0, 'x@example.org', 'x')");
    await catchUpAll();
    const hashOwnerReplicas = cluster.shards.find((s) => s.shardId === hashOwner)?.replicas ?? [];
    await Promise.all(hashOwnerReplicas.map((r) => r.pauseReplay()));
    try {
      const mover = new Mover({ catalog, shards: primaries(), slotMaps, directory, readerGraceMs: 0 });
      const job = await mover.run((await mover.plan({ kind: 'directory', key, to: hashOwner, createdBy: 'test' })).id);
      await Promise.all((cluster.shards.find((s) => s.shardId === pinnedTo)?.replicas ?? []).map((r) => r.waitForCatchUp()));
      const { reader, reads } = await readsOver(pools, { ...bounds, maxLagSeconds: 60 });
      const read = await reads.withShardRead(key, countDocs(key));

      expect(job.state).toBe('done');
      expect(reader.replicaStates(hashOwner).map((s) => s.ineligible)).toEqual([null]);
      // Observed: { n: 0, shardId: hashOwner, servedBy: `${hashOwner}/replica-1` }.
      expect({ n: read.value, shardId: read.shardId, servedBy: read.servedBy }).toEqual({ n: 3, shardId: hashOwner, servedBy: `${hashOwner}/primary` });
    } finally {
      await Promise.all(hashOwnerReplicas.map((r) => r.resumeReplay()));
    }
  }, 90_000);
});

/**
 * The timeline probe as the application's login sees it. The login the readers use (the
 * application role) is not a member of pg_read_all_stats, so pg_stat_wal_receiver shows it no
 * received_tli and the probe falls back to the control file, whose timeline trails a switch until
 * the replica's next restartpoint. A replica that followed the promotion and is fully caught up
 * on the new primary is then ineligible: after every failover no replica serves a read until a
 * restartpoint (checkpoint_timeout, 5 min by default, or longer on a quiet shard).
 */
