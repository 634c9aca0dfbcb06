/**
 * The built nginx sidecar image itself: who it runs as, what ECS can mount writable, and what
 * its entry point does with bad settings. Its request handling is tested by the sidecar's
 * behaviour tests (test/integration/nginx), which `npm run test:images` runs against it too.
 */
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { DEFAULT_NGINX_PORT } from '../../lib/config/deployment-config.js';
import { NGINX_CONTAINER_USER, NGINX_WRITABLE_PATHS } from '../../lib/services/sidecar-service.js';
import { send, startBackend, type Backend, takenFirst } from '../integration/nginx/harness.js';
import { holdsListener, startImage, startImageOnPorts, uidsOf, type ExportedImage, type RunningImage } from './rootfs.js';

const nginxImage = (): ExportedImage => {
  const image = inject('nginxImage');
  if (image === undefined) throw new Error('no nginx image was exported (run through npm run test:images)');
  return image;
};

const writablePaths = Object.values(NGINX_WRITABLE_PATHS);

describe('the nginx sidecar image', () => {
  it('runs as the unprivileged user the task definition names', () => {
    const image = nginxImage();

    expect(image.uid).not.toBe(0);
    expect(`${image.uid}:${image.gid}`).toBe(NGINX_CONTAINER_USER);
  });

  it('declares a VOLUME at every path the task mounts writable, so Fargate gives them the image\'s owner', () => {
    expect(nginxImage().volumes).toEqual(expect.arrayContaining(writablePaths));
  });

  it('exposes the port the services listen on and stops gracefully on SIGQUIT', () => {
    const image = nginxImage();

    expect(image.exposedPorts).toEqual([`${DEFAULT_NGINX_PORT}/tcp`]);
    expect(image.stopSignal).toBe('SIGQUIT');
  });

  it('stops with exit 78 naming the variable, before nginx starts, when a setting is invalid', async () => {
    const run = startImage(nginxImage(), { env: { NGINX_KEEPALIVE_TIMEOUT: '30', NGINX_WORKER_CONECTIONS: '1024' }, writablePaths });
    const code = await run.exited;
    const stderr = readFileSync(run.stderrPath, 'utf8');
    await run.stop();

    expect(code).toBe(78);
    expect(stderr).toContain('NGINX_KEEPALIVE_TIMEOUT: must be at least 61');
    expect(stderr).toContain('did you mean NGINX_WORKER_CONNECTIONS?');
    expect(stderr).toContain('nginx was not started');
  });
});

describe('the nginx sidecar image, started', () => {
  let app: Backend;
  let run: RunningImage;
  let port: number;

  beforeAll(async () => {
    app = await startBackend('app');
    ({ run, ports: { listen: port } } = await startImageOnPorts(nginxImage(), ['listen', 'status'], ({ listen, status }) => ({
      env: {
        NGINX_LISTEN_PORT: String(listen),
        NGINX_STATUS_PORT: String(status),
        NGINX_READ_UPSTREAMS: app.address,
        NGINX_WRITE_UPSTREAMS: app.address,
        NGINX_WORKER_PROCESSES: '1',
      },
      writablePaths,
    })));
  });
  afterAll(async () => {
    await run?.stop();
    await app?.close();
  });

  it('runs the nginx master as the image\'s user, not root', () => {
    const pid = run.child.pid ?? -1;

    expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8')).toContain('nginx: master process');
    expect(uidsOf(pid)).toEqual([nginxImage().uid, nginxImage().uid]);
  });

  it('proxies the load balancer\'s health checks to the application', async () => {
    const res = await send(port, '/health/readonly');

    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({ backend: 'app', url: '/health/readonly' });
  });

  it('says on stderr what it rendered, leaving stdout to the JSON access log', async () => {
    expect(readFileSync(run.stderrPath, 'utf8')).toContain('nginx-render: wrote /etc/nginx/nginx.conf');
    // nginx writes a request's log line once it has sent the response: the health check above may
    // have had its answer before its line reached the file (seen once under CI load: stdout empty).
    const completeLines = (): string[] => readFileSync(run.stdoutPath, 'utf8').split('\n').slice(0, -1);
    await expect.poll(completeLines, { timeout: 5_000, interval: 50 }).not.toHaveLength(0);
    for (const line of completeLines()) {
      expect(() => JSON.parse(line) as unknown, line).not.toThrow();
    }
  });

  it('ends with exit 0 on SIGQUIT, ECS\'s stop signal for it', async () => {
    const code = await run.stop('SIGQUIT');

    expect(code).toBe(0);
  });
});

describe('the nginx sidecar image, when a port chosen for it was taken before it bound it', () => {
  let app: Backend;
  let impostor: Server;
  let run: RunningImage | undefined;

  beforeAll(async () => {
    app = await startBackend('app');
    // Another process on the port chosen first (another worker's server, handed the same free
    // port): it answers HTTP at once, while the image's nginx takes seconds to bind.
    impostor = createServer((_req, res) => res.end('{"backend":"impostor"}'));
    await new Promise<void>((r) => impostor.listen(0, '127.0.0.1', () => r()));
  });
  afterAll(async () => {
    await run?.stop();
    await app?.close();
    impostor?.closeAllConnections();
    await new Promise<void>((r) => impostor?.close(() => r()));
  });

  it('starts again on fresh ports, and the port handed back is its own nginx\'s', async () => {
    const taken = (impostor.address() as AddressInfo).port;
    const { choosePort, given } = takenFirst(taken);

    const started = await startImageOnPorts(
      nginxImage(),
      ['listen', 'status'],
      ({ listen, status }) => ({
        env: { NGINX_LISTEN_PORT: String(listen), NGINX_STATUS_PORT: String(status), NGINX_READ_UPSTREAMS: app.address, NGINX_WRITE_UPSTREAMS: app.address, NGINX_WORKER_PROCESSES: '1' },
        writablePaths,
      }),
      { choosePort },
    );
    run = started.run;
    const res = await send(started.ports.listen, '/health/readonly');

    expect(given).toHaveLength(4);
    expect(started.ports).toEqual({ listen: given[2], status: given[3] });
    expect(holdsListener(run.child.pid ?? -1, started.ports.listen)).toBe(true);
    expect(JSON.parse(res.text)).toMatchObject({ backend: 'app', url: '/health/readonly' });
  });
});
