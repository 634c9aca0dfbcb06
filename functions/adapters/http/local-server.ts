/**
 * The local HTTP adapter: a `node:http` server that turns each request into an API Gateway
 * REST proxy event, calls the very same Lambda handler API Gateway would, and writes its
 * result back. Used by local mode and by the API tests.
 *
 * @example
 * ```ts
 * const server = await startLocalServer({ handler, port: 3000 });
 * console.log(server.url); // http://127.0.0.1:3000
 * await server.close();
 * ```
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';

export type ProxyHandler = (event: APIGatewayProxyEvent, context: Context) => Promise<APIGatewayProxyResult>;

/** Serves something other than the API (the dashboard page, static files); return false to fall through. */
export type ExtraRoute = (req: IncomingMessage, res: ServerResponse) => boolean | Promise<boolean>;

export interface LocalServerOptions {
  readonly handler: ProxyHandler;
  /** Port on 127.0.0.1; 0 picks a free one. */
  readonly port?: number;
  readonly host?: string;
  /** Largest body read before answering 413 without calling the handler (default 1 MiB). */
  readonly maxBodyBytes?: number;
  readonly extraRoutes?: readonly ExtraRoute[];
}

export interface LocalServer {
  readonly url: string;
  readonly port: number;
  readonly server: Server;
  close(): Promise<void>;
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

async function readBody(req: IncomingMessage, limit: number): Promise<string | 'too-large'> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buf = chunk as Buffer;
    size += buf.length;
    if (size > limit) return 'too-large';
    chunks.push(buf);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Converts one node:http request into a REST API proxy event. */
export function toProxyEvent(req: IncomingMessage, body: string, requestId: string): APIGatewayProxyEvent {
  const url = new URL(req.url ?? '/', 'http://127.0.0.1');
  const headers: Record<string, string> = {};
  const multiHeaders: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (v === undefined) continue;
    const values = Array.isArray(v) ? v : [v];
    headers[k] = values.join(', ');
    multiHeaders[k] = values;
  }
  const query: Record<string, string> = {};
  const multiQuery: Record<string, string[]> = {};
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

/** Starts the adapter on loopback. Rejects with {@link PortInUseError} when the port is taken. */
export async function startLocalServer(options: LocalServerOptions): Promise<LocalServer> {
  const limit = options.maxBodyBytes ?? 1024 * 1024;
  const server = createServer((req, res) => {
    void (async () => {
      for (const extra of options.extraRoutes ?? []) if (await extra(req, res)) return;
      const requestId = randomUUID();
      const body = await readBody(req, limit);
      if (body === 'too-large') {
        res.writeHead(413, { 'content-type': 'application/problem+json', connection: 'close' });
        res.end(JSON.stringify({ type: 'https://ca-dms-scaling.dev/problems/content-too-large', title: 'Content Too Large', status: 413, detail: `the request body is larger than ${limit} bytes` }));
        return;
      }
      const result = await options.handler(toProxyEvent(req, body, requestId), lambdaContext(requestId));
      const headers: Record<string, string> = { 'x-request-id': requestId };
      for (const [k, v] of Object.entries(result.headers ?? {})) headers[k] = String(v);
      res.writeHead(result.statusCode, headers);
      res.end(result.isBase64Encoded ? Buffer.from(result.body, 'base64') : result.body);
    })().catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/problem+json' });
      res.end(JSON.stringify({ type: 'about:blank', title: 'Internal Server Error', status: 500, detail: 'the local adapter failed to serve the request' }));
      process.emitWarning(`local adapter: ${(err as Error).message}`);
    });
  });
  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(err.code === 'EADDRINUSE' ? new PortInUseError(options.port ?? 0, { cause: err }) : err));
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${host}:${port}`,
    port,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
