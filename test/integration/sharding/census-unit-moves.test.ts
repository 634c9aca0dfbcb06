/**
 * The census's units against what real moves of them copy, under every routing configuration the
 * census supports (`placingDirectory`, `moveUnitFor`): hash with `override_hash`, hash without it,
 * directory_based falling back to hash, directory_based rejecting keys not listed, range_based.
 * One shard holds, in a slot it owns, rows of keys no pin names; a pinned key's rows under its own
 * slot; a key pinned here whose rows stand under its own slot and a document under the slot (a
 * stray: a restore, a document written with a wrong slot before shard migration 015); a pinned
 * key's rows under its own slot alone; a key pinned to the other shard stored under the slot,
 * whose id's slot is the other shard's; one pinned to the other shard whose id's slot is the slot;
 * and a key moved to the other shard by a directory move with a row left behind its `moved` fence
 * row (a user the clean-up kept). Every unit offered is then moved: its move must copy as many rows
 * as the census offered it with (a plan balancing shards by these figures moves what it planned),
 * and what the moves leave on the shard is what the census counted in no unit.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import type { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { MoveRouting } from '../../../functions/core/sharding/move-machine.js';
import { keysInSlot, type MoveEnv, pastTriggers, seedUsers, startMoveEnv } from './fixtures/move-env.js';
import { rebalancePools } from './fixtures/rebalance-port.js';

let env: MoveEnv;
let pools: ShardPools;
let inspector: ShardInspector;

beforeAll(async () => {
  env = await startMoveEnv();
  pools = rebalancePools(env);
  inspector = new ShardInspector(pools, { timeoutMs: 5000 });
}, 180_000);
afterAll(async () => {
  await pools?.end();
  await env?.stop();
});

const HASH = { strategy: 'hash_based', overrideHash: true, fallback: 'hash' } as const;
const CONFIGURATIONS: readonly { readonly name: string; readonly routing: MoveRouting; readonly kinds: readonly ('slot' | 'directory')[] }[] = [
  { name: 'hash_based, override_hash', routing: HASH, kinds: ['slot', 'directory'] },
  { name: 'hash_based, override_hash false', routing: { ...HASH, overrideHash: false }, kinds: ['slot'] },
  { name: 'directory_based, fallback hash', routing: { ...HASH, strategy: 'directory_based', overrideHash: false }, kinds: ['slot', 'directory'] },
  { name: 'directory_based, fallback reject', routing: { strategy: 'directory_based', overrideHash: false, fallback: 'reject' }, kinds: ['directory'] },
  { name: 'range_based', routing: { ...HASH, strategy: 'range_based' }, kinds: [] },
];

describe("every unit the census offers is moved with as many rows as it was offered with, under each routing configuration", () => {
  // Each configuration its own slots (the first half of the map's slots is one shard's).
  let base = 1600;
  for (const { name, routing, kinds } of CONFIGURATIONS) {
    it(`${name}: moves ${kinds.length === 0 ? 'no unit' : kinds.join(' and ') + ' units'}, each copying the rows it was offered with, and leaves the rows in no unit`, async () => {
      const map = await env.slotMaps.current();
      const from = map.assignments[base] as string;
      const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
      const mine: number[] = [];
      for (let s = base; mine.length < 4; s++) if (map.assignments[s] === from) mine.push(s);
      base += 40;
      const [slot, strayOwn, pinnedOwn, movedOwn] = mine as [number, number, number, number];
      const away = map.assignments.indexOf(to);
      const source = env.shards.get(from) as pg.Pool;
      // Keys no pin names: their slot's.
      await seedUsers(source, slot, keysInSlot(slot, 2), 1);
      const [pinned] = keysInSlot(slot, 1) as [string];
      await seedUsers(source, slot, [pinned], 1);
      const [stray] = keysInSlot(strayOwn, 1) as [string];
      await seedUsers(source, strayOwn, [stray], 1);
      await pastTriggers(source, `insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'wrong slot', '{}'::jsonb)`, [stray, slot]);
      const [own] = keysInSlot(pinnedOwn, 1) as [string];
      await seedUsers(source, pinnedOwn, [own], 2);
      const [other] = keysInSlot(away, 1) as [string];
      await seedUsers(source, slot, [other], 1);
      const [otherOfSlot] = keysInSlot(slot, 1) as [string];
      await seedUsers(source, slot, [otherOfSlot], 1);
      const [moved] = keysInSlot(movedOwn, 1) as [string];
      await seedUsers(source, movedOwn, [moved], 1);
      for (const key of [pinned, stray, own, moved]) await env.directory.set(key, from, 'test');
      for (const key of [other, otherOfSlot]) await env.directory.set(key, to, 'test');
      // Moved under hash routing with overrides (before this configuration), a document left behind.
      const earlier = env.mover({ readerGraceMs: 0 });
      expect((await earlier.run((await earlier.plan({ kind: 'directory', key: moved, to, createdBy: 'test' })).id)).state).toBe('done');
      await pastTriggers(source, `insert into documents (id, owner_id, slot, title, content) values (gen_random_uuid(), $1, $2, 'left', '{}'::jsonb)`, [moved, movedOwn]);

      const slots = [slot, strayOwn, pinnedOwn, movedOwn];
      const ours = new Set([...slots.map(String), pinned, stray, own, other, otherOfSlot, moved]);
      const directory = (await env.directory.all()).map((e) => ({ key: e.key, shardId: e.shardId }));
      const census = await inspector.rebalanceCensus({ slotMap: map, directory, routing });
      const offered = census.units.filter((u) => u.shardId === from && ours.has(u.id));
      expect([...new Set(offered.map((u) => u.kind))].sort()).toEqual([...kinds].sort());
      const held = async (): Promise<number> => {
        const { rows } = await source.query<{ n: number }>(
          `select (select count(*) from users where slot = any($1)) + (select count(*) from documents where slot = any($1)) as n`,
          [slots],
        );
        return Number(rows[0]?.n);
      };
      const before = await held();

      const mover = env.mover({ readerGraceMs: 0, routing });
      const moves: string[] = [];
      for (const u of offered) {
        const request = u.kind === 'slot' ? { kind: 'slot' as const, slot: Number(u.id), to, createdBy: 'test' } : { kind: 'directory' as const, key: u.id, to, createdBy: 'test' };
        const job = await mover.run((await mover.plan(request)).id);
        moves.push(`${u.kind} ${u.id === pinned ? 'pinned' : u.id === own ? 'own' : u.id}: offered with ${u.rows} rows, ${job.state}, ${job.rowsCopied} copied`);
      }

      expect(moves).toEqual(offered.map((u) => `${u.kind} ${u.id === pinned ? 'pinned' : u.id === own ? 'own' : u.id}: offered with ${u.rows} rows, done, ${u.rows} copied`));
      // Left: the stray key's user and document under its own slot (its move refused while the
      // document stands under the slot), the rows of the key pinned away under its own slot, the
      // moved key's leftover; or, where no move is offered, all.
      expect(await held()).toBe(before - offered.reduce((n, u) => n + u.rows, 0));
    }, 90_000);
  }
});

describe('the census given directory keys in other spellings, twice, not UUIDs, or pinned to a shard not configured', () => {
  it('counts each row as it does given the canonical keys once, and every figure is a number', async () => {
    const map = await env.slotMaps.current();
    const slot = 1900;
    const from = map.assignments[slot] as string;
    const to = from === 'shard_a' ? 'shard_b' : 'shard_a';
    const source = env.shards.get(from) as pg.Pool;
    const [plain, pinned, away] = keysInSlot(slot, 3) as [string, string, string];
    await seedUsers(source, slot, [plain, pinned, away], 1);
    const [other] = keysInSlot(map.assignments.indexOf(to), 1) as [string];
    await seedUsers(source, slot, [other], 1);
    const canonical = [
      { key: pinned, shardId: from },
      { key: away, shardId: to },
      { key: other, shardId: to },
    ];
    const spelled = [
      { key: pinned.toUpperCase(), shardId: from },
      { key: `{${pinned}}`, shardId: from },
      { key: away.replaceAll('-', '').toUpperCase(), shardId: to },
      { key: `urn:uuid:${other}`, shardId: to },
      { key: other, shardId: to },
      { key: 'Tenant-1', shardId: from },
      { key: '42', shardId: to },
    ];
    const ours = (units: readonly { readonly id: string }[]): unknown[] => units.filter((u) => [String(slot), pinned, away, other].includes(u.id));

    const expected = await inspector.rebalanceCensus({ slotMap: map, directory: canonical });
    const given = await inspector.rebalanceCensus({ slotMap: map, directory: spelled });

    expect(given.statistics).toEqual(expected.statistics);
    expect(ours(given.units)).toEqual(ours(expected.units));
    // The slot's unit: the key no pin names and the other shard's key stored under the slot (its
    // id's slot another); the pinned key its own unit; the key pinned away in none.
    expect(ours(expected.units)).toEqual([
      expect.objectContaining({ kind: 'slot', id: String(slot), shardId: from, rows: 4, maxTableRows: 4 }),
      expect.objectContaining({ kind: 'directory', id: pinned, shardId: from, rows: 2, maxTableRows: 1 }),
    ]);
    // A key pinned to a shard not configured (the census refuses such a directory; the units'
    // listing does not): in no unit, as a slot move leaves out every pinned key of the slot.
    const units = await inspector.movableUnits(map, [...canonical, { key: away, shardId: 'shard_z' }].filter((d, i) => i !== 1));
    expect(ours(units)).toEqual(ours(expected.units));
    for (const u of units) expect([u.rows, u.bytes, u.maxTableRows].every(Number.isFinite)).toBe(true);
  }, 60_000);

  it('counts every row of the slot in its unit given no directory, or a shard without the key records table', async () => {
    const map = await env.slotMaps.current();
    const slot = 1950;
    const from = map.assignments[slot] as string;
    await seedUsers(env.shards.get(from) as pg.Pool, slot, keysInSlot(slot, 2), 2);
    const plain = new ShardInspector(pools, { timeoutMs: 5000, tables: { users: 'users', documents: 'documents', keys: 'no_such_table' } });
    for (const census of [await inspector.rebalanceCensus({ slotMap: map }), await plain.rebalanceCensus({ slotMap: map, directory: [] })]) {
      expect(census.units.filter((u) => u.id === String(slot))).toEqual([expect.objectContaining({ kind: 'slot', shardId: from, rows: 6, maxTableRows: 4 })]);
    }
  }, 60_000);
});
