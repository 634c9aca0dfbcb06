/**
 * The local HTTP adapter: a `node:http` server in front of the scaling API. It serves the API
 * one of two ways:
 *
 * - `dispatch` (local mode): each request becomes the very {@link ApiRequest} that
 *   `fromApiGatewayEvent` builds from the proxy event API Gateway would send, and goes straight
 *   to the route table. No proxy event, no middy, no per-request Powertools setup: on a laptop
 *   those cost more than the API's own work (issue #16, point 8).
 * - `handler`: each request becomes an API Gateway REST proxy event for a Lambda handler, as
 *   API Gateway would call it.
 *
 * What a client sends is untrusted, and every refusal is an RFC 9457 problem document: a
 * request target that is not a URL or holds malformed percent-encoding is 400; a request whose
 * headers and body do not arrive within `requestTimeoutMs` (default 10 s) is 408; Node's own
 * parser refusals (bad syntax 400, headers too large 431) get a problem body too; a body over
 * `maxBodyBytes` is 413 and the connection is closed, since the rest of that body would
 * otherwise be read as the next request. Query keys become properties of null-prototype
 * objects, so a key such as `__proto__` or `constructor` is data like any other.
 *
 * @example
 * ```ts
 * const router = createScalingRouter(port);
 * const server = await startLocalServer({ dispatch: (request) => router.dispatch(request), port: 3000 });
 * console.log(server.url); // http://127.0.0.1:3000
 * await server.close();
 * ```
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { ProblemError, problemResponse, type ApiRequest, type ApiResponse } from '../../api/http.js';

export type ProxyHandler = (event: APIGatewayProxyEvent, context: Context) => Promise<APIGatewayProxyResult>;

/** Serves one API request: the route table's `dispatch`. */
export type ApiDispatch = (request: ApiRequest) => Promise<ApiResponse>;

/** Serves something other than the API (the dashboard page, static files); return false to fall through. */
export type ExtraRoute = (req: IncomingMessage, res: ServerResponse) => boolean | Promise<boolean>;

interface CommonServerOptions {
  /** Port on 127.0.0.1; 0 picks a free one. */
  readonly port?: number;
  readonly host?: string;
  /** Largest body read before answering 413 without calling the handler (default 1 MiB). */
  readonly maxBodyBytes?: number;
  /** Longest a client may take to send a request's headers and body before a 408 (default 10 s). */
  readonly requestTimeoutMs?: number;
}

/** What answers requests: exactly one way of serving the API (a route table's dispatcher, or a Lambda handler), and the extra routes before it. */
export type LocalRoutes = {
  readonly extraRoutes?: readonly ExtraRoute[];
  /**
   * With `dispatch`: a count the routes raise whenever answers they gave may no longer hold (the
   * scaling router's `changes`); reusable answers kept from before are then not resent.
   */
  readonly changes?: () => number;
} & ({ readonly dispatch: ApiDispatch; readonly handler?: undefined } | { readonly handler: ProxyHandler; readonly dispatch?: undefined });

export type LocalServerOptions = CommonServerOptions & LocalRoutes;

export interface LocalServer {
  readonly url: string;
  readonly port: number;
  readonly server: Server;
  /** Starts answering with `routes` (replacing the 503 "starting" of {@link bindLocalServer}). */
  serve(routes: LocalRoutes): void;
  /**
   * Closes the port and every connection; later calls return the same promise. With `drainMs`,
   * requests under way first get up to that long to be answered (a write that commits meanwhile
   * is answered, not cut off); idle connections close at once and no new one is accepted.
   */
  close(options?: { readonly drainMs?: number }): Promise<void>;
}

export class PortInUseError extends Error {
  override readonly name = 'PortInUseError';
  constructor(
    readonly port: number,
    options?: { cause?: unknown },
  ) {
    super(`port ${port} on 127.0.0.1 is already in use; choose another with --port or stop whatever is listening there`, options);
  }
}

/** The first port an ordinary user may listen on (Linux's sysctl; 1024 elsewhere). */
function unprivilegedPortStart(): number {
  try {
    const value = Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim());
    return Number.isInteger(value) ? value : 1024;
  } catch {
    return 1024;
  }
}

/** The port is a privileged one and this process may not listen on it (EACCES). */
export class PortNotPermittedError extends Error {
  override readonly name = 'PortNotPermittedError';
  constructor(
    readonly port: number,
    options?: { cause?: unknown },
  ) {
    super(`port ${port} on 127.0.0.1 needs privileges this user lacks (ports below ${unprivilegedPortStart()} do); choose another with --port`, options);
  }
}

function lambdaContext(requestId: string): Context {
  return {
    callbackWaitsForEmptyEventLoop: false,
    functionName: 'ca-dms-scaling-api-local',
    functionVersion: '$LATEST',
    invokedFunctionArn: 'arn:aws:lambda:local:000000000000:function:ca-dms-scaling-api-local',
    memoryLimitInMB: '512',
    awsRequestId: requestId,
    logGroupName: 'local',
    logStreamName: 'local',
    getRemainingTimeInMillis: () => 30_000,
    done: () => undefined,
    fail: () => undefined,
    succeed: () => undefined,
  };
}

/** Whether the request has no body at all (RFC 9112 section 6.3): neither Transfer-Encoding nor a non-zero Content-Length. */
function bodiless(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] === undefined && (length === undefined || length === '0');
}

async function readBody(req: IncomingMessage, limit: number): Promise<string | 'too-large' | 'not-utf8'> {
  // Most requests (every GET) have none: no stream iteration for them.
  if (bodiless(req)) return '';
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) return 'too-large';
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buf = chunk as Buffer;
    size += buf.length;
    if (size > limit) return 'too-large';
    chunks.push(buf);
  }
  try {
    // Fatal: a byte that is not UTF-8 (a Latin-1 body) would otherwise become U+FFFD and be recorded so.
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(Buffer.concat(chunks));
  } catch {
    return 'not-utf8';
  }
}

/** A map from untrusted keys: no inherited property can be mistaken for one of them. */
function untrustedKeys<T>(): Record<string, T> {
  return Object.create(null) as Record<string, T>;
}

/** The request target as a URL, or why it is not one (a 400). */
export function parseTarget(raw: string | undefined): URL | ProblemError {
  let url: URL;
  try {
    url = new URL(raw ?? '/', 'http://127.0.0.1');
  } catch (error) {
    return new ProblemError(400, 'the request target is not a valid URL', { cause: error });
  }
  try {
    decodeURIComponent(url.pathname);
  } catch (error) {
    return new ProblemError(400, `the request path ${url.pathname} holds malformed percent-encoding (a % must be followed by two hex digits)`, { cause: error });
  }
  return url;
}

/**
 * Converts one node:http request into the API's own request: what `fromApiGatewayEvent` makes of
 * {@link toProxyEvent}'s event for it (a test holds the two equal), built directly.
 */
export function toApiRequest(req: IncomingMessage, body: string, requestId: string, target: URL): ApiRequest {
  const headers = untrustedKeys<string>();
  for (const [k, v] of Object.entries(req.headers)) {
    if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  const query = untrustedKeys<string>();
  const repeated = new Set<string>();
  for (const [k, v] of target.searchParams) {
    if (Object.hasOwn(query, k)) repeated.add(k);
    query[k] = v;
  }
  const sourceIp = req.socket.remoteAddress ?? '127.0.0.1';
  return {
    method: req.method ?? 'GET',
    path: target.pathname,
    query,
    ...(repeated.size > 0 ? { repeatedQuery: [...repeated].sort() } : {}),
    headers,
    body: body.length > 0 ? body : null,
    identity: { actor: `local:${sourceIp}`, sourceIp },
    requestId,
  };
}

/** Converts one node:http request into a REST API proxy event. */
export function toProxyEvent(req: IncomingMessage, body: string, requestId: string, target?: URL): APIGatewayProxyEvent {
  const url = target ?? new URL(req.url ?? '/', 'http://127.0.0.1');
  const headers = untrustedKeys<string>();
  const multiHeaders = untrustedKeys<string[]>();
  for (const [k, v] of Object.entries(req.headers)) {
    if (v === undefined) continue;
    const values = Array.isArray(v) ? v : [v];
    headers[k] = values.join(', ');
    multiHeaders[k] = values;
  }
  const query = untrustedKeys<string>();
  const multiQuery = untrustedKeys<string[]>();
  for (const [k, v] of url.searchParams) {
    query[k] = v;
    (multiQuery[k] ??= []).push(v);
  }
  const sourceIp = req.socket.remoteAddress ?? '127.0.0.1';
  const hasQuery = Object.keys(query).length > 0;
  return {
    resource: '/{proxy+}',
    path: url.pathname,
    httpMethod: req.method ?? 'GET',
    headers,
    multiValueHeaders: multiHeaders,
    queryStringParameters: hasQuery ? query : null,
    multiValueQueryStringParameters: hasQuery ? multiQuery : null,
    pathParameters: null,
    stageVariables: null,
    body: body.length > 0 ? body : null,
    isBase64Encoded: false,
    requestContext: {
      accountId: '000000000000',
      apiId: 'local',
      authorizer: null,
      protocol: `HTTP/${req.httpVersion}`,
      httpMethod: req.method ?? 'GET',
      path: url.pathname,
      stage: 'local',
      requestId,
      requestTimeEpoch: Date.now(),
      resourceId: 'local',
      resourcePath: '/{proxy+}',
      identity: {
        accessKey: null,
        accountId: null,
        apiKey: null,
        apiKeyId: null,
        caller: null,
        clientCert: null,
        cognitoAuthenticationProvider: null,
        cognitoAuthenticationType: null,
        cognitoIdentityId: null,
        cognitoIdentityPoolId: null,
        principalOrgId: null,
        sourceIp,
        user: null,
        userAgent: headers['user-agent'] ?? null,
        // Local mode has no IAM: the operator on this machine is the actor.
        userArn: `local:${sourceIp}`,
      },
    },
  };
}

/** Writes a problem response; `close` ends the connection after it (the request was not read to its end). */
function sendProblem(res: ServerResponse, problem: ProblemError, close = false): void {
  const response = problemResponse(problem);
  res.writeHead(problem.status, { ...response.headers, 'content-length': String(Buffer.byteLength(response.body)), ...(close ? { connection: 'close' } : {}) });
  res.end(response.body);
}

/** Node's parser refusals and timeouts, as the status and words a client gets. */
function clientErrorProblem(err: NodeJS.ErrnoException, timeoutMs: number): ProblemError {
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return new ProblemError(408, `the request was not received within ${timeoutMs / 1000} s (its headers and body)`, { title: 'Request Timeout' });
  if (err.code === 'HPE_HEADER_OVERFLOW') return new ProblemError(431, 'the request headers are too large', { title: 'Request Header Fields Too Large' });
  return new ProblemError(400, 'the request is not valid HTTP/1.1');
}

/** Starts the adapter on loopback. Rejects with {@link PortInUseError} when the port is taken. */
export async function startLocalServer(options: LocalServerOptions): Promise<LocalServer> {
  checkRoutes(options);
  const server = await bindLocalServer(options);
  server.serve(options);
  return server;
}

function checkRoutes(routes: LocalRoutes): void {
  if ((routes.dispatch === undefined) === (routes.handler === undefined)) throw new TypeError('local server: pass exactly one of dispatch and handler');
}

/** An answer kept as bytes, to resend to the same GET until `until`. */
interface Reply {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
  readonly until: number;
  readonly stamp: number;
}

/** Request targets with a reply kept at once (query-string variants each count): the oldest goes first. */
const MAX_KEPT_REPLIES = 256;

/**
 * The answers of GETs the routes marked reusable ({@link ApiResponse.reuseForMs}, a snapshot's
 * answer until its `Age` ticks), by request target, as bytes: the same GET again is answered
 * without parsing, routing or serialising anything. A request of any other method clears it
 * (the routes renew their snapshots after a change, and so must this), and an answer computed
 * across such a clear is not kept (`generation`).
 */
class ReplyCache {
  private readonly replies = new Map<string, Reply>();
  private cleared = 0;
  /** The routes' own count of changes (see {@link LocalRoutes.changes}). */
  changes: () => number = () => 0;

  /** Both counts only grow, so their sum changes whenever either does. */
  stamp(): number {
    return this.cleared + this.changes();
  }

  /** The reply kept for `target`, if it still holds. */
  get(target: string): Reply | undefined {
    const reply = this.replies.get(target);
    return reply !== undefined && reply.until > Date.now() && reply.stamp === this.stamp() ? reply : undefined;
  }

  /** Keeps a reusable answer, unless something changed since it was asked for (`stamp`). */
  offer(target: string, response: ApiResponse, stamp: number): void {
    if (response.reuseForMs === undefined || response.reuseForMs <= 0 || stamp !== this.stamp()) return;
    this.replies.delete(target);
    const body = Buffer.from(response.body, 'utf8');
    this.replies.set(target, { status: response.status, headers: { ...response.headers, 'content-length': String(body.length) }, body, until: Date.now() + response.reuseForMs, stamp });
    if (this.replies.size > MAX_KEPT_REPLIES) this.replies.delete(this.replies.keys().next().value as string);
  }

  clear(): void {
    this.replies.clear();
    this.cleared++;
  }
}

/** Seconds a client is told to wait (`Retry-After`) while local mode starts. */
const STARTING_RETRY_AFTER_S = 2;

/**
 * Binds the port at once and answers every request with a 503 "starting" problem (with
 * `Retry-After`) until {@link LocalServer.serve} installs the routes. Local mode binds first and
 * builds PostgreSQL and its replicas after, so the port it reports (`--port 0` included) is
 * its own from the first moment: nobody can take it during the seconds of start-up, and a port
 * in use fails the start before anything else runs. Rejects with {@link PortInUseError}.
 */
export async function bindLocalServer(options: CommonServerOptions): Promise<LocalServer> {
  const limit = options.maxBodyBytes ?? 1024 * 1024;
  const timeoutMs = options.requestTimeoutMs ?? 10_000;
  let dispatch: ApiDispatch | undefined;
  let handler: ProxyHandler | undefined;
  let extras: readonly ExtraRoute[] = [];
  let serving = false;
  const replies = new ReplyCache();
  // The response under way on each connection: a parser error or a timeout may answer only
  // while nothing of a response has been written.
  const responding = new WeakMap<Duplex, ServerResponse>();
  // Requests under way (received, not yet answered), so a close can let them finish.
  let underWay = 0;
  const allAnswered = new Set<() => void>();
  const server = createServer({ requestTimeout: timeoutMs, headersTimeout: timeoutMs, connectionsCheckingInterval: Math.min(1000, timeoutMs / 2) }, (req, res) => {
    responding.set(req.socket, res);
    underWay++;
    res.once('close', () => {
      underWay--;
      if (underWay === 0) for (const done of allAnswered) done();
    });
    // A conditional GET (If-None-Match) may get a 304 instead: it always goes to the routes.
    const reusable = serving && dispatch !== undefined && req.method === 'GET' && req.headers['if-none-match'] === undefined && bodiless(req);
    if (reusable) {
      // Kept only after this very target was parsed, passed over by every extra route and
      // answered by the routes (and dropped whenever they change): written out at once.
      const hit = replies.get(req.url as string);
      if (hit !== undefined) {
        res.writeHead(hit.status, { ...hit.headers, 'x-request-id': randomUUID() });
        res.end(hit.body);
        return;
      }
    }
    void (async () => {
      const target = parseTarget(req.url);
      if (target instanceof ProblemError) {
        sendProblem(res, target, true);
        return;
      }
      if (!serving) {
        sendProblem(res, new ProblemError(503, 'local mode is starting (PostgreSQL, replicas, demo data); retry in a moment', { title: 'Service Unavailable', headers: { 'retry-after': String(STARTING_RETRY_AFTER_S) } }), !bodiless(req));
        return;
      }
      for (const extra of extras) {
        // Most extra routes decide synchronously; awaiting only a promise keeps them off the microtask queue.
        const taken = extra(req, res);
        if (taken === true || (taken !== false && (await taken))) return;
      }
      const requestId = randomUUID();
      const body = await readBody(req, limit);
      if (body === 'too-large') {
        sendProblem(res, new ProblemError(413, `the request body is larger than ${limit} bytes`), true);
        return;
      }
      if (body === 'not-utf8') {
        sendProblem(res, new ProblemError(400, 'the request body is not valid UTF-8; send JSON text encoded as UTF-8 (RFC 8259)'), false);
        return;
      }
      if (dispatch) {
        const stamp = replies.stamp();
        const response = await dispatch(toApiRequest(req, body, requestId, target));
        if (reusable) replies.offer(req.url as string, response, stamp);
        // Any other method may change what the reads answer: nothing sent before it is resent.
        else if (req.method !== 'GET' && req.method !== 'HEAD') replies.clear();
        // A length rather than chunked framing: one less piece per response to write and parse.
        // A HEAD answer carries the length its GET would have (the routes set it), not its empty body's.
        const length =
          response.status === 204 || response.status === 304 || (req.method === 'HEAD' && response.headers['content-length'] !== undefined)
            ? {}
            : { 'content-length': String(Buffer.byteLength(response.body)) };
        res.writeHead(response.status, { ...response.headers, ...length, 'x-request-id': requestId });
        res.end(response.body);
        return;
      }
      const result = await (handler as ProxyHandler)(toProxyEvent(req, body, requestId, target), lambdaContext(requestId));
      const headers: Record<string, string> = { 'x-request-id': requestId };
      for (const [k, v] of Object.entries(result.headers ?? {})) headers[k] = String(v);
      res.writeHead(result.statusCode, headers);
      res.end(result.isBase64Encoded ? Buffer.from(result.body, 'base64') : result.body);
    })().catch((err: unknown) => {
      // A client that went away (or timed out) mid-request has nobody left to answer.
      if (req.socket.destroyed) return;
      if (!res.headersSent) sendProblem(res, new ProblemError(500, 'the local adapter failed to serve the request'), true);
      else res.end();
      process.emitWarning(`local adapter: ${(err as Error).message}`);
    });
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    const res = responding.get(socket);
    if (err.code === 'ECONNRESET' || !socket.writable || res?.headersSent === true) {
      socket.destroy();
      return;
    }
    const problem = clientErrorProblem(err, timeoutMs);
    const response = problemResponse(problem);
    const head = [`HTTP/1.1 ${problem.status} ${problem.title}`, ...Object.entries(response.headers).map(([k, v]) => `${k}: ${v}`), `content-length: ${Buffer.byteLength(response.body)}`, 'connection: close'];
    (socket as Socket).end(`${head.join('\r\n')}\r\n\r\n${response.body}`);
  });
  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'EADDRINUSE' ? new PortInUseError(options.port ?? 0, { cause: err }) : err.code === 'EACCES' ? new PortNotPermittedError(options.port ?? 0, { cause: err }) : err),
    );
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host}:${port}`,
    port,
    server,
    serve(routes) {
      checkRoutes(routes);
      dispatch = routes.dispatch;
      handler = routes.handler;
      extras = routes.extraRoutes ?? [];
      replies.clear();
      replies.changes = routes.changes ?? (() => 0);
      serving = true;
    },
    close(closeOptions) {
      // Once: local mode closes it both in order and on a failed start.
      closing ??= (async () => {
        // No new connection from here on; idle ones are closed (Node's close does both).
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        const drainMs = closeOptions?.drainMs ?? 0;
        if (drainMs > 0 && underWay > 0) {
          await new Promise<void>((resolve) => {
            const done = (): void => {
              clearTimeout(timer);
              allAnswered.delete(done);
              resolve();
            };
            const timer = setTimeout(done, drainMs);
            allAnswered.add(done);
          });
        }
        server.closeAllConnections();
        await closed;
      })();
      return closing;
    },
  };
}
