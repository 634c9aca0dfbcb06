/**
 * What the fence review's listing (`listFences`, functions/adapters/postgres/fence-review.ts:
 * `shards fences`, GET /shards/fences) costs with a long history of slot maps, and what one
 * flip's map insert costs (issue #15). The review asks, for each `fenced` slot row, which shards
 * owned the slot in the maps since the row's `map_version`; 500 such rows at version 0 read the
 * owners of every map ever published.
 *
 * One test PostgreSQL: a catalog (the sharding migrations) and two shards (shard_a, shard_b, the
 * shard migrations). The first map gives the 4,096 slots to the two shards in turn; every later
 * map flips one slot (slot (version * 7919) mod 4096) to the other shard, as a slot move's flip
 * does, inserted with the catalog's triggers on (what they record, they record as in production).
 * `--fenced` slots of shard_a carry a `fenced` row at map version 0 on shard_a. For each history
 * length of `--maps` (ascending; the maps are added to reach each), `listFences` is timed
 * `--rounds` times (median printed, with the rows it listed); then `--flips` map inserts, each a
 * 4,096-slot map flipping one slot, timed on the server one by one in one transaction rolled back
 * (median and 90th percentile). Last, with `--alternate N`, the CAF08 trigger function as migrated
 * (which records each slot's owner history, sharding migration 023) and 020's (which does not)
 * are swapped in place and `--flips` inserts timed with each in turn, N rounds, the order
 * reversed every other round: the history's cost to a flip, paired under the same load.
 *
 * Measured on 2 shared cores loaded by other work (2026-12-07, `--rounds 3`; 500 fenced rows):
 *   listFences   before 023 (every map since the oldest fenced row's version read): 0.71 s at
 *                1,000 maps, 4.48 s at 5,000, 42.5 s at 20,000 (load 3 to 10); again at load 12
 *                to 15: 3.26 s, 10.9 s, 54.5 s. After (the owner history read): 0.07 s, 0.06 s,
 *                0.33 s (load 9 to 13); again at load 12 to 16: 0.22 s, 0.13 s, 0.19 s.
 *   a flip       at 20,000 maps, `--alternate 7`, medians of the rounds' medians: 020's trigger
 *                function 1.15 ms, 023's 1.12 ms (rounds 1.04 to 1.52 and 1.06 to 1.71 ms):
 *                no measurable difference.
 *
 *   the directory `--directory N` pins (keys in the canonical UUID form, pinned to the two shards
 *                in turn; pins override the hash) at 1,000 maps, `--flips 0`: before sharding
 *                migration 031 (the pins read whole, hashed in TypeScript) 0.06 s with none,
 *                0.14 s at 10,000, 0.73 s at 100,000, 10.05 s [8.08, 10.27, 10.05] at 1,000,000
 *                (load 2.4 to 3.9); after (the pins of the 500 slots read by the directory's slot
 *                column: an eighth of the directory here) 0.07 s, 0.16 s and 0.68 s (load 5.5 to 12).
 *
 * Run: `npm run bench:fence-review` (options: `--maps 1000,5000,20000`; `--fenced N`, default
 * 500; `--rounds N`, default 3; `--flips N`, default 200, 0 for none; `--alternate N`, default 5,
 * 0 for none; `--directory N` pins, default 0).
 */
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import { listFences } from '../functions/adapters/postgres/fence-review.js';
import { MIGRATIONS, migrateDatabase, startTestPostgres, withAdmin } from '../test/support/postgres.js';

const { values } = parseArgs({ options: { maps: { type: 'string' }, fenced: { type: 'string' }, rounds: { type: 'string' }, flips: { type: 'string' }, alternate: { type: 'string' }, directory: { type: 'string' } } });
const count = (name: string, fallback: number, min = 1) => z.coerce.number({ message: `--${name} must be a number` }).int(`--${name} must be a whole number`).min(min, `--${name} must be at least ${min}`).default(fallback);
const options = z
  .object({
    maps: z
      .string()
      .default('1000,5000,20000')
      .transform((s) => s.split(',').map((x) => Number(x.trim())))
      .refine((xs) => xs.every((x) => Number.isInteger(x) && x >= 1), '--maps must be whole numbers of at least 1, comma-separated (e.g. 1000,5000,20000)')
      .transform((xs) => [...xs].sort((a, b) => a - b)),
    fenced: count('fenced', 500),
    rounds: count('rounds', 3),
    flips: count('flips', 200, 0),
    alternate: count('alternate', 5, 0),
    directory: count('directory', 0, 0),
  })
  .parse(values);

const SLOTS = 4096;
const SHARDS = ['shard_a', 'shard_b'] as const;

const quantile = (xs: readonly number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] as number;
};

const server = await startTestPostgres();
const pools: pg.Pool[] = [];
const pool = (database: string): pg.Pool => {
  const p = new pg.Pool({ connectionString: server.urlFor(database), max: 4 });
  p.on('error', () => undefined);
  pools.push(p);
  return p;
};
try {
  for (const database of ['catalog', ...SHARDS]) await withAdmin(server.url, (admin) => admin.query(`create database ${database}`));
  await migrateDatabase(server.urlFor('catalog'), 'sharding');
  for (const shard of SHARDS) await migrateDatabase(server.urlFor(shard), 'shard');
  const catalog = pool('catalog');
  const shards = new Map(SHARDS.map((s) => [s as string, pool(s)]));

  await catalog.query(
    `insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason)
     select 1, $1::int, array(select case when s % 2 = 0 then 'shard_a' else 'shard_b' end from generate_series(0, $1::int - 1) s), 'bench', 'the first map'`,
    [SLOTS],
  );
  // `--directory N` pins: N keys in the canonical UUID form (as CA-DMS's user ids are), pinned to
  // the shards in turn, inserted with the catalog's triggers on; what the review reads of the
  // directory (the pinned keys of the slots it reviews) grows with them.
  if (options.directory > 0) {
    const added = performance.now();
    for (let from = 0; from < options.directory; from += 100_000) {
      await catalog.query(
        `insert into catalog.shard_directory (key, shard_id, updated_by)
         select md5('bench-pin-' || i)::uuid::text, case when i % 2 = 0 then 'shard_a' else 'shard_b' end, 'bench'
           from generate_series($1::int, $2::int - 1) i`,
        [from, Math.min(options.directory, from + 100_000)],
      );
    }
    await catalog.query('vacuum analyze catalog.shard_directory');
    console.log(`${options.directory} directory pins added in ${((performance.now() - added) / 1000).toFixed(1)} s`);
  }
  const fenced = Array.from({ length: options.fenced }, (_, i) => 2 * i).filter((s) => s < SLOTS);
  await (shards.get('shard_a') as pg.Pool).query(
    `insert into write_fences (kind, unit_id, state, map_version, updated_at) select 'slot', s, 'fenced', 0, now() - interval '1 hour' from unnest($1::text[]) s`,
    [fenced.map(String)],
  );

  /**
   * A DO block adding maps after the latest, each flipping one slot (slot (version * 7919) mod
   * SLOTS, 1-based in the array) to the other shard, as a slot move's flip does, inserted with the
   * catalog's triggers on: as many as `loop` (the loop's head: `while v < N`, `for i in 1..N`)
   * runs. With `timed`, each insert is timed on the server (clock_timestamp around it), the
   * milliseconds left in the transaction's setting `bench.flips`, comma-separated.
   */
  const flipsBlock = (loop: string, timed: boolean): string => `do $$
     declare
       a text[] := (select assignments from catalog.slot_maps order by version desc limit 1);
       v integer := (select max(version) from catalog.slot_maps);
       s integer;
       t timestamptz;
       took double precision[] := '{}';
     begin
       ${loop} loop
         v := v + 1;
         s := (v::bigint * 7919 % ${SLOTS})::integer + 1;
         a[s] := case when a[s] = 'shard_a' then 'shard_b' else 'shard_a' end;
         ${timed ? 't := clock_timestamp();' : ''}
         insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (v, ${SLOTS}, a, 'bench', 'a flip');
         ${timed ? 'took := took || extract(epoch from clock_timestamp() - t) * 1000;' : ''}
       end loop;
       ${timed ? "perform set_config('bench.flips', array_to_string(took, ','), true);" : ''}
     end $$`;

  /** Adds maps, each flipping one slot, until the latest version is `to`. */
  const grow = async (to: number): Promise<void> => {
    await catalog.query(flipsBlock(`while v < ${to}`, false));
    await catalog.query('vacuum analyze');
  };

  /** `--flips` map inserts, each flipping one slot, timed on the server (clock_timestamp around each insert, in one transaction rolled back: the client's round trip on a loaded host is noisier than the trigger's cost); milliseconds each. */
  const timeFlips = async (): Promise<number[]> => {
    const c = await catalog.connect();
    try {
      await c.query('begin');
      await c.query(flipsBlock(`for i in 1..${options.flips}`, true));
      const each = ((await c.query<{ t: string }>(`select current_setting('bench.flips') as t`)).rows[0]?.t ?? '').split(',').map(Number);
      await c.query('rollback');
      return each;
    } finally {
      c.release();
    }
  };

  console.log(`load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}; ${options.fenced} fenced slot rows at version 0, ${SLOTS}-slot maps, ${options.directory} directory pins, ${options.rounds} round(s)`);
  for (const maps of options.maps) {
    const grown = performance.now();
    await grow(maps);
    const growMs = performance.now() - grown;
    const times: number[] = [];
    let listed = 0;
    for (let i = 0; i < options.rounds; i += 1) {
      const started = performance.now();
      const listing = await listFences({ catalog, shards, timeoutMs: 60_000, routing: { strategy: 'hash_based', overrideHash: true, fallback: 'hash' } });
      times.push(performance.now() - started);
      listed = listing.rows.length;
    }
    let flips = '';
    if (options.flips > 0) {
      const each = await timeFlips();
      flips = `; a flip's map insert: median ${quantile(each, 0.5).toFixed(2)} ms, p90 ${quantile(each, 0.9).toFixed(2)} ms (${options.flips}, timed on the server)`;
    }
    console.log(`${maps} maps (added in ${(growMs / 1000).toFixed(1)} s): listFences median ${(quantile(times, 0.5) / 1000).toFixed(2)} s [${times.map((t) => (t / 1000).toFixed(2)).join(', ')}], ${listed} rows listed${flips}`);
  }
  // The CAF08 trigger function as migrated (it records each slot's owner history, sharding
  // migration 023) against 020's (which does not), swapped in place in this catalog and timed in
  // turn, the order reversed every other round: the cost a flip pays for the history, paired
  // under the same load and the same history.
  if (options.alternate > 0 && options.flips > 0) {
    const migrated = (await catalog.query<{ def: string }>(`select pg_get_functiondef('catalog.slot_maps_owner_kept()'::regprocedure) as def`)).rows[0]?.def as string;
    const sql020 = readFileSync(join(MIGRATIONS.sharding, '020_slot_map_shards.sql'), 'utf8');
    const from = sql020.indexOf('create or replace function catalog.slot_maps_owner_kept()');
    const of020 = sql020.slice(from, sql020.indexOf('\n$$;', from) + 4);
    if (from < 0 || !migrated.includes('slot_owner_history_record')) throw new Error('bench/fence-review.ts --alternate: the trigger function as migrated does not record the owner history, or 020 does not create it: nothing to compare');
    const medians: Record<'020' | '023', number[]> = { '020': [], '023': [] };
    for (let round = 0; round < options.alternate; round += 1) {
      for (const variant of round % 2 === 0 ? (['020', '023'] as const) : (['023', '020'] as const)) {
        await catalog.query(variant === '020' ? of020 : migrated);
        medians[variant].push(quantile(await timeFlips(), 0.5));
      }
    }
    await catalog.query(migrated);
    const show = (xs: number[]) => `median ${quantile(xs, 0.5).toFixed(2)} ms [${xs.map((x) => x.toFixed(2)).join(', ')}]`;
    console.log(`a flip's map insert at ${options.maps.at(-1)} maps, ${options.alternate} rounds of ${options.flips}: 020's trigger function ${show(medians['020'])}; 023's ${show(medians['023'])}`);
  }
  console.log(`load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
} finally {
  for (const p of pools) await p.end();
  await server.stop();
}
