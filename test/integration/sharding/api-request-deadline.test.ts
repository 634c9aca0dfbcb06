/**
 * The scaling API's shard routes answer within what their request has left (issue #15).
 * `health_check_timeout_seconds` may be up to 60 s, and each shard route waited that long for a
 * silent shard (a hung server, a path black-holed after the connection was made), but API Gateway ends a
 * request at 29 s: past about 27 s every shard route answered API Gateway's 504, naming nothing,
 * instead of its own answer naming the shard. Reproduced here with a 20 s timeout and requests
 * that API Gateway received 24 s ago (3 s left before the answer margin): each route took the
 * whole 20 s. Now each wait on a shard ends at the request's deadline (API Gateway's 29 s from
 * `requestTimeEpoch`, or the function's own end, less 2 s), and the route answers as it does for
 * a shard that timed out: the silent shard named.
 */
import type { APIGatewayProxyEvent, Context } from 'aws-lambda';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { API_ANSWER_MARGIN_MS } from '../../../functions/api/apigw.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';
import { createScalingApiPort, shardingDepsOf, type ScalingApiDeps } from '../../../functions/api/wiring.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { createApiHandler } from '../../../functions/handlers/api.js';
import { apiFunctionContext, apiGatewayEvent, receivedLeaving } from './fixtures/api-gateway-request.js';
import { startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { SilentRelay } from './fixtures/silent-relay.js';

/** Far past what any request has: a route that waits for it answers after API Gateway's 504. */
const SHARD_TIMEOUT_S = 20;
/** What the requests below have left before the answer margin. */
const LEFT_MS = 3000;
/** A route counts as answering in time well before the shard timeout (the machine is shared and slow). */
const IN_TIME_MS = LEFT_MS + 4000;

let env: MoveEnv;
let relay: SilentRelay;
let runtime: ShardingRuntime;
let port: ScalingApiPort;
beforeAll(async () => {
  env = await startMoveEnv();
  relay = await SilentRelay.start(Number(new URL(env.urls.shards['shard_b'] as string).port));
  const config = parseShardingConfig({
    strategy: 'hash_based',
    shards: Object.entries(env.urls.shards).map(([shard_id, url]) => ({ shard_id, database_url: shard_id === 'shard_b' ? relay.url(url) : url, weight: 1, read_replicas: [] })),
    default_shard: 'shard_a',
    health_check_timeout_seconds: SHARD_TIMEOUT_S,
  });
  runtime = await createShardingRuntime({ config, catalog: env.catalog, actor: 'deadline-test' });
  port = createScalingApiPort({
    // The shard routes read the sharding layer only; the controller's side is never called.
    ...({} as Omit<ScalingApiDeps, 'sharding'>),
    sharding: shardingDepsOf(runtime, () => undefined),
  });
  // Every transaction a node wait opens on shard_b (`begin; set local statement_timeout ...`)
  // reaches it two minutes late: connected, and then silent (a hung server, a path black-holed
  // after the handshake). A shard silent to new connections already fails at the pools' 2 s
  // connection timeout.
  relay.slowMessages('statement_timeout', 120_000);
}, 120_000);
afterAll(async () => {
  // The silent shard's connections are dropped by their deadlines; nothing waits on it for long.
  await Promise.race([runtime?.close(), delay(5000)]);
  await relay?.stop();
  await env?.stop();
}, 60_000);

const event = (path: string, query: Record<string, string>, receivedAt: number): APIGatewayProxyEvent => apiGatewayEvent({ method: 'GET', path, query, receivedAt, requestId: `deadline-${path}` });
const context = (remainingMs: number): Context => apiFunctionContext(remainingMs, 'deadline-test');

/** One request through a fresh handler (no snapshot from an earlier one): its status, body and how long it took. */
async function call(path: string, query: Record<string, string>, receivedAt: number, remainingMs: number): Promise<{ status: number; body: unknown; ms: number }> {
  const handler = createApiHandler(() => port);
  const started = performance.now();
  const result = await handler(event(path, query, receivedAt), context(remainingMs));
  return { status: result.statusCode, body: JSON.parse(result.body) as unknown, ms: performance.now() - started };
}

describe('a shard route with a silent shard and health_check_timeout_seconds past what API Gateway allows', () => {
  it.each([
    ['/shards/health', {}],
    ['/shards/statistics', {}],
    ['/shards/statistics', { exact: 'true' }],
    ['/shards/rebalance-check', {}],
    ['/shards/fences', {}],
  ] as const)('%s %o answers within what the request has left, naming the silent shard', async (path, query) => {
    const { status, body, ms } = await call(path, query, receivedLeaving(LEFT_MS), 29_000);
    const text = JSON.stringify(body);

    expect({ status, inTime: ms < IN_TIME_MS, namesShard: text.includes('shard_b') }).toEqual({ status: path === '/shards/rebalance-check' ? 503 : 200, inTime: true, namesShard: true });
    expect(ms).toBeGreaterThanOrEqual(LEFT_MS - 500);
    expect(text).toMatch(/shard_b.*no answer within \d+ ms/);
  }, 60_000);

  it("ends at the function's own end where that comes before API Gateway's", async () => {
    // A function timeout shorter than API Gateway's 29 s (or a request whose function started late).
    const { status, body, ms } = await call('/shards/health', {}, Date.now(), LEFT_MS + API_ANSWER_MARGIN_MS);

    expect({ status, inTime: ms < IN_TIME_MS }).toEqual({ status: 200, inTime: true });
    expect(JSON.stringify(body)).toMatch(/"shardId":"shard_b","status":"down"/);
  }, 60_000);
});
