/**
 * ListeningClient closes a connection whose statement passed the client's `query_timeout` (the
 * server went silent), whatever form the query took, and adds no unhandled rejection.
 */
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropConnection, ListeningClient } from '../../../functions/adapters/postgres/listening-client.js';
import { startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { SilentRelay } from './fixtures/silent-relay.js';

let env: MoveEnv;
const relays: SilentRelay[] = [];
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};
beforeAll(async () => {
  env = await startMoveEnv({ shards: 1 });
  process.on('unhandledRejection', onUnhandled);
});
afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  for (const r of relays) await r.stop();
  await Promise.race([env?.stop(), delay(20_000)]);
}, 60_000);

type Form = (c: pg.Client) => Promise<unknown>;
const forms: Array<{ name: string; run: Form }> = [
  { name: 'text', run: (c) => c.query('select 1') },
  { name: 'text and values', run: (c) => c.query('select $1::int', [1]) },
  { name: 'a named prepared statement', run: (c) => c.query({ name: 'one', text: 'select $1::int', values: [1] }) },
  {
    name: 'a callback',
    run: (c) =>
      new Promise((resolve, reject) => {
        c.query('select 1', (err: Error | null, res: pg.QueryResult) => (err ? reject(err) : resolve(res)));
      }),
  },
  {
    name: 'values and a callback',
    run: (c) =>
      new Promise((resolve, reject) => {
        c.query('select $1::int', [1], (err: Error | null, res: pg.QueryResult) => (err ? reject(err) : resolve(res)));
      }),
  },
];

describe('a ListeningClient whose server goes silent', () => {
  it.each(forms)('drops the connection after a query read timeout ($name)', async ({ run }) => {
    const url = Object.values(env.urls.shards)[0] as string;
    const relay = await SilentRelay.start(Number(new URL(url).port));
    relays.push(relay);
    const client = new ListeningClient({ connectionString: relay.url(url), query_timeout: 300 });
    await client.connect();
    await run(client); // answered
    relay.blackhole();
    const first = await run(client).then(
      () => 'ok',
      (e: Error) => e.message,
    );
    await delay(50);
    const started = Date.now();
    const next = await Promise.race([client.query('select 1').then(() => 'ok', (_e: Error) => `failed in ${Date.now() - started < 200 ? 'under 200 ms' : 'over 200 ms'}`), delay(2000).then(() => 'still waiting')]);
    await delay(50);
    expect({ first, next, unhandled }).toEqual({ first: 'Query read timeout', next: 'failed in under 200 ms', unhandled: [] });
  }, 15_000);
});

/**
 * `dropConnection` on a checked-out client of a pool of one (a Lambda's): whether it is released
 * before or after its socket has closed, with another checkout waiting or not, the pool discards
 * it and lends a new connection, and never holds more than its one slot.
 */
describe('a pool of one whose client is dropped while checked out', () => {
  it('discards it every time, lends a working connection next, and leaks no slot', async () => {
    const url = Object.values(env.urls.shards)[0] as string;
    const pool = new pg.Pool({ connectionString: url, max: 1, Client: ListeningClient, connectionTimeoutMillis: 5000 });
    const seen: string[] = [];
    let most = 0;
    try {
      for (let i = 0; i < 60; i++) {
        const client = await pool.connect();
        await client.query('select 1');
        const variant = i % 3;
        if (variant === 0) {
          // Released at once, before the socket's close event comes round.
          dropConnection(client);
          client.release();
        } else if (variant === 1) {
          // Released once the socket has closed.
          dropConnection(client);
          await delay(20);
          client.release();
        } else {
          // Another checkout waits for the pool's one slot when it is released.
          const waiting = pool.connect();
          dropConnection(client);
          client.release();
          const next = await Promise.race([waiting, delay(3000).then(() => undefined)]);
          seen.push(next === undefined ? `${i}: the waiting checkout got nothing` : 'ok');
          if (next) {
            await next.query('select 1').then(
              () => undefined,
              (e: Error) => seen.push(`${i}: the waiting checkout's client failed: ${e.message}`),
            );
            next.release();
          }
        }
        most = Math.max(most, pool.totalCount);
        await pool.query('select 1').then(
          () => undefined,
          (e: Error) => seen.push(`${i}: the next statement failed: ${e.message}`),
        );
        most = Math.max(most, pool.totalCount);
      }
      await delay(50);
      expect({ failures: seen.filter((s) => s !== 'ok'), most, total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount, unhandled }).toEqual({
        failures: [],
        most: 1,
        total: 1,
        idle: 1,
        waiting: 0,
        unhandled: [],
      });
    } finally {
      await pool.end();
    }
  }, 60_000);
});
