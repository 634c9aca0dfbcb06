/**
 * The nginx harness itself: the ports it chooses are only free when chosen, and a test must never
 * end up talking to whatever process took one before nginx bound it. `npm run test:images` runs
 * these against the built sidecar image too (its nginx binds seconds after the start).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ephemeralRangeStart } from '../../support/refused-port.js';
import { deadAddress, send, startAppBehindNginx, startBackend, startNginx, stopAll, type Backend, type RunningNginx, takenFirst } from './harness.js';

describe('nginx harness ports', () => {
  let app: Backend;
  let impostor: Server;
  let nginx: RunningNginx | undefined;

  beforeAll(async () => {
    app = await startBackend('app');
    // Another process on the port chosen first: it answers HTTP, so a bare connect succeeds.
    impostor = createServer((_req, res) => res.end('{"backend":"impostor"}'));
    await new Promise<void>((r) => impostor.listen(0, '127.0.0.1', () => r()));
  });
  afterAll(async () => {
    await stopAll(nginx, app);
    impostor.closeAllConnections();
    await new Promise<void>((r) => impostor.close(() => r()));
  });

  it('starts nginx on new ports when a chosen one was taken before nginx bound it, and serves through nginx', async () => {
    const taken = (impostor.address() as AddressInfo).port;
    const { choosePort, given } = takenFirst(taken);

    nginx = await startNginx({ NGINX_READ_UPSTREAMS: app.address, NGINX_WRITE_UPSTREAMS: app.address }, { choosePort });
    const res = await send(nginx.port, '/api/v1/documents/through-nginx');

    expect(given).toHaveLength(4);
    expect(nginx.port).toBe(given[2]);
    expect(JSON.parse(res.text)).toMatchObject({ backend: 'app', url: '/api/v1/documents/through-nginx' });
    // Two starts of the image (each renders its configuration first) on a loaded machine.
  }, 120_000);

  it('still starts nginx directly when every port is free', async () => {
    const direct = await startAppBehindNginx();
    try {
      const res = await send(direct.nginx.port, '/api/v1/documents/direct');

      expect(JSON.parse(res.text)).toMatchObject({ backend: 'app' });
    } finally {
      await stopAll(direct.nginx, direct.app);
    }
  });

  it('names a dead upstream by a port below the kernel\'s ephemeral range, which no other test process can be handed and bind', async () => {
    // Another worker's free-port choice (its PostgreSQL, its nginx) comes from the ephemeral
    // range: a port this process chose there and left unbound can be given to it, and the "down"
    // primary then answers.
    const port = Number((await deadAddress()).split(':')[1]);

    expect(port).toBeGreaterThan(0);
    expect(port).toBeLessThan(ephemeralRangeStart());
    const down = await startNginx({ NGINX_READ_UPSTREAMS: await deadAddress(), NGINX_WRITE_UPSTREAMS: await deadAddress() });
    try {
      expect((await send(down.port, '/api/v1/documents/nobody-home')).status).toBe(502);
    } finally {
      await down.stop();
    }
  });
});
