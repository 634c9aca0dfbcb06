/**
 * The rebalance check against the mover's refusal of a directory key with rows under another
 * slot than its id's (mover.ts checkKeySlot: a directory move carries the key's rows under the
 * key's own slot only, and rows of the key on the source under another slot, a restore, a
 * hand-made row, a document written with a wrong slot before shard migration 015, would be left
 * behind, so planning such a move is refused, 400 naming `body.unit`). A plan that proposes it
 * sends whoever follows it to that refusal, as one proposing a unit too large would
 * (rebalance-unit-limit.test.ts): the check must not propose it.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { MoveRequestError } from '../../../functions/adapters/postgres/mover.js';
import pg from 'pg';
import { keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { rebalancePort } from './fixtures/rebalance-port.js';

let env: MoveEnv;
let pools: ShardPools;
let inspector: ShardInspector;
/** A key of shard_a pinned there, with 20 documents (the largest unit by far), one of them under a wrong slot. */
let key: string;
let keySlotNo: number;
const routing = { strategy: 'hash_based', overrideHash: true, fallback: 'hash' } as const;

beforeAll(async () => {
  env = await startMoveEnv();
  pools = ShardPools.fromConfig({ shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url, read_replicas: [] })) }, { max: 2 });
  inspector = new ShardInspector(pools, { timeoutMs: 5000 });
  const map = await env.slotMaps.current();
  const owned = map.assignments.flatMap((shard, slot) => (shard === 'shard_a' ? [slot] : [])).slice(0, 4);
  const [mine, other, ...small] = owned as [number, number, ...number[]];
  keySlotNo = mine;
  const source = env.shards.get('shard_a');
  if (!source) throw new Error('no shard_a in the move env');
  [key] = keysInSlot(mine, 1) as [string];
  await seedUsers(source, mine, [key], 19);
  for (const slot of small) await seedUsers(source, slot, keysInSlot(slot, 1), 1);
  await env.directory.set(key, 'shard_a', 'test');
  // As before shard migration 015's foreign key (added NOT VALID): a document of the key under another slot.
  const client = await source.connect();
  try {
    await client.query('begin');
    await client.query('set local session_replication_role = replica');
    await client.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'legacy')`, [randomUUID(), key, other]);
    await client.query('commit');
  } finally {
    client.release();
  }
}, 180_000);
afterAll(async () => {
  await pools?.end();
  await env?.stop();
});

describe('the rebalance check and a directory key with rows under another slot than its own', () => {
  it('does not propose a directory move of the key, which the mover refuses when planned', async () => {
    await expect(env.mover().plan({ kind: 'directory', key, to: 'shard_b', createdBy: 'test' })).rejects.toMatchObject({
      problem: 'invalid',
      issues: [{ field: 'key', reason: expect.stringContaining(`under another slot than its id's slot ${keySlotNo}`) as unknown as string }],
    } satisfies Partial<MoveRequestError>);
    const check = await inspector.rebalanceCheck({ slotMap: await env.slotMaps.current(), directory: [{ key, shardId: 'shard_a' }], routing, by: 'rows' });
    expect(check.needed).toBe(true);
    expect(check.moves.filter((m) => m.unit.kind === 'directory').map((m) => m.unit.id)).toEqual([]);
  });
});

describe("the rebalance check's line for a directory key's move whose checks could not be made (h132)", () => {
  it('names the shard that did not answer, one a key move asks beside its source and target, and why it was asked', async () => {
    // A key move's plan asks every shard of the mover whether it holds rows of the key
    // (checkOtherShardsHoldNoKeyRows); shard_c, configured in the mover and on a port nothing
    // listens on (loopback), does not answer. Before, the line said "could not be made (connection
    // error ECONNREFUSED)", and the operator checked the move's source and target, both answering.
    const owned = (await env.slotMaps.current()).assignments.flatMap((shard, slot) => (shard === 'shard_a' ? [slot] : []));
    const slot = owned[10] as number;
    const [big] = keysInSlot(slot, 1) as [string];
    await seedUsers(env.shards.get('shard_a') as pg.Pool, slot, [big], 40);
    await env.directory.set(big, 'shard_a', 'test');
    const gone = new pg.Pool({ connectionString: 'postgres://nobody@127.0.0.1:1/nothing', connectionTimeoutMillis: 2000, max: 1 });
    gone.on('error', () => undefined);
    try {
      const port = rebalancePort(env, { slotMap: await env.slotMaps.current(), inspector, mover: env.mover({ shards: new Map([...env.shards, ['shard_c', gone]]) }) });
      const check = await port.rebalanceCheck({ by: 'rows' });
      expect(check.moves.filter((m) => m.unit.kind === 'directory' && m.unit.id === big)).toEqual([]);
      expect(check.summary.unresolved.filter((line) => line.startsWith(`directory key ${big} `))).toEqual([
        `directory key ${big} on shard_a is not proposed to move to shard_b: the move plan's checks of it could not be made (shard_c, which a directory key's move asks too, did not answer: connection error ECONNREFUSED); the next check asks them again`,
      ]);
      expect(check.summary.unresolved.join('\n')).not.toContain('127.0.0.1');
    } finally {
      await gone.end();
    }
  });
});
