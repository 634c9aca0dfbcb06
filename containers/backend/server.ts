/**
 * The demo backend: what the services run when the configuration names no image of its own
 * (`{ "kind": "demo" }`), so a first deploy starts healthy tasks before an application exists.
 * It answers the health checks the task definitions and the load balancer send (`/health`,
 * `/health/readonly`), describes itself at `/`, and answers anything else with an RFC 9457
 * 404. Its settings are validated at start; an invalid one stops it with exit 78 (EX_CONFIG)
 * and a line naming the variable.
 *
 * @example
 * ```sh
 * PORT=8000 CA_DMS_SERVICE=backend-read DATABASE_READ_ONLY=true node server.mjs
 * curl http://127.0.0.1:8000/health/readonly
 * ```
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';

const EX_CONFIG = 78;

/** The health endpoints: the container health check probes `/health`, the read pool's target group `/health/readonly`. */
export const HEALTH_PATHS = ['/health', '/health/readonly'] as const;

export const backendEnvSchema = z.object({
  PORT: z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(1024, 'must be at least 1024 (the image runs unprivileged)').max(65535, 'must be at most 65535'))
    .default(8000),
  /** Which service this task is (the task definitions set it); only reported. */
  CA_DMS_SERVICE: z.enum(['backend-read', 'backend-write', 'frontend', 'worker'], { error: 'must be backend-read, backend-write, frontend or worker' }).optional(),
  DATABASE_READ_ONLY: z.enum(['true', 'false'], { error: 'must be true or false' }).default('false').transform((v) => v === 'true'),
  /**
   * Idle keep-alive of client connections, in seconds. nginx closes its pooled upstream
   * connections sooner (NGINX_UPSTREAM_KEEPALIVE_TIMEOUT, 4 s, below NGINX_APP_KEEPALIVE_TIMEOUT,
   * 5 s), so it never writes to a connection this server is closing.
   */
  KEEPALIVE_TIMEOUT_SECONDS: z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(1).max(3600))
    .default(5),
});
export type BackendSettings = z.output<typeof backendEnvSchema>;

/** Validates the variables this server reads; throws a message naming each one at fault. */
export function parseBackendEnv(env: Readonly<Record<string, string | undefined>>): BackendSettings {
  const input = Object.fromEntries(Object.keys(backendEnvSchema.shape).map((k) => [k, env[k] === '' ? undefined : env[k]]));
  const result = backendEnvSchema.safeParse(input);
  if (!result.success) {
    const lines = result.error.issues.map((i) => `  ${String(i.path[0])}: ${i.message} (got ${JSON.stringify(env[String(i.path[0])])})`);
    throw new BackendConfigError(`invalid demo backend settings:\n${lines.join('\n')}`, { cause: result.error });
  }
  return result.data;
}

export class BackendConfigError extends Error {
  override readonly name = 'BackendConfigError';
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': status >= 400 ? 'application/problem+json' : 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

/** The request handler (exported for tests that do not start a process). */
export function handle(settings: BackendSettings, req: IncomingMessage, res: ServerResponse): void {
  const path = new URL(req.url ?? '/', 'http://backend').pathname;
  const known = path === '/' || (HEALTH_PATHS as readonly string[]).includes(path);
  if (!known) {
    sendJson(res, 404, { type: 'about:blank', title: 'Not Found', status: 404, detail: `the demo backend has no ${path}; it serves /, /health and /health/readonly` });
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    sendJson(res, 405, { type: 'about:blank', title: 'Method Not Allowed', status: 405, detail: `${req.method ?? ''} is not allowed on ${path}` }, { allow: 'GET, HEAD' });
    return;
  }
  const identity = { service: settings.CA_DMS_SERVICE ?? null, read_only: settings.DATABASE_READ_ONLY };
  if (path === '/') {
    sendJson(res, 200, { name: 'ca-dms demo backend', ...identity, endpoints: ['/health', '/health/readonly'] });
  } else {
    sendJson(res, 200, { status: 'ok', ...identity });
  }
}

/** Starts listening on `host:settings.PORT`. */
export async function startBackendServer(settings: BackendSettings, host = '0.0.0.0'): Promise<Server> {
  const server = createServer((req, res) => handle(settings, req, res));
  server.keepAliveTimeout = settings.KEEPALIVE_TIMEOUT_SECONDS * 1000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(settings.PORT, host, () => resolve());
  });
  return server;
}

async function main(): Promise<number> {
  let settings: BackendSettings;
  try {
    settings = parseBackendEnv(process.env);
  } catch (error) {
    if (error instanceof BackendConfigError) {
      console.error(`demo-backend: ${error.message}`);
      return EX_CONFIG;
    }
    throw error;
  }
  const server = await startBackendServer(settings);
  console.error(`demo-backend: listening on ${settings.PORT} as ${settings.CA_DMS_SERVICE ?? 'an unnamed service'}`);
  // ECS sends SIGTERM on stop: finish what is in flight, then exit 0.
  await new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  server.closeIdleConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return 0;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main();
}
