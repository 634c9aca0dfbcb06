/**
 * What the write-fence trigger (`enforce_write_fence`) costs per write with each way of keeping
 * its look-up of an inserted id (the insert-meets-copy check, shard migration 018) off a
 * sequential scan, and what a bulk insert into an emptied, analyzed table costs with each.
 *
 * Shard migration 021's body looks the id up with static statements, whose plans PL/pgSQL keeps
 * per session; from the sixth run PostgreSQL may keep one generic plan. On a table analyzed
 * (nearly) empty while the shard holds a fence row, that plan is a sequential scan, kept while the
 * table grows: a bulk `INSERT ... SELECT` reads every earlier row for each row (quadratic). The
 * variants, each made from the function as migrated (pg_get_functiondef), in one database:
 *
 *   021        the body of shard migration 021, nothing set but search_path;
 *   custom     021 with `set plan_cache_mode = force_custom_plan` on the function: every
 *              statement of the body planned at every run, with the table's current size;
 *   dynamic    021 with the look-up as `execute format(...) using new.id` (planned at every run),
 *              the other statements static as before;
 *   noseqscan  021 with `set enable_seqscan = off` on the function (shard migration 032): plans kept,
 *              and a generic plan takes the primary key's index while one exists.
 *
 * Measured per variant, on a fresh session, `--rounds` rounds with the order reversed every other
 * round (median printed):
 *   app writes  `documents` holding `--rows` rows (analyzed) and `write_fences` `--fences` rows of
 *               other slots (the written slot has none, as a slot this shard owns): `--writes`
 *               single-row INSERTs, then as many single-row UPDATEs of existing rows, each a
 *               statement of a DO loop (no round trips), rolled back; microseconds per write;
 *   bulk        `documents` truncated and analyzed empty, then one `INSERT ... SELECT` of
 *               `--bulk` rows and one of 4x as many (each after a new truncate and analyze):
 *               seconds, and the ratio (4 for linear, 16 for quadratic).
 *
 * Measured on 2 shared cores (2026-12-07, other tests running, load average 6-10): bulk 10,000 and
 * 40,000 rows, 021 5.04 s and 87.3 s (x17.3), noseqscan 1.06 s and 4.14 s (x3.9), custom 3.43 s
 * and 10.10 s, dynamic 2.80 s and 11.80 s (3 rounds); single-row writes against 021, median of the
 * rounds' ratios (`--bulk 0 --rounds 9`, then `--rounds 15 --writes 3000`): noseqscan insert 0.85
 * and 0.96, update 0.88 and 0.91; custom 1.94 and 1.79, 1.87 and 2.03; dynamic 1.61 and 1.34,
 * 1.00 and 0.95. Shipped: noseqscan. Runs of 1-3 rounds at that load varied from 0.85 to 2.0 for
 * any variant: compare paired medians of many rounds.
 *
 * Run: `npm run bench:fence-trigger` (options: `--rows N`, default 20000; `--fences N`, default
 * 100; `--writes N`, default 5000; `--bulk N`, default 10000, 0 for none;
 * `--rounds N`, default 3).
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import { startMigratedDatabase } from './support/migrated-database.js';

const { values } = parseArgs({ options: { rows: { type: 'string' }, fences: { type: 'string' }, writes: { type: 'string' }, bulk: { type: 'string' }, rounds: { type: 'string' } } });
const count = (name: string, fallback: number, min = 1) => z.coerce.number({ message: `--${name} must be a number` }).int(`--${name} must be a whole number`).min(min, `--${name} must be at least ${min}`).default(fallback);
const options = z.object({ rows: count('rows', 20_000), fences: count('fences', 100), writes: count('writes', 5000), bulk: count('bulk', 10_000, 0), rounds: count('rounds', 3) }).parse(values);

const SLOT = 7;
const VARIANTS = ['021', 'custom', 'dynamic', 'noseqscan'] as const;
type Variant = (typeof VARIANTS)[number];

/** The SET clauses this bench adds or removes (the function as migrated may carry one: 032's). */
const SETTINGS = /^ SET (plan_cache_mode|enable_seqscan) TO [^\n]*\n/gm;
const STATIC_LOOKUP = /if tg_table_name = 'documents' then[\s\S]*?end if;/;
const DYNAMIC_LOOKUP = "execute format('select to_jsonb(t) from %I.%I t where t.id = $1', tg_table_schema, tg_table_name) into held using new.id;";

/** The definition of `variant`, from `migrated` (pg_get_functiondef of the function as migrated). */
function definition(migrated: string, variant: Variant): string {
  const base = migrated.replace(SETTINGS, '');
  if (!STATIC_LOOKUP.test(base)) throw new Error('enforce_write_fence as migrated has no static look-up of the inserted id: update bench/fence-trigger.ts');
  const setting = (line: string) => base.replace(/^AS \$function\$/m, `${line}\nAS $function$`);
  switch (variant) {
    case '021':
      return base;
    case 'custom':
      return setting(" SET plan_cache_mode TO 'force_custom_plan'");
    case 'dynamic':
      return base.replace(STATIC_LOOKUP, DYNAMIC_LOOKUP);
    case 'noseqscan':
      return setting(" SET enable_seqscan TO 'off'");
  }
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};

const { server, url } = await startMigratedDatabase('shard', 'shard');
try {
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  const migrated = (await admin.query<{ def: string }>(`select pg_get_functiondef('enforce_write_fence()'::regprocedure) as def`)).rows[0]?.def as string;
  await admin.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version) select 'slot', (1000 + g)::text, case when g % 2 = 0 then 'moved' else 'open' end, case when g % 2 = 0 then 'shard_x' end, g from generate_series(1, $1::int) g`, [options.fences]);
  await admin.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), $1::int, 'u' || g || '@example.com', 'u' from generate_series(1, 100) g`, [SLOT]);
  await admin.query('alter table documents set (autovacuum_enabled = false)');

  /** Truncates documents and fills it with `rows` rows of the slot's users (no trigger), analyzed. */
  const fill = async (rows: number): Promise<void> => {
    await admin.query('truncate documents');
    await admin.query("begin; set local session_replication_role = replica");
    await admin.query(`insert into documents (id, owner_id, slot, title) select gen_random_uuid(), u.id, u.slot, 'd' from (select id, slot, row_number() over () as n from users) u join generate_series(1, $1::int) g on g % 100 = u.n - 1`, [rows]);
    await admin.query('commit; analyze documents');
  };

  /** Runs `fn` on a fresh session (a fresh plan cache). */
  const session = async <T>(fn: (c: pg.Client) => Promise<T>): Promise<T> => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.end();
    }
  };

  const appWrites = async (): Promise<{ insert: number; update: number }> => {
    await fill(options.rows);
    return session(async (c) => {
      const timed = async (loop: string): Promise<number> => {
        await c.query('begin');
        const started = performance.now();
        await c.query(`do $$ declare owner uuid := (select id from users limit 1); ids uuid[] := array(select id from documents limit ${options.writes}); begin ${loop} end $$`);
        const micros = ((performance.now() - started) * 1000) / options.writes;
        await c.query('rollback');
        return micros;
      };
      await timed(`for i in 1..10 loop insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), owner, ${SLOT}, 'w'); end loop;`);
      const insert = await timed(`for i in 1..${options.writes} loop insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), owner, ${SLOT}, 'w'); end loop;`);
      const update = await timed(`for i in 1..${options.writes} loop update documents set title = 'u' where id = ids[i]; end loop;`);
      return { insert, update };
    });
  };

  const bulk = async (rows: number): Promise<number> => {
    await admin.query('truncate documents; analyze documents');
    return session(async (c) => {
      const started = performance.now();
      await c.query(`insert into documents (id, owner_id, slot, title) select gen_random_uuid(), u.id, u.slot, 'b' from (select id, slot, row_number() over () as n from users) u join generate_series(1, $1::int) g on g % 100 = u.n - 1`, [rows]);
      return (performance.now() - started) / 1000;
    });
  };

  const results = new Map<Variant, { insert: number[]; update: number[]; small: number[]; large: number[] }>(VARIANTS.map((v) => [v, { insert: [], update: [], small: [], large: [] }]));
  for (let round = 0; round < options.rounds; round++) {
    for (const variant of round % 2 === 0 ? VARIANTS : [...VARIANTS].reverse()) {
      await admin.query(definition(migrated, variant));
      const r = results.get(variant) as { insert: number[]; update: number[]; small: number[]; large: number[] };
      const app = await appWrites();
      r.insert.push(app.insert);
      r.update.push(app.update);
      if (options.bulk > 0) {
        r.small.push(await bulk(options.bulk));
        r.large.push(await bulk(options.bulk * 4));
      }
    }
  }
  await admin.query(migrated);
  await admin.end();

  const fmt = (n: number, digits = 1): string => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
  console.log(`enforce_write_fence: ${fmt(options.rows, 0)} documents, ${options.fences} fence rows, ${options.writes} writes per run, ${options.bulk > 0 ? `bulk ${fmt(options.bulk, 0)} and ${fmt(options.bulk * 4, 0)} rows` : 'no bulk'}, ${options.rounds} rounds, medians; load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  console.log(`  ${'variant'.padEnd(10)} ${'insert us'.padStart(10)} ${'update us'.padStart(10)}${options.bulk > 0 ? ` ${'bulk s'.padStart(9)} ${'4x bulk s'.padStart(10)} ${'ratio'.padStart(6)}` : ''}`);
  const base = results.get('021') as { insert: number[]; update: number[] };
  for (const [variant, r] of results) {
    const bulkColumns = options.bulk > 0 ? ` ${fmt(median(r.small), 2).padStart(9)} ${fmt(median(r.large), 2).padStart(10)} ${fmt(median(r.large) / median(r.small)).padStart(6)}` : '';
    console.log(`  ${variant.padEnd(10)} ${fmt(median(r.insert)).padStart(10)} ${fmt(median(r.update)).padStart(10)}${bulkColumns}`);
  }
  for (const [variant, r] of results) {
    if (variant === '021') continue;
    const paired = (xs: number[], bs: number[]) => median(xs.map((x, i) => x / (bs[i] as number)));
    console.log(`  ${variant} / 021 per write, median of the rounds' ratios: insert ${fmt(paired(r.insert, base.insert), 2)}, update ${fmt(paired(r.update, base.update), 2)}`);
  }
} finally {
  await server.stop();
}
