import { Validator } from '@seriousme/openapi-schema-validator';
import { describe, expect, it } from 'vitest';
import { buildOpenApi } from '../../../functions/api/openapi.js';
import { API_PREFIX, scalingRoutes } from '../../../functions/api/routes.js';
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
        'GET /shards/statistics',
        'GET /shards/health',
        'GET /shards/rebalance-check',
        'GET /recommendations',
        'POST /start',
        'POST /stop',
        'PUT /config',
        'GET /config',
      ]),
    );
  });
});
