/**
 * Benchmark of a slot map published by hand (`catalog.publish_slot_map_by_hand`, sharding
 * migrations 012, 013 and 018) on a catalog of `--jobs` finished slot move jobs (a comma-separated
 * list, default 0, 1,000 and 100,000), each with the catalog migrated through 017 (before 018) and
 * through this release's last migration: a recovery by hand runs under the control login's 10 s
 * `statement_timeout` (catalog migration 005), and a catalog that has run many moves must not time
 * it out. The catalog: one 4096-slot map over `--owners` shards (default 3); the jobs move slots
 * (each slot in turn from slot 0 up: the first owner's slots first) from the second owner to the
 * first, so every other owner is named by the map alone and its "a shard the catalog knows" check
 * (013's catalog.shard_known) read every job (through migration 024 a typo still did, twice: the
 * `024` variant; since 025 none).
 * Printed, per variant and job count, the median, p90 and max of `--rounds` (default 3) calls,
 * each in a transaction rolled back:
 *   - `1 slot`: a map by hand that gives slot 0 to the last owner (SlotMapStore.publishByHand's
 *     statement), milliseconds by the client's clock;
 *   - `1 owner's slots`: one that gives the first owner's slots (4096 / owners) to the last;
 *   - `trigger, 1 owner's slots`: the CAF08 trigger's own time (EXPLAIN ANALYZE's "Trigger
 *     slot_maps_owner_kept" line) in that insert, with the by-hand writer set, and
 *   - `plain insert`: the same map inserted with no writer (SlotMapStore.publish), which 012's rule
 *     refuses (CAF08) where a slot it changes has moved (any jobs), by the client's clock.
 * Then, for the largest job count and each variant, the plans (auto_explain, ANALYZE, BUFFERS) of
 * the statements inside one `1 owner's slots` call (the trigger's among them) that took 0.5 ms or
 * more in all: for each statement, how many times it ran, their total, and its slowest plan.
 *
 * Run: `npm run bench:slot-map-by-hand --` or `npx tsx bench/slot-map-by-hand.ts` (options:
 * `--jobs 0,1000,100000`, `--owners N`, default 3, `--rounds N`, default 3; `--variants 017,current`,
 * any of 017, 019, 024 and current: the 017 variant takes about 35 s per call at 100,000 jobs on 2
 * shared cores; 024 is the catalog before migration 025, whose typo read every move job twice).
 */
import { cp, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import { buildSlotMap, moveSlots, type SlotMap } from '../functions/core/sharding/slot-map.js';
import { MIGRATIONS, migrateDatabase, startTestPostgres, withAdmin } from '../test/support/postgres.js';

const { values } = parseArgs({ options: { jobs: { type: 'string' }, owners: { type: 'string' }, rounds: { type: 'string' }, variants: { type: 'string' }, maps: { type: 'string' } } });
const options = z
  .object({
    jobs: z
      .string()
      .default('0,1000,100000')
      .transform((s) => s.split(',').map((n) => Number(n.trim())))
      .refine((list) => list.every((n) => Number.isInteger(n) && n >= 0), '--jobs must be whole numbers of 0 or more, separated by commas'),
    owners: z.coerce.number({ message: '--owners must be a number' }).int('--owners must be a whole number').min(2, '--owners must be at least 2').max(500, '--owners must be at most 500').default(3),
    rounds: z.coerce.number({ message: '--rounds must be a number' }).int('--rounds must be a whole number').min(1, '--rounds must be at least 1').default(3),
    variants: z
      .string()
      .default('017,current')
      .transform((s) => s.split(',').map((v) => v.trim()))
      .refine((list) => list.length > 0 && list.every((v) => v === '017' || v === '019' || v === '024' || v === 'current'), '--variants must be 017, 019, 024 or current, or several separated by commas'),
    maps: z.coerce.number({ message: '--maps must be a number' }).int('--maps must be a whole number').min(1, '--maps must be at least 1').default(1),
  })
  .parse(values);

/** The sharding migrations through `last`, copied into a folder of their own (the catalog before `last + 1`). */
async function migrationsThrough(last: number): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `ca-dms-bench-${last}-`));
  for (const file of await readdir(MIGRATIONS.sharding)) if (/^\d{3}_/.test(file) && Number(file.slice(0, 3)) <= last) await cp(join(MIGRATIONS.sharding, file), join(dir, file));
  return dir;
}

const stats = (times: readonly number[]): string => {
  const s = [...times].sort((a, b) => a - b);
  const at = (q: number) => (s[Math.min(s.length - 1, Math.floor(s.length * q))] ?? NaN).toFixed(1);
  return `median ${at(0.5).padStart(8)}  p90 ${at(0.9).padStart(8)}  max ${at(1).padStart(8)}`;
};

/** `run` inside a transaction rolled back, timed by the client's clock (ms); `refused` is the SQLSTATE it must fail with, if any. */
async function timed(db: pg.Client, run: () => Promise<unknown>, refused?: string): Promise<number> {
  await db.query('begin');
  try {
    const start = performance.now();
    try {
      await run();
      if (refused !== undefined) throw new Error(`expected SQLSTATE ${refused}, but the statement went through`);
    } catch (error) {
      if (refused === undefined || (error as { code?: string }).code !== refused) throw error;
    }
    return performance.now() - start;
  } finally {
    await db.query('rollback');
  }
}

const server = await startTestPostgres();
const old017 = await migrationsThrough(17);
const old019 = await migrationsThrough(19);
const old024 = await migrationsThrough(24);
const variantName = (variant: string) => (variant === 'current' ? 'this release' : `migration ${variant}`);
try {
  const owners = Array.from({ length: options.owners }, (_, i) => `s${i + 1}`);
  const map = buildSlotMap(owners.map((shardId) => ({ shardId, weight: 1 })));
  const [first, second] = owners as [string, string];
  const last = owners[owners.length - 1] as string;
  // Published over the latest of `--maps` maps.
  const atEnd = (next: SlotMap): SlotMap => ({ ...next, version: options.maps + 1 });
  const oneSlot = atEnd(moveSlots(map, [0], last));
  const typo = atEnd({ ...map, assignments: map.assignments.map((o, slot) => (slot === 0 ? `${o}_0O2` : o)) });
  const firstSlots = map.assignments.flatMap((o, slot) => (o === first ? [slot] : []));
  const oneOwner = atEnd(moveSlots(map, firstSlots, last));
  // Published (one row), or the figures would be of a compare-and-set that wrote nothing.
  const byHand = async (db: pg.Client, next: SlotMap) => {
    const { rows } = await db.query('select version from catalog.publish_slot_map_by_hand($1, $2, $3)', [next.version, next.assignments, 'bench']);
    if (rows.length !== 1) throw new Error(`catalog.publish_slot_map_by_hand did not publish version ${next.version}`);
  };
  const plans: string[] = [];
  console.log(
    `a map by hand on a catalog of one ${map.slotCount}-slot map over ${owners.length} shards and N finished slot moves ${second} -> ${first}; ${firstSlots.length} slots in "1 owner's slots"; ${options.rounds} rounds (ms)`,
  );
  for (const variant of options.variants) {
    const database = `catalog_${variant}`;
    await withAdmin(server.url, (admin) => admin.query(`create database ${database}`));
    // The maps are published before this release's migrations (020, 021) run, as on a catalog
    // upgraded to it: 021 reads them into catalog.slot_map_shards, timed here.
    await migrateDatabase(server.urlFor(database), 'sharding', variant === '017' ? old017 : old019);
    const db = new pg.Client({ connectionString: server.urlFor(database) });
    await db.connect();
    try {
      await db.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (1, $1, $2, 'bench', 'bench')`, [map.slotCount, map.assignments]);
      if (options.maps > 1) {
        // Versions 2.. are flips, each giving one slot (in turn) to the last owner, as moves'
        // flips do; inserted with the catalog's triggers off (the CAF08 trigger's checks are not
        // what is measured), the latest version 1's map again (the cases below publish from it).
        const started = performance.now();
        await db.query('begin');
        await db.query('set local session_replication_role = replica');
        await db.query(
          `insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason)
           select g, $2, $3::text[], 'bench', 'bench' from generate_series(2, $1) g`,
          [options.maps, map.slotCount, map.assignments],
        );
        await db.query(`update catalog.slot_maps set assignments[(version % $2) + 1] = $3 where version between 2 and $1 - 1`, [options.maps, map.slotCount, last]);
        await db.query('commit');
        await db.query('vacuum analyze catalog.slot_maps');
        console.log(`  (${options.maps} maps published in ${((performance.now() - started) / 1000).toFixed(1)} s)`);
      }
      if (variant === 'current' || variant === '024') {
        const started = performance.now();
        await migrateDatabase(server.urlFor(database), 'sharding', variant === '024' ? old024 : MIGRATIONS.sharding);
        console.log(`  (this release's migrations on ${options.maps} maps: ${((performance.now() - started) / 1000).toFixed(1)} s, 021's fill of catalog.slot_map_shards among them)`);
      }
      for (const jobs of options.jobs) {
        await db.query('truncate catalog.move_jobs');
        await db.query(
          `insert into catalog.move_jobs (kind, unit_id, slot, from_shard, to_shard, state, created_by, copying_at, flip_started_at, finished_at)
           select 'slot', (g % $2)::text, g % $2, $3, $4, 'done', 'bench', now(), now(), now() from generate_series(0, $1 - 1) g`,
          [jobs, map.slotCount, second, first],
        );
        await db.query('vacuum analyze catalog.move_jobs');
        const rows = { one: [] as number[], owner: [] as number[], trigger: [] as number[], plain: [] as number[], typo: [] as number[] };
        for (let round = 0; round < options.rounds; round++) {
          rows.one.push(await timed(db, () => byHand(db, oneSlot)));
          rows.owner.push(await timed(db, () => byHand(db, oneOwner)));
          rows.typo.push(await timed(db, () => byHand(db, typo), '22023'));
          await db.query('begin');
          try {
            await db.query(`select set_config('ca_dms.map_writer', 'by hand: bench', true)`);
            const { rows: plan } = await db.query<{ 'QUERY PLAN': string }>(
              `explain (analyze, format text) insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'bench', 'bench')`,
              [oneOwner.version, oneOwner.slotCount, oneOwner.assignments],
            );
            const trigger = plan.map((r) => r['QUERY PLAN']).find((l) => l.startsWith('Trigger slot_maps_owner_kept'));
            rows.trigger.push(Number(/time=([0-9.]+)/.exec(trigger ?? '')?.[1]));
          } finally {
            await db.query('rollback');
          }
          rows.plain.push(
            await timed(
              db,
              () => db.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values ($1, $2, $3, 'bench', 'bench')`, [oneOwner.version, oneOwner.slotCount, oneOwner.assignments]),
              jobs > 0 ? 'CAF08' : undefined,
            ),
          );
        }
        console.log(`\nthrough ${variantName(variant)}, ${options.maps} maps, ${jobs} move jobs:`);
        console.log(`  1 slot                      ${stats(rows.one)}`);
        console.log(`  1 owner's slots             ${stats(rows.owner)}`);
        console.log(`  trigger, 1 owner's slots    ${stats(rows.trigger)}`);
        console.log(`  plain insert${jobs > 0 ? ' (CAF08)' : ' (passes)'}       ${stats(rows.plain)}`);
        console.log(`  typo in an owner (22023)    ${stats(rows.typo)}`);
        if (jobs === Math.max(...options.jobs)) {
          const notices: string[] = [];
          const hear = (n: { message?: string }) => notices.push(n.message ?? '');
          db.on('notice', hear);
          await db.query('begin');
          try {
            await db.query(`load 'auto_explain'`);
            for (const setting of ['log_min_duration = 0', 'log_nested_statements = on', 'log_analyze = on', 'log_buffers = on']) await db.query(`set local auto_explain.${setting}`);
            await db.query('set local client_min_messages = log');
            await byHand(db, oneOwner);
          } finally {
            await db.query('rollback');
            db.off('notice', hear);
          }
          // One entry per statement (its text), the slowest plan kept: 013's check ran thousands of times.
          const statements = new Map<string, { runs: number; totalMs: number; slowestMs: number; plan: string }>();
          for (const notice of notices) {
            const ms = Number(/^duration: ([0-9.]+) ms/.exec(notice)?.[1]);
            // auto_explain's text: `duration: ...`, `Query Text: ...` (maybe many lines), maybe `Query Parameters: ...`, then the plan's first node.
            const lines = notice.split('\n');
            const plan = lines.findIndex((l) => /\(cost=[0-9.]+\.\.[0-9.]+ rows=/.test(l));
            const text = lines.slice(1, plan < 0 ? undefined : plan).filter((l) => !l.startsWith('Query Parameters: ')).join('\n');
            if (text.includes('publish_slot_map_by_hand($1')) continue;
            const seen = statements.get(text) ?? { runs: 0, totalMs: 0, slowestMs: -1, plan: '' };
            seen.runs += 1;
            seen.totalMs += ms;
            if (ms > seen.slowestMs) Object.assign(seen, { slowestMs: ms, plan: notice.replace(/Query Parameters: .*\n/, '') });
            statements.set(text, seen);
          }
          plans.push(`\n== through ${variantName(variant)}, ${jobs} move jobs: the statements of one "1 owner's slots" call that took 0.5 ms or more in all`);
          for (const s of [...statements.values()].filter((s) => s.totalMs >= 0.5).sort((a, b) => b.totalMs - a.totalMs)) plans.push(`\n-- ran ${s.runs} times, ${s.totalMs.toFixed(1)} ms in all; the slowest:\n${s.plan}`);
        }
      }
    } finally {
      await db.end();
    }
  }
  console.log(plans.join('\n'));
} finally {
  await rm(old017, { recursive: true, force: true });
  await rm(old019, { recursive: true, force: true });
  await rm(old024, { recursive: true, force: true });
  await server.stop();
}
