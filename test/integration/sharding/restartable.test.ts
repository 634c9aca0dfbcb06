/**
 * The fault tests' restartable PostgreSQL (fixtures/restartable.ts): its port is only free when
 * chosen, and another test process may bind it before PostgreSQL does.
 */
import { createServer, type Socket } from 'node:net';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { freePort } from '../../support/postgres.js';
import { startRestartable, type RestartablePostgres } from './fixtures/restartable.js';

/** A server start in a test's body gets as long as a hook (vitest.config.ts): 14 s at load 8. */
const SERVER_START_TEST_TIMEOUT_MS = 120_000;

describe('restartable PostgreSQL', () => {
  it('starts on another port when the chosen one was taken before PostgreSQL bound it, and restarts there', async () => {
    // Another process on the port chosen first: it accepts and never answers.
    const sockets = new Set<Socket>();
    const holder = createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
    const taken = (holder.address() as { port: number }).port;
    const given: number[] = [];
    const choosePort = async (): Promise<number> => {
      const port = given.length === 0 ? taken : await freePort();
      given.push(port);
      return port;
    };
    let server: RestartablePostgres | undefined;
    const answer = async (): Promise<unknown> => {
      const client = new pg.Client({ connectionString: server?.url });
      await client.connect();
      try {
        return (await client.query<{ n: number }>('select 1 as n')).rows;
      } finally {
        await client.end();
      }
    };
    try {
      server = await startRestartable({}, { choosePort });
      const first = await answer();
      await server.restart('fast');

      expect(given).toHaveLength(2);
      expect(new URL(server.url).port).toBe(String(given[1]));
      expect(first).toEqual([{ n: 1 }]);
      expect(await answer()).toEqual([{ n: 1 }]);
    } finally {
      await server?.stop();
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((r) => holder.close(() => r()));
    }
  }, SERVER_START_TEST_TIMEOUT_MS);
});
