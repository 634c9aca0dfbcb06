/**
 * Issue #15's review: the count of a unit's rows before an owner change by hand had no deadline.
 * A shard that does not answer, or a table locked there, held the caller's catalog transaction
 * open without limit (its snapshot, its read locks of `catalog.shard_directory` and
 * `catalog.slot_maps`: a catalog migration needing an exclusive lock queued behind it, and every
 * router read behind the migration). Each count now runs within the stores' `countTimeoutMs`
 * (a `statement_timeout` on the shard, and a bound on the client for a node that does not answer
 * at all), past which the change is refused naming the shard, nothing written.
 */
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { RowsCountTimeoutError } from '../../../functions/adapters/postgres/unit-rows.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { keysInSlot, refusalOf, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

const BOUND_MS = 300;
/** How long a test waits for the refusal before it gives up (the count held on, as before the bound). */
const GIVE_UP_MS = 10_000;

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

/** Resolves once a backend of `database` on `pool`'s server waits on a lock. */
async function lockWaitOn(pool: pg.Pool, database: string): Promise<void> {
  for (;;) {
    const { rows } = await pool.query(`select 1 from pg_stat_activity where datname = $1 and wait_event_type = 'Lock'`, [database]);
    if (rows.length > 0) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** What `p` was refused with, or `still counting` when it had not ended after {@link GIVE_UP_MS}. */
async function refusalWithin(p: Promise<unknown>): Promise<unknown> {
  return Promise.race([refusalOf(p), delay(GIVE_UP_MS).then(() => `still counting after ${GIVE_UP_MS} ms`)]);
}

/** A TCP server that accepts connections and never answers (a silent node). */
async function silentServer(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((done) => server.close(done));
    },
  };
}

describe('an owner change whose count waits on a locked table of the old owner', () => {
  it('SlotMapStore.publishByHand is refused at countTimeoutMs, naming the shard; nothing published', async () => {
    const slotMaps = new SlotMapStore(env.catalog, { shardPools: env.shards, countTimeoutMs: BOUND_MS });
    const slot = 1731;
    const { from, to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 1), 1);
    const before = (await slotMaps.current()).version;
    const locker = await source.connect();
    try {
      await locker.query('begin; lock table documents in access exclusive mode');
      const publishing = slotMaps.publishByHand(moveSlots(await slotMaps.current(), [slot], to), 'OPS-1731');
      await lockWaitOn(env.catalog, from);
      // Before: the count waited on the lock for as long as it was held.
      const refusal = await refusalWithin(publishing);
      // Before: `still counting after 10000 ms`.
      expect(refusal).toMatchObject({ name: 'RowsCountTimeoutError', shardId: from, timeoutMs: BOUND_MS });
      expect(refusal).toBeInstanceOf(RowsCountTimeoutError);
      expect((refusal as Error).message).toContain(`cannot publish slot map version ${before + 1} by hand: the unit's rows on ${from} could not be counted within ${BOUND_MS} ms`);
      expect((await slotMaps.current()).version).toBe(before);
    } finally {
      await locker.query('rollback').catch(() => undefined);
      locker.release();
    }
  }, 60_000);

  it('DirectoryStore.set is refused at countTimeoutMs, naming the shard; nothing written', async () => {
    const directory = new DirectoryStore(env.catalog, { ttlMs: 0, shardPools: env.shards, countTimeoutMs: BOUND_MS });
    const slot = 1732;
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [key], 1);
    const locker = await source.connect();
    try {
      await locker.query('begin; lock table users in access exclusive mode');
      const pinning = directory.set(key, to, 'ops@example.com');
      await lockWaitOn(env.catalog, from);
      const refusal = await refusalWithin(pinning);
      // Before: `still counting after 10000 ms`.
      expect(refusal).toMatchObject({ name: 'RowsCountTimeoutError', shardId: from, timeoutMs: BOUND_MS });
      expect(refusal).toBeInstanceOf(RowsCountTimeoutError);
      expect((refusal as Error).message).toContain(`cannot pin key ${key} to ${to}: the unit's rows on ${from} could not be counted within ${BOUND_MS} ms`);
      expect((await env.catalog.query('select 1 from catalog.shard_directory where key = $1', [key])).rowCount).toBe(0);
    } finally {
      await locker.query('rollback').catch(() => undefined);
      locker.release();
    }
  }, 60_000);
});

describe('an owner change whose old owner does not answer at all', () => {
  it('DirectoryStore.set is refused at countTimeoutMs and a little more, naming the shard; nothing written', async () => {
    const silent = await silentServer();
    const pool = new pg.Pool({ host: '127.0.0.1', port: silent.port, user: 'nobody', database: 'nothing', max: 1 });
    pool.on('error', () => undefined);
    try {
      const slot = 1733;
      const { from, to } = await sides(env, slot);
      const [key] = keysInSlot(slot, 1) as [string];
      const shardPools = new Map([...env.shards].map(([id, p]) => [id, id === from ? pool : p]));
      const directory = new DirectoryStore(env.catalog, { ttlMs: 0, shardPools, countTimeoutMs: BOUND_MS });
      const refusal = await refusalWithin(directory.set(key, to, 'ops@example.com'));
      // Before: `still counting after 10000 ms`.
      expect(refusal).toMatchObject({ name: 'RowsCountTimeoutError', shardId: from, timeoutMs: BOUND_MS });
      expect(refusal).toBeInstanceOf(RowsCountTimeoutError);
      expect((await env.catalog.query('select 1 from catalog.shard_directory where key = $1', [key])).rowCount).toBe(0);
    } finally {
      await silent.close();
      await pool.end().catch(() => undefined);
    }
  }, 60_000);
});

describe('countTimeoutMs', () => {
  it('is refused unless a whole positive number of ms', () => {
    for (const bad of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31]) {
      expect(() => new DirectoryStore(env.catalog, { countTimeoutMs: bad })).toThrow(/DirectoryStoreOptions\.countTimeoutMs must be a whole number of ms/);
      expect(() => new SlotMapStore(env.catalog, { countTimeoutMs: bad })).toThrow(/SlotMapStoreOptions\.countTimeoutMs must be a whole number of ms/);
    }
  });
});
