/**
 * Property-based fuzzing of every scaling API endpoint through the Lambda handler, against the
 * real system: generated requests per endpoint (random methods, queries with hostile key names
 * such as `__proto__`, headers and bodies, valid and not). Never a 5xx; every rejection is an
 * RFC 9457 problem document without a stack or database text; and a rejected request leaves the
 * stored state exactly as it was. `npm test` runs 100 requests per endpoint; `npm run fuzz`
 * runs 1,000 (FUZZ_RUNS sets any other number).
 */
// Powertools reads its settings when the handler modules load: this import must stay first.
import '../../support/quiet-powertools.js';
import type { APIGatewayProxyEvent, Context } from 'aws-lambda';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SERVICES, startApiHarness, type ApiHarness } from './harness.js';

const API = '/api/v1/scaling';
const RUNS = Number(process.env['FUZZ_RUNS'] ?? 100);

interface Endpoint {
  readonly method: string;
  readonly path: string;
  /** Query keys the endpoint knows, so generated queries are sometimes valid. */
  readonly queryKeys: readonly string[];
  /** Bodies that are sometimes valid. */
  readonly bodies?: fc.Arbitrary<unknown>;
}

const service = fc.constantFrom(...SERVICES, 'nope', '', 'Worker', 'worker; drop table x');
const ENDPOINTS: readonly Endpoint[] = [
  { method: 'GET', path: '/status', queryKeys: [] },
  { method: 'GET', path: '/metrics', queryKeys: [] },
  { method: 'GET', path: '/history', queryKeys: ['service', 'direction', 'outcome', 'trigger', 'kind', 'since', 'until', 'limit', 'cursor'] },
  { method: 'GET', path: '/timeseries', queryKeys: ['service', 'since', 'until', 'step'] },
  { method: 'GET', path: '/config', queryKeys: [] },
  {
    method: 'PUT',
    path: '/config',
    queryKeys: [],
    bodies: fc.oneof(
      fc.record({ cpu_scale_up: fc.oneof(fc.double(), fc.integer({ min: 31, max: 100 }), fc.string()), min_instances: fc.integer({ min: -5, max: 20 }) }, { requiredKeys: [] }),
      fc.dictionary(fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }),
    ),
  },
  { method: 'POST', path: '/start', queryKeys: [], bodies: fc.record({ service, reason: fc.string({ maxLength: 40 }) }, { requiredKeys: [] }) },
  { method: 'POST', path: '/stop', queryKeys: [], bodies: fc.record({ service, reason: fc.string({ maxLength: 40 }) }, { requiredKeys: [] }) },
  { method: 'GET', path: '/recommendations', queryKeys: [] },
  { method: 'POST', path: '/evaluate', queryKeys: [], bodies: fc.record({ service }, { requiredKeys: [] }) },
  { method: 'GET', path: '/shards/statistics', queryKeys: ['exact'] },
  { method: 'GET', path: '/shards/health', queryKeys: [] },
  { method: 'GET', path: '/shards/rebalance-check', queryKeys: ['threshold', 'by'] },
  { method: 'GET', path: '/shards/route', queryKeys: ['key', 'kind'] },
  {
    method: 'POST',
    path: '/shards/moves',
    queryKeys: [],
    bodies: fc.record(
      {
        kind: fc.constantFrom('slot', 'directory', 'range', ''),
        unit: fc.oneof(fc.integer({ min: -3, max: 5000 }).map(String), fc.uuid(), fc.string({ maxLength: 10 })),
        to: fc.constantFrom('shard_404', '', 'SHARD', 'x'.repeat(120)),
      },
      { requiredKeys: [] },
    ),
  },
  { method: 'GET', path: '/shards/moves/{id}', queryKeys: [] },
  { method: 'GET', path: '/openapi.json', queryKeys: [] },
];

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'];

function requestArb(endpoint: Endpoint): fc.Arbitrary<APIGatewayProxyEvent> {
  const queryValue = fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('true', 'false', '0', '1', '50', '0.1', 'bytes', 'rows', 'worker', 'out', 'schedule', '2026-11-27T10:00:00Z'));
  const query = fc.oneof(
    fc.constant({}),
    fc.dictionary(fc.constantFrom(...endpoint.queryKeys, 'x', '__proto__', 'constructor', 'toString', 'hasOwnProperty'), queryValue, { maxKeys: 3 }),
    fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 20 }), { maxKeys: 3 }),
  );
  const path = endpoint.path.includes('{id}')
    ? fc.oneof(fc.nat({ max: 99999 }).map(String), fc.string({ minLength: 1, maxLength: 12 }).map((s) => encodeURIComponent(s))).map((id) => endpoint.path.replace('{id}', id))
    : fc.constant(endpoint.path);
  const body = fc.oneof(
    fc.constant(null),
    (endpoint.bodies ?? fc.jsonValue({ maxDepth: 2 })).map((b) => JSON.stringify(b)),
    fc.jsonValue({ maxDepth: 3 }).map((b) => JSON.stringify(b)),
    fc.string({ maxLength: 60 }),
  );
  const contentType = fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', undefined);
  const ifMatch = fc.constantFrom(undefined, '"v1"', '"v0"', '*', 'W/"v2"', 'garbage', 'CURRENT');
  return fc
    .record({
      method: fc.oneof({ weight: 4, arbitrary: fc.constant(endpoint.method) }, { weight: 1, arbitrary: fc.constantFrom(...METHODS) }),
      path,
      query,
      body,
      contentType,
      ifMatch,
    })
    .map(({ method, path: p, query: q, body: b, contentType: ct, ifMatch: im }) => {
      const headers: Record<string, string> = {};
      if (ct !== undefined) headers['content-type'] = ct;
      if (im !== undefined) headers['if-match'] = im;
      const qs = Object.keys(q).length > 0 ? q : null;
      return {
        resource: '/{proxy+}',
        path: `${API}${p}`,
        httpMethod: method,
        headers,
        multiValueHeaders: {},
        queryStringParameters: qs,
        multiValueQueryStringParameters: null,
        pathParameters: null,
        stageVariables: null,
        body: b,
        isBase64Encoded: false,
        requestContext: { requestId: 'fuzz', identity: { sourceIp: '127.0.0.1', userArn: 'arn:aws:iam::123456789012:user/fuzzer' } },
      } as unknown as APIGatewayProxyEvent;
    });
}

const context = { getRemainingTimeInMillis: () => 30_000, awsRequestId: 'fuzz', functionName: 'fuzz' } as unknown as Context;

describe('scaling API fuzzing', () => {
  let h: ApiHarness;
  beforeAll(async () => {
    h = await startApiHarness();
    // Some history for the endpoints that read it.
    await h.controller.evaluate({ trigger: 'schedule' });
  }, 120_000);
  afterAll(async () => {
    await h?.stop();
  });

  /** Everything a rejected request must not change. */
  async function snapshot(): Promise<string> {
    const { rows } = await h.catalogPool.query(`select
      (select coalesce(max(version), 0) from catalog.scaling_config) as config,
      (select count(*) from catalog.switch_events) as switch_events,
      (select coalesce(string_agg(scope || '=' || enabled, ',' order by scope), '') from catalog.scaling_switches) as switches,
      (select count(*) from catalog.scaling_decisions) as decisions,
      (select count(*) from catalog.move_jobs) as moves,
      (select count(*) from catalog.slot_maps) as maps,
      (select count(*) from catalog.shard_directory) as directory`);
    return JSON.stringify(rows[0]);
  }

  async function currentEtag(): Promise<string> {
    const { rows } = await h.catalogPool.query<{ v: number }>('select coalesce(max(version), 0)::int as v from catalog.scaling_config');
    return `"v${rows[0]?.v ?? 0}"`;
  }

  for (const endpoint of ENDPOINTS) {
    it(`${endpoint.method} ${endpoint.path}: never a 5xx, rejections are problems, rejected requests change nothing`, async () => {
      let before = await snapshot();
      await fc.assert(
        fc.asyncProperty(requestArb(endpoint), async (event) => {
          if (event.headers['if-match'] === 'CURRENT') event.headers['if-match'] = await currentEtag();
          const res = await h.handler(event, context);
          expect(res.statusCode).toBeLessThan(500);
          const after = await snapshot();
          if (res.statusCode >= 400) {
            expect(res.headers?.['content-type']).toBe('application/problem+json');
            const doc = JSON.parse(res.body) as { status: number; title: string; detail: string };
            expect(doc.status).toBe(res.statusCode);
            expect(typeof doc.detail).toBe('string');
            expect(res.body).not.toMatch(/postgresql:\/\/|\.ts:\d+:\d+|\n\s+at |invalid input syntax|violates .* constraint|syntax error at|relation ".*" does not exist|unsupported Unicode escape/);
            expect(after).toBe(before);
          }
          before = after;
        }),
        { numRuns: RUNS },
      );
    }, 300_000);
  }
});
