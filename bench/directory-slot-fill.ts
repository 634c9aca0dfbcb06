/**
 * What sharding migration 031 (each directory key's slot kept in catalog.shard_directory, issue
 * #15) costs a catalog with a directory already large, and what its fill costs the directory's
 * writers: the migrations up to 030 run, `--pins` keys in the canonical UUID form pinned (md5
 * UUIDs, to two shards in turn), then 031 timed (ADD COLUMN, the trigger, the index on a column
 * NULL everywhere: the time a pin waits for it), then the fill (`fillDirectorySlots`, batches of
 * `--batch` rows, each its own transaction) timed while another connection writes a pin of a key
 * already in the directory every 20 ms (the longest of those writes printed: what a batch holds a
 * pin off); last, the fence review's read of one slot's pins (`pinnedKeysOf`) against the read
 * of the whole directory it replaced, medians of 5. And the fill run again with nothing left (as
 * every deploy and local start runs it), against the walk of every key such a run made before it
 * started at the first row whose slot is NULL.
 *
 * Measured on 2 shared cores loaded by other work (2026-12-07): see docs/sharding-spec.md
 * section 2, "The hash in SQL".
 *
 * Run: `npm run bench:directory-slot-fill` (options: `--pins 100000,1000000`, each on a catalog
 * of its own; `--batch N`, default 2,000).
 */
import { cpSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import { DIRECTORY_SLOT_FILL_BATCH, fillDirectorySlots } from '../functions/adapters/postgres/directory-slot-fill.js';
import { pinnedKeysOf } from '../functions/adapters/postgres/unit-rows.js';
import { MIGRATIONS, migrateDatabase, startTestPostgres, withAdmin } from '../test/support/postgres.js';

const { values } = parseArgs({ options: { pins: { type: 'string' }, batch: { type: 'string' } } });
const options = z
  .object({
    pins: z
      .string()
      .default('100000,1000000')
      .transform((s) => s.split(',').map((x) => Number(x.trim())))
      .refine((xs) => xs.every((x) => Number.isInteger(x) && x >= 1), '--pins must be whole numbers of at least 1, comma-separated (e.g. 100000,1000000)'),
    batch: z.coerce.number({ message: '--batch must be a number' }).int('--batch must be a whole number').min(1, '--batch must be at least 1').default(DIRECTORY_SLOT_FILL_BATCH),
  })
  .parse(values);

const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const seconds = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;

// The sharding migrations up to 030, and 031 alone, in folders of their own.
const before = mkdtempSync(join(tmpdir(), 'bench-031-'));
const files = readdirSync(MIGRATIONS.sharding).filter((f) => f.endsWith('.sql')).sort();
const at031 = files.findIndex((f) => f.startsWith('031_'));
if (at031 < 0) throw new Error('bench/directory-slot-fill.ts: sharding migration 031 is missing: nothing to measure');
for (const f of files.slice(0, at031)) cpSync(join(MIGRATIONS.sharding, f), join(before, f));

const server = await startTestPostgres();
try {
  console.log(`load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}; batches of ${options.batch}`);
  for (const [i, pins] of options.pins.entries()) {
    const database = `catalog_${i}`;
    await withAdmin(server.url, (admin) => admin.query(`create database ${database}`));
    await migrateDatabase(server.urlFor(database), 'sharding', before);
    const pool = new pg.Pool({ connectionString: server.urlFor(database), max: 3 });
    pool.on('error', () => undefined);
    try {
      for (let from = 0; from < pins; from += 100_000) {
        await pool.query(
          `insert into catalog.shard_directory (key, shard_id, updated_by)
           select md5('bench-pin-' || i)::uuid::text, case when i % 2 = 0 then 'shard_a' else 'shard_b' end, 'bench' from generate_series($1::int, $2::int - 1) i`,
          [from, Math.min(pins, from + 100_000)],
        );
      }
      await pool.query('vacuum analyze catalog.shard_directory');
      const whole = async () => {
        const t = performance.now();
        await pinnedKeysOf(pool, new Set([1234]));
        return performance.now() - t;
      };
      const wholeMs: number[] = [];
      for (let r = 0; r < 5; r += 1) wholeMs.push(await whole());
      const migrated = performance.now();
      await migrateDatabase(server.urlFor(database), 'sharding');
      const migrateMs = performance.now() - migrated;
      // A pin written every 20 ms during the fill: each write's time, the longest printed.
      const key = (await pool.query<{ key: string }>('select key from catalog.shard_directory order by key desc limit 1')).rows[0]?.key as string;
      let filling = true;
      const writes: number[] = [];
      const writer = (async () => {
        while (filling) {
          const t = performance.now();
          await pool.query(`update catalog.shard_directory set shard_id = case when shard_id = 'shard_a' then 'shard_b' else 'shard_a' end, version = version + 1 where key = $1`, [key]);
          writes.push(performance.now() - t);
          await new Promise((r) => setTimeout(r, 20));
        }
      })();
      const filled = performance.now();
      let batches = 0;
      const n = await fillDirectorySlots(pool, { batch: options.batch, onBatch: () => (batches += 1) });
      const fillMs = performance.now() - filled;
      filling = false;
      await writer;
      await pool.query('vacuum analyze catalog.shard_directory');
      // Run again with nothing left (every deploy's and every local start's run from now on), and
      // the walk of every key such a run made before it started at the first NULL row.
      const again = performance.now();
      const againFilled = await fillDirectorySlots(pool, { batch: options.batch });
      const againMs = performance.now() - again;
      const walked = performance.now();
      let statements = 0;
      for (let after: string | null = null; ; ) {
        statements += 1;
        const r: { last_key: string | null } | undefined = (await pool.query<{ last_key: string | null }>('select last_key from catalog.shard_directory_slot_fill($1::text, $2::int)', [after, options.batch])).rows[0];
        if (r === undefined || r.last_key === null) break;
        after = r.last_key;
      }
      const walkedMs = performance.now() - walked;
      const bySlotMs: number[] = [];
      for (let r = 0; r < 5; r += 1) bySlotMs.push(await whole());
      console.log(
        `${pins} pins: migration 031 ${seconds(migrateMs)}; fill ${n} rows in ${batches} batches ${seconds(fillMs)} (${((fillMs * 1000) / Math.max(1, n)).toFixed(1)} µs a row), ` +
          `${writes.length} pin writes meanwhile, median ${median(writes).toFixed(1)} ms, longest ${Math.max(...writes).toFixed(1)} ms; ` +
          `fill again (nothing left) ${againFilled} rows in ${(againMs).toFixed(1)} ms (walking every key: ${seconds(walkedMs)}, ${statements} statements); ` +
          `one slot's pins: read whole ${seconds(median(wholeMs))}, by slot ${(median(bySlotMs)).toFixed(1)} ms`,
      );
    } finally {
      await pool.end();
    }
  }
  console.log(`load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
} finally {
  await server.stop();
  rmSync(before, { recursive: true, force: true });
}
