import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { deadAddress, send, startAppBehindNginx, startBackend, startNginx, stopAll, type Backend, type RunningNginx } from './harness.js';

describe('request routing by method', () => {
  let read: Backend;
  let write: Backend;
  let nginx: RunningNginx;

  beforeAll(async () => {
    read = await startBackend('read');
    write = await startBackend('write');
    nginx = await startNginx({ NGINX_READ_UPSTREAMS: read.address, NGINX_WRITE_UPSTREAMS: write.address });
  });
  afterAll(() => stopAll(nginx, read, write));

  it('sends GET to the read pool', async () => {
    const res = await send(nginx.port, '/api/v1/documents/get-1');

    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({ backend: 'read', method: 'GET' });
  });

  it('sends HEAD to the read pool', async () => {
    const res = await send(nginx.port, '/documents/head-1', { method: 'HEAD' });

    expect(res.status).toBe(200);
    expect(read.requests.some((r) => r.url === '/documents/head-1')).toBe(true);
    expect(write.requests.some((r) => r.url === '/documents/head-1')).toBe(false);
  });

  it.each(['POST', 'PUT', 'PATCH', 'DELETE'])('sends %s to the write pool', async (method) => {
    const res = await send(nginx.port, `/api/v1/documents/${method.toLowerCase()}-1`, { method, body: '{}' });

    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({ backend: 'write', method });
  });
});

describe('failover to backup servers', () => {
  let backup: Backend;
  let primary: Backend | undefined;
  let nginx: RunningNginx | undefined;

  beforeAll(async () => {
    backup = await startBackend('backup');
  });
  afterEach(async () => {
    await stopAll(nginx, primary);
    nginx = undefined;
    primary = undefined;
    backup.requests.length = 0;
  });
  afterAll(async () => {
    await backup?.close();
  });

  it('serves a GET from the backup when the primary is down', async () => {
    const down = await deadAddress();
    nginx = await startNginx({ NGINX_READ_UPSTREAMS: down, NGINX_WRITE_UPSTREAMS: down, NGINX_BACKUP_UPSTREAMS: backup.address });

    const res = await send(nginx.port, '/api/v1/documents/failover');

    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({ backend: 'backup' });
  });

  it('retries a GET on the backup when the primary drops the connection mid-request', async () => {
    primary = await startBackend('primary', (req) => req.socket.destroy());
    nginx = await startNginx({ NGINX_READ_UPSTREAMS: primary.address, NGINX_WRITE_UPSTREAMS: primary.address, NGINX_BACKUP_UPSTREAMS: backup.address });

    const res = await send(nginx.port, '/api/v1/documents/dropped');

    expect(primary.requests).toHaveLength(1);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({ backend: 'backup' });
  });

  it('never sends a POST that reached a primary to another server', async () => {
    primary = await startBackend('primary', (req) => req.socket.destroy());
    nginx = await startNginx({ NGINX_READ_UPSTREAMS: primary.address, NGINX_WRITE_UPSTREAMS: primary.address, NGINX_BACKUP_UPSTREAMS: backup.address });

    const res = await send(nginx.port, '/api/v1/documents', { method: 'POST', body: '{"title":"once"}' });

    expect(primary.requests).toHaveLength(1);
    expect(res.status).toBe(502);
    expect(backup.requests).toHaveLength(0);
  });
});

describe('upstream connection pooling', () => {
  let app: Backend;
  let nginx: RunningNginx;

  beforeAll(async () => {
    ({ app, nginx } = await startAppBehindNginx());
  });
  afterAll(() => stopAll(nginx, app));

  it('reuses one upstream connection for sequential requests from separate clients', async () => {
    for (let i = 0; i < 20; i += 1) {
      const res = await send(nginx.port, `/api/v1/documents/${i}`, { method: 'PUT', body: '{}' });
      expect(res.status).toBe(200);
    }

    expect(app.requests).toHaveLength(20);
    expect(app.connections).toBe(1);
  });

  it('speaks HTTP/1.1 upstream without a Connection: close header', async () => {
    await send(nginx.port, '/api/v1/documents/version', { method: 'PUT', body: '{}', headers: { connection: 'close' } });

    const seen = app.requests.at(-1);
    expect(seen?.httpVersion).toBe('1.1');
    expect(seen?.headers.connection).toBeUndefined();
  });
});
