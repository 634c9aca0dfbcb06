/**
 * Real nginx (Debian's binary) and `node:http` backends on loopback ports for the sidecar's
 * integration tests. The configuration comes from the production template and renderer; only
 * the filesystem paths and the bind address point somewhere a test may write. Under
 * `npm run test:images` the same tests run against the built sidecar image instead: its entry
 * point, its renderer bundle and its nginx, as its unprivileged user (see test/images/).
 *
 * @example
 * ```ts
 * const app = await startBackend('app');
 * const nginx = await startNginx({ NGINX_READ_UPSTREAMS: app.address, NGINX_WRITE_UPSTREAMS: app.address });
 * const res = await send(nginx.port, '/api/v1/documents');
 * await nginx.stop(); await app.close();
 * ```
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, chmodSync, writeFileSync } from 'node:fs';
import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';
import { freeLoopbackPort } from '../../../functions/adapters/net/free-port.js';
import { parseNginxEnv, PRODUCTION_RUNTIME, renderNginxConfig, type NginxRuntime } from '../../../containers/nginx/render.js';
import { NGINX_WRITABLE_PATHS } from '../../../lib/services/sidecar-service.js';
import { startImage, type ExportedImage } from '../../images/rootfs.js';
import { refusedLoopbackPort } from '../../support/refused-port.js';

export const TEMPLATE_PATH = fileURLToPath(new URL('../../../containers/nginx/nginx.conf.template', import.meta.url));
const MODULES_DIR = process.env.CA_DMS_NGINX_MODULES_DIR ?? '/usr/lib/nginx/modules';

/** A free loopback port this process has not given out recently (see free-port.ts). */
export const freePort: () => Promise<number> = freeLoopbackPort;

/**
 * A port chooser for the tests of a start whose first port is taken: it hands out `taken` first,
 * then free ports, and notes every port it gave (`given`).
 */
export function takenFirst(taken: number): { choosePort: () => Promise<number>; given: number[] } {
  const given: number[] = [];
  const choosePort = async (): Promise<number> => {
    const port = given.length === 0 ? taken : await freePort();
    given.push(port);
    return port;
  };
  return { choosePort, given };
}

/**
 * The nginx binary, or a loud failure: these tests must never pass by skipping.
 */
export function nginxBinary(
  candidates: readonly string[] = [process.env.CA_DMS_NGINX_BIN ?? '', '/usr/sbin/nginx', '/usr/local/sbin/nginx'],
  modulesDir: string = MODULES_DIR,
): string {
  const found = candidates.find((c) => c !== '' && existsSync(c));
  if (found === undefined) {
    throw new Error(
      'nginx is not installed: the sidecar tests run real nginx. Install Debian\'s packages with ' +
        '`apt-get install nginx libnginx-mod-http-brotli-filter` (.ci/run does this) or set CA_DMS_NGINX_BIN.',
    );
  }
  if (!existsSync(join(modulesDir, 'ngx_http_brotli_filter_module.so'))) {
    throw new Error(
      `the nginx brotli module is missing from ${modulesDir}: \`apt-get install libnginx-mod-http-brotli-filter\` (.ci/run does this).`,
    );
  }
  return found;
}

/** A configuration rendered into its own temporary directory. */
export interface RenderedConfig {
  readonly dir: string;
  readonly confPath: string;
  readonly accessLogPath: string;
  readonly errorLogPath: string;
}

/** Renders `env` with the production template into a fresh temporary directory. */
export function renderToTempDir(env: Readonly<Record<string, string>>): RenderedConfig {
  const dir = mkdtempSync(join(tmpdir(), 'ca-dms-nginx-'));
  // Workers run as an unprivileged user when the tests run as root; they must enter the dir.
  chmodSync(dir, 0o755);
  mkdirSync(join(dir, 'temp'));
  mkdirSync(join(dir, 'cache'));
  const runtime: NginxRuntime = {
    pidFile: join(dir, 'nginx.pid'),
    tempDir: join(dir, 'temp'),
    cacheDir: join(dir, 'cache'),
    accessLog: join(dir, 'access.log'),
    errorLog: join(dir, 'error.log'),
    modulesDir: MODULES_DIR,
    listenAddress: '127.0.0.1',
  };
  const confPath = join(dir, 'nginx.conf');
  writeFileSync(confPath, renderNginxConfig(readFileSync(TEMPLATE_PATH, 'utf8'), parseNginxEnv(env), runtime));
  return { dir, confPath, accessLogPath: runtime.accessLog, errorLogPath: runtime.errorLog };
}

/** Runs `nginx -t` on a rendered configuration. */
export function checkConfig(config: RenderedConfig): { ok: boolean; output: string } {
  const res = spawnSync(nginxBinary(), ['-t', '-p', `${config.dir}/`, '-c', config.confPath], { encoding: 'utf8' });
  return { ok: res.status === 0, output: `${res.stdout}${res.stderr}` };
}

export interface RunningNginx extends RenderedConfig {
  readonly port: number;
  readonly statusPort: number;
  /** Stops nginx and deletes its directory. */
  stop(): Promise<void>;
}

/** nginx could not bind a port: another process took it after it was chosen. */
export class NginxPortTakenError extends Error {
  override readonly name = 'NginxPortTakenError';
}

const PORT_TAKEN = /bind\(\) to \S+ failed \(98: Address already in use\)/;

/** A log file's text, or '' when there is none yet. */
const logOf = (path: string): string => (existsSync(path) ? readFileSync(path, 'utf8') : '');

/**
 * Waits until nginx listens on `port`. A connection alone does not prove it: another process may
 * hold the port (nginx then reports a failed bind, on stderr while it starts, and retries for
 * 2.5 s before exiting), so `log` (what nginx said so far) must show no failed bind and `ready`
 * (where known, that nginx wrote its own pid file, which it does once bound) must hold.
 */
async function waitForPort(port: number, child: ChildProcess, log: () => string, timeoutSeconds = 10, ready: () => boolean = () => true): Promise<void> {
  const deadline = Date.now() + timeoutSeconds * 1000;
  while (Date.now() < deadline) {
    if (PORT_TAKEN.test(log())) throw new NginxPortTakenError(`nginx could not bind its port: ${log()}`);
    if (child.exitCode !== null) {
      throw new Error(`nginx exited with ${child.exitCode}: ${log()}`);
    }
    const up = await new Promise<boolean>((resolve) => {
      const sock = connect(port, '127.0.0.1');
      sock.once('connect', () => {
        sock.destroy();
        resolve(true);
      });
      sock.once('error', () => resolve(false));
    });
    if (up && ready() && !PORT_TAKEN.test(log())) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`nginx did not listen on ${port} within ${timeoutSeconds} s: ${log()}`);
}

/** How many times a start is tried on fresh ports when a chosen one was taken meanwhile. */
const PORT_ATTEMPTS = 5;

/**
 * Starts real nginx with the rendered configuration. One worker and loopback as the trusted
 * proxy unless `env` says otherwise; ports are free loopback ports unless `env` sets them. A free
 * port is only free when chosen: should another process bind one before nginx does, nginx starts
 * again on new ones (`choosePort` replaces the chooser, for the test of that).
 */
export async function startNginx(env: Readonly<Record<string, string>>, options: { choosePort?: () => Promise<number> } = {}): Promise<RunningNginx> {
  const choosePort = options.choosePort ?? freePort;
  const image = inject('nginxImage');
  for (let attempt = 1; ; attempt += 1) {
    const port = env.NGINX_LISTEN_PORT !== undefined ? Number(env.NGINX_LISTEN_PORT) : await choosePort();
    const statusPort = env.NGINX_STATUS_PORT !== undefined ? Number(env.NGINX_STATUS_PORT) : await choosePort();
    const fullEnv = {
      NGINX_WORKER_PROCESSES: '1',
      NGINX_TRUSTED_PROXY_CIDRS: '127.0.0.0/8',
      ...env,
      NGINX_LISTEN_PORT: String(port),
      NGINX_STATUS_PORT: String(statusPort),
    };
    try {
      return await (image === undefined ? startHostNginx(fullEnv, port, statusPort) : startImageNginx(image, fullEnv, port, statusPort));
    } catch (error) {
      const fixedPorts = env.NGINX_LISTEN_PORT !== undefined && env.NGINX_STATUS_PORT !== undefined;
      if (!(error instanceof NginxPortTakenError) || fixedPorts || attempt >= PORT_ATTEMPTS) throw error;
    }
  }
}

/**
 * `npm run test:images`: the built image's own entry point renders the configuration with its
 * bundled renderer and Debian's nodejs, and runs its nginx as the image's user, with the task
 * definition's read-only root filesystem and writable volumes.
 */
async function startImageNginx(image: ExportedImage, env: Readonly<Record<string, string>>, port: number, statusPort: number): Promise<RunningNginx> {
  const run = startImage(image, { env, writablePaths: Object.values(NGINX_WRITABLE_PATHS) });
  let etc: string;
  try {
    const volumeOf = (file: string): string | undefined => {
      const mount = Object.keys(run.volumes).find((path) => file === path || file.startsWith(`${path}/`));
      return mount === undefined ? undefined : join(run.volumes[mount] ?? '', file.slice(mount.length));
    };
    const conf = volumeOf('/etc/nginx');
    if (conf === undefined) throw new Error('the task definition has no writable /etc/nginx for the rendered configuration');
    etc = conf;
    // The image's nginx writes its pid file into a writable volume once every listening socket
    // is bound. A connection alone proves nothing: the renderer runs for seconds before nginx
    // binds, and another process handed the same port meanwhile answers at once.
    const pidFile = volumeOf(PRODUCTION_RUNTIME.pidFile);
    if (pidFile === undefined) throw new Error(`the task definition has no writable directory for nginx's pid file ${PRODUCTION_RUNTIME.pidFile}`);
    // The entry point execs nginx (through chroot and its shell): the master has the child's pid.
    const bound = (): boolean => logOf(pidFile).trim() === String(run.child.pid);
    // The image's start runs its renderer under Debian's node first; on a CI machine shared
    // with other suites that alone has taken more than 10 s.
    await waitForPort(port, run.child, () => logOf(run.stderrPath), 60, bound);
  } catch (error) {
    await run.stop('SIGKILL');
    throw error;
  }
  return {
    dir: etc,
    confPath: join(etc, 'nginx.conf'),
    accessLogPath: run.stdoutPath,
    errorLogPath: run.stderrPath,
    port,
    statusPort,
    async stop() {
      await run.stop();
    },
  };
}

async function startHostNginx(env: Readonly<Record<string, string>>, port: number, statusPort: number): Promise<RunningNginx> {
  const bin = nginxBinary();
  const config = renderToTempDir(env);
  const check = checkConfig(config);
  if (!check.ok) {
    rmSync(config.dir, { recursive: true, force: true });
    throw new Error(`nginx -t rejected the rendered configuration:\n${check.output}`);
  }
  const child = spawn(bin, ['-p', `${config.dir}/`, '-c', config.confPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-4000);
  });
  // The pid file holds the master's pid once every listening socket is bound (`nginx -t` above
  // left one with its own pid).
  const bound = (): boolean => logOf(join(config.dir, 'nginx.pid')).trim() === String(child.pid);
  try {
    await waitForPort(port, child, () => `${logOf(config.errorLogPath)}${stderr}`, 10, bound);
  } catch (error) {
    child.kill('SIGKILL');
    rmSync(config.dir, { recursive: true, force: true });
    throw error;
  }
  return {
    ...config,
    port,
    statusPort,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(config.dir, { recursive: true, force: true });
    },
  };
}

export interface RecordedRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly httpVersion: string;
}

export type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;

/** A `node:http` application instance that records what reached it. */
export interface Backend {
  readonly name: string;
  readonly port: number;
  /** `127.0.0.1:PORT`, as an NGINX_*_UPSTREAMS entry. */
  readonly address: string;
  readonly requests: RecordedRequest[];
  /** TCP connections accepted so far. */
  connections: number;
  handler: Handler;
  close(): Promise<void>;
}

/** Answers 200 with a JSON body naming the backend, the method and the URL. */
export const echo =
  (name: string): Handler =>
  (req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ backend: name, method: req.method, url: req.url }));
  };

export async function startBackend(name: string, handler: Handler = echo(name)): Promise<Backend> {
  const sockets = new Set<Socket>();
  const backend: Backend = {
    name,
    port: 0,
    address: '',
    requests: [],
    connections: 0,
    handler,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      backend.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, httpVersion: req.httpVersion });
      backend.handler(req, res, Buffer.concat(chunks));
    });
  });
  server.on('connection', (s) => {
    backend.connections += 1;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as AddressInfo).port;
  return Object.assign(backend, { port, address: `127.0.0.1:${port}` });
}

export interface Reply {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  readonly text: string;
}

/** One HTTP/1.1 request on a fresh connection to 127.0.0.1 (no automatic decompression). */
export function send(
  port: number,
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: Buffer | string; host?: string } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: options.host ?? '127.0.0.1', port, path, method: options.method ?? 'GET', headers: options.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8') });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/**
 * A port on which nothing listens (a primary that is down): a privileged one, which no other
 * test process can be handed and bind meanwhile, as it could a free port (refused-port.ts).
 */
export async function deadAddress(): Promise<string> {
  return `127.0.0.1:${await refusedLoopbackPort()}`;
}

/** One application backend with nginx in front of it. */
export interface AppBehindNginx {
  readonly app: Backend;
  readonly nginx: RunningNginx;
}

/**
 * Starts a backend named `app` and nginx with both pools pointing at it; `env` adds or
 * overrides settings. A thunk for `env` runs after the backend listens, so ports it asks for
 * (a {@link deadAddress}) can never be the backend's. If nginx fails to start, the backend is
 * closed before the error propagates, since the caller never receives it.
 *
 * @example
 * ```ts
 * let app: Backend;
 * let nginx: RunningNginx;
 * beforeAll(async () => ({ app, nginx } = await startAppBehindNginx({ NGINX_API_CACHE_TTL: '60' })));
 * afterAll(() => stopAll(nginx, app));
 * ```
 */
export async function startAppBehindNginx(
  env: Readonly<Record<string, string>> | (() => Promise<Readonly<Record<string, string>>>) = {},
  handler?: Handler,
): Promise<AppBehindNginx> {
  const app = await startBackend('app', handler);
  try {
    const extra = typeof env === 'function' ? await env() : env;
    const nginx = await startNginx({ NGINX_READ_UPSTREAMS: app.address, NGINX_WRITE_UPSTREAMS: app.address, ...extra });
    return { app, nginx };
  } catch (error) {
    await app.close();
    throw error;
  }
}

/**
 * Stops nginx, then the backends, skipping whatever a failed `beforeAll` never started.
 *
 * @example
 * ```ts
 * afterAll(() => stopAll(nginx, read, write));
 * ```
 */
export async function stopAll(nginx: RunningNginx | undefined, ...backends: readonly (Backend | undefined)[]): Promise<void> {
  await nginx?.stop();
  for (const backend of backends) await backend?.close();
}
