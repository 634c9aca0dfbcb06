import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { ApiRequest } from '../../../functions/api/http.js';
import { jsonProblems, MAX_JSON_DEPTH, textProblem } from '../../../functions/api/input-limits.js';
import { createRouter, defineRoute } from '../../../functions/api/router.js';

let handled = 0;
const router = createRouter([
  defineRoute({
    method: 'PUT',
    path: '/things/{id}',
    operationId: 'putThing',
    summary: 'a thing',
    params: z.object({ id: z.string() }),
    query: z.object({ key: z.string().optional() }),
    body: z.record(z.string(), z.unknown()),
    responses: { 200: { description: 'ok' } },
    handle: async () => {
      handled += 1;
      return { status: 200 };
    },
  }),
]);
const request = (path: string, body: string, query: Record<string, string> = {}): ApiRequest => ({
  method: 'PUT',
  path,
  query,
  headers: { 'content-type': 'application/json' },
  body,
  identity: { actor: 'test' },
  requestId: 'r1',
});
const nested = (depth: number): string => `${'['.repeat(depth)}${']'.repeat(depth)}`;

describe('hostile JSON and strings get 400 naming the field before any handler runs', () => {
  it.each([
    ['a NUL in a body string', request('/things/a', '{"title": "a\\u0000b"}'), 'body.title'],
    ['a NUL in a member name', request('/things/a', '{"a\\u0000": 1}'), 'body'],
    ['a lone surrogate', request('/things/a', '{"x": ["ok", "\\udc00"]}'), 'body.x.1'],
    ['nesting 30,000 deep', request('/things/a', `{"content": ${nested(30_000)}}`), /^body\.content(\.0)+$/],
    ['a NUL in a query value', request('/things/a', '{}', { key: 'a\u0000b' }), 'query.key'],
    ['a NUL in a path parameter', request('/things/a%00b', '{}'), 'params.id'],
  ])('%s', async (_what, req, field) => {
    const before = handled;
    const res = await router.dispatch(req);
    const body = JSON.parse(res.body) as { invalid_params: Array<{ name: string }> };
    expect(res.status).toBe(400);
    expect(body.invalid_params.map((p) => p.name)).toEqual([expect.stringMatching(field)]);
    expect(handled).toBe(before);
  });

  it('accepts nesting up to the limit and refuses one level more', () => {
    expect(jsonProblems(JSON.parse(nested(MAX_JSON_DEPTH)), 'body')).toEqual([]);
    expect(jsonProblems(JSON.parse(nested(MAX_JSON_DEPTH + 1)), 'body')).toHaveLength(1);
  });

  it('finds no problem in well-formed strings without NUL, and one whenever a NUL is added', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme' }), fc.nat(), (text, at) => {
        fc.pre(!text.includes('\u0000'));
        expect(textProblem(text)).toBeUndefined();
        const i = at % (text.length + 1);
        expect(textProblem(`${text.slice(0, i)}\u0000${text.slice(i)}`)).toMatch(/NUL/);
      }),
    );
  });
});
