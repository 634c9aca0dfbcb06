/**
 * The database-enforced write fence, as a writer in another language sees it: plain SQL
 * as a login that is a member of `ca_dms_app` only, straight to a shard with the shard migrations.
 * Every statement form that writes rows, and every way around the triggers, against fence rows in
 * each state a move leaves them in.
 */
import { randomUUID } from 'node:crypto';
import { copyFile, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureApplicationLogin } from '../../../functions/adapters/postgres/app-role.js';
import { SHARD_MIGRATIONS, startAppShard, type AppShard } from './fixtures/app-shard.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { sqlstateOf, type TestPostgres } from '../../support/postgres.js';

let shard: AppShard;
let server: TestPostgres;
let admin: pg.Pool;

beforeAll(async () => {
  // Slots 101 open, 102 fenced, 103 moved, 104 incoming; 105 has no row.
  shard = await startAppShard({ login: 'plain_sql_app', password: 'plain sql pass', settings: { max_prepared_transactions: 4 }, fences: "('slot', '101', 'open', null, 0), ('slot', '102', 'fenced', null, 0), ('slot', '103', 'moved', 'shard_x', 5), ('slot', '104', 'incoming', null, 0)" });
  ({ server, admin } = shard);
}, 120_000);
afterAll(() => shard?.stop());

const asApp = <T>(fn: (c: pg.Client) => Promise<T>): Promise<T> => shard.asApp(fn);

/** A user of `slot` with one document, written as the superuser (no fence applies to it: its pass is set). */
async function seed(slot: number): Promise<{ user: string; doc: string }> {
  const user = randomUUID();
  const doc = randomUUID();
  const c = await admin.connect();
  try {
    await c.query("begin; set local ca_dms.move_writer = 'on'");
    await c.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [user, slot, `${user}@x`, 'u']);
    await c.query('insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4)', [doc, user, slot, 't']);
    await c.query('commit');
  } finally {
    c.release();
  }
  return { user, doc };
}

describe('ca_dms_app writing plain SQL to a shard', () => {
  it('cannot skip, disable or replace the triggers, nor gain a role that can', async () => {
    const probes: Record<string, string> = {
      setReplicaRole: await sqlstateOf(() => asApp((c) => c.query('set session_replication_role = replica'))),
      setConfigReplicaRole: await sqlstateOf(() => asApp((c) => c.query("select set_config('session_replication_role', 'replica', true)"))),
      alterRoleSetReplica: await sqlstateOf(() => asApp((c) => c.query('alter role plain_sql_app set session_replication_role = replica'))),
      moverReplicaRole: await sqlstateOf(() => asApp((c) => c.query('begin; select mover_replica_role()'))),
      disableTrigger: await sqlstateOf(() => asApp((c) => c.query('alter table documents disable trigger documents_write_fence'))),
      createTrigger: await sqlstateOf(() => asApp((c) => c.query('create trigger t before insert on documents for each row execute function enforce_write_fence()'))),
      createFunction: await sqlstateOf(() => asApp((c) => c.query('create function public.f() returns int language sql as $$ select 1 $$'))),
      createSchema: await sqlstateOf(() => asApp((c) => c.query('create schema plain_sql_app'))),
      createTemp: await sqlstateOf(() => asApp((c) => c.query('create temp table write_fences (x int)'))),
      setRoleMover: await sqlstateOf(() => asApp((c) => c.query('set role ca_dms_mover'))),
      grantMover: await sqlstateOf(() => asApp((c) => c.query('grant ca_dms_mover to plain_sql_app'))),
      claimPermit: await sqlstateOf(() => asApp((c) => c.query('select move_permit_claim(1, 1)'))),
      insertFence: await sqlstateOf(() => asApp((c) => c.query("insert into write_fences (kind, unit_id) values ('slot', '999')"))),
      deleteCapture: await sqlstateOf(() => asApp((c) => c.query('delete from move_captures'))),
      truncate: await sqlstateOf(() => asApp((c) => c.query('truncate documents'))),
    };
    expect(probes).toEqual({
      setReplicaRole: '42501',
      setConfigReplicaRole: '42501',
      alterRoleSetReplica: '42501',
      moverReplicaRole: '42501',
      disableTrigger: '42501',
      createTrigger: '42501',
      createFunction: '42501',
      createSchema: '42501',
      createTemp: '42501',
      setRoleMover: '42501',
      grantMover: '42501',
      claimPermit: '42501',
      insertFence: '42501',
      deleteCapture: '42501',
      truncate: '42501',
    });
    // No SECURITY DEFINER function but the replica timeline and the primary's timeline history (027) are the application's to call.
    const definers = await asApp((c) =>
      c.query<{ f: string }>(
        "select p.oid::regprocedure::text as f from pg_proc p join pg_namespace n on n.oid = p.pronamespace where p.prosecdef and n.nspname not in ('pg_catalog', 'information_schema') and has_function_privilege(p.oid, 'execute') order by 1",
      ),
    );
    expect(definers.rows.map((r) => r.f)).toEqual(['timeline_history()', 'wal_receiver_timeline()']);
  });

  it('is refused on fenced, incoming and moved units by every row-writing statement form', async () => {
    const fenced = await seed(102);
    const moved = await seed(103);
    const incoming = await seed(104);
    const open = await seed(101);
    const doc = (slot: number, owner: string) => `('${randomUUID()}', '${owner}', ${slot}, 'x')`;
    const probes: Record<string, string> = {
      insertFenced: await sqlstateOf(() => asApp((c) => c.query(`insert into documents (id, owner_id, slot, title) values ${doc(102, fenced.user)}`))),
      insertIncoming: await sqlstateOf(() => asApp((c) => c.query(`insert into documents (id, owner_id, slot, title) values ${doc(104, incoming.user)}`))),
      insertMoved: await sqlstateOf(() => asApp((c) => c.query(`insert into documents (id, owner_id, slot, title) values ${doc(103, moved.user)}`))),
      twoUnits: await sqlstateOf(() => asApp((c) => c.query(`insert into documents (id, owner_id, slot, title) values ${doc(101, open.user)}, ${doc(102, fenced.user)}`))),
      handOverOut: await sqlstateOf(() => asApp((c) => c.query('update documents set owner_id = $1, slot = 101 where id = $2', [open.user, fenced.doc]))),
      handOverIn: await sqlstateOf(() => asApp((c) => c.query('update documents set owner_id = $1, slot = 103 where id = $2', [moved.user, open.doc]))),
      deleteMoved: await sqlstateOf(() => asApp((c) => c.query('delete from documents where id = $1', [moved.doc]))),
      deleteUserCascade: await sqlstateOf(() => asApp(async (c) => {
          await c.query("begin; set local ca_dms.move_writer = 'on'");
          await c.query('delete from users where id = $1', [moved.user]);
        })),
      upsertOntoFenced: await sqlstateOf(() =>
        asApp((c) => c.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, 101, 'y') on conflict (id) do update set title = excluded.title`, [fenced.doc, open.user])),
      ),
      mergeFenced: await sqlstateOf(() =>
        asApp((c) =>
          c.query(`merge into documents d using (values ($1::uuid, $2::uuid, 102, 'm')) v(id, owner_id, slot, title) on d.id = v.id
                   when matched then update set title = v.title when not matched then insert (id, owner_id, slot, title) values (v.id, v.owner_id, v.slot, v.title)`, [randomUUID(), fenced.user]),
        ),
      ),
      mergeDeleteMoved: await sqlstateOf(() =>
        asApp((c) => c.query('merge into documents d using (values ($1::uuid)) v(id) on d.id = v.id when matched then delete', [moved.doc])),
      ),
      copyMoved: await sqlstateOf(() =>
        asApp(async (c) => {
          const sink = c.query(copyFrom('copy documents (id, owner_id, slot, title) from stdin'));
          await pipeline(Readable.from([`${randomUUID()}\t${moved.user}\t103\tc\n`]), sink);
        }),
      ),
      userSlotChange: await sqlstateOf(() => asApp((c) => c.query('update users set slot = 101 where id = $1', [moved.user]))),
    };
    expect(probes).toEqual({
      insertFenced: 'CAF01',
      insertIncoming: 'CAF01',
      insertMoved: 'CAF02',
      twoUnits: 'CAF01',
      handOverOut: 'CAF01',
      handOverIn: 'CAF02',
      deleteMoved: 'CAF02',
      deleteUserCascade: 'CAF02',
      upsertOntoFenced: 'CAF01',
      mergeFenced: 'CAF01',
      mergeDeleteMoved: 'CAF02',
      copyMoved: 'CAF02',
      userSlotChange: 'CAF02',
    });
  });

  it("an insert of an id held here by a row of a unit this shard does not own fails with the primary key's 23505 in every form (shard migration 018)", async () => {
    const moved = await seed(103);
    const incoming = await seed(104);
    const open = await seed(101);
    const withDetail = async (run: () => Promise<unknown>): Promise<string> => {
      try {
        await run();
        return 'ok';
      } catch (err) {
        const e = err as { code?: string; constraint?: string; table?: string; detail?: string };
        return `${e.code} ${e.table} ${e.constraint} ${e.detail}`;
      }
    };
    const forms = (id: string) => ({
      plain: withDetail(() => asApp((c) => c.query("insert into documents (id, owner_id, slot, title) values ($1, $2, 101, 'h')", [id, open.user]))),
      doNothing: withDetail(() =>
        asApp(async (c) => {
          const r = await c.query("insert into documents (id, owner_id, slot, title) values ($1, $2, 101, 'h') on conflict (id) do nothing", [id, open.user]);
          if (r.rowCount === 0) throw Object.assign(new Error('acknowledged, nothing written'), { code: 'silent' });
        }),
      ),
      doUpdate: withDetail(() => asApp((c) => c.query("insert into documents (id, owner_id, slot, title) values ($1, $2, 101, 'h') on conflict (id) do update set id = excluded.id", [id, open.user]))),
      copy: withDetail(() =>
        asApp(async (c) => {
          await pipeline(Readable.from([`${id}\t${open.user}\t101\th\n`]), c.query(copyFrom('copy documents (id, owner_id, slot, title) from stdin')));
        }),
      ),
    });
    const settle = async (o: Record<string, Promise<string>>): Promise<Record<string, string>> => Object.fromEntries(await Promise.all(Object.entries(o).map(async ([k, v]) => [k, await v] as const)));
    const dup = (id: string) => `23505 documents documents_pkey Key (id)=(${id}) already exists.`;
    expect(await settle(forms(moved.doc))).toEqual({ plain: dup(moved.doc), doNothing: dup(moved.doc), doUpdate: dup(moved.doc), copy: dup(moved.doc) });
    expect(await settle(forms(incoming.doc))).toEqual({ plain: dup(incoming.doc), doNothing: dup(incoming.doc), doUpdate: dup(incoming.doc), copy: dup(incoming.doc) });
    // What no trigger can see (the spec says so): MERGE reads the held row as a match and inserts nothing.
    const merged = await asApp((c) =>
      c.query(`merge into documents d using (values ($1::uuid, $2::uuid)) v(id, owner_id) on d.id = v.id
               when not matched then insert (id, owner_id, slot, title) values (v.id, v.owner_id, 101, 'h')`, [moved.doc, open.user]),
    );
    expect(merged.rowCount).toBe(0);
    // A row the shard owns: the primary key and ON CONFLICT as ever (an idempotent retry works).
    const owned = await settle(forms(open.doc));
    expect({ ...owned, plain: owned.plain?.slice(0, 5), copy: owned.copy?.slice(0, 5) }).toEqual({ plain: '23505', doNothing: 'silent undefined undefined undefined', doUpdate: 'ok', copy: '23505' });
  });

  it('cannot write the move log itself: its writes reach it only through the capture trigger (shard migration 019)', async () => {
    // Before 019 the login held INSERT on move_changes (for the trigger, which ran as the writer):
    // it could append entries for any job, of any age, and so many that a move's catch-up never
    // gets down to the fence (and the lag it reports is whatever the entries' captured_at say).
    const forged = {
      insertChange: await sqlstateOf(() =>
        asApp((c) => c.query("insert into move_changes (job_id, table_name, row_id, captured_at) values (901, 'documents', $1, now() - interval '1 day')", [randomUUID()])),
      ),
      nextSeq: await sqlstateOf(() => asApp((c) => c.query("select nextval('move_changes_seq_seq')"))),
      callCapture: await sqlstateOf(() => asApp((c) => c.query('select record_move_change()'))),
    };
    expect(forged).toEqual({ insertChange: '42501', nextSeq: '42501', callCapture: '42501' });
    // The capture itself still records the login's writes (slot 106: no fence row, captured).
    await admin.query("insert into move_captures (job_id, kind, unit_id) values (901, 'slot', '106')");
    try {
      const user = randomUUID();
      await asApp(async (c) => {
        await c.query('begin isolation level read committed');
        await c.query("insert into users (id, slot, email, display_name) values ($1, 106, $2, 'u')", [user, `${user}@x`]);
        await c.query("insert into documents (id, owner_id, slot, title) values ($1, $2, 106, 'd')", [randomUUID(), user]);
        await c.query('commit');
      });
      const { rows } = await admin.query<{ t: string; n: number }>('select table_name as t, count(*)::int as n from move_changes where job_id = 901 group by 1 order by 1');
      expect(rows).toEqual([{ t: 'documents', n: 1 }, { t: 'users', n: 1 }]);
    } finally {
      await admin.query('delete from move_captures where job_id = 901; delete from move_changes where job_id = 901');
    }
  });

  it("a user's delete does not lend the mover's pass to the documents it cascades to (shard migration 019)", async () => {
    // The foreign keys' cascade runs as the table's owner, a member of ca_dms_mover (superuser,
    // or RDS's master with ADMIN on the role): the fence judged the pass by current_user, so a
    // login that set ca_dms.move_writer deleted, through its owner, a document of a fenced unit.
    // Only documents whose slot is not their owner's can be of another unit than the user (rows
    // written before migration 015, whose key is NOT VALID): one is made here as the superuser.
    const user = randomUUID();
    const doc = randomUUID();
    const c = await admin.connect();
    try {
      await c.query('begin; set local session_replication_role = replica');
      await c.query("insert into users (id, slot, email, display_name) values ($1, 101, $2, 'legacy')", [user, `${user}@x`]);
      await c.query("insert into documents (id, owner_id, slot, title) values ($1, $2, 102, 'legacy, slot not its owner''s')", [doc, user]);
      await c.query('commit');
    } finally {
      c.release();
    }
    const cascade = await sqlstateOf(() =>
      asApp(async (app) => {
        await app.query("begin; set local ca_dms.move_writer = 'on'");
        await app.query('delete from users where id = $1', [user]);
        await app.query('commit');
      }),
    );
    expect(cascade).toBe('CAF01');
    expect((await admin.query<{ n: number }>('select count(*)::int as n from documents where id = $1', [doc])).rows[0]?.n).toBe(1);
  });

  it("cannot swap the triggers' functions for its own where it may create in the shard's schema (PostgreSQL 14; shard migration 019)", async () => {
    // PostgreSQL 14 grants CREATE on the public schema to PUBLIC (migration 019 revokes it where it
    // may; here it is granted back, as where it may not). A login's own to_jsonb(documents) is an
    // exact type match, preferred over pg_catalog's to_jsonb(anyelement) by a function whose
    // search_path names the schema: it answers an open slot for every row.
    await admin.query('grant create on schema public to public');
    try {
      await asApp(async (c) => {
        for (const t of ['users', 'documents']) {
          await c.query(`create function public.to_jsonb(r ${t}) returns jsonb language sql as $$
            select pg_catalog.jsonb_build_object('id', r.id, 'owner_id', ${t === 'users' ? 'r.id' : 'r.owner_id'}, 'slot', '101') $$`);
        }
      });
      const write = (slot: number) => async (c: pg.Client): Promise<void> => {
        const user = randomUUID();
        await c.query('begin isolation level read committed');
        await c.query("insert into users (id, slot, email, display_name) values ($1, $2, $3, 'shadow')", [user, slot, `${user}@x`]);
        await c.query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'shadow')", [randomUUID(), user, slot]);
        await c.query('commit');
      };
      await admin.query("insert into move_captures (job_id, kind, unit_id) values (902, 'slot', '106')");
      const outcome = {
        fenced: await sqlstateOf(() => asApp(write(102))),
        moved: await sqlstateOf(() => asApp(write(103))),
        captured: await sqlstateOf(() => asApp(write(106))),
      };
      const { rows } = await admin.query<{ n: number }>('select count(*)::int as n from move_changes where job_id = 902');
      expect({ ...outcome, changesCaptured: rows[0]?.n }).toEqual({ fenced: 'CAF01', moved: 'CAF02', captured: 'ok', changesCaptured: 2 });
    } finally {
      await admin.query('delete from move_captures where job_id = 902; delete from move_changes where job_id = 902');
      await admin.query('drop function if exists public.to_jsonb(users), public.to_jsonb(documents)');
      await admin.query('revoke create on schema public from public');
    }
  });

  it("runs every function of the shard migrations with search_path pg_catalog, pg_temp (shard migration 019: one added or replaced later with the schema in its path fails here)", async () => {
    const { rows } = await admin.query<{ f: string; cfg: string | null }>(
      `select p.oid::regprocedure::text as f, array_to_string(p.proconfig, ';') as cfg
         from pg_proc p
        where p.pronamespace = 'public'::regnamespace
          and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
        order by 1`,
    );
    // Shard migration 032 adds enable_seqscan = off to the fence function (its look-ups by index, whatever plan a session keeps).
    const pinned = (f: string) => (f === 'enforce_write_fence()' ? 'search_path=pg_catalog, pg_temp;enable_seqscan=off' : 'search_path=pg_catalog, pg_temp');
    expect(rows.filter((r) => r.cfg !== pinned(r.f))).toEqual([]);
    expect(rows.map((r) => r.f)).toEqual([
      'enforce_write_fence()',
      'idempotency_request_digest(text,jsonb)',
      'jsonb_canonical_numbers(jsonb)',
      'move_permit_claim(bigint,bigint)',
      'move_permit_hold(bigint,bigint)',
      'mover_replica_role()',
      'record_move_change()',
      'refuse_truncate_during_move()',
      'timeline_history()',
      'wal_receiver_timeline()',
    ]);
  });

  it("lets every login of the mover's through the fence by its pass: direct, through another role, INHERIT FALSE after SET ROLE, a pooled session's SET ROLE, the superuser (shard migration 019)", async () => {
    const pw = 'mover pass';
    await admin.query(`create role rev019_mover_group nologin; grant ca_dms_mover to rev019_mover_group;
      create role rev019_mover_direct login password '${pw}'; grant ca_dms_mover to rev019_mover_direct;
      create role rev019_mover_indirect login password '${pw}'; grant rev019_mover_group to rev019_mover_indirect;
      create role rev019_mover_noinherit login password '${pw}'; grant ca_dms_mover to rev019_mover_noinherit with inherit false;
      create role rev019_pooled login password '${pw}'; grant ca_dms_app to rev019_pooled; grant ca_dms_mover to rev019_pooled with inherit false`);
    try {
      const seeded = await seed(102);
      const asLogin = async (user: string, setRole: string | undefined): Promise<string> =>
        sqlstateOf(async () => {
          const c = new pg.Client({ connectionString: `postgresql://${user}:${encodeURIComponent(pw)}@127.0.0.1:${server.port}/postgres` });
          await c.connect();
          try {
            if (setRole) await c.query(`set role ${setRole}`);
            await c.query("begin; set local ca_dms.move_writer = 'on'");
            // A fenced unit (102): only the mover's pass gets a write through.
            await c.query("insert into documents (id, owner_id, slot, title) values ($1, $2, 102, 'mover')", [randomUUID(), seeded.user]);
            await c.query('rollback');
          } finally {
            await c.end();
          }
        });
      const superuser = await sqlstateOf(async () => {
        const c = await admin.connect();
        try {
          await c.query("begin; set local ca_dms.move_writer = 'on'");
          await c.query("insert into documents (id, owner_id, slot, title) values ($1, $2, 102, 'mover')", [randomUUID(), seeded.user]);
        } finally {
          await c.query('rollback');
          c.release();
        }
      });
      expect({
        direct: await asLogin('rev019_mover_direct', undefined),
        indirect: await asLogin('rev019_mover_indirect', undefined),
        noInheritSetRole: await asLogin('rev019_mover_noinherit', 'ca_dms_mover'),
        pooledSetRole: await asLogin('rev019_pooled', 'ca_dms_mover'),
        pooledAsApp: await asLogin('rev019_pooled', 'ca_dms_app'),
        superuser,
        app: await sqlstateOf(() =>
          asApp(async (c) => {
            await c.query("begin; set local ca_dms.move_writer = 'on'");
            await c.query("insert into documents (id, owner_id, slot, title) values ($1, $2, 102, 'app')", [randomUUID(), seeded.user]);
          }),
        ),
      }).toEqual({ direct: 'ok', indirect: 'ok', noInheritSetRole: 'ok', pooledSetRole: 'ok', pooledAsApp: 'ok', superuser: 'ok', app: 'CAF01' });
    } finally {
      await admin.query(`drop role rev019_mover_direct; drop role rev019_mover_indirect; drop role rev019_mover_noinherit; drop role rev019_pooled; drop role rev019_mover_group`);
    }
  });

  it('a prepared transaction keeps the fence row locked, so a fence waits for it like for any writer', async () => {
    const open = await seed(101);
    await asApp(async (c) => {
      await c.query('begin');
      await c.query("update documents set title = 'prepared' where id = $1", [open.doc]);
      await c.query("prepare transaction 'app_sql_1'");
    });
    try {
      const fence = await sqlstateOf(async () => {
        const c = await admin.connect();
        try {
          await c.query("begin; set local lock_timeout = '200ms'");
          await c.query("update write_fences set state = 'fenced' where kind = 'slot' and unit_id = '101'");
        } finally {
          await c.query('rollback');
          c.release();
        }
      });
      expect(fence).toBe('55P03');
    } finally {
      await admin.query("commit prepared 'app_sql_1'");
    }
  });
});

/** A folder holding the shard migrations before `version` (the shard as an earlier release left it). */
async function shardMigrationsBefore(version: number): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shard-before-'));
  for (const f of await readdir(SHARD_MIGRATIONS)) {
    if (Number(f.slice(0, 3)) < version) await copyFile(join(SHARD_MIGRATIONS, f), join(dir, f));
  }
  return dir;
}

describe('shard migration 019 on a shard an earlier release migrated', () => {
  it("pins the functions the triggers run, where the tables are, when the migration login's search_path finds another schema first", async () => {
    // The tables were created where the path pointed when migration 001 ran. A schema named like
    // the migration login ("$user", first in the default search_path), created later (by an
    // operator, a tool), moves current_schema(): 019 must still replace the triggers' functions,
    // not create copies elsewhere and revoke the application's INSERT on move_changes from under
    // the capture the triggers still run as the writer.
    await admin.query('create database shard_user_schema');
    const pool = new pg.Pool({ connectionString: server.urlFor('shard_user_schema'), max: 2 });
    try {
      const before019 = await shardMigrationsBefore(19);
      await runMigrations(pool, 'shard', before019);
      await rm(before019, { recursive: true, force: true });
      await pool.query('create schema postgres');
      await runMigrations(pool, 'shard', SHARD_MIGRATIONS);
      const { rows: fns } = await pool.query<{ f: string; cfg: string; definer: boolean }>(
        `select distinct p.proname::text as f, array_to_string(p.proconfig, ';') as cfg, p.prosecdef as definer
           from pg_trigger t join pg_proc p on p.oid = t.tgfoid where not t.tgisinternal and t.tgrelid in ('public.users'::regclass, 'public.documents'::regclass) order by 1`,
      );
      expect(fns).toEqual([
        { f: 'enforce_write_fence', cfg: 'search_path=pg_catalog, pg_temp;enable_seqscan=off', definer: false },
        { f: 'record_move_change', cfg: 'search_path=pg_catalog, pg_temp', definer: true },
        { f: 'refuse_truncate_during_move', cfg: 'search_path=pg_catalog, pg_temp', definer: false },
      ]);
      const { rows: copies } = await pool.query<{ n: number }>("select count(*)::int as n from pg_proc where pronamespace = 'postgres'::regnamespace");
      expect(copies[0]?.n).toBe(0);
      // Tables created by later migrations (021's document_keys) are beside the others, where the
      // application's search_path and the triggers' pinned functions find them.
      const { rows: tables } = await pool.query<{ t: string }>("select c.oid::regclass::text as t from pg_class c where c.relkind = 'r' and c.relnamespace = 'postgres'::regnamespace order by 1");
      expect(tables).toEqual([]);
      expect((await pool.query<{ t: string | null }>("select to_regclass('public.document_keys')::text as t")).rows[0]?.t).toBe('document_keys');
      // The application's write into a captured unit is accepted and captured.
      await ensureApplicationLogin(pool, { username: 'plain_sql_app', password: 'plain sql pass' });
      await pool.query("insert into public.move_captures (job_id, kind, unit_id) values (903, 'slot', '107')");
      const app = new pg.Client({ connectionString: `postgresql://plain_sql_app:${encodeURIComponent('plain sql pass')}@127.0.0.1:${server.port}/shard_user_schema` });
      await app.connect();
      try {
        const user = randomUUID();
        const write = await sqlstateOf(() => app.query("insert into users (id, slot, email, display_name) values ($1, 107, $2, 'u')", [user, `${user}@x`]));
        expect(write).toBe('ok');
      } finally {
        await app.end();
      }
      expect((await pool.query<{ n: number }>('select count(*)::int as n from public.move_changes where job_id = 903')).rows[0]?.n).toBe(1);
    } finally {
      await pool.end();
    }
  });

  it('applies on a live shard, a capture running and a fence held: every acknowledged write is captured, a statement caught across it fails whole', async () => {
    await admin.query('create database shard_live_019');
    const pool = new pg.Pool({ connectionString: server.urlFor('shard_live_019'), max: 3 });
    const url = `postgresql://plain_sql_app:${encodeURIComponent('plain sql pass')}@127.0.0.1:${server.port}/shard_live_019`;
    const clients: pg.Client[] = [];
    const connectApp = async (): Promise<pg.Client> => {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      clients.push(c);
      return c;
    };
    const newUser = async (c: pg.Client, slot: number, id = randomUUID()): Promise<string> => {
      await c.query("insert into users (id, slot, email, display_name) values ($1, $2, $3, 'live')", [id, slot, `${id}@x`]);
      return id;
    };
    try {
      const before019 = await shardMigrationsBefore(19);
      await runMigrations(pool, 'shard', before019);
      await rm(before019, { recursive: true, force: true });
      await ensureApplicationLogin(pool, { username: 'plain_sql_app', password: 'plain sql pass' });
      await pool.query("insert into move_captures (job_id, kind, unit_id) values (904, 'slot', '108'); insert into write_fences (kind, unit_id, state) values ('slot', '102', 'fenced')");
      const app = await connectApp();
      const before = await newUser(app, 108);
      // A statement whose capture is held up (here by a lock on the move log) across the commit.
      const locker = await pool.connect();
      let straddling: Promise<string> | undefined;
      try {
        await locker.query('begin; lock table move_changes in access exclusive mode');
        const straddler = await connectApp();
        const straddlerId = randomUUID();
        straddling = sqlstateOf(() => newUser(straddler, 108, straddlerId));
        for (let i = 0; ; i++) {
          const { rows } = await pool.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where usename = 'plain_sql_app' and wait_event_type = 'Lock' and query like 'insert into users%'");
          if (rows[0]?.n === 1) break;
          if (i > 200) throw new Error('the straddling insert never waited on the move log');
          await new Promise((r) => setTimeout(r, 25));
        }
        // Completes while another session holds ACCESS EXCLUSIVE on the move log (no table lock).
        // 019 and 020 alone: 021 adds a foreign key to users, which waits for the straddling writer of users.
        const upTo020 = await shardMigrationsBefore(21);
        const migrated = await runMigrations(pool, 'shard', upTo020, { lockTimeoutMs: 2000, lockAttempts: 1 }).finally(() => rm(upTo020, { recursive: true, force: true }));
        expect(migrated.applied).toEqual(['019_fence_and_capture_privileges.sql', '020_move_permit_strictly_later.sql']);
      } finally {
        await locker.query('commit');
        locker.release();
      }
      expect(await straddling).toBe('42501');
      // The same sessions go on with the new definitions.
      const after = await newUser(app, 108);
      expect(await sqlstateOf(() => newUser(app, 102))).toBe('CAF01');
      const { rows: users } = await pool.query<{ id: string; captured: boolean }>(
        'select u.id::text as id, exists (select 1 from move_changes m where m.job_id = 904 and m.row_id = u.id) as captured from users u where u.slot = 108 order by u.id',
      );
      expect(users).toEqual([before, after].sort().map((id) => ({ id, captured: true })));
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
      await pool.end();
    }
  });
});
