/**
 * The built demo backend image, run as ECS runs it: its user, the RDS CA bundle it carries, the
 * documents API against real PostgreSQL shards (credential-free URLs, each shard's login in
 * SHARD_<ID>_DB_USERNAME/PASSWORD, or read from Secrets Manager through its secret's ARN as the
 * services stack gives it, and read again after a rotation), its health endpoints, the task
 * definition's health check command inside it, and the load balancer's requests through the
 * built nginx sidecar image in front of it.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { rdsCaBundlePem } from '../../containers/backend/context.js';
import { DEMO_BACKEND_USER, NGINX_WRITABLE_PATHS } from '../../lib/services/sidecar-service.js';
import { send, takenFirst } from '../integration/nginx/harness.js';
import { DEMO_SHARD_IDS, startDemoShards, type DemoShards } from '../support/demo-backend.js';
import { startSecretsManagerEndpoint, type SecretsManagerEndpoint } from '../support/secrets-manager-endpoint.js';
import { makeServerCertificate, type ServerCertificate } from '../support/tls.js';
import { holdsListener, startImage, startImageOnPorts, uidsOf, waitUntil, type ExportedImage, type RunningImage } from './rootfs.js';

const imageOf = (key: 'backendImage' | 'nginxImage'): ExportedImage => {
  const image = inject(key);
  if (image === undefined) throw new Error(`no ${key} was exported (run through npm run test:images)`);
  return image;
};

/** The application container's writable path in the task definition (lib/services/sidecar-service.ts). */
const APP_WRITABLE = ['/tmp'];

const health = async (port: number, path = '/health'): Promise<{ database?: string }> => JSON.parse((await send(port, path)).text) as { database?: string };

const post = async (port: number, path: string, body: unknown): Promise<{ status: number; json: Record<string, string>; headers: Record<string, unknown> }> => {
  const res = await send(port, path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, json: JSON.parse(res.text) as Record<string, string>, headers: res.headers };
};

describe('the demo backend image', () => {
  it('runs as the unprivileged user the task definition names', () => {
    const image = imageOf('backendImage');

    expect(image.uid).not.toBe(0);
    expect(`${image.uid}:${image.gid}`).toBe(DEMO_BACKEND_USER);
    expect(image.volumes).toEqual(expect.arrayContaining(APP_WRITABLE));
  });

  it('carries the Amazon RDS certificate authorities and points DATABASE_CA_BUNDLE at them', () => {
    const image = imageOf('backendImage');
    const path = image.env['DATABASE_CA_BUNDLE'];
    expect(path).toBe('/opt/ca-dms-backend/rds-ca-bundle.pem');
    const pem = readFileSync(join(image.rootfs, path ?? ''), 'utf8');
    const certificates = (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((c) => new X509Certificate(c));

    expect(pem).toBe(rdsCaBundlePem());
    expect(certificates.filter((c) => c.ca).length).toBe(certificates.length);
    // The current RDS CAs of the regions the project deploys to.
    for (const subject of ['Amazon RDS us-east-1 Root CA RSA2048 G1', 'Amazon RDS eu-west-1 Root CA RSA2048 G1', 'Amazon RDS us-east-1 Root CA ECC384 G1']) {
      expect(certificates.some((c) => c.subject.includes(`CN=${subject}`)), subject).toBe(true);
    }
  });

  it('stops with exit 78 naming each invalid variable', async () => {
    const run = startImage(imageOf('backendImage'), { env: { PORT: '80' }, writablePaths: APP_WRITABLE });
    const code = await run.exited;
    const stderr = readFileSync(run.stderrPath, 'utf8');
    await run.stop();

    expect(code).toBe(78);
    expect(stderr).toContain('PORT: must be at least 1024');
    expect(stderr).toContain('SHARDING_CONFIG_JSON: is required');
  });
});

describe('a task of the demo backend behind the nginx sidecar, both from their images, over real shards', () => {
  let shards: DemoShards;
  let writer: RunningImage;
  let reader: RunningImage;
  let nginx: RunningImage;
  let writerPort: number;
  let readerPort: number;
  let nginxPort: number;

  beforeAll(async () => {
    shards = await startDemoShards();
    // The environment the services stack gives the two pools' app containers.
    ({ run: writer, ports: { port: writerPort } } = await startImageOnPorts(imageOf('backendImage'), ['port'], ({ port }) => ({
      env: { ...shards.backendEnv(), PORT: String(port), CA_DMS_SERVICE: 'backend-write', DATABASE_READ_ONLY: 'false' },
      writablePaths: APP_WRITABLE,
    })));
    ({ run: reader, ports: { port: readerPort } } = await startImageOnPorts(imageOf('backendImage'), ['port'], ({ port }) => ({
      env: { ...shards.backendEnv(), PORT: String(port), CA_DMS_SERVICE: 'backend-read', DATABASE_READ_ONLY: 'true' },
      writablePaths: APP_WRITABLE,
    })));
    ({ run: nginx, ports: { listen: nginxPort } } = await startImageOnPorts(imageOf('nginxImage'), ['listen', 'status'], ({ listen, status }) => ({
      env: {
        NGINX_LISTEN_PORT: String(listen),
        NGINX_STATUS_PORT: String(status),
        NGINX_READ_UPSTREAMS: `127.0.0.1:${readerPort}`,
        NGINX_WRITE_UPSTREAMS: `127.0.0.1:${writerPort}`,
        NGINX_WORKER_PROCESSES: '1',
      },
      writablePaths: Object.values(NGINX_WRITABLE_PATHS),
    })));
  }, 120_000);
  afterAll(async () => {
    await nginx?.stop();
    await reader?.stop();
    await writer?.stop();
    await shards?.stop();
  });

  it('is healthy before the control plane has published a slot map, and says it is still connecting', async () => {
    expect((await send(nginxPort, '/health')).status).toBe(200);
    expect(await health(writerPort)).toMatchObject({ status: 'ok', service: 'backend-write', database: 'connecting' });
    expect((await post(nginxPort, '/api/v1/users', { email: 'early@example.org', display_name: 'Early' })).status).toBe(503);
  });

  it('creates a user and a document through nginx and reads the document back from the read pool', async () => {
    await shards.publishSlotMap();
    await waitUntil(writer, async () => (await health(writerPort)).database === 'ready');
    await waitUntil(reader, async () => (await health(readerPort, '/health/readonly')).database === 'ready');

    const user = await post(nginxPort, '/api/v1/users', { email: 'grace@example.org', display_name: 'Grace' });
    expect(user.status).toBe(201);
    const doc = await post(nginxPort, '/api/v1/documents', { owner_id: user.json['id'], title: 'From the image', content: { body: 'hello' } });
    expect(doc.status).toBe(201);
    const read = await send(nginxPort, `/api/v1/documents/${doc.json['id'] ?? ''}?owner=${user.json['id'] ?? ''}`, { headers: { 'x-read-after': String(doc.headers['x-read-token']) } });

    expect(read.status).toBe(200);
    expect(JSON.parse(read.text)).toMatchObject({ id: doc.json['id'], title: 'From the image', content: { body: 'hello' } });
  });

  it.each(['/health', '/health/readonly'])('answers the load balancer\'s %s through nginx with 200', async (path) => {
    const res = await send(nginxPort, path);

    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({ status: 'ok', database: 'ready' });
  });

  it('passes the container health check the task definition runs in the app container', async () => {
    const check = (path: string) =>
      startImage(imageOf('backendImage'), { command: ['curl', '-fsS', `http://127.0.0.1:${writerPort}${path}`], writablePaths: APP_WRITABLE });
    const healthy = check('/health');
    const missing = check('/no-such-endpoint');

    expect(await healthy.exited).toBe(0);
    // The same command fails on an endpoint that does not answer 2xx: the check can fail.
    expect(await missing.exited).toBe(22);
    await Promise.all([healthy.stop(), missing.stop()]);
  });

  it('starts a backend again on a fresh port when the one chosen was taken before it bound it, and answers from it', async () => {
    // Another process on the port chosen first, answering the health check as a backend would.
    const impostor = createServer((_req, res) => res.end('{"status":"ok","service":"impostor","database":"ready"}'));
    await new Promise<void>((r) => impostor.listen(0, '127.0.0.1', () => r()));
    const taken = (impostor.address() as AddressInfo).port;
    const { choosePort, given } = takenFirst(taken);
    try {
      const { run, ports } = await startImageOnPorts(
        imageOf('backendImage'),
        ['port'],
        ({ port }) => ({ env: { ...shards.backendEnv(), PORT: String(port), CA_DMS_SERVICE: 'worker' }, writablePaths: APP_WRITABLE }),
        { choosePort },
      );
      try {
        expect(given).toHaveLength(2);
        expect(ports.port).toBe(given[1]);
        expect(holdsListener(run.child.pid ?? -1, ports.port)).toBe(true);
        expect(await health(ports.port)).toMatchObject({ status: 'ok', service: 'worker' });
      } finally {
        await run.stop();
      }
    } finally {
      impostor.closeAllConnections();
      await new Promise<void>((r) => impostor.close(() => r()));
    }
  });

  it('runs the server as the image\'s user, not root', () => {
    expect(uidsOf(writer.child.pid ?? -1)).toEqual([imageOf('backendImage').uid, imageOf('backendImage').uid]);
  });

  it('ends with exit 0 on SIGTERM, ECS\'s stop signal', async () => {
    expect(await writer.stop('SIGTERM')).toBe(0);
  });
});

describe('the demo backend image over verified TLS', () => {
  let tls: ServerCertificate;
  let shards: DemoShards;
  const runs: RunningImage[] = [];

  beforeAll(async () => {
    tls = makeServerCertificate('127.0.0.2');
    shards = await startDemoShards({ settings: { ...tls.postgresSettings, listen_addresses: '127.0.0.1,127.0.0.2' } });
    await shards.publishSlotMap();
  }, 60_000);
  afterAll(async () => {
    for (const run of runs) await run.stop();
    await shards?.stop();
    tls?.remove();
  });

  const start = async (options: { env?: Record<string, string>; files?: Record<string, string> }): Promise<{ run: RunningImage; port: number }> => {
    const { run, ports } = await startImageOnPorts(imageOf('backendImage'), ['port'], ({ port }) => ({
      env: { ...shards.backendEnv({ host: '127.0.0.2', verifyFull: true }), PORT: String(port), CA_DMS_SERVICE: 'backend-write', ...options.env },
      writablePaths: APP_WRITABLE,
      ...(options.files ? { files: options.files } : {}),
    }));
    runs.push(run);
    return { run, port: ports.port };
  };

  it('verifies the shard\'s certificate against the image\'s RDS bundle: a certificate RDS did not issue is refused', async () => {
    const { run, port } = await start({});

    await waitUntil(run, async () => readFileSync(run.stderrPath, 'utf8').includes('unable to verify the first certificate'));
    expect(await health(port)).toMatchObject({ database: 'connecting' });
  });

  it('connects with verify-full when DATABASE_CA_BUNDLE names the CA that signed it', async () => {
    const { run, port } = await start({ env: { DATABASE_CA_BUNDLE: '/tmp/shards-ca.pem' }, files: { '/tmp/shards-ca.pem': tls.caPem } });

    await waitUntil(run, async () => (await health(port)).database === 'ready');
    expect((await post(port, '/api/v1/users', { email: 'tls@example.org', display_name: 'TLS' })).status).toBe(201);
  });
});

describe('the demo backend image with its shards\' logins in Secrets Manager (as on AWS)', () => {
  const arnOf = (shardId: string): string => `arn:aws:secretsmanager:eu-west-1:123456789012:secret:ca-dms-dev/${shardId}/app-AbCdEf`;
  let shards: DemoShards;
  let endpoint: SecretsManagerEndpoint;
  let login: { username: string; password: string };
  let run: RunningImage;
  let port: number;

  beforeAll(async () => {
    shards = await startDemoShards();
    await shards.publishSlotMap();
    login = shards.login;
    endpoint = await startSecretsManagerEndpoint(() => JSON.stringify({ ...login, host: '127.0.0.1', port: shards.server.port, dbname: 'postgres' }));
    ({ run, ports: { port } } = await startImageOnPorts(imageOf('backendImage'), ['port'], ({ port }) => ({
      env: { ...shards.backendEnv({ secretArns: new Map(DEMO_SHARD_IDS.map((id) => [id, arnOf(id)])) }), ...endpoint.env, PORT: String(port), CA_DMS_SERVICE: 'backend-write' },
      writablePaths: APP_WRITABLE,
    })));
  }, 120_000);
  afterAll(async () => {
    await run?.stop();
    await endpoint?.stop();
    await shards?.stop();
  });

  const shardPoolUsers = async (): Promise<string[]> =>
    (await shards.admin('shard_001').query<{ usename: string }>("select distinct usename from pg_stat_activity where application_name = 'ca-dms-demo-backend' order by 1")).rows.map((r) => r.usename);

  it('reads each shard\'s secret with a signed GetSecretValue (the SDK runs on the image\'s Node.js) and serves with that login', async () => {
    await waitUntil(run, async () => (await health(port)).database === 'ready');

    expect((await post(port, '/api/v1/users', { email: 'secret@example.org', display_name: 'Secret' })).status).toBe(201);
    expect(new Set(endpoint.requests.map((r) => r.secretId))).toEqual(new Set(DEMO_SHARD_IDS.map(arnOf)));
    expect(endpoint.requests.every((r) => r.target === 'secretsmanager.GetSecretValue' && r.authorization.startsWith('AWS4-HMAC-SHA256'))).toBe(true);
    expect(await shardPoolUsers()).toEqual([shards.login.username]);
  });

  it('reads the secret again when a rotation has changed its login\'s password, and serves as the clone it names', async () => {
    const original = shards.login.username;
    const clone = `${original}_clone`;
    const readsBefore = endpoint.requests.length;
    await shards.admin('shard_001').query(`alter role ${clone} password 'image clone pass'`);
    login = { username: clone, password: 'image clone pass' };
    await shards.admin('shard_001').query(`alter role ${original} password 'rotated away'`);
    // Its idle connections end, so the next requests need new logins.
    await shards.admin('shard_001').query("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'ca-dms-demo-backend' and state = 'idle'");

    // A request handed a connection the server has just ended may fail before the pool drops it;
    // a login refused for good would fail every one.
    let n = 0;
    await waitUntil(run, async () => (await post(port, '/api/v1/users', { email: `rotated-${n++}@example.org`, display_name: 'Rotated' })).status === 201);

    expect(endpoint.requests.length).toBeGreaterThan(readsBefore);
    expect(await shardPoolUsers()).toEqual([clone]);
  });
});
