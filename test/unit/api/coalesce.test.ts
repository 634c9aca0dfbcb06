/**
 * Coalesced reads: concurrent callers share runs, and no caller is answered by a run that began
 * before it called.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { coalesced } from '../../../functions/api/coalesce.js';

describe('coalesced', () => {
  it('serves a burst of concurrent callers with two runs: the one under way, then one for everyone who came during it', async () => {
    let runs = 0;
    const read = coalesced(async () => {
      runs++;
      await new Promise((r) => setTimeout(r, 5));
      return runs;
    });

    const first = read();
    const burst = await Promise.all(Array.from({ length: 50 }, () => read()));

    expect(await first).toBe(1);
    expect(new Set(burst)).toEqual(new Set([2]));
    expect(runs).toBe(2);
  });

  it('never answers a caller from a run that began before its call (any interleaving of calls and changes)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.record({ wait: fc.integer({ min: 0, max: 3 }), change: fc.boolean() }), { minLength: 1, maxLength: 30 }), async (steps) => {
        let state = 0;
        const read = coalesced(async () => {
          const seen = state;
          await new Promise((r) => setTimeout(r, 1));
          return seen;
        });
        const checks: Promise<void>[] = [];
        for (const step of steps) {
          if (step.change) state++;
          const atCall = state;
          checks.push(read().then((got) => expect(got).toBeGreaterThanOrEqual(atCall)));
          for (let i = 0; i < step.wait; i++) await Promise.resolve();
        }
        await Promise.all(checks);
      }),
      { numRuns: 100 },
    );
  });

  it('passes a failure to the callers of that run only; the next caller starts a fresh run', async () => {
    let fail = true;
    const read = coalesced(async () => {
      if (fail) throw new Error('down');
      return 'up';
    });

    await expect(read()).rejects.toThrow('down');
    fail = false;

    await expect(read()).resolves.toBe('up');
  });
});
