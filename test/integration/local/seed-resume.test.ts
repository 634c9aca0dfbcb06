/**
 * Completing the demo seeding of a first start that was cut off (the process killed part-way):
 * the next start completes what the first was asked for, whatever its own `--seed-users` says
 * (that flag is for a fresh start; left out, it is 200).
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ShardWriter } from '../../../functions/adapters/postgres/write-transaction.js';
import { SeedMarkerError, seedDemoData } from '../../../functions/local/seed.js';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

/** A writer that dies (throws) at its `after + 1`-th write, as a process killed part-way through a seeding. */
function dyingAfter(writer: ShardWriter, after: number): ShardWriter {
  let writes = 0;
  return {
    withShardWrite: (key, fn, options) => {
      if (writes++ >= after) return Promise.reject(new Error('the process was killed'));
      return writer.withShardWrite(key, fn, options);
    },
  };
}

describe('completing a seeding that was cut off', () => {
  let docs: DocumentsApi;
  let dir: string;

  beforeAll(async () => {
    docs = await startDocumentsApi();
    dir = await mkdtemp(join(tmpdir(), 'ca-dms-seed-'));
  });
  afterAll(async () => {
    await docs?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("completes the users and documents the cut-off seeding was asked for, not the restart's", async () => {
    const pendingMarker = join(dir, 'seeding');
    const { writer, primaries } = docs.sharding;
    const cut = await seedDemoData({ writer: dyingAfter(writer, 4), primaries, users: 12, documentsPerUser: 2, concurrency: 1, pendingMarker }).catch((e: unknown) => e);
    const marker = await readFile(pendingMarker, 'utf8');

    const restart = await seedDemoData({ writer, primaries, users: 3, documentsPerUser: 5, pendingMarker });

    expect((cut as Error).message).toBe('the process was killed');
    expect(marker).toBe('seeding 12 users, 2 documents each\n');
    expect(restart.seeded).toBe(true);
    expect(Object.values(restart.usersByShard).reduce((a, b) => a + b, 0)).toBe(12);
    expect(restart.documents).toBe(24);
    expect(existsSync(pendingMarker)).toBe(false);
  });

  it('refuses a marker asking for more users or documents than a start may (edited by hand), naming the file, and writes nothing', async () => {
    const { writer, primaries } = docs.sharding;
    const outcomes: unknown[] = [];
    for (const text of ['seeding 1000000000000000000000000 users, 5 documents each\n', 'seeding 3 users, 50000000 documents each\n']) {
      const pendingMarker = join(dir, 'absurd');
      await writeFile(pendingMarker, text);
      // Stands for a seeding that would run for hours (or for ever: Infinity users): its first write fails at once.
      outcomes.push(await seedDemoData({ writer: dyingAfter(writer, 0), primaries, users: 3, documentsPerUser: 5, pendingMarker }).catch((e: unknown) => e));
      outcomes.push(await readFile(pendingMarker, 'utf8'));
    }

    expect(outcomes[0]).toBeInstanceOf(SeedMarkerError);
    expect((outcomes[0] as Error).message).toMatch(/absurd, asks for 1000000000000000000000000 users with 5 documents each, beyond what a start may ask for \(at most 100000 users, 1000 documents each\)/);
    expect(outcomes[1]).toBe('seeding 1000000000000000000000000 users, 5 documents each\n');
    expect(outcomes[2]).toBeInstanceOf(SeedMarkerError);
    expect((outcomes[2] as Error).message).toContain('asks for 3 users with 50000000 documents each');
    expect(outcomes[3]).toBe('seeding 3 users, 50000000 documents each\n');
  });
});
