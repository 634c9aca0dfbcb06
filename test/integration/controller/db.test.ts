/**
 * The functions' PostgreSQL pools against a real server: credentials re-read from Secrets
 * Manager (aws-sdk-client-mock) when a rotation changed them under a live pool, the Amazon RDS
 * CA bundle on every non-loopback pool, and node deadlines that the server itself enforces.
 */
import { X509Certificate } from 'node:crypto';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { withNodeDeadline } from '../../../functions/adapters/postgres/deadline.js';
import { commitHeartbeat } from '../../../functions/adapters/postgres/replica-lag.js';
import type { ShardNode } from '../../../functions/adapters/postgres/shard-pools.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { RDS_CA_BUNDLE } from '../../../functions/adapters/postgres/tls.js';
import { createPool, CredentialsReadError, DatabaseSecretError, isAuthenticationFailure, readSecret, SecretPool } from '../../../functions/handlers/shared/db.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';
import { SilentRelay } from '../sharding/fixtures/silent-relay.js';

const SECRET_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:catalog-AbCdEf';
const sm = mockClient(SecretsManagerClient);
const secrets = new SecretsManagerClient({ region: 'eu-west-1' });

let server: TestPostgres;
let admin: pg.Pool;
const pools: pg.Pool[] = [];

beforeAll(async () => {
  server = await startTestPostgres();
  admin = new pg.Pool({ connectionString: server.url, max: 2 });
  await admin.query("create role app_user login password 'first'");
  await admin.query("create role app_user_clone login password 'clone-pass'");
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
  await admin.end();
  await server.stop();
});
beforeEach(() => sm.reset());

function secretSays(username: string, password: string): void {
  sm.on(GetSecretValueCommand).resolves({ SecretString: JSON.stringify({ username, password, host: '127.0.0.1', port: server.port, dbname: 'postgres' }) });
}

/** Ends the pool's open connections from the server side, so its next query logs in again. */
async function dropConnectionsOf(user: string, pool: pg.Pool): Promise<void> {
  await admin.query('select pg_terminate_backend(pid) from pg_stat_activity where usename = $1', [user]);
  for (let i = 0; i < 50 && (await admin.query('select 1 from pg_stat_activity where usename = $1', [user])).rowCount !== 0; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  // The pool learns of its terminated idle connections asynchronously; a query handed one first
  // fails with 57P01, which is not the rotation these tests are about.
  await vi.waitFor(() => expect(pool.idleCount).toBe(0), { timeout: 5_000 });
}

describe('credentials rotated under a live pool', () => {
  it('re-reads the secret when the password was changed, and the next query succeeds', async () => {
    await admin.query("alter role app_user password 'first'");
    secretSays('app_user', 'first');
    const pool = await createPool({ secretArn: SECRET_ARN }, secrets);
    pools.push(pool);
    expect((await pool.query<{ u: string }>('select current_user as u')).rows[0]?.u).toBe('app_user');

    await admin.query("alter role app_user password 'second'");
    secretSays('app_user', 'second');
    await dropConnectionsOf('app_user', pool);
    const after = await pool.query<{ u: string }>('select current_user as u');

    expect(after.rows[0]?.u).toBe('app_user');
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(2);
  });

  it('follows the alternating-users rotation to the other user', async () => {
    await admin.query("alter role app_user password 'first'");
    secretSays('app_user', 'first');
    const pool = await createPool({ secretArn: SECRET_ARN }, secrets, { max: 2 });
    pools.push(pool);
    await pool.query('select 1');

    // The rotation makes the clone current and changes the old user's password.
    await admin.query("alter role app_user password 'rotated-away'");
    secretSays('app_user_clone', 'clone-pass');
    await dropConnectionsOf('app_user', pool);
    const [a, b] = await Promise.all([pool.query<{ u: string }>('select current_user as u'), pool.query<{ u: string }>('select current_user as u, pg_sleep(0.05)')]);

    expect([a.rows[0]?.u, b.rows[0]?.u]).toEqual(['app_user_clone', 'app_user_clone']);
    // Two logins refused together read the secret once more, not twice.
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(2);
  });

  it('gives up with the authentication error when the secret is still wrong', async () => {
    await admin.query("alter role app_user password 'first'");
    secretSays('app_user', 'not-the-password');
    const pool = await createPool({ secretArn: SECRET_ARN }, secrets);
    pools.push(pool);

    const err: unknown = await pool.query('select 1').catch((e: unknown) => e);

    expect(isAuthenticationFailure(err)).toBe(true);
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(2);
  });
});

describe('re-reads that cannot run away (single flight, interval, backoff)', () => {
  /** A pool logged in as app_user with `password`, re-reading through the mocked client, on a clock the test moves. */
  async function poolWith(password: string, max: number): Promise<{ pool: SecretPool; clock: { now: number } }> {
    const clock = { now: 0 };
    const pool = new SecretPool({ host: '127.0.0.1', port: server.port, database: 'postgres', user: 'app_user', password, max }, () => readSecret(secrets, SECRET_ARN), {
      minRefreshIntervalMs: 1000,
      maxRefreshBackoffMs: 4000,
      now: () => clock.now,
    });
    pool.on('error', () => undefined);
    pools.push(pool);
    return { pool, clock };
  }
  const failureOf = (pool: pg.Pool): Promise<unknown> => pool.query('select 1').then(() => 'connected', (e: unknown) => e);

  it('reads the secret once for eight connections refused together, and all eight then log in as the user it names', async () => {
    await admin.query("alter role app_user password 'rotated-away'");
    secretSays('app_user_clone', 'clone-pass');
    const { pool } = await poolWith('first', 8);

    const users = await Promise.all(Array.from({ length: 8 }, () => pool.query<{ u: string }>('select current_user as u, pg_sleep(0.05)')));

    expect(users.map((r) => r.rows[0]?.u)).toEqual(Array<string>(8).fill('app_user_clone'));
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(1);
  });

  it('fails a refused login with a clear error naming the secret when Secrets Manager refuses the read, and backs off before reading again', async () => {
    await admin.query("alter role app_user password 'rotated-away'");
    sm.on(GetSecretValueCommand).rejects(new Error('User is not authorized to perform: secretsmanager:GetSecretValue'));
    const { pool, clock } = await poolWith('first', 1);

    const first = await failureOf(pool);
    const again = await failureOf(pool); // within the backoff: no read
    clock.now += 1000;
    const afterOne = await failureOf(pool); // 1 s after the first failure: one read, which fails too
    clock.now += 1000;
    const stillBackingOff = await failureOf(pool); // the second failure in a row waits 2 s
    clock.now += 1000;
    secretSays('app_user_clone', 'clone-pass');
    const recovered = await pool.query<{ u: string }>('select current_user as u');

    // The refused login named, the source's failure its cause (h166: a caller can tell the two apart).
    expect(first).toBeInstanceOf(CredentialsReadError);
    expect((first as Error).cause).toBeInstanceOf(DatabaseSecretError);
    expect(((first as Error).cause as Error).message).toBe(`reading database secret ${SECRET_ARN} failed: User is not authorized to perform: secretsmanager:GetSecretValue`);
    expect(((first as CredentialsReadError).refused as { code?: unknown }).code).toBe('28P01');
    expect([again, afterOne, stillBackingOff]).toEqual([first, expect.any(CredentialsReadError), expect.any(CredentialsReadError)]);
    expect([again, afterOne, stillBackingOff].map((e) => (e as Error).cause)).toEqual([expect.any(DatabaseSecretError), expect.any(DatabaseSecretError), expect.any(DatabaseSecretError)]);
    expect(recovered.rows[0]?.u).toBe('app_user_clone');
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(3);
  });

  it('reads a secret that still names a refused login at most once per interval, failing with the login\'s own error in between', async () => {
    await admin.query("alter role app_user password 'rotated-away'");
    secretSays('app_user', 'still-wrong');
    const { pool, clock } = await poolWith('first', 1);

    const refused = [await failureOf(pool), await failureOf(pool), await failureOf(pool)];
    const readsWithinInterval = sm.commandCalls(GetSecretValueCommand).length;
    clock.now += 1000;
    await failureOf(pool);

    expect(refused.every(isAuthenticationFailure)).toBe(true);
    expect(readsWithinInterval).toBe(1);
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(2);
  });

  it('never re-runs a statement: a query that fails after its login succeeded fails once, with no re-read', async () => {
    await admin.query("alter role app_user password 'first'");
    const { pool } = await poolWith('first', 1);

    const err = await pool.query("select 1 / 0").catch((e: unknown) => e);

    expect((err as { code?: string }).code).toBe('22012');
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(0);
  });
});

describe('TLS against the Amazon RDS certificate authorities', () => {
  it('ships a bundle with the RDS CAs and the roots of RDS Proxy certificates', () => {
    const subjects = RDS_CA_BUNDLE.map((pem) => new X509Certificate(pem).subject);

    expect(subjects.some((s) => /CN=Amazon RDS .*Root CA RSA2048 G1/.test(s))).toBe(true);
    expect(subjects.some((s) => /CN=Amazon Root CA 1/.test(s))).toBe(true);
  });

  it('creates a pool for a secret with a non-loopback host with verified TLS and the bundle as its CAs', async () => {
    sm.on(GetSecretValueCommand).resolves({ SecretString: JSON.stringify({ username: 'u', password: 'p', host: 'catalog.abc.eu-west-1.rds.amazonaws.com', port: 5432, dbname: 'catalog' }) });

    const pool = await createPool({ secretArn: SECRET_ARN, host: 'proxy.proxy-abc.eu-west-1.rds.amazonaws.com' }, secrets);
    pools.push(pool);

    expect(pool.options.ssl).toEqual({ rejectUnauthorized: true, ca: RDS_CA_BUNDLE });
  });

  it('creates URL and shard pools with the bundle, never letting sslmode swap it for the default CAs', async () => {
    const url = 'postgresql://u:p@shard1.abc.eu-west-1.rds.amazonaws.com:5432/cadms?sslmode=verify-full';
    const catalog = await createPool({ url }, undefined);
    const shards = ShardPools.fromConfig({ shards: [{ shard_id: 'shard_001', database_url: url, read_replicas: [] }] });
    pools.push(catalog);

    const shardOptions = shards.primary('shard_001').pool.options;
    await shards.end();
    for (const options of [catalog.options, shardOptions]) {
      expect(options.ssl).toEqual({ rejectUnauthorized: true, ca: RDS_CA_BUNDLE });
      expect(options.connectionString).not.toContain('sslmode');
    }
  });
});

describe('node deadlines', () => {
  it('has the server cancel a statement still running at the deadline', async () => {
    const pool = new pg.Pool({ connectionString: server.url, max: 1, application_name: 'deadline-test' });
    pools.push(pool);
    pool.on('error', () => undefined);

    const err: unknown = await withNodeDeadline(pool, 500, 'shard_001/primary', (c) => c.query('select pg_sleep(30)')).catch((e: unknown) => e);
    let running = 1;
    for (let i = 0; i < 100 && running > 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      running = (await admin.query("select 1 from pg_stat_activity where application_name = 'deadline-test' and query like '%pg_sleep(30)%' and state = 'active'")).rowCount ?? 0;
    }

    expect(err).toBeInstanceOf(Error);
    expect(running).toBe(0);
  });

  it("leaves no transaction open on the server when the path goes silent mid-transaction (a probe's heartbeat: its xid would hold every move's drain)", async () => {
    const relay = await SilentRelay.start(server.port);
    const pool = new pg.Pool({ connectionString: relay.url(server.url), max: 1, application_name: 'silent-heartbeat-test' });
    pools.push(pool);
    pool.on('error', () => undefined);
    try {
      // The heartbeat's statement reaches the server and gives the transaction an xid; its answer,
      // the commit and the close are lost (a black-holed path: the server never learns).
      relay.blackholeAfter('txid_current');
      const node: ShardNode = { nodeId: 'shard_001/primary', shardId: 'shard_001', role: 'primary', endpoint: `127.0.0.1:${relay.port}/postgres`, pool };
      const beat = await commitHeartbeat(node, { timeoutMs: 300 });
      const stranded = async (): Promise<number> =>
        (await admin.query("select 1 from pg_stat_activity where application_name = 'silent-heartbeat-test' and state = 'idle in transaction' and backend_xid is not null")).rowCount ?? -1;
      let open = await stranded();
      // The budget, the grace and room for a busy machine.
      for (let i = 0; i < 40 && open !== 0; i++) {
        await new Promise((r) => setTimeout(r, 100));
        open = await stranded();
      }

      expect({ beat, open }).toEqual({ beat: null, open: 0 });
    } finally {
      await relay.stop();
    }
  });
});
