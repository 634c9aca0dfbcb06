/**
 * Translation between API Gateway REST proxy events and the API's own request/response types.
 * The Lambda handler and the local HTTP adapter both go through here, so local mode serves
 * exactly what API Gateway would.
 */
import type { APIGatewayProxyEvent, APIGatewayProxyResult } from 'aws-lambda';
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
