import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseBackendEnv, startBackendServer } from '../../../containers/backend/server.js';

describe('parseBackendEnv', () => {
  it('takes port 8000 and a writable role when nothing is set', () => {
    expect(parseBackendEnv({})).toEqual({ PORT: 8000, DATABASE_READ_ONLY: false, KEEPALIVE_TIMEOUT_SECONDS: 5 });
  });

  it('names every invalid variable with its value', () => {
    expect(() => parseBackendEnv({ PORT: '80', CA_DMS_SERVICE: 'backend', DATABASE_READ_ONLY: 'yes' })).toThrow(
      /PORT: must be at least 1024 \(the image runs unprivileged\) \(got "80"\)[\s\S]*CA_DMS_SERVICE: must be backend-read, backend-write, frontend or worker[\s\S]*DATABASE_READ_ONLY: must be true or false/,
    );
  });
});

describe('the demo backend server', () => {
  let server: Server;
  let base: string;

  beforeAll(async () => {
    // Port 0: the kernel picks a free one (the environment would insist on 1024 or above).
    server = await startBackendServer({ ...parseBackendEnv({ CA_DMS_SERVICE: 'worker' }), PORT: 0 }, '127.0.0.1');
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it.each(['/health', '/health/readonly'])('answers %s with 200 and who it is', async (path) => {
    const res = await fetch(`${base}${path}`);

    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok', service: 'worker', read_only: false });
  });

  it('answers an unknown path with a 404 problem document', async () => {
    const res = await fetch(`${base}/api/v1/documents`);

    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect(await res.json()).toMatchObject({ status: 404, title: 'Not Found' });
  });

  it('allows only GET and HEAD on its endpoints', async () => {
    const res = await fetch(`${base}/health`, { method: 'POST' });

    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('GET, HEAD');
  });
});
