/**
 * The scaling API's route table (prefix `/api/v1/scaling`): the CA-DMS guide's endpoints
 * exactly as it names them, the ones its troubleshooting section uses, and a few beyond.
 *
 * @example
 * ```ts
 * const router = createScalingRouter(port);
 * const response = await router.dispatch(request);
 * ```
 */
import { z } from 'zod';
import { ScalingConfigError, parseScalingConfig } from '../core/scaling/config.js';
import { ProblemError } from './http.js';
import { buildOpenApi } from './openapi.js';
import { createRouter, defineRoute, type RouteSpec, type Router, type RouterOptions } from './router.js';
import {
  configBodySchema,
  configEnvelopeSchema,
  evaluateBodySchema,
  evaluationSchema,
  healthReportSchema,
  historyQuerySchema,
  historySchema,
  ifMatchHeadersSchema,
  metricsSchema,
  moveIdParamsSchema,
  moveJobSchema,
  moveRequestSchema,
  rebalanceCheckSchema,
  rebalanceQuerySchema,
  recommendationsSchema,
  routeQuerySchema,
  routeResultSchema,
  startStopBodySchema,
  startStopResultSchema,
  statisticsReportSchema,
  statusSchema,
} from './schemas.js';
import { ConflictError, NotFoundError, StaleVersionError, UnavailableError, UnknownServiceError, type ScalingApiPort } from './service.js';

export const API_PREFIX = '/api/v1/scaling';

const noQuery = z.strictObject({});
const statisticsQuery = z.strictObject({ exact: z.enum(['true', 'false']).optional().describe('exact row counts instead of estimates') });

/** `"v7"` -> 7; anything else is not one of our ETags. */
function parseEtag(value: string): number | null {
  const m = /^(?:W\/)?"v(\d{1,9})"$/.exec(value.trim());
  return m ? Number(m[1]) : null;
}
const etagOf = (version: number): string => `"v${version}"`;

/** Maps the port's typed errors onto problem documents; anything else stays a 500. */
async function guard<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof UnknownServiceError)
      throw new ProblemError(400, err.message, { invalidParams: [{ name: 'service', reason: err.message }], title: 'Invalid request', cause: err });
    if (err instanceof StaleVersionError) throw new ProblemError(412, err.message, { cause: err });
    if (err instanceof NotFoundError) throw new ProblemError(404, err.message, { cause: err });
    if (err instanceof ConflictError) throw new ProblemError(409, err.message, { cause: err });
    if (err instanceof UnavailableError) throw new ProblemError(503, err.message, { cause: err, headers: { 'retry-after': '5' } });
    throw err;
  }
}

/** The route table over a port. */
export function scalingRoutes(port: ScalingApiPort): RouteSpec[] {
  const routes: RouteSpec[] = [
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/status`,
      operationId: 'getStatus',
      summary: 'Get auto-scaling status',
      tags: ['scaling'],
      query: noQuery,
      responses: { 200: { description: 'enabled or stopped, dry run, and per service its counts, bounds, policy, last action and cooldowns', schema: statusSchema } },
      handle: async () => ({ status: 200, body: await guard(() => port.status()) }),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/metrics`,
      operationId: 'getMetrics',
      summary: 'Get current system metrics',
      tags: ['scaling'],
      query: noQuery,
      responses: { 200: { description: 'the latest metrics per service; missing ones marked missing', schema: metricsSchema } },
      handle: async () => ({ status: 200, body: await guard(() => port.metrics()) }),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/history`,
      operationId: 'getHistory',
      summary: 'Get scaling event history',
      description: 'Decisions and events, newest first, with cursor pagination.',
      tags: ['scaling'],
      query: historyQuerySchema,
      responses: { 200: { description: 'a page of history', schema: historySchema } },
      handle: async ({ query }) => {
        if (query.since && query.until && Date.parse(query.since) > Date.parse(query.until)) {
          throw new ProblemError(400, 'since must not be after until', {
            title: 'Invalid request',
            invalidParams: [{ name: 'query.since', reason: 'must not be after until' }],
          });
        }
        return { status: 200, body: await guard(() => port.history(query)) };
      },
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/config`,
      operationId: 'getConfig',
      summary: 'Get the scaling configuration',
      tags: ['scaling'],
      query: noQuery,
      responses: { 200: { description: 'the configuration and its version', schema: configEnvelopeSchema, headers: { etag: 'the version, for If-Match' } } },
      handle: async () => {
        const envelope = await guard(() => port.getConfig());
        return { status: 200, body: envelope, headers: { etag: etagOf(envelope.version) } };
      },
    }),
    defineRoute({
      method: 'PUT',
      path: `${API_PREFIX}/config`,
      operationId: 'putConfig',
      summary: 'Update scaling configuration',
      description:
        'Replaces the whole configuration (the guide\'s flat JSON is accepted; omitted settings take their defaults). Requires If-Match with the ETag from GET: 428 without it, 412 when it is stale.',
      tags: ['scaling'],
      query: noQuery,
      headers: ifMatchHeadersSchema,
      body: configBodySchema,
      responses: { 200: { description: 'the stored configuration and its new version', schema: configEnvelopeSchema, headers: { etag: 'the new version' } } },
      handle: async ({ headers, body, identity }) => {
        const ifMatch = headers['if-match'];
        if (ifMatch === undefined) throw new ProblemError(428, 'send If-Match with the ETag from GET /config so concurrent changes cannot overwrite each other');
        const expected = parseEtag(ifMatch);
        if (expected === null) {
          throw new ProblemError(412, `If-Match ${JSON.stringify(ifMatch)} is not a configuration ETag (expected a value like "v3")`);
        }
        try {
          parseScalingConfig(body);
        } catch (err) {
          if (!(err instanceof ScalingConfigError)) throw err;
          throw new ProblemError(400, err.message, {
            title: 'Invalid configuration',
            type: 'https://ca-dms-scaling.dev/problems/validation',
            invalidParams: err.issues.map((i) => ({ name: i.path ? `body.${i.path}` : 'body', reason: i.message })),
            cause: err,
          });
        }
        const stored = await guard(() => port.putConfig(body, expected, identity.actor));
        return { status: 200, body: stored, headers: { etag: etagOf(stored.version) } };
      },
    }),
    ...(['start', 'stop'] as const).map((verb) =>
      defineRoute({
        method: 'POST',
        path: `${API_PREFIX}/${verb}`,
        operationId: `${verb}Scaling`,
        summary: verb === 'start' ? 'Start auto-scaling' : 'Stop auto-scaling',
        description: 'Globally, or for one service with {"service": "..."}. Idempotent; recorded in the history with the caller.',
        tags: ['scaling'],
        query: noQuery,
        body: startStopBodySchema,
        bodyRequired: false,
        responses: { 200: { description: 'the resulting state', schema: startStopResultSchema } },
        handle: async ({ body, identity }) => ({
          status: 200,
          body: await guard(() =>
            port.setEnabled(verb === 'start', { ...(body.service ? { service: body.service } : {}), ...(body.reason ? { reason: body.reason } : {}) }, identity.actor),
          ),
        }),
      }),
    ),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/recommendations`,
      operationId: 'getRecommendations',
      summary: 'Get scaling recommendations',
      tags: ['scaling'],
      query: noQuery,
      responses: { 200: { description: 'advice with its evidence', schema: recommendationsSchema } },
      handle: async () => ({ status: 200, body: await guard(() => port.recommendations()) }),
    }),
    defineRoute({
      method: 'POST',
      path: `${API_PREFIX}/evaluate`,
      operationId: 'evaluateNow',
      summary: 'Dry-run an evaluation now',
      description: 'What the controller would do for each service right now, and why or why not. Changes nothing.',
      tags: ['scaling'],
      query: noQuery,
      body: evaluateBodySchema,
      bodyRequired: false,
      responses: { 200: { description: 'the would-be decisions', schema: evaluationSchema } },
      handle: async ({ body, identity }) => ({
        status: 200,
        body: await guard(() => port.evaluate(body.service ? { service: body.service } : {}, identity.actor)),
      }),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/statistics`,
      operationId: 'getShardStatistics',
      summary: 'Get shard statistics',
      tags: ['shards'],
      query: statisticsQuery,
      responses: { 200: { description: 'rows and bytes per shard and table, users, documents, slots, shares and imbalance', schema: statisticsReportSchema } },
      handle: async ({ query }) => ({ status: 200, body: await guard(() => port.shardStatistics({ exact: query.exact === 'true' })) }),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/health`,
      operationId: 'getShardHealth',
      summary: 'Get shard health status',
      tags: ['shards'],
      query: noQuery,
      responses: { 200: { description: 'every primary and replica: reachability, role, connections, performance, storage, lag, status', schema: healthReportSchema } },
      handle: async () => ({ status: 200, body: await guard(() => port.shardHealth()) }),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/rebalance-check`,
      operationId: 'getRebalanceCheck',
      summary: 'Check whether shards need rebalancing',
      tags: ['shards'],
      query: rebalanceQuerySchema,
      responses: { 200: { description: 'the imbalance and the moves that would fix it', schema: rebalanceCheckSchema } },
      handle: async ({ query }) => ({
        status: 200,
        body: await guard(() => port.rebalanceCheck({ ...(query.threshold !== undefined ? { threshold: query.threshold } : {}), ...(query.by ? { by: query.by } : {}) })),
      }),
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/route`,
      operationId: 'routeKey',
      summary: 'Where a key lives',
      tags: ['shards'],
      query: routeQuerySchema,
      responses: { 200: { description: 'the shard, slot and map version for the key', schema: routeResultSchema } },
      handle: async ({ query }) => ({ status: 200, body: await guard(() => port.route(query.key)) }),
    }),
    defineRoute({
      method: 'POST',
      path: `${API_PREFIX}/shards/moves`,
      operationId: 'startMove',
      summary: 'Start moving a slot or a directory key to another shard',
      tags: ['shards'],
      query: noQuery,
      body: moveRequestSchema,
      responses: { 202: { description: 'the move job, started', schema: moveJobSchema, headers: { location: 'where to follow the move' } } },
      handle: async ({ body, identity }) => {
        const job = await guard(() => port.startMove(body, identity.actor));
        return { status: 202, body: job, headers: { location: `${API_PREFIX}/shards/moves/${job.id}` } };
      },
    }),
    defineRoute({
      method: 'GET',
      path: `${API_PREFIX}/shards/moves/{id}`,
      operationId: 'getMove',
      summary: 'Follow a move',
      tags: ['shards'],
      params: moveIdParamsSchema,
      query: noQuery,
      responses: { 200: { description: 'the move job and its progress', schema: moveJobSchema } },
      handle: async ({ params }) => ({ status: 200, body: await guard(() => port.getMove(params.id)) }),
    }),
  ];
  const openapi = defineRoute({
    method: 'GET',
    path: `${API_PREFIX}/openapi.json`,
    operationId: 'getOpenApi',
    summary: 'This API\'s OpenAPI 3 document',
    tags: ['meta'],
    query: noQuery,
    responses: { 200: { description: 'the OpenAPI document', schema: z.record(z.string(), z.unknown()) } },
    handle: async () => ({ status: 200, body: openApiDocument }),
  });
  const all = [...routes, openapi];
  const openApiDocument = buildOpenApi(all, {
    title: 'CA-DMS scaling API',
    version: '1.0.0',
    description: 'Watch and steer CA-DMS horizontal scaling: auto-scaling status, metrics, history, configuration, recommendations and database shards.',
  });
  return all;
}

/** The router for the scaling API. */
export function createScalingRouter(port: ScalingApiPort, options: RouterOptions = {}): Router {
  return createRouter(scalingRoutes(port), options);
}
