/**
 * `api`: the scaling REST API behind API Gateway (REST, proxy integration, IAM authorization).
 * The handler validates the proxy event, dispatches it through the route table, and logs one
 * line per request with the caller's identity; the routes record that identity in every change
 * they make. Local mode serves this very handler through the local HTTP adapter.
 */
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { z } from 'zod';
import { fromApiGatewayEvent, requestDeadlineOf, toApiGatewayResult } from '../api/apigw.js';
import { ProblemError, problemResponse } from '../api/http.js';
import { createScalingRouter, type ReadSnapshotOptions } from '../api/routes.js';
import type { Router } from '../api/router.js';
import type { ScalingApiPort } from '../api/service.js';
import { createScalingApiPort, shardingDepsOf } from '../api/wiring.js';
import { RdsInventory } from '../adapters/aws/rds-inventory.js';
import { HistoryReader } from '../adapters/postgres/history-reader.js';
import type { InspectionFailure } from '../adapters/postgres/shard-inspector.js';
import { withRequestDeadline } from '../adapters/postgres/request-deadline.js';
import { createShardingRuntime } from '../adapters/postgres/sharding-runtime.js';
import { awsClients, rdsClient } from './shared/aws.js';
import { withPowertools } from './shared/middleware.js';
import { logger, metrics } from './shared/powertools.js';
import { controllerRuntime } from './shared/runtime.js';
import { logRoutingNotRecorded, shardCredentialsFromEnv, shardingConfigFromEnv, shardingOffReason } from './shared/sharding-env.js';
import { loadParameterEnv } from './shared/parameter-env.js';

// The deployment's growing configuration (SSM Parameter Store), read once in the init phase.
await loadParameterEnv();

/** The parts of a REST API proxy event the API relies on. */
export const proxyEventSchema = z.object({
  httpMethod: z.string().min(1),
  path: z.string().startsWith('/'),
  headers: z.record(z.string(), z.string().optional()).nullable().optional(),
  queryStringParameters: z.record(z.string(), z.string().optional()).nullable().optional(),
  body: z.string().nullable().optional(),
  isBase64Encoded: z.boolean().optional(),
  requestContext: z.object({ requestId: z.string().optional() }).loose().optional(),
});

/**
 * Builds the handler around a port provider (tests and local mode pass their own); `snapshots`
 * sets how long the status and shard snapshots live (local mode: its health_check_interval).
 */
export function createApiHandler(port: () => ScalingApiPort | Promise<ScalingApiPort>, options: { snapshots?: ReadSnapshotOptions } = {}) {
  let router: Router | undefined;
  return withPowertools(async (event: unknown, context: Context): Promise<APIGatewayProxyResult> => {
    const parsed = proxyEventSchema.safeParse(event);
    if (!parsed.success) {
      logger.error('rejected event: not an API Gateway REST proxy event', { issues: parsed.error.issues.map((i) => i.path.join('.')) });
      return toApiGatewayResult(problemResponse(new ProblemError(400, 'the event is not an API Gateway REST proxy event')));
    }
    // Taken before the port is built: a first request's time goes into that too.
    const deadline = requestDeadlineOf(parsed.data, context);
    router ??= createScalingRouter(await port(), {
      ...(options.snapshots ? { snapshots: options.snapshots } : {}),
      onError: (err, request) => logger.error('unexpected error serving a request', { error: err as Error, requestId: request.requestId, path: request.path }),
    });
    const request = fromApiGatewayEvent(event as APIGatewayProxyEvent);
    const started = performance.now();
    const routed = router;
    const response = await withRequestDeadline(deadline, () => routed.dispatch(request));
    const ms = performance.now() - started;
    metrics.addMetric(response.status >= 500 ? 'ServerErrors' : response.status >= 400 ? 'ClientErrors' : 'Requests', MetricUnit.Count, 1);
    logger.info('request', { method: request.method, path: request.path, status: response.status, actor: request.identity.actor, ms: Math.round(ms) });
    return toApiGatewayResult(response);
  });
}

let awsPort: Promise<ScalingApiPort> | undefined;

/** A failure the API's answer names by its kind only: the driver's text, `what` saying which. */
const logFailure = ({ error, ...about }: InspectionFailure): void =>
  logger.warn('shard or catalog failure (the response names its kind only)', { ...about, error: error instanceof Error ? error : String(error) });

/** The API over the controller runtime and, when configured, the shards (built once per container). */
async function buildAwsPort(): Promise<ScalingApiPort> {
  const rt = controllerRuntime();
  const shardingConfig = await shardingConfigFromEnv(process.env, awsClients().secrets);
  const credentials = shardCredentialsFromEnv(process.env, awsClients().secrets);
  const sharding = shardingConfig
    ? await createShardingRuntime({
        config: shardingConfig,
        env: process.env,
        catalog: await rt.db(),
        actor: 'scaling-api',
        // A rotated-away login is re-read from its secret, not kept until the container is recycled.
        pools: { max: 2, ...(credentials ? { credentials } : {}) },
        // Health and the rebalance headroom rule add what RDS and its CloudWatch metrics say.
        cloud: new RdsInventory({ rds: rdsClient(), cloudwatch: awsClients().cloudwatch }),
        // The responses name a failure by its kind only (a shard's in health, statistics and the
        // fence listing; the catalog's or a shard's in a 503 of the moves endpoints and in the
        // recommendations): the driver's text is logged here, `what` saying which.
        onInspectionFailure: logFailure,
        onRoutingNotRecorded: logRoutingNotRecorded,
      })
    : undefined;
  return createScalingApiPort({
    // A catalog read or write answered 503 (configuration, history, switches): its driver text.
    onFailure: logFailure,
    catalog: rt.catalog,
    history: new HistoryReader(rt.db),
    controller: rt.controller,
    target: rt.target,
    metrics: rt.metrics,
    clock: { now: () => Date.now() },
    ...(sharding ? {} : { shardingOff: shardingOffReason(process.env) }),
    ...(sharding
      ? {
          // A Lambda invocation cannot outlive its response: the API only plans the move, and
          // the scheduled `moves` function carries planned and unfinished jobs forward.
          sharding: shardingDepsOf(sharding, (id) => logger.info('move planned; the moves function will carry it out', { id })),
        }
      : {}),
  });
}

export const handler = createApiHandler(() => {
  awsPort ??= buildAwsPort().catch((err: unknown) => {
    awsPort = undefined;
    throw err;
  });
  return awsPort;
});
