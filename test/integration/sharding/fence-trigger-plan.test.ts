/**
 * Shard migration 032: the fence trigger's look-up of an inserted id (the insert-meets-copy check
 * of migration 018) reads the written table by its primary key whatever the table held when a
 * session's plan was made.
 *
 * PL/pgSQL keeps a plan per statement per session, and from a statement's sixth run PostgreSQL may
 * keep one generic plan for it. On a table emptied and then analyzed (a move's clean-up, a restore
 * into a new shard) while a fence row exists (a finished move's `moved` row stays), that generic
 * plan was a sequential scan of the table, kept for the session while the table grew: each
 * inserted row read every row inserted before it, and a bulk `INSERT ... SELECT` was quadratic
 * (99,000 rows 19.5 s, 20,000 rows 2.9 s). Its look-up of the written row's unit in
 * write_fences did the same on a write_fences analyzed with one row that then grew (finished
 * moves' `moved` rows stay): every write read all of them. The plan the trigger runs is read here
 * with auto_explain (nested statements, at NOTICE), after six inserts made the session's plan and
 * the table grew to a few thousand rows under it.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAppShard, type AppShard } from './fixtures/app-shard.js';

let shard: AppShard;
let owner: string;

const SLOT = 201;
const GROWN_TO = 3000;

beforeAll(async () => {
  // A finished move's row: the shard holds a fence row, so the trigger runs its look-ups.
  shard = await startAppShard({ login: 'plan_app', password: 'plan app pass', fences: "('slot', '999', 'moved', 'shard_x', 5)" });
  owner = randomUUID();
  const c = await shard.admin.connect();
  try {
    await c.query("begin; set local ca_dms.move_writer = 'on'");
    await c.query("insert into users (id, slot, email, display_name) values ($1, $2, 'o@x', 'o')", [owner, SLOT]);
    await c.query('commit');
  } finally {
    c.release();
  }
  // Analyzed nearly empty, and not analyzed again by autovacuum while the test grows them (an
  // ANALYZE would make the session plan the statement afresh).
  for (const table of ['users', 'documents', 'document_keys']) {
    await shard.admin.query(`alter table ${table} set (autovacuum_enabled = false)`);
    await shard.admin.query(`analyze ${table}`);
  }
}, 120_000);
afterAll(() => shard?.stop());

/** An INSERT of one row of `table` and an INSERT ... SELECT of `n` rows, both of slot {@link SLOT}. */
const inserts: Record<string, { one: string; many: string }> = {
  users: {
    one: `insert into users (id, slot, email, display_name) values (gen_random_uuid(), ${SLOT}, gen_random_uuid() || '@x', 'u')`,
    many: `insert into users (id, slot, email, display_name) select gen_random_uuid(), ${SLOT}, gen_random_uuid() || '@x', 'u' from generate_series(1, $1::int)`,
  },
  documents: {
    one: `insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, ${SLOT}, 't')`,
    many: `insert into documents (id, owner_id, slot, title) select gen_random_uuid(), $2, ${SLOT}, 't' from generate_series(1, $1::int)`,
  },
  document_keys: {
    one: `insert into document_keys (id, owner_id, slot, document_id, request_digest) values (gen_random_uuid(), $1, ${SLOT}, gen_random_uuid(), sha256('r'::bytea))`,
    many: `insert into document_keys (id, owner_id, slot, document_id, request_digest) select gen_random_uuid(), $2, ${SLOT}, gen_random_uuid(), sha256('r'::bytea) from generate_series(1, $1::int)`,
  },
};

/**
 * The plan of the trigger's look-up of the inserted id in `table`, as run by one session's next
 * insert after six inserts and the table's growth by {@link GROWN_TO} rows (written with the
 * mover's pass, which runs none of the trigger's statements).
 */
async function lookupPlanAfterGrowth(table: string): Promise<string> {
  const sql = inserts[table];
  if (sql === undefined) throw new Error(`no inserts for ${table}`);
  const args = (extra: unknown[] = []) => (table === 'users' ? extra : [...extra, owner]);
  const c = new pg.Client({ connectionString: shard.server.url });
  await c.connect();
  try {
    await c.query("load 'auto_explain'");
    for (let i = 0; i < 6; i++) await c.query(sql.one, args());
    await c.query("begin; set local ca_dms.move_writer = 'on'");
    await c.query(sql.many, args([GROWN_TO]));
    await c.query('commit');
    const notices: string[] = [];
    c.on('notice', (n) => notices.push(n.message ?? ''));
    await c.query("set auto_explain.log_min_duration = 0; set auto_explain.log_nested_statements = on; set auto_explain.log_level = 'notice'; set client_min_messages = 'notice'");
    await c.query(sql.one, args());
    const plan = notices.find((n) => new RegExp(`^Query Text: select to_jsonb\\(t\\)\\s+from \\S*\\b${table} t where t\\.id = `, 'im').test(n));
    if (plan === undefined) throw new Error(`no plan of the look-up in ${table} among the notices:\n${notices.join('\n---\n')}`);
    return plan;
  } finally {
    await c.end();
  }
}

describe('the fence trigger on a table analyzed nearly empty, then grown (shard migration 032)', () => {
  it.each(['documents', 'users', 'document_keys'])('looks an inserted id of %s up by an index on the id, not by reading the table', async (table) => {
    const plan = await lookupPlanAfterGrowth(table);

    expect(plan).not.toMatch(/Seq Scan/);
    expect(plan).toMatch(new RegExp(`Index (Only )?Scan using \\w+ on ${table} t\\b[^\\n]*\\n\\s+Index Cond: \\(id = `));
  }, 60_000);
});

describe('the fence trigger on write_fences analyzed with one row, then grown by fence rows (shard migration 032)', () => {
  it("looks the written row's unit up in write_fences by its primary key (an index or bitmap scan), not by reading write_fences", async () => {
    await shard.admin.query('alter table write_fences set (autovacuum_enabled = false)');
    await shard.admin.query('analyze write_fences');
    const c = new pg.Client({ connectionString: shard.server.url });
    await c.connect();
    try {
      await c.query("load 'auto_explain'");
      for (let i = 0; i < 6; i++) await c.query(inserts.documents?.one as string, [owner]);
      // Other units' rows, as finished moves leave them (`moved`, kept) on a shard.
      await shard.admin.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version) select 'slot', (10000 + g)::text, 'moved', 'shard_x', 5 from generate_series(1, ${GROWN_TO}) g`);
      const notices: string[] = [];
      c.on('notice', (n) => notices.push(n.message ?? ''));
      await c.query("set auto_explain.log_min_duration = 0; set auto_explain.log_nested_statements = on; set auto_explain.log_level = 'notice'; set client_min_messages = 'notice'");
      await c.query(inserts.documents?.one as string, [owner]);
      const plan = notices.find((n) => /^Query Text: select w\.kind, w\.unit_id, w\.state, w\.moved_to, w\.map_version\s+from \S*write_fences w/im.test(n));
      if (plan === undefined) throw new Error(`no plan of the fence look-up among the notices:\n${notices.join('\n---\n')}`);

      expect(plan).not.toMatch(/Seq Scan/);
      expect(plan).toMatch(/Index Scan on write_fences_pkey|Index Scan using write_fences_pkey/);
    } finally {
      await c.end();
    }
  }, 60_000);
});
