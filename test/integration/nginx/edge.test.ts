import { readFileSync } from 'node:fs';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SECURITY_HEADERS } from '../../../containers/nginx/render.js';
import { deadAddress, send, startAppBehindNginx, stopAll, type Backend, type Reply, type RunningNginx } from './harness.js';

const document = JSON.stringify({
  items: Array.from({ length: 400 }, (_, i) => ({ id: i, title: `Document ${i}`, tags: ['policy', 'draft'] })),
});

describe('the public edge', () => {
  let app: Backend;
  let nginx: RunningNginx;

  beforeAll(async () => {
    ({ app, nginx } = await startAppBehindNginx(
      async () => ({ NGINX_WRITE_UPSTREAMS: await deadAddress(), NGINX_RATE_LIMIT_AUTH: '1r/m', NGINX_RATE_LIMIT_AUTH_BURST: '1' }),
      (req, res) => {
        res.setHeader('x-powered-by', 'FastAPI');
        res.setHeader('x-frame-options', 'SAMEORIGIN');
        res.setHeader('content-type', 'application/json');
        if (req.url === '/api/v1/missing') {
          res.statusCode = 404;
          res.end('{"detail":"not found"}');
          return;
        }
        res.end(req.url === '/api/v1/documents/big' ? document : '{"ok":true}');
      },
    ));
  });
  afterAll(() => stopAll(nginx, app));

  const expectSecurityHeaders = (res: Reply) => {
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) {
      expect(res.headers[name.toLowerCase()], name).toBe(value);
    }
  };

  it('adds the security headers to a proxied 200, replacing the application\'s own', async () => {
    const res = await send(nginx.port, '/api/v1/documents/plain');

    expect(res.status).toBe(200);
    expectSecurityHeaders(res);
  });

  it.each([
    ['an application 404', '/api/v1/missing'],
    ['an nginx 404', '/nginx_status'],
  ])('adds the security headers to %s', async (_label, path) => {
    const res = await send(nginx.port, path);

    expect(res.status).toBe(404);
    expectSecurityHeaders(res);
  });

  it('adds the security headers to a 429', async () => {
    for (let i = 0; i < 2; i += 1) await send(nginx.port, '/api/v1/auth/login', { headers: { 'x-forwarded-for': '203.0.113.50' } });

    const res = await send(nginx.port, '/api/v1/auth/login', { headers: { 'x-forwarded-for': '203.0.113.50' } });

    expect(res.status).toBe(429);
    expectSecurityHeaders(res);
  });

  it('adds the security headers to a 502 when the pool is unreachable', async () => {
    const res = await send(nginx.port, '/api/v1/documents', { method: 'POST', body: '{}' });

    expect(res.status).toBe(502);
    expect(res.headers['content-type']).toBe('application/problem+json');
    expectSecurityHeaders(res);
  });

  it('names neither the nginx version nor the application framework', async () => {
    const res = await send(nginx.port, '/api/v1/documents/plain');

    expect(res.headers.server).toBe('nginx');
    expect(res.headers['x-powered-by']).toBeUndefined();
  });

  it('compresses with gzip to a body that decodes to the original', async () => {
    const res = await send(nginx.port, '/api/v1/documents/big', { headers: { 'accept-encoding': 'gzip' } });

    expect(res.headers['content-encoding']).toBe('gzip');
    expect(res.body.length).toBeLessThan(document.length / 4);
    expect(gunzipSync(res.body).toString('utf8')).toBe(document);
  });

  it('compresses with brotli to a body that decodes to the original', async () => {
    const res = await send(nginx.port, '/api/v1/documents/big', { headers: { 'accept-encoding': 'br' } });

    expect(res.headers['content-encoding']).toBe('br');
    expect(brotliDecompressSync(res.body).toString('utf8')).toBe(document);
  });

  it('sends the identity body to clients that accept no encoding and asks the application for identity', async () => {
    const res = await send(nginx.port, '/api/v1/documents/big');

    expect(res.headers['content-encoding']).toBeUndefined();
    expect(res.text).toBe(document);
    expect(app.requests.every((r) => r.headers['accept-encoding'] === undefined)).toBe(true);
  });

  it('writes one JSON object per request to the access log, with the real client address', async () => {
    await send(nginx.port, '/api/v1/documents/logged?page=2', { headers: { 'x-forwarded-for': '203.0.113.77' } });

    const lines = readFileSync(nginx.accessLogPath, 'utf8').trim().split('\n');
    const entry: unknown = JSON.parse(lines.at(-1) ?? '');
    expect(lines.every((l) => typeof JSON.parse(l) === 'object')).toBe(true);
    expect(entry).toMatchObject({
      method: 'GET',
      uri: '/api/v1/documents/logged?page=2',
      status: 200,
      remote_addr: '203.0.113.77',
      upstream_addr: app.address,
      cache_status: 'MISS',
    });
  });
});

describe('the status endpoint', () => {
  let app: Backend;
  let nginx: RunningNginx;

  beforeAll(async () => {
    ({ app, nginx } = await startAppBehindNginx());
  });
  afterAll(() => stopAll(nginx, app));

  it('serves stub_status on the status port', async () => {
    const res = await send(nginx.statusPort, '/nginx_status');

    expect(res.status).toBe(200);
    expect(res.text).toMatch(/^Active connections: \d+/);
  });

  it('does not serve it on the public port, nor pass it to the application', async () => {
    const res = await send(nginx.port, '/nginx_status');

    expect(res.status).toBe(404);
    expect(res.text).not.toContain('Active connections');
    expect(app.requests).toHaveLength(0);
  });

  it('binds the status port to 127.0.0.1 only', async () => {
    await expect(send(nginx.statusPort, '/nginx_status', { host: '127.0.0.2' })).rejects.toThrow(/ECONNREFUSED/);
  });
});
