/**
 * Issue #15 (the fence review reads the whole directory): the review, and a map published by hand,
 * ask for the pinned keys of the slots they judge (unit-rows.ts `pinnedKeysOf`), and read every
 * row of catalog.shard_directory to find them, since the directory had no slot and the hash was
 * computed in TypeScript alone: 8-10 s of the API's 27 s at 1,000,000 pins (bench/fence-review.ts
 * --directory). Sharding migration 031 keeps each key's slot in the directory (a trigger computes
 * it with catalog.key_slot, MurmurHash3 in SQL, for writers of every language) and the readers read
 * the rows of their slots only, and the rows not yet given a slot (written before 031, or with the
 * triggers off), until catalog.shard_directory_slot_fill has filled them.
 *
 * The SQL hash is checked against the spec's reference vectors and against the TypeScript one on
 * random bytes, seeds and strings (fast-check, seeds printed on a mismatch).
 */
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listFences } from '../../../functions/adapters/postgres/fence-review.js';
import { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { pinnedKeysOf } from '../../../functions/adapters/postgres/unit-rows.js';
import { fillDirectorySlots } from '../../../functions/adapters/postgres/directory-slot-fill.js';
import { murmur3_32, slotOf } from '../../../functions/core/sharding/hash.js';
import type { MoveRouting } from '../../../functions/core/sharding/move-machine.js';
import { keysInSlot, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

const PINS_ROUTE: MoveRouting = { strategy: 'hash_based', overrideHash: true, fallback: 'hash' };

interface ReferenceVector {
  readonly text?: string;
  readonly hexBytes?: string;
  readonly seed: string;
  readonly hash: string;
}
const vectors = JSON.parse(readFileSync(new URL('../../../docs/routing-test-vectors.json', import.meta.url), 'utf8')) as {
  murmur3ReferenceVectors: { vectors: ReferenceVector[] };
  keys: Array<{ key: string; murmur3: string; slot: number }>;
};
const bytesOf = (v: ReferenceVector): Buffer => (v.hexBytes !== undefined ? Buffer.from(v.hexBytes, 'hex') : Buffer.from(v.text ?? '', 'utf8'));

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2 });
}, 180_000);
afterAll(async () => {
  await env?.stop();
});

/** `n` keys in the canonical UUID form, none in `slot`, pinned to the env's shards in turn by plain SQL (a writer of another language): as many rows as the review would read whole. */
async function pinElsewhere(n: number, tag: string): Promise<string[]> {
  const { rows } = await env.catalog.query<{ key: string }>(
    `insert into catalog.shard_directory (key, shard_id, updated_by)
     select md5($1 || i)::uuid::text, case when i % 2 = 0 then 'shard_a' else 'shard_b' end, 'test'
       from generate_series(1, $2::int) i returning key`,
    [tag, n],
  );
  return rows.map((r) => r.key);
}

/**
 * A mover whose catalog (its own pool, its stores') runs on clients that count the rows each
 * statement on the directory returned: what a plan or the rebalance check's refusals read of it.
 */
function countingMover(): { mover: Mover; rows: () => number; end: () => Promise<void> } {
  let directoryRows = 0;
  class Counting extends pg.Client {
    override query(...args: unknown[]): never {
      const text = typeof args[0] === 'string' ? args[0] : ((args[0] as { text?: string } | undefined)?.text ?? '');
      const count = (r: pg.QueryResult | undefined) => {
        if (r !== undefined && /from catalog\.shard_directory/.test(text)) directoryRows += r.rowCount ?? r.rows.length;
      };
      // pg.Pool's own query passes a callback; a client's caller awaits the promise.
      const last = args[args.length - 1];
      if (typeof last === 'function') args[args.length - 1] = (err: unknown, r: pg.QueryResult | undefined) => (count(r), (last as (e: unknown, r: unknown) => void)(err, r));
      const result = (super.query as (...a: unknown[]) => unknown)(...args);
      if (result instanceof Promise) void result.then(count, () => undefined);
      return result as never;
    }
  }
  const catalog = new pg.Pool({ connectionString: env.urls.catalog, max: 3, Client: Counting });
  catalog.on('error', () => undefined);
  const mover = new Mover({ catalog, shards: env.shards, slotMaps: new SlotMapStore(catalog), directory: new DirectoryStore(catalog, { ttlMs: 0, shards: [...env.shards.keys()] }), readerGraceMs: 0 });
  return { mover, rows: () => directoryRows, end: () => catalog.end() };
}

describe('catalog.murmur3_32 and catalog.key_slot (sharding migration 031) hash as the spec does', () => {
  it('matches every reference vector of docs/routing-test-vectors.json, and every key vector', async () => {
    const refs = vectors.murmur3ReferenceVectors.vectors;
    const { rows } = await env.catalog.query<{ h: string }>('select catalog.murmur3_32(b, s)::text as h from unnest($1::bytea[], $2::bigint[]) with ordinality as v(b, s, i) order by i', [refs.map(bytesOf), refs.map((v) => Number(v.seed))]);
    expect(rows.map((r) => Number(r.h))).toEqual(refs.map((v) => Number(v.hash)));
    const { rows: keys } = await env.catalog.query<{ h: string; slot: number }>('select catalog.murmur3_32(convert_to(k, \'UTF8\'))::text as h, catalog.key_slot(k) as slot from unnest($1::text[]) with ordinality as v(k, i) order by i', [vectors.keys.map((k) => k.key)]);
    expect(keys.map((r) => [Number(r.h), r.slot])).toEqual(vectors.keys.map((k) => [Number(k.murmur3), k.slot]));
  });

  it('agrees with the TypeScript hash on random bytes and seeds', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(fc.uint8Array({ maxLength: 40 }), fc.integer({ min: 0, max: 0xffffffff })), { minLength: 1, maxLength: 50 }), async (cases) => {
        const { rows } = await env.catalog.query<{ h: string }>('select catalog.murmur3_32(b, s)::text as h from unnest($1::bytea[], $2::bigint[]) with ordinality as v(b, s, i) order by i', [cases.map(([b]) => Buffer.from(b)), cases.map(([, s]) => s)]);
        expect(rows.map((r) => Number(r.h))).toEqual(cases.map(([b, s]) => murmur3_32(b, s)));
      }),
      { numRuns: 100 },
    );
  });

  it("agrees with slotOf on random strings (any Unicode but NUL, which text cannot hold), UUIDs among them", async () => {
    const key = fc.oneof(fc.string({ unit: 'binary', maxLength: 40 }), fc.uuid()).filter((s) => !s.includes('\u0000'));
    await fc.assert(
      fc.asyncProperty(fc.array(key, { minLength: 1, maxLength: 50 }), async (keys) => {
        const { rows } = await env.catalog.query<{ slot: number }>('select catalog.key_slot(k) as slot from unnest($1::text[]) with ordinality as v(k, i) order by i', [keys]);
        expect(rows.map((r) => r.slot)).toEqual(keys.map((k) => slotOf(k)));
      }),
      { numRuns: 100 },
    );
  });
});

describe("the directory's slot column", () => {
  it('is written by the trigger for a pin of any writer, and put right where a writer writes another', async () => {
    const [key] = keysInSlot(1234, 1) as [string];
    await env.catalog.query(`insert into catalog.shard_directory (key, shard_id, updated_by, slot) values ($1, 'shard_a', 'test', 7)`, [key]);
    try {
      const slotNow = async () => (await env.catalog.query<{ slot: number | null }>('select slot from catalog.shard_directory where key = $1', [key])).rows[0]?.slot;
      expect(await slotNow()).toBe(1234);
      await env.catalog.query('update catalog.shard_directory set slot = 99 where key = $1', [key]);
      expect(await slotNow()).toBe(1234);
      await env.catalog.query(`update catalog.shard_directory set shard_id = 'shard_b', version = version + 1 where key = $1`, [key]);
      expect(await slotNow()).toBe(1234);
    } finally {
      await env.catalog.query('delete from catalog.shard_directory where key = $1', [key]);
    }
  });

  it("is written for the control login's pins (the trigger's hash is every login's to call); the fill is the migration login's alone", async () => {
    const [key] = keysInSlot(777, 1) as [string];
    const c = await env.catalog.connect();
    try {
      await c.query('begin');
      await c.query('set local role ca_dms_control');
      await c.query(`insert into catalog.shard_directory (key, shard_id, updated_by) values ($1, 'shard_a', 'test')`, [key]);
      expect((await c.query<{ slot: number }>('select slot from catalog.shard_directory where key = $1', [key])).rows[0]?.slot).toBe(777);
    } finally {
      await c.query('rollback');
      c.release();
    }
    const { rows } = await env.catalog.query<{ role: string; fill: boolean; slot: boolean }>(
      `select r.role, has_function_privilege(r.role, 'catalog.shard_directory_slot_fill(text, integer)', 'execute') as fill, has_function_privilege(r.role, 'catalog.key_slot(text)', 'execute') as slot
         from unnest(array['ca_dms_control', 'ca_dms_app']) as r(role) order by 1`,
    );
    expect(rows).toEqual([
      { role: 'ca_dms_app', fill: false, slot: true },
      { role: 'ca_dms_control', fill: false, slot: true },
    ]);
  });

  it('is filled in batches for rows written without it (triggers off), which the readers find meanwhile', async () => {
    const keys = keysInSlot(2345, 5);
    await pinWithTriggersOff(keys);
    try {
      expect((await env.catalog.query<{ n: number }>('select count(*)::int as n from catalog.shard_directory where key = any($1::text[]) and slot is null', [keys])).rows[0]?.n).toBe(5);
      // Not yet filled: read all the same, as the rows of their slot.
      expect((await pinnedKeysOf(env.catalog, new Set([2345]))).sort()).toEqual([...keys].sort());
      const batches: number[] = [];
      const filled = await fillDirectorySlots(env.catalog, { batch: 2, onBatch: (n) => batches.push(n) });
      expect({ filled, batches }).toEqual({ filled: 5, batches: [2, 2, 1] });
      const { rows } = await env.catalog.query<{ key: string; slot: number }>('select key, slot from catalog.shard_directory where key = any($1::text[])', [keys]);
      expect(rows.map((r) => r.slot)).toEqual(keys.map(() => 2345));
      expect((await pinnedKeysOf(env.catalog, new Set([2345]))).sort()).toEqual([...keys].sort());
      expect(await pinnedKeysOf(env.catalog, new Set([2346]))).toEqual([]);
    } finally {
      await env.catalog.query('delete from catalog.shard_directory where key = any($1::text[])', [keys]);
    }
  });
});

describe('the fill run by every deploy and every start of local mode', () => {
  it('walks no key where no row lacks its slot, and from the first that does (a rerun reads the pins left NULL, not the whole directory)', async () => {
    // Pins given their slot by the trigger: nothing for the fill to do. Walked whole, a no-op run
    // cost every deploy (migrateAll) and every local start one statement per batch of keys: 500
    // at 1,000,000 pins (bench/directory-slot-fill.ts, "fill again").
    const pinned = await pinElsewhere(40, 'directory-slot-noop-');
    let calls = 0;
    const counted = {
      query: async (text: string, values?: unknown[]) => {
        if (/shard_directory_slot_fill/.test(text)) calls += 1;
        return env.catalog.query(text, values);
      },
    } as Pick<pg.Pool, 'query'>;
    try {
      await fillDirectorySlots(env.catalog);
      calls = 0;
      expect({ filled: await fillDirectorySlots(counted, { batch: 5 }), calls }).toEqual({ filled: 0, calls: 0 });
      // One row left NULL (a pin a batch skipped, a restore): the walk starts at it, not at the first key.
      const sorted = (await env.catalog.query<{ key: string }>('select key from catalog.shard_directory order by key')).rows.map((r) => r.key);
      const late = sorted[sorted.length - 3] as string;
      const c = await env.catalog.connect();
      try {
        await c.query('set session_replication_role = replica');
        await c.query('update catalog.shard_directory set slot = null where key = $1', [late]);
      } finally {
        await c.query('set session_replication_role = origin');
        c.release();
      }
      calls = 0;
      const filled = await fillDirectorySlots(counted, { batch: 5 });
      expect({ filled, calls, slot: (await env.catalog.query<{ slot: number }>('select slot from catalog.shard_directory where key = $1', [late])).rows[0]?.slot }).toEqual({ filled: 1, calls: 2, slot: slotOf(late) });
    } finally {
      await env.catalog.query('delete from catalog.shard_directory where key = any($1::text[])', [pinned]);
    }
  });
});

describe('the fill bounded by the migrations function\'s time', () => {
  it('stops between batches once its time is up, says how many it filled, and the next run fills the rest', async () => {
    const keys = keysInSlot(2347, 5);
    await pinWithTriggersOff(keys);
    const unfilled = async (): Promise<number | undefined> =>
      (await env.catalog.query<{ n: number }>('select count(*)::int as n from catalog.shard_directory where key = any($1::text[]) and slot is null', [keys])).rows[0]?.n;
    try {
      // A clock read before each batch: in time for the first, past `until` at the second.
      const reads = [0, 10];
      const stopped: number[] = [];
      const filled = await fillDirectorySlots(env.catalog, { batch: 2, until: 5, now: () => reads.shift() ?? 10, onTimeUp: (n) => stopped.push(n) });
      expect({ filled, stopped, left: await unfilled() }).toEqual({ filled: 2, stopped: [2], left: 3 });
      // Left NULL meanwhile: still read as their slot's.
      expect((await pinnedKeysOf(env.catalog, new Set([2347]))).sort()).toEqual([...keys].sort());
      const again: number[] = [];
      expect(await fillDirectorySlots(env.catalog, { batch: 2, until: Date.now() + 600_000, onTimeUp: (n) => again.push(n) })).toBe(3);
      expect({ again, left: await unfilled() }).toEqual({ again: [], left: 0 });
    } finally {
      await env.catalog.query('delete from catalog.shard_directory where key = any($1::text[])', [keys]);
    }
  });
});

describe('the fence review reads only the directory rows of the slots it reviews', () => {
  it("lists a dead hand change's slot row with 3,000 pins of other slots reading none of them (read whole: 3,000 rows on every listing, 8-10 s at 1,000,000)", async () => {
    const current = await env.slotMaps.current();
    const slot = 3210;
    const owner = current.assignments[slot] as string;
    const [pinnedHere] = keysInSlot(slot, 1) as [string];
    const others = await pinElsewhere(3000, 'directory-slot-review-');
    // Pins of other slots but for the few the md5 keys put in this one (the review reads those).
    const ofSlot = 1 + others.filter((k) => slotOf(k) === slot).length;
    await env.catalog.query(`insert into catalog.shard_directory (key, shard_id, updated_by) values ($1, $2, 'test')`, [pinnedHere, owner]);
    const shard = env.shards.get(owner) as pg.Pool;
    await shard.query(`insert into write_fences (kind, unit_id, state, map_version, updated_at) values ('slot', $1, 'fenced', 0, now() - interval '1 hour')`, [String(slot)]);
    // The catalog as the review sees it, the rows each statement on the directory returned counted.
    let directoryRows = 0;
    const catalog = {
      query: async (text: string, values?: unknown[]) => {
        const result = await env.catalog.query(text, values);
        if (/from catalog\.shard_directory/.test(text)) directoryRows += result.rowCount ?? result.rows.length;
        return result;
      },
    } as Pick<pg.Pool, 'query'>;
    try {
      const listed = await listFences({ catalog, shards: env.shards, timeoutMs: 25_000, routing: PINS_ROUTE });
      const row = listed.rows.find((r) => r.shard === owner && r.kind === 'slot' && r.unitId === String(slot));
      expect({ action: row?.action, withheld: row?.withheld, directoryRows }).toEqual({ action: 'reopen', withheld: undefined, directoryRows: ofSlot });
    } finally {
      await shard.query(`delete from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
      await env.catalog.query('delete from catalog.shard_directory where key = any($1::text[])', [[...others, pinnedHere]]);
    }
  }, 60_000);
});

describe("a slot move's plan reads only the directory rows of its slot", () => {
  it("records the slot's pinned keys as excluded with 3,000 pins of other slots reading none of them (read whole twice, once inside the plan's transaction, which holds the slot's pins and the maps off)", async () => {
    const slot = 3333;
    const from = await env.ownerOf(slot);
    const to = [...env.shards.keys()].find((s) => s !== from) as string;
    const here = keysInSlot(slot, 2);
    const others = await pinElsewhere(3000, 'directory-slot-plan-');
    const ofSlot = others.filter((k) => slotOf(k) === slot);
    await env.catalog.query(`insert into catalog.shard_directory (key, shard_id, updated_by) select k, $2, 'test' from unnest($1::text[]) k`, [here, to]);
    const { mover, rows, end } = countingMover();
    let id: number | undefined;
    try {
      const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
      id = job.id;
      expect({ excluded: [...job.excludedKeys].sort(), directoryRows: rows() }).toEqual({ excluded: [...here, ...ofSlot].sort(), directoryRows: 2 * (here.length + ofSlot.length) });
    } finally {
      if (id !== undefined) await mover.cancel(id);
      await end();
      await env.catalog.query('delete from catalog.shard_directory where key = any($1::text[])', [[...others, ...here]]);
    }
  }, 60_000);
});

describe("the rebalance check's refusals read only the directory rows of the slots they check", () => {
  it('checks two slot moves with 3,000 pins of other slots reading none of them (read whole once a round before)', async () => {
    const slots = [3401, 3402];
    const here = slots.flatMap((slot) => keysInSlot(slot, 1));
    const others = await pinElsewhere(3000, 'directory-slot-refusals-');
    const ofSlots = others.filter((k) => slots.includes(slotOf(k)));
    const owners = await Promise.all(slots.map((slot) => env.ownerOf(slot)));
    await env.catalog.query(`insert into catalog.shard_directory (key, shard_id, updated_by) select k, 'shard_a', 'test' from unnest($1::text[]) k`, [here]);
    const { mover, rows, end } = countingMover();
    try {
      const verdicts = await mover.refusals(slots.map((slot, i) => ({ kind: 'slot', slot, to: owners[i] === 'shard_a' ? 'shard_b' : 'shard_a', createdBy: 'test' })));
      expect({ verdicts, directoryRows: rows() }).toEqual({ verdicts: [undefined, undefined], directoryRows: here.length + ofSlots.length });
    } finally {
      await end();
      await env.catalog.query('delete from catalog.shard_directory where key = any($1::text[])', [[...others, ...here]]);
    }
  }, 60_000);
});

/** Pins `keys` to shard_a as a restore with the triggers off writes them: their slot left NULL. */
async function pinWithTriggersOff(keys: readonly string[]): Promise<void> {
  const c = await env.catalog.connect();
  try {
    await c.query('set session_replication_role = replica');
    await c.query(`insert into catalog.shard_directory (key, shard_id, updated_by) select k, 'shard_a', 'restore' from unnest($1::text[]) k`, [keys]);
    await c.query('set session_replication_role = origin');
  } finally {
    c.release();
  }
}
