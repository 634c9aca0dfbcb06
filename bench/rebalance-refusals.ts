/**
 * Benchmark: what the rebalance check pays to propose no move the move plan refuses (issue #15).
 * The check (GET /shards/rebalance-check, each health_check_interval) puts each move it would
 * propose to the plan's own checks (Mover.refusals, what POST /shards/moves runs before recording),
 * leaves out the units refused and plans again. This measures, on embedded PostgreSQL (two shards,
 * `--slots` slots of shard_a holding 2 users and 1 document each, shard_b empty, so the check
 * proposes about half of them), with `--refused` of the first check's moves refused by a hand
 * change's `moved` row on the source:
 *
 * - the census alone (the scan of every shard the check already made),
 * - the plan alone (pure),
 * - the whole check through the API's port (census, plans, refusal checks), and how many refusal
 *   checks and plans it made,
 *
 * each the median of `--reps` runs. The refusal checks' share is the whole less census and plans.
 *
 *   npm run bench:rebalance-refusals -- [--slots 400 --refused 20 --reps 5]
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { listFences } from '../functions/adapters/postgres/fence-review.js';
import { ShardInspector } from '../functions/adapters/postgres/shard-inspector.js';
import { createScalingApiPort, type ScalingApiDeps } from '../functions/api/wiring.js';
import { parseShardingConfig } from '../functions/core/sharding/config.js';
import { ShardRouter } from '../functions/core/sharding/router.js';
import { keysInSlot, seedUsers, startMoveEnv } from '../test/integration/sharding/fixtures/move-env.js';
import { rebalancePools } from '../test/integration/sharding/fixtures/rebalance-port.js';
import { median, timed } from './support/timing.js';

const flags = z
  .object({
    slots: z.coerce.number().int().min(10).max(4000).default(400),
    refused: z.coerce.number().int().min(0).max(1000).default(20),
    reps: z.coerce.number().int().min(1).max(50).default(5),
  })
  .parse(parseArgs({ options: { slots: { type: 'string' }, refused: { type: 'string' }, reps: { type: 'string' } }, strict: true }).values);

console.log(`load average before: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
const env = await startMoveEnv();
const pools = rebalancePools(env, 4);
try {
  const map = await env.slotMaps.current();
  const source = env.shards.get('shard_a');
  if (!source) throw new Error('no shard_a in the move env');
  for (const slot of map.assignments.flatMap((shard, s) => (shard === 'shard_a' ? [s] : [])).slice(0, flags.slots)) await seedUsers(source, slot, keysInSlot(slot, 2), 1);
  const config = parseShardingConfig({
    strategy: 'hash_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url, weight: 1, read_replicas: [] })),
    default_shard: 'shard_a',
  });
  const inspector = new ShardInspector(pools, { timeoutMs: 30_000 });
  const mover = env.mover();
  let checks = 0;
  const refusals = mover.refusals.bind(mover);
  mover.refusals = (requests) => {
    checks += requests.length;
    return refusals(requests);
  };
  let plans = 0;
  const planRebalance = inspector.planRebalance.bind(inspector);
  inspector.planRebalance = (census, options) => {
    plans += 1;
    return planRebalance(census, options);
  };
  const port = createScalingApiPort({
    ...({} as Omit<ScalingApiDeps, 'sharding'>),
    sharding: {
      router: ShardRouter.fromConfig(config, { slotMap: map, directory: env.directory }),
      slotMaps: env.slotMaps,
      directory: env.directory,
      inspector,
      fences: { list: (o = {}) => listFences({ catalog: env.catalog, shards: env.shards, timeoutMs: 5000, all: o.all === true }) },
      mover,
      runMove: () => undefined,
    },
  });
  const first = await port.rebalanceCheck({ by: 'rows' });
  for (const m of first.moves.slice(0, flags.refused)) {
    await source.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version) values ('slot', $1, 'moved', 'shard_b', 1)`, [m.unit.id]);
  }
  const census: number[] = [];
  const plan: number[] = [];
  const whole: number[] = [];
  let last = first;
  let perCheck = { checks: 0, plans: 0 };
  for (let i = 0; i < flags.reps; i++) {
    const [c, tc] = await timed(() => inspector.rebalanceCensus({ slotMap: map, busySlots: new Set(), pending: [] }));
    census.push(tc);
    plans = 0;
    plan.push((await timed(() => inspector.planRebalance(c, { by: 'rows', freeBytes: {} })))[1]);
    checks = 0;
    plans = 0;
    const [result, tw] = await timed(() => port.rebalanceCheck({ by: 'rows' }));
    whole.push(tw);
    last = result;
    perCheck = { checks, plans };
  }
  const refusedListed = last.summary.unresolved.filter((u) => u.includes('the move plan refuses it')).length;
  console.log(`slots with rows on shard_a: ${flags.slots}; first check proposed ${first.moves.length} moves; ${Math.min(flags.refused, first.moves.length)} of them refused by a moved row`);
  console.log(`census (scan of both shards):       median ${median(census).toFixed(1)} ms`);
  console.log(`one plan (pure):                    median ${median(plan).toFixed(1)} ms`);
  console.log(`whole check (census, plans, checks): median ${median(whole).toFixed(1)} ms; ${perCheck.checks} refusal checks, ${perCheck.plans} plans; proposes ${last.moves.length}, lists ${refusedListed} refused`);
  console.log(`refusal checks' share: about ${(median(whole) - median(census) - perCheck.plans * median(plan)).toFixed(1)} ms, ${((median(whole) - median(census) - perCheck.plans * median(plan)) / Math.max(1, perCheck.checks)).toFixed(2)} ms a move checked`);
} finally {
  await pools.end();
  await env.stop();
  console.log(`load average after: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
}
