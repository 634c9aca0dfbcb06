/**
 * Issue #15 (h166): what POST /shards/moves and GET /shards/rebalance-check answer where the
 * catalog is lost or its login cannot be made, named where the generic words ("the catalog or a
 * shard did not answer (...); try again shortly", "an internal error occurred") named nothing.
 *
 * a. The catalog connection of the plan's job transaction lost mid-transaction (its backend
 *    terminated while the transaction waits for the SHARE lock of catalog.slot_maps, after its
 *    insert; or between two of its statements, once the insert has answered): a 503 with
 *    Retry-After naming the catalog and the cause; nothing recorded.
 * b. The rebalance check's per-move checks (Mover.refusals) ended by the catalog login's own
 *    statement_timeout, or refused a shard's login (28P01): the moves not proposed are named with
 *    the node and the setting, or the node and its login's credentials, as the plan names them;
 *    no driver text (no address, no role name) in the answer.
 * c. A secret pool whose re-read of the catalog login's secret fails (Secrets Manager throttling
 *    it: 503 with Retry-After; access denied: 500) names the credentials' source as unreadable,
 *    not "an internal error occurred"; nothing recorded, no secret's ARN or account in the answer.
 */
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { SecretsManagerServiceException, type SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSecret } from '../../../functions/adapters/aws/database-secret.js';
import { Mover } from '../../../functions/adapters/postgres/mover.js';
import { SecretPool } from '../../../functions/adapters/postgres/secret-pool.js';
import type { InspectionFailure } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import type { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { createScalingApiPort, shardingDepsOf, type ScalingApiDeps } from '../../../functions/api/wiring.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { createApiHandler } from '../../../functions/handlers/api.js';
import { apiFunctionContext, apiGatewayEvent, receivedLeaving } from './fixtures/api-gateway-request.js';
import { firstSlotOwnedBy, keysInSlot, seedUsers, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { rebalancePools, rebalancePort } from './fixtures/rebalance-port.js';

/** Slots of shard_a with rows (2 users, 1 document each), for the rebalance check to propose; shard_b holds none. */
const SLOTS = 4;

let env: MoveEnv;
let admin: pg.Client;
let pools: ShardPools;
let mapAtStart: Awaited<ReturnType<MoveEnv['slotMaps']['current']>>;
/** What the runtimes reported to the failure log (the driver's errors, with their text). */
const reported: InspectionFailure[] = [];
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2 });
  admin = new pg.Client({ connectionString: env.urls.catalog });
  admin.on('error', () => undefined);
  await admin.connect();
  await admin.query(`do $$ begin if not exists (select from pg_roles where rolname = 'h166_login') then create role h166_login login password 'h166' in role postgres; end if; end $$`);
  pools = rebalancePools(env);
  mapAtStart = await env.slotMaps.current();
  const source = env.shards.get('shard_a');
  if (!source) throw new Error('no shard_a in the move env');
  for (const slot of mapAtStart.assignments.flatMap((shard, s) => (shard === 'shard_a' ? [s] : [])).slice(0, SLOTS)) await seedUsers(source, slot, keysInSlot(slot, 2), 1);
}, 120_000);
afterAll(async () => {
  await admin?.end().catch(() => undefined);
  await pools?.end();
  await env?.stop();
}, 60_000);

const postMove = (slot: number, leftMs = 5000): APIGatewayProxyEvent =>
  apiGatewayEvent({ method: 'POST', path: '/shards/moves', body: { kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedAt: receivedLeaving(leftMs), requestId: 'plan-catalog-lost' });
const context = (): Context => apiFunctionContext(29_000, 'plan-catalog-lost-test');
const detailOf = (result: APIGatewayProxyResult): string => String((JSON.parse(result.body) as { detail?: unknown }).detail);
const retryAfterOf = (result: APIGatewayProxyResult): unknown => Object.entries(result.headers ?? {}).find(([k]) => k.toLowerCase() === 'retry-after')?.[1];
const jobsOf = async (slot: number): Promise<number> => Number((await env.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs where slot = $1', [slot])).rows[0]?.n);
/** A slot of shard_a with no rows (the rebalance check's seeded slots are left to it). */
const emptySlotOfA = (from: number): Promise<number> => firstSlotOwnedBy(env, 'shard_a', from);

/** A catalog pool as a Lambda's: one connection, a 3 s connection timeout; `options` for its sessions. */
function lambdaPool(url: string, applicationName: string, options?: string): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, application_name: applicationName, ...(options === undefined ? {} : { options }), max: 1, connectionTimeoutMillis: 3000 });
  pool.on('error', () => undefined);
  return pool;
}

async function runtimeOver(catalog: pg.Pool, planHook?: () => Promise<void>): Promise<{ runtime: ShardingRuntime; port: ScalingApiPort }> {
  const config = parseShardingConfig({
    strategy: 'hash_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url, weight: 1, read_replicas: [] })),
    default_shard: 'shard_a',
  });
  let hooked = false;
  const runtime = await createShardingRuntime({
    config,
    catalog,
    actor: 'plan-catalog-lost-test',
    onInspectionFailure: (failure) => reported.push(failure),
    pools: { max: 1 },
    // Once: the plan made again is not interfered with.
    ...(planHook === undefined ? {} : { movePlanHook: async (point: string) => (point === 'before-record-checkout' && !hooked ? ((hooked = true), planHook()) : undefined) }),
  });
  return { runtime, port: createScalingApiPort({ ...({} as Omit<ScalingApiDeps, 'sharding'>), sharding: shardingDepsOf(runtime, () => undefined) }) };
}

describe("POST /shards/moves whose catalog connection is lost in the middle of the job's transaction", () => {
  it("answers 503 with Retry-After naming the catalog and the lost connection (its backend terminated while the transaction waited for a lock, after its insert), not the generic words; nothing recorded; planned again, recorded", async () => {
    const slot = await emptySlotOfA(600);
    reported.length = 0;
    const catalog = lambdaPool(env.urls.catalog, 'h166-lost');
    const holder = new pg.Client({ connectionString: env.urls.catalog });
    holder.on('error', () => undefined);
    await holder.connect();
    let terminated = 0;
    let terminating: Promise<void> | undefined;
    // Once the checks have passed: catalog.slot_maps held, so the job's transaction waits for its
    // SHARE lock after its insert; its backend is then terminated (a failover, an operator's
    // pg_terminate_backend), and the lock released.
    const { runtime, port } = await runtimeOver(catalog, async () => {
      await holder.query('begin');
      await holder.query('lock table catalog.slot_maps in access exclusive mode');
      terminating = (async () => {
        for (let i = 0; i < 200 && terminated === 0; i++) {
          const { rows } = await admin.query<{ ok: boolean }>(
            `select pg_terminate_backend(pid) as ok from pg_stat_activity where application_name = 'h166-lost' and wait_event_type = 'Lock' and backend_xid is not null`,
          );
          terminated = rows.filter((r) => r.ok).length;
          if (terminated === 0) await delay(20);
        }
        await holder.query('rollback');
      })();
    });
    try {
      const handler = createApiHandler(() => port);
      const result = await handler(postMove(slot), context());
      await terminating;
      const detail = detailOf(result);
      console.log(`catalog lost mid-transaction: ${result.statusCode} ${detail}`);
      expect(terminated).toBe(1);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 0 });
      expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} from shard_a to shard_b: the catalog lost the connection of the job's transaction \\(`));
      expect(detail).toContain('Nothing was recorded');
      expect(detail).not.toContain('the catalog or a shard did not answer');
      expect(detail).not.toMatch(/127\.0\.0\.1|administrator command/);
      expect(retryAfterOf(result)).toBeDefined();
      expect(reported.filter((f) => f.what === 'starting the move').length).toBeGreaterThan(0);
      const again = await handler(postMove(slot), context());
      expect({ again: again.statusCode, jobs: await jobsOf(slot) }).toEqual({ again: 202, jobs: 1 });
    } finally {
      await holder.query('rollback').catch(() => undefined);
      await holder.end().catch(() => undefined);
      await runtime.close();
      await catalog.end().catch(() => undefined);
    }
  }, 60_000);
});

describe("POST /shards/moves whose catalog connection is lost between two statements of the job's transaction", () => {
  it("answers 503 with Retry-After naming the catalog and the lost connection (its backend terminated once the insert of the job had answered), not the generic words; nothing recorded", async () => {
    const slot = await emptySlotOfA(650);
    const catalog = lambdaPool(env.urls.catalog, 'h166-between');
    let armed = true;
    let terminated = false;
    // The connection that sends the job's insert has its backend terminated once the insert has
    // answered and before the transaction's next statement is sent (the plan's own code runs in
    // between): the client hears the server's FATAL while idle in the transaction.
    const patched = new WeakSet<pg.PoolClient>();
    catalog.on('acquire', (client) => {
      if (patched.has(client)) return;
      patched.add(client);
      const query = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>;
      (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
        const text = typeof args[0] === 'string' ? args[0] : '';
        const result = query(...args);
        if (!armed || !text.trimStart().startsWith('insert into catalog.move_jobs')) return result;
        armed = false;
        return result.then(async (answer) => {
          const lost = new Promise<void>((resolve) => client.once('error', () => resolve()));
          await admin.query('select pg_terminate_backend($1)', [(client as unknown as { processID: number }).processID]);
          await Promise.race([lost, delay(5000)]);
          terminated = true;
          return answer;
        });
      };
    });
    const { runtime, port } = await runtimeOver(catalog);
    try {
      const handler = createApiHandler(() => port);
      const result = await handler(postMove(slot), context());
      const detail = detailOf(result);
      console.log(`catalog lost between statements: ${result.statusCode} ${detail}`);
      expect(terminated).toBe(true);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 0 });
      expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} from shard_a to shard_b: the catalog lost the connection of the job's transaction \\(`));
      expect(detail).toContain('Nothing was recorded');
      expect(detail).not.toContain('the catalog or a shard did not answer');
      expect(retryAfterOf(result)).toBeDefined();
    } finally {
      await runtime.close();
      await catalog.end().catch(() => undefined);
    }
  }, 60_000);
});

describe("POST /shards/moves whose catalog backend is terminated while it runs the job's COMMIT (h168)", () => {
  it("answers 503 saying nothing was recorded (the server's FATAL answered the commit: it rolled back), and the job is not there; planned again, recorded", async () => {
    const slot = await emptySlotOfA(900);
    // A deferred trigger keeps the COMMIT running (its constraint checked at commit) while the
    // backend is terminated: the server's FATAL 57P01 is the commit's answer, the transaction
    // rolled back (nothing of it durable before its commit record).
    await admin.query(`create or replace function catalog.h168_slow_commit() returns trigger language plpgsql as $$ begin perform pg_sleep(2); return null; end $$`);
    await admin.query(`create constraint trigger h168_slow_commit after insert on catalog.move_jobs deferrable initially deferred for each row when (new.slot = ${slot}) execute function catalog.h168_slow_commit()`);
    const catalog = lambdaPool(env.urls.catalog, 'h168-commit');
    const { runtime, port } = await runtimeOver(catalog);
    let terminated = 0;
    let stop = false;
    const terminating = (async () => {
      while (!stop && terminated === 0) {
        const { rows } = await admin.query<{ ok: boolean }>(`select pg_terminate_backend(pid) as ok from pg_stat_activity where application_name = 'h168-commit' and state = 'active' and query = 'commit'`);
        terminated = rows.filter((r) => r.ok).length;
        if (terminated === 0) await delay(20);
      }
    })();
    try {
      const handler = createApiHandler(() => port);
      const result = await handler(postMove(slot, 10_000), context());
      stop = true;
      await terminating;
      const detail = detailOf(result);
      console.log(`backend terminated during COMMIT: ${result.statusCode} ${detail}`);
      expect(terminated).toBe(1);
      expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status: 503, jobs: 0 });
      expect(detail).not.toContain('cannot tell whether');
      // Named, the catalog and the cause, as a connection lost before the commit is (h166), where
      // it answered "the catalog or a shard did not answer (SQLSTATE 57P01); try again shortly".
      expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} from shard_a to shard_b: the catalog ended the connection of the job's transaction while it ran its commit, which it refused \\(`));
      expect(detail).toContain('Nothing was recorded');
      expect(detail).not.toMatch(/127\.0\.0\.1|administrator command/);
      expect(retryAfterOf(result)).toBeDefined();
      await admin.query('drop trigger if exists h168_slow_commit on catalog.move_jobs');
      const again = await handler(postMove(slot), context());
      expect({ again: again.statusCode, jobs: await jobsOf(slot) }).toEqual({ again: 202, jobs: 1 });
    } finally {
      stop = true;
      await terminating;
      await admin.query('drop trigger if exists h168_slow_commit on catalog.move_jobs').catch(() => undefined);
      await admin.query('drop function if exists catalog.h168_slow_commit()').catch(() => undefined);
      await runtime.close();
      await catalog.end().catch(() => undefined);
    }
  }, 60_000);
});

describe("GET /shards/rebalance-check whose per-move checks (Mover.refusals) meet a login's own timeout or a refused login", () => {
  /** The API's port, its moves' checks asked of a mover over `catalog` and `shards`. */
  const portOver = (catalog: pg.Pool, shards: ReadonlyMap<string, pg.Pool>, onFailure: (f: InspectionFailure) => void): ScalingApiPort =>
    rebalancePort(env, {
      slotMap: mapAtStart,
      inspector: new ShardInspector(pools, { timeoutMs: 5000 }),
      mover: new Mover({ catalog, shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 100 }),
      onFailure,
    });

  it("names the catalog and its session's own statement_timeout (catalog.slot_owner_history held by a migration's lock), not 'a statement ran past its time limit'", async () => {
    const catalog = lambdaPool(env.urls.catalog, 'h166-refusals-timeout', '-c statement_timeout=200');
    const holder = new pg.Client({ connectionString: env.urls.catalog });
    holder.on('error', () => undefined);
    await holder.connect();
    const failures: InspectionFailure[] = [];
    try {
      await holder.query('begin');
      await holder.query('lock table catalog.slot_owner_history in access exclusive mode');
      const check = await portOver(catalog, env.shards, (f) => failures.push(f)).rebalanceCheck({ by: 'rows' });
      console.log(`refusals, catalog statement_timeout 200 ms: ${check.summary.unresolved.join(' | ')}`);
      expect(check.moves).toEqual([]);
      expect(check.summary.unresolved.length).toBeGreaterThan(0);
      for (const line of check.summary.unresolved) {
        expect(line).toMatch(/^slot \d+ on shard_a is not proposed to move to shard_b: the move plan's checks of it (could not be made|were not made) \(.*the catalog cancelled a read of them by its session's own statement_timeout \(the catalog login's role or database setting/);
        expect(line).not.toContain('a statement ran past its time limit');
      }
      expect(failures.length).toBeGreaterThan(0);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      await holder.end().catch(() => undefined);
      await catalog.end().catch(() => undefined);
    }
  }, 60_000);

  it("names a shard whose login it refuses (28P01) and its login's credentials, not a bare 500; no role name, no address", async () => {
    const catalog = lambdaPool(env.urls.catalog, 'h166-refusals-login');
    const url = new URL(env.urls.shards.shard_b as string);
    url.username = 'h166_login';
    url.password = 'not-the-password';
    const refused = lambdaPool(url.toString(), 'h166-refused-shard');
    const failures: InspectionFailure[] = [];
    try {
      const port = portOver(catalog, new Map([...env.shards, ['shard_b', refused]]), (f) => failures.push(f));
      const handler = createApiHandler(() => port);
      const result = await handler(apiGatewayEvent({ method: 'GET', path: '/shards/rebalance-check', query: { by: 'rows' }, receivedAt: receivedLeaving(10_000), requestId: 'refusals-login' }), context());
      const body = result.body;
      console.log(`refusals, shard_b login refused: ${result.statusCode} ${body.slice(0, 600)}`);
      expect(result.statusCode).toBe(200);
      const check = JSON.parse(body) as { moves: unknown[]; summary: { unresolved: string[] } };
      expect(check.moves).toEqual([]);
      expect(check.summary.unresolved.length).toBeGreaterThan(0);
      for (const line of check.summary.unresolved) {
        expect(line).toMatch(/^slot \d+ on shard_a is not proposed to move to shard_b: the move plan's checks of it (could not be made|were not made) \(.*shard_b refused the login of a read of them \(the login was refused \(SQLSTATE 28P01/);
        expect(line).toContain("shard_b's login's credentials");
      }
      expect(body).not.toMatch(/h166_login|not-the-password|127\.0\.0\.1|password authentication failed/);
      expect(failures.map((f) => (f.error as Error).message)).toContainEqual(expect.stringMatching(/password authentication failed/) as unknown);
    } finally {
      await catalog.end().catch(() => undefined);
      await refused.end().catch(() => undefined);
    }
  }, 60_000);
});

describe("POST /shards/moves whose secret pool cannot re-read the catalog login's secret", () => {
  const ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:h166-catalog-AbCdEf';
  const cases = [
    [
      'Secrets Manager throttles the re-read (ThrottlingException)',
      () => new SecretsManagerServiceException({ name: 'ThrottlingException', $fault: 'client', $metadata: { httpStatusCode: 400 }, message: 'Rate exceeded' }),
      503,
      /the catalog login's credentials could not be read again from their source \(its Secrets Manager secret: ThrottlingException\)/,
    ],
    [
      "the function's role may not read the secret (AccessDeniedException)",
      () =>
        new SecretsManagerServiceException({
          name: 'AccessDeniedException',
          $fault: 'client',
          $metadata: { httpStatusCode: 400 },
          message: `User: arn:aws:sts::123456789012:assumed-role/h166/fn is not authorized to perform: secretsmanager:GetSecretValue on resource: ${ARN}`,
        }),
      500,
      /the catalog login's credentials could not be read again from their source \(its Secrets Manager secret: AccessDeniedException\)/,
    ],
  ] as const;
  /** A secret pool logged in as h166_login whose re-read of its secret fails with `error`; the role's password then changed under it. */
  async function rotatedAway(error: () => Error): Promise<SecretPool> {
    await admin.query(`alter role h166_login password 'h166'`);
    const url = new URL(env.urls.catalog);
    const secrets = { send: async () => Promise.reject(error()) } as unknown as SecretsManagerClient;
    const pool = new SecretPool(
      { host: url.hostname, port: Number(url.port), user: 'h166_login', password: 'h166', database: url.pathname.slice(1), application_name: 'h166-secret', max: 1, connectionTimeoutMillis: 3000 },
      () => readSecret(secrets, ARN),
      { minRefreshIntervalMs: 0 },
    );
    pool.on('error', () => undefined);
    return pool;
  }
  const rotate = async (pool: pg.Pool): Promise<void> => {
    await admin.query(`alter role h166_login password 'rotated'`);
    await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'h166-secret'`);
    for (let i = 0; i < 100 && pool.totalCount > 0; i++) await delay(20);
  };

  it("GET /shards/rebalance-check, Secrets Manager throttling the re-read: 503 with Retry-After naming the credentials' source, not a bare 500; no ARN in the answer", async () => {
    reported.length = 0;
    const pool = await rotatedAway(cases[0][1]);
    const { runtime, port } = await runtimeOver(pool);
    try {
      await rotate(pool);
      const handler = createApiHandler(() => port);
      const result = await handler(apiGatewayEvent({ method: 'GET', path: '/shards/rebalance-check', receivedAt: receivedLeaving(10_000), requestId: 'rebalance-secret' }), context());
      const detail = detailOf(result);
      console.log(`rebalance check, secret re-read throttled: ${result.statusCode} ${detail}`);
      expect(result.statusCode).toBe(503);
      expect(detail).toMatch(/^the rebalance check: the catalog refused the login of a read of the rebalance check \(the login was refused \(SQLSTATE 28P01.*the catalog login's credentials could not be read again from their source \(its Secrets Manager secret: ThrottlingException\)/);
      expect(detail).not.toMatch(/123456789012|arn:aws|h166_login|127\.0\.0\.1/);
      expect(retryAfterOf(result)).toBeDefined();
      expect(reported.map((f) => String((f.error as Error).message))).toContainEqual(expect.stringContaining(ARN) as unknown);
    } finally {
      await runtime.close();
      await pool.end().catch(() => undefined);
    }
  }, 60_000);

  for (const [why, error, status, words] of cases) {
    it(`${why}: ${status} naming the credentials' source as unreadable${status === 503 ? ', with Retry-After' : ', no Retry-After'}; nothing recorded, no ARN in the answer`, async () => {
      const slot = await emptySlotOfA(700 + 50 * cases.findIndex((c) => c[0] === why));
      reported.length = 0;
      const pool = await rotatedAway(error);
      const { runtime, port } = await runtimeOver(pool);
      try {
        // Rotated under the pool: its next login is refused, and its re-read of the secret fails.
        await rotate(pool);
        const handler = createApiHandler(() => port);
        const result = await handler(postMove(slot), context());
        const detail = detailOf(result);
        console.log(`${why}: ${result.statusCode} ${detail}`);
        expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status, jobs: 0 });
        expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} to shard_b: `));
        expect(detail).toMatch(words);
        expect(detail).toContain('Nothing was recorded');
        expect(detail).not.toMatch(/123456789012|arn:aws|h166_login|127\.0\.0\.1|password authentication failed/);
        if (status === 503) expect(retryAfterOf(result)).toBeDefined();
        else expect(retryAfterOf(result)).toBeUndefined();
        expect(reported.filter((f) => f.what === 'starting the move').map((f) => String((f.error as Error).message))).toContainEqual(expect.stringContaining(ARN) as unknown);
      } finally {
        await runtime.close();
        await pool.end().catch(() => undefined);
      }
    }, 60_000);
  }
});

/**
 * h168, the gaps h166 left: a SHARD whose login the plan's checks are refused (28P01), or whose
 * secret pool's re-read of that login fails, reached POST /shards/moves bare ("an internal error
 * occurred"); the rebalance check's per-move checks named a shard's unreadable secret as the
 * catalog's, and failed the whole check with it; a catalog login refused there listed every move as
 * unchecked (200) where the check's own reads of the catalog, and the plan, answer 500.
 */
describe('a login refused to the plan\'s checks, or its secret unreadable: the node named, as the plan and the rebalance check name the catalog (h168)', () => {
  const ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:h168-shard-AbCdEf';
  const throttled = (): Error => new SecretsManagerServiceException({ name: 'ThrottlingException', $fault: 'client', $metadata: { httpStatusCode: 400 }, message: `Rate exceeded for ${ARN}` });
  const denied = (): Error =>
    new SecretsManagerServiceException({
      name: 'AccessDeniedException',
      $fault: 'client',
      $metadata: { httpStatusCode: 400 },
      message: `User: arn:aws:sts::123456789012:assumed-role/h168/fn is not authorized to perform: secretsmanager:GetSecretValue on resource: ${ARN}`,
    });
  /** A pool of `url`'s database logged in as h168_login with a wrong password: every login refused (28P01). */
  const refusedPool = (url: string, applicationName: string): pg.Pool => {
    const u = new URL(url);
    u.username = 'h168_login';
    u.password = 'not-the-password';
    return lambdaPool(u.toString(), applicationName);
  };
  /** A secret pool of `url`'s database logged in as h168_login with a wrong password, whose re-read of its secret fails with `error`. */
  const unreadableSecretPool = (url: string, applicationName: string, error: () => Error): SecretPool => {
    const u = new URL(url);
    const secrets = { send: async () => Promise.reject(error()) } as unknown as SecretsManagerClient;
    const pool = new SecretPool(
      { host: u.hostname, port: Number(u.port), user: 'h168_login', password: 'not-the-password', database: u.pathname.slice(1), application_name: applicationName, max: 1, connectionTimeoutMillis: 3000 },
      () => readSecret(secrets, ARN),
      { minRefreshIntervalMs: 0 },
    );
    pool.on('error', () => undefined);
    return pool;
  };
  beforeAll(async () => {
    for (const url of [env.urls.catalog, ...Object.values(env.urls.shards)]) {
      const c = new pg.Client({ connectionString: url });
      c.on('error', () => undefined);
      await c.connect();
      try {
        await c.query(`do $$ begin if not exists (select from pg_roles where rolname = 'h168_login') then create role h168_login login password 'h168' in role postgres; end if; end $$`);
      } finally {
        await c.end();
      }
    }
  });
  const portOver = (catalog: pg.Pool, shards: ReadonlyMap<string, pg.Pool>, onFailure: (f: InspectionFailure) => void): ScalingApiPort =>
    rebalancePort(env, {
      slotMap: mapAtStart,
      inspector: new ShardInspector(pools, { timeoutMs: 5000 }),
      mover: new Mover({ catalog, shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 100 }),
      onFailure,
    });
  const rebalanceCheck = (): APIGatewayProxyEvent => apiGatewayEvent({ method: 'GET', path: '/shards/rebalance-check', query: { by: 'rows' }, receivedAt: receivedLeaving(10_000), requestId: 'h168-check' });
  const NO_SECRETS = /123456789012|arn:aws|h168_login|not-the-password|127\.0\.0\.1|password authentication failed/;

  const planCases = [
    ["shard_b (the move's target) refuses the plan's checks' login (28P01)", () => refusedPool(env.urls.shards.shard_b as string, 'h168-plan-refused'), 500, /shard_b refused the login of a read of the plan's checks \(the login was refused \(SQLSTATE 28P01.*shard_b's login's credentials/],
    [
      "shard_b's secret pool cannot re-read its login's secret (ThrottlingException)",
      () => unreadableSecretPool(env.urls.shards.shard_b as string, 'h168-plan-throttled', throttled),
      503,
      /shard_b refused the login of a read of the plan's checks \(the login was refused \(SQLSTATE 28P01.*shard_b's login's credentials could not be read again from their source \(its Secrets Manager secret: ThrottlingException\)/,
    ],
    [
      "shard_b's secret pool cannot re-read its login's secret (AccessDeniedException)",
      () => unreadableSecretPool(env.urls.shards.shard_b as string, 'h168-plan-denied', denied),
      500,
      /shard_b's login's credentials could not be read again from their source \(its Secrets Manager secret: AccessDeniedException\)/,
    ],
  ] as const;
  for (const [why, make, status, words] of planCases) {
    it(`POST /shards/moves, ${why}: ${status} naming shard_b and its login, not "an internal error occurred"; nothing recorded, no role, ARN or address`, async () => {
      const slot = await emptySlotOfA(800 + 20 * planCases.findIndex((c) => c[0] === why));
      const catalog = lambdaPool(env.urls.catalog, 'h168-plan-catalog');
      const shardB = make();
      const failures: InspectionFailure[] = [];
      try {
        const handler = createApiHandler(() => portOver(catalog, new Map([...env.shards, ['shard_b', shardB]]), (f) => failures.push(f)));
        const result = await handler(postMove(slot), context());
        const detail = detailOf(result);
        console.log(`plan, ${why}: ${result.statusCode} ${detail}`);
        expect({ status: result.statusCode, jobs: await jobsOf(slot) }).toEqual({ status, jobs: 0 });
        expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} to shard_b: `));
        expect(detail).toMatch(words);
        expect(detail).toContain('Nothing was recorded');
        expect(detail).not.toMatch(NO_SECRETS);
        expect(detail).not.toContain('the catalog');
        if (status === 503) expect(retryAfterOf(result)).toBeDefined();
        else expect(retryAfterOf(result)).toBeUndefined();
        // The driver's text (the role) and the source's (the ARN) to the failure log.
        expect(failures.map((f) => String((f.error as Error).message)).join(' | ')).toMatch(/password authentication failed|h168-shard/);
      } finally {
        await catalog.end().catch(() => undefined);
        await shardB.end().catch(() => undefined);
      }
    }, 60_000);
  }

  it("GET /shards/rebalance-check, shard_b's secret pool cannot re-read its login's secret: 200, its moves listed unchecked naming shard_b and its secret's source, not a whole-check failure blaming the catalog", async () => {
    const catalog = lambdaPool(env.urls.catalog, 'h168-check-catalog');
    const shardB = unreadableSecretPool(env.urls.shards.shard_b as string, 'h168-check-denied', denied);
    const failures: InspectionFailure[] = [];
    try {
      const handler = createApiHandler(() => portOver(catalog, new Map([...env.shards, ['shard_b', shardB]]), (f) => failures.push(f)));
      const result = await handler(rebalanceCheck(), context());
      console.log(`check, shard_b's secret unreadable: ${result.statusCode} ${result.body.slice(0, 700)}`);
      expect(result.statusCode).toBe(200);
      const check = JSON.parse(result.body) as { moves: unknown[]; summary: { unresolved: string[] } };
      expect(check.moves).toEqual([]);
      expect(check.summary.unresolved.length).toBeGreaterThan(0);
      for (const line of check.summary.unresolved) {
        expect(line).toMatch(/^slot \d+ on shard_a is not proposed to move to shard_b: the move plan's checks of it (could not be made|were not made) \(.*shard_b refused the login of a read of them \(the login was refused \(SQLSTATE 28P01.*shard_b's login's credentials could not be read again from their source \(its Secrets Manager secret: AccessDeniedException\)/);
        expect(line).not.toContain('the catalog');
      }
      expect(result.body).not.toMatch(NO_SECRETS);
      expect(failures.map((f) => String((f.error as Error).message))).toContainEqual(expect.stringContaining(ARN) as unknown);
    } finally {
      await catalog.end().catch(() => undefined);
      await shardB.end().catch(() => undefined);
    }
  }, 60_000);

  /**
   * The catalog's login refused only once the check's own reads of it have answered: the move plan's
   * checks it asks (Mover.refusals) are the first to log in after the password of h168_login
   * changed (a rotation) and its backends were ended.
   */
  class RotatedAtChecks extends Mover {
    readonly #catalog: pg.Pool;
    constructor(options: ConstructorParameters<typeof Mover>[0]) {
      super(options);
      this.#catalog = options.catalog;
    }
    override async refusals(...args: Parameters<Mover['refusals']>): ReturnType<Mover['refusals']> {
      await admin.query(`alter role h168_login password 'rotated'`);
      await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where usename = 'h168_login' and application_name like 'h168-check-%'`);
      for (let i = 0; i < 100 && this.#catalog.totalCount > 0; i++) await delay(20);
      return super.refusals(...args);
    }
  }
  const catalogAs = (applicationName: string, error?: () => Error): pg.Pool => {
    const u = new URL(env.urls.catalog);
    if (error === undefined) {
      u.username = 'h168_login';
      u.password = 'h168';
      return lambdaPool(u.toString(), applicationName);
    }
    const secrets = { send: async () => Promise.reject(error()) } as unknown as SecretsManagerClient;
    const pool = new SecretPool(
      { host: u.hostname, port: Number(u.port), user: 'h168_login', password: 'h168', database: u.pathname.slice(1), application_name: applicationName, max: 1, connectionTimeoutMillis: 3000 },
      () => readSecret(secrets, ARN),
      { minRefreshIntervalMs: 0 },
    );
    pool.on('error', () => undefined);
    return pool;
  };
  const catalogCases = [
    ['the catalog refuses the login of the per-move checks (28P01)', () => catalogAs('h168-check-refused'), 500, /^the rebalance check: the catalog refused the login of a read of the rebalance check \(the login was refused \(SQLSTATE 28P01.*do not match the catalog's/],
    [
      "the catalog's secret pool cannot re-read the per-move checks' login (ThrottlingException)",
      () => catalogAs('h168-check-throttled', throttled),
      503,
      /^the rebalance check: the catalog refused the login of a read of the rebalance check \(the login was refused \(SQLSTATE 28P01.*the catalog login's credentials could not be read again from their source \(its Secrets Manager secret: ThrottlingException\)/,
    ],
  ] as const;
  for (const [why, make, status, words] of catalogCases) {
    it(`GET /shards/rebalance-check, ${why}: ${status}, as the check's own reads of the catalog and the plan answer it, not a 200 listing every move unchecked`, async () => {
      await admin.query(`alter role h168_login password 'h168'`);
      const catalog = make();
      const failures: InspectionFailure[] = [];
      try {
        const port = rebalancePort(env, {
          slotMap: mapAtStart,
          inspector: new ShardInspector(pools, { timeoutMs: 5000 }),
          mover: new RotatedAtChecks({ catalog, shards: env.shards, slotMaps: env.slotMaps, directory: env.directory, readerGraceMs: 100 }),
          onFailure: (f) => failures.push(f),
        });
        const result = await createApiHandler(() => port)(rebalanceCheck(), context());
        const detail = detailOf(result);
        console.log(`check, ${why}: ${result.statusCode} ${result.statusCode === 200 ? result.body.slice(0, 500) : detail}`);
        expect(result.statusCode).toBe(status);
        expect(detail).toMatch(words);
        expect(detail).not.toMatch(NO_SECRETS);
        if (status === 503) expect(retryAfterOf(result)).toBeDefined();
        else expect(retryAfterOf(result)).toBeUndefined();
        expect(failures.length).toBeGreaterThan(0);
      } finally {
        await admin.query(`alter role h168_login password 'h168'`);
        await catalog.end().catch(() => undefined);
      }
    }, 60_000);
  }
});
