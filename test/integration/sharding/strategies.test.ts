/**
 * Every routing configuration the sharding config allows, crossed with a move of each kind:
 * either the move is refused (the strategy does not route by that unit), or after it the key's
 * writes and reads, the route lookup and the rows on the shards all agree. Nothing is ever
 * stranded where routing will not look.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseShardingConfig, type ShardingConfig } from '../../../functions/core/sharding/config.js';
import { MoveRequestError } from '../../../functions/adapters/postgres/mover.js';
import { createShardReader } from '../../../functions/adapters/postgres/read-transaction.js';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { routerForWrites } from '../../../functions/adapters/postgres/write-transaction.js';
import { moveRoutingOf } from '../../../functions/core/sharding/move-machine.js';
import { keysInSlot, primaryReads, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

const VARIANTS: ReadonlyArray<{ name: string; config: Record<string, unknown>; refuses: ReadonlyArray<'slot' | 'directory'> }> = [
  { name: 'hash_based', config: { strategy: 'hash_based' }, refuses: [] },
  { name: 'hash_based without override_hash', config: { strategy: 'hash_based', directory: { override_hash: false } }, refuses: ['directory'] },
  { name: 'directory_based, fallback hash', config: { strategy: 'directory_based' }, refuses: [] },
  { name: 'directory_based, fallback reject', config: { strategy: 'directory_based', directory: { fallback: 'reject' } }, refuses: ['slot'] },
  { name: 'range_based', config: { strategy: 'range_based', ranges: [{ shard_id: 'shard_a', to: '8' }, { shard_id: 'shard_b', from: '8' }] }, refuses: ['slot', 'directory'] },
  // Every key goes to default_shard whatever the slot map or the directory says.
  { name: 'sharding disabled', config: { strategy: 'hash_based', enabled: false }, refuses: ['slot', 'directory'] },
];

const CASES = VARIANTS.flatMap((v) => (['slot', 'directory'] as const).map((kind) => ({ ...v, kind })));

function configOf(variant: Record<string, unknown>): ShardingConfig {
  return parseShardingConfig({ shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url })), default_shard: 'shard_a', ...variant });
}

/** The key's documents on every shard's primary. */
async function rowsByShard(user: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const [id, pool] of env.shards) out[id] = (await pool.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [user])).rows[0]?.n ?? 0;
  return out;
}

describe('every routing strategy x every move kind', () => {
  beforeAll(async () => {
    // Far more rows on shard_a than on shard_b, in slots no move case touches.
    for (let slot = 100; slot < 120; slot++) await seedUsers(env.shards.get('shard_a') as pg.Pool, slot, keysInSlot(slot, 5), 4);
  });

  it.each(CASES.map((c, i) => [`${c.name}: ${c.kind} move`, c, 600 + i] as const))('%s: refused where the strategy cannot move it, else the key is found where its rows are', async (_name, c, slot) => {
    const runtime: ShardingRuntime = await createShardingRuntime({ config: configOf(c.config), catalog: env.catalog, actor: 'test' });
    try {
      const [user] = keysInSlot(slot, 1) as [string];
      // A key the directory must hold to be routed at all.
      if (c.config.strategy === 'directory_based') await runtime.directory.set(user, 'shard_a', 'test');
      const writeDoc = (title: string) =>
        runtime.writer.withShardWrite(user, async ({ client, slot: s }) => {
          await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, $3, 'u') on conflict (id) do nothing`, [user, s, `${user}@example.org`]);
          await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, $3)`, [user, s, title]);
        });
      const home = (await writeDoc('before')).shardId;
      const to = home === 'shard_a' ? 'shard_b' : 'shard_a';

      let refused: MoveRequestError | undefined;
      try {
        const job = await runtime.mover.plan(c.kind === 'slot' ? { kind: 'slot', slot, to, createdBy: 'test' } : { kind: 'directory', key: user, to, createdBy: 'test' });
        expect((await runtime.mover.run(job.id)).state).toBe('done');
      } catch (error) {
        if (!(error instanceof MoveRequestError)) throw error;
        refused = error;
      }
      const after = await writeDoc('after');
      const reads = createShardReader({ router: routerForWrites(runtime.router, runtime.slotMaps, runtime.directory), reader: primaryReads(env.shards) });
      const read = await reads.withShardRead(user, async ({ client }) => (await client.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [user])).rows[0]?.n);
      const newer = await runtime.slotMaps.currentIfNewer(runtime.router.slotMap.version);
      if (newer) runtime.router.setSlotMap(newer);
      runtime.directory.invalidate();
      const routed = await runtime.router.resolve(user);

      expect({ refused: refused !== undefined, problem: refused?.problem }).toEqual(c.refuses.includes(c.kind) ? { refused: true, problem: 'strategy' } : { refused: false, problem: undefined });
      expect({ written: after.shardId, read: read.shardId, routed: routed.shardId, n: read.value }).toEqual({ written: read.shardId, read: read.shardId, routed: read.shardId, n: 2 });
      expect(await rowsByShard(user)).toEqual({ shard_a: 0, shard_b: 0, [read.shardId]: 2 });
    } finally {
      await runtime.close();
    }
  });

  it.each(VARIANTS.map((v) => [v.name, v] as const))('%s: the rebalance check proposes only moves the mover accepts, and says why when it can propose none', async (_name, v) => {
    const runtime = await createShardingRuntime({ config: configOf(v.config), catalog: env.catalog, actor: 'test' });
    try {
      const check = await runtime.inspector.rebalanceCheck({ slotMap: await runtime.slotMaps.current(), directory: await runtime.directory.all(), routing: moveRoutingOf(runtime.config), by: 'rows' });

      expect(check.needed).toBe(true);
      expect(check.moves.filter((m) => v.refuses.includes(m.unit.kind))).toEqual([]);
      if (v.refuses.length === 2) {
        expect(check.moves).toEqual([]);
        expect(check.summary.unresolved.join('\n')).toMatch(/no slot moves are offered: .*\n.*no directory moves are offered: /);
      } else {
        expect(check.moves.length).toBeGreaterThan(0);
      }
    } finally {
      await runtime.close();
    }
  });
});
