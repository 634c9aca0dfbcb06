import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
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
import { withAdmin } from '../../support/postgres.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { keysInSlot, seedUsers } from './fixtures/move-env.js';

const migrations = resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations');

/**
 * A replica of a move's target that has replayed the move's 'incoming' fence row but not yet
 * its opening (replay a second behind, well within the bound) answers 'incoming' for a unit its
 * primary has owned and served since. On a replica 'incoming' says nothing about now: the read
 * belongs on the primary, not in a wait that lasts as long as the replica lags.
 */
describe("fence-checked reads on a replica that still shows a finished move's unit 'incoming'", () => {
  // An operator's bound of 30 s (replicas on RDS under a long report query can lag that much).
  const bounds: FreshnessBounds = { maxLagSeconds: 30, maxLagBytes: 16 * 1024 * 1024, maxStateAgeMs: 120_000 };
  let cluster: TestShardCluster;
  let pools: ShardPools;
  let catalog: pg.Pool;
  let slotMaps: SlotMapStore;
  let directory: DirectoryStore;
  let reader: ReplicaReader | undefined;

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 2, replicasPerShard: 1, schema: true });
    pools = ShardPools.fromConfig(cluster.config, { max: 4, connectionTimeoutMillis: 1000 });
    await withAdmin(cluster.shards[0]?.primary.url, (c) => c.query('create database catalog'));
    catalog = new pg.Pool({ connectionString: cluster.shards[0]?.primary.urlFor('catalog'), max: 4 });
    await runMigrations(catalog, 'sharding', resolve(migrations, 'sharding'));
    const config = parseShardingConfig(cluster.config);
    slotMaps = new SlotMapStore(catalog);
    await slotMaps.initialise(buildSlotMap(config.shards.map((s) => ({ shardId: s.shard_id, weight: 1 }))), 'test', 'two shards');
    directory = new DirectoryStore(catalog, { ttlMs: 0 });
  });
  afterAll(async () => {
    reader?.stop();
    for (const r of cluster?.shards.flatMap((s) => s.replicas) ?? []) await r.resumeReplay().catch(() => undefined);
    await catalog?.end();
    await pools?.end();
    await cluster?.stop();
  });

  const primaries = (): Map<string, pg.Pool> => new Map(pools.shardIds().map((id) => [id, pools.primary(id).pool]));
  const replicasOf = (shardId: string) => cluster.shards.find((s) => s.shardId === shardId)?.replicas ?? [];

  it("reads the unit on the target's primary at once instead of waiting on the replica's 'incoming' until it gives up", async () => {
    const slot = 200;
    const from = (await slotMaps.current()).assignments[slot] as string;
    const to = from === 'shard_001' ? 'shard_002' : 'shard_001';
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(pools.primary(from).pool, slot, [user], 3);

    // The move copies and stops before its catch-up: the target holds 'incoming' and the copy.
    const stopping = new Mover({
      catalog,
      shards: primaries(),
      slotMaps,
      directory,
      readerGraceMs: 0,
      hook(point) {
        if (point === 'catching_up') throw new Error('test: the mover stops at catching_up');
      },
    });
    await expect(stopping.run((await stopping.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).rejects.toThrow(/stops at/);
    await Promise.all(replicasOf(to).map((r) => r.waitForCatchUp()));
    // The target's replica replays the 'incoming' row, then falls a little behind; the move finishes.
    await Promise.all(replicasOf(to).map((r) => r.pauseReplay()));
    const done = await new Mover({ catalog, shards: primaries(), slotMaps, directory, readerGraceMs: 0 }).resumeAll();
    expect(done.map((j) => j.state)).toEqual(['done']);
    await Promise.all(replicasOf(from).map((r) => r.waitForCatchUp()));

    reader = new ReplicaReader(pools, { bounds, intervalMs: 60_000, probeTimeoutMs: 1000 });
    await reader.refresh();
    const eligible = reader.replicaStates(to).map((s) => s.ineligible);
    const router = ShardRouter.fromConfig(parseShardingConfig(cluster.config), { slotMap: await slotMaps.current(), directory });
    const reads = createShardReader({ router: routerForWrites(router, slotMaps, directory), reader, maxIncomingWaitMs: 3000 });
    const started = Date.now();
    const outcome = await reads
      .withShardRead(user, async ({ client }) => (await client.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [user])).rows[0]?.n)
      .then(
        (r) => ({ n: r.value, shardId: r.shardId, servedBy: r.servedBy }),
        (error: unknown) => ({ error: error instanceof Error ? error.message : String(error) }),
      );
    const tookMs = Date.now() - started;

    expect(eligible).toEqual([null]);
    expect(outcome).toEqual({ n: 3, shardId: to, servedBy: `${to}/primary` });
    expect(tookMs).toBeLessThan(1000);
  }, 90_000);
});
