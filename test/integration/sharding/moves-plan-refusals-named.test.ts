/**
 * Issue #15 (h156): what POST /shards/moves and GET /shards/rebalance-check answer when the catalog
 * or a shard refuses them, or a login's own timeout ends their reads, named where the generic
 * words ("the catalog or a shard did not answer (...); try again shortly") named neither.
 *
 * a. The catalog refusing the connection of the plan's checks (nothing listens at its address:
 *    ECONNREFUSED; no free connection slot for the login: 53300) is a 503 with Retry-After naming
 *    the catalog and the cause; a refused login (28P01, a wrong password) a 500 naming the catalog
 *    login's credentials (trying again does not help until they are fixed). The same for the
 *    plan's own checkout of the job's transaction once the checks have passed. Nothing recorded.
 * b. The rebalance check's reads of the catalog (the slot map, the directory, the unfinished moves)
 *    ended by the catalog login's own statement_timeout (a table they need held by a lock): a 503
 *    naming the catalog and the setting, as the plan's checks name it, not a 500.
 * c. A read of the plan's checks on a shard ended by the shard login's own statement_timeout: a
 *    503 naming the shard and the setting, not the generic words.
 * d. A refused login during a single-user rotation of the catalog login's secret (the new password
 *    set in the catalog, the secret not yet naming it; the secret pool's re-read and retry refused
 *    too): the 500 names the rotation as a cause that ends by itself, and the plan made again once
 *    the rotation has finished is recorded (h160).
 * e. The rebalance check's reads of the catalog whose login it refuses: a 500 naming the catalog
 *    login's credentials (and a rotation under way), not "an internal error occurred" (h160).
 */
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InspectionFailure } from '../../../functions/adapters/postgres/shard-inspector.js';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { createScalingApiPort, shardingDepsOf, type ScalingApiDeps } from '../../../functions/api/wiring.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { createApiHandler } from '../../../functions/handlers/api.js';
import { SecretPool, type LoginCredentials } from '../../../functions/adapters/postgres/secret-pool.js';
import { refusedLoopbackPort } from '../../support/refused-port.js';
import { apiFunctionContext, apiGatewayEvent, receivedLeaving } from './fixtures/api-gateway-request.js';
import { firstSlotOwnedBy, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
let admin: pg.Client;
/** What the runtimes reported to the failure log (the driver's errors, with their text). */
const reported: InspectionFailure[] = [];
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2 });
  admin = new pg.Client({ connectionString: env.urls.catalog });
  admin.on('error', () => undefined);
  await admin.connect();
  // A login that is not a superuser (the per-role connection limit binds no superuser), with the
  // privileges of the env's own through its membership: what h156_limited is refused (53300).
  await admin.query(`do $$ begin if not exists (select from pg_roles where rolname = 'h156_limited') then create role h156_limited login password 'h156' in role postgres; end if; end $$`);
}, 120_000);
afterAll(async () => {
  await admin?.end().catch(() => undefined);
  await env?.stop();
}, 60_000);

const postMove = (slot: number, leftMs = 5000): APIGatewayProxyEvent =>
  apiGatewayEvent({ method: 'POST', path: '/shards/moves', body: { kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedAt: receivedLeaving(leftMs), requestId: 'plan-refusals' });
const context = (): Context => apiFunctionContext(29_000, 'plan-refusals-test');
const detailOf = (result: APIGatewayProxyResult): string => String((JSON.parse(result.body) as { detail?: unknown }).detail);
const retryAfterOf = (result: APIGatewayProxyResult): unknown => Object.entries(result.headers ?? {}).find(([k]) => k.toLowerCase() === 'retry-after')?.[1];
const jobsOf = async (slot: number): Promise<number> => Number((await env.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs where slot = $1', [slot])).rows[0]?.n);

/**
 * A catalog pool as a Lambda's (one connection, a 3 s connection timeout) whose next connections
 * can be sent to a port nobody listens on, opened with a wrong password, or as a login refused for
 * its connection limit: the options pg-pool opens each new client with are its own (`options`).
 */
function catalogPool(sessionOptions?: string): { pool: pg.Pool; refuse(how: 'port' | 'password' | 'slots'): Promise<void>; restore(): Promise<void> } {
  const url = new URL(env.urls.catalog);
  let password = decodeURIComponent(url.password);
  const pool = new pg.Pool({
    host: url.hostname,
    port: Number(url.port),
    user: decodeURIComponent(url.username),
    password: () => password,
    database: url.pathname.slice(1),
    application_name: 'h156-catalog',
    ...(sessionOptions === undefined ? {} : { options: sessionOptions }),
    max: 1,
    connectionTimeoutMillis: 3000,
  });
  pool.on('error', () => undefined);
  const options = (pool as unknown as { options: { port: number; user: string } }).options;
  const original = { port: options.port, user: options.user, password };
  /** The pool's idle connections ended (their backends terminated): the next read opens one. */
  const closeIdle = async (): Promise<void> => {
    await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'h156-catalog'`);
    for (let i = 0; i < 100 && pool.totalCount > 0; i++) await delay(20);
  };
  return {
    pool,
    async refuse(how) {
      if (how === 'port') options.port = await refusedLoopbackPort();
      else if (how === 'password') password = 'not-the-password';
      else {
        await admin.query(`alter role h156_limited connection limit 0`);
        options.user = 'h156_limited';
        password = 'h156';
      }
      await closeIdle();
    },
    async restore() {
      options.port = original.port;
      options.user = original.user;
      password = original.password;
    },
  };
}

async function runtimeOver(catalog: pg.Pool, shardOptions: Readonly<Record<string, string>> = {}, planHook?: () => Promise<void>): Promise<{ runtime: ShardingRuntime; port: ScalingApiPort }> {
  const config = parseShardingConfig({
    strategy: 'hash_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => {
      const url = new URL(database_url);
      const options = shardOptions[shard_id];
      if (options !== undefined) url.searchParams.set('options', options);
      return { shard_id, database_url: url.toString(), weight: 1, read_replicas: [] };
    }),
    default_shard: 'shard_a',
  });
  let hooked = false;
  const runtime = await createShardingRuntime({
    config,
    catalog,
    actor: 'plan-refusals-test',
    onInspectionFailure: (failure) => reported.push(failure),
    pools: { max: 1 },
    // Once: the plan made again once the catalog is back is not refused.
    ...(planHook === undefined ? {} : { movePlanHook: async (point: string) => (point === 'before-record-checkout' && !hooked ? ((hooked = true), planHook()) : undefined) }),
  });
  return { runtime, port: createScalingApiPort({ ...({} as Omit<ScalingApiDeps, 'sharding'>), sharding: shardingDepsOf(runtime, () => undefined) }) };
}

describe('POST /shards/moves whose catalog refuses the connection of the plan', () => {
  const cases = [
    ['nothing listens at its address (ECONNREFUSED: stopped, restarting)', 'port', 503, /the catalog refused the connection of a read of the plan's checks \(connection error ECONNREFUSED\)/],
    ['it has no free connection slot for the login (53300)', 'slots', 503, /the catalog refused the connection of a read of the plan's checks \(the server has no free connection slot \(SQLSTATE 53300/],
    ['it refuses the login (28P01: a wrong password)', 'password', 500, /the catalog refused the login of a read of the plan's checks \(the login was refused \(SQLSTATE 28P01: wrong password\)/],
  ] as const;
  for (const [why, how, status, words] of cases) {
    for (const at of ['checks', 'record'] as const) {
      it(`${why}, ${at === 'checks' ? "at the checks' first read" : "at the plan's own checkout of the job's transaction"}: ${status} naming the catalog and the cause${status === 503 ? ', with Retry-After' : ', the credentials, no Retry-After'}; nothing recorded; planned again once it is back, recorded`, async () => {
        const slot = await firstSlotOwnedBy(env, 'shard_a', 100 + 100 * cases.findIndex((c) => c[1] === how) + (at === 'record' ? 50 : 0));
        reported.length = 0;
        const catalog = catalogPool();
        const { runtime, port } = await runtimeOver(catalog.pool, {}, at === 'record' ? () => catalog.refuse(how) : undefined);
        try {
          if (at === 'checks') await catalog.refuse(how);
          const handler = createApiHandler(() => port);
          const result = await handler(postMove(slot), context());
          const detail = detailOf(result);
          console.log(`${how} at ${at}: ${result.statusCode} ${detail}`);
          expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status, jobs: 0 });
          expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} `));
          expect(detail).toMatch(at === 'checks' ? words : new RegExp(words.source.replace("of a read of the plan's checks", "of the job's transaction")));
          expect(detail).toContain('Nothing was recorded');
          expect(detail).not.toContain('try again shortly');
          // No driver text: neither the address nor the server's words, which go to the log.
          expect(detail).not.toMatch(/127\.0\.0\.1|password authentication failed|for role|for user/);
          expect(reported.filter((f) => f.what === 'starting the move').map((f) => (f.error as Error).message)).toContainEqual(
            expect.stringMatching({ port: /ECONNREFUSED 127\.0\.0\.1/, slots: /too many connections for role "h156_limited"/, password: /password authentication failed/ }[how]) as unknown,
          );
          if (status === 503) expect(retryAfterOf(result)).toBeDefined();
          else {
            expect(retryAfterOf(result)).toBeUndefined();
            expect(detail).toContain("the catalog login's credentials");
          }
          await catalog.restore();
          const again = await handler(postMove(slot), context());
          expect({ again: again.statusCode, jobs: await jobsOf(slot) }).toEqual({ again: 202, jobs: 1 });
        } finally {
          await admin.query(`alter role h156_limited connection limit -1`);
          await runtime.close();
          await catalog.pool.end().catch(() => undefined);
        }
      }, 60_000);
    }
  }
});

describe("POST /shards/moves while the catalog login's secret is being rotated (single-user, as the control login behind RDS Proxy)", () => {
  // The rotation sets the new password in the catalog (setSecret) before the secret's AWSCURRENT
  // names it (finishSecret), and RDS Proxy reads it later still (docs/infrastructure.md, "Rotation
  // behind RDS Proxy"): a new login in that window is refused even after the secret pool re-read the
  // secret and retried. The 500 said "trying again does not help until they do", sending the
  // operator after a misconfiguration, where the same plan a moment later is recorded (h160).
  it('answers the refused login naming the rotation as a cause that ends by itself; planned again once the rotation has finished, recorded', async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 900);
    await admin.query(`do $$ begin if not exists (select from pg_roles where rolname = 'h160_rotated') then create role h160_rotated login in role postgres; end if; end $$`);
    await admin.query(`alter role h160_rotated password 'before'`);
    const url = new URL(env.urls.catalog);
    // What GetSecretValue answers for AWSCURRENT.
    let current: LoginCredentials = { username: 'h160_rotated', password: 'before' };
    const pool = new SecretPool(
      { host: url.hostname, port: Number(url.port), user: current.username, password: current.password, database: url.pathname.slice(1), application_name: 'h160-rotated', max: 1, connectionTimeoutMillis: 3000 },
      async () => current,
      { minRefreshIntervalMs: 0 },
    );
    pool.on('error', () => undefined);
    const { runtime, port } = await runtimeOver(pool);
    try {
      const handler = createApiHandler(() => port);
      // setSecret: the catalog has the new password; the secret's AWSCURRENT still the old one.
      await admin.query(`alter role h160_rotated password 'after'`);
      await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'h160-rotated'`);
      for (let i = 0; i < 100 && pool.totalCount > 0; i++) await delay(20);
      const result = await handler(postMove(slot), context());
      const detail = detailOf(result);
      console.log(`rotation under way: ${result.statusCode} ${detail}`);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 500, jobs: 0 });
      expect(detail).toMatch(/the catalog refused the login of a read of the plan's checks \(the login was refused \(SQLSTATE 28P01/);
      expect(detail).toMatch(/a rotation of that secret under way/);
      expect(detail).not.toMatch(/trying again does not help until they do$/);
      expect(detail).not.toMatch(/'before'|'after'|h160_rotated|127\.0\.0\.1/);
      // finishSecret: AWSCURRENT names the new password; the same plan is recorded.
      current = { username: 'h160_rotated', password: 'after' };
      const again = await handler(postMove(slot), context());
      expect({ again: again.statusCode, jobs: await jobsOf(slot) }).toEqual({ again: 202, jobs: 1 });
    } finally {
      await runtime.close();
      await pool.end().catch(() => undefined);
    }
  }, 60_000);
});

describe('GET /shards/rebalance-check whose catalog refuses the login of its reads', () => {
  // The check's reads of the catalog (the slot map, the directory, the unfinished moves) name the
  // catalog refusing or losing their connection (503), but a refused login reached the API bare:
  // "an internal error occurred" (500), where POST /shards/moves names the catalog login's
  // credentials for the same refusal (h160).
  it("answers 500 naming the catalog login's credentials (and a rotation under way), no Retry-After, no driver text; the driver's error logged", async () => {
    const catalog = catalogPool();
    const { runtime, port } = await runtimeOver(catalog.pool);
    try {
      reported.length = 0;
      await catalog.refuse('password');
      const handler = createApiHandler(() => port);
      const result = await handler(apiGatewayEvent({ method: 'GET', path: '/shards/rebalance-check', receivedAt: receivedLeaving(10_000), requestId: 'rebalance-login' }), context());
      const detail = detailOf(result);
      console.log(`rebalance check, catalog login refused: ${result.statusCode} ${detail}`);
      expect(result.statusCode).toBe(500);
      expect(detail).toMatch(/^the rebalance check: the catalog refused the login of a read of the rebalance check \(the login was refused \(SQLSTATE 28P01/);
      expect(detail).toContain("the catalog login's credentials");
      expect(detail).toContain('a rotation of that secret under way');
      expect(detail).not.toMatch(/127\.0\.0\.1|password authentication failed|for user/);
      expect(retryAfterOf(result)).toBeUndefined();
      expect(reported.filter((f) => f.what === 'the rebalance check').map((f) => (f.error as Error).message)).toContainEqual(expect.stringMatching(/password authentication failed/) as unknown);
      // The catalog's login mended, the check answers.
      await catalog.restore();
      expect((await handler(apiGatewayEvent({ method: 'GET', path: '/shards/rebalance-check', receivedAt: receivedLeaving(10_000), requestId: 'rebalance-login-again' }), context())).statusCode).toBe(200);
    } finally {
      await catalog.restore();
      await runtime.close();
      await catalog.pool.end().catch(() => undefined);
    }
  }, 60_000);
});

describe("GET /shards/rebalance-check whose catalog reads are ended by the catalog login's own statement_timeout", () => {
  it("answers 503 naming the catalog and its session's statement_timeout (catalog.slot_maps held by a migration's lock), not a 500", async () => {
    const catalog = catalogPool('-c statement_timeout=200');
    const { runtime, port } = await runtimeOver(catalog.pool);
    const holder = new pg.Client({ connectionString: env.urls.catalog });
    holder.on('error', () => undefined);
    await holder.connect();
    try {
      await holder.query('begin');
      await holder.query('lock table catalog.slot_maps in access exclusive mode');
      const handler = createApiHandler(() => port);
      const result = await handler(apiGatewayEvent({ method: 'GET', path: '/shards/rebalance-check', receivedAt: receivedLeaving(10_000), requestId: 'rebalance-timeout' }), context());
      const detail = detailOf(result);
      console.log(`rebalance check, catalog statement_timeout 200 ms: ${result.statusCode} ${detail}`);
      expect(result.statusCode).toBe(503);
      expect(detail).toMatch(/^the rebalance check: the catalog cancelled a read of the rebalance check \(the slot map, the directory or the unfinished moves\) by its session's own statement_timeout/);
      expect(detail).not.toContain("the request's deadline");
      expect(retryAfterOf(result)).toBeDefined();
    } finally {
      await holder.query('rollback').catch(() => undefined);
      await holder.end().catch(() => undefined);
      await runtime.close();
      await catalog.pool.end().catch(() => undefined);
    }
  }, 60_000);
});

describe("POST /shards/moves whose check on a shard is ended by the shard login's own statement_timeout", () => {
  it("answers 503 naming the shard and its session's statement_timeout (its write_fences held by a migration's lock), nothing recorded, not the generic words", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 700);
    const catalog = catalogPool();
    const { runtime, port } = await runtimeOver(catalog.pool, { shard_b: '-c statement_timeout=200' });
    const target = new pg.Client({ connectionString: env.urls.shards.shard_b });
    target.on('error', () => undefined);
    await target.connect();
    try {
      await target.query('begin');
      await target.query('lock table write_fences in access exclusive mode');
      const handler = createApiHandler(() => port);
      const result = await handler(postMove(slot, 10_000), context());
      const detail = detailOf(result);
      console.log(`shard_b statement_timeout 200 ms: ${result.statusCode} ${detail}`);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 0 });
      expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} to shard_b: shard_b cancelled a read of the plan's checks by its session's own statement_timeout`));
      expect(detail).not.toContain("the request's deadline");
      expect(detail).not.toContain('try again shortly');
      expect(detail).toContain('Nothing was recorded');
    } finally {
      await target.query('rollback').catch(() => undefined);
      await target.end().catch(() => undefined);
      await runtime.close();
      await catalog.pool.end().catch(() => undefined);
    }
  }, 60_000);
});
