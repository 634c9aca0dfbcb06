/**
 * The demo backend (containers/backend/server.ts) against real PostgreSQL shards given to it as
 * a deployment gives them: credential-free URLs, the application's least-privilege login, the
 * catalog on the first shard. The built image runs the same scenario (test/images).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseBackendEnv, ShardConnection, startBackendServer, type BackendLog } from '../../../containers/backend/server.js';
import { startDemoShards, type DemoShards } from '../../support/demo-backend.js';
import { makeServerCertificate } from '../../support/tls.js';

interface Answer {
  status: number;
  headers: Headers;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- tests read arbitrary JSON answers
}

async function call(base: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text === '' ? null : JSON.parse(text) };
}

async function until(what: string, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** In-process backends (settings, shard connection, HTTP server), logging into `logs`, all stopped at once. */
class Backends {
  readonly logs: string[] = [];
  readonly #running: Array<{ server: Server; connection: ShardConnection }> = [];
  readonly #log: BackendLog = (level, message, fields) => this.logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);

  /** Starts one on a free port; `connected` says whether to wait for its first connection attempt. */
  async start(env: Record<string, string>, connected: boolean): Promise<{ base: string; connection: ShardConnection }> {
    const settings = { ...parseBackendEnv(env), PORT: 0 };
    const connection = new ShardConnection(settings, this.#log);
    const server = await startBackendServer(settings, connection, '127.0.0.1', this.#log);
    this.#running.push({ server, connection });
    const first = connection.start();
    if (connected) await first;
    return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, connection };
  }

  async stop(): Promise<void> {
    for (const { server, connection } of this.#running) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await connection.close();
    }
  }
}

describe('the demo backend over real shards', () => {
  let shards: DemoShards;
  const backends = new Backends();

  let writer: string;
  let writerConnection: ShardConnection;
  let reader: string;

  beforeAll(async () => {
    shards = await startDemoShards();
    ({ base: writer, connection: writerConnection } = await backends.start({ ...shards.backendEnv(), CA_DMS_SERVICE: 'backend-write' }, false));
    reader = (await backends.start({ ...shards.backendEnv(), CA_DMS_SERVICE: 'backend-read', DATABASE_READ_ONLY: 'true' }, false)).base;
  });
  afterAll(async () => {
    await backends.stop();
    await shards?.stop();
  });

  it('is healthy but answers 503 while the catalog has no slot map (a first deploy, before the migrations)', async () => {
    // The writer's own first attempt: the log is shared with the reader, whose line could come
    // first while the writer still waited on its first connection (its 503 then said so instead).
    await until("the writer's first attempt ended with its reason", async () => writerConnection.waitingFor.includes('no slot map'));

    const health = await call(writer, 'GET', '/health');
    const create = await call(writer, 'POST', '/api/v1/users', { email: 'early@example.org', display_name: 'Early' });

    expect(health.status).toBe(200);
    expect(health.body).toMatchObject({ status: 'ok', database: 'connecting' });
    expect(create.status).toBe(503);
    expect(create.body.detail).toContain('the catalog has no slot map yet');
  });

  it('serves once the control plane has published the slot map: a user and a document created and read back, with the application login', async () => {
    await shards.publishSlotMap();
    await until('both backends are ready', async () => (await call(writer, 'GET', '/health')).body.database === 'ready' && (await call(reader, 'GET', '/health/readonly')).body.database === 'ready');

    const user = await call(writer, 'POST', '/api/v1/users', { email: 'ada@example.org', display_name: 'Ada' });
    expect(user.status).toBe(201);
    const doc = await call(writer, 'POST', '/api/v1/documents', { owner_id: user.body.id, title: 'Notes', content: { body: 'first' } });
    expect(doc.status).toBe(201);
    const read = await call(reader, 'GET', `/api/v1/documents/${doc.body.id as string}?owner=${user.body.id as string}`, undefined, { 'x-read-after': doc.headers.get('x-read-token') ?? '' });

    expect(read.status).toBe(200);
    expect(read.body).toMatchObject({ id: doc.body.id, owner_id: user.body.id, title: 'Notes', content: { body: 'first' }, shard_id: doc.body.shard_id });
    // The row is where the router said, on the owner's shard.
    const { rows } = await shards.admin(doc.body.shard_id).query('select title from documents where id = $1', [doc.body.id]);
    expect(rows).toEqual([{ title: 'Notes' }]);
    // Nothing ran as the master: every session the backends opened used the application login.
    const sessions = await shards.admin('shard_001').query<{ usename: string }>("select distinct usename from pg_stat_activity where application_name like 'ca-dms-demo-backend%'");
    expect(sessions.rows).toEqual([{ usename: 'ca_dms_app_demo' }]);
  });

  it('refuses writes on the read pool, which still serves reads', async () => {
    const write = await call(reader, 'POST', '/api/v1/users', { email: 'bob@example.org', display_name: 'Bob' });
    const list = await call(reader, 'GET', '/api/v1/users?limit=5');

    expect(write.status).toBe(405);
    expect(list.status).toBe(200);
    expect(list.body.items.map((u: { email: string }) => u.email)).toContain('ada@example.org');
  });

  it('answers a bad request with a problem document naming the field', async () => {
    const res = await call(writer, 'POST', '/api/v1/documents', { owner_id: 'not-a-uuid', title: '' });

    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect(res.body.invalid_params.map((p: { name: string }) => p.name)).toEqual(expect.arrayContaining(['body.owner_id', 'body.title']));
  });
});

describe('the demo backend over verified TLS (as to RDS, with verify-full)', () => {
  const tls = makeServerCertificate('127.0.0.2');
  let shards: DemoShards;
  const backends = new Backends();
  const dir = mkdtempSync(join(tmpdir(), 'ca-dms-backend-tls-'));

  beforeAll(async () => {
    shards = await startDemoShards({ settings: { ...tls.postgresSettings, listen_addresses: '127.0.0.1,127.0.0.2' } });
    await shards.publishSlotMap();
  });
  afterAll(async () => {
    await backends.stop();
    await shards?.stop();
    tls.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  const start = (extra: Record<string, string>) => backends.start({ ...shards.backendEnv({ host: '127.0.0.2', verifyFull: true }), ...extra }, true);

  it('refuses a server whose certificate the RDS bundle does not vouch for', async () => {
    const { base, connection } = await start({});

    expect((await call(base, 'GET', '/health')).body.database).toBe('connecting');
    expect(connection.waitingFor).toBe('unable to verify the first certificate');
  });

  it('connects, verified, with the CAs of the file DATABASE_CA_BUNDLE names, and serves documents', async () => {
    const bundle = join(dir, 'ca.pem');
    writeFileSync(bundle, tls.caPem);
    const { base } = await start({ DATABASE_CA_BUNDLE: bundle });

    const user = await call(base, 'POST', '/api/v1/users', { email: 'tls@example.org', display_name: 'TLS' });
    expect(user.status).toBe(201);
    const { rows } = await shards.admin('shard_001').query<{ ssl: boolean }>("select bool_and(s.ssl) as ssl from pg_stat_ssl s join pg_stat_activity a using (pid) where a.application_name like 'ca-dms-demo-backend%'");
    expect(rows).toEqual([{ ssl: true }]);
  });
});
