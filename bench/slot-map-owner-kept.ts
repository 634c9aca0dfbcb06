/**
 * Benchmark of the CAF08 trigger (sharding migration 012) on a slot move's flip: the insert of the
 * next 4096-slot map changing one slot, with the flip's `ca_dms.map_writer`, in a catalog holding
 * `--jobs` finished slot move jobs, with the trigger and with it disabled (inside a transaction
 * rolled back). The flip runs under the fence (2000 ms budget by default), writes of the slot held
 * meanwhile: printed, the insert's execution time (EXPLAIN ANALYZE) per variant, median, p90 and
 * max of `--rounds`, and the trigger's median as a share of that budget. Measured on 2 shared
 * cores while the trigger was reviewed: a first version (two `unnest ... with ordinality` joined
 * on the slot) took 36 ms with no jobs and about 1,000 ms with 50,000; the zipped unnest about
 * 2 ms either way.
 *
 * Run: `npx tsx bench/slot-map-owner-kept.ts` (options: `--jobs N`, default 50000; `--rounds N`, default 20).
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import { buildSlotMap, moveSlots } from '../functions/core/sharding/slot-map.js';
import { startMigratedDatabase } from './support/migrated-database.js';

const { values } = parseArgs({ options: { jobs: { type: 'string' }, rounds: { type: 'string' } } });
const options = z
  .object({
    jobs: z.coerce.number({ message: '--jobs must be a number' }).int('--jobs must be a whole number').min(0, '--jobs must not be negative').default(50_000),
    rounds: z.coerce.number({ message: '--rounds must be a number' }).int('--rounds must be a whole number').min(1, '--rounds must be at least 1').default(20),
  })
  .parse(values);

const FENCE_BUDGET_MS = 2000;

const { server, url } = await startMigratedDatabase('catalog', 'sharding');
try {
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const map = buildSlotMap(['s1', 's2', 's3'].map((shardId) => ({ shardId, weight: 1 })));
  await db.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (1, $1, $2, 'bench', 'bench')`, [map.slotCount, map.assignments]);
  await db.query(
    `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by, copying_at, flip_started_at)
     select 'slot', (g % $2)::text, g % $2, 's1', 's2', 'done', 'bench', now(), now() from generate_series(1, $1) g`,
    [options.jobs, map.slotCount],
  );
  await db.query('analyze catalog.move_jobs');
  const slot = 7;
  const to = map.assignments[slot] === 's3' ? 's1' : 's3';
  const { rows } = await db.query<{ id: string }>(
    `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by, copying_at) values ('slot', $1, $2, $3, $4, 'verifying', 'bench', now()) returning id`,
    [String(slot), slot, map.assignments[slot], to],
  );
  const job = String(rows[0]?.id);
  const next = moveSlots(map, [slot], to);
  const variants = { trigger: [] as number[], disabled: [] as number[] };
  for (let round = 0; round < options.rounds; round++) {
    for (const [variant, times] of Object.entries(variants)) {
      await db.query('begin');
      try {
        if (variant === 'disabled') await db.query('alter table catalog.slot_maps disable trigger slot_maps_owner_kept');
        await db.query(`select set_config('ca_dms.map_writer', $1, true)`, [`move job #${job}`]);
        const { rows: plan } = await db.query<{ 'QUERY PLAN': string }>(
          `explain (analyze, format text) insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason)
           select $1, $2, $3, 'bench', 'bench' where $1 = coalesce((select max(version) from catalog.slot_maps), 0) + 1`,
          [next.version, next.slotCount, next.assignments],
        );
        const text = plan.map((r) => r['QUERY PLAN']).join('\n');
        if (!/Insert on slot_maps[\s\S]*rows=0 loops=1/.test(text) || /ERROR/.test(text)) throw new Error(`unexpected plan:\n${text}`);
        times.push(Number(/Execution Time: ([0-9.]+)/.exec(text)?.[1]));
      } finally {
        await db.query('rollback');
      }
    }
  }
  console.log(`insert of the next ${map.slotCount}-slot map by a flip, ${options.jobs} finished slot move jobs, ${options.rounds} rounds (ms):`);
  for (const [variant, times] of Object.entries(variants)) {
    const s = [...times].sort((a, b) => a - b);
    const at = (q: number) => (s[Math.min(s.length - 1, Math.floor(s.length * q))] ?? NaN).toFixed(2);
    console.log(`  ${variant.padEnd(10)} median ${at(0.5)}  p90 ${at(0.9)}  max ${at(1)}`);
  }
  const median = [...variants.trigger].sort((a, b) => a - b)[Math.floor(variants.trigger.length / 2)] ?? NaN;
  console.log(`the trigger's median is ${((median / FENCE_BUDGET_MS) * 100).toFixed(2)}% of the default fence budget (${FENCE_BUDGET_MS} ms)`);
  await db.end();
} finally {
  await server.stop();
}
