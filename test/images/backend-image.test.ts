/**
 * The built demo backend image, run as ECS runs it: its user, its health endpoints on the
 * port the task sets, the task definition's health check command inside it, and the load
 * balancer's health checks through the built nginx sidecar image in front of it.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { DEMO_BACKEND_USER, NGINX_WRITABLE_PATHS } from '../../lib/services/sidecar-service.js';
import { freePort, send } from '../integration/nginx/harness.js';
import { startImage, uidsOf, waitUntil, type ExportedImage, type RunningImage } from './rootfs.js';

const imageOf = (key: 'backendImage' | 'nginxImage'): ExportedImage => {
  const image = inject(key);
  if (image === undefined) throw new Error(`no ${key} was exported (run through npm run test:images)`);
  return image;
};

/** The application container's writable path in the task definition (lib/services/sidecar-service.ts). */
const APP_WRITABLE = ['/tmp'];

const listening = (port: number, path = '/health') => () =>
  send(port, path).then(
    () => true,
    () => false,
  );

describe('the demo backend image', () => {
  it('runs as the unprivileged user the task definition names', () => {
    const image = imageOf('backendImage');

    expect(image.uid).not.toBe(0);
    expect(`${image.uid}:${image.gid}`).toBe(DEMO_BACKEND_USER);
    expect(image.volumes).toEqual(expect.arrayContaining(APP_WRITABLE));
  });

  it('stops with exit 78 naming the variable when a setting is invalid', async () => {
    const run = startImage(imageOf('backendImage'), { env: { PORT: '80' }, writablePaths: APP_WRITABLE });
    const code = await run.exited;
    const stderr = readFileSync(run.stderrPath, 'utf8');
    await run.stop();

    expect(code).toBe(78);
    expect(stderr).toContain('PORT: must be at least 1024');
  });
});

describe('a task of the demo backend behind the nginx sidecar, both from their images', () => {
  let app: RunningImage;
  let nginx: RunningImage;
  let appPort: number;
  let nginxPort: number;

  beforeAll(async () => {
    appPort = await freePort();
    nginxPort = await freePort();
    // The environment the services stack gives the two containers.
    app = startImage(imageOf('backendImage'), {
      env: { PORT: String(appPort), CA_DMS_SERVICE: 'backend-read', DATABASE_READ_ONLY: 'true' },
      writablePaths: APP_WRITABLE,
    });
    await waitUntil(app, listening(appPort));
    nginx = startImage(imageOf('nginxImage'), {
      env: {
        NGINX_LISTEN_PORT: String(nginxPort),
        NGINX_STATUS_PORT: String(await freePort()),
        NGINX_READ_UPSTREAMS: `127.0.0.1:${appPort}`,
        NGINX_WRITE_UPSTREAMS: `127.0.0.1:${appPort}`,
        NGINX_WORKER_PROCESSES: '1',
      },
      writablePaths: Object.values(NGINX_WRITABLE_PATHS),
    });
    await waitUntil(nginx, listening(nginxPort));
  });
  afterAll(async () => {
    await nginx?.stop();
    await app?.stop();
  });

  it('passes the container health check the task definition runs in the app container', async () => {
    const check = (path: string) =>
      startImage(imageOf('backendImage'), { command: ['curl', '-fsS', `http://127.0.0.1:${appPort}${path}`], writablePaths: APP_WRITABLE });
    const healthy = check('/health');
    const missing = check('/no-such-endpoint');

    expect(await healthy.exited).toBe(0);
    // The same command fails on an endpoint that does not answer 2xx: the check can fail.
    expect(await missing.exited).toBe(22);
    await Promise.all([healthy.stop(), missing.stop()]);
  });

  it.each(['/health', '/health/readonly'])('answers the load balancer\'s %s through nginx with 200', async (path) => {
    const res = await send(nginxPort, path);

    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toEqual({ status: 'ok', service: 'backend-read', read_only: true });
  });

  it('runs the server as the image\'s user, not root', () => {
    expect(uidsOf(app.child.pid ?? -1)).toEqual([imageOf('backendImage').uid, imageOf('backendImage').uid]);
  });

  it('ends with exit 0 on SIGTERM, ECS\'s stop signal', async () => {
    expect(await app.stop('SIGTERM')).toBe(0);
  });
});
