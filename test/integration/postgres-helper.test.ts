import { createServer } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startTestPostgres, type TestPostgres } from '../support/postgres.js';

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

  it('starts on another port when the chosen one is taken before PostgreSQL binds it', async () => {
    const holder = createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
    const addr = holder.address();
    const taken = typeof addr === 'object' && addr ? addr.port : 0;
    const given: number[] = [];
    let other: TestPostgres | undefined;
    try {
      other = await startTestPostgres({
        choosePort: async () => {
          const port = given.length === 0 ? taken : await freePort();
          given.push(port);
          return port;
        },
      });
      const client = new pg.Client({ connectionString: other.url });
      await client.connect();
      const { rows } = await client.query<{ n: number }>('select 1 as n');
      await client.end();

      expect(given).toHaveLength(2);
      expect(other.port).toBe(given[1]);
      expect(rows).toEqual([{ n: 1 }]);
    } finally {
      await other?.stop();
      holder.close();
    }
  });
});
