/**
 * Issue #15: the fence review's batched slot counts (functions/adapters/postgres/fence-review.ts
 * `judgeRows`; unit-rows.ts `slotsRowsOn`): the batch must count each slot as `slotRowsOn` counts
 * it alone (whatever the excluded keys' spelling, a document whose owner is in another slot, the
 * same slot twice with other excluded keys), the catalog's read of the owners since each row's
 * version must stay within the API's bounds with a long history of maps, and the chains of `moved`
 * rows the review follows (and a `moved` row's own shard) are counted in the same batch.
 */
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listFences } from '../../../functions/adapters/postgres/fence-review.js';
import { slotRowsOn, slotsRowsOn } from '../../../functions/adapters/postgres/unit-rows.js';
import type { MoveRouting } from '../../../functions/core/sharding/move-machine.js';
import { listFencesAtDistance } from './fixtures/distant-listing.js';
import { keysInSlot, readCommitted, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

const PINS_ROUTE: MoveRouting = { strategy: 'hash_based', overrideHash: true, fallback: 'hash' };

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 3 });
}, 180_000);
afterAll(async () => {
  await env?.stop();
});

describe('slotsRowsOn counts each unit as slotRowsOn counts it alone', () => {
  const SLOTS = [3001, 3002, 3003, 3004];
  /** Spellings of a key as a row's excluded_keys or a pin may carry it: canonical, upper case, braces, braced upper case. */
  const spell = (key: string, how: number): string => [key, key.toUpperCase(), `{${key}}`, `{${key.toUpperCase()}}`][how] as string;

  it('on random rows, units and excluded keys (every spelling, keys of other slots, empty lists, a slot twice, a slot without rows)', async () => {
    const pool = env.shards.values().next().value as pg.Pool;
    // Users in each slot, some with documents and document keys (a document under another slot than its owner's is refused by the (owner_id, slot) foreign key).
    const users = SLOTS.flatMap((slot) => keysInSlot(slot, 4).map((id) => ({ id, slot })));
    await readCommitted(pool, async (c) => {
      await c.query(`insert into users (id, slot, email, display_name) select u, s, u::text, 'u' from unnest($1::uuid[], $2::int[]) as t(u, s)`, [users.map((u) => u.id), users.map((u) => u.slot)]);
      for (const [i, u] of users.entries()) {
        const docs = i % 3;
        for (let d = 0; d < docs; d += 1) {
          const doc = randomUUID();
          await c.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 't')`, [doc, u.id, u.slot]);
          await c.query(`insert into document_keys (id, owner_id, slot, document_id, request_digest) values ($1, $2, $3, $4, decode(repeat('ab', 32), 'hex'))`, [randomUUID(), u.id, u.slot, doc]);
        }
      }
    });
    const keys = [...users.map((u) => u.id), randomUUID(), 'not-a-uuid', ''];
    const unit = fc.record({
      slot: fc.constantFrom(...SLOTS, 3999),
      excluded: fc.array(fc.tuple(fc.constantFrom(...keys), fc.integer({ min: 0, max: 3 })).map(([k, how]) => spell(k, how)), { maxLength: 6 }),
    });
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(unit, { maxLength: 8 }), async (units) => {
          const batched = await slotsRowsOn(pool, units);
          const alone = await Promise.all(units.map(async (u) => (await slotRowsOn(pool, [u.slot], u.excluded)).get(u.slot) ?? []));
          expect(batched).toEqual(alone);
        }),
        { numRuns: 300, seed: 15 },
      );
    } finally {
      await pool.query('delete from users where id = any($1::uuid[])', [users.map((u) => u.id)]);
    }
  }, 120_000);
});

describe("the owners of the fenced slots since their rows' versions, with a long history of maps", () => {
  it("lists 500 fenced slot rows at version 0 under 5,000 maps of 4,096 slots well within the API's 27 s (each map's assignments joined to every row: 15-18 s)", async () => {
    const current = await env.slotMaps.current();
    const R = current.assignments[200] as string;
    const slots = current.assignments.flatMap((o, slot) => (o === R && slot >= 200 ? [slot] : [])).slice(0, 500);
    const pool = env.shards.get(R) as pg.Pool;
    await env.catalog.query(
      `insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason)
       select $1::int + g, slot_count, assignments, 'test', 'a long history' from catalog.slot_maps, generate_series(1, 5000) g where version = $1::int`,
      [current.version],
    );
    await pool.query(`insert into write_fences (kind, unit_id, state, map_version, updated_at) select 'slot', s, 'fenced', 0, now() - interval '1 hour' from unnest($1::text[]) s`, [slots.map(String)]);
    try {
      const started = Date.now();
      const listed = await listFences({ catalog: env.catalog, shards: env.shards, timeoutMs: 25_000, routing: PINS_ROUTE });
      const tookMs = Date.now() - started;
      console.log(`listFences over 5,000 maps: ${tookMs} ms`);
      const ours = listed.rows.filter((r) => r.shard === R && r.kind === 'slot' && slots.map(String).includes(r.unitId));
      // The time is printed above, not asserted (bench/ checks timings).
      expect({ rows: ours.length, reopen: ours.filter((r) => r.action === 'reopen' && r.withheld === undefined).length }).toEqual({ rows: 500, reopen: 500 });
    } finally {
      await pool.query(`delete from write_fences where kind = 'slot' and unit_id = any($1::text[])`, [slots.map(String)]);
      await env.catalog.query('delete from catalog.slot_maps where version > $1', [current.version]);
    }
  }, 300_000);
});

describe("chains of moved rows and a moved row's own shard, counted with the batch", () => {
  it("lists 500 slots' moved rows whose moved_to shard's moved row sends the writes on to a third shard, at a 1 ms round trip, in a few statements (one a unit and a shard: 3,015, 8 s)", async () => {
    const current = await env.slotMaps.current();
    const [A, B, C] = [...env.shards.keys()] as [string, string, string];
    const slots = current.assignments.flatMap((o, slot) => (o === A && slot >= 200 ? [slot] : [])).slice(0, 500);
    expect(slots).toHaveLength(500);
    const ids = slots.map(String);
    const insertMoved = (on: string, to: string): Promise<unknown> =>
      (env.shards.get(on) as pg.Pool).query(`insert into write_fences (kind, unit_id, state, moved_to, map_version, updated_at) select 'slot', s, 'moved', $2, $3, now() - interval '1 hour' from unnest($1::text[]) s`, [ids, to, current.version]);
    // Counted as rowsBehind counts each alone: rows of the first slot left on A behind its row
    // (withheld); of the second, a key with a `directory` row on A and of the third, a key A's row
    // keeps out (not the slot's: reopened); of the fourth, rows on C, where the chain ends (withheld).
    const [leftOnA, pinnedOnA, excludedOnA, onC] = slots as [number, number, number, number];
    const [leftKey, pinnedKey, excludedKey, cKey] = [leftOnA, pinnedOnA, excludedOnA, onC].map((slot) => keysInSlot(slot, 1)[0] as string) as [string, string, string, string];
    const [poolA, poolC] = [env.shards.get(A) as pg.Pool, env.shards.get(C) as pg.Pool];
    await seedUsers(poolA, leftOnA, [leftKey], 2);
    await seedUsers(poolA, pinnedOnA, [pinnedKey], 1);
    await seedUsers(poolA, excludedOnA, [excludedKey], 1);
    await seedUsers(poolC, onC, [cKey], 1);
    await poolA.query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, 'open')`, [pinnedKey]);
    await insertMoved(A, B);
    await insertMoved(B, C);
    await poolA.query(`update write_fences set excluded_keys = array[$2::text] where kind = 'slot' and unit_id = $1`, [String(excludedOnA), excludedKey]);
    try {
      const { listed, sent, tookMs } = await listFencesAtDistance(env, 25_000);
      console.log(`chains: ${sent.n} statements, ${tookMs} ms`);
      const ours = listed.rows.filter((r) => r.shard === A && r.kind === 'slot' && ids.includes(r.unitId));
      expect({ rows: ours.length, reopen: ours.filter((r) => r.action === 'reopen' && r.withheld === undefined).length }).toEqual({ rows: 500, reopen: 498 });
      const withheld = (slot: number): string | undefined => ours.find((r) => r.unitId === String(slot))?.withheld;
      expect(withheld(leftOnA)).toMatch(new RegExp(`^${A} holds rows of slot ${leftOnA} \\(1 in users, 2 in documents\\) behind this row`));
      expect({ pinned: withheld(pinnedOnA), excluded: withheld(excludedOnA) }).toEqual({ pinned: undefined, excluded: undefined });
      expect(withheld(onC)).toMatch(new RegExp(`^the slot's rows are on ${C} \\(1 in users, 1 in documents; less those of keys the directory pins\\), where this row sends its writes \\(moved on from ${B}\\)`));
      expect({ sent: sent.n < 100 ? 'under 100' : sent.n }).toEqual({ sent: 'under 100' });
    } finally {
      for (const on of [A, B]) await (env.shards.get(on) as pg.Pool).query(`delete from write_fences where kind = 'slot' and unit_id = any($1::text[])`, [ids]);
      await poolA.query(`delete from write_fences where kind = 'directory' and unit_id = $1`, [pinnedKey]);
      await poolA.query('delete from users where id = any($1::uuid[])', [[leftKey, pinnedKey, excludedKey]]);
      await poolC.query('delete from users where id = $1', [cKey]);
    }
  }, 120_000);
});
