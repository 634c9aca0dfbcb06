/**
 * What shard migrations 028-030 cost a slot move's copy on its target. 028 replaced `documents
 * (owner_id)` with `documents (owner_id, slot, id)` (030 drops the old one) so that a directory
 * key's copy pages read the key's rows only (`bench:directory-unit-plans`); a wider index costs
 * every insert more, and the target's inserts are what a slot copy spends most of its time on
 * (`bench:moves` samples the target's copy backend on CPU most of the time).
 *
 * One server, three databases migrated by the shard migrations: `source` holding a slot of
 * `--users` users with `--docs` documents each, and two targets, `before` (028's index dropped and
 * `documents (owner_id)` put back: the index set of shard migration 027) and `after` (as
 * migrated), each already holding as many rows of other slots. Each run copies the slot's
 * documents from `source` to one target the way the mover does (move-port.ts `copyBatch`: keyset
 * pages of `--page` rows in id order, `COPY (...) TO STDOUT` piped into `COPY ... FROM STDIN`,
 * binary, in a transaction with `session_replication_role = replica`, as the superuser mover's
 * is), after deleting the slot's rows there, a VACUUM and a CHECKPOINT. The targets alternate,
 * the order swapped every round, `--rounds` rounds; printed: each target's rows/s per run, the
 * median, and the ratio of the paired runs. No writers and no source reads in between: this is
 * the target's cost alone, not a move's copy rate (`bench:moves` is that).
 *
 * Measured on 2 shared cores (2026-12-06, with a bench:moves running, `--rounds 6`): 028's index set
 * copied at 0.73-0.88 of 027's rate in every pair, median 0.85 (the README's benchmarks table).
 *
 * Run: `npm run bench:copy-index-cost` (options: `--users N`, default 1000; `--docs N` documents
 * per user, default 99; `--page N`, copyBatchRows, default 20000; `--rounds N`, default 6).
 */
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { z } from 'zod';
import { migrateDatabase, startTestPostgres } from '../test/support/postgres.js';

const { values } = parseArgs({ options: { users: { type: 'string' }, docs: { type: 'string' }, page: { type: 'string' }, rounds: { type: 'string' } } });
const count = (name: string, fallback: number) => z.coerce.number({ message: `--${name} must be a number` }).int(`--${name} must be a whole number`).min(1, `--${name} must be at least 1`).default(fallback);
const options = z.object({ users: count('users', 1000), docs: count('docs', 99), page: count('page', 20_000), rounds: count('rounds', 6) }).parse(values);

const SLOT = 3;
const OTHER_SLOT = 7;
const TARGETS = ['before', 'after'] as const;
type Target = (typeof TARGETS)[number];

const server = await startTestPostgres();
const pools = new Map<string, pg.Pool>();
try {
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  for (const db of ['source', ...TARGETS]) {
    await admin.query(`create database ${db}`);
    await migrateDatabase(server.urlFor(db), 'shard');
    pools.set(db, new pg.Pool({ connectionString: server.urlFor(db), max: 2 }));
  }
  await admin.end();
  const pool = (db: string): pg.Pool => pools.get(db) as pg.Pool;
  // 027's index set on `before`: what a target held before 028.
  await pool('before').query('drop index documents_owner_slot_id_idx');
  await pool('before').query('create index documents_owner_idx on documents (owner_id)');

  const seed = async (db: string, slot: number): Promise<void> => {
    const client = await pool(db).connect();
    try {
      await client.query('set session_replication_role = replica');
      await client.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), $1::integer, 'u' || g || '-' || $1::integer || '@example.com', 'user' from generate_series(1, $2) g`, [slot, options.users]);
      await client.query(`insert into documents (id, owner_id, slot, title, content) select gen_random_uuid(), u.id, u.slot, 'doc ' || g, jsonb_build_object('n', g) from users u cross join generate_series(1, $2) g where u.slot = $1`, [slot, options.docs]);
    } finally {
      client.release();
    }
  };
  await seed('source', SLOT);
  // The targets' users of the slot (documents need them; the copy of users is not measured) and
  // rows of another slot, so that the indexes are not empty.
  for (const db of TARGETS) {
    await seed(db, OTHER_SLOT);
    const client = await pool(db).connect();
    try {
      await client.query('set session_replication_role = replica');
      const { rows } = await pool('source').query<{ id: string; email: string }>('select id::text as id, email from users where slot = $1', [SLOT]);
      await client.query(`insert into users (id, slot, email, display_name) select unnest($1::uuid[]), $2, unnest($3::text[]), 'user'`, [rows.map((r) => r.id), SLOT, rows.map((r) => r.email)]);
    } finally {
      client.release();
    }
  }
  for (const db of ['source', ...TARGETS]) await pool(db).query('vacuum analyze');
  const cols = (await pool('source').query<{ c: string }>(`select string_agg(quote_ident(attname), ', ' order by attnum) as c from pg_attribute where attrelid = 'documents'::regclass and attnum > 0 and not attisdropped`)).rows[0]?.c as string;
  const total = options.users * options.docs;

  const copyOnce = async (db: Target): Promise<number> => {
    await pool(db).query('delete from documents where slot = $1', [SLOT]);
    await pool(db).query('vacuum documents');
    await pool(db).query('checkpoint');
    const started = performance.now();
    let after = '00000000-0000-0000-0000-000000000000';
    for (;;) {
      const from = await pool('source').connect();
      const to = await pool(db).connect();
      try {
        await from.query('begin isolation level repeatable read read only');
        await to.query('begin');
        await to.query('set local session_replication_role = replica');
        const sink = to.query(copyFrom(`copy documents (${cols}) from stdin with (format binary)`));
        await pipeline(from.query(copyTo(`copy (select ${cols} from documents where slot = ${SLOT} and id > '${after}' order by id limit ${options.page}) to stdout with (format binary)`)), sink);
        if (sink.rowCount === 0) {
          await to.query('commit');
          break;
        }
        const { rows } = await to.query<{ last: string }>(`select id::text as last from documents where slot = $1 and id > $2 order by id desc limit 1`, [SLOT, after]);
        await to.query('commit');
        after = rows[0]?.last as string;
      } finally {
        await from.query('commit');
        from.release();
        to.release();
      }
    }
    const seconds = (performance.now() - started) / 1000;
    const { rows } = await pool(db).query<{ n: string }>('select count(*)::text as n from documents where slot = $1', [SLOT]);
    if (Number(rows[0]?.n) !== total) throw new Error(`${db}: copied ${rows[0]?.n} documents, expected ${total}`);
    return total / seconds;
  };

  const rates: Record<Target, number[]> = { before: [], after: [] };
  for (let round = 0; round < options.rounds; round++) {
    for (const db of round % 2 === 0 ? TARGETS : [...TARGETS].reverse()) rates[db].push(await copyOnce(db));
  }
  const median = (xs: readonly number[]): number => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 === 1 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
  };
  const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');
  console.log(`copy of ${fmt(total)} documents in pages of ${fmt(options.page)} rows, ${options.rounds} rounds alternating, load average ${(await import('node:os')).loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  for (const db of TARGETS) {
    const label = db === 'before' ? 'before 028 (owner_id)' : 'with 028 (owner_id, slot, id)';
    console.log(`  ${label.padEnd(32)} ${rates[db].map(fmt).join(', ')} rows/s; median ${fmt(median(rates[db]))}`);
  }
  const ratios = rates.after.map((r, i) => r / (rates.before[i] as number));
  console.log(`  028's index set / 027's, paired  ${ratios.map((r) => r.toFixed(2)).join(', ')}; median ${median(ratios).toFixed(2)} (below 1: the copy's target is slower with 028)`);
} finally {
  for (const p of pools.values()) await p.end();
  await server.stop();
}
