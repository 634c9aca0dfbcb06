import { createServer, type Socket } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startTestPostgres, type TestPostgres } from '../support/postgres.js';
import { startTestReplica, type TestReplica } from '../support/replica.js';

/**
 * A loopback port held by a listener of this process until `release`. It accepts and never
 * answers, like a foreign process would; release drops the connections a probe left open.
 */
async function takenPort(): Promise<{ port: number; release(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const holder = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
  const addr = holder.address();
  return {
    port: typeof addr === 'object' && addr ? addr.port : 0,
    release: () =>
      new Promise<void>((r) => {
        for (const socket of sockets) socket.destroy();
        holder.close(() => r());
      }),
  };
}

/** A port chooser whose first answer is `taken`, then free ports; `given` records every answer. */
/**
 * These tests start servers in their body: as much time as a hook gets (vitest.config.ts), since a
 * start took 14 s at load 8 and a one-shard cluster more than 30 s at load 19.
 */
const SERVER_START_TEST_TIMEOUT_MS = 120_000;

function takenFirst(taken: number, given: number[]): () => Promise<number> {
  return async () => {
    const port = given.length === 0 ? taken : await freePort();
    given.push(port);
    return port;
  };
}

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
    const taken = await takenPort();
    const given: number[] = [];
    let other: TestPostgres | undefined;
    try {
      other = await startTestPostgres({ choosePort: takenFirst(taken.port, given) });
      const client = new pg.Client({ connectionString: other.url });
      await client.connect();
      const { rows } = await client.query<{ n: number }>('select 1 as n');
      await client.end();

      expect(given).toHaveLength(2);
      expect(other.port).toBe(given[1]);
      expect(rows).toEqual([{ n: 1 }]);
    } finally {
      await other?.stop();
      await taken.release();
    }
  }, SERVER_START_TEST_TIMEOUT_MS);

  it('starts a streaming replica on another port when the chosen one is taken before the standby binds it', async () => {
    const taken = await takenPort();
    const given: number[] = [];
    let replica: TestReplica | undefined;
    try {
      replica = await startTestReplica(server, { choosePort: takenFirst(taken.port, given) });
      const client = new pg.Client({ connectionString: replica.url });
      await client.connect();
      const { rows } = await client.query<{ rec: boolean; dir: string }>("select pg_is_in_recovery() as rec, current_setting('data_directory') as dir");
      await client.end();

      expect(given).toHaveLength(2);
      expect(replica.port).toBe(given[1]);
      expect(rows).toEqual([{ rec: true, dir: replica.dataDir }]);
    } finally {
      await replica?.stop();
      await taken.release();
    }
  }, SERVER_START_TEST_TIMEOUT_MS);
});
