/**
 * bench:moves (issue #15) showed the slowest writes "before copying" (489-1006 ms, 0.8-1.3 s before
 * `copying_at`, each ~60 ms after the one before): they were the writers' own first writes, the
 * warm-up `Workload.warm` waits for, counted with the move's. The result now says when the writers
 * were warm (`warmAtMs`, on the clock of `startedAtMs`), so that the warm-up is told apart: every
 * writer's first write started before it, and the writes after it are the ones measured. Checked
 * without a database: a writer that answers each write at once.
 */
import { describe, expect, it } from 'vitest';
import type { ShardWriter } from '../../../functions/adapters/postgres/write-transaction.js';
import { startWorkload, WARM_UP_WRITES } from './fixtures/workload.js';

/** A writer whose every write finds its one row and answers on the next turn of the event loop. */
function instantWriter(): ShardWriter & { firstStarts: Map<string, number> } {
  const firstStarts = new Map<string, number>();
  const client = { query: async () => ({ rowCount: 1, rows: [] }) };
  return {
    firstStarts,
    async withShardWrite(key: string, fn: (ctx: { client: typeof client; slot: number }) => Promise<unknown>) {
      const owner = key.toLowerCase();
      if (!firstStarts.has(owner)) firstStarts.set(owner, performance.timeOrigin + performance.now());
      await new Promise((r) => setImmediate(r));
      const value = await fn({ client, slot: 7 });
      return { shardId: 'shard_a', attempts: 1, value, readToken: { shardId: 'shard_a', lsn: '0/0', timeline: 1 } };
    },
  } as unknown as ShardWriter & { firstStarts: Map<string, number> };
}

describe('the writers warm-up', () => {
  it('is dated, so that each writer\'s first write is told apart from the writes measured after it', async () => {
    const owners = Array.from({ length: 8 }, (_, i) => `00000000-0000-4000-8000-00000000000${i}`);
    const documents = new Map<string, number>();
    const ownerOf = new Map<string, string>();
    owners.forEach((owner, i) => {
      for (let d = 0; d < 3; d++) {
        const id = `10000000-0000-4000-8000-0000000000${i}${d}`;
        documents.set(id, 0);
        ownerOf.set(id, owner);
      }
    });
    const writer = instantWriter();
    const load = startWorkload(writer, { owners, documents, ownerOf, writers: 4 });
    await load.warm;
    await new Promise((r) => setTimeout(r, 20));
    const result = await load.stop();
    expect(Number.isFinite(result.warmAtMs)).toBe(true);
    // Each writer's first write (writer w writes for owners w and w + 4) started before the writers were warm ...
    for (let w = 0; w < 4; w++) {
      const first = Math.min(...[owners[w], owners[w + 4]].map((o) => writer.firstStarts.get(o as string) ?? Number.POSITIVE_INFINITY));
      expect(first).toBeLessThanOrEqual(result.warmAtMs);
    }
    // ... and so did its first WARM_UP_WRITES writes (here every one is measured: no keyed writes),
    // and the writes measured after the warm-up are the rest.
    const warmUp = result.startedAtMs.filter((at) => at < result.warmAtMs).length;
    expect(warmUp).toBeGreaterThanOrEqual(4 * WARM_UP_WRITES);
    expect(warmUp).toBeLessThanOrEqual(4 * (WARM_UP_WRITES + 1));
    expect(result.startedAtMs.length - warmUp).toBeGreaterThan(0);
    // Every document stays with its own owner's writer: the model holds every seeded document.
    for (const id of documents.keys()) expect(result.live.has(id) || result.deleted.has(id) || result.uncertain.has(id)).toBe(true);
  });
});
