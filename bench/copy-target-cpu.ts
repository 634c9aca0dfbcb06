/**
 * Where a slot move's copy spends its target's CPU (issue #15: `bench:moves` copied at 48-60k
 * rows/s, the goal 50k, with the target's copy backend on CPU in 50-70% of its samples). Wall
 * time on this shared machine follows the load (the same copy ran at 25k-110k rows/s within an
 * hour), so this prints the target backend's own CPU time per copied row (`/proc/<pid>/stat`,
 * user + system: the server runs on this machine) beside the rate, for the target as migrated and
 * for targets with one thing taken away, to tell what each costs:
 *
 * - `mover`: as migrated, in a transaction with `session_replication_role = replica`, as the
 *   superuser mover's copy pages are (move-port.ts `copyBatch`, `bulkBegin`);
 * - `no-owner-index`: without `documents (owner_id, slot, id)` (shard migration 028);
 * - `no-slot-index`: without `documents (slot, id)` (shard migration 002);
 * - `no-fence-trigger`: without the BEFORE ROW trigger `documents_write_fence`, which (enabled or
 *   not) makes COPY insert row by row (PostgreSQL's CopyFrom takes its multi-insert path only
 *   when a table has no BEFORE or INSTEAD OF row trigger);
 * - `after-fence`: the fence trigger recreated AFTER ROW (same function): COPY keeps its
 *   multi-insert path. Unsound for writers (docs/sharding-spec.md section 9, "The fence is a
 *   BEFORE ROW trigger"; test/integration/sharding/fence-before-the-write.test.ts): measured only;
 * - `check-fence`: the insert's fence check as a CHECK constraint instead (a constraint is checked
 *   per row before the insertion and its conflict check in every form, and keeps COPY's
 *   multi-insert path), passed by the mover as the trigger passes it (`ca_dms.move_writer` and
 *   `pg_has_role`), the BEFORE trigger kept for UPDATE and DELETE; `check-fence-guc`: the same
 *   passed on the setting alone (any login may set it: unsound, the floor of what such a
 *   constraint costs the copy);
 * - `triggers`: as migrated, without `session_replication_role` (a mover login that may not skip
 *   triggers: `bench:moves --mover-login unprivileged-triggers`), the slot `incoming` on the
 *   target, so the fence, capture and foreign-key triggers fire for each row;
 * - `triggers-fk-only`: as `triggers` without the fence and capture triggers (PL/pgSQL): what is
 *   left is the foreign keys' checks, which no trigger WHEN clause could skip.
 *
 * One server; a database `source` holding a slot of `--users` users with `--docs` documents each,
 * and one target database per variant, each holding the slot's users and as many rows of another
 * slot (the indexes are not empty). Each run copies the slot's documents the way the mover does
 * (keyset pages of `--page` rows in id order, `COPY (...) TO STDOUT` piped into binary `COPY ...
 * FROM STDIN`, the lane's delete before each page and the read of its last id after), after
 * deleting the slot's rows there and a VACUUM. The variants take turns, `--rounds` rounds.
 *
 * Measured on 2 shared cores (2026-12-07, other benches running), median CPU us per copied row:
 * 3 rounds at load 3.5-4.0: mover 9.8, no-owner-index 5.7, no-slot-index 8.0, no-fence-trigger 7.6
 * (WAL 479 against 527 bytes/row), triggers 25.6; 5 rounds at load 2.5-2.8: mover 8.0,
 * no-owner-index 4.6, no-fence-trigger 7.4; 3 rounds at load 3.8-4.0: mover 7.1, triggers 24.2,
 * triggers-fk-only 14.9. The owner index is about 40% of the target's copy.
 * The fence trigger's own share (2026-12-07, 198,000 documents, `--users 2000`), median CPU us per
 * copied row, and the median of the rounds' paired differences against `mover`: 7 rounds at load
 * 0.8-3.0: mover 6.9, after-fence 6.4 (-0.5), check-fence 6.9 (0.0), no-fence-trigger 6.3 (WAL
 * 525 against 479 bytes/row); 7 rounds at load 4.9-6.2: mover 7.3, after-fence 6.8 (-0.3),
 * check-fence 7.3, check-fence-guc 6.7, no-fence-trigger 6.4; 9 rounds at load 3.1-4.1: mover 7.2,
 * after-fence 6.8 (-0.5), check-fence 7.4 (+0.2), no-fence-trigger 6.7. The BEFORE trigger costs
 * the copy 4-7% of the target's CPU; a CHECK constraint costs the copy what the multi-insert path
 * saves.
 *
 * Run: `npm run bench:copy-target-cpu` (options: `--users N`, default 1000; `--docs N`, default 99;
 * `--page N`, default 20000; `--rounds N`, default 3; `--variants a,b`, default all).
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { z } from 'zod';
import { migrateDatabase, startTestPostgres } from '../test/support/postgres.js';

const VARIANTS = ['mover', 'no-owner-index', 'no-slot-index', 'no-fence-trigger', 'after-fence', 'check-fence', 'check-fence-guc', 'triggers', 'triggers-fk-only'] as const;
type Variant = (typeof VARIANTS)[number];

const { values } = parseArgs({ options: { users: { type: 'string' }, docs: { type: 'string' }, page: { type: 'string' }, rounds: { type: 'string' }, variants: { type: 'string' } } });
const count = (name: string, fallback: number) => z.coerce.number({ message: `--${name} must be a number` }).int(`--${name} must be a whole number`).min(1, `--${name} must be at least 1`).default(fallback);
const parsed = z
  .object({
    users: count('users', 1000),
    docs: count('docs', 99),
    page: count('page', 20_000),
    rounds: count('rounds', 3),
    variants: z
      .string()
      .default(VARIANTS.join(','))
      .transform((s) => s.split(',').map((v) => v.trim()))
      .pipe(z.array(z.enum(VARIANTS, { message: `--variants: each must be one of ${VARIANTS.join(', ')}` })).min(1, '--variants must name at least one')),
  })
  .safeParse(values);
if (!parsed.success) {
  console.error(`bench:copy-target-cpu: ${parsed.error.issues.map((i) => i.message).join('; ')}`);
  process.exit(2);
}
const options = parsed.data;
const variants: readonly Variant[] = [...new Set(options.variants)];

const SLOT = 3;
const OTHER_SLOT = 7;

/** CPU time (user + system) of a local process so far, in ms. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  // utime and stime, in clock ticks (USER_HZ, 100 on Linux).
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const server = await startTestPostgres();
const pools = new Map<string, pg.Pool>();
try {
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  const db = (v: Variant): string => `target_${v.replaceAll('-', '_')}`;
  for (const name of ['source', ...variants.map(db)]) {
    await admin.query(`create database ${name}`);
    await migrateDatabase(server.urlFor(name), 'shard');
    pools.set(name, new pg.Pool({ connectionString: server.urlFor(name), max: 2 }));
  }
  await admin.end();
  const pool = (name: string): pg.Pool => pools.get(name) as pg.Pool;

  const seed = async (name: string, slot: number): Promise<void> => {
    // SET LOCAL: a session setting would stay on the pooled connection, and a later run on it
    // would skip the triggers it is meant to fire.
    const client = await pool(name).connect();
    try {
      await client.query('begin; set local session_replication_role = replica');
      await client.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), $1::integer, 'u' || g || '-' || $1::integer || '@example.com', 'user' from generate_series(1, $2) g`, [slot, options.users]);
      await client.query(
        `insert into documents (id, owner_id, slot, title, content) select gen_random_uuid(), u.id, u.slot, 'seeded ' || g, jsonb_build_object('rev', 0, 'body', repeat('x', 64)) from users u cross join generate_series(1, $2) g where u.slot = $1`,
        [slot, options.docs],
      );
      await client.query('commit');
    } finally {
      client.release();
    }
  };
  await seed('source', SLOT);
  const { rows: slotUsers } = await pool('source').query<{ id: string; email: string }>('select id::text as id, email from users where slot = $1', [SLOT]);
  for (const v of variants) {
    await seed(db(v), OTHER_SLOT);
    const client = await pool(db(v)).connect();
    try {
      await client.query('begin; set local session_replication_role = replica');
      await client.query(`insert into users (id, slot, email, display_name) select unnest($1::uuid[]), $2, unnest($3::text[]), 'user'`, [slotUsers.map((r) => r.id), SLOT, slotUsers.map((r) => r.email)]);
      await client.query('commit');
    } finally {
      client.release();
    }
    if (v === 'no-owner-index') await pool(db(v)).query('drop index documents_owner_slot_id_idx');
    if (v === 'no-slot-index') await pool(db(v)).query('drop index documents_slot_id_idx');
    if (v === 'no-fence-trigger') await pool(db(v)).query('drop trigger documents_write_fence on documents');
    if (v === 'after-fence') await pool(db(v)).query(`drop trigger documents_write_fence on documents; create trigger documents_write_fence after insert or update or delete on documents for each row execute function enforce_write_fence('owner_id')`);
    if (v === 'check-fence' || v === 'check-fence-guc')
      // The insert's fence check as a CHECK constraint (evaluated before the insertion and its
      // conflict check in every form, and per row in COPY's multi-insert path too), the BEFORE
      // row trigger kept for UPDATE and DELETE only. The mover's copy passes on the left of the OR;
      // the right side (any function) is never called here, so a stand-in is enough to measure.
      await pool(db(v)).query(`drop trigger documents_write_fence on documents;
        create trigger documents_write_fence before update or delete on documents for each row execute function enforce_write_fence('owner_id');
        create function fence_insert_ok(uuid, uuid, integer) returns boolean language plpgsql as $$ begin return true; end $$;
        alter table documents add constraint documents_insert_fence check (${
          // check-fence-guc: the setting alone (which any login may set: unsound, the floor of what a CHECK costs).
          v === 'check-fence' ? "(current_setting('ca_dms.move_writer', true) = 'on' and pg_has_role(session_user, 'ca_dms_mover', 'member'))" : "current_setting('ca_dms.move_writer', true) = 'on'"
        } or fence_insert_ok(id, owner_id, slot)) not valid`);
    if (v === 'triggers' || v === 'triggers-fk-only') await pool(db(v)).query(`insert into write_fences (kind, unit_id, state, job_id) values ('slot', $1, 'incoming', 1)`, [String(SLOT)]);
    if (v === 'triggers-fk-only') await pool(db(v)).query('drop trigger documents_write_fence on documents; drop trigger documents_move_capture on documents');
  }
  for (const name of pools.keys()) await pool(name).query('vacuum analyze');
  const cols = (await pool('source').query<{ c: string }>(`select string_agg(quote_ident(attname), ', ' order by attnum) as c from pg_attribute where attrelid = 'documents'::regclass and attnum > 0 and not attisdropped`)).rows[0]?.c as string;
  const total = options.users * options.docs;

  interface Run {
    readonly rowsPerSecond: number;
    readonly cpuUsPerRow: number;
    readonly walBytesPerRow: number;
  }
  const copyOnce = async (v: Variant): Promise<Run> => {
    const target = pool(db(v));
    const clear = await target.connect();
    try {
      await clear.query('begin; set local session_replication_role = replica');
      await clear.query('delete from documents where slot = $1', [SLOT]);
      await clear.query('commit');
    } finally {
      clear.release();
    }
    await target.query('vacuum documents');
    const to = await target.connect();
    try {
      const { pid, role } = (await to.query<{ pid: number; role: string }>("select pg_backend_pid() as pid, current_setting('session_replication_role') as role")).rows[0] as { pid: number; role: string };
      if (role !== 'origin') throw new Error(`${v}: the target session's session_replication_role is ${role}, not origin`);
      const lsn = async (): Promise<string> => (await to.query<{ l: string }>('select pg_current_wal_insert_lsn()::text as l')).rows[0]?.l as string;
      const walBefore = await lsn();
      const cpuBefore = cpuMs(pid);
      const started = performance.now();
      let after: string | null = null;
      for (;;) {
        const from = await pool('source').connect();
        try {
          await from.query('begin isolation level repeatable read read only; set local enable_sort = off');
          const where = `slot = ${SLOT}${after === null ? '' : ` and id > '${after}'::uuid`}`;
          await to.query(v.startsWith('triggers') ? "begin; set local ca_dms.move_writer = 'on'" : "begin; set local ca_dms.move_writer = 'on'; set local session_replication_role = replica");
          await to.query(`delete from documents where ${where}`);
          const sink = to.query(copyFrom(`copy documents (${cols}) from stdin with (format binary)`));
          await pipeline(from.query(copyTo(`copy (select ${cols} from (select * from documents where ${where} order by id limit ${options.page}) p) to stdout with (format binary)`)), sink);
          const { rows } = await to.query<{ last: string }>(`select id::text as last from documents where ${where} order by id desc limit 1`);
          await to.query('commit');
          if (sink.rowCount < options.page) break;
          after = rows[0]?.last as string;
        } finally {
          await from.query('commit');
          from.release();
        }
      }
      const seconds = (performance.now() - started) / 1000;
      const cpu = cpuMs(pid) - cpuBefore;
      const wal = Number((await to.query<{ d: string }>('select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1)::text as d', [walBefore])).rows[0]?.d);
      const { rows } = await to.query<{ n: string }>('select count(*)::text as n from documents where slot = $1', [SLOT]);
      if (Number(rows[0]?.n) !== total) throw new Error(`${v}: copied ${rows[0]?.n} documents, expected ${total}`);
      return { rowsPerSecond: total / seconds, cpuUsPerRow: (cpu * 1000) / total, walBytesPerRow: wal / total };
    } finally {
      to.release();
    }
  };

  const runs = new Map<Variant, Run[]>(variants.map((v) => [v, []]));
  const loads: string[] = [];
  for (let round = 0; round < options.rounds; round++) {
    loads.push(os.loadavg()[0]?.toFixed(1) ?? '?');
    for (const v of round % 2 === 0 ? variants : [...variants].reverse()) runs.get(v)?.push(await copyOnce(v));
  }
  const median = (xs: readonly number[]): number => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 === 1 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
  };
  const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');
  console.log(`copy of ${fmt(total)} documents in pages of ${fmt(options.page)} rows on ${os.cpus().length} CPU(s), ${options.rounds} round(s), 1-min load average at each round's start ${loads.join(', ')}`);
  console.log(`  ${'target'.padEnd(18)} ${'CPU us/row (median; each)'.padEnd(34)} ${'WAL B/row'.padEnd(10)} rows/s (median; each, load-dependent)`);
  for (const v of variants) {
    const r = runs.get(v) ?? [];
    const cpu = r.map((x) => x.cpuUsPerRow);
    console.log(
      `  ${v.padEnd(18)} ${`${median(cpu).toFixed(1)}; ${cpu.map((c) => c.toFixed(1)).join(', ')}`.padEnd(34)} ${fmt(median(r.map((x) => x.walBytesPerRow))).padEnd(10)} ${fmt(median(r.map((x) => x.rowsPerSecond)))}; ${r.map((x) => fmt(x.rowsPerSecond)).join(', ')}`,
    );
  }
} finally {
  for (const p of pools.values()) await p.end();
  await server.stop();
}
