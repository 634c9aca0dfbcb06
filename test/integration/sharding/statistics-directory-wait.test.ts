/**
 * GET /shards/statistics reads the directory lazily (only when a count is exact: `?exact=true`, or
 * a table never analysed). Read from inside a shard's measurement, a slow catalog (the directory
 * table locked, 100,000 pins read a page at a time) spent the shard's own deadline: the shards
 * were reported unreachable (`timeout`) though each answered at once, and the report said nothing
 * of the catalog. The directory is now read outside every shard's deadline.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector, type InspectionFailure } from '../../../functions/adapters/postgres/shard-inspector.js';
import type { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { rebalancePools, rebalancePort } from './fixtures/rebalance-port.js';

/** The inspector's per-node deadline (ms); the directory is held locked longer than this. */
const TIMEOUT_MS = 800;

let env: MoveEnv;
let pools: ShardPools;
let port: ScalingApiPort;

beforeAll(async () => {
  env = await startMoveEnv();
  pools = rebalancePools(env);
  const map = await env.slotMaps.current();
  const slot = map.assignments.indexOf('shard_a');
  const source = env.shards.get('shard_a');
  if (!source) throw new Error('no shard_a in the move env');
  await seedUsers(source, slot, keysInSlot(slot, 2), 1);
  port = rebalancePort(env, { slotMap: map, inspector: new ShardInspector(pools, { timeoutMs: TIMEOUT_MS, wholeTableBudgetMs: TIMEOUT_MS }) });
}, 180_000);
afterAll(async () => {
  await pools?.end();
  await env?.stop();
});

/** Runs `read` while another session holds the catalog's directory table locked, releasing it after twice the inspector's deadline. */
async function withDirectoryLocked<T>(read: () => Promise<T>): Promise<T> {
  const holder = await env.catalog.connect();
  holder.on('error', () => undefined);
  try {
    await holder.query('begin');
    await holder.query('lock table catalog.shard_directory in access exclusive mode');
    const answer = read().then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
    await new Promise((resolve) => setTimeout(resolve, TIMEOUT_MS * 2));
    await holder.query('rollback');
    const settled = await answer;
    if ('error' in settled) throw settled.error;
    return settled.value;
  } finally {
    holder.release();
  }
}

describe('GET /shards/statistics while the catalog\'s directory table is locked', () => {
  it('estimates with a table never analysed: no shard is reported unreachable for the catalog\'s wait', async () => {
    const { rows } = await (env.shards.get('shard_a') as NonNullable<ReturnType<MoveEnv['shards']['get']>>).query<{ n: number }>(
      `select count(*)::int as n from pg_class where relname in ('users', 'documents') and reltuples < 0`,
    );
    expect(rows[0]?.n).toBeGreaterThan(0);

    const report = await withDirectoryLocked(() => port.shardStatistics({ exact: false }));

    expect(report.unreachable).toEqual([]);
    expect(report.shards.find((s) => s.shardId === 'shard_a')?.users).toBe(2);
  });

  it('exact counts: no shard is reported unreachable for the catalog\'s wait', async () => {
    const report = await withDirectoryLocked(() => port.shardStatistics({ exact: true }));

    expect(report.unreachable).toEqual([]);
    expect(report.shards.find((s) => s.shardId === 'shard_a')?.users).toBe(2);
  });
});

describe('the statistics\' directory reader failing', () => {
  it('fails an estimate that needs it (a table never analysed) with the directory\'s own error, no shard blamed for it', async () => {
    const failures: InspectionFailure[] = [];
    const inspector = new ShardInspector(pools, { timeoutMs: 5000, onFailure: (f) => failures.push(f) });
    const map = await env.slotMaps.current();
    const failing = (): Promise<never> => Promise.reject(new Error('the shard directory cannot be read right now'));

    await expect(inspector.statistics({ slotMap: map, directory: failing })).rejects.toThrow('the shard directory cannot be read right now');
    expect(failures.filter((f) => f.shardId !== undefined)).toEqual([]);
  });
});
