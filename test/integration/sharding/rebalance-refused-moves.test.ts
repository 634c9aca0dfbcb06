/**
 * Issue #15: the rebalance check proposed moves the move plan then refused (409), and proposed the
 * same ones again at every snapshot: an operator (or a tool) following GET /shards/rebalance-check
 * with POST /shards/moves met the same refusal every health_check_interval. The check now asks the
 * plan's own checks (Mover.refusals, the checks POST /shards/moves runs before it records anything)
 * of every move it would propose, leaves out a unit the plan refuses, plans again without it, and
 * lists the unit under `summary.unresolved` with the plan's own words.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { withRequestDeadline } from '../../../functions/adapters/postgres/request-deadline.js';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import type { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import type { InspectionFailure } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ConflictError, UnavailableError, type ScalingApiPort } from '../../../functions/api/service.js';
import { startTcpProxy } from '../../support/tcp-proxy.js';
import { keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { rebalancePools, rebalancePort } from './fixtures/rebalance-port.js';

/** Slots of shard_a with rows (2 users, 1 document each: 4 rows a slot); shard_b holds none. */
const SLOTS = 10;

let env: MoveEnv;
let pools: ShardPools;
let port: ScalingApiPort;
/** The slot the first test makes the plan refuse, until it deletes the row. */
let refusedSlot = '';
let mapAtStart: Awaited<ReturnType<MoveEnv['slotMaps']['current']>>;

beforeAll(async () => {
  env = await startMoveEnv();
  pools = rebalancePools(env);
  const map = await env.slotMaps.current();
  mapAtStart = map;
  const source = env.shards.get('shard_a');
  if (!source) throw new Error('no shard_a in the move env');
  for (const slot of map.assignments.flatMap((shard, s) => (shard === 'shard_a' ? [s] : [])).slice(0, SLOTS)) await seedUsers(source, slot, keysInSlot(slot, 2), 1);
  port = portWith(env.mover());
}, 180_000);

/** The API's port over the env's shards, its moves planned (and refusals asked) by `mover`. */
function portWith(mover: ReturnType<MoveEnv['mover']>, onFailure?: (failure: InspectionFailure) => void): ScalingApiPort {
  return rebalancePort(env, { slotMap: mapAtStart, inspector: new ShardInspector(pools, { timeoutMs: 5000 }), mover, ...(onFailure ? { onFailure } : {}) });
}


/**
 * A mover whose catalog pool has a Lambda's one connection (handlers/shared/db.ts, POOL_DEFAULTS:
 * max 1, 3 s to get it) on `catalogUrl`, and a connection of the env's own catalog pool to hold
 * locks with; both listened to (a test ends or cuts them).
 */
async function lambdaCatalogMover(catalogUrl: string): Promise<{ catalog: pg.Pool; mover: Mover; holder: pg.PoolClient }> {
  const catalog = new pg.Pool({ connectionString: catalogUrl, max: 1, connectionTimeoutMillis: 3000 });
  catalog.on('error', () => undefined);
  const mover = new Mover({ catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 100 });
  const holder = await env.catalog.connect();
  holder.on('error', () => undefined);
  return { catalog, mover, holder };
}
afterAll(async () => {
  await pools?.end();
  await env?.stop();
});

describe('the rebalance check and the moves the plan refuses', () => {
  it("does not propose again a move POST /shards/moves refused (the source's fence row of the slot says moved): it lists the slot as unresolved with the plan's reason, and proposes the others in its place", async () => {
    const source = env.shards.get('shard_a');
    if (!source) throw new Error('no shard_a');
    const first = await port.rebalanceCheck({ by: 'rows' });
    const [proposed] = first.moves;
    if (!proposed) throw new Error('the first check proposed no move');
    const slot = proposed.unit.id;
    refusedSlot = slot;
    // A hand change's row left on the source (a map by hand that gave the slot back fencing nothing):
    // the plan refuses every move of the slot from shard_a until the operator decides its owner.
    await source.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version) values ('slot', $1, 'moved', 'shard_b', 1)`, [slot]);
    try {
      const refused = await port.startMove({ kind: 'slot', unit: slot, to: proposed.to }, 'test').then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(refused).toBeInstanceOf(ConflictError);
      const reason = (refused as Error).message;
      expect(reason).toMatch(new RegExp(`^cannot move slot ${slot} from shard_a`));

      const again = await port.rebalanceCheck({ by: 'rows' });

      expect(again.moves.map((m) => m.unit.id)).not.toContain(slot);
      // The other slots hold the same rows: they are proposed in its place.
      expect(again.moves.length).toBeGreaterThan(0);
      expect(again.summary.unresolved).toContain(`slot ${slot} on shard_a is not proposed to move to shard_b: the move plan refuses it (POST /shards/moves answers 409): ${reason}`);
      // The refused POST recorded nothing.
      expect(await env.mover().unfinished()).toEqual([]);
    } finally {
      await source.query(`delete from write_fences where kind = 'slot' and unit_id = $1`, [slot]);
    }
  });

  it("counts the rows of a slot the map gives to shard_a, whose fence row there says moved, in shard_a's load as in the unit it offers: the plan's figures and its moves agree", async () => {
    // Before, the census took the slot's rows off shard_a's load (a fence state of rows held
    // without owning them) yet offered the slot, with those rows, as a unit of shard_a: the plan
    // balanced 36 rows against 0 with units of 40, and the check proposed 4 moves where the
    // shards hold 40 rows and 0 (5 moves of 4 rows to balance them). The rows are where the map
    // sends the slot: a hand change's leftover row does not take them anywhere else.
    const source = env.shards.get('shard_a');
    if (!source) throw new Error('no shard_a');
    const map = await env.slotMaps.current();
    const slot = map.assignments.findIndex((shard) => shard === 'shard_a');
    await source.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version) values ('slot', $1, 'moved', 'shard_b', 1)`, [String(slot)]);
    try {
      const inspector = new ShardInspector(pools, { timeoutMs: 5000 });
      const census = await inspector.rebalanceCensus({ slotMap: map });
      const load = census.statistics.shards.find((s) => s.shardId === 'shard_a');
      const unitRows = census.units.filter((u) => u.shardId === 'shard_a').reduce((a, u) => a + u.rows, 0);
      expect(load?.rows).toBe(SLOTS * 4);
      expect(unitRows).toBe(SLOTS * 4);
      // /shards/statistics (exact) counts them as the census does.
      const exact = await inspector.statistics({ exact: true, slotMap: map, directory: await env.directory.all() });
      expect(exact.shards.find((s) => s.shardId === 'shard_a')?.rows).toBe(SLOTS * 4);

      const check = await port.rebalanceCheck({ by: 'rows' });
      expect(check.summary.shards.map((s) => [s.shardId, s.before])).toEqual([['shard_a', SLOTS * 4], ['shard_b', 0]]);
      expect(check.moves.map((m) => m.unit.id)).not.toContain(String(slot));
      expect(check.moves).toHaveLength(SLOTS / 2);
      expect(check.summary.movedRows).toBe(check.moves.reduce((a, m) => a + m.rows, 0));
      expect(check.summary.shards.map((s) => [s.shardId, s.after])).toEqual([['shard_a', (SLOTS / 2) * 4], ['shard_b', (SLOTS / 2) * 4]]);
      expect(check.summary.balancedAfter).toBe(true);
    } finally {
      await source.query(`delete from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)]);
    }
  });

  it('does not propose a move to a shard holding rows of the slot behind no fence row of it (the plan refuses it: its copy would delete them), naming them', async () => {
    const target = env.shards.get('shard_b');
    if (!target) throw new Error('no shard_b');
    const first = await port.rebalanceCheck({ by: 'rows' });
    const [proposed] = first.moves;
    if (!proposed) throw new Error('the first check proposed no move');
    const slot = proposed.unit.id;
    // Copies of the slot's rows on shard_b that the map does not send readers to (a restore, rows copied by hand).
    await seedUsers(target, Number(slot), keysInSlot(Number(slot), 1), 0);
    try {
      const again = await port.rebalanceCheck({ by: 'rows' });

      expect(again.moves.map((m) => m.unit.id)).not.toContain(slot);
      expect(again.summary.unresolved.join('\n')).toContain(`slot ${slot} on shard_a is not proposed to move to shard_b: the move plan refuses it (POST /shards/moves answers 409): cannot move slot ${slot} from shard_a to shard_b: shard_b holds rows of the slot`);
    } finally {
      await target.query('delete from users where slot = $1', [Number(slot)]);
    }
  });

  it('proposes the slot again once the row is settled: the refusal is asked afresh at each snapshot, not remembered', async () => {
    const check = await port.rebalanceCheck({ by: 'rows' });
    expect(check.summary.unresolved).toEqual([]);
    expect(check.moves.map((m) => m.unit.id)).toContain(refusedSlot);
  });
  it("answers where the move plan's checks of a move cannot read a shard (it stopped answering after the census): the moves it could not check are not proposed, each named with the failure's kind, and the failure is reported", async () => {
    // Before, Mover.refusals threw the driver's error and the whole check failed with it (500:
    // "the check failed", GET /recommendations without its shard figures) where, without the
    // checks, it had answered. shard_b's pool here reaches nothing (a port nothing listens on, on
    // loopback): the census (the inspector's pools) measured it, the checks cannot read it.
    const gone = new pg.Pool({ connectionString: 'postgres://nobody@127.0.0.1:1/nothing', connectionTimeoutMillis: 2000, max: 1 });
    gone.on('error', () => undefined);
    const failures: InspectionFailure[] = [];
    try {
      const checked = portWith(env.mover({ shards: new Map([...env.shards, ['shard_b', gone]]) }), (f) => failures.push(f));
      const check = await checked.rebalanceCheck({ by: 'rows' });

      expect(check.moves).toEqual([]);
      expect(check.needed).toBe(true);
      // The summary's figures are those of the moves proposed, none: not those of the plan's
      // (before, it said the shards were balanced after moves it did not propose).
      expect(check.summary.movedRows).toBe(0);
      expect(check.summary.movedBytes).toBe(0);
      expect(check.summary.balancedAfter).toBe(false);
      expect(check.summary.imbalanceAfter).toBe(check.summary.imbalanceBefore);
      expect(check.summary.shards.map((s) => s.after)).toEqual(check.summary.shards.map((s) => s.before));
      expect(check.summary.unresolved.length).toBeGreaterThan(0);
      for (const line of check.summary.unresolved) {
        expect(line).toMatch(
          /^slot \d+ on shard_a is not proposed to move to shard_b: the move plan's checks of it (could not be made \(connection error ECONNREFUSED\)|were not made \(they stopped at another move's: connection error ECONNREFUSED\)); the next check asks them again$/,
        );
      }
      // The driver's own text (an address, a port) stays in the report, out of the answer.
      expect(check.summary.unresolved.join('\n')).not.toContain('127.0.0.1');
      expect(failures.length).toBeGreaterThan(0);
      expect(failures[0]?.what).toMatch(/rebalance check/);
    } finally {
      await gone.end();
    }
  });
  it("answers while a read of the move plan's checks waits on a lock (the catalog's slot_owner_history locked by a migration): the moves not checked in the checks' time are not proposed, named as such", async () => {
    // Nothing bounded the checks' reads (the shards' pools set no query timeout; the control
    // login's catalog statement_timeout is 10 s a read, four reads at a time, batch after batch):
    // the former owners' check (checkFormerOwnersHoldNoSlotRows) waited on the history's lock for
    // as long as it was held, and the whole check with it, past the API's request deadline, its
    // census (which does not read the history) made long before.
    const holder = await env.catalog.connect();
    holder.on('error', () => undefined);
    try {
      await holder.query('begin');
      await holder.query('lock table catalog.slot_owner_history in access exclusive mode');
      const answered = port.rebalanceCheck({ by: 'rows' }).then(
        (check) => ({ check }),
        (error: unknown) => ({ error }),
      );
      const inTime = await Promise.race([answered.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 30_000))]);
      await holder.query('rollback');
      const outcome = await answered;
      expect(inTime, 'the check waited for the lock').toBe(true);
      if (!('check' in outcome)) throw outcome.error;
      expect(outcome.check.moves).toEqual([]);
      expect(outcome.check.summary.unresolved.length).toBeGreaterThan(0);
      expect(outcome.check.summary.unresolved[0]).toMatch(/^slot \d+ on shard_a is not proposed to move to shard_b: the move plan's checks of it could not be made \(no answer within 5000 ms\); the next check asks them again$/);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
    }
  }, 60_000);
  it("leaves no connection held by a read its time ran out on: with the catalog's one connection (a Lambda's pool), the next check answers too, and so does POST /shards/moves of a directory key", async () => {
    // Mover.refusals dropped a late read's result but let the read run: the former owners' read
    // (checkFormerOwnersHoldNoSlotRows), waiting on the history's lock, kept the catalog's
    // connection, and a Lambda's catalog pool has one (handlers/shared/db.ts, POOL_DEFAULTS: max
    // 1, connectionTimeoutMillis 3000). The next check's census (the moves unfinished) then waited
    // for that connection and failed ("timeout exceeded when trying to connect", a 500), as did
    // any move planned meanwhile that does not read the history.
    const { catalog, mover, holder } = await lambdaCatalogMover(env.urls.catalog);
    const checked = portWith(mover);
    const pinned = keysInSlot(Number(refusedSlot), 1)[0] as string;
    try {
      await holder.query('begin');
      await holder.query('lock table catalog.slot_owner_history in access exclusive mode');
      const outcomes: string[] = [];
      for (let i = 0; i < 2; i++) {
        const check = await checked.rebalanceCheck({ by: 'rows' }).then(
          (c) => c,
          (error: unknown) => error as Error,
        );
        outcomes.push(check instanceof Error ? `failed: ${check.message}` : `answered: ${check.moves.length} moves, ${check.summary.unresolved.length} unresolved`);
      }
      // A directory key's move reads no history: the plan is made (and cancelled below).
      const started = await checked.startMove({ kind: 'directory', unit: pinned, to: 'shard_b' }, 'test').then(
        (job) => job,
        (error: unknown) => error as Error,
      );
      // Planned or refused by its checks: either is an answer; a 503 (the catalog's connection not had) is not.
      outcomes.push(started instanceof UnavailableError ? `move unavailable: ${started.message}` : 'move answered');
      expect(outcomes.map((o) => o.replace(/\d+ unresolved/, 'N unresolved'))).toEqual(['answered: 0 moves, N unresolved', 'answered: 0 moves, N unresolved', 'move answered']);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
      for (const job of await env.mover().unfinished()) await env.mover().cancel(job.id).catch(() => undefined);
      await catalog.end();
    }
  }, 60_000);
  it("gives the move plan's checks what the request has left where that is less than their 5 s (API Gateway answers 504 at its deadline, the check's answer unread)", async () => {
    // Before, the checks had 5 s from the census's end whatever the request had left: a census
    // that ended near the request's deadline (it is bounded by it, shard-inspector.ts) was
    // followed by up to 5 s of checks past it.
    const holder = await env.catalog.connect();
    holder.on('error', () => undefined);
    try {
      await holder.query('begin');
      await holder.query('lock table catalog.slot_owner_history in access exclusive mode');
      const check = await withRequestDeadline(Date.now() + 1500, () => port.rebalanceCheck({ by: 'rows' }));
      expect(check.moves).toEqual([]);
      const budgets = check.summary.unresolved.map((line) => Number(/no answer within (\d+) ms/.exec(line)?.[1]));
      expect(budgets.length).toBeGreaterThan(0);
      for (const budget of budgets) expect(budget).toBeLessThanOrEqual(1500);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
    }
  }, 60_000);
  it("answers where the connection of a read of the move plan's checks is lost while the read runs (a failover, a proxy): the lost connection's error event is heard, the process goes on", async () => {
    // boundedPool sends each read on a client of its own taken with pool.connect(), and pg-pool
    // takes its idle listener off a client it lends: a connection lost under a running read (no
    // server's FATAL first: a failover, a proxy or NAT dropping it) made the client emit 'error'
    // with no listener, an uncaught exception that ended the process (a Lambda's API, local mode),
    // where pg-pool's own query (before 0d1a4a2) listens for it. The catalog is reached here
    // through a proxy that is cut while the former owners' read waits on the history's lock.
    const proxy = await startTcpProxy(Number(new URL(env.urls.catalog).port));
    const url = new URL(env.urls.catalog);
    url.hostname = '127.0.0.1';
    url.port = String(proxy.port);
    const { catalog, mover, holder } = await lambdaCatalogMover(url.toString());
    try {
      await holder.query('begin');
      await holder.query('lock table catalog.slot_owner_history in access exclusive mode');
      const answered = portWith(mover)
        .rebalanceCheck({ by: 'rows' })
        .then(
          (check) => ({ check }),
          (error: unknown) => ({ error }),
        );
      // The read waiting on the lock, then its connection lost.
      for (let i = 0; i < 100; i++) {
        const { rows } = await env.catalog.query<{ n: number }>(
          `select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%slot_owner_history%' and pid <> pg_backend_pid()`,
        );
        if ((rows[0]?.n ?? 0) > 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      await proxy.cut();
      const outcome = await answered;
      if (!('check' in outcome)) throw outcome.error;
      expect(outcome.check.moves).toEqual([]);
      expect(outcome.check.summary.unresolved.length).toBeGreaterThan(0);
      expect(outcome.check.summary.unresolved[0]).toMatch(/^slot \d+ on shard_a is not proposed to move to shard_b: the move plan's checks of it could not be made \(/);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
      await catalog.end();
      await proxy.close();
    }
  }, 60_000);
  it("leaves no statement of a read its time ran out on waiting on the server: each check's cut read is cancelled there, not left to wait for the lock on a connection the client ended", async () => {
    // boundedPool ended a cut read's connection, but a backend waiting on a lock does not read its
    // socket: it waited on for as long as the lock was held (the shards' logins set no
    // statement_timeout), one more backend each check (measured: 1, 2, 3, 4 after four checks),
    // where before 0d1a4a2 the pool's size bounded them. The cut now sends a cancel request too.
    const { catalog, mover, holder } = await lambdaCatalogMover(env.urls.catalog);
    const checked = portWith(mover);
    const waiting = async (): Promise<number> =>
      (
        await env.catalog.query<{ n: number }>(
          `select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%slot_owner_history%' and pid <> pg_backend_pid()`,
        )
      ).rows[0]?.n ?? -1;
    try {
      await holder.query('begin');
      await holder.query('lock table catalog.slot_owner_history in access exclusive mode');
      const counts: number[] = [];
      for (let i = 0; i < 2; i++) {
        const check = await withRequestDeadline(Date.now() + 1500, () => checked.rebalanceCheck({ by: 'rows' }));
        expect(check.summary.unresolved.length).toBeGreaterThan(0);
        // The cancel is sent as the read is cut; its backend ends once the server has it.
        let n = await waiting();
        for (let j = 0; j < 40 && n > 0; j++) {
          await new Promise((r) => setTimeout(r, 50));
          n = await waiting();
        }
        counts.push(n);
      }
      expect(counts, 'backends of cut reads still waiting on the lock after each check').toEqual([0, 0]);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
      await catalog.end();
    }
  }, 60_000);

  it("leaves no read of the latest slot map waiting on the server once the checks' time ran out (catalog.slot_maps locked): the shared read is bounded as the others (h132)", async () => {
    // Mover.refusals read the latest map through the slot map store's own pool, outside the
    // checks' bounded pools: the verdict came at `until`, but the read waited on for as long as the
    // lock was held, holding a connection of the store's pool (a Lambda's one catalog connection).
    const holder = await env.catalog.connect();
    holder.on('error', () => undefined);
    const slot = Number(mapAtStart.assignments.findIndex((shard) => shard === 'shard_a'));
    try {
      await holder.query('begin');
      await holder.query('lock table catalog.slot_maps in access exclusive mode');
      const [verdict] = await env.mover().refusals([{ kind: 'slot', slot, to: 'shard_b', createdBy: 'test' }], { until: Date.now() + 1000, budgetMs: 1000 });
      expect(verdict !== undefined && 'failed' in verdict ? String(verdict.failed) : verdict).toMatch(/no answer within 1000 ms/);
      expect(await stillWaiting("%from catalog.slot_maps order by version desc limit 1%"), 'reads of the latest map still waiting on the lock').toBe(0);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
    }
  }, 60_000);
  it("leaves no read of a slot's owner inside the checks waiting on the server once their time ran out (catalog.slot_maps locked after the shared reads): it is bounded as the others (h132)", async () => {
    // checkTargetHoldsNoSlotRows reads the slot's owner again (SlotMapStore.ownerOf) once it has
    // found rows on the target: through the store's own pool, outside the checks' bounded pools.
    const target = env.shards.get('shard_b') as pg.Pool;
    const slot = mapAtStart.assignments.flatMap((shard, s) => (shard === 'shard_a' ? [s] : []))[SLOTS + 3] as number;
    await seedUsers(target, slot, keysInSlot(slot, 1), 0);
    const holder = await env.catalog.connect();
    holder.on('error', () => undefined);
    // The shared reads answer; the table is locked as the target's check begins (the checks read
    // shard_b first there, each read on a connection of its own: Mover.refusals' boundedPool).
    let armed = true;
    const gated = new Proxy(target, {
      get(pool, prop) {
        if (prop !== 'connect') return Reflect.get(pool, prop, pool) as unknown;
        return async () => {
          if (armed) {
            armed = false;
            await holder.query('begin');
            await holder.query('lock table catalog.slot_maps in access exclusive mode');
          }
          return pool.connect();
        };
      },
    });
    try {
      const mover = new Mover({ catalog: env.catalog, shards: new Map([...env.shards, ['shard_b', gated]]), slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 100 });
      const [verdict] = await mover.refusals([{ kind: 'slot', slot, to: 'shard_b', createdBy: 'test' }], { until: Date.now() + 1500, budgetMs: 1500 });
      expect(verdict !== undefined && 'failed' in verdict ? String(verdict.failed) : JSON.stringify(verdict)).toMatch(/no answer within 1500 ms/);
      expect(await stillWaiting('%assignments[$1::int + 1] as owner%'), "reads of the slot's owner still waiting on the lock").toBe(0);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
      await target.query('delete from users where slot = $1', [slot]);
    }
  }, 60_000);
});

/** How many backends run a statement like `pattern` waiting on a lock, after up to 2 s for cancels sent to arrive. */
async function stillWaiting(pattern: string): Promise<number> {
  const count = async (): Promise<number> =>
    (await env.catalog.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like $1 and pid <> pg_backend_pid()`, [pattern])).rows[0]?.n ?? -1;
  let n = await count();
  for (let j = 0; j < 40 && n > 0; j++) {
    await new Promise((r) => setTimeout(r, 50));
    n = await count();
  }
  return n;
}
