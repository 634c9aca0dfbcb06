import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestPostgres, type TestPostgres } from '../support/postgres.js';

describe('test PostgreSQL helper', () => {
  let server: TestPostgres;
  beforeAll(async () => {
    server = await startTestPostgres();
  });
  afterAll(async () => {
    await server.stop();
  });

  it('starts a real server on loopback that answers queries', async () => {
    const client = new pg.Client({ connectionString: server.url });
    await client.connect();
    const { rows } = await client.query<{ v: string; addr: string | null }>(
      "select current_setting('server_version_num') as v, inet_server_addr()::text as addr",
    );
    await client.end();
    expect(Number(rows[0]?.v)).toBeGreaterThanOrEqual(170000);
    expect(rows[0]?.addr).toBe('127.0.0.1/32');
  });
});
