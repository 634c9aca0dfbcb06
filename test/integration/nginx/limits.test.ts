import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { send, startAppBehindNginx, stopAll, type Backend, type RunningNginx } from './harness.js';

const CLIENT_A = '203.0.113.10';
const CLIENT_B = '203.0.113.11';

async function statuses(port: number, path: string, count: number, headers: Record<string, string>, method = 'GET'): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i += 1) out.push((await send(port, path, { method, headers, body: method === 'GET' ? undefined : '{}' })).status);
  return out;
}

// One request per minute plus a small burst: the burst is spent long before the bucket refills.
const tightLimits = {
  NGINX_RATE_LIMIT_AUTH: '1r/m',
  NGINX_RATE_LIMIT_AUTH_BURST: '2',
  NGINX_RATE_LIMIT_API: '1r/m',
  NGINX_RATE_LIMIT_API_BURST: '3',
  NGINX_RATE_LIMIT_UPLOADS: '2r/m',
  NGINX_RATE_LIMIT_UPLOADS_BURST: '1',
};

describe('rate limits behind a trusted proxy', () => {
  let app: Backend;
  let nginx: RunningNginx;

  beforeAll(async () => {
    ({ app, nginx } = await startAppBehindNginx({ NGINX_TRUSTED_PROXY_CIDRS: '127.0.0.0/8', ...tightLimits }));
  });
  afterAll(() => stopAll(nginx, app));

  it('answers 429 with a problem body once the authentication burst is spent', async () => {
    const codes = await statuses(nginx.port, '/api/v1/auth/login', 4, { 'x-forwarded-for': CLIENT_A }, 'POST');
    const limited = await send(nginx.port, '/api/v1/auth/login', { method: 'POST', headers: { 'x-forwarded-for': CLIENT_A } });

    expect(codes).toEqual([200, 200, 200, 429]);
    expect(limited.status).toBe(429);
    expect(limited.headers['content-type']).toBe('application/problem+json');
    expect(JSON.parse(limited.text)).toMatchObject({ status: 429 });
    expect(limited.headers['retry-after']).toBe('60');
  });

  it('keeps a separate bucket for another client address forwarded by the trusted proxy', async () => {
    await statuses(nginx.port, '/api/v1/auth/refresh', 4, { 'x-forwarded-for': CLIENT_A }, 'POST');

    const other = await statuses(nginx.port, '/api/v1/auth/refresh', 1, { 'x-forwarded-for': `198.51.100.7, ${CLIENT_B}` }, 'POST');

    expect(other).toEqual([200]);
  });

  it('limits API requests in their own bucket, apart from authentication', async () => {
    const client = '203.0.113.20';
    await statuses(nginx.port, '/api/v1/auth/login', 4, { 'x-forwarded-for': client }, 'POST');

    const codes = await statuses(nginx.port, '/api/v1/documents', 5, { 'x-forwarded-for': client }, 'POST');

    expect(codes).toEqual([200, 200, 200, 200, 429]);
  });

  it('limits uploads in their own bucket', async () => {
    const codes = await statuses(nginx.port, '/api/v1/documents/upload', 3, { 'x-forwarded-for': '203.0.113.30' }, 'POST');

    expect(codes).toEqual([200, 200, 429]);
  });

  it('tells a limited client when its endpoint\'s bucket admits the next request', async () => {
    const headers = { 'x-forwarded-for': '203.0.113.31' };
    await statuses(nginx.port, '/api/v1/documents/upload', 2, headers, 'POST');

    const limited = await send(nginx.port, '/api/v1/documents/upload', { method: 'POST', headers });

    expect(limited.status).toBe(429);
    expect(limited.headers['retry-after']).toBe('30');
  });

  it.each(['/health', '/health/readonly'])('never rate limits %s', async (path) => {
    const codes = await statuses(nginx.port, path, 25, { 'x-forwarded-for': CLIENT_A });

    expect(new Set(codes)).toEqual(new Set([200]));
  });
});

describe('rate limits behind an untrusted peer', () => {
  let app: Backend;
  let nginx: RunningNginx;

  beforeAll(async () => {
    ({ app, nginx } = await startAppBehindNginx({ NGINX_TRUSTED_PROXY_CIDRS: '10.0.0.0/8', ...tightLimits }));
  });
  afterAll(() => stopAll(nginx, app));

  it('ignores X-Forwarded-For, so forged addresses share the peer bucket', async () => {
    await statuses(nginx.port, '/api/v1/auth/login', 3, { 'x-forwarded-for': CLIENT_A }, 'POST');

    const forged = await statuses(nginx.port, '/api/v1/auth/login', 1, { 'x-forwarded-for': CLIENT_B }, 'POST');

    expect(forged).toEqual([429]);
  });

  it('tells the application the peer address, not the forged one', async () => {
    await send(nginx.port, '/health', { headers: { 'x-forwarded-for': CLIENT_A } });

    expect(app.requests.at(-1)?.headers['x-real-ip']).toBe('127.0.0.1');
  });
});

describe('request body limits', () => {
  let app: Backend;
  let nginx: RunningNginx;
  const mb = (n: number) => Buffer.alloc(Math.round(n * 1024 * 1024), 'a');

  beforeAll(async () => {
    ({ app, nginx } = await startAppBehindNginx({ NGINX_CLIENT_MAX_BODY_MB: '1', NGINX_UPLOAD_MAX_BODY_MB: '2' }));
  });
  afterAll(() => stopAll(nginx, app));

  it('accepts an upload above the general limit but within the upload limit', async () => {
    const res = await send(nginx.port, '/api/v1/documents/upload', { method: 'POST', body: mb(1.5) });

    expect(res.status).toBe(200);
  });

  it('rejects an upload above the upload limit with 413 before it reaches the application', async () => {
    const before = app.requests.length;

    const res = await send(nginx.port, '/api/v1/documents/upload', { method: 'POST', body: mb(2.5) });

    expect(res.status).toBe(413);
    expect(res.headers['content-type']).toBe('application/problem+json');
    expect(app.requests.length).toBe(before);
  });

  it('rejects other request bodies above the general limit with 413', async () => {
    const res = await send(nginx.port, '/api/v1/documents', { method: 'POST', body: mb(1.5) });

    expect(res.status).toBe(413);
  });
});
