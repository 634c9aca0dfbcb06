import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MoverCatalog } from '../../../functions/adapters/postgres/mover-catalog.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';

/**
 * A move run's one catalog connection (MoverCatalog) whose transaction's rollback failed: a cancel
 * request's second signal (the fence budget sends them on this client) can cancel the ROLLBACK
 * itself. The session then stays in its failed transaction: every later statement on it fails
 * (25P02), and given back to its pool healthy it would fail the next run's too. The catalog says
 * so (`dropped`), and the mover then closes the connection instead of pooling it (mover.ts).
 */
describe("a move run's catalog connection whose rollback failed", () => {
  let server: TestPostgres;
  beforeAll(async () => {
    server = await startTestPostgres();
  });
  afterAll(async () => {
    await server.stop();
  });

  it('is marked dropped, not handed back to its pool as healthy', async () => {
    const client = new pg.Client({ connectionString: server.url });
    await client.connect();
    try {
      // The ROLLBACK fails as the server fails any statement but a rollback in a failed
      // transaction (25P02): a stand-in for one a cancel's second signal cancelled, whose timing
      // cannot be hit on purpose. The session really is left in its failed transaction.
      const query = client.query.bind(client) as (text: unknown, values?: unknown) => Promise<unknown>;
      (client as unknown as { query: typeof query }).query = (text, values) => query(text === 'rollback' ? 'select 1' : text, values);
      const catalog = new MoverCatalog(client);

      const failed = await catalog.transaction('begin', async (c) => c.query('select 1/0')).catch((err: unknown) => err);

      expect(failed).toMatchObject({ code: '22012' });
      expect(client.getTransactionStatus()).toBe('E');
      expect(catalog.dropped).toBe(true);
    } finally {
      await client.end().catch(() => undefined);
    }
  });
});
