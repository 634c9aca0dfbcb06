/**
 * Issue #15 (review): a directory move's page of its key's rows (move-port.ts copyBatch,
 * `owner_id = <key> and slot = <key's slot> and id > <last id> order by id limit n`, and the
 * clean-up's batches, unitDeleteBatchSql) has an index that gives the key's rows in id order
 * (shard migrations 028 and 029, (owner_id, slot, id) on documents and document_keys). Before,
 * the planner had `(slot, id)`, which reads the key's whole slot in id order and filters the
 * other keys' rows out, or the owner indexes, which read every remaining row of the key and sort
 * them, for each page: bench/directory-unit-plans.ts prints both plans, their buffers and times.
 *
 * Asserted: such an index exists and serves the page, i.e. with sorts and bitmap scans priced
 * out the plan is an index scan on the key, the slot and the id, filtering nothing. Which plan
 * the planner picks unforced depends on the shape of the data (for a small remainder of the key
 * a bitmap scan and a sort is cheap, and chosen): not asserted, as it is not stable.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { unitDeleteBatchSql, DELETE_BATCH_SETTINGS } from '../../../functions/adapters/postgres/move-port.js';
import { migrateDatabase, startTestPostgres, type TestPostgres, withAdmin } from '../../support/postgres.js';

const SLOT = 321;
const KEY = randomUUID();
let server: TestPostgres;
let db: pg.Client;
beforeAll(async () => {
  server = await startTestPostgres();
  await withAdmin(server.url, (c) => c.query('create database shard'));
  await migrateDatabase(server.urlFor('shard'), 'shard');
  db = new pg.Client({ connectionString: server.urlFor('shard') });
  await db.connect();
  // 400 other users of the slot with 20 rows each, the key with 300, in random heap order (a
  // long-lived key's rows are written among the others'), past the triggers.
  await db.query('set session_replication_role = replica');
  await db.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'key@example.com', 'the key')`, [KEY, SLOT]);
  await db.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), $1, 'u' || g || '@example.com', 'other' from generate_series(1, 400) g`, [SLOT]);
  for (const [table, columns, values] of [
    ['documents', 'id, owner_id, slot, title', `'doc'`],
    ['document_keys', 'id, owner_id, slot, document_id, request_digest', `gen_random_uuid(), decode(repeat('ab', 32), 'hex')`],
  ] as const) {
    await db.query(
      `insert into ${table} (${columns})
       select gen_random_uuid(), r.owner, r.slot, ${values}
         from (select u.id as owner, u.slot from users u cross join generate_series(1, 20) g where u.id <> $1
               union all select $1::uuid, $2::integer from generate_series(1, 300)) r
        order by random()`,
      [KEY, SLOT],
    );
  }
  await db.query('reset session_replication_role');
  await db.query('vacuum analyze documents, document_keys');
}, 120_000);
afterAll(async () => {
  await db?.end();
  await server?.stop();
});

/** The plan's nodes and conditions, without costs, sorts and bitmap and sequential scans priced out. */
async function plan(sql: string, params: unknown[] = [], settings?: string): Promise<string> {
  await db.query('begin');
  try {
    await db.query('set local enable_sort = off; set local enable_bitmapscan = off; set local enable_seqscan = off');
    if (settings) await db.query(settings);
    const { rows } = await db.query<{ 'QUERY PLAN': string }>(`explain (costs off) ${sql}`, params);
    return rows.map((r) => r['QUERY PLAN']).join('\n');
  } finally {
    await db.query('rollback');
  }
}

for (const table of ['documents', 'document_keys'] as const) {
  it(`reads a copy page of a directory key's ${table} by an index on the key in id order, filtering nothing`, async () => {
    const { rows } = await db.query<{ id: string }>(`select id::text as id from ${table} where owner_id = $1 order by id offset 100 limit 1`, [KEY]);
    const after = rows[0]?.id;
    const page = await plan(`select * from ${table} where owner_id = '${KEY}'::uuid and slot = ${SLOT} and id > '${after}'::uuid order by id limit 100`);
    // Before 028/029: `Limit -> Index Scan using <table>_slot_id_idx (Index Cond: slot, id; Filter:
    // owner_id)`, the slot's other keys' rows read and dropped (unforced, that or a sort of the
    // key's remaining rows read through the owner index).
    expect(page).not.toMatch(/Sort|Filter: .*owner_id/);
    expect(page).toMatch(/Index Cond: \(\(owner_id = '[0-9a-f-]+'::uuid\) AND \(slot = \d+\) AND \(id > '[0-9a-f-]+'::uuid\)\)/);
  });

  it(`picks a clean-up batch of a directory key's ${table} the same way`, async () => {
    const { rows } = await db.query<{ id: string }>(`select id::text as id from ${table} where owner_id = $1 order by id offset 100 limit 1`, [KEY]);
    const batch = await plan(unitDeleteBatchSql(table, 'x.owner_id = $3::uuid and x.slot = $4::integer', true), [100, rows[0]?.id, KEY, SLOT], DELETE_BATCH_SETTINGS);
    // The batch's pick: the limit straight over the index scan (the statement's other sort orders the deleted ids).
    expect(batch).not.toMatch(/Filter: .*owner_id/);
    expect(batch).toMatch(/Limit\n\s+-> {2}Index Scan using \w+ on \w+ x\n\s+Index Cond: \(\(owner_id = .+\) AND \(slot = .+\) AND \(id > .+\)\)/);
  });
}
