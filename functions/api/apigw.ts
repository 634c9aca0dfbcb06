/**
 * Translation between API Gateway REST proxy events and the API's own request/response types.
 * The Lambda handler and the local HTTP adapter both go through here, so local mode serves
 * exactly what API Gateway would.
 */
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import type { ApiRequest, ApiResponse, CallerIdentity } from './http.js';

/** The actor recorded for a request: the SigV4-authenticated IAM principal when there is one. */
export function identityOf(event: APIGatewayProxyEvent): CallerIdentity {
  const id = event.requestContext?.identity;
  const sourceIp = id?.sourceIp ?? undefined;
  const actor = id?.userArn ?? (id?.caller ? `caller:${id.caller}` : id?.user ? `user:${id.user}` : `anonymous${sourceIp ? `@${sourceIp}` : ''}`);
  return { actor, ...(sourceIp ? { sourceIp } : {}) };
}

/**
 * Builds the transport-neutral request from a REST API proxy event. Header and query names are
 * the client's: they go into null-prototype objects, so `__proto__` or `constructor` is a key
 * like any other, never an inherited property or a prototype change.
 */
export function fromApiGatewayEvent(event: APIGatewayProxyEvent): ApiRequest {
  const headers = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(event.headers ?? {})) if (typeof v === 'string') headers[k.toLowerCase()] = v;
  const query = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(event.queryStringParameters ?? {})) if (typeof v === 'string') query[k] = v;
  // API Gateway keeps the last of repeated values in queryStringParameters and all of them here.
  const repeatedQuery = Object.entries(event.multiValueQueryStringParameters ?? {})
    .filter(([, values]) => Array.isArray(values) && values.length > 1)
    .map(([name]) => name)
    .sort();
  const body = event.body == null ? null : event.isBase64Encoded ? Buffer.from(event.body, 'base64').toString('utf8') : event.body;
  return {
    method: event.httpMethod,
    path: event.path,
    query,
    ...(repeatedQuery.length > 0 ? { repeatedQuery } : {}),
    headers,
    body,
    identity: identityOf(event),
    requestId: event.requestContext?.requestId ?? 'unknown',
  };
}

/** Shapes the proxy integration result. */
export function toApiGatewayResult(response: ApiResponse): APIGatewayProxyResult {
  return { statusCode: response.status, headers: { ...response.headers }, body: response.body };
}

/**
 * API Gateway's timeout of a REST API's integration: it answers 504 to a request the function has
 * not answered within this, whatever the function is still doing (the API function's own timeout,
 * lib/control-plane/control-plane.ts, is the same 29 s).
 */
export const API_GATEWAY_TIMEOUT_MS = 29_000;

/**
 * What a request keeps of its time past its waits on the shards: the route's answer is built,
 * logged and carried back through API Gateway within it (a rebalance check plans its moves once
 * the shards have answered: 0.5 to 0.9 s for 900 moves, README).
 */
export const API_ANSWER_MARGIN_MS = 2_000;

/**
 * The deadline of the request `event` (`Date.now()` ms), by which its route must have answered:
 * API Gateway's {@link API_GATEWAY_TIMEOUT_MS} from when it received the request
 * (`requestContext.requestTimeEpoch`: a cold start's initialisation and the first request's
 * sharding runtime count too), or the function's own end (`getRemainingTimeInMillis`), whichever
 * comes first (29 s from now without either), less {@link API_ANSWER_MARGIN_MS}. The shard
 * reports wait on a silent shard until then at most (adapters/postgres/request-deadline.ts), whatever
 * `health_check_timeout_seconds` says (up to 60 s), and answer naming it.
 */
export function requestDeadlineOf(event: { readonly requestContext?: unknown }, context: Partial<Pick<Context, 'getRemainingTimeInMillis'>>, now: number = Date.now()): number {
  const received = (event.requestContext as { requestTimeEpoch?: unknown } | undefined)?.requestTimeEpoch;
  // A time API Gateway has already passed is no live request's (a test event from the console,
  // replayed): the function's own end bounds it then.
  const gatewayEnds = typeof received === 'number' && Number.isFinite(received) && received + API_GATEWAY_TIMEOUT_MS > now ? received + API_GATEWAY_TIMEOUT_MS : Number.POSITIVE_INFINITY;
  const remaining = typeof context.getRemainingTimeInMillis === 'function' ? context.getRemainingTimeInMillis() : Number.NaN;
  const functionEnds = Number.isFinite(remaining) ? now + remaining : Number.POSITIVE_INFINITY;
  const ends = Math.min(gatewayEnds, functionEnds, now + API_GATEWAY_TIMEOUT_MS);
  return ends - API_ANSWER_MARGIN_MS;
}
