/**
 * The run's lease renewal shares the run's one catalog connection with the port (a Lambda's pool
 * holds one): it must run between the port's statements, outside its transactions. Queued on the
 * busy client instead, it ran inside the port's transaction (and was rolled back with it), and pg
 * warned of a query queued on a busy client (pg 9 refuses one).
 */
import { setTimeout as delay } from 'node:timers/promises';
import type pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { MoveBusyError, Mover } from '../../../functions/adapters/postgres/mover.js';
import type { MoverSlotMaps } from '../../../functions/adapters/postgres/move-port.js';
import { SlotMapVersionConflictError } from '../../../functions/core/sharding/errors.js';
import { countSlot, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/** The lease's expiry as the catalog records it, read on a connection of its own. */
async function leaseExpiry(env: MoveEnv, id: number): Promise<Date> {
  const { rows } = await env.catalog.query<{ until: Date }>('select lease_expires_at as until from catalog.move_jobs where id = $1', [id]);
  return rows[0]?.until as Date;
}

describe("a move run's lease renewal", () => {
  let env: MoveEnv;
  const warnings: Error[] = [];
  const onWarning = (w: Error): void => {
    warnings.push(w);
  };
  beforeAll(async () => {
    env = await startMoveEnv();
  });
  afterAll(async () => {
    await env.stop();
  });
  beforeEach(() => {
    warnings.length = 0;
    process.on('warning', onWarning);
  });
  afterEach(() => {
    process.off('warning', onWarning);
  });

  async function plannedMove(slot: number): Promise<{ id: number; to: string }> {
    const { to, source } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 5), 2);
    const job = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    return { id: job.id, to };
  }

  it('never runs inside a port transaction that spans several renewal periods: the transaction rolls back, the renewal stays', async () => {
    const slot = 501;
    const { id, to } = await plannedMove(slot);
    const ttlMs = 900;
    // The flip's first catalog transaction (job row locked) holds the connection in a statement
    // spanning two renewal periods, then fails as if another publisher had taken the map version:
    // it is rolled back and the flip tries again.
    const seen: { before?: Date; retry?: Date } = {};
    let flipReads = 0;
    const slotMaps: MoverSlotMaps = {
      publish: (...args) => env.slotMaps.publish(...args),
      ownerOf: (...args) => env.slotMaps.ownerOf(...args),
      current: async (client) => {
        if (client === undefined) return env.slotMaps.current();
        flipReads += 1;
        if (flipReads === 1) {
          seen.before = await leaseExpiry(env, id);
          await client.query('select pg_sleep($1)', [(ttlMs * 0.75) / 1000]);
          throw new SlotMapVersionConflictError(0, 0);
        }
        if (flipReads === 2) seen.retry = await leaseExpiry(env, id);
        return env.slotMaps.current(client);
      },
    };
    const mover = new Mover({ catalog: env.catalog, shards: env.shards, slotMaps, directory: env.directory, leaseTtlMs: ttlMs, readerGraceMs: 0 });

    const done = await mover.run(id);

    expect(done.state).toBe('done');
    expect(flipReads).toBe(2);
    // Renewed in its turn after the rollback (inside the transaction it would have been undone).
    expect((seen.retry as Date).getTime()).toBeGreaterThan((seen.before as Date).getTime());
    expect(warnings.map((w) => `${w.name}: ${w.message}`)).toEqual([]);
    expect(await env.ownerOf(slot)).toBe(to);
    expect(await countSlot(env.shards.get(to) as pg.Pool, slot)).toEqual({ users: 5, documents: 10 });
  }, 60_000);

  it('keeps the lease through a run longer than the lease: another mover is refused throughout', async () => {
    const slot = 502;
    const { id } = await plannedMove(slot);
    const ttlMs = 1500;
    const refusals: unknown[] = [];
    const expiries: Date[] = [];
    const other = env.mover({ leaseTtlMs: ttlMs });
    const mover = env.mover({
      leaseTtlMs: ttlMs,
      readerGraceMs: 0,
      // The run stalls during its catch-up for twice its lease, with another mover trying to take
      // the job over meanwhile.
      hook: async (point) => {
        if (point !== 'catching_up') return;
        for (let i = 0; i < 4; i++) {
          await delay(ttlMs / 2);
          expiries.push(await leaseExpiry(env, id));
          refusals.push(
            await other.run(id).then(
              () => 'ran',
              (err: unknown) => err,
            ),
          );
        }
      },
    });

    const done = await mover.run(id);

    expect(done.state).toBe('done');
    expect(refusals).toHaveLength(4);
    for (const r of refusals) expect(r).toBeInstanceOf(MoveBusyError);
    // The expiry keeps moving forward while the run stalls.
    for (let i = 1; i < expiries.length; i++) expect((expiries[i] as Date).getTime()).toBeGreaterThanOrEqual((expiries[i - 1] as Date).getTime());
    expect((expiries.at(-1) as Date).getTime()).toBeGreaterThan((expiries[0] as Date).getTime() + ttlMs);
    expect(warnings).toEqual([]);
  }, 60_000);
});
