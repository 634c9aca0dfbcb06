import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { send, startAppBehindNginx, stopAll, type Backend, type Handler, type RunningNginx } from './harness.js';

/** Per-URL behaviour of the application; every body says how often its URL was served. */
function appHandler(state: { failing: boolean }, app: () => Backend): Handler {
  return (req, res) => {
    const url = req.url ?? '';
    if (state.failing) {
      res.statusCode = 500;
      res.end('{"error":"down"}');
      return;
    }
    if (url.startsWith('/api/v1/login-state')) res.setHeader('set-cookie', 'session=fresh; HttpOnly');
    if (url.startsWith('/api/v1/private')) res.setHeader('cache-control', 'private, max-age=60');
    if (url.startsWith('/api/v1/no-store')) res.setHeader('cache-control', 'no-store');
    if (url === '/health') res.setHeader('cache-control', 'public, max-age=60');
    // The backend records a request before handling it: the first answer says served 1.
    const served = app().requests.filter((r) => r.url === url).length;
    const reply = () => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ url, served, authorized: req.headers.authorization !== undefined }));
    };
    if (url.startsWith('/api/v1/slow')) setTimeout(reply, 300);
    else reply();
  };
}

// nginx keeps validity in whole seconds and expires an entry once the clock passes
// valid_sec, so a 1 s TTL ends between 1 and 2 s after the response was stored.
const EXPIRY_MS = 2_100;

const hitsFor = (app: Backend, url: string) => app.requests.filter((r) => r.url === url).length;

describe('API and static caches', () => {
  const state = { failing: false };
  let app: Backend;
  let nginx: RunningNginx;

  beforeAll(async () => {
    // The handler reads `app` only while serving, which is after the assignment below.
    ({ app, nginx } = await startAppBehindNginx({ NGINX_API_CACHE_TTL: '60' }, appHandler(state, () => app)));
  });
  afterAll(() => stopAll(nginx, app));

  it('answers the second GET from the cache after one backend hit', async () => {
    const first = await send(nginx.port, '/api/v1/documents/cached');
    const second = await send(nginx.port, '/api/v1/documents/cached');

    expect(first.headers['x-cache-status']).toBe('MISS');
    expect(second.headers['x-cache-status']).toBe('HIT');
    expect(second.text).toBe(first.text);
    expect(hitsFor(app, '/api/v1/documents/cached')).toBe(1);
  });

  it('lets one request fill a missing entry while concurrent ones wait for it', async () => {
    const replies = await Promise.all(Array.from({ length: 5 }, () => send(nginx.port, '/api/v1/slow/report')));

    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    expect(hitsFor(app, '/api/v1/slow/report')).toBe(1);
  });

  it('caches static assets', async () => {
    await send(nginx.port, '/static/app.js');
    const second = await send(nginx.port, '/static/app.js');

    expect(second.headers['x-cache-status']).toBe('HIT');
    expect(hitsFor(app, '/static/app.js')).toBe(1);
  });

  it('answers a request with Authorization from the application even when the entry is cached', async () => {
    await send(nginx.port, '/api/v1/documents/shared');
    await send(nginx.port, '/api/v1/documents/shared');

    const authorized = await send(nginx.port, '/api/v1/documents/shared', { headers: { authorization: 'Bearer t0k3n' } });

    expect(authorized.headers['x-cache-status']).toBe('BYPASS');
    expect(JSON.parse(authorized.text)).toMatchObject({ authorized: true });
    expect(hitsFor(app, '/api/v1/documents/shared')).toBe(2);
  });

  it('never stores the response to a request with Authorization', async () => {
    await send(nginx.port, '/api/v1/documents/mine', { headers: { authorization: 'Bearer t0k3n' } });

    const anonymous = await send(nginx.port, '/api/v1/documents/mine');

    expect(anonymous.headers['x-cache-status']).toBe('MISS');
    expect(JSON.parse(anonymous.text)).toMatchObject({ authorized: false });
  });

  it('bypasses the cache for a request with a session cookie', async () => {
    await send(nginx.port, '/api/v1/documents/cookie');

    const withSession = await send(nginx.port, '/api/v1/documents/cookie', { headers: { cookie: 'theme=dark; sessionid=abc' } });

    expect(withSession.headers['x-cache-status']).toBe('BYPASS');
    expect(hitsFor(app, '/api/v1/documents/cookie')).toBe(2);
  });

  it('still serves cached entries to requests whose cookies are not session cookies', async () => {
    await send(nginx.port, '/api/v1/documents/theme');

    const withPreference = await send(nginx.port, '/api/v1/documents/theme', { headers: { cookie: 'theme=dark' } });

    expect(withPreference.headers['x-cache-status']).toBe('HIT');
  });

  it('never serves a response carrying Set-Cookie from the cache', async () => {
    const replies = [];
    for (let i = 0; i < 3; i += 1) replies.push(await send(nginx.port, '/api/v1/login-state'));

    expect(replies.map((r) => r.headers['x-cache-status'])).not.toContain('HIT');
    expect(replies.every((r) => r.headers['set-cookie']?.[0] === 'session=fresh; HttpOnly')).toBe(true);
    expect(hitsFor(app, '/api/v1/login-state')).toBe(3);
  });

  it.each(['/api/v1/private/profile', '/api/v1/no-store/profile'])('never serves %s (private / no-store) from the cache', async (url) => {
    const replies = [];
    for (let i = 0; i < 3; i += 1) replies.push(await send(nginx.port, url));

    expect(replies.map((r) => r.headers['x-cache-status'])).not.toContain('HIT');
    expect(hitsFor(app, url)).toBe(3);
  });

  it('never caches /health even when the application allows it', async () => {
    const replies = [];
    for (let i = 0; i < 3; i += 1) replies.push(await send(nginx.port, '/health'));

    expect(replies.map((r) => r.headers['x-cache-status'])).toEqual(['UNCACHED', 'UNCACHED', 'UNCACHED']);
    expect(hitsFor(app, '/health')).toBe(3);
  });

  it('marks proxied writes UNCACHED', async () => {
    const res = await send(nginx.port, '/api/v1/documents', { method: 'POST', body: '{}' });

    expect(res.headers['x-cache-status']).toBe('UNCACHED');
  });
});

describe('stale entries', () => {
  const state = { failing: false };
  let app: Backend;
  let nginx: RunningNginx;

  beforeAll(async () => {
    // The handler reads `app` only while serving, which is after the assignment below.
    ({ app, nginx } = await startAppBehindNginx({ NGINX_API_CACHE_TTL: '1' }, appHandler(state, () => app)));
  });
  afterAll(() => stopAll(nginx, app));

  it('serves the stale entry when the backend fails after the TTL', async () => {
    const fresh = await send(nginx.port, '/api/v1/documents/stale');
    state.failing = true;
    await sleep(EXPIRY_MS);

    const stale = await send(nginx.port, '/api/v1/documents/stale');
    state.failing = false;

    expect(stale.status).toBe(200);
    expect(stale.headers['x-cache-status']).toBe('STALE');
    expect(stale.text).toBe(fresh.text);
  });

  it('refreshes an expired entry in the background', async () => {
    await send(nginx.port, '/api/v1/documents/refresh');
    await sleep(EXPIRY_MS);

    const stale = await send(nginx.port, '/api/v1/documents/refresh');
    await expect.poll(() => hitsFor(app, '/api/v1/documents/refresh'), { timeout: 2_000 }).toBe(2);
    const refreshed = await send(nginx.port, '/api/v1/documents/refresh');

    expect(stale.headers['x-cache-status']).toBe('STALE');
    expect(JSON.parse(stale.text)).toMatchObject({ served: 1 });
    expect(refreshed.headers['x-cache-status']).toBe('HIT');
    expect(JSON.parse(refreshed.text)).toMatchObject({ served: 2 });
  });
});
