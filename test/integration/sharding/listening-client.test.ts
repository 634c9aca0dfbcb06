/**
 * ListeningClient closes a connection whose statement passed the client's `query_timeout` (the
 * server went silent), whatever form the query took, and adds no unhandled rejection.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ListeningClient } from '../../../functions/adapters/postgres/listening-client.js';
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
