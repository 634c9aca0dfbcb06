/**
 * 0312b85's review: `Workload.warm` settles once every writer's first write has been answered, and
 * the writers' process answers `started` only then. A workload of no writers has no first write:
 * its `warm` never settled, so the process would never have answered `started` (its parent waits
 * with no bound). Checked without a database: with no writer, nothing is written.
 */
import { describe, expect, it } from 'vitest';
import type { ShardWriter } from '../../../functions/adapters/postgres/write-transaction.js';
import { startWorkload } from './fixtures/workload.js';

describe('a workload of no writers', () => {
  it('is warm at once, before its stop has settled', async () => {
    const load = startWorkload({} as ShardWriter, { owners: [], documents: new Map(), ownerOf: new Map(), writers: 0 });
    // Raced against the stop (which settles at once, no writer to wait for): before, `warm` never settled.
    const first = await Promise.race([load.warm.then(() => 'warm'), load.stop().then(() => 'stopped')]);
    expect(first).toBe('warm');
  });
});
