/**
 * Issue #15 (h145, a review of h141's de6995a): POST /shards/moves answers by the request's
 * deadline, records no job after that answer, and says what it knows of what was recorded.
 *
 * 1. Mover.plan's own checkout of the catalog connection (the job's transaction) was bounded by
 *    the catalog pool's connection timeout alone (3 s in a Lambda): a catalog gone silent after the
 *    checks (a failover's old address) kept a request with 1 s left 2 s past its deadline, and the
 *    answer named "the catalog or a shard", not the deadline.
 * 2. The 23505 path (the slot already has an unfinished move) read the other job's id after the
 *    rollback with the deadline's guard still armed: a read held past the deadline (a lock of
 *    catalog.move_jobs) was cancelled, and its raw 57014 answered "the catalog or a shard did not
 *    answer" where the request was a conflict.
 * 3. A catalog silent once the COMMIT was sent: the job may have been recorded (here it was),
 *    and the answer said "the catalog or a shard did not answer ...; try again shortly".
 * 4. The statement_timeout the plan's transaction sets (the time left, never over the login's):
 *    a login with none, a shorter and a longer one; the pool of one reused right after a plan
 *    cancelled at the deadline; no backend left idle in transaction. A login's own shorter one
 *    that ends the job's insert is named (h150): it was answered "the catalog or a shard did not
 *    answer (a statement ran past its time limit); try again shortly", naming no setting.
 * 5. (h150) The checks' own reads of the catalog (the slot map, the directory, the owners) were
 *    bounded only by the catalog pool's connection timeout (3 s in a Lambda) and the read's own
 *    bounds (the control login's 10 s statement_timeout, pg's 12 s query_timeout): a catalog
 *    silent from the start of a request with 1 s left, or a table of it held by a lock, kept the
 *    request past its deadline, answered in the generic words.
 */
import type { APIGatewayProxyEvent, Context } from 'aws-lambda';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { createScalingApiPort, shardingDepsOf, type ScalingApiDeps } from '../../../functions/api/wiring.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { createApiHandler } from '../../../functions/handlers/api.js';
import { apiFunctionContext, apiGatewayEvent, receivedLeaving } from './fixtures/api-gateway-request.js';
import { firstSlotOwnedBy, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { SilentRelay } from './fixtures/silent-relay.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2 });
}, 120_000);
afterAll(async () => {
  await env?.stop();
}, 60_000);

const event = (body: unknown, receivedAt: number): APIGatewayProxyEvent => apiGatewayEvent({ method: 'POST', path: '/shards/moves', body, receivedAt, requestId: 'plan-review' });
const context = (): Context => apiFunctionContext(29_000, 'plan-review-test');

/** A catalog pool as a Lambda's (one connection, a 3 s connection timeout), at `url`. */
function catalogPool(url: string): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max: 1, connectionTimeoutMillis: 3000 });
  pool.on('error', () => undefined);
  return pool;
}

/**
 * A runtime (and the API's port over it) whose catalog is `catalog`; `beforePlansCheckout`, where
 * given, runs once, before the checkout Mover.plan makes itself for the job's transaction (its
 * `planHook` at `before-record-checkout`: after the checks' reads, which check out connections of
 * their own, held to the deadline: h150). Before, the test told that checkout by the names of the
 * calling methods on the stack (`Mover.plan`, not under `Mover.checked`; h156).
 */
async function runtimeOver(catalog: pg.Pool, beforePlansCheckout?: () => Promise<void>): Promise<{ runtime: ShardingRuntime; port: ScalingApiPort }> {
  const config = parseShardingConfig({
    strategy: 'hash_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url, weight: 1, read_replicas: [] })),
    default_shard: 'shard_a',
  });
  let armed = beforePlansCheckout !== undefined;
  const runtime = await createShardingRuntime({
    config,
    catalog,
    actor: 'plan-review-test',
    pools: { max: 1 },
    movePlanHook: async (point) => {
      if (!armed || point !== 'before-record-checkout') return;
      armed = false;
      await beforePlansCheckout?.();
    },
  });
  return { runtime, port: createScalingApiPort({ ...({} as Omit<ScalingApiDeps, 'sharding'>), sharding: shardingDepsOf(runtime, () => undefined) }) };
}

const jobsOf = async (slot: number): Promise<number> => Number((await env.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs where slot = $1', [slot])).rows[0]?.n);
const detailOf = (body: string): string => String((JSON.parse(body) as { detail?: unknown }).detail);

async function adminClient(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: env.urls.catalog });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

/** A trigger on catalog.move_jobs sleeping `seconds` before the insert of `slot`'s job. */
async function slowInsert(admin: pg.Client, slot: number, seconds: number): Promise<() => Promise<void>> {
  const name = `h145_slow_${slot}`;
  await admin.query(`create or replace function catalog.${name}() returns trigger language plpgsql as $$ begin perform pg_sleep(${seconds}); return new; end $$`);
  await admin.query(`create trigger ${name} before insert on catalog.move_jobs for each row when (new.slot = ${slot}) execute function catalog.${name}()`);
  return async () => {
    await admin.query(`drop trigger if exists ${name} on catalog.move_jobs`).catch(() => undefined);
    await admin.query(`drop function if exists catalog.${name}()`).catch(() => undefined);
  };
}

/** Waits until no backend of the catalog but `admin`'s runs an insert into catalog.move_jobs (a cancelled one ends at its next interrupt check). */
async function insertsEnded(admin: pg.Client): Promise<void> {
  for (let i = 0; i < 80; i++) {
    const { rows } = await admin.query<{ n: string }>(`select count(*) as n from pg_stat_activity where query like '%insert into catalog.move_jobs%' and state <> 'idle' and pid <> pg_backend_pid()`);
    if (Number(rows[0]?.n) === 0) return;
    await delay(100);
  }
}

describe("POST /shards/moves whose catalog goes silent (a failover's old address) once the checks have read it, the request's deadline before the pool's connection timeout", () => {
  it("answers 503 at the deadline naming the catalog's connection, not the pool's timeout; nothing recorded; a move planned next on the pool of one is recorded", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 500);
    const relay = await SilentRelay.start(Number(new URL(env.urls.catalog).port));
    const catalog = catalogPool(relay.url(env.urls.catalog));
    // The checks' catalog reads answered; the catalog then fails over: its connection is reset
    // and its old address answers nothing, so the plan's own checkout opens a connection that
    // is never answered.
    const { runtime, port } = await runtimeOver(catalog, async () => {
      relay.failOver();
      await delay(100);
    });
    try {
      const handler = createApiHandler(() => port);
      const started = Date.now();
      const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(1500)), context());
      // A figure for the report, not asserted.
      console.log(`silent catalog at the plan's checkout: answered ${result.statusCode} after ${Date.now() - started} ms (1500 ms left)`);
      const detail = detailOf(result.body);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 0 });
      expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} from shard_a to shard_b: the catalog gave no connection for the job's transaction by the request's deadline`));
      expect(detail).toContain('Nothing was recorded');
      relay.heal();
      const next = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, Date.now()), context());
      expect({ next: next.statusCode, jobs: await jobsOf(slot) }).toEqual({ next: 202, jobs: 1 });
    } finally {
      await runtime.close();
      await catalog.end().catch(() => undefined);
      await relay.stop();
    }
  }, 60_000);
});

describe("POST /shards/moves of a slot that already has an unfinished move, the read of that move's id held past the request's deadline", () => {
  it("answers 409 naming the unfinished move (its id not read in time), not a raw cancelled statement", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 600);
    const admin = await adminClient();
    const holder = await adminClient();
    const catalog = catalogPool(env.urls.catalog);
    const { runtime, port } = await runtimeOver(catalog);
    const drop = await slowInsert(admin, slot, 0.4);
    let holding: Promise<unknown> | undefined;
    try {
      // The slot's unfinished move, planned outside a request (no deadline) and not run.
      await runtime.mover.plan({ kind: 'slot', slot, to: 'shard_b', createdBy: 'plan-review-test' });
      const handler = createApiHandler(() => port);
      const answer = handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(2000)), context());
      // While the second plan's insert sleeps (before its 23505), catalog.move_jobs is asked ACCESS
      // EXCLUSIVE (a migration's ALTER TABLE): granted once the plan rolls back, and the plan's read
      // of the other job's id then waits for it, past the deadline.
      for (let i = 0; i < 100; i++) {
        const { rows } = await admin.query<{ n: string }>(`select count(*) as n from pg_stat_activity where wait_event = 'PgSleep' and query like '%insert into catalog.move_jobs%'`);
        if (Number(rows[0]?.n) > 0) break;
        await delay(20);
      }
      holding = holder.query('begin; lock table catalog.move_jobs in access exclusive mode; select pg_sleep(4); rollback').catch(() => undefined);
      const result = await answer;
      const detail = detailOf(result.body);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 409, jobs: 1 });
      expect(detail).toMatch(new RegExp(`^slot ${slot} already has an unfinished move \\(its job's id could not be read by the request's deadline; the same request made again names it\\); finish or cancel it first`));
    } finally {
      await holding;
      await drop();
      await runtime.close();
      await catalog.end().catch(() => undefined);
      await admin.end().catch(() => undefined);
      await holder.end().catch(() => undefined);
    }
  }, 60_000);
});

describe('POST /shards/moves whose catalog goes silent once the COMMIT of the job was sent', () => {
  it("answers 503 saying the job may have been recorded (it was) and how to find it, not 'try again shortly'; planned again, 409 names it", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 700);
    const relay = await SilentRelay.start(Number(new URL(env.urls.catalog).port));
    const catalog = catalogPool(relay.url(env.urls.catalog));
    // The plan's own connection: its COMMIT reaches the server, whose answer is lost.
    const { runtime, port } = await runtimeOver(catalog, async () => relay.blackholeAfter('commit\u0000'));
    try {
      const handler = createApiHandler(() => port);
      const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(1500)), context());
      const detail = detailOf(result.body);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 1 });
      expect(detail).toMatch(new RegExp(`^starting the move: cannot tell whether the move of slot ${slot} from shard_a to shard_b was recorded: the catalog did not answer its commit`));
      expect(detail).toContain('plan the same move again, which answers 409 naming the job');
      expect(detail).not.toContain('try again shortly');
      expect(detail).not.toContain('Nothing was recorded');
      // As it says: the same move planned again answers 409 naming the job recorded.
      relay.heal();
      const again = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, Date.now()), context());
      expect({ status: again.statusCode, detail: detailOf(again.body) }).toEqual({ status: 409, detail: expect.stringMatching(new RegExp(`^slot ${slot} already has an unfinished move \\(job #\\d+\\)`)) as unknown });
    } finally {
      relay.heal();
      await runtime.close();
      await catalog.end().catch(() => undefined);
      await relay.stop();
    }
  }, 60_000);
});

describe("POST /shards/moves whose job's COMMIT is slow past the deadline (a deferred trigger; a slow fsync, a synchronous standby)", () => {
  it("answers 503 at the deadline that it cannot tell whether the job was recorded (a commit once sent is not cancelled, and the statement_timeout of the time left does not end it): the job is recorded after the answer", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 1100);
    const admin = await adminClient();
    const catalog = catalogPool(env.urls.catalog);
    const { runtime, port } = await runtimeOver(catalog);
    await admin.query(`create or replace function catalog.h145_slow_commit() returns trigger language plpgsql as $$ begin perform pg_sleep(3); return null; end $$`);
    await admin.query(`create constraint trigger h145_slow_commit after insert on catalog.move_jobs deferrable initially deferred for each row when (new.slot = ${slot}) execute function catalog.h145_slow_commit()`);
    try {
      const handler = createApiHandler(() => port);
      const started = Date.now();
      const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(1500)), context());
      console.log(`slow commit: answered ${result.statusCode} after ${Date.now() - started} ms (1500 ms left)`);
      const detail = detailOf(result.body);
      expect(result.statusCode).toBe(503);
      expect(detail).toMatch(new RegExp(`^starting the move: cannot tell whether the move of slot ${slot} from shard_a to shard_b was recorded: the catalog did not answer its commit \\(no answer by the request's deadline; the connection was dropped\\)`));
      for (let i = 0; i < 60; i++) {
        const { rows } = await admin.query<{ n: string }>(`select count(*) as n from pg_stat_activity where query = 'commit' and state <> 'idle' and pid <> pg_backend_pid()`);
        if (Number(rows[0]?.n) === 0) break;
        await delay(100);
      }
      // PostgreSQL's statement_timeout (set with SET LOCAL, the time left) does not end a COMMIT
      // running deferred triggers (nor could a cancel a synchronous standby's wait): the job is
      // recorded after the answer, which is why the answer cannot say nothing was.
      expect(await jobsOf(slot)).toBe(1);
    } finally {
      await admin.query('drop trigger if exists h145_slow_commit on catalog.move_jobs').catch(() => undefined);
      await admin.query('drop function if exists catalog.h145_slow_commit()').catch(() => undefined);
      await runtime.close();
      await catalog.end().catch(() => undefined);
      await admin.end().catch(() => undefined);
    }
  }, 60_000);
});

describe("POST /shards/moves whose job's insert is slow past the deadline, by the login's statement_timeout", () => {
  for (const [login, timeout, slowCancelMs] of [
    ['none (0)', '0', 0],
    ['longer than the time left (60 s)', '60s', 0],
    ['none (0), the cancel request reaching the catalog 300 ms late (a slow path)', '0', 300],
  ] as const) {
    it(`a login's statement_timeout ${login}: 503 at the deadline, nothing recorded; the pool of one plans the next move (no late cancel reaches it), no backend left idle in transaction`, async () => {
      const slot = await firstSlotOwnedBy(env, 'shard_a', 800 + 100 * (timeout === '0' ? 0 : 1) + 200 * (slowCancelMs > 0 ? 1 : 0));
      const other = await firstSlotOwnedBy(env, 'shard_a', slot + 1);
      const admin = await adminClient();
      const relay = await SilentRelay.start(Number(new URL(env.urls.catalog).port));
      const url = new URL(slowCancelMs > 0 ? relay.url(env.urls.catalog) : env.urls.catalog);
      url.searchParams.set('options', `-c statement_timeout=${timeout}`);
      url.searchParams.set('application_name', 'h145-plan');
      const catalog = catalogPool(url.toString());
      const { runtime, port } = await runtimeOver(catalog);
      // The pool's one connection is open (the runtime read the catalog): a cancel request, on a
      // connection of its own, is what is slowed.
      relay.slowNewConnections(slowCancelMs);
      const drop = await slowInsert(admin, slot, 3);
      try {
        const handler = createApiHandler(() => port);
        const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(1500)), context());
        expect(result.statusCode).toBe(503);
        expect(detailOf(result.body)).toContain('had passed while it recorded its job');
        // Right after, on the same pool of one: recorded, not cancelled by a late request.
        const next = await handler(event({ kind: 'slot', unit: String(other), to: 'shard_b' }, Date.now()), context());
        expect({ next: next.statusCode, detail: next.statusCode === 202 ? '' : detailOf(next.body) }).toEqual({ next: 202, detail: '' });
        await insertsEnded(admin);
        const { rows } = await admin.query<{ n: string }>(`select count(*) as n from pg_stat_activity where application_name = 'h145-plan' and state like 'idle in transaction%'`);
        expect({ jobs: await jobsOf(slot), nextJobs: await jobsOf(other), idleInTransaction: Number(rows[0]?.n) }).toEqual({ jobs: 0, nextJobs: 1, idleInTransaction: 0 });
      } finally {
        await relay.stop();
        await drop();
        await runtime.close();
        await catalog.end().catch(() => undefined);
        await admin.end().catch(() => undefined);
      }
    }, 60_000);
  }

  it("a login's statement_timeout shorter than the time left (200 ms) ends the insert first: nothing recorded, and the answer does not blame the request's deadline", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 1000);
    const admin = await adminClient();
    const url = new URL(env.urls.catalog);
    url.searchParams.set('options', '-c statement_timeout=200');
    const catalog = catalogPool(url.toString());
    const { runtime, port } = await runtimeOver(catalog);
    const drop = await slowInsert(admin, slot, 1);
    try {
      const handler = createApiHandler(() => port);
      const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(5000)), context());
      const detail = detailOf(result.body);
      console.log(`login statement_timeout 200 ms: ${result.statusCode} ${detail}`);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 0 });
      expect(detail).not.toContain("the request's deadline");
      // The setting that ended it is named, and that nothing was recorded (h150).
      expect(detail).toMatch(new RegExp(`^starting the move: could not record the move of slot ${slot} from shard_a to shard_b: the catalog cancelled a statement of the job's transaction by its session's own statement_timeout`));
      expect(detail).toContain('Nothing was recorded');
      expect(detail).not.toContain('try again shortly');
    } finally {
      await drop();
      await runtime.close();
      await catalog.end().catch(() => undefined);
      await admin.end().catch(() => undefined);
    }
  }, 60_000);
});

describe("POST /shards/moves whose catalog is silent from the start of the request (a failover's old address), about 1 s left", () => {
  it("answers 503 by the deadline naming the catalog and the plan's checks, not the pool's connection timeout; nothing recorded; the pool of one plans the next move once the catalog is back", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 1300);
    const relay = await SilentRelay.start(Number(new URL(env.urls.catalog).port));
    const catalog = catalogPool(relay.url(env.urls.catalog));
    const { runtime, port } = await runtimeOver(catalog);
    try {
      // The pool's one connection is reset and the address answers nothing: the checks' first read
      // of the catalog (the slot map) opens a connection that is never answered.
      relay.failOver();
      await delay(100);
      const handler = createApiHandler(() => port);
      const started = Date.now();
      const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(1500)), context());
      // A figure for the report, not asserted.
      console.log(`catalog silent from the start: answered ${result.statusCode} after ${Date.now() - started} ms (1500 ms left)`);
      const detail = detailOf(result.body);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 0 });
      expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} to shard_b: the catalog did not answer a read of the plan's checks by the request's deadline`));
      expect(detail).toContain('Nothing was recorded');
      relay.heal();
      const next = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, Date.now()), context());
      expect({ next: next.statusCode, detail: next.statusCode === 202 ? '' : detailOf(next.body), jobs: await jobsOf(slot) }).toEqual({ next: 202, detail: '', jobs: 1 });
    } finally {
      await runtime.close();
      await catalog.end().catch(() => undefined);
      await relay.stop();
    }
  }, 60_000);
});

describe('POST /shards/moves whose checks read catalog.slot_maps while a migration holds it ACCESS EXCLUSIVE', () => {
  for (const [login, timeout, leftMs, base] of [
    ['no statement_timeout of its own', '0', 1500, 1400],
    ["a statement_timeout of its own (200 ms) shorter than the request's time left", '200', 5000, 1500],
  ] as const) {
    it(`a login with ${login}: 503 naming the catalog ${timeout === '0' ? "and the request's deadline" : 'and its statement_timeout'}, nothing recorded, the read not left waiting; the pool of one plans the next move once the lock is gone`, async () => {
      const slot = await firstSlotOwnedBy(env, 'shard_a', base);
      const admin = await adminClient();
      const holder = await adminClient();
      const url = new URL(env.urls.catalog);
      url.searchParams.set('options', `-c statement_timeout=${timeout}`);
      url.searchParams.set('application_name', 'h150-checks');
      const catalog = catalogPool(url.toString());
      const { runtime, port } = await runtimeOver(catalog);
      let holding: Promise<unknown> | undefined;
      try {
        // Held 4 s, then let go (a migration's ALTER TABLE, say): longer than the request has.
        await holder.query('begin');
        await holder.query('lock table catalog.slot_maps in access exclusive mode');
        holding = holder
          .query('select pg_sleep(4)')
          .catch(() => undefined)
          .then(() => holder.query('rollback'))
          .catch(() => undefined);
        const handler = createApiHandler(() => port);
        const started = Date.now();
        const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(leftMs)), context());
        console.log(`slot_maps locked, login statement_timeout ${timeout}: answered ${result.statusCode} after ${Date.now() - started} ms (${leftMs} ms left): ${detailOf(result.body)}`);
        const detail = detailOf(result.body);
        expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 0 });
        if (timeout === '0') {
          expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} to shard_b: the catalog did not answer a read of the plan's checks by the request's deadline`));
          expect(detail).toContain('The read was cancelled on the catalog');
        } else {
          expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} to shard_b: the catalog cancelled a read of the plan's checks by its session's own statement_timeout`));
          expect(detail).not.toContain("the request's deadline");
        }
        expect(detail).toContain('Nothing was recorded');
        expect(detail).not.toContain('try again shortly');
        // While the lock is still held: no read of the plan's left waiting for it (cancelled on the
        // server, not only dropped by the client).
        let waiting = -1;
        for (let i = 0; i < 40; i++) {
          const { rows } = await admin.query<{ n: string }>(`select count(*) as n from pg_stat_activity where application_name = 'h150-checks' and wait_event_type = 'Lock'`);
          waiting = Number(rows[0]?.n);
          if (waiting === 0) break;
          await delay(50);
        }
        const { rows: held } = await admin.query<{ n: string }>(`select count(*) as n from pg_locks where relation = 'catalog.slot_maps'::regclass and mode = 'AccessExclusiveLock' and granted`);
        expect({ waiting, lockStillHeld: Number(held[0]?.n) }).toEqual({ waiting: 0, lockStillHeld: 1 });
      } finally {
        await admin.query(`select pg_cancel_backend(pid) from pg_stat_activity where query = 'select pg_sleep(4)'`).catch(() => undefined);
        await holding;
      }
      try {
        const handler = createApiHandler(() => port);
        const next = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, Date.now()), context());
        expect({ next: next.statusCode, detail: next.statusCode === 202 ? '' : detailOf(next.body), jobs: await jobsOf(slot) }).toEqual({ next: 202, detail: '', jobs: 1 });
      } finally {
        await runtime.close();
        await catalog.end().catch(() => undefined);
        await admin.end().catch(() => undefined);
        await holder.end().catch(() => undefined);
      }
    }, 60_000);
  }
});
