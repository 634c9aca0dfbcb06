import { Validator } from '@seriousme/openapi-schema-validator';
import { describe, expect, it } from 'vitest';
import { buildOpenApi } from '../../../functions/api/openapi.js';
import { API_PREFIX, scalingApiDocument, scalingRoutes } from '../../../functions/api/routes.js';
import { documentsApiDocument } from '../../../functions/local/documents-api.js';
import type { ScalingApiPort } from '../../../functions/api/service.js';

// The OpenAPI document depends only on the route table, never on the port's behaviour.
const unusedPort = new Proxy({} as ScalingApiPort, {
  get: () => () => Promise.reject(new Error('the OpenAPI document must not call the port')),
});

describe('the scaling API OpenAPI document', () => {
  const doc = buildOpenApi(scalingRoutes(unusedPort), { title: 'CA-DMS scaling API', version: '1.0.0' });

  it('is a valid OpenAPI 3.0 document', async () => {
    const result = await new Validator().validate(doc);
    expect(result.errors ?? []).toEqual([]);
  });

  it('documents every endpoint the CA-DMS guide names', () => {
    const paths = doc['paths'] as Record<string, Record<string, unknown>>;
    const ops = Object.entries(paths).flatMap(([p, methods]) => Object.keys(methods).map((m) => `${m.toUpperCase()} ${p.slice(API_PREFIX.length)}`));
    expect(ops).toEqual(
      expect.arrayContaining([
        'GET /status',
        'GET /metrics',
        'GET /history',
        'GET /timeseries',
        'GET /shards/statistics',
        'GET /shards/health',
        'GET /shards/rebalance-check',
        'GET /shards/fences',
        'GET /recommendations',
        'POST /start',
        'POST /stop',
        'PUT /config',
        'PATCH /config',
        'GET /config',
      ]),
    );
  });

  it('describes the shard reports and move jobs field by field', () => {
    type Json = { properties?: Record<string, Json>; items?: Json; format?: string };
    const paths = doc['paths'] as Record<string, Record<string, { responses: Record<string, { content: { 'application/json': { schema: Json } } }> }>>;
    const body = (path: string, method: string, status: string): Json => paths[`${API_PREFIX}${path}`]?.[method]?.responses[status]?.content['application/json'].schema ?? {};

    const health = body('/shards/health', 'get', '200');
    const primary = health.properties?.['shards']?.items?.properties?.['primary'];
    const job = body('/shards/moves', 'post', '202');

    expect(Object.keys(health.properties ?? {})).toEqual(expect.arrayContaining(['status', 'checkedAt', 'durationMs', 'shards']));
    expect(Object.keys(primary?.properties?.['facts']?.properties ?? {})).toEqual(expect.arrayContaining(['reachable', 'connections', 'rates', 'replication', 'rds']));
    expect(Object.keys(body('/shards/statistics', 'get', '200').properties ?? {})).toEqual(expect.arrayContaining(['shards', 'totals', 'imbalance', 'complete', 'unreachable']));
    expect(Object.keys(body('/shards/rebalance-check', 'get', '200').properties ?? {})).toEqual(expect.arrayContaining(['needed', 'moves', 'summary']));
    expect(Object.keys(body('/shards/fences', 'get', '200').properties ?? {})).toEqual(['mapVersion', 'rows', 'explained', 'unreachable', 'ownerHistory', 'otherRoutings', 'next_cursor']);
    expect(Object.keys(body('/shards/fences', 'get', '200').properties?.['rows']?.items?.properties ?? {})).toEqual(
      expect.arrayContaining(['shard', 'kind', 'unitId', 'state', 'jobId', 'movedTo', 'mapVersion', 'ageMs', 'owner', 'diagnosis', 'action', 'withheld']),
    );
    expect(job.properties?.['createdAt']?.format).toBe('date-time');
    expect(body('/shards/moves/{id}', 'get', '200')).toEqual(job);
  });
});

describe('parameters of the published OpenAPI documents', () => {
  type Parameter = { name: string; in: string; description?: string; schema: Record<string, unknown> };
  type Doc = { paths: Record<string, Record<string, { parameters?: Parameter[] }>> };
  const docs: Array<[string, Doc]> = [
    ['scaling API', scalingApiDocument() as unknown as Doc],
    ['documents API', documentsApiDocument() as unknown as Doc],
  ];

  it.each(docs)('%s: every path, query and header parameter says what it is (beside its schema, where tools show it)', async (_name, doc) => {
    const params = Object.entries(doc.paths).flatMap(([path, ops]) => Object.entries(ops).flatMap(([method, op]) => (op.parameters ?? []).map((p) => ({ at: `${method.toUpperCase()} ${path} ${p.in} ${p.name}`, p }))));

    expect(params.length).toBeGreaterThan(0);
    expect(params.filter(({ p }) => typeof p.description !== 'string' || p.description.length === 0).map(({ at }) => at)).toEqual([]);
    expect(params.filter(({ p }) => 'description' in p.schema).map(({ at }) => at)).toEqual([]);
    expect((await new Validator().validate(doc as unknown as Record<string, unknown>)).errors ?? []).toEqual([]);
  });
});

describe('the documents API OpenAPI document', () => {
  type Response = { description?: string; headers?: Record<string, unknown>; content?: Record<string, { schema?: { properties?: Record<string, unknown> } }> };
  type Doc = { paths: Record<string, Record<string, { responses: Record<string, Response> }>> };
  const doc = documentsApiDocument() as unknown as Doc;
  const ops = Object.entries(doc.paths).flatMap(([path, byMethod]) => Object.entries(byMethod).map(([method, op]) => ({ at: `${method.toUpperCase()} ${path}`, method, op })));

  it('says every request may end in a retryable 503 at its deadline, and a write in a 504 whose outcome is unknown (with where to look)', async () => {
    const retryable = ops.filter(({ op }) => op.responses['503']?.headers?.['Retry-After'] !== undefined).map(({ at }) => at);
    const unknown = ops.filter(({ op }) => op.responses['504']?.content?.['application/problem+json']?.schema?.properties?.['check'] !== undefined).map(({ at }) => at);

    expect({ retryable, unknown }).toEqual({ retryable: ops.map(({ at }) => at), unknown: ops.filter(({ method }) => method === 'post').map(({ at }) => at) });
    expect((await new Validator().validate(doc as unknown as Record<string, unknown>)).errors ?? []).toEqual([]);
  });

  it("says \"nothing was written\" only of writes' 503", () => {
    const saysWritten = ops.filter(({ op }) => /nothing was written/.test(op.responses['503']?.description ?? '')).map(({ at }) => at);
    expect(saysWritten).toEqual(ops.filter(({ method }) => method === 'post').map(({ at }) => at));
  });
});
