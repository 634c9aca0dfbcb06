import { spawnSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, openSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundleRenderer } from '../../../containers/nginx/context.js';
import { PRODUCTION_RUNTIME } from '../../../containers/nginx/render.js';
import { TEMPLATE_PATH, checkConfig, nginxBinary, renderToTempDir, type RenderedConfig } from './harness.js';

const variants: Record<string, Record<string, string>> = {
  'the defaults': {},
  'tuned workers and timeouts': {
    NGINX_WORKER_PROCESSES: '4',
    NGINX_WORKER_CONNECTIONS: '1024',
    NGINX_KEEPALIVE_TIMEOUT: '120',
    NGINX_UPSTREAM_KEEPALIVE_TIMEOUT: '50',
    NGINX_APP_KEEPALIVE_TIMEOUT: '75',
    NGINX_PROXY_CONNECT_TIMEOUT: '1',
    NGINX_PROXY_READ_TIMEOUT: '300',
  },
  'several servers per pool with backups': {
    NGINX_READ_UPSTREAMS: '127.0.0.1:8001, 127.0.0.1:8002,[::1]:8003',
    NGINX_WRITE_UPSTREAMS: 'localhost:8010',
    NGINX_BACKUP_UPSTREAMS: '127.0.0.1:8001,127.0.0.1:8020',
    NGINX_UPSTREAM_MAX_FAILS: '1',
    NGINX_UPSTREAM_FAIL_TIMEOUT: '30',
  },
  'IPv4 and IPv6 trusted proxies': { NGINX_TRUSTED_PROXY_CIDRS: '10.20.0.0/16,fd00::/8' },
  'custom paths, cookies, limits and caches': {
    NGINX_AUTH_PATH: '/auth/',
    NGINX_UPLOAD_PATH: '/files/upload',
    NGINX_API_PATH: '/v2/',
    NGINX_STATIC_PATH: '/assets/',
    NGINX_SESSION_COOKIES: 'ca_dms.sid,jwt',
    NGINX_RATE_LIMIT_API: '500r/s',
    NGINX_RATE_LIMIT_API_BURST: '1000',
    NGINX_API_CACHE_TTL: '5',
    NGINX_STATIC_CACHE_TTL: '31536000',
    NGINX_UPLOAD_MAX_BODY_MB: '1024',
  },
};

describe('the test harness', () => {
  it('fails with the install command when nginx is absent, rather than skipping', () => {
    expect(() => nginxBinary(['/nonexistent/nginx'])).toThrow(/nginx is not installed.*apt-get install nginx libnginx-mod-http-brotli-filter/);
  });

  it('fails with the install command when the brotli module is absent', () => {
    expect(() => nginxBinary(undefined, '/nonexistent/modules')).toThrow(/apt-get install libnginx-mod-http-brotli-filter/);
  });
});

describe('nginx -t', () => {
  const rendered: RenderedConfig[] = [];
  afterAll(() => {
    for (const r of rendered) rmSync(r.dir, { recursive: true, force: true });
  });

  it.each(Object.entries(variants))('accepts the rendering of %s', (_name, env) => {
    const config = renderToTempDir({ NGINX_LISTEN_PORT: '18080', NGINX_STATUS_PORT: '18081', ...env });
    rendered.push(config);

    const result = checkConfig(config);

    expect(result.output).toContain('test is successful');
    expect(result.ok).toBe(true);
  });
});

describe('the bundled renderer the image runs', () => {
  let dir: string;
  let bundle: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ca-dms-nginx-cli-'));
    bundle = join(dir, 'render.mjs');
    bundleRenderer(bundle);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const run = (env: Record<string, string>, args: string[]) =>
    spawnSync(process.execPath, [bundle, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8' });

  it('stops with exit 78, names the variable and writes nothing when a value is invalid', () => {
    const out = join(dir, 'invalid.conf');

    const res = run({ NGINX_KEEPALIVE_TIMEOUT: '30' }, ['--template', TEMPLATE_PATH, '--out', out]);

    expect(res.status).toBe(78);
    expect(res.stderr).toContain('NGINX_KEEPALIVE_TIMEOUT: must be at least 61');
    expect(existsSync(out)).toBe(false);
  });

  it('stops with exit 78 on a misspelt variable and suggests the right name', () => {
    const res = run({ NGINX_WORKER_CONECTIONS: '1024' }, ['--template', TEMPLATE_PATH, '--out', join(dir, 'typo.conf')]);

    expect(res.status).toBe(78);
    expect(res.stderr).toContain('NGINX_WORKER_CONECTIONS: is not a setting of the nginx sidecar (did you mean NGINX_WORKER_CONNECTIONS?)');
  });

  it('stops with exit 64 on missing flags', () => {
    const res = run({}, ['--template', TEMPLATE_PATH]);

    expect(res.status).toBe(64);
    expect(res.stderr).toContain('--out is required');
  });

  it('writes the production configuration, which nginx -t accepts', () => {
    nginxBinary();
    const out = join(dir, 'nginx.conf');

    const res = run({ NGINX_READ_UPSTREAMS: '127.0.0.1:8000,127.0.0.1:8001' }, ['--template', TEMPLATE_PATH, '--out', out]);
    expect(res.status).toBe(0);

    // Only the container's state directories move into the temp dir; everything else (port
    // 8080, all addresses, the module path) is checked as the image renders it.
    const root = join(dir, 'root');
    const moved = (p: string) => join(root, p);
    const { pidFile, tempDir, cacheDir } = PRODUCTION_RUNTIME;
    for (const p of [tempDir, cacheDir]) mkdirSync(moved(p), { recursive: true });
    mkdirSync(moved('/run'), { recursive: true });
    chmodSync(dir, 0o755);
    const conf = readFileSync(out, 'utf8')
      .replaceAll(`${pidFile};`, `${moved(pidFile)};`)
      .replaceAll(`${tempDir}/`, `${moved(tempDir)}/`)
      .replaceAll(`${cacheDir}/`, `${moved(cacheDir)}/`);
    writeFileSync(out, conf);
    // Access logs go to /dev/stdout, which nginx cannot open when stdout is a socket (node's
    // default pipe); in the container it is a FIFO, here a file.
    const stdout = openSync(join(dir, 'stdout.log'), 'w');
    const check = spawnSync(nginxBinary(), ['-t', '-p', `${dir}/`, '-c', out], { encoding: 'utf8', stdio: ['ignore', stdout, 'pipe'] });
    closeSync(stdout);

    expect(conf).toContain('listen 8080 default_server;');
    // The image starts nginx unprivileged; a `user` directive would only draw a warning.
    expect(conf).not.toMatch(/^user /m);
    expect(check.stderr).toContain('test is successful');
  });
});
