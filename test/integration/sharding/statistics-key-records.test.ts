/**
 * Shard statistics and the rebalance check with `Idempotency-Key` records (`document_keys`, shard
 * migration 021): rows of the owner's unit that a move takes along, so they are part of what a
 * shard holds, in its rows and its live bytes, in the estimated and the exact statistics and in
 * the rebalance check alike. A shard holding many key records (owners who created and deleted
 * many keyed documents) must not look smaller than it is.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector, type StatisticsReport } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { SlotMap } from '../../../functions/core/sharding/slot-map.js';
import { keysInSlot, seedKeys, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/** shard_a: owners without documents (deleted since), each with KEYS_PER_OWNER key records. */
const KEY_OWNERS = 10;
const KEYS_PER_OWNER = 20;
/** shard_b: owners with one document each and no key record. */
const DOC_OWNERS = 50;

let env: MoveEnv;
let pools: ShardPools;
let inspector: ShardInspector;
let slotMap: SlotMap;
let keySlot: number;

const shardOf = (report: StatisticsReport, shardId: string) => report.shards.find((s) => s.shardId === shardId);

beforeAll(async () => {
  env = await startMoveEnv();
  pools = ShardPools.fromConfig({ shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url, read_replicas: [] })) }, { max: 2 });
  inspector = new ShardInspector(pools, { timeoutMs: 5000 });
  slotMap = await env.slotMaps.current();
  keySlot = slotMap.assignments.indexOf('shard_a');
  // Over several slots, so that a move of some of them could even out shard_b and a shard_a it took for small.
  const docSlots = slotMap.assignments.flatMap((owner, slot) => (owner === 'shard_b' ? [slot] : [])).slice(0, 5);
  const [a, b] = [env.shards.get('shard_a'), env.shards.get('shard_b')];
  if (!a || !b) throw new Error('the move env has no shard_a or shard_b');
  const owners = keysInSlot(keySlot, KEY_OWNERS);
  await seedUsers(a, keySlot, owners, 0);
  await seedKeys(a, keySlot, owners, KEYS_PER_OWNER);
  for (const slot of docSlots) await seedUsers(b, slot, keysInSlot(slot, DOC_OWNERS / docSlots.length), 1);
}, 180_000);
afterAll(async () => {
  await pools?.end();
  await env?.stop();
});

describe('Idempotency-Key records in the shard statistics and the rebalance check', () => {
  it('counts key records in the exact statistics: their table, the rows and live bytes of the shard, and the totals', async () => {
    const stats = await inspector.statistics({ exact: true, slotMap });
    const a = shardOf(stats, 'shard_a');
    const keys = a?.tables.find((t) => t.table === 'document_keys');

    expect(keys).toMatchObject({ rows: KEY_OWNERS * KEYS_PER_OWNER, method: 'exact' });
    expect(keys?.bytes).toBeGreaterThan(KEY_OWNERS * KEYS_PER_OWNER * 32);
    expect(a).toMatchObject({ users: KEY_OWNERS, documents: 0, rows: KEY_OWNERS + KEY_OWNERS * KEYS_PER_OWNER });
    expect(a?.bytes).toBe(a?.tables.reduce((n, t) => n + t.bytes, 0));
    expect(stats.totals.rows).toBe(KEY_OWNERS + KEY_OWNERS * KEYS_PER_OWNER + 2 * DOC_OWNERS);
    expect(shardOf(stats, 'shard_b')?.tables.find((t) => t.table === 'document_keys')).toMatchObject({ rows: 0 });
  });

  it('counts key records in the estimated statistics too, once the tables are analysed', async () => {
    for (const pool of env.shards.values()) await pool.query('analyze users, documents, document_keys');

    const estimated = await inspector.statistics({ slotMap });
    const exact = await inspector.statistics({ exact: true, slotMap });

    expect(shardOf(estimated, 'shard_a')?.tables.find((t) => t.table === 'document_keys')).toMatchObject({ rows: KEY_OWNERS * KEYS_PER_OWNER, method: 'estimate' });
    expect(shardOf(estimated, 'shard_a')?.rows).toBe(shardOf(exact, 'shard_a')?.rows);
    expect(Math.abs((shardOf(estimated, 'shard_a')?.bytes ?? 0) / (shardOf(exact, 'shard_a')?.bytes ?? 1) - 1)).toBeLessThan(0.1);
  });

  it('plans from the same rows and bytes as the exact statistics, key records included, and lists them in their slot', async () => {
    const stats = await inspector.statistics({ exact: true, slotMap });
    const [byRows, byBytes] = [await inspector.rebalanceCheck({ slotMap, by: 'rows' }), await inspector.rebalanceCheck({ slotMap, by: 'bytes' })];
    const units = await inspector.movableUnits(slotMap);

    expect(byRows.summary.shards.map((s) => s.before)).toEqual(stats.shards.map((s) => s.rows));
    expect(byBytes.summary.shards.map((s) => s.before)).toEqual(stats.shards.map((s) => s.bytes));
    const slot = units.find((u) => u.kind === 'slot' && u.id === String(keySlot));
    expect(slot).toMatchObject({ shardId: 'shard_a', rows: KEY_OWNERS + KEY_OWNERS * KEYS_PER_OWNER, maxTableRows: KEY_OWNERS * KEYS_PER_OWNER });
    expect(slot?.bytes).toBe(shardOf(stats, 'shard_a')?.bytes);
  });

  it('sees the shard of many key records as the heavier one: no move is proposed onto it', async () => {
    const check = await inspector.rebalanceCheck({ slotMap, by: 'rows' });

    expect(check.summary.shards.map((s) => [s.shardId, s.before])).toEqual([
      ['shard_a', KEY_OWNERS + KEY_OWNERS * KEYS_PER_OWNER],
      ['shard_b', 2 * DOC_OWNERS],
    ]);
    expect(check.needed).toBe(true);
    expect(check.moves.filter((m) => m.to === 'shard_a')).toEqual([]);
  });
});
