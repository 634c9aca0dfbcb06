/**
 * The move workload's fixtures (workload.ts, workload-process.ts) refuse what they cannot run and
 * leave nothing waiting without a bound (issue #15's reviews). Checked without a database: a TCP
 * server that never answers stands in for the databases.
 */
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { ShardWriter } from '../../../functions/adapters/postgres/write-transaction.js';
import { startWorkload, type WorkloadOptions } from './fixtures/workload.js';
import { startWorkloadProcess } from './fixtures/workload-process.js';

const OWNER_A = '5f0c8a52-2f8e-4c44-9d1f-4d0a6b7e3c11';
const OWNER_B = '9b7e2d14-6a3c-4f0e-8b25-1c9d0e7f4a22';

/** A writer whose writes never end (none is made by the cases refused up front). */
const neverWrites = { withShardWrite: () => new Promise<never>(() => undefined) } as unknown as ShardWriter;

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};
afterEach(() => {
  process.off('unhandledRejection', onUnhandled);
  unhandled.length = 0;
});

describe('startWorkload', () => {
  it.each<[string, Partial<WorkloadOptions>, RegExp]>([
    ['more writers than owners', { owners: [OWNER_A], writers: 2 }, /writers: 2 writers need at least as many owners .* but 1 were given/],
    ['no owner for its one writer', { owners: [], writers: 1 }, /writers: 1 writers need at least as many owners/],
    ['a fraction of a writer', { owners: [OWNER_A, OWNER_B], writers: 1.5 }, /writers: must be a whole number/],
    ['a negative count of writers', { owners: [OWNER_A], writers: -1 }, /writers: must not be negative/],
    ['an owner given twice, in two spellings', { owners: [OWNER_A, OWNER_A.toUpperCase()], writers: 2 }, /owners: .* is given twice/],
    ['a new user who is an owner already', { owners: [OWNER_A], newUsers: [OWNER_A], writers: 1 }, /newUsers: .* is given twice/],
  ])('refuses %s up front, before any writer starts', (_, given, message) => {
    // Before: the writers started; with more writers than owners, one wrote for `undefined` and threw.
    expect(() => startWorkload(neverWrites, { owners: [], documents: new Map(), ownerOf: new Map(), writers: 0, ...given })).toThrow(message);
  });

  it('leaves no rejection unhandled when a writer throws outside its try: warm and stop() fail with it', async () => {
    process.on('unhandledRejection', onUnhandled);
    const broken = new Error('ownerOf broke');
    // Answers the up-front split of the documents among the writers, then breaks inside the
    // writer's own loop (outside its writes' try).
    let calls = 0;
    const ownerOf = new (class extends Map<string, string> {
      override get(): string | undefined {
        calls += 1;
        if (calls > 1) throw broken;
        return OWNER_A;
      }
    })();
    const load = startWorkload(neverWrites, { owners: [OWNER_A], documents: new Map([['d1', 0]]), ownerOf, writers: 1 });
    // Node reports an unhandled rejection once the microtasks have run: a few turns later.
    for (let i = 0; i < 5; i += 1) await delay(10);
    // Before: the writer's rejection went unhandled until stop().
    expect(unhandled).toEqual([]);
    await expect(load.warm).rejects.toBe(broken);
    await expect(load.stop()).rejects.toBe(broken);
  });
});

describe('startWorkloadProcess', () => {
  it("fails at startTimeoutMs, saying so, when the writers' first writes never end", async () => {
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined);
    });
    await new Promise<void>((done) => silent.listen(0, '127.0.0.1', done));
    const url = `postgres://nobody:nothing@127.0.0.1:${(silent.address() as net.AddressInfo).port}/nothing`;
    try {
      const starting = startWorkloadProcess({ catalog: url, shards: { shard_a: url } }, { owners: [OWNER_A], documents: new Map(), ownerOf: new Map(), writers: 1, reader: false }, { startTimeoutMs: 3000 });
      const outcome = await Promise.race([
        starting.then(
          () => 'started',
          (e: Error) => e.message,
        ),
        // Before: the parent waited for `started` for ever.
        delay(30_000).then(() => 'still waiting after 30 s'),
      ]);
      expect(outcome).toMatch(/^the workload process did not answer 'started' within 3000 ms .*; it was killed$/);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((done) => silent.close(done));
    }
  }, 60_000);

  it('refuses impossible options before it forks', async () => {
    await expect(startWorkloadProcess({ catalog: 'postgres://x', shards: {} }, { owners: [], documents: new Map(), ownerOf: new Map(), writers: 3, reader: false })).rejects.toThrow(
      /invalid workload: writers: 3 writers need at least as many owners/,
    );
    await expect(startWorkloadProcess({ catalog: 'postgres://x', shards: {} }, { owners: [], documents: new Map(), ownerOf: new Map(), writers: 0, reader: false }, { startTimeoutMs: 0 })).rejects.toThrow(
      /startWorkloadProcess: startTimeoutMs must be positive/,
    );
  });
});
