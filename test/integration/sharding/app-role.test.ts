/**
 * The application's least-privilege role on a shard (shard migration 003) against a real
 * PostgreSQL: what the CA-DMS application does works as a member of `ca_dms_app`, and what it
 * has no business doing (DDL, opening or closing a write fence, reading the move log, passing a
 * fence by claiming to be the mover) is refused.
 */
import { randomUUID } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureApplicationLogin, ensureLogin, scramVerifier } from '../../../functions/adapters/postgres/app-role.js';
import { WRITER_FENCE_ROWS_SQL } from '../../../functions/adapters/postgres/write-transaction.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { sqlstateOf, startTestPostgres, type TestPostgres } from '../../support/postgres.js';

const SHARD_MIGRATIONS = join(resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations'), 'shard');

let server: TestPostgres;
let admin: pg.Pool;
let app: pg.Pool;

beforeAll(async () => {
  server = await startTestPostgres();
  admin = new pg.Pool({ connectionString: server.url, max: 2 });
  await runMigrations(admin, 'shard', SHARD_MIGRATIONS);
  await ensureApplicationLogin(admin, { username: 'ca_dms_app_user', password: 'first pass' });
  app = new pg.Pool({ connectionString: `postgresql://ca_dms_app_user:${encodeURIComponent('first pass')}@127.0.0.1:${server.port}/postgres`, max: 2 });
});
afterAll(async () => {
  await app.end();
  await admin.end();
  await server.stop();
});

describe('the application role on a shard', () => {
  it('reads and writes users and documents under a shared lock on its fence rows, captured during a move', async () => {
    const user = randomUUID();
    await admin.query("insert into write_fences (kind, unit_id) values ('slot', '7')");
    await admin.query("insert into move_captures (job_id, kind, unit_id, moving_to) values (1, 'slot', '7', 'shard-002')");
    const client = await app.connect();
    try {
      await client.query('begin');
      // The writer's own statement: the fence rows, locked, with the destination of a move in progress.
      const fences = await client.query(WRITER_FENCE_ROWS_SQL, ['7', user]);
      expect(fences.rows).toEqual([{ kind: 'slot', unit_id: '7', state: 'open', job_id: null, moving_to: 'shard-002' }]);
      await client.query('insert into users (id, slot, email, display_name) values ($1, 7, $2, $3)', [user, 'a@example.com', 'A']);
      await client.query('insert into documents (id, owner_id, slot, title) values ($1, $2, 7, $3)', [randomUUID(), user, 'Minutes']);
      await client.query('update documents set title = $1 where owner_id = $2', ['Agenda', user]);
      await client.query('commit');
    } finally {
      client.release();
    }
    await app.query('delete from documents where owner_id = $1', [user]);

    const captured = await admin.query('select count(*)::int as n from move_changes where job_id = 1');
    // user insert, document insert, update (old and new row), delete
    expect(captured.rows[0]).toEqual({ n: 5 });
  });

  it('refuses DDL, changing a fence, and reading or editing the move log', async () => {
    const refused = {
      dropTable: await sqlstateOf(() => app.query('drop table documents')),
      createTable: await sqlstateOf(() => app.query('create table scratch (id int)')),
      openFence: await sqlstateOf(() => app.query("update write_fences set state = 'open'")),
      removeFence: await sqlstateOf(() => app.query('delete from write_fences')),
      readMoveLog: await sqlstateOf(() => app.query('select * from move_changes')),
      startCapture: await sqlstateOf(() => app.query("insert into move_captures (job_id, kind, unit_id) values (2, 'slot', '8')")),
      truncateUsers: await sqlstateOf(() => app.query('truncate users')),
    };

    expect(refused).toEqual({
      dropTable: '42501',
      createTable: '42501',
      openFence: '42501',
      removeFence: '42501',
      readMoveLog: '42501',
      startCapture: '42501',
      truncateUsers: '42501',
    });
  });

  it("is fenced even when it sets the mover's pass; only a member of ca_dms_mover is let through", async () => {
    await admin.query("insert into write_fences (kind, unit_id, state) values ('slot', '9', 'fenced')");
    await admin.query("insert into write_fences (kind, unit_id, state, moved_to, map_version) values ('slot', '10', 'moved', 'shard-002', 3)");
    await ensureLogin(admin, { username: 'ca_dms_mover_user', password: 'mover pass' }, { role: 'ca_dms_mover' });
    const mover = new pg.Pool({ connectionString: `postgresql://ca_dms_mover_user:${encodeURIComponent('mover pass')}@127.0.0.1:${server.port}/postgres`, max: 1 });
    /** Inserts a user on `slot` in a transaction that claims to be the mover's. */
    const claimPass = (pool: pg.Pool, slot: number) => async (): Promise<void> => {
      const client = await pool.connect();
      try {
        await client.query("begin; set local ca_dms.move_writer = 'on'");
        await client.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [randomUUID(), slot, `${randomUUID()}@example.com`, 'Sneaky']);
        await client.query('commit');
      } catch (err) {
        await client.query('rollback');
        throw err;
      } finally {
        client.release();
      }
    };
    try {
      expect({
        appOnFenced: await sqlstateOf(claimPass(app, 9)),
        appOnMoved: await sqlstateOf(claimPass(app, 10)),
        moverOnFenced: await sqlstateOf(claimPass(mover, 9)),
        moverOnMoved: await sqlstateOf(claimPass(mover, 10)),
      }).toEqual({ appOnFenced: 'CAF01', appOnMoved: 'CAF02', moverOnFenced: 'ok', moverOnMoved: 'ok' });
    } finally {
      await mover.end();
    }
    expect((await admin.query<{ n: number }>("select count(*)::int as n from users where display_name = 'Sneaky'")).rows[0]?.n).toBe(2);
  });

  it('resets the password of an existing login to the secret, sent as a SCRAM verifier only', async () => {
    const result = await ensureApplicationLogin(admin, { username: 'ca_dms_app_user', password: 'second pass' });
    const again = new pg.Client({ connectionString: `postgresql://ca_dms_app_user:${encodeURIComponent('second pass')}@127.0.0.1:${server.port}/postgres` });
    await again.connect();
    const member = await again.query<{ ok: boolean }>("select pg_has_role('ca_dms_app', 'member') as ok");
    await again.end();

    expect(result).toBe('updated');
    expect(member.rows[0]?.ok).toBe(true);
    expect(scramVerifier('x', Buffer.alloc(16))).toMatch(/^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/);
  });
});
