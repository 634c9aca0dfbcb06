/**
 * Requests generated from an OpenAPI 3.0 document, for fuzzing a live server: every operation's
 * path, query and header parameters and request body are drawn from their JSON schemas (so many
 * requests are valid and reach the handlers), and a share of them is made hostile: a value
 * replaced by NUL, a lone surrogate, a huge or deeply nested one, a required field dropped, an
 * unknown one added, keys named like built-in properties, the wrong method, media type or JSON.
 *
 * @example
 * ```ts
 * const ops = operationsOf(await (await fetch(`${url}/api/v1/scaling/openapi.json`)).json());
 * await fc.assert(fc.asyncProperty(requestArb(ops[0]), async (r) => send(url, r)));
 * ```
 */
import fc from 'fast-check';

type JsonSchema = Readonly<Record<string, unknown>>;

interface Parameter {
  readonly name: string;
  readonly in: 'path' | 'query' | 'header';
  readonly required: boolean;
  readonly schema: JsonSchema;
}

export interface Operation {
  readonly method: string;
  /** The path template, e.g. `/api/v1/users/{id}`. */
  readonly path: string;
  readonly operationId: string;
  readonly parameters: readonly Parameter[];
  readonly body?: { readonly required: boolean; readonly contentTypes: readonly string[]; readonly schema: JsonSchema };
}

/** Every operation of a document, in document order. */
export function operationsOf(doc: unknown): Operation[] {
  const paths = ((doc as { paths?: Record<string, Record<string, unknown>> }).paths ?? {}) as Record<string, Record<string, Record<string, unknown>>>;
  const ops: Operation[] = [];
  for (const [path, methods] of Object.entries(paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const body = op['requestBody'] as { required?: boolean; content: Record<string, { schema: JsonSchema }> } | undefined;
      const contentTypes = body ? Object.keys(body.content) : [];
      ops.push({
        method: method.toUpperCase(),
        path,
        operationId: String(op['operationId']),
        parameters: (op['parameters'] as Parameter[] | undefined) ?? [],
        ...(body ? { body: { required: body.required ?? false, contentTypes, schema: body.content[contentTypes[0] as string]?.schema ?? {} } } : {}),
      });
    }
  }
  return ops;
}

/**
 * Identifiers seen in earlier answers (users and documents created or listed, moves started,
 * shard ids, slots), by kind, so that generated requests can name things that exist: without
 * them a random UUID or move id almost never does, and the handlers behind `/{id}` see no
 * request they can answer with a 2xx. A generated request draws one by index; a replay may
 * draw another, since the pool depends on what was answered before.
 */
export class KnownValues {
  private readonly byKind = new Map<string, string[]>();
  /** At most this many per kind: the newest replace the oldest. */
  private static readonly PER_KIND = 64;

  /** Records the identifiers in an answer of the operation at `path` (a path template). */
  learn(path: string, answer: unknown): void {
    const collection = collectionOf(path);
    const visit = (value: unknown, depth: number): void => {
      if (depth > 6 || value === null || typeof value !== 'object') return;
      if (Array.isArray(value)) {
        for (const v of value) visit(v, depth + 1);
        return;
      }
      for (const [key, v] of Object.entries(value as Record<string, unknown>)) {
        const kind = key === 'id' ? collection : ANSWER_FIELD_KINDS[key];
        if (kind !== undefined && (typeof v === 'string' || (typeof v === 'number' && Number.isInteger(v)))) this.add(kind, String(v));
        else visit(v, depth + 1);
      }
    };
    visit(answer, 0);
  }

  private add(kind: string, value: string): void {
    const list = this.byKind.get(kind) ?? [];
    if (list.includes(value)) return;
    list.push(value);
    if (list.length > KnownValues.PER_KIND) list.shift();
    this.byKind.set(kind, list);
  }

  /** The `index`-th known value of `kind` (modulo how many there are), or undefined when none is known. */
  pick(kind: string, index: number): string | undefined {
    const list = this.byKind.get(kind);
    return list === undefined || list.length === 0 ? undefined : list[index % list.length];
  }

  /** How many values of `kind` are known. */
  count(kind: string): number {
    return this.byKind.get(kind)?.length ?? 0;
  }
}

/** Fields of an answer that name something of a kind (besides `id`, which names the path's own collection). */
const ANSWER_FIELD_KINDS: Readonly<Record<string, string>> = { owner_id: 'users', shard_id: 'shards', shardId: 'shards', slot: 'slots' };
/** Request fields (path, query, body) that name something of a kind. */
const REQUEST_FIELD_KINDS: Readonly<Record<string, string>> = { owner_id: 'users', to: 'shards', shard: 'shards', unit: 'slots' };

/** The collection a path's resources belong to: its last literal segment (`/users/{id}/documents` -> documents). */
function collectionOf(path: string): string {
  return (
    path
      .split('/')
      .filter((s) => s !== '' && !s.startsWith('{'))
      .pop() ?? ''
  );
}

/** The kind of a parameter or body field: `{id}` is of the collection before it; other names by {@link REQUEST_FIELD_KINDS}. */
function kindOf(path: string, name: string): string | undefined {
  if (name === 'id') {
    const segments = path.split('/');
    return segments[segments.indexOf('{id}') - 1];
  }
  return REQUEST_FIELD_KINDS[name];
}

/** Known values of `kind` three times in four once there are any, else (and otherwise) `fallback`'s. */
function knownOr(known: KnownValues | undefined, kind: string | undefined, fallback: fc.Arbitrary<unknown>): fc.Arbitrary<unknown> {
  if (known === undefined || kind === undefined) return fallback;
  const pick = fc.tuple(fc.nat(), fallback).map(([index, generated]) => known.pick(kind, index) ?? generated);
  return fc.oneof({ weight: 3, arbitrary: pick }, { weight: 1, arbitrary: fallback });
}

/** Strings no API should store or echo as they are. */
const HOSTILE_STRINGS = ['\u0000', 'a\u0000b', '\ud800', '\udfff x', "'; drop table users; --", '%zz', '../../etc/passwd', '__proto__', 'constructor', '${7*7}', 'x'.repeat(5000), '\u202e', '1e999', '-0', ''];
const hostileString = fc.constantFrom(...HOSTILE_STRINGS);
const BUILTIN_KEYS = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'prototype'];

function nested(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = i % 2 === 0 ? [v] : { a: v };
  return v;
}

function stringArb(schema: JsonSchema): fc.Arbitrary<string> {
  const min = typeof schema['minLength'] === 'number' ? schema['minLength'] : 0;
  const max = typeof schema['maxLength'] === 'number' ? Math.min(schema['maxLength'], 40) : 40;
  if (schema['format'] === 'uuid') return fc.uuid();
  if (schema['format'] === 'email') return fc.emailAddress();
  if (schema['format'] === 'date-time') return fc.date({ min: new Date('2026-01-01T00:00:00Z'), max: new Date('2027-01-01T00:00:00Z'), noInvalidDate: true }).map((d) => d.toISOString());
  if (typeof schema['pattern'] === 'string') {
    try {
      return fc.stringMatching(new RegExp(schema['pattern'])).filter((s) => s.length <= Math.max(max, 64));
    } catch {
      // A pattern fast-check cannot generate from: any string, the server decides.
    }
  }
  return fc.string({ minLength: min, maxLength: Math.max(min, max) });
}

/**
 * Values valid for `schema` (as far as the schema says), `depth` levels deep at most; object
 * properties that name something of a kind take known values of it (see {@link KnownValues}).
 */
export function schemaArb(schema: JsonSchema, depth = 3, known?: KnownValues, path = ''): fc.Arbitrary<unknown> {
  const plain = ((): fc.Arbitrary<unknown> => {
    if (Array.isArray(schema['enum']) && schema['enum'].length > 0) return fc.constantFrom(...(schema['enum'] as unknown[]));
    if ('const' in schema) return fc.constant(schema['const']);
    for (const key of ['anyOf', 'oneOf'] as const) {
      const options = schema[key];
      if (Array.isArray(options) && options.length > 0) return fc.oneof(...(options as JsonSchema[]).map((o) => schemaArb(o, depth, known, path)));
    }
    if (Array.isArray(schema['allOf']) && schema['allOf'].length > 0) return schemaArb(schema['allOf'][0] as JsonSchema, depth, known, path);
    switch (schema['type']) {
      case 'string':
        return stringArb(schema);
      case 'integer':
        return fc.integer({ min: typeof schema['minimum'] === 'number' ? Math.ceil(schema['minimum']) : -1000, max: typeof schema['maximum'] === 'number' ? Math.floor(schema['maximum']) : 100_000 });
      case 'number':
        return fc.double({ min: typeof schema['minimum'] === 'number' ? schema['minimum'] : -1e6, max: typeof schema['maximum'] === 'number' ? schema['maximum'] : 1e6, noNaN: true, noDefaultInfinity: true });
      case 'boolean':
        return fc.boolean();
      case 'array':
        return depth <= 0 ? fc.constant([]) : fc.array(schemaArb((schema['items'] as JsonSchema | undefined) ?? {}, depth - 1), { maxLength: 4 });
      case 'object': {
        const props = (schema['properties'] ?? {}) as Record<string, JsonSchema>;
        const required = (schema['required'] as string[] | undefined) ?? [];
        if (Object.keys(props).length > 0 && depth > 0) {
          return fc.record(Object.fromEntries(Object.entries(props).map(([k, v]) => [k, knownOr(known, kindOf(path, k), schemaArb(v, depth - 1, known, path))])), { requiredKeys: required.filter((k) => k in props) });
        }
        const extra = schema['additionalProperties'];
        return depth <= 0 ? fc.constant({}) : fc.dictionary(fc.string({ maxLength: 12 }), typeof extra === 'object' && extra !== null ? schemaArb(extra as JsonSchema, depth - 1) : fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 });
      }
      default:
        return fc.jsonValue({ maxDepth: Math.min(depth, 2) });
    }
  })();
  return schema['nullable'] === true ? fc.option(plain, { nil: null, freq: 8 }) : plain;
}

/** Percent-encodes a path segment; a lone surrogate (which has no UTF-8) becomes the bytes a careless client would send. */
function pathSegment(value: string): string {
  try {
    return encodeURIComponent(value);
  } catch {
    return encodeURIComponent(value.replace(/[\ud800-\udfff]/g, '')) + '%ED%A0%80';
  }
}

/** A value as it travels in a path, a query or a header. */
const asText = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));

/** Makes a body hostile in one of several ways (or leaves it). */
function hostileBody(body: unknown): fc.Arbitrary<{ text: string | undefined; note: string }> {
  const obj = typeof body === 'object' && body !== null && !Array.isArray(body) ? (body as Record<string, unknown>) : undefined;
  const keys = obj ? Object.keys(obj) : [];
  return fc.oneof(
    // Weighted up: a body as generated (with known ids, see KnownValues) is the one that gets past validation.
    { weight: 3, arbitrary: fc.constant({ text: JSON.stringify(body), note: 'as generated' }) },
    ...(keys.length > 0
      ? [
          fc.constantFrom(...keys).map((k) => {
            const { [k]: _dropped, ...rest } = obj as Record<string, unknown>;
            return { text: JSON.stringify(rest), note: `without ${k}` };
          }),
          fc.tuple(fc.constantFrom(...keys), hostileString).map(([k, s]) => ({ text: JSON.stringify({ ...obj, [k]: s }), note: `${k} hostile` })),
          fc.tuple(fc.constantFrom(...keys), fc.constantFrom(nested(40), nested(33), -1, 1e308, [], {}, true)).map(([k, v]) => ({ text: JSON.stringify({ ...obj, [k]: v }), note: `${k} wrong type` })),
        ]
      : []),
    // Written as text: an object literal would turn `__proto__` into a prototype, not a key.
    fc.constantFrom(...BUILTIN_KEYS).map((k) => ({ text: `{${JSON.stringify(k)}: {"polluted": true}${keys.length > 0 ? `, ${JSON.stringify(obj).slice(1, -1)}` : ''}}`, note: `key ${k}` })),
    fc.constantFrom('{', '{"a":', 'nul', '[1,]', '"\\ud800"', '{"a":"\\u0000"}', `{"a":${'['.repeat(40)}${']'.repeat(40)}}`).map((text) => ({ text, note: 'broken JSON' })),
    fc.constant({ text: undefined, note: 'no body' }),
  );
}

export interface FuzzRequest {
  readonly method: string;
  /** Path and query string, percent-encoded. */
  readonly target: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string | undefined;
  /** What was done to it, for a failure message. */
  readonly note: string;
}

/** Generated requests for one operation: valid ones and hostile ones, mixed; with `known`, naming things earlier answers showed. */
export function requestArb(op: Operation, known?: KnownValues): fc.Arbitrary<FuzzRequest> {
  const param = (p: Parameter): fc.Arbitrary<string | undefined> => {
    const valid = knownOr(known, kindOf(op.path, p.name), schemaArb(p.schema, 2)).map(asText);
    const value = fc.oneof({ weight: 4, arbitrary: valid }, { weight: 1, arbitrary: hostileString }, { weight: 1, arbitrary: fc.string({ maxLength: 20 }) });
    return p.required ? value : fc.option(value, { nil: undefined, freq: 2 });
  };
  const params = fc.tuple(...op.parameters.map(param));
  const extraQuery = fc.oneof({ weight: 4, arbitrary: fc.constant([] as Array<[string, string]>) }, { weight: 1, arbitrary: fc.array(fc.tuple(fc.oneof(fc.constantFrom(...BUILTIN_KEYS), fc.string({ maxLength: 8 })), fc.string({ maxLength: 10 })), { minLength: 1, maxLength: 3 }) });
  const method = fc.oneof({ weight: 6, arbitrary: fc.constant(op.method) }, { weight: 1, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS') });
  const body = op.body ? schemaArb(op.body.schema, 3, known, op.path).chain(hostileBody) : fc.oneof({ weight: 5, arbitrary: fc.constant({ text: undefined as string | undefined, note: 'no body' }) }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }).map((v) => ({ text: JSON.stringify(v), note: 'unexpected body' })) });
  const contentType = fc.oneof(
    { weight: 6, arbitrary: fc.constant(op.body?.contentTypes[0] ?? 'application/json') },
    { weight: 1, arbitrary: fc.constantFrom('text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=utf-8', 'application/merge-patch+json', '') },
  );
  return fc.record({ params, extraQuery, method, body, contentType }).map(({ params: values, extraQuery: extra, method: m, body: b, contentType: ct }) => {
    let path = op.path;
    const query = new URLSearchParams();
    const headers: Record<string, string> = {};
    op.parameters.forEach((p, i) => {
      const v = values[i];
      if (v === undefined) return;
      if (p.in === 'path') path = path.replace(`{${p.name}}`, pathSegment(v));
      else if (p.in === 'query') query.append(p.name, v);
      // Header values cannot carry control characters at all: those are the client library's refusal, not the server's.
      else headers[p.name] = [...v].map((c) => (c >= ' ' && c <= '~' ? c : '?')).join('');
    });
    for (const [k, v] of extra) query.append(k, v);
    if (b.text !== undefined && ct !== '') headers['content-type'] = ct;
    const search = query.toString();
    return { method: m, target: `${path}${search ? `?${search}` : ''}`, headers, body: m === 'GET' || m === 'HEAD' ? undefined : b.text, note: b.note };
  });
}
