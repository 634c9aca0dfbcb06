/**
 * A typed route table for the scaling API. Each route declares zod schemas for its path
 * parameters, query, headers, body and every response; the router validates requests against
 * them, answers RFC 9457 problems for anything it rejects (404 unknown route, 405 wrong method
 * with `Allow`, 413 oversized, 415 not JSON, 400 malformed or invalid), and the OpenAPI
 * document is generated from the very same table (see `openapi.ts`).
 *
 * We keep our own small router rather than `@middy/http-router` because the route table must
 * also drive 405 answers and the OpenAPI document, which that router does not model.
 *
 * @example
 * ```ts
 * const status = defineRoute({
 *   method: 'GET', path: '/api/v1/scaling/status', operationId: 'getStatus', summary: 'Auto-scaling status',
 *   responses: { 200: { description: 'status', schema: statusSchema } },
 *   handle: async () => ({ status: 200, body: await service.status() }),
 * });
 * const router = createRouter([status]);
 * const response = await router.dispatch(request);
 * ```
 */
import { z } from 'zod';
import { ProblemError, jsonResponse, problemResponse, type ApiRequest, type ApiResponse, type CallerIdentity, type InvalidParam } from './http.js';
import { DuplicateMemberError, parseJsonText } from '../core/json-text.js';
import { duplicateProblems, inexactProblems, jsonProblems, listedProblems, textProblem, zodProblems } from './input-limits.js';

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

type Schema = z.ZodType;
type Out<S> = S extends z.ZodType ? z.output<S> : undefined;

export interface ResponseSpec {
  readonly description: string;
  /** Absent for responses without a body (e.g. 204). */
  readonly schema?: Schema;
  /** Response headers worth documenting (name -> description). */
  readonly headers?: Readonly<Record<string, string>>;
}

/** What a route handler receives: validated, typed request parts. */
export interface RouteContext<P, Q, H, B> {
  readonly params: P;
  readonly query: Q;
  readonly headers: H;
  readonly body: B;
  readonly identity: CallerIdentity;
  readonly requestId: string;
  readonly request: ApiRequest;
}

export interface RouteResult {
  readonly status: number;
  readonly body?: unknown;
  /**
   * `body` already serialised (a snapshot's): sent as is. The body must then be deep-frozen, so
   * that its schema check, done the first time it is seen, holds for every later response.
   */
  readonly json?: string;
  readonly headers?: Readonly<Record<string, string>>;
  /** See {@link ApiResponse.reuseForMs}: how long a snapshot's answer stays the same. */
  readonly reuseForMs?: number;
}

export interface RouteSpec<
  PS extends Schema | undefined = Schema | undefined,
  QS extends Schema | undefined = Schema | undefined,
  HS extends Schema | undefined = Schema | undefined,
  BS extends Schema | undefined = Schema | undefined,
> {
  readonly method: HttpMethod;
  /** Path template with `{name}` parameters, e.g. `/api/v1/scaling/shards/moves/{id}`. */
  readonly path: string;
  readonly operationId: string;
  readonly summary: string;
  readonly description?: string;
  readonly tags?: readonly string[];
  readonly params?: PS;
  readonly query?: QS;
  readonly headers?: HS;
  readonly body?: BS;
  /** Whether a body is required when `body` is declared (default true). */
  readonly bodyRequired?: boolean;
  /**
   * The media types the body may have (default: `application/json` and any `application/*+json`).
   * A PATCH route names its patch format here; a 415 then carries `Accept-Patch` (RFC 5789).
   */
  readonly contentTypes?: readonly string[];
  readonly responses: Readonly<Record<number, ResponseSpec>>;
  handle(ctx: RouteContext<Out<PS>, Out<QS>, Out<HS>, Out<BS>>): Promise<RouteResult>;
}

/** Declares a route; exists for type inference of the handler's context. */
export function defineRoute<
  PS extends Schema | undefined = undefined,
  QS extends Schema | undefined = undefined,
  HS extends Schema | undefined = undefined,
  BS extends Schema | undefined = undefined,
>(spec: RouteSpec<PS, QS, HS, BS>): RouteSpec {
  return spec as unknown as RouteSpec;
}

export interface RouterOptions {
  /** Largest accepted request body in bytes (default 64 KiB). */
  readonly maxBodyBytes?: number;
  /** Called for unexpected errors (logging); the client gets a bare 500 problem. */
  readonly onError?: (err: unknown, request: ApiRequest) => void;
  /** Validate response bodies against their schemas (default true): a mismatch is a bug, answered 500. */
  readonly validateResponses?: boolean;
}

interface CompiledRoute {
  readonly spec: RouteSpec;
  readonly pattern: RegExp;
  readonly paramNames: readonly string[];
  /** The query schema's output for a request without a query, parsed once (most reads have none). */
  readonly emptyQuery: { readonly ok: true; readonly data: unknown } | { readonly ok: false };
}

function compile(spec: RouteSpec): CompiledRoute {
  const paramNames: string[] = [];
  const source = spec.path
    .split('/')
    .map((seg) => {
      const m = /^\{([a-zA-Z_][a-zA-Z0-9_]*)\}$/.exec(seg);
      if (m) {
        paramNames.push(m[1] as string);
        return '([^/]+)';
      }
      return seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    })
    .join('/');
  const empty = spec.query?.safeParse({});
  const emptyQuery = empty?.success ? ({ ok: true, data: Object.freeze(empty.data) } as const) : ({ ok: false } as const);
  return { spec, pattern: new RegExp(`^${source}/?$`), paramNames, emptyQuery };
}

const mediaType = (value: string | undefined): string => value?.split(';')[0]?.trim().toLowerCase() ?? '';

function isJsonContentType(value: string | undefined): boolean {
  const type = mediaType(value);
  return type === 'application/json' || (type.startsWith('application/') && type.endsWith('+json'));
}

export interface Router {
  readonly routes: readonly RouteSpec[];
  dispatch(request: ApiRequest): Promise<ApiResponse>;
}

/** Builds the dispatcher for a route table. */
export function createRouter(routes: readonly RouteSpec[], options: RouterOptions = {}): Router {
  const compiled = routes.map(compile);
  /** Frozen snapshot bodies whose schema check passed: they cannot have changed since. */
  const checkedSnapshots = new WeakSet<object>();
  const maxBody = options.maxBodyBytes ?? 64 * 1024;
  const validateResponses = options.validateResponses ?? true;

  async function run(request: ApiRequest): Promise<ApiResponse> {
    const path = request.path.length > 1 ? request.path.replace(/\/+$/, '') : request.path;
    const matches = compiled
      .map((route) => ({ route, m: route.pattern.exec(path) }))
      .filter((x): x is { route: CompiledRoute; m: RegExpExecArray } => x.m !== null);
    if (matches.length === 0) throw new ProblemError(404, `no route for ${request.method} ${request.path}`);
    const method = request.method.toUpperCase();
    const hit = matches.find((x) => x.route.spec.method === method) ?? (method === 'HEAD' ? matches.find((x) => x.route.spec.method === 'GET') : undefined);
    if (!hit) {
      // HEAD is served wherever GET is (RFC 9110 section 9.3.2), so it is allowed there too.
      const methods = new Set<string>(matches.map((x) => x.route.spec.method));
      if (methods.has('GET')) methods.add('HEAD');
      const allow = [...methods].sort().join(', ');
      throw new ProblemError(405, `${method} is not allowed on ${request.path}; allowed: ${allow}`, { headers: { allow } });
    }
    const { spec, paramNames } = hit.route;
    const invalid: InvalidParam[] = [];

    const rawParams: Record<string, string> = {};
    for (const [i, name] of paramNames.entries()) {
      const raw = hit.m[i + 1] as string;
      try {
        rawParams[name] = decodeURIComponent(raw);
      } catch {
        invalid.push({ name: `params.${name}`, reason: 'is not valid percent-encoding' });
      }
    }
    // NUL and lone surrogates are refused here, before any schema or database sees them.
    for (const [name, value] of Object.entries(rawParams)) {
      const why = textProblem(value);
      if (why) invalid.push({ name: `params.${name}`, reason: why });
    }
    for (const [name, value] of Object.entries(request.query)) {
      const nameWhy = textProblem(name);
      const why = value === undefined ? undefined : textProblem(value);
      if (nameWhy) invalid.push({ name: 'query', reason: `a parameter name ${nameWhy}` });
      else if (why) invalid.push({ name: `query.${name}`, reason: why });
    }
    // Only the last value would be used: `?service=a&service=b` would answer for b alone.
    for (const name of request.repeatedQuery ?? []) {
      if (textProblem(name) === undefined) invalid.push({ name: `query.${name}`, reason: 'is given more than once; give each query parameter once' });
    }
    const parsePart = (prefix: string, schema: Schema | undefined, value: unknown): unknown => {
      if (!schema) return undefined;
      const r = schema.safeParse(value);
      if (!r.success) {
        invalid.push(...zodProblems(prefix, r.error));
        return undefined;
      }
      return r.data;
    };
    const params = parsePart('params', spec.params, rawParams);
    const query = Object.keys(request.query).length === 0 && hit.route.emptyQuery.ok ? hit.route.emptyQuery.data : parsePart('query', spec.query, { ...request.query });
    const headers = parsePart('headers', spec.headers, { ...request.headers });

    let body: unknown;
    const rawBody = request.body ?? '';
    if (spec.body) {
      if (Buffer.byteLength(rawBody, 'utf8') > maxBody) {
        throw new ProblemError(413, `the request body is larger than ${maxBody} bytes`);
      }
      const hasBody = rawBody.trim().length > 0;
      if (hasBody) {
        const got = request.headers['content-type'];
        if (spec.contentTypes !== undefined && !spec.contentTypes.includes(mediaType(got))) {
          const accepted = spec.contentTypes.join(', ');
          throw new ProblemError(415, `send the body as ${accepted} (got ${got ?? 'no content-type'})`, { headers: spec.method === 'PATCH' ? { 'accept-patch': accepted } : {} });
        }
        if (spec.contentTypes === undefined && !isJsonContentType(got)) {
          throw new ProblemError(415, `send the body as application/json (got ${got ?? 'no content-type'})`);
        }
        // JSON.parse would blame an invisible "unexpected token" for it.
        if (rawBody.charCodeAt(0) === 0xfeff) throw new ProblemError(400, 'the request body starts with a byte order mark (U+FEFF); send the JSON text without one (RFC 8259, section 8.1)');
        let parsed: unknown;
        let duplicated = false;
        try {
          parsed = parseJsonText(rawBody);
        } catch (err) {
          if (!(err instanceof DuplicateMemberError)) throw new ProblemError(400, `the request body is not valid JSON: ${(err as Error).message}`, { cause: err });
          invalid.push(...duplicateProblems(err, 'body'));
          duplicated = true;
        }
        if (!duplicated) {
          // A number JSON.parse rounds (1e-400 read as 0) would be taken as another setting than the one sent.
          const hostile = [...jsonProblems(parsed, 'body'), ...inexactProblems(rawBody, 'body')];
          if (hostile.length > 0) invalid.push(...hostile);
          else body = parsePart('body', spec.body, parsed);
        }
      } else if (spec.bodyRequired ?? true) {
        invalid.push({ name: 'body', reason: 'a JSON body is required' });
      } else {
        body = parsePart('body', spec.body, {});
      }
    } else if (rawBody.length > 0 && Buffer.byteLength(rawBody, 'utf8') > maxBody) {
      throw new ProblemError(413, `the request body is larger than ${maxBody} bytes`);
    }
    if (invalid.length > 0) {
      const { listed, more } = listedProblems(invalid);
      throw new ProblemError(400, `the request is invalid: ${listed.map((p) => `${p.name}: ${p.reason}`).join('; ')}${more}`, {
        title: 'Invalid request',
        type: 'https://ca-dms-scaling.dev/problems/validation',
        invalidParams: listed,
      });
    }

    const result = await spec.handle({ params, query, headers, body, identity: request.identity, requestId: request.requestId, request });
    const declared = spec.responses[result.status];
    const checkedBefore = result.json !== undefined && typeof result.body === 'object' && result.body !== null && Object.isFrozen(result.body) && checkedSnapshots.has(result.body);
    if (validateResponses && !checkedBefore) {
      if (!declared) throw new Error(`route ${spec.operationId} returned undeclared status ${result.status}`);
      if (declared.schema) {
        const r = declared.schema.safeParse(result.body);
        if (!r.success) throw new Error(`route ${spec.operationId} returned a body that does not match its schema: ${z.prettifyError(r.error)}`);
      }
      if (result.json !== undefined && typeof result.body === 'object' && result.body !== null && Object.isFrozen(result.body)) checkedSnapshots.add(result.body);
    }
    if (result.body === undefined) return { status: result.status, headers: { 'cache-control': 'no-store', ...result.headers }, body: '' };
    if (method === 'HEAD') {
      // RFC 9110 section 8.6: a Content-Length on HEAD must be the one GET would send.
      const length = Buffer.byteLength(result.json ?? JSON.stringify(result.body), 'utf8');
      return { ...jsonResponse(result.status, null, { ...result.headers, 'content-length': String(length) }), body: '' };
    }
    if (result.json === undefined) return jsonResponse(result.status, result.body, { ...result.headers });
    return { ...jsonResponse(result.status, null, { ...result.headers }), body: result.json, ...(result.reuseForMs ? { reuseForMs: result.reuseForMs } : {}) };
  }

  return {
    routes,
    async dispatch(request) {
      try {
        return await run(request);
      } catch (err) {
        if (err instanceof ProblemError) return problemResponse(err, request.path);
        options.onError?.(err, request);
        return problemResponse(new ProblemError(500, `an internal error occurred; quote request id ${request.requestId} when reporting it`), request.path);
      }
    },
  };
}
