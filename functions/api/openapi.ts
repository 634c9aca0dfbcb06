/**
 * Builds the OpenAPI 3.0 document of the scaling API from the route table's zod schemas, so
 * the published contract and the validation the router performs can never drift apart.
 *
 * @example
 * ```ts
 * const doc = buildOpenApi(routes, { title: 'CA-DMS scaling API', version: '1.0.0' });
 * ```
 */
import { z } from 'zod';
import type { RouteSpec } from './router.js';

type JsonSchema = Record<string, unknown>;

/** A zod schema as an OpenAPI 3.0 schema object (the request's side: `input`; the answer's: `output`). */
export function toSchema(schema: z.ZodType, io: 'input' | 'output'): JsonSchema {
  const s = z.toJSONSchema(schema, { target: 'openapi-3.0', io, unrepresentable: 'any' }) as JsonSchema;
  delete s['$schema'];
  return s;
}

/** Path parameters, query strings and headers become individual OpenAPI parameters, each with its schema's description. */
export function parametersOf(schema: z.ZodType | undefined, where: 'path' | 'query' | 'header'): JsonSchema[] {
  if (!schema) return [];
  const json = toSchema(schema, 'input');
  const props = (json['properties'] ?? {}) as Record<string, JsonSchema>;
  const required = new Set((json['required'] as string[] | undefined) ?? []);
  return Object.entries(props).map(([name, propSchema]) => {
    const { description, ...rest } = propSchema;
    return {
      name,
      in: where,
      required: where === 'path' ? true : required.has(name),
      ...(typeof description === 'string' ? { description } : {}),
      schema: rest,
    };
  });
}

const PROBLEM_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['type', 'title', 'status', 'detail'],
  properties: {
    type: { type: 'string' },
    title: { type: 'string' },
    status: { type: 'integer' },
    detail: { type: 'string' },
    instance: { type: 'string' },
    invalid_params: {
      type: 'array',
      items: { type: 'object', required: ['name', 'reason'], properties: { name: { type: 'string' }, reason: { type: 'string' } } },
    },
  },
};

export interface OpenApiInfo {
  readonly title: string;
  readonly version: string;
  readonly description?: string;
}

/** The OpenAPI 3.0.3 document for a route table. */
export function buildOpenApi(routes: readonly RouteSpec[], info: OpenApiInfo): JsonSchema {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const responses: Record<string, unknown> = {};
    for (const [status, spec] of Object.entries(route.responses)) {
      responses[status] = {
        description: spec.description,
        ...(spec.headers
          ? { headers: Object.fromEntries(Object.entries(spec.headers).map(([h, d]) => [h, { description: d, schema: { type: 'string' } }])) }
          : {}),
        ...(spec.schema ? { content: { 'application/json': { schema: toSchema(spec.schema, 'output') } } } : {}),
      };
    }
    responses['default'] = {
      description: 'An RFC 9457 problem document (400 invalid input, 404, 405, 412, 413, 415, 422, 428, 500)',
      content: { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } },
    };
    const operation: Record<string, unknown> = {
      operationId: route.operationId,
      summary: route.summary,
      ...(route.description ? { description: route.description } : {}),
      ...(route.tags ? { tags: [...route.tags] } : {}),
      parameters: [...parametersOf(route.params, 'path'), ...parametersOf(route.query, 'query'), ...parametersOf(route.headers, 'header')],
      responses,
      security: [{ sigv4: [] }],
    };
    if (route.body) {
      operation['requestBody'] = {
        required: route.bodyRequired ?? true,
        content: Object.fromEntries((route.contentTypes ?? ['application/json']).map((type) => [type, { schema: toSchema(route.body as z.ZodType, 'input') }])),
      };
    }
    paths[route.path] = { ...(paths[route.path] ?? {}), [route.method.toLowerCase()]: operation };
  }
  return {
    openapi: '3.0.3',
    info: { title: info.title, version: info.version, ...(info.description ? { description: info.description } : {}) },
    paths,
    components: {
      schemas: { Problem: PROBLEM_SCHEMA },
      securitySchemes: {
        sigv4: {
          type: 'apiKey',
          name: 'Authorization',
          in: 'header',
          description: 'AWS Signature Version 4 (API Gateway IAM authorization)',
        },
      },
    },
  };
}
