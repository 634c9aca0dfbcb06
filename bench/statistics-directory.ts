/**
 * Benchmark: what GET /shards/statistics (estimates and `?exact=true`) and the rebalance census
 * pay for a large directory (issue #15). With keys pinned in `catalog.shard_directory` (the
 * `directory_based` strategy pins every user), the API read every pin (a page of 1,000 a round
 * trip) for estimates too, and the shards were sent every listed key with every table's
 * statement. This measures, on embedded PostgreSQL (two shards), for each `--pins` count:
 * `--pins` keys pinned to a random shard (half of them where the slot map does not send their
 * slot), each with its user and one document on its pinned shard, and `--slots` slots of each
 * shard holding 2 unpinned users with 1 document each, with one slot per shard given back by hand
 * (a hand change's `moved` row over its rows, as `catalog.publish_slot_map_by_hand` leaves it):
 *
 * - the directory read whole (`DirectoryStore.all`, what the API reads for them),
 * - GET /shards/statistics through the API's port, estimates and exact,
 * - the rebalance census through the inspector (the directory given),
 *
 * each the median of `--reps` runs, with the figures each answered (so that runs before and after
 * a change can be compared for equal answers too).
 *
 *   npm run bench:statistics-directory -- [--pins 10000,100000 --slots 200 --reps 3]
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { ShardInspector } from '../functions/adapters/postgres/shard-inspector.js';
import { createScalingApiPort, type ScalingApiDeps } from '../functions/api/wiring.js';
import { parseShardingConfig } from '../functions/core/sharding/config.js';
import { moveRoutingOf } from '../functions/core/sharding/move-machine.js';
import { ShardRouter } from '../functions/core/sharding/router.js';
import { keysInSlot, seedUsers, startMoveEnv } from '../test/integration/sharding/fixtures/move-env.js';
import { rebalancePools } from '../test/integration/sharding/fixtures/rebalance-port.js';
import { median, timed } from './support/timing.js';

const flags = z
  .object({
    pins: z
      .string()
      .default('10000,100000')
      .transform((s) => s.split(',').map((n) => z.coerce.number().int().min(0).max(2_000_000).parse(n))),
    slots: z.coerce.number().int().min(1).max(2000).default(200),
    reps: z.coerce.number().int().min(1).max(50).default(3),
  })
  .parse(parseArgs({ options: { pins: { type: 'string' }, slots: { type: 'string' }, reps: { type: 'string' } }, strict: true }).values);

console.log(`load average before: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
const env = await startMoveEnv();
const pools = rebalancePools(env, 4);
try {
  const map = await env.slotMaps.current();
  const shardIds = [...env.shards.keys()];
  for (const shardId of shardIds) {
    const pool = env.shards.get(shardId);
    if (!pool) throw new Error(`no pool for ${shardId} in the move env`);
    const owned = map.assignments.flatMap((s, slot) => (s === shardId ? [slot] : []));
    for (const slot of owned.slice(0, flags.slots)) await seedUsers(pool, slot, keysInSlot(slot, 2), 1);
    // The first slot given back by hand: a hand change's `moved` row over rows the map sends here.
    await pool.query(`insert into write_fences (kind, unit_id, state, map_version) values ('slot', $1, 'moved', 1)`, [String(owned[0])]);
  }
  const config = parseShardingConfig({
    strategy: 'directory_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url, weight: 1, read_replicas: [] })),
    default_shard: 'shard_a',
  });
  const inspector = new ShardInspector(pools, { timeoutMs: 30_000 });
  const port = createScalingApiPort({
    ...({} as Omit<ScalingApiDeps, 'sharding'>),
    sharding: {
      router: ShardRouter.fromConfig(config, { slotMap: map, directory: env.directory }),
      slotMaps: env.slotMaps,
      directory: env.directory,
      inspector,
      fences: { list: () => Promise.reject(new Error('not used')) },
      mover: env.mover(),
      runMove: () => undefined,
    },
  } as ScalingApiDeps);
  let pinned = 0;
  for (const pins of flags.pins) {
    // Pins added up to `pins`: each key's user and document on the shard it is pinned to.
    const { rows } = await env.catalog.query<{ key: string; shard_id: string; slot: number }>(
      `insert into catalog.shard_directory (key, shard_id, updated_by)
       select gen_random_uuid()::text, (array[${shardIds.map((s) => `'${s}'`).join(', ')}])[1 + (random() * ${shardIds.length - 1})::int], 'bench'
         from generate_series(1, $1) returning key, shard_id, catalog.key_slot(key) as slot`,
      [Math.max(0, pins - pinned)],
    );
    pinned = Math.max(pinned, pins);
    for (const shardId of shardIds) {
      const mine = rows.filter((r) => r.shard_id === shardId);
      const pool = env.shards.get(shardId);
      if (!pool) throw new Error(`no pool for ${shardId} in the move env`);
      // Past the fence triggers (superuser): pins of the slot given back by hand have rows behind its row too.
      const client = await pool.connect();
      try {
        await client.query('begin; set local session_replication_role = replica');
        await client.query(
          `with u as (insert into users (id, slot, email, display_name) select k::uuid, s, k || '@example.org', 'pinned' from unnest($1::text[], $2::int[]) as x(k, s) returning id, slot)
           insert into documents (id, owner_id, slot, title) select gen_random_uuid(), u.id, u.slot, 'doc' from u`,
          [mine.map((r) => r.key), mine.map((r) => r.slot)],
        );
        await client.query('commit');
      } finally {
        client.release();
      }
      await env.shards.get(shardId)?.query('analyze users; analyze documents; analyze document_keys');
    }
    env.directory.invalidate();
    const read: number[] = [];
    const estimate: number[] = [];
    const exact: number[] = [];
    const exactGiven: number[] = [];
    const census: number[] = [];
    let said = '';
    for (let i = 0; i < flags.reps; i++) {
      const [directory, td] = await timed(() => env.directory.all());
      read.push(td);
      const [e, te] = await timed(() => port.shardStatistics({ exact: false }));
      estimate.push(te);
      const [x, tx] = await timed(() => port.shardStatistics({ exact: true }));
      exact.push(tx);
      exactGiven.push((await timed(() => inspector.statistics({ exact: true, slotMap: map, directory, routing: moveRoutingOf(config) })))[1]);
      const [c, tc] = await timed(() => inspector.rebalanceCensus({ slotMap: map, directory }));
      census.push(tc);
      const rowsOf = (s: { shards: readonly { shardId: string; rows: number }[] }): string => s.shards.map((m) => `${m.shardId} ${m.rows}`).join(', ');
      said = `estimates ${rowsOf(e)}; exact ${rowsOf(x)}; census ${rowsOf(c.statistics)}, ${c.units.length} units`;
    }
    console.log(`${pins} pins (each a pinned user with a document on its shard; ${flags.slots} slots of 2 users on each shard):`);
    console.log(`  directory read whole:            median ${median(read).toFixed(1)} ms`);
    console.log(`  GET /shards/statistics:          median ${median(estimate).toFixed(1)} ms`);
    console.log(`  GET /shards/statistics?exact:    median ${median(exact).toFixed(1)} ms`);
    console.log(`  exact statistics (directory given): median ${median(exactGiven).toFixed(1)} ms`);
    console.log(`  rebalance census (directory given): median ${median(census).toFixed(1)} ms`);
    console.log(`  answered: ${said}`);
  }
} finally {
  await pools.end();
  await env.stop();
  console.log(`load average after: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
}
