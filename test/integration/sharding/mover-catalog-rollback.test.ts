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

  it("refuses the run's later statements naming the rollback that failed, not with 25P02", async () => {
    const client = new pg.Client({ connectionString: server.url });
    await client.connect();
    try {
      const query = client.query.bind(client) as (text: unknown, values?: unknown) => Promise<unknown>;
      (client as unknown as { query: typeof query }).query = (text, values) => (text === 'rollback' ? Promise.reject(new Error('canceling statement due to user request')) : query(text, values));
      const catalog = new MoverCatalog(client);
      await catalog.transaction('begin', async (c) => c.query('select 1/0')).catch(() => undefined);

      // As the run's next use (a job reload after a cancellation, the rollback of a move whose
      // owner conflicts) meets it: before, 25P02 "current transaction is aborted", which became
      // the run's error and said nothing of why.
      const later = await catalog.query('select 1').catch((err: unknown) => err);
      expect(later).toBeInstanceOf(Error);
      expect((later as { code?: string }).code).toBeUndefined();
      expect((later as Error).message).toMatch(/rollback of one of its transactions failed \(canceling statement due to user request\)/);
      expect(catalog.dropped).toBe(true);
    } finally {
      await client.end().catch(() => undefined);
    }
  });

  it('lets the run go on once a later rollback in the same holder ended the failed transaction (as the fence paths do)', async () => {
    const client = new pg.Client({ connectionString: server.url });
    await client.connect();
    try {
      const query = client.query.bind(client) as (text: unknown, values?: unknown) => Promise<unknown>;
      let failedOnce = false;
      (client as unknown as { query: typeof query }).query = (text, values) => {
        if (text === 'rollback' && !failedOnce) {
          failedOnce = true;
          return Promise.reject(new Error('canceling statement due to user request'));
        }
        return query(text, values);
      };
      const catalog = new MoverCatalog(client);
      await catalog.use(async (c) => {
        await catalog.transaction('begin', async (t) => t.query('select 1/0')).catch(() => undefined);
        // heldToFence / the flip: once the cancel request has settled, a rollback ends the transaction.
        await c.query('rollback');
      });
      expect(client.getTransactionStatus()).toBe('I');
      await expect(catalog.query<{ one: number }>('select 1 as one')).resolves.toMatchObject({ rows: [{ one: 1 }] });
    } finally {
      await client.end().catch(() => undefined);
    }
  });
});
