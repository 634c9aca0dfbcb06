import { Validator } from '@seriousme/openapi-schema-validator';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { ApiRequest } from '../../../functions/api/http.js';
import { ProblemError } from '../../../functions/api/http.js';
import { buildOpenApi } from '../../../functions/api/openapi.js';
import { createRouter, defineRoute } from '../../../functions/api/router.js';

const item = z.object({ id: z.string(), size: z.number().int() });
const stored = new Map<string, number>();
const routes = [
  defineRoute({
    method: 'GET',
    path: '/api/items/{id}',
    operationId: 'getItem',
    summary: 'one item',
    params: z.object({ id: z.string().regex(/^[a-z]+$/) }),
    query: z.object({ verbose: z.enum(['true', 'false']).optional() }),
    responses: { 200: { description: 'the item', schema: item } },
    handle: async ({ params }) => {
      const size = stored.get(params.id);
      if (size === undefined) throw new ProblemError(404, `no item ${params.id}`);
      return { status: 200, body: { id: params.id, size } };
    },
  }),
  defineRoute({
    method: 'PUT',
    path: '/api/items/{id}',
    operationId: 'putItem',
    summary: 'store an item',
    params: z.object({ id: z.string().regex(/^[a-z]+$/) }),
    body: z.strictObject({ size: z.number().int().min(0) }),
    responses: { 200: { description: 'stored', schema: item } },
    handle: async ({ params, body }) => {
      stored.set(params.id, body.size);
      return { status: 200, body: { id: params.id, size: body.size } };
    },
  }),
  defineRoute({
    method: 'GET',
    path: '/api/broken',
    operationId: 'broken',
    summary: 'returns a body that breaks its own schema',
    responses: { 200: { description: 'never valid', schema: item } },
    handle: async () => ({ status: 200, body: { id: 1, secret: 'postgresql://u:p@h/db' } }),
  }),
];
const router = createRouter(routes, { maxBodyBytes: 1024, onError: () => undefined });

function req(method: string, path: string, init: Partial<ApiRequest> = {}): ApiRequest {
  return { method, path, query: {}, headers: {}, body: null, identity: { actor: 'test' }, requestId: 'r-1', ...init };
}
const json = { 'content-type': 'application/json' };

describe('API router', () => {
  it('validates and dispatches a request to its route', async () => {
    const put = await router.dispatch(req('PUT', '/api/items/abc', { headers: json, body: '{"size":3}' }));
    const get = await router.dispatch(req('GET', '/api/items/abc/'));
    expect(put.status).toBe(200);
    expect(JSON.parse(get.body)).toEqual({ id: 'abc', size: 3 });
  });

  it('answers 404 as a problem document for an unknown path', async () => {
    const res = await router.dispatch(req('GET', '/api/nothing'));
    expect(res.status).toBe(404);
    expect(res.headers['content-type']).toBe('application/problem+json');
    expect(JSON.parse(res.body)).toMatchObject({ status: 404, title: 'Not Found' });
  });

  it('answers 405 with Allow for a known path and the wrong method', async () => {
    const res = await router.dispatch(req('DELETE', '/api/items/abc'));
    expect(res.status).toBe(405);
    expect(res.headers['allow']).toBe('GET, HEAD, PUT');
  });

  it('refuses a query parameter given more than once with a 400 naming it, rather than use its last value', async () => {
    const res = await router.dispatch(req('GET', '/api/items/abc', { query: { verbose: 'true' }, repeatedQuery: ['verbose'] }));

    expect(res.status).toBe(400);
    expect(JSON.parse(res.body)).toMatchObject({ invalid_params: [{ name: 'query.verbose', reason: 'is given more than once; give each query parameter once' }] });
  });

  it('names every invalid field in a 400 problem', async () => {
    const res = await router.dispatch(req('PUT', '/api/items/ABC', { headers: json, body: '{"size":-1,"extra":true}' }));
    const doc = JSON.parse(res.body) as { invalid_params: Array<{ name: string }> };
    expect(res.status).toBe(400);
    expect(doc.invalid_params.map((p) => p.name).sort()).toEqual(['body.extra', 'body.size', 'params.id']);
  });

  it('rejects malformed JSON with 400, a non-JSON body with 415 and an oversized one with 413', async () => {
    const bad = await router.dispatch(req('PUT', '/api/items/abc', { headers: json, body: '{"size":' }));
    const text = await router.dispatch(req('PUT', '/api/items/abc', { headers: { 'content-type': 'text/plain' }, body: 'size=1' }));
    const big = await router.dispatch(req('PUT', '/api/items/abc', { headers: json, body: JSON.stringify({ size: 1, pad: 'x'.repeat(2000) }) }));
    expect([bad.status, text.status, big.status]).toEqual([400, 415, 413]);
  });

  it('answers 500 without leaking internals when a route breaks its response schema', async () => {
    const res = await router.dispatch(req('GET', '/api/broken'));
    expect(res.status).toBe(500);
    expect(res.body).not.toContain('postgresql://');
    expect(JSON.parse(res.body)).toMatchObject({ status: 500, detail: expect.stringContaining('r-1') });
  });

  it('generates an OpenAPI document that validates against the OpenAPI 3.0 schema', async () => {
    const doc = buildOpenApi(routes, { title: 'test', version: '1.0.0' });
    const result = await new Validator().validate(doc);
    expect(result.errors ?? []).toEqual([]);
    expect(result.valid).toBe(true);
    expect(Object.keys(doc['paths'] as object)).toEqual(['/api/items/{id}', '/api/broken']);
  });
});
