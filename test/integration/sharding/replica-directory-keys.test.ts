import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { Mover, type MoveJob } from '../../../functions/adapters/postgres/mover.js';
import { createShardReader } from '../../../functions/adapters/postgres/read-transaction.js';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { routerForWrites } from '../../../functions/adapters/postgres/write-transaction.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import type { FreshnessBounds } from '../../../functions/core/sharding/replica-choice.js';
import { ShardRouter } from '../../../functions/core/sharding/router.js';
import { buildSlotMap } from '../../../functions/core/sharding/slot-map.js';
import { withAdmin } from '../../support/postgres.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { deletePinPastGuard, keysInSlot, seedUsers } from './fixtures/move-env.js';

const migrations = resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations');
const bounds: FreshnessBounds = { maxLagSeconds: 5, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 25_000 };

/**
 * Replica reads of keys the directory places (docs/sharding-spec.md section 9, Readers): where
 * such a key's rows began is not recorded (they may have come with a move of its slot before it
 * was pinned), so a replica serves it only when it shows the key's own directory fence row, which
 * a move of the key writes on both its shards. A lagging replica must never answer "nothing" for a
 * key's rows, and a key pinned by a move must still be read from fresh replicas.
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
  const replicasOf = (shard: string) => cluster.shards.find((s) => s.shardId === shard)?.replicas ?? [];
  /** Pauses replay on the shard's replicas (after a recent commit there, so their lag stays small) until the test ends. */
  const pauseReplicasOf = async (shard: string): Promise<void> => {
    await pools.primary(shard).pool.query("insert into users (id, slot, email, display_name) values (gen_random_uuid(), 0, 'x@example.org', 'x')");
    await catchUpAll();
    await Promise.all(replicasOf(shard).map((r) => r.pauseReplay()));
    closers.push(async () => {
      await Promise.all(replicasOf(shard).map((r) => r.resumeReplay()));
    });
  };
  const newMover = (): Mover => new Mover({ catalog, shards: primaries(), slotMaps, directory, readerGraceMs: 0 });
  /** Plans and runs a move to its end. */
  const moveToEnd = async (request: Parameters<Mover['plan']>[0]): Promise<MoveJob> => {
    const mover = newMover();
    return mover.run((await mover.plan(request)).id);
  };
  /** Reads `key`'s documents with a lag bound a paused replica stays within, checking the replica of `shard` was eligible. */
  const readPastPausedReplica = async (key: string, shard: string) => {
    const { reader, reads } = await readsOver(pools, { ...bounds, maxLagSeconds: 60 });
    const read = await reads.withShardRead(key, countDocs(key));
    expect(reader.replicaStates(shard).map((st) => st.ineligible)).toEqual([null]);
    return { n: read.value, shardId: read.shardId, servedBy: read.servedBy };
  };

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

  it('serves a key pinned by a directory move, and never moved since, from a fresh replica', async () => {
    const slot = 200;
    const hashOwner = (await slotMaps.current()).assignments[slot] as string;
    const pinnedTo = other(hashOwner);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(pools.primary(hashOwner).pool, slot, [key], 2);
    expect((await moveToEnd({ kind: 'directory', key, to: pinnedTo, createdBy: 'test' })).state).toBe('done');
    await catchUpAll();
    const { reader, reads } = await readsOver(pools);
    const read = await reads.withShardRead(key, countDocs(key));

    expect(reader.replicaStates(pinnedTo).map((s) => s.ineligible)).toEqual([null]);
    expect({ n: read.value, shardId: read.shardId, servedBy: read.servedBy }).toEqual({ n: 2, shardId: pinnedTo, servedBy: `${pinnedTo}/replica-1` });
  }, 60_000);

  it('reads a directory-placed key from its fresh replica while the primary is unreachable, as a hash-routed key still is', async () => {
    const slot = 201;
    const hashOwner = (await slotMaps.current()).assignments[slot] as string;
    const pinnedTo = other(hashOwner);
    const [pinned] = keysInSlot(slot, 1) as [string];
    await seedUsers(pools.primary(hashOwner).pool, slot, [pinned], 2);
    expect((await moveToEnd({ kind: 'directory', key: pinned, to: pinnedTo, createdBy: 'test' })).state).toBe('done');
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
    expect(pinnedRead).toEqual({ n: 2, servedBy: `${pinnedTo}/replica-1` });
  }, 60_000);

  it('serves a key the directory keeps out of its slot\'s move from a fresh replica after the move', async () => {
    const slot = 202;
    const home = (await slotMaps.current()).assignments[slot] as string;
    const away = other(home);
    const [kept, moved] = keysInSlot(slot, 2) as [string, string];
    await seedUsers(pools.primary(home).pool, slot, [kept, moved], 2);
    // The key is pinned away by a move of its own, then its slot follows it, leaving it out.
    expect((await moveToEnd({ kind: 'directory', key: kept, to: away, createdBy: 'test' })).state).toBe('done');
    const job = await newMover().run((await newMover().plan({ kind: 'slot', slot, to: away, createdBy: 'test' })).id);
    await catchUpAll();
    const { reader, reads } = await readsOver(pools);
    const keptRead = await reads.withShardRead(kept, countDocs(kept));
    const movedRead = await reads.withShardRead(moved, countDocs(moved));

    expect({ state: job.state, excluded: job.excludedKeys }).toEqual({ state: 'done', excluded: [kept] });
    expect(reader.replicaStates(away).map((s) => s.ineligible)).toEqual([null]);
    expect({ n: movedRead.value, servedBy: movedRead.servedBy }).toEqual({ n: 2, servedBy: `${away}/replica-1` });
    expect({ n: keptRead.value, shardId: keptRead.shardId, servedBy: keptRead.servedBy }).toEqual({ n: 2, shardId: away, servedBy: `${away}/replica-1` });
  }, 90_000);

  /**
   * A key pinned elsewhere from the start (without a move: it reads on the primary) and later
   * moved onto its slot's version-1 owner has never had a row there: a replica of it that lags
   * the move shows neither the key's row nor the slot's, and must not answer "nothing".
   */
  it("does not answer 'nothing' from a lagging replica for a directory-placed key moved to its slot's version-1 owner", async () => {
    const slot = 203;
    const hashOwner = (await slotMaps.current()).assignments[slot] as string;
    const pinnedTo = other(hashOwner);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, pinnedTo, 'test');
    await seedUsers(pools.primary(pinnedTo).pool, slot, [key], 3);
    await pauseReplicasOf(hashOwner);
    expect((await moveToEnd({ kind: 'directory', key, to: hashOwner, createdBy: 'test' })).state).toBe('done');
    await Promise.all(replicasOf(pinnedTo).map((r) => r.waitForCatchUp()));
    expect(await readPastPausedReplica(key, hashOwner)).toEqual({ n: 3, shardId: hashOwner, servedBy: `${hashOwner}/primary` });
  }, 90_000);

  it("does not answer 'nothing' from a lagging replica for a key whose slot moved in, then pinned where it is by a cancelled key move", async () => {
    const slot = 310;
    const home = (await slotMaps.current()).assignments[slot] as string;
    const away = other(home);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(pools.primary(home).pool, slot, [key], 3);
    await pauseReplicasOf(away);
    expect((await moveToEnd({ kind: 'slot', slot, to: away, createdBy: 'test' })).state).toBe('done');
    // A key move away -> home pins the key where it is, dies after its copy, and is cancelled.
    const dying = new Mover({
      catalog,
      shards: primaries(),
      slotMaps,
      directory,
      readerGraceMs: 0,
      hook(point) {
        if (point === 'copied') throw new Error('test: the key move dies after its copy');
      },
    });
    const keyJob = await dying.plan({ kind: 'directory', key, to: home, createdBy: 'test' });
    await dying.run(keyJob.id).catch(() => undefined);
    expect((await newMover().cancel(keyJob.id)).state).toBe('cancelled');
    expect((await directory.entry(key))?.shardId).toBe(away);

    expect(await readPastPausedReplica(key, away)).toEqual({ n: 3, shardId: away, servedBy: `${away}/primary` });
  }, 120_000);

  it("does not answer 'nothing' from a lagging replica for a key pinned again (delete, then set) where a key move put its rows", async () => {
    const slot = 311;
    const home = (await slotMaps.current()).assignments[slot] as string;
    const away = other(home);
    const [key] = keysInSlot(slot, 1) as [string];
    await directory.set(key, away, 'test');
    await seedUsers(pools.primary(away).pool, slot, [key], 3);
    await pauseReplicasOf(home);
    expect((await moveToEnd({ kind: 'directory', key, to: home, createdBy: 'test' })).state).toBe('done');
    // Past sharding migration 010's guard (CAF06: the pin of a key a directory move wrote fence
    // rows for may not be removed), as a superuser may: the entry starts again at version 1.
    await deletePinPastGuard(catalog, key);
    await directory.set(key, home, 'test');

    expect(await readPastPausedReplica(key, home)).toEqual({ n: 3, shardId: home, servedBy: `${home}/primary` });
  }, 120_000);

  it("does not answer 'nothing' from a lagging replica for a key an operator pins where its moved-in slot put it", async () => {
    const slot = 312;
    const home = (await slotMaps.current()).assignments[slot] as string;
    const away = other(home);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(pools.primary(home).pool, slot, [key], 3);
    await pauseReplicasOf(away);
    expect((await moveToEnd({ kind: 'slot', slot, to: away, createdBy: 'test' })).state).toBe('done');
    await directory.set(key, away, 'operator');

    expect(await readPastPausedReplica(key, away)).toEqual({ n: 3, shardId: away, servedBy: `${away}/primary` });
  }, 120_000);
});
