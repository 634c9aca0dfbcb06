/**
 * The plans of the queries that read documents by owner, before and after shard migrations 028 and
 * 030 (`documents (owner_id)` replaced by `documents (owner_id, slot, id)`): a user's listing
 * (documents-api.ts, GET /users/{id}/documents, `order by created_at desc, id limit 50`), the
 * mover's checks of a key (mover.ts checkUnitSize and checkKeySlot), the foreign keys' cascades
 * from users (migration 001's by id, 015's by (id, slot), as the RI triggers run them), the
 * clean-up's users that own nothing (move-port.ts deleteVerified) and the census's rows of fenced
 * directory units (read-transaction.ts rowsOfFencedUnitsSql). For a typical user and a heavy one
 * (rows in random heap order), each inside a transaction rolled back: EXPLAIN ANALYZE, BUFFERS.
 *
 * Run: `npm run bench:owner-queries-plans --` or `npx tsx bench/owner-queries-plans.ts` (options: `--users N`, default 10000, each with
 * `--docs N` documents, default 20, over `--slots N` slots, default 256; `--heavy N`, the heavy
 * user's documents, default 20000).
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import { explainPlan, forEachIndexSet, formatPlan } from './support/explain.js';
import { startMigratedDatabase } from './support/migrated-database.js';

const { values } = parseArgs({ options: { users: { type: 'string' }, docs: { type: 'string' }, slots: { type: 'string' }, heavy: { type: 'string' } } });
const count = (name: string, fallback: number) => z.coerce.number({ message: `--${name} must be a number` }).int(`--${name} must be a whole number`).min(1, `--${name} must be at least 1`).default(fallback);
const options = z.object({ users: count('users', 10_000), docs: count('docs', 20), slots: count('slots', 256), heavy: count('heavy', 20_000) }).parse(values);

const HEAVY = randomUUID();
const HEAVY_SLOT = 7;

const { server, url } = await startMigratedDatabase('shard', 'shard');
try {
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  await db.query('set session_replication_role = replica');
  await db.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'heavy@example.com', 'heavy')`, [HEAVY, HEAVY_SLOT]);
  await db.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), g % $2, 'u' || g || '@example.com', 'user' from generate_series(1, $1) g`, [options.users, options.slots]);
  await db.query(
    `insert into documents (id, owner_id, slot, title, created_at)
     select gen_random_uuid(), r.owner, r.slot, 'doc', now() - random() * interval '300 days'
       from (select u.id as owner, u.slot from users u cross join generate_series(1, $1) g where u.id <> $2
             union all select $2::uuid, $3::integer from generate_series(1, $4)) r
      order by random()`,
    [options.docs, HEAVY, HEAVY_SLOT, options.heavy],
  );
  await db.query('reset session_replication_role');
  await db.query('vacuum analyze');
  const typical = (await db.query<{ id: string; slot: number }>(`select id::text, slot from users where id <> $1 order by id limit 1`, [HEAVY])).rows[0] as { id: string; slot: number };
  const n = (await db.query<{ n: number }>('select count(*)::int as n from documents')).rows[0]?.n;
  console.log(`shard: ${options.users + 1} users over ${options.slots} slots, ${n} documents; typical user ${options.docs}, heavy user ${options.heavy}, random heap order`);

  const variants: Record<string, string[]> = {
    'before 028 (documents (owner_id))': ['drop index if exists documents_owner_slot_id_idx', 'create index if not exists documents_owner_idx on documents (owner_id)'],
    'with 028 and 030 (documents (owner_id, slot, id), (owner_id) dropped)': [
      'create index if not exists documents_owner_slot_id_idx on documents (owner_id, slot, id)',
      'drop index if exists documents_owner_idx',
    ],
  };
  await forEachIndexSet(db, variants, 'analyze documents', async () => {
    const sizes = await db.query<{ name: string; mb: string }>(
      `select indexrelid::regclass::text as name, round(pg_relation_size(indexrelid) / 1048576.0, 1)::text as mb from pg_index where indrelid = 'documents'::regclass order by 1`,
    );
    console.log(`indexes: ${sizes.rows.map((r) => `${r.name} ${r.mb} MB`).join(', ')}`);
    for (const [who, owner, slot] of [
      ['typical', typical.id, typical.slot],
      ['heavy', HEAVY, HEAVY_SLOT],
    ] as const) {
      const queries: Record<string, { sql: string; params: unknown[]; replica?: boolean }> = {
        'GET /users/{id}/documents': { sql: 'select id, owner_id, title, content, created_at, updated_at from documents where owner_id = $1 order by created_at desc, id limit 50', params: [owner] },
        'checkUnitSize (count by owner)': { sql: 'select count(*) from documents where owner_id = $1::uuid', params: [owner] },
        checkKeySlot: { sql: 'select slot from documents where owner_id = $1::uuid and slot <> $2::integer', params: [owner, slot] },
        'FK 001 restrict check (key share)': { sql: 'select 1 from only documents x where $1::uuid operator(pg_catalog.=) owner_id for key share of x', params: [owner] },
        'FK 001 cascade delete': { sql: 'delete from only documents where $1::uuid operator(pg_catalog.=) owner_id', params: [owner], replica: true },
        'FK 015 cascade delete': { sql: 'delete from only documents where $1::uuid operator(pg_catalog.=) owner_id and $2::integer operator(pg_catalog.=) slot', params: [owner, slot], replica: true },
        "deleteVerified users owning nothing (the owner's slot)": {
          sql: 'select count(*) from users x where x.slot = $1::integer and not exists (select 1 from documents c where c.owner_id = x.id)',
          params: [slot],
        },
        'census rows of a fenced directory unit': {
          sql: 'select count(*) from documents r where r.slot = any (array[]::integer[]) or r.owner_id = any (array[$1::uuid])',
          params: [owner],
        },
      };
      for (const [name, q] of Object.entries(queries)) {
        console.log(formatPlan(`${who}, ${name}`, await explainPlan(db, q.sql, q.params, q.replica ? 'set local session_replication_role = replica' : undefined)));
      }
    }
  });
  await db.end();
} finally {
  await server.stop();
}
