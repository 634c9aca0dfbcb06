/**
 * The deadline a caller gives a shard read or write (`deadlineMs`, `deadlineAt`) is held by Node
 * timers, which wait at most 2^31 - 1 ms and run a longer (or NaN) one after 1 ms: such a
 * deadline would end every request at once, blamed on the deadline. It is refused instead, with
 * an error naming the option, before anything is sent; a long valid one is honoured.
 */
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMigrations } from '../../functions/adapters/postgres/migrate.js';
import { parseShardingConfig } from '../../functions/core/sharding/config.js';
import { InvalidDeadlineError, MAX_DEADLINE_MS } from '../../functions/adapters/postgres/deadline.js';
import { createShardReader } from '../../functions/adapters/postgres/read-transaction.js';
import { ReplicaReader } from '../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../functions/adapters/postgres/shard-pools.js';
import { createShardWriter, type WriteRouter } from '../../functions/adapters/postgres/write-transaction.js';
import { startTestPostgres, type TestPostgres } from '../support/postgres.js';

let server: TestPostgres;
let pools: ShardPools;
let reader: ReplicaReader;
const router: WriteRouter = { routeForWrite: () => Promise.resolve({ shardId: 's1', slot: 1, version: 1, viaDirectory: false }) };
beforeAll(async () => {
  server = await startTestPostgres();
  pools = ShardPools.fromConfig(parseShardingConfig({ shards: [{ shard_id: 's1', database_url: server.url }], default_shard: 's1' }), { max: 1 });
  reader = new ReplicaReader(pools, { bounds: { maxLagSeconds: 60, maxLagBytes: 1 << 24, maxStateAgeMs: 120_000 }, intervalMs: 60_000 });
  await runMigrations(pools.primary('s1').pool, 'shard', resolve(dirname(fileURLToPath(import.meta.url)), '../../functions/adapters/postgres/migrations/shard'));
}, 60_000);
afterAll(async () => {
  reader?.stop();
  await pools?.end();
  await server?.stop();
});

const outcome = (work: Promise<unknown>): Promise<string> => work.then(() => 'ok', (e: unknown) => (e instanceof InvalidDeadlineError ? `${e.name}: ${e.message}` : `${(e as Error).name}: ${(e as Error).message}`));

describe('a request deadline no timer can hold', () => {
  it.each([
    { deadline: 'NaN', ms: Number.NaN },
    { deadline: 'infinite', ms: Number.POSITIVE_INFINITY },
    { deadline: '30 days', ms: 30 * 86_400_000 },
  ])('is refused ($deadline), naming the option, by a write, a read and a replica-reader query', async ({ ms }) => {
    const writer = createShardWriter({ router, primaries: new Map([['s1', pools.primary('s1').pool]]) });
    const reads = createShardReader({ router, reader });
    const write = await outcome(writer.withShardWrite('k', ({ client }) => client.query('select 1'), { deadlineMs: ms }));
    const read = await outcome(reads.withShardRead('k', ({ client }) => client.query('select 1'), { deadlineMs: ms }));
    const query = await outcome(reader.query('s1', 'select 1', [], { deadlineAt: Date.now() + ms }));

    expect({ write, read, query }).toEqual({
      write: expect.stringMatching(/^InvalidDeadlineError: deadlineMs must be a finite number of ms, at most 2147483647 \(about 24\.8 days\), not /) as unknown as string,
      read: expect.stringMatching(/^InvalidDeadlineError: deadlineMs must be a finite number of ms/) as unknown as string,
      query: expect.stringMatching(/^InvalidDeadlineError: deadlineAt \(from now\) must be a finite number of ms/) as unknown as string,
    });
  });

  it('holds the longest one it can, like any other', async () => {
    const writer = createShardWriter({ router, primaries: new Map([['s1', pools.primary('s1').pool]]) });
    const reads = createShardReader({ router, reader });
    const ms = MAX_DEADLINE_MS - 1000;
    const results = [
      await outcome(writer.withShardWrite('k', ({ client }) => client.query('select pg_sleep(0.05)'), { deadlineMs: ms })),
      await outcome(reads.withShardRead('k', ({ client }) => client.query('select pg_sleep(0.05)'), { deadlineMs: ms })),
      await outcome(reader.query('s1', 'select pg_sleep(0.05)', [], { deadlineAt: Date.now() + ms })),
    ];
    expect(results).toEqual(['ok', 'ok', 'ok']);
  });

  it('holds the longest one it accepts, MAX_DEADLINE_MS itself (its grace and the server-side timeouts past it included)', async () => {
    const writer = createShardWriter({ router, primaries: new Map([['s1', pools.primary('s1').pool]]) });
    const reads = createShardReader({ router, reader });
    const results = [
      await outcome(writer.withShardWrite('k', ({ client }) => client.query('select pg_sleep(0.05)'), { deadlineMs: MAX_DEADLINE_MS })),
      await outcome(reads.withShardRead('k', ({ client }) => client.query('select pg_sleep(0.05)'), { deadlineMs: MAX_DEADLINE_MS })),
      await outcome(reader.query('s1', 'select pg_sleep(0.05)', [], { deadlineAt: Date.now() + MAX_DEADLINE_MS })),
    ];
    expect(results).toEqual(['ok', 'ok', 'ok']);
  });
});
