/**
 * Issue #15 (h134): POST /shards/moves reads the shards before it records a job (Mover.plan's
 * checks: the unit's size on its source, the fence rows and the rows of the slot on its source and
 * target, Mover.checked). Those reads were bounded on no side: a shard table held ACCESS EXCLUSIVE
 * (a migration's ALTER TABLE, a VACUUM FULL, a LOCK TABLE left open) held the request for as long
 * as the lock was held, past the API's request deadline (API Gateway answered its own 504, naming
 * nothing), and the read's backend went on waiting after. The plan's shard reads now end at the
 * request's deadline: 503 naming the shard and what the plan asked it, nothing recorded, the
 * statement cancelled on the server.
 *
 * Reproduced here with requests that API Gateway received long enough ago that 3 s are left before
 * the answer margin, and a holder that lets go of its lock well after that: before the fix each
 * request waited for the holder and then recorded its job (201).
 */
import type { APIGatewayProxyEvent, Context } from 'aws-lambda';
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { API_ANSWER_MARGIN_MS } from '../../../functions/api/apigw.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { createScalingApiPort, shardingDepsOf, type ScalingApiDeps } from '../../../functions/api/wiring.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { createApiHandler } from '../../../functions/handlers/api.js';
import { apiFunctionContext, apiGatewayEvent, receivedLeaving } from './fixtures/api-gateway-request.js';
import { firstSlotOwnedBy, keysInSlot, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/** What the requests below have left before the answer margin. */
const LEFT_MS = 3000;
/** When the holder lets go of its lock: long after the request's deadline (an unbounded read is then answered, and its job recorded). */
const HOLD_MS = LEFT_MS + 9000;

let env: MoveEnv;
let runtime: ShardingRuntime;
let port: ScalingApiPort;
beforeAll(async () => {
  // A third shard: a directory key's move asks every shard of the deployment (askedShard).
  env = await startMoveEnv({ shards: 3 });
  const config = parseShardingConfig({
    strategy: 'hash_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url, weight: 1, read_replicas: [] })),
    default_shard: 'shard_a',
  });
  runtime = await createShardingRuntime({ config, catalog: env.catalog, actor: 'plan-lock-test' });
  port = createScalingApiPort({
    // POST /shards/moves reads the sharding layer only; the controller's side is never called.
    ...({} as Omit<ScalingApiDeps, 'sharding'>),
    sharding: shardingDepsOf(runtime, () => undefined),
  });
}, 120_000);
afterAll(async () => {
  await runtime?.close();
  await env?.stop();
}, 60_000);

const event = (body: unknown, receivedAt: number): APIGatewayProxyEvent => apiGatewayEvent({ method: 'POST', path: '/shards/moves', body, receivedAt, requestId: 'plan-lock' });
const context = (remainingMs: number): Context => apiFunctionContext(remainingMs, 'plan-lock-test');

/** The backends of `pool`'s database other than `except` waiting on a lock. */
async function lockWaiters(pool: pg.Pool, except: number): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(`select count(*) as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and pid <> $1`, [except]);
  return Number(rows[0]?.n);
}

describe('POST /shards/moves while a table of a shard the plan reads is held ACCESS EXCLUSIVE', () => {
  it.each([
    ['a slot move', 'its source', 'shard_a', 'documents'],
    ['a slot move', 'its target', 'shard_b', 'users'],
    ['a directory key move', 'a third shard', 'shard_c', 'users'],
  ] as const)('%s whose %s has a table locked answers 503 naming that shard by the request deadline; nothing recorded, no read left waiting', async (kind, role, shard, table) => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', kind === 'a slot move' ? (shard === 'shard_a' ? 100 : 200) : 300);
    const unit = kind === 'a slot move' ? String(slot) : (keysInSlot(slot, 1)[0] as string);
    const url = env.urls.shards[shard] as string;
    const holder = new pg.Client({ connectionString: url });
    holder.on('error', () => undefined);
    await holder.connect();
    const observer = new pg.Pool({ connectionString: url, max: 1 });
    observer.on('error', () => undefined);
    let release: NodeJS.Timeout | undefined;
    try {
      const { rows } = await holder.query<{ pid: number }>('select pg_backend_pid() as pid');
      const holderPid = Number(rows[0]?.pid);
      await holder.query(`begin; lock table ${table} in access exclusive mode`);
      // Let go of long after the deadline (an unbounded read then answered, and the plan recorded its job); at once once answered.
      release = setTimeout(() => void holder.query('rollback').catch(() => undefined), HOLD_MS);
      const handler = createApiHandler(() => port);
      const result = await handler(event({ kind: kind === 'a slot move' ? 'slot' : 'directory', unit, to: 'shard_b' }, receivedLeaving(LEFT_MS)), context(29_000));
      const detail = String((JSON.parse(result.body) as { detail?: unknown }).detail);
      // Read while the holder still holds its lock: the cut read's statement was cancelled on the server.
      let waiting = await lockWaiters(observer, holderPid);
      for (let i = 0; i < 50 && waiting > 0; i++) {
        await delay(100);
        waiting = await lockWaiters(observer, holderPid);
      }
      const stillHeld = (await observer.query<{ n: string }>(`select count(*) as n from pg_locks where pid = $1 and mode = 'AccessExclusiveLock' and granted`, [holderPid])).rows[0]?.n;
      expect({ status: result.statusCode, waiting, stillHeld: Number(stillHeld) > 0 }).toEqual({ status: 503, waiting: 0, stillHeld: true });
      const asked =
        role === 'a third shard' ? `\\), and a directory-key move asks every shard` : `, what the request had left\\): it is the move's ${role === 'its source' ? 'source' : 'target'}`;
      expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of ${kind === 'a slot move' ? 'slot' : 'key'} ${unit} from shard_a to shard_b: ${shard} did not answer \\(no answer within \\d+ ms${asked}`));
      expect(detail).toContain('Nothing was recorded');
      expect(Number((await env.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n)).toBe(0);
    } finally {
      clearTimeout(release);
      await holder.end().catch(() => undefined);
      await observer.end();
    }
  }, 60_000);
});

/**
 * h137: the checks end at the request's deadline, but the job's transaction after them waited on
 * its own bounds (8 s for its insert, 5 s for the slot's pin lock and the maps' SHARE lock
 * together), whatever the request had left: a request whose checks left it 1 s waited past API
 * Gateway's 504 for a lock of the catalog and then recorded its job, answered to no one (the case
 * the deadline on the checks meant to end). The holder lets go after the gateway's end, within the
 * plan's own wait: before, the plan then recorded its job (202); now its waits end at the deadline.
 */
describe('POST /shards/moves whose record step would wait on a catalog lock past the request deadline', () => {
  it.each([
    ["the maps' SHARE lock (catalog.slot_maps held EXCLUSIVE)", 'catalog.slot_maps', 'exclusive', 400, /: a transaction holding catalog\.slot_maps in ExclusiveLock mode .*held the table past the request's deadline/],
    // As a VACUUM or ANALYZE (autovacuum's) holds it: no map inserted, which the refusal blamed before.
    ["the maps' SHARE lock (catalog.slot_maps held SHARE UPDATE EXCLUSIVE)", 'catalog.slot_maps', 'share update exclusive', 425, /: a transaction holding catalog\.slot_maps in ShareUpdateExclusiveLock mode .*held the table past the request's deadline \(\d+ ms, what the request had left.*\): a VACUUM or an ANALYZE/],
    ['the insert of its job (catalog.move_jobs held EXCLUSIVE)', 'catalog.move_jobs', 'exclusive', 450, /: the insert into catalog\.move_jobs waited for a lock another transaction held .* past the request's deadline/],
  ] as const)('%s: refused by the deadline, nothing recorded', async (_what, table, mode, from, words) => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', from);
    const holder = new pg.Client({ connectionString: env.urls.catalog });
    holder.on('error', () => undefined);
    await holder.connect();
    let release: NodeJS.Timeout | undefined;
    try {
      // The checks' reads (ACCESS SHARE) pass; the record step's lock (SHARE, ROW EXCLUSIVE) waits.
      await holder.query(`begin; lock table ${table} in ${mode} mode`);
      // 1 s left before the margin, the gateway's end 2 s later: let go 1 s after that, within the plan's own waits (5 s, 8 s).
      release = setTimeout(() => void holder.query('rollback').catch(() => undefined), 1000 + API_ANSWER_MARGIN_MS + 1000);
      const handler = createApiHandler(() => port);
      const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(1000)), context(29_000));
      const detail = String((JSON.parse(result.body) as { detail?: unknown }).detail);
      const jobs = Number((await env.catalog.query<{ n: string }>('select count(*) as n from catalog.move_jobs where slot = $1', [slot])).rows[0]?.n);
      expect({ status: result.statusCode, jobs }).toEqual({ status: 409, jobs: 0 });
      expect(detail).toMatch(words);
      expect(detail).toContain('Nothing was recorded');
    } finally {
      clearTimeout(release);
      await holder.query('rollback').catch(() => undefined);
      await holder.end().catch(() => undefined);
    }
  }, 60_000);
});

/** A runtime over the env's catalog whose shards are the env's, `down` given a loopback port no server listens on; shard pools of `max` connections. */
async function runtimeWith(down: string | undefined, max: number): Promise<{ runtime: ShardingRuntime; port: ScalingApiPort }> {
  const closed = await new Promise<number>((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port: p } = server.address() as net.AddressInfo;
      server.close(() => resolve(p));
    });
  });
  const config = parseShardingConfig({
    strategy: 'hash_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({
      shard_id,
      database_url: shard_id === down ? database_url.replace(/@[^/]+\//, `@127.0.0.1:${closed}/`) : database_url,
      weight: 1,
      read_replicas: [],
    })),
    default_shard: 'shard_a',
  });
  const other = await createShardingRuntime({ config, catalog: env.catalog, actor: 'plan-lock-test', pools: { max } });
  return { runtime: other, port: createScalingApiPort({ ...({} as Omit<ScalingApiDeps, 'sharding'>), sharding: shardingDepsOf(other, () => undefined) }) };
}

describe('POST /shards/moves, the plan bounded by the request deadline, with a shard down or a pool of one (h137)', () => {
  it.each([
    ['source', 'shard_a'],
    ['target', 'shard_b'],
  ] as const)('a slot move whose %s (%s) is down, a closed port, answers 503 naming it and its role; nothing recorded', async (role, down) => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 500);
    const { runtime: other, port: downPort } = await runtimeWith(down, 2);
    try {
      const handler = createApiHandler(() => downPort);
      const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, Date.now()), context(29_000));
      const detail = String((JSON.parse(result.body) as { detail?: unknown }).detail);
      expect(result.statusCode).toBe(503);
      expect(detail).toMatch(new RegExp(`^starting the move: cannot plan the move of slot ${slot} from shard_a to shard_b: ${down} did not answer \\(connection error ECONNREFUSED\\): it is the move's ${role}`));
      expect(detail).toContain('Nothing was recorded');
      expect(Number((await env.catalog.query<{ n: string }>(`select count(*) as n from catalog.move_jobs where slot = $1`, [slot])).rows[0]?.n)).toBe(0);
    } finally {
      await other.close();
    }
  }, 60_000);

  it('a request already past its deadline answers 503 saying so, no shard blamed ("no answer within 0 ms"); nothing recorded', async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 700);
    const handler = createApiHandler(() => port);
    // Received so long ago that its deadline (the gateway's end less the margin) passed 500 ms before.
    const result = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(-500)), context(29_000));
    const detail = String((JSON.parse(result.body) as { detail?: unknown }).detail);
    expect(result.statusCode).toBe(503);
    expect(detail).toMatch(/^starting the move: the request's deadline \(API Gateway's 29 s or the function's end, less the answer margin\) had passed before its checks began(, \d+ ms before)?, and a job recorded after it would be answered to no one\. Nothing was recorded: plan it again$/);
    expect(Number((await env.catalog.query<{ n: string }>(`select count(*) as n from catalog.move_jobs where slot = $1`, [slot])).rows[0]?.n)).toBe(0);
  }, 60_000);

  it('a move planned right after one whose read of its source was cut, on shard pools of one connection (a Lambda\'s), is recorded', async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 600);
    const { runtime: other, port: onePort } = await runtimeWith(undefined, 1);
    const holder = new pg.Client({ connectionString: env.urls.shards.shard_a as string });
    holder.on('error', () => undefined);
    await holder.connect();
    try {
      await holder.query('begin; lock table documents in access exclusive mode');
      const handler = createApiHandler(() => onePort);
      const cut = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, receivedLeaving(1000)), context(29_000));
      await holder.query('rollback');
      const next = await handler(event({ kind: 'slot', unit: String(slot), to: 'shard_b' }, Date.now()), context(29_000));
      expect({ cut: cut.statusCode, next: next.statusCode }).toEqual({ cut: 503, next: 202 });
      expect(Number((await env.catalog.query<{ n: string }>(`select count(*) as n from catalog.move_jobs where slot = $1`, [slot])).rows[0]?.n)).toBe(1);
    } finally {
      await holder.end().catch(() => undefined);
      await other.close();
    }
  }, 60_000);
});
