/**
 * The rebalance check against the mover's unit-size limit (`maxUnitRows`: the most rows, in any
 * one table, of a unit one move takes; the mover refuses a larger one, 422 `too-large`). A plan
 * that proposes such a unit would send whoever follows it to a refusal: the check must plan within
 * the same limit, counted as the mover counts it, propose only moves the mover then accepts, and
 * say which units it left out and why.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MoveRequestError } from '../../../functions/adapters/postgres/mover.js';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import type { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { keysInSlot, seedKeys, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { rebalancePools, rebalancePort } from './fixtures/rebalance-port.js';

let env: MoveEnv;
let pools: ShardPools;
let inspector: ShardInspector;
/** Slots of shard_a: one with 4 users and 40 documents, four with 1 user and 2 documents each. */
let big: number;
let small: number[];
/** Another slot of shard_a, left empty until the last test. */
let spare: number;
const LIMIT = 20;

beforeAll(async () => {
  env = await startMoveEnv();
  pools = rebalancePools(env);
  inspector = new ShardInspector(pools, { timeoutMs: 5000 });
  const map = await env.slotMaps.current();
  const owned = map.assignments.flatMap((shard, slot) => (shard === 'shard_a' ? [slot] : [])).slice(0, 6);
  spare = owned.pop() as number;
  [big, ...small] = owned as [number, ...number[]];
  const source = env.shards.get('shard_a');
  if (!source) throw new Error('no shard_a in the move env');
  await seedUsers(source, big, keysInSlot(big, 4), 10);
  for (const slot of small) await seedUsers(source, slot, keysInSlot(slot, 1), 2);
}, 180_000);
afterAll(async () => {
  await pools?.end();
  await env?.stop();
});

describe("the rebalance check within the mover's maxUnitRows", () => {
  it("GET /shards/rebalance-check plans within the maxUnitRows of the mover the API starts moves with", async () => {
    const port = rebalancePort(env, { slotMap: await env.slotMaps.current(), inspector, mover: env.mover({ maxUnitRows: LIMIT }) });
    const check = await port.rebalanceCheck({ by: 'rows' });
    expect(check.needed).toBe(true);
    expect(check.moves.length).toBeGreaterThan(0);
    expect(check.moves.map((m) => m.unit.id)).not.toContain(String(big));
    expect(check.summary.unresolved.join('\n')).toContain(`slot ${big} on shard_a (40 rows in one table)`);
  });

  it('proposes no unit the mover refuses as too large, only moves it accepts, and names the unit it left out', async () => {
    const slotMap = await env.slotMaps.current();
    // 56 rows on shard_a, none on shard_b: the big slot (44 rows, 40 of them documents) alone would halve the gap best.
    const check = await inspector.rebalanceCheck({ slotMap, by: 'rows', maxUnitRows: LIMIT });
    const mover = env.mover({ maxUnitRows: LIMIT });
    await expect(mover.plan({ kind: 'slot', slot: big, to: 'shard_b', createdBy: 'test' })).rejects.toMatchObject({ problem: 'too-large' } satisfies Partial<MoveRequestError>);

    expect(check.needed).toBe(true);
    expect(check.moves.map((m) => m.unit.id)).not.toContain(String(big));
    expect(check.moves.length).toBeGreaterThan(0);
    for (const m of check.moves) {
      const job = await mover.plan({ kind: 'slot', slot: Number(m.unit.id), to: m.to, createdBy: 'test' });
      expect(job.state).toBe('planned');
      await mover.requestCancel(job.id);
    }
    expect(check.summary.unresolved.join('\n')).toContain(`slot ${big} on shard_a (40 rows in one table)`);
    expect(check.summary.unresolved.join('\n')).toContain(`at most ${LIMIT} rows in any one table`);
  });

  it('counts a unit as the mover does, table by table: a slot of 44 rows but at most 40 in one table is proposed under a limit of 40', async () => {
    const slotMap = await env.slotMaps.current();
    const check = await inspector.rebalanceCheck({ slotMap, by: 'rows', maxUnitRows: 40 });
    expect(check.moves.map((m) => m.unit.id)).toContain(String(big));
  });

  it("counts a unit's Idempotency-Key records as the mover does: a slot of 3 users and documents but 30 key records is not proposed under a limit of 20", async () => {
    const source = env.shards.get('shard_a');
    if (!source) throw new Error('no shard_a in the move env');
    // Records outlive their documents (24 h): an owner who created and deleted many keyed documents.
    const owner = keysInSlot(spare, 1);
    await seedUsers(source, spare, owner, 2);
    await seedKeys(source, spare, owner, 30);
    const slotMap = await env.slotMaps.current();
    const census = await inspector.rebalanceCensus({ slotMap });
    const check = await inspector.rebalanceCheck({ slotMap, by: 'rows', maxUnitRows: LIMIT });
    const mover = env.mover({ maxUnitRows: LIMIT });
    await expect(mover.plan({ kind: 'slot', slot: spare, to: 'shard_b', createdBy: 'test' })).rejects.toMatchObject({ problem: 'too-large' } satisfies Partial<MoveRequestError>);

    expect(census.units.find((u) => u.kind === 'slot' && u.id === String(spare))).toMatchObject({ maxTableRows: 30 });
    expect(check.moves.map((m) => m.unit.id)).not.toContain(String(spare));
  });
});
