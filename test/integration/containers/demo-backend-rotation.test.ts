/**
 * The demo backend's logins on AWS: each shard's secret read through Secrets Manager
 * (aws-sdk-client-mock) when the task connects, and read again when a rotation with alternating
 * users has changed the password of the login its pools started with, against real PostgreSQL
 * shards and the backend's own connection layer (ShardConnection) serving HTTP.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { alternateUser } from '../../../functions/adapters/postgres/app-role.js';
import { parseBackendEnv, ShardConnection, startBackendServer } from '../../../containers/backend/server.js';
import { DEMO_SHARD_IDS, startDemoShards, type DemoShards } from '../../support/demo-backend.js';

const arnOf = (shardId: string): string => `arn:aws:secretsmanager:eu-west-1:123456789012:secret:ca-dms-dev/${shardId}/app-AbCdEf`;
const SECRET_ARNS = new Map(DEMO_SHARD_IDS.map((id) => [id, arnOf(id)]));

const sm = mockClient(SecretsManagerClient);
let shards: DemoShards;
/** What every shard's secret says now (AWSCURRENT). Both shard databases are on one server, whose users are shared. */
let current: { username: string; password: string };
const running: Array<{ server: Server; connection: ShardConnection }> = [];
const logs: string[] = [];

function secretsSayCurrent(): void {
  sm.on(GetSecretValueCommand).callsFake(() => ({ SecretString: JSON.stringify({ ...current, host: '127.0.0.1', port: shards.server.port, dbname: 'postgres' }) }));
}

async function startBackend(): Promise<{ base: string; connection: ShardConnection }> {
  const settings = { ...parseBackendEnv({ ...shards.backendEnv({ secretArns: SECRET_ARNS }), CA_DMS_SERVICE: 'backend-write' }), PORT: 0 };
  const connection = new ShardConnection(settings, (level, message, fields) => logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`), new SecretsManagerClient({ region: 'eu-west-1' }));
  const server = await startBackendServer(settings, connection, '127.0.0.1');
  running.push({ server, connection });
  void connection.start();
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, connection };
}

async function createUser(base: string, email: string): Promise<number> {
  const res = await fetch(`${base}/api/v1/users`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email, display_name: email }) });
  await res.arrayBuffer();
  return res.status;
}

const readsOf = (arn: string): number => sm.commandCalls(GetSecretValueCommand).filter((c) => c.args[0].input.SecretId === arn).length;

/** The users of the backend's shard pools (not its catalog pool, which names its service), by session. */
async function shardPoolUsers(): Promise<string[]> {
  const { rows } = await shards.admin('shard_001').query<{ usename: string }>("select distinct usename from pg_stat_activity where application_name = 'ca-dms-demo-backend' order by 1");
  return rows.map((r) => r.usename);
}

beforeAll(async () => {
  shards = await startDemoShards();
  await shards.publishSlotMap();
  current = shards.login;
});
afterEach(async () => {
  for (const { server, connection } of running.splice(0)) {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await connection.close();
  }
  sm.reset();
});
afterAll(async () => {
  sm.restore();
  await shards?.stop();
});

describe('the demo backend with its logins in Secrets Manager', () => {
  it('reads each shard\'s secret when it connects, and serves with the login it names', async () => {
    secretsSayCurrent();
    const { base, connection } = await startBackend();
    await vi.waitFor(() => expect(connection.route).toBeDefined(), { timeout: 20_000 });

    const status = await createUser(base, 'first-read@example.org');

    expect(status).toBe(201);
    expect([...SECRET_ARNS.values()].map(readsOf)).toEqual([1, 1]);
    expect(await shardPoolUsers()).toEqual([shards.login.username]);
  });

  it('waits while Secrets Manager refuses the read, saying which secret and why, and connects once it answers', async () => {
    sm.on(GetSecretValueCommand).rejects(new Error('User: arn:aws:sts::123456789012:assumed-role/task is not authorized to perform: secretsmanager:GetSecretValue'));
    const { base, connection } = await startBackend();
    await vi.waitFor(() => expect(readsOf(arnOf('shard_001'))).toBeGreaterThan(0), { timeout: 10_000 });

    const waiting = await fetch(`${base}/api/v1/users`);
    const detail = ((await waiting.json()) as { detail: string }).detail;
    secretsSayCurrent();
    await vi.waitFor(() => expect(connection.route).toBeDefined(), { timeout: 20_000 });

    expect(waiting.status).toBe(503);
    expect(detail).toContain(`reading database secret ${arnOf('shard_001')} failed: User: arn:aws:sts::123456789012:assumed-role/task is not authorized`);
    expect(logs.filter((l) => l.includes('not authorized'))).toHaveLength(1);
  });

  it('follows a rotation under its live pools: requests in flight finish, new connections log in as the clone the re-read secret names, nothing is lost or run twice', async () => {
    secretsSayCurrent();
    const { base, connection } = await startBackend();
    await vi.waitFor(() => expect(connection.route).toBeDefined(), { timeout: 20_000 });
    expect(await createUser(base, 'rotation-warm@example.org')).toBe(201);
    const readsBefore = [...SECRET_ARNS.values()].map(readsOf);
    const original = shards.login.username;
    const clone = alternateUser(original);

    // Requests in flight while the secret rotates, in the order the alternating-users rotation
    // runs: set the clone's password (setSecret), make the clone current (finishSecret), and,
    // one rotation later, change the password of the user the pools started with.
    const inFlight = Array.from({ length: 6 }, (_, i) => createUser(base, `rotation-a${i}@example.org`));
    await shards.admin('shard_001').query(`alter role ${clone} password 'rotated clone pass'`);
    current = { username: clone, password: 'rotated clone pass' };
    await shards.admin('shard_001').query(`alter role ${original} password 'rotated away'`);
    const duringRotation = await Promise.all(inFlight);

    // The pools' idle connections end (as on a task whose connections idled out): each request
    // after this needs a new login, which the old password no longer opens.
    await shards.admin('shard_001').query("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'ca-dms-demo-backend' and state = 'idle'");
    await vi.waitFor(() => expect(connection.pools?.nodes().map((n) => n.pool.totalCount)).toEqual(DEMO_SHARD_IDS.map(() => 0)), { timeout: 10_000 });
    const afterRotation = await Promise.all(Array.from({ length: 12 }, (_, i) => createUser(base, `rotation-b${i}@example.org`)));

    expect(duringRotation).toEqual(Array<number>(6).fill(201));
    expect(afterRotation).toEqual(Array<number>(12).fill(201));
    // Every accepted request wrote its row exactly once.
    let rows = 0;
    for (const id of DEMO_SHARD_IDS) rows += Number((await shards.admin(id).query<{ n: string }>("select count(*) as n from users where email like 'rotation-%'")).rows[0]?.n);
    expect(rows).toBe(1 + 6 + 12);
    expect(await shardPoolUsers()).toEqual([clone]);
    // Logins refused together share one read: at most one per pool that logs in to the shard
    // (shard_001: its shard pool and the catalog's; shard_002: its shard pool), not one per request.
    const reads = [...SECRET_ARNS.values()].map((arn, i) => readsOf(arn) - (readsBefore[i] ?? 0));
    expect(reads.reduce((a, b) => a + b)).toBeGreaterThan(0);
    expect(reads[0]).toBeLessThanOrEqual(2);
    expect(reads[1]).toBeLessThanOrEqual(1);
  });
});
