/**
 * Issue #15's newer paths under the settings the deployed functions run with, on a server laid out
 * as on AWS (migrations as RDS's master user, not a superuser; the catalog in the first shard's
 * database; the least-privilege logins made by the migrations function's code):
 * - the scaling API's `GET /shards/fences` (`listFences`) as the API function reads it:
 *   `ca_dms_control` on the catalog through `createPool` (one connection, the Lambda pool
 *   settings), `ca_dms_monitor` on each shard (the inspection pools, two connections each), with
 *   one shard of four gone silent; and its answer, through the function's handler, within the 6 MB
 *   Lambda returns to API Gateway where thousands of rows are listed (a page at a time);
 * - the API's plan of a slot move (`POST /shards/moves`, `Mover.plan`), which locks its slot's row
 *   of `catalog.slot_pin_locks` (sharding migration 017) on that one connection, while a pin by hand
 *   of a key of the slot holds it;
 * - hand changes (a pin, a map published by hand, the fence review's `--settle`), which no function
 *   makes (an operator's process does), through the stores of a runtime with the moves worker's
 *   logins (`ca_dms_control` on one catalog connection, `ca_dms_mover` on the shards): each lock
 *   of sharding migrations 016 and 017, each fence row written, on the grants those logins have.
 * A grant missing, a second connection asked of a one-connection pool while the first holds a lock,
 * a lock waited for past its bound, or a shard read without its deadline fails a test here (each
 * checked by taking it away).
 */
// Powertools reads its settings when the handler modules load: this import must stay first.
import '../../support/quiet-powertools.js';
import { randomUUID } from 'node:crypto';
import type { APIGatewayProxyEvent, APIGatewayProxyResult } from 'aws-lambda';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { APPLICATION_ROLE, CONTROL_ROLE, ensureLogin, MONITOR_ROLE, MOVER_ROLE } from '../../../functions/adapters/postgres/app-role.js';
import { reviewFences, type ReviewedFence } from '../../../functions/adapters/postgres/fence-review.js';
import { MoveConflictError } from '../../../functions/adapters/postgres/move-jobs.js';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { keySlot } from '../../../functions/core/sharding/keys.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { createApiHandler } from '../../../functions/handlers/api.js';
import { CATALOG_STATEMENT_TIMEOUT_MS, createPool } from '../../../functions/handlers/shared/db.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { emulateRdsMaster } from '../../support/rds-master.js';
import { keysInSlot, refusalOf, seedUsers } from '../sharding/fixtures/move-env.js';
import { lambdaContext } from '../sharding/fixtures/moves-handler.js';
import { SilentRelay } from '../sharding/fixtures/silent-relay.js';

const MASTER = 'ca_dms_admin';
const PASSWORD = 'rds master';
const SHARDS = ['ca_dms_1', 'ca_dms_2', 'ca_dms_3', 'ca_dms_4'] as const;
const LOGINS = { control: 'ca_dms_control_user', monitor: 'ca_dms_monitor_user', mover: 'ca_dms_mover_user', app: 'ca_dms_app_user' } as const;
/** The shards' read bound of the API's fence listing here (health_check_timeout_seconds). */
const HEALTH_TIMEOUT_S = 1;
/** API Gateway's integration timeout, and the API function's own (lib/control-plane/control-plane.ts). */
const API_GATEWAY_MS = 29_000;
/** The most a function invoked synchronously may answer (Lambda's Invoke API: "the maximum payload size is 6 MB"). */
const LAMBDA_RESPONSE_BYTES = 6 * 1024 * 1024;

let server: TestPostgres;
const pools: pg.Pool[] = [];
/** The API function's runtime: ca_dms_control on one catalog connection, ca_dms_monitor on the shards. */
let api: ShardingRuntime;
/** The moves worker's logins, whose stores an operator's hand change would use: ca_dms_control on one catalog connection, ca_dms_mover on the shards. */
let worker: ShardingRuntime;

function url(user: string, database: string): string {
  return `postgresql://${user}:${encodeURIComponent(PASSWORD)}@127.0.0.1:${server.port}/${database}`;
}
function poolAs(user: string, database: string, max = 2): pg.Pool {
  const pool = new pg.Pool({ connectionString: url(user, database), max });
  pool.on('error', () => undefined);
  pools.push(pool);
  return pool;
}
/** The sharding configuration with `user`'s credentials in every shard URL (`through` rewrites one shard's). */
function configAs(user: string, through: (shard: string, url: string) => string = (_shard, u) => u) {
  return parseShardingConfig({
    strategy: 'hash_based',
    shards: SHARDS.map((shard_id) => ({ shard_id, database_url: through(shard_id, url(user, shard_id)), weight: 1, read_replicas: [] })),
    default_shard: SHARDS[0],
    health_check_timeout_seconds: HEALTH_TIMEOUT_S,
  });
}
/** A runtime as the API function builds it (functions/handlers/api.ts): the Lambda catalog pool, two connections per shard. */
async function apiRuntime(through?: (shard: string, url: string) => string): Promise<ShardingRuntime> {
  const catalog = await createPool({ url: url(LOGINS.control, SHARDS[0]) }, undefined);
  pools.push(catalog);
  return createShardingRuntime({ config: configAs(LOGINS.monitor, through), catalog, actor: 'scaling-api', pools: { max: 2 } });
}
const master = (shard: string): pg.Pool => poolAs(MASTER, shard);

async function sidesOf(slot: number): Promise<{ from: string; to: string }> {
  const from = (await api.slotMaps.current()).assignments[slot] as string;
  return { from, to: SHARDS.find((s) => s !== from) as string };
}
async function fenceRow(shard: string, kind: 'slot' | 'directory', unit: string): Promise<{ state: string; moved_to: string | null; excluded_keys: string[]; job_id: string | null } | undefined> {
  const { rows } = await master(shard).query<{ state: string; moved_to: string | null; excluded_keys: string[]; job_id: string | null }>(
    'select state, moved_to, excluded_keys, job_id::text from write_fences where kind = $1 and unit_id = $2',
    [kind, unit],
  );
  return rows[0];
}
const rowOf = (rows: readonly ReviewedFence[], shard: string, slot: number): ReviewedFence | undefined => rows.find((r) => r.shard === shard && r.kind === 'slot' && r.unitId === String(slot));
const withoutAge = (rows: readonly ReviewedFence[]): Omit<ReviewedFence, 'ageMs'>[] => rows.map(({ ageMs: _ageMs, ...rest }) => rest);

beforeAll(async () => {
  server = await startTestPostgres({ settings: { shared_preload_libraries: 'pg_stat_statements' } });
  await emulateRdsMaster(server.url, { master: MASTER, password: PASSWORD, databases: SHARDS });
  const masters = SHARDS.map((db) => master(db));
  const catalog = masters[0] as pg.Pool;
  await migrateAll({ catalog, shards: masters });
  await ensureLogin(catalog, { username: LOGINS.control, password: PASSWORD }, { role: CONTROL_ROLE, settings: { statement_timeout: `${CATALOG_STATEMENT_TIMEOUT_MS}ms` } });
  for (const shard of masters) {
    await ensureLogin(shard, { username: LOGINS.monitor, password: PASSWORD }, { role: MONITOR_ROLE });
    await ensureLogin(shard, { username: LOGINS.mover, password: PASSWORD }, { role: MOVER_ROLE });
    await ensureLogin(shard, { username: LOGINS.app, password: PASSWORD }, { role: APPLICATION_ROLE });
  }
  api = await apiRuntime();
  const workerCatalog = await createPool({ url: url(LOGINS.control, SHARDS[0]) }, undefined);
  pools.push(workerCatalog);
  worker = await createShardingRuntime({ config: configAs(LOGINS.mover), catalog: workerCatalog, actor: 'scaling-moves', pools: { max: 2 } });
}, 180_000);

afterAll(async () => {
  await api?.close();
  await worker?.close();
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await server?.stop();
});

describe("GET /shards/fences as the API function reads it (ca_dms_control on one catalog connection, ca_dms_monitor on the shards)", () => {
  /** Slot 601: left fenced on its owner by a hand change that died; 602: a moved row on the shard the map names. */
  const left: Record<number, { from: string; to: string }> = {};
  beforeAll(async () => {
    for (const slot of [601, 602]) left[slot] = await sidesOf(slot);
    const [a, b] = [left[601], left[602]] as [{ from: string; to: string }, { from: string; to: string }];
    await master(a.from).query(`insert into write_fences (kind, unit_id, state) values ('slot', '601', 'fenced')`);
    await master(b.from).query(`insert into write_fences (kind, unit_id, state, moved_to) values ('slot', '602', 'moved', $1)`, [b.to]);
  });

  it('lists the rows a hand change left, judged as the review judges them', async () => {
    const [a, b] = [left[601], left[602]] as [{ from: string; to: string }, { from: string; to: string }];

    const listing = await api.fences.list();
    const review = await reviewFences({ catalog: master(SHARDS[0]), shards: new Map(SHARDS.map((s) => [s, master(s)])) });

    expect(listing.unreachable).toEqual([]);
    expect(rowOf(listing.rows, a.from, 601)).toMatchObject({ state: 'fenced', jobId: null, owner: a.from, action: 'reopen' });
    expect(rowOf(listing.rows, a.from, 601)?.withheld).toMatch(/^last written \d+ s ago, under --older-than 900 s/);
    expect(rowOf(listing.rows, b.from, 602)).toMatchObject({ state: 'moved', movedTo: b.to, owner: b.from, action: 'reopen' });
    expect({ mapVersion: listing.mapVersion, rows: withoutAge(listing.rows), explained: listing.explained }).toEqual({ mapVersion: review.mapVersion, rows: withoutAge(review.rows), explained: review.explained });
  });

  it("lists a silent shard of four as unreachable within health_check_timeout_seconds, and the others' rows, far inside API Gateway's 29 s", async () => {
    // A shard behind a relay that goes silent: its open connections (warmed by a first
    // listing, as a warm container's) and any new one get no answer, as behind a black-holed path.
    const relay = await SilentRelay.start(server.port);
    const listed = (left[601] as { from: string }).from;
    const silent = [...SHARDS].reverse().find((shard) => shard !== listed) as string;
    const runtime = await apiRuntime((shard, u) => (shard === silent ? relay.url(u) : u));
    try {
      expect((await runtime.fences.list()).unreachable).toEqual([]);
      relay.blackholeOpen();
      relay.blackhole();
      const took: number[] = [];
      const listings = [];
      // Twice: the first finds the pool's warm connection silent, the second a new one never answered.
      for (let i = 0; i < 2; i++) {
        const started = performance.now();
        listings.push(await runtime.fences.list());
        took.push(performance.now() - started);
      }

      for (const listing of listings) {
        expect(listing.unreachable).toEqual([`${silent} (no answer within ${HEALTH_TIMEOUT_S * 1000} ms)`]);
        expect(rowOf(listing.rows, listed, 601)).toMatchObject({ state: 'fenced', action: 'reopen' });
      }
      // The bound the listing keeps is its shards' (1 s here) and the catalog's two reads; a third of
      // API Gateway's limit leaves room for a slow machine without hiding a read that waited on the
      // silent shard (which never ends).
      expect(Math.max(...took)).toBeLessThan(API_GATEWAY_MS / 3);
    } finally {
      await runtime.close();
      await relay.stop();
    }
  }, 60_000);

  it("answers a page at a time within the Lambda's 6 MB response limit where the shards hold thousands of listed rows, every row once across the pages", async () => {
    // What 16,000 keys moved off their slot's owner leave there: a `moved` directory row each,
    // which the listing shows (a key's owner is decided by hand). About 460 bytes a row in the
    // function's answer: the whole listing is past what Lambda returns to API Gateway (a 502).
    const shard = SHARDS[1];
    const map = await api.slotMaps.current();
    const keys: string[] = [];
    while (keys.length < 16_000) {
      const key = randomUUID();
      if (map.assignments[keySlot(key)] === shard) keys.push(key);
    }
    await master(shard).query(`insert into write_fences (kind, unit_id, state, moved_to, map_version) select 'directory', k, 'moved', $2, 1 from unnest($1::text[]) k`, [keys, SHARDS[2]]);
    // The API function's handler over the API runtime's fence listing (the rest of the API is not asked).
    const port = { shardFences: (options: { all: boolean }) => api.fences.list(options) } as unknown as ScalingApiPort;
    const handler = createApiHandler(() => port);
    const get = async (query: Record<string, string>): Promise<{ result: APIGatewayProxyResult; bytes: number }> => {
      const event = { httpMethod: 'GET', path: '/api/v1/scaling/shards/fences', headers: {}, queryStringParameters: query, requestContext: { requestId: randomUUID() } } as unknown as APIGatewayProxyEvent;
      const result = (await handler(event, lambdaContext)) as APIGatewayProxyResult;
      return { result, bytes: Buffer.byteLength(JSON.stringify(result)) };
    };
    try {
      const listed: string[] = [];
      let biggest = 0;
      for (let cursor: string | null | undefined, pages = 0; cursor !== null && pages < 100; pages++) {
        const { result, bytes } = await get(cursor === undefined ? {} : { cursor });
        expect(result.statusCode).toBe(200);
        biggest = Math.max(biggest, bytes);
        const body = JSON.parse(result.body) as { rows: ReviewedFence[]; next_cursor: string | null };
        listed.push(...body.rows.filter((r) => r.shard === shard && r.kind === 'directory').map((r) => r.unitId));
        cursor = body.next_cursor ?? null;
      }

      expect(biggest).toBeLessThanOrEqual(LAMBDA_RESPONSE_BYTES);
      expect(listed.length).toBe(keys.length);
      expect(new Set(listed)).toEqual(new Set(keys));
    } finally {
      await master(shard).query(`delete from write_fences where kind = 'directory' and unit_id = any($1::text[])`, [keys]);
    }
  }, 120_000);
});

describe('a slot move planned by the API function while a pin by hand of a key of the slot holds its lock (sharding migration 017)', () => {
  it('waits at most 5 s on its one catalog connection, is refused as a conflict naming the lock, records nothing, and is planned at once on that connection once the pin has committed', async () => {
    const slot = 611;
    const { from, to } = await sidesOf(slot);
    const [key] = keysInSlot(slot, 1) as [string];
    // An operator's pin of the key to its slot's owner (its route unchanged), written in a
    // transaction still open: it holds the slot's row FOR SHARE until its commit.
    const operator = await poolAs(LOGINS.control, SHARDS[0], 1).connect();
    try {
      await operator.query('begin');
      await worker.directory.set(key, from, 'ops@example.com', operator);

      const started = performance.now();
      const refused = await refusalOf(api.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' }));
      const waited = performance.now() - started;

      expect(refused).toBeInstanceOf(MoveConflictError);
      expect(String(refused)).toMatch(new RegExp(`a pin of a key of slot ${slot} \\(or a slot map published by hand giving it away\\) held catalog\\.slot_pin_locks for more than 5000 ms`));
      // Its lock_timeout, not the login's statement_timeout (10 s) nor the pool's query_timeout (12 s).
      expect(waited).toBeGreaterThanOrEqual(4_900);
      expect(waited).toBeLessThan(CATALOG_STATEMENT_TIMEOUT_MS);
      expect((await master(SHARDS[0]).query('select id from catalog.move_jobs where slot = $1', [slot])).rows).toEqual([]);
      await operator.query('commit');
    } finally {
      await operator.query('rollback').catch(() => undefined);
      operator.release();
    }
    const planned = await api.mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    expect({ from: planned.from, excluded: planned.excludedKeys }).toEqual({ from, excluded: [key] });
    await api.mover.requestCancel(planned.id);
  }, 60_000);
});

describe("hand changes through the stores of a runtime with the moves worker's logins (ca_dms_control on one catalog connection, ca_dms_mover on the shards)", () => {
  it("pins a user key away from its slot's owner: written, fenced on the old owner and moved there to the pin's shard", async () => {
    const slot = 621;
    const { from, to } = await sidesOf(slot);
    const [key] = keysInSlot(slot, 1) as [string];

    const entry = await worker.directory.set(key, to, 'ops@example.com');

    expect(entry.shardId).toBe(to);
    expect(await fenceRow(from, 'directory', key)).toMatchObject({ state: 'moved', moved_to: to, job_id: null });
  }, 60_000);

  it("publishes a map by hand giving away a slot with a pinned key: the slot fenced, then moved on its old owner with the key kept out, and the key's pin marked on the new owner", async () => {
    const slot = 622;
    const { from, to } = await sidesOf(slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await worker.directory.set(key, from, 'ops@example.com');

    const published = await worker.slotMaps.publishByHand(moveSlots(await worker.slotMaps.current(), [slot], to), 'test: the slot given away by hand');

    expect(published.map.assignments[slot]).toBe(to);
    expect(await fenceRow(from, 'slot', String(slot))).toMatchObject({ state: 'moved', moved_to: to, excluded_keys: [key], job_id: null });
    expect(await fenceRow(to, 'directory', key)).toMatchObject({ state: 'moved', moved_to: from });
  }, 60_000);

  it("is refused, nothing published, where the slot's old owner holds rows of it (the count as the mover's login)", async () => {
    const slot = 623;
    const { from, to } = await sidesOf(slot);
    await seedUsers(master(from), slot, keysInSlot(slot, 2), 1);
    const before = await worker.slotMaps.current();

    const refused = await refusalOf(worker.slotMaps.publishByHand(moveSlots(before, [slot], to), 'test: a slot with rows given away by hand'));

    expect(refused).toMatchObject({ name: 'SlotMapRowsLeftError' });
    expect((await worker.slotMaps.current()).version).toBe(before.version);
    expect(await fenceRow(from, 'slot', String(slot))).toBeUndefined();
  }, 60_000);

  it('settles the row a hand change left fenced where the map names another shard (the review as ca_dms_control on one catalog connection, ca_dms_mover on the shards)', async () => {
    const slot = 624;
    const { from, to } = await sidesOf(slot);
    await worker.slotMaps.publishByHand(moveSlots(await worker.slotMaps.current(), [slot], to), 'test: the slot given away by hand');
    // What a change killed between its commit and its settle leaves.
    await master(from).query(`update write_fences set state = 'fenced', moved_to = null where kind = 'slot' and unit_id = $1`, [String(slot)]);
    const catalog = await createPool({ url: url(LOGINS.control, SHARDS[0]) }, undefined);
    pools.push(catalog);

    const review = await reviewFences({ catalog, shards: worker.primaries, settle: true });

    expect(rowOf(review.rows, from, slot)).toMatchObject({ action: 'set moved', outcome: `settled: moved to ${to} as of version ${review.mapVersion}` });
    expect(await fenceRow(from, 'slot', String(slot))).toMatchObject({ state: 'moved', moved_to: to });
  }, 60_000);
});
