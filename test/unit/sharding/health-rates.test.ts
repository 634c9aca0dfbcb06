import { describe, expect, it } from 'vitest';
import { databaseRates, type DatabaseCounters } from '../../../functions/core/sharding/health.js';

const base: DatabaseCounters = {
  sampledAtMs: 1_000_000,
  statsReset: null,
  xactCommit: 1000,
  xactRollback: 10,
  blksRead: 100,
  blksHit: 900,
  tupReturned: 5000,
  tupFetched: 1000,
  tupInserted: 100,
  tupUpdated: 50,
  tupDeleted: 10,
  deadlocks: 0,
  tempFiles: 0,
  tempBytes: 0,
  conflicts: 0,
};

describe('pg_stat_database rates', () => {
  it('has no rates on the first sample', () => {
    expect(databaseRates(undefined, base)).toBeNull();
  });

  it('divides counter deltas by the seconds between samples', () => {
    const next = { ...base, sampledAtMs: base.sampledAtMs + 10_000, xactCommit: 1500, xactRollback: 20, tupInserted: 200, tempBytes: 10_485_760 };

    const rates = databaseRates(base, next);

    expect(rates).toMatchObject({ intervalSeconds: 10, commitsPerSecond: 50, rollbacksPerSecond: 1, rowsWrittenPerSecond: 10, tempBytesPerSecond: 1_048_576 });
  });

  it('computes the cache hit ratio over the interval, not since the counters were reset', () => {
    const next = { ...base, sampledAtMs: base.sampledAtMs + 1000, blksRead: 150, blksHit: 950 };

    expect(databaseRates(base, next)).toMatchObject({ cacheHitRatio: 0.5, blockRequests: 100 });
  });

  it('has no cache hit ratio for an interval without block requests', () => {
    expect(databaseRates(base, { ...base, sampledAtMs: base.sampledAtMs + 1000 })?.cacheHitRatio).toBeNull();
  });

  it('counts the deadlocks of the interval', () => {
    expect(databaseRates(base, { ...base, sampledAtMs: base.sampledAtMs + 5000, deadlocks: 2 })?.deadlocks).toBe(2);
  });

  it('has no rates after a statistics reset', () => {
    expect(databaseRates(base, { ...base, sampledAtMs: base.sampledAtMs + 1000, statsReset: '2026-11-27 09:00:00+00' })).toBeNull();
  });

  it('has no rates when a counter went backwards (the server restarted)', () => {
    expect(databaseRates(base, { ...base, sampledAtMs: base.sampledAtMs + 1000, xactCommit: 3 })).toBeNull();
  });

  it('has no rates when no time passed between samples', () => {
    expect(databaseRates(base, { ...base })).toBeNull();
  });
});
