/**
 * The plans of a directory move's queries of its key's rows (move-port.ts unitFilter and
 * unitFilterLiteral for kind `directory`: `owner_id = <key> and slot = <key's slot>`) on a shard
 * where the key's slot holds many other keys: the target's count, a copy page (`order by id limit
 * copyBatchRows` after the previous page's last id) and a clean-up batch (unitDeleteBatchSql, with
 * `enable_seqscan = off`), on `documents` and `document_keys`. Two index sets, each inside a
 * transaction rolled back: the shard's indexes before shard migration 028 (`documents (owner_id)`,
 * `document_keys (owner_id, created_at)`, the `(slot, id)` indexes) and with 028's
 * `(owner_id, slot, id)` indexes. Printed per query: the plan's nodes, the buffers it touched and
 * its execution time (EXPLAIN ANALYZE, BUFFERS), for the key's first and a later page. Rows are
 * written in random heap order (a long-lived key's are spread among the others').
 *
 * Measured on 2 shared cores (all cached), `--others 8000 --key-docs 20000 --page 2000` (a slot of
 * 220,000 rows per table, the key 20,000 of them): before 028, the first documents page read the
 * slot's (slot, id) range, owner filtered, 22,293 buffers in 111 ms, a later one the key's
 * remaining rows through documents (owner_id) and sorted them, 4,720 buffers in 48 ms
 * (document_keys: 21,695 in 76 ms, 6,193 in 38 ms); with (owner_id, slot, id) each page 2,000-2,024
 * buffers in 3-5 ms on the new index. `--others 4000 --key-docs 60000 --page 5000`: 13,269-13,488
 * buffers, 12-17 ms against 5,047-5,053, 4 ms. The planner picks a bitmap scan and a sort where the
 * key's remainder is small or its rows sit together, with the new index too (cheap either way).
 *
 * Run: `npm run bench:directory-unit-plans --` or `npx tsx bench/directory-unit-plans.ts` (options: `--others N` other keys in the slot,
 * default 2000, each with `--other-docs N` documents, default 25; `--key-docs N`, the key's
 * documents and key records, default 40000; `--page N`, copyBatchRows, default 20000).
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import { unitDeleteBatchSql, DELETE_BATCH_SETTINGS } from '../functions/adapters/postgres/move-port.js';
import { explainPlan, forEachIndexSet, formatPlan } from './support/explain.js';
import { startMigratedDatabase } from './support/migrated-database.js';

const { values } = parseArgs({ options: { others: { type: 'string' }, 'other-docs': { type: 'string' }, 'key-docs': { type: 'string' }, page: { type: 'string' } } });
const count = (name: string, fallback: number) => z.coerce.number({ message: `--${name} must be a number` }).int(`--${name} must be a whole number`).min(1, `--${name} must be at least 1`).default(fallback);
const options = z
  .object({ others: count('others', 2000), 'other-docs': count('other-docs', 25), 'key-docs': count('key-docs', 40_000), page: count('page', 20_000) })
  .parse(values);

const SLOT = 1234;
const KEY = randomUUID();

const { server, url } = await startMigratedDatabase('shard', 'shard');
try {
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  // Seeded past the triggers (fences, change capture): no move runs here.
  await db.query('set session_replication_role = replica');
  await db.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'key@example.com', 'the key')`, [KEY, SLOT]);
  await db.query(
    `insert into users (id, slot, email, display_name) select gen_random_uuid(), $1, 'u' || g || '@example.com', 'other' from generate_series(1, $2) g`,
    [SLOT, options.others],
  );
  // Other slots' users, as many again, so that the slot is not the whole table.
  await db.query(
    `insert into users (id, slot, email, display_name) select gen_random_uuid(), g % 4096, 'v' || g || '@example.com', 'elsewhere' from generate_series(1, $1) g where g % 4096 <> $2`,
    [options.others, SLOT],
  );
  for (const table of ['documents', 'document_keys']) {
    const columns = table === 'documents' ? `id, owner_id, slot, title` : `id, owner_id, slot, document_id, request_digest`;
    const value = table === 'documents' ? `'doc'` : `gen_random_uuid(), decode(repeat('ab', 32), 'hex')`;
    // In random heap order: the key's rows written among the others' over time, as a long-lived
    // key's are (written last, together, its rows would sit in few pages and read cheaply).
    await db.query(
      `insert into ${table} (${columns})
       select gen_random_uuid(), r.owner, r.slot, ${value}
         from (select u.id as owner, u.slot from users u cross join generate_series(1, $1) g where u.id <> $2
               union all select $2::uuid, $3::integer from generate_series(1, $4)) r
        order by random()`,
      [options['other-docs'], KEY, SLOT, options['key-docs']],
    );
  }
  await db.query('reset session_replication_role');
  await db.query('vacuum analyze');
  const sizes = await db.query<{ t: string; n: number; slot: number }>(
    `select 'documents' as t, count(*)::int as n, count(*) filter (where slot = $1)::int as slot from documents
     union all select 'document_keys', count(*)::int, count(*) filter (where slot = $1)::int from document_keys`,
    [SLOT],
  );
  console.log(`shard: ${sizes.rows.map((r) => `${r.t} ${r.n} rows, ${r.slot} in slot ${SLOT}`).join('; ')}; the key ${options['key-docs']} rows per table; page ${options.page}`);

  const unit = `owner_id = '${KEY}'::uuid and slot = ${SLOT}`;
  const afterId = async (table: string) =>
    (await db.query<{ id: string }>(`select id::text as id from ${table} where ${unit} order by id offset $1 limit 1`, [Math.floor(options['key-docs'] / 2)])).rows[0]?.id ?? null;

  const variants: Record<string, string[]> = {
    'before 028 (documents (owner_id), document_keys (owner_id, created_at), (slot, id))': [
      'drop index if exists documents_owner_slot_id_idx',
      'drop index if exists document_keys_owner_slot_id_idx',
      'create index if not exists documents_owner_idx on documents (owner_id)',
    ],
    "with 028 (documents and document_keys (owner_id, slot, id), documents (owner_id) dropped)": [
      'create index if not exists documents_owner_slot_id_idx on documents (owner_id, slot, id)',
      'create index if not exists document_keys_owner_slot_id_idx on document_keys (owner_id, slot, id)',
      'drop index if exists documents_owner_idx',
    ],
  };
  await forEachIndexSet(db, variants, 'analyze documents, document_keys', async () => {
    for (const table of ['documents', 'document_keys']) {
      const after = await afterId(table);
      const queries: Record<string, { sql: string; params?: unknown[]; settings?: string }> = {
        count: { sql: `select count(*)::int as n from ${table} where owner_id = $1::uuid and slot = $2::integer`, params: [KEY, SLOT] },
        'copy page, first': { sql: `select * from ${table} where ${unit} order by id limit ${options.page}` },
        'copy page, after half': { sql: `select * from ${table} where ${unit} and id > '${after}'::uuid order by id limit ${options.page}` },
        'clean-up batch, after half': {
          sql: unitDeleteBatchSql(table as 'documents', 'x.owner_id = $3::uuid and x.slot = $4::integer', true),
          params: [options.page, after, KEY, SLOT],
          settings: `${DELETE_BATCH_SETTINGS}; set local session_replication_role = replica`,
        },
      };
      for (const [name, q] of Object.entries(queries)) {
        console.log(formatPlan(`${table}, ${name}`, await explainPlan(db, q.sql, q.params ?? [], q.settings)));
      }
    }
  });
  await db.end();
} finally {
  await server.stop();
}
