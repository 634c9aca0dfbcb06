/**
 * `timeoutsAtMostSql` (deadline.ts) reads the session's own `statement_timeout` and `lock_timeout`
 * through `current_setting(...)::interval` and keeps it where it is shorter than the time left:
 * whatever unit the operator gave it (`ALTER ROLE ... SET lock_timeout = 50`, a unit-less number,
 * is milliseconds; '5s', '1min', '250ms', '1h', '1d', '1500us' rounded to whole ms), `SHOW` spells
 * it with the largest unit that divides it, and each must be read as the same milliseconds. 0
 * (none) is never "shorter". Checked against real PostgreSQL, set as a role's default is
 * (`SET` of the session: `current_setting` reads the same), in the BEGIN's simple query as the
 * writer sends it (`deadlineSettingsSql`). (h151, issue #15.)
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { timeoutsAtMostSql } from '../../../functions/adapters/postgres/deadline.js';
import { deadlineSettingsSql } from '../../../functions/adapters/postgres/write-transaction.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';

let server: TestPostgres;
let pool: pg.Pool;
beforeAll(async () => {
  server = await startTestPostgres();
  pool = new pg.Pool({ connectionString: server.url, max: 1 });
  pool.on('error', () => undefined);
}, 60_000);
afterAll(async () => {
  await pool?.end();
  await server?.stop();
});

/** The two settings in force inside a transaction begun with `sql` after the session's own were set to `own` (each `SHOW`n). */
async function inTransaction(own: string, sql: string): Promise<{ statement_timeout: string; lock_timeout: string }> {
  const c = await pool.connect();
  try {
    await c.query(`set statement_timeout = ${own}; set lock_timeout = ${own}`);
    await c.query(`begin; ${sql}`);
    const { rows } = await c.query<{ statement_timeout: string; lock_timeout: string }>(`select current_setting('statement_timeout') as statement_timeout, current_setting('lock_timeout') as lock_timeout`);
    await c.query('rollback');
    return rows[0] as { statement_timeout: string; lock_timeout: string };
  } finally {
    await c.query('reset statement_timeout; reset lock_timeout').catch(() => undefined);
    c.release();
  }
}

describe('timeoutsAtMostSql: the session\'s own timeout, in any unit, against the time left (1500 ms)', () => {
  it.each([
    { own: '0', kept: '1500ms', why: 'none set: the time left' },
    { own: '50', kept: '50ms', why: 'a unit-less number is ms' },
    { own: "'250ms'", kept: '250ms', why: 'shorter' },
    { own: "'1500us'", kept: '2ms', why: 'µs, rounded to whole ms by the server' },
    { own: "'1s'", kept: '1s', why: 'shorter, shown in s' },
    { own: "'5s'", kept: '1500ms', why: 'longer: the time left' },
    { own: "'1min'", kept: '1500ms', why: 'longer, shown in min' },
    { own: "'1h'", kept: '1500ms', why: 'longer, shown in h' },
    { own: "'1d'", kept: '1500ms', why: 'longer, shown in d' },
    { own: '2147483647', kept: '1500ms', why: 'the largest' },
  ])('$own ($why): $kept', async ({ own, kept }) => {
    expect(await inTransaction(own, timeoutsAtMostSql(['statement_timeout', 'lock_timeout'], 1500))).toEqual({ statement_timeout: kept, lock_timeout: kept });
  });

  it("in the writer's BEGIN (deadlineSettingsSql), a unit-less 50 is kept as 50 ms, a '1min' gives way to the time left", async () => {
    expect(await inTransaction('50', deadlineSettingsSql(1500, { lockTimeout: true }))).toEqual({ statement_timeout: '50ms', lock_timeout: '50ms' });
    expect(await inTransaction("'1min'", deadlineSettingsSql(1500, { lockTimeout: true }))).toEqual({ statement_timeout: '1500ms', lock_timeout: '1500ms' });
  });
});
