/**
 * Issue #15 (h141): POST /shards/moves must answer by the request's deadline and record no job
 * after that answer. Two gaps were left after h134/h137 bounded the plan's reads of the shards and
 * the lock waits of its record step:
 *
 * 1. A read of the plan's checks took its connection with the shard pool's own `connect()`,
 *    bounded by the pool's connection timeout (2 s), not by the request's deadline: a shard that
 *    accepts TCP and never answers the startup (a silent node) kept the request past its deadline
 *    by up to that, and the answer then blamed the pool ("no answer in time", "down, restarting,
 *    or unreachable") instead of the deadline.
 * 2. The statements of the job's transaction after the checks (its insert and the triggers it
 *    fires, the owner's re-read, the directory's re-read) were bounded only in their lock waits: one
 *    slow for another reason (a catalog under heavy I/O; simulated with a trigger that sleeps) ran
 *    past the deadline and then committed the job, answered to no one.
 * And (3) a plan behind a SHARE UPDATE EXCLUSIVE holder of catalog.slot_maps (a manual ANALYZE,
 * autovacuum) that lets go soon, with time left, waits and records its job (no refusal).
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

const event = (body: unknown, receivedAt: number): APIGatewayProxyEvent => apiGatewayEvent({ method: 'POST', path: '/shards/moves', body, receivedAt, requestId: 'plan-gaps' });
const context = (remainingMs: number): Context => apiFunctionContext(remainingMs, 'plan-gaps-test');

/** A runtime over the env's catalog and shards, shard `through`'s address `relay`'s where given, its shard pools of `max` connections. */
async function runtimeWith(max: number, through?: { readonly shard: string; readonly relay: SilentRelay }): Promise<{ runtime: ShardingRuntime; port: ScalingApiPort }> {
  const config = parseShardingConfig({
    strategy: 'hash_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({
      shard_id,
      database_url: through?.shard === shard_id ? through.relay.url(database_url) : database_url,
      weight: 1,
      read_replicas: [],
    })),
    default_shard: 'shard_a',
  });
  const runtime = await createShardingRuntime({ config, catalog: env.catalog, actor: 'plan-gaps-test', pools: { max } });
  return { runtime, port: createScalingApiPort({ ...({} as Omit<ScalingApiDeps, 'sharding'>), sharding: shardingDepsOf(runtime, () => undefined) }) };
}

const jobsOf = async (slot: number): Promise<number> => Number((await env.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs where slot = $1', [slot])).rows[0]?.n);

describe("POST /shards/moves whose target is silent (accepts TCP, never answers the startup), the request's deadline before the pool's connection timeout", () => {
  it("answers 503 naming the target as not answering within what the request had left, not the pool's timeout; nothing recorded; a move planned next on the same pool of one is recorded", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 100);
    const relay = await SilentRelay.start(Number(new URL(env.urls.shards.shard_b as string).port));
    // A Lambda's pools: one connection a node; the pool's connection timeout its default, 2 s.
    const { runtime, port } = await runtimeWith(1, { shard: 'shard_b', relay });
    try {
      relay.blackhole();
      const handler = createApiHandler(() => port);
      const started = Date.now();
      // 1 s left before the answer margin: the pool's connect would wait 2 s.
      const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(1000)), context(29_000));
      // A figure for the report, not asserted (timings are not tested): how long the request took.
      console.log(`silent target: answered ${result.statusCode} after ${Date.now() - started} ms (1000 ms left)`);
      const detail = String((JSON.parse(result.body) as { detail?: unknown }).detail);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 0 });
      expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} from shard_a to shard_b: shard_b did not answer \\(no answer within \\d+ ms, what the request had left\\): it is the move's target`));
      expect(detail).toContain('Nothing was recorded');
      // The target answers again (the connect given up on is the pool's to end: no connection of
      // the pool of one is left held by it), and the same move planned now is recorded.
      relay.heal();
      const next = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, Date.now()), context(29_000));
      expect({ next: next.statusCode, jobs: await jobsOf(slot) }).toEqual({ next: 202, jobs: 1 });
    } finally {
      await runtime.close();
      await relay.stop();
    }
  }, 60_000);
});

/**
 * Slow for another reason than a lock: a trigger on catalog.move_jobs that sleeps for the test's
 * slot alone (a catalog under heavy I/O, a slow disk), 4 s, where the request has 1 s left.
 */
describe("POST /shards/moves whose job's insert is slow (not a lock wait) past the request's deadline", () => {
  it('answers 503 (the deadline passed while it recorded its job), and no job is recorded after the answer', async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 200);
    const admin = new pg.Client({ connectionString: env.urls.catalog });
    admin.on('error', () => undefined);
    await admin.connect();
    const { runtime, port } = await runtimeWith(1);
    try {
      await admin.query(`create or replace function catalog.h141_slow_insert() returns trigger language plpgsql as $$ begin perform pg_sleep(4); return new; end $$`);
      await admin.query(`create trigger h141_slow_insert before insert on catalog.move_jobs for each row when (new.slot = ${slot}) execute function catalog.h141_slow_insert()`);
      const handler = createApiHandler(() => port);
      const started = Date.now();
      const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(1000)), context(29_000));
      console.log(`slow insert: answered ${result.statusCode} after ${Date.now() - started} ms (1000 ms left)`);
      const detail = String((JSON.parse(result.body) as { detail?: unknown }).detail);
      // Whatever still runs for the plan on the server has ended (the sleep's 4 s at most) before the jobs are counted.
      for (let i = 0; i < 60; i++) {
        const { rows } = await admin.query<{ n: string }>(`select count(*) as n from pg_stat_activity where query like '%insert into catalog.move_jobs%' and pid <> pg_backend_pid()`);
        if (Number(rows[0]?.n) === 0) break;
        await delay(100);
      }
      await delay(300);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 0 });
      expect(detail).toMatch(/^starting the move: cannot plan the move of slot \d+ from shard_a to shard_b: the request's deadline \(API Gateway's 29 s or the function's end, less the answer margin\) had passed while it recorded its job \(the catalog's statement running then was cancelled\)/);
      expect(detail).toContain('Nothing was recorded');
    } finally {
      await admin.query('drop trigger if exists h141_slow_insert on catalog.move_jobs').catch(() => undefined);
      await admin.query('drop function if exists catalog.h141_slow_insert()').catch(() => undefined);
      await admin.end().catch(() => undefined);
      await runtime.close();
    }
  }, 60_000);
});

describe('POST /shards/moves while catalog.slot_maps is held SHARE UPDATE EXCLUSIVE (an ANALYZE, autovacuum) for a moment', () => {
  it('waits for the holder, with time left, and records its job', async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 300);
    const holder = new pg.Client({ connectionString: env.urls.catalog });
    holder.on('error', () => undefined);
    await holder.connect();
    const { runtime, port } = await runtimeWith(1);
    let release: NodeJS.Timeout | undefined;
    try {
      await holder.query('begin; lock table catalog.slot_maps in share update exclusive mode');
      release = setTimeout(() => void holder.query('rollback').catch(() => undefined), 1500);
      const handler = createApiHandler(() => port);
      const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, Date.now()), context(29_000));
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 202, jobs: 1 });
      // And a real ANALYZE of the table while the plan runs: no refusal either.
      const other = await firstSlotOwnedBy(env, 'shard_a', 400);
      const [analyzed, planned] = await Promise.all([
        admin(env.urls.catalog, 'analyze catalog.slot_maps'),
        handler(event({ kind: 'slot', unit: String(other), to: 'shard_b' }, Date.now()), context(29_000)),
      ]);
      expect({ analyzed, status: planned.statusCode, jobs: await jobsOf(other) }).toEqual({ analyzed: true, status: 202, jobs: 1 });
    } finally {
      clearTimeout(release);
      await holder.query('rollback').catch(() => undefined);
      await holder.end().catch(() => undefined);
      await runtime.close();
    }
  }, 60_000);
});

async function admin(url: string, sql: string): Promise<boolean> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => undefined);
  await c.connect();
  try {
    await c.query(sql);
    return true;
  } finally {
    await c.end().catch(() => undefined);
  }
}
