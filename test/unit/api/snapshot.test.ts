/**
 * Snapshots behind the cheap reads: one load per lifetime however many readers, stale served
 * while one refresh runs, an invalidation never answered with the state from before it.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { noneMatch, Snapshot, SnapshotMap } from '../../../functions/api/snapshot.js';

function counter(): { load: () => Promise<{ n: number }>; calls: () => number } {
  let n = 0;
  return {
    load: async () => ({ n: ++n }),
    calls: () => n,
  };
}

describe('Snapshot', () => {
  it('loads once for many readers within its lifetime, with the age and what is left of it', async () => {
    let now = 1_000_000;
    const c = counter();
    const snap = new Snapshot(c.load, { maxAgeMs: 5000, now: () => now });

    const reads = await Promise.all(Array.from({ length: 20 }, () => snap.read()));
    now += 2500;
    const later = await snap.read();

    expect(c.calls()).toBe(1);
    expect(new Set(reads.map((r) => r.etag)).size).toBe(1);
    expect(later).toMatchObject({ value: { n: 1 }, json: '{"n":1}', ageSeconds: 2, maxAgeSeconds: 2 });
    expect(Object.isFrozen(later.value)).toBe(true);
  });

  it('serves the old snapshot while it refreshes, then the new one with a new ETag', async () => {
    let now = 0;
    const c = counter();
    const snap = new Snapshot(c.load, { maxAgeMs: 1000, now: () => now });
    const first = await snap.read();

    now = 1500;
    const during = await snap.read();
    await new Promise((r) => setTimeout(r, 0));
    const after = await snap.read();

    expect(during.value).toEqual({ n: 1 });
    expect(after.value).toEqual({ n: 2 });
    expect(after.etag).not.toBe(first.etag);
  });

  it('after an invalidation, waits for a load begun after it', async () => {
    const c = counter();
    const snap = new Snapshot(c.load, { maxAgeMs: 60_000 });
    await snap.read();

    snap.invalidate();
    const next = await snap.read();

    expect(next.value).toEqual({ n: 2 });
  });

  it('keeps serving the last snapshot when a refresh fails, its age growing', async () => {
    let now = 0;
    let fail = false;
    const snap = new Snapshot(async () => {
      if (fail) throw new Error('shard down');
      return { ok: true };
    }, { maxAgeMs: 1000, now: () => now });
    await snap.read();

    fail = true;
    now = 3000;
    await snap.read();
    await new Promise((r) => setTimeout(r, 0));
    const read = await snap.read();

    expect(read).toMatchObject({ value: { ok: true }, ageSeconds: 3, maxAgeSeconds: 0 });
  });

  it('stops serving a snapshot whose refreshes fail once it is maxStaleMs old: the read answers the refresh error', async () => {
    let now = 0;
    let fail = false;
    const snap = new Snapshot(async () => {
      if (fail) throw new Error('shard_002 did not answer');
      return { plan: 'move slot 7' };
    }, { maxAgeMs: 1000, maxStaleMs: 3000, now: () => now });
    await snap.read();

    fail = true;
    now = 2999;
    const stillServed = await snap.read();
    await new Promise((r) => setTimeout(r, 0));
    now = 3000;
    const tooOld = snap.read();

    expect(stillServed).toMatchObject({ value: { plan: 'move slot 7' }, ageSeconds: 2 });
    await expect(tooOld).rejects.toThrow('shard_002 did not answer');
  });

  it('serves a fresh snapshot again once a refresh past maxStaleMs succeeds', async () => {
    let now = 0;
    let n = 0;
    const snap = new Snapshot(async () => ({ n: ++n }), { maxAgeMs: 1000, maxStaleMs: 3000, now: () => now });
    await snap.read();

    now = 10_000;
    const read = await snap.read();

    expect(read).toMatchObject({ value: { n: 2 }, ageSeconds: 0 });
  });

  it('gives a read that waited for its load the age the snapshot has when it is answered: the load time counts', async () => {
    let now = 0;
    let n = 0;
    // A census of big tables: 12 s from the start of the load to its answer.
    const snap = new Snapshot(async () => {
      now += 12_000;
      return { n: ++n };
    }, { maxAgeMs: 10_000, maxStaleMs: 30_000, now: () => now });

    const first = await snap.read();
    now = 50_000;
    const afterStale = await snap.read();

    expect(first).toMatchObject({ value: { n: 1 }, ageSeconds: 12, maxAgeSeconds: 0, reusableMs: 0 });
    expect(afterStale).toMatchObject({ value: { n: 2 }, ageSeconds: 12, maxAgeSeconds: 0, reusableMs: 0 });
  });

  it('gives a read that joined a load begun before it the age counted from that load\'s start', async () => {
    let now = 0;
    let release: (() => void) | undefined;
    const snap = new Snapshot(
      () =>
        new Promise<{ ok: boolean }>((resolve) => {
          release = () => resolve({ ok: true });
        }),
      { maxAgeMs: 10_000, now: () => now },
    );

    const first = snap.read();
    now = 4000;
    const joined = snap.read();
    now = 6000;
    release?.();

    expect(await first).toMatchObject({ ageSeconds: 6, maxAgeSeconds: 4 });
    expect(await joined).toMatchObject({ ageSeconds: 6, maxAgeSeconds: 4 });
  });
});

describe('Snapshot.reusableMs', () => {
  it('is exactly how long a read keeps giving the same answer: the same Age and max-age until then, another (or a due snapshot) at its end', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 60_000 }), fc.integer({ min: 0, max: 70_000 }), async (maxAgeMs, elapsedMs) => {
        let now = 0;
        const snap = new Snapshot(async () => ({ n: 1 }), { maxAgeMs, now: () => now });
        await snap.read();
        now = elapsedMs;
        const read = await snap.read();
        if (elapsedMs >= maxAgeMs) {
          expect(read.reusableMs).toBe(0);
          return;
        }
        expect(read.reusableMs).toBeGreaterThan(0);
        now = elapsedMs + read.reusableMs - 1;
        const last = await snap.read();
        now = elapsedMs + read.reusableMs;
        const next = await snap.read();

        expect([last.etag, last.ageSeconds, last.maxAgeSeconds]).toEqual([read.etag, read.ageSeconds, read.maxAgeSeconds]);
        expect(next.ageSeconds !== read.ageSeconds || next.maxAgeSeconds !== read.maxAgeSeconds || next.reusableMs === 0).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});

describe('noneMatch', () => {
  it('matches the tag in a list, a weak form of it, and *; nothing else', () => {
    expect(noneMatch('"a", "b"', '"b"')).toBe(true);
    expect(noneMatch('W/"b"', '"b"')).toBe(true);
    expect(noneMatch('*', '"b"')).toBe(true);
    expect(noneMatch('"c"', '"b"')).toBe(false);
    expect(noneMatch(undefined, '"b"')).toBe(false);
  });
});

describe('SnapshotMap', () => {
  it('keeps one snapshot per key, loaded once per lifetime, and at most maxKeys of them', async () => {
    const loads: string[] = [];
    const pages = new SnapshotMap<string>({ maxAgeMs: 60_000, maxKeys: 2, now: () => 0 });
    const load = (key: string) => async () => {
      loads.push(key);
      return key.toUpperCase();
    };

    const a = await pages.read('a', load('a'));
    await pages.read('a', load('a'));
    await pages.read('b', load('b'));
    await pages.read('c', load('c'));
    await pages.read('a', load('a'));

    expect(a.value).toBe('A');
    expect(loads).toEqual(['a', 'b', 'c', 'a']);
  });

  it('loads every key afresh after an invalidation', async () => {
    let n = 0;
    const pages = new SnapshotMap<number>({ maxAgeMs: 60_000, now: () => 0 });
    const load = async () => ++n;
    await pages.read('q', load);

    pages.invalidate();

    expect((await pages.read('q', load)).value).toBe(2);
  });

  it('names a value by the etag option when given one', async () => {
    const snap = new Snapshot(async () => ({ version: 7 }), { maxAgeMs: 1000, etag: (v) => `"v${v.version}"` });

    expect((await snap.read()).etag).toBe('"v7"');
  });
});
