import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { APPLICATION_ROLE, ensureLogin } from '../../../functions/adapters/postgres/app-role.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { parseLsn } from '../../../functions/core/sharding/lsn.js';
import { clusterIdFromSystemIdentifier, parseReadToken } from '../../../functions/core/sharding/read-token.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { startTcpProxy } from '../../support/tcp-proxy.js';
import { ONE_SHARD, oneShardApi, readAfterRetried, type Answer, type Api } from './fixtures/one-shard-api.js';

/**
 * An RDS blue/green deployment for a major version upgrade replicates blue to green logically:
 * green is another cluster (its own system identifier, its own WAL positions, timeline 1), and
 * after the switchover the shard's addresses serve green. A read token issued on blue was then
 * compared with green's WAL positions, which say nothing about blue's: (a) green's WAL end was
 * behind the token, which green took for a write lost (its own crash restart, or another server
 * of its timeline), though green holds it (the switchover waits for replication to catch up): a
 * read that missed, with that token, answered 410 "write lost"; (b) green's replica had replayed past the token's position
 * without holding the write, and served a stale miss (404). Here blue is one cluster (started from
 * the test template), green another (initdb'd on its own: another system identifier), the user
 * row copied from blue to green as logical replication would, and a new API (a deploy: clients
 * hold their tokens across it) over green.
 */
describe('a read token issued on blue, read after a blue/green switchover on green (another cluster)', () => {
  let blue: TestShardCluster | undefined;
  let green: TestShardCluster | undefined;
  const closers: (() => Promise<void>)[] = [];
  beforeAll(async () => {
    [blue, green] = await Promise.all([
      startShardCluster({ shards: 1, replicasPerShard: 0, schema: true }),
      // initdb'd, not copied from the template: a cluster of its own, as green is.
      startShardCluster({ shards: 1, replicasPerShard: 1, schema: true, primary: { initdbFlags: [] } }),
    ]);
  }, 180_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await Promise.all([blue?.stop(), green?.stop()]);
  });

  const primaryUrl = (cluster: TestShardCluster | undefined): string => cluster?.shards[0]?.primary.url ?? '';
  const position = (url: string): Promise<bigint> => withClient(url, async (c) => parseLsn((await c.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn')).rows[0]?.lsn ?? '0/0'));
  /** Moves `url`'s WAL on by `segments` segments (pg_switch_wal after a write, so each switch moves). */
  const padWal = (url: string, segments: number): Promise<void> =>
    withClient(url, async (c) => {
      for (let i = 0; i < segments; i += 1) await c.query('create temp table if not exists pad (n int); insert into pad values (1); select pg_switch_wal()');
    });
  /** Copies user `id` from blue's primary to green's, as the deployment's logical replication does. */
  const copyUser = async (id: string): Promise<void> => {
    const row = await withClient(primaryUrl(blue), async (c) => (await c.query<{ r: unknown }>('select row_to_json(u) as r from users u where id = $1', [id])).rows[0]?.r);
    await withClient(primaryUrl(green), (c) => c.query('insert into users select * from json_populate_record(null::users, $1::json)', [JSON.stringify(row)]));
  };
  const clusterId = (url: string): Promise<string | undefined> => withClient(url, async (c) => (await c.query<{ id: string }>('select system_identifier::text as id from pg_control_system()')).rows[0]?.id);

  it('answers a miss on green\'s primary 404, not 410 "write lost", with a token past green\'s WAL end of a write green holds', async () => {
    const onBlue = (await oneShardApi(primaryUrl(blue), closers)).api;
    // Blue's WAL well ahead of green's: the token is past green's WAL end.
    await padWal(primaryUrl(blue), 4);
    const written = await onBlue('POST', '/api/v1/users', { email: 'ahead@example.org', display_name: 'ahead' });
    const token = written.headers.get('x-read-token') ?? '';
    const id = String(written.body?.id);
    await copyUser(id);

    const onGreen = (await oneShardApi(primaryUrl(green), closers)).api;
    const read = await onGreen('GET', `/api/v1/users/${id}`, undefined, { 'x-read-after': token });
    // The client sends its last token with every read: a user nobody made is a miss.
    const missing = await onGreen('GET', `/api/v1/users/${randomUUID()}`, undefined, { 'x-read-after': token });

    // The premise: two clusters, the token past green's WAL end.
    expect(await clusterId(primaryUrl(blue))).not.toBe(await clusterId(primaryUrl(green)));
    expect(parseLsn(parseReadToken(token).lsn) > (await position(primaryUrl(green)))).toBe(true);
    expect(written.status).toBe(201);
    // The token names the cluster that committed the write.
    expect(parseReadToken(token).clusterId).toBe(clusterIdFromSystemIdentifier((await clusterId(primaryUrl(blue))) ?? ''));
    expect({ status: read.status, email: read.body?.email as unknown }).toEqual({ status: 200, email: 'ahead@example.org' });
    // Before: 410 https://ca-dms-scaling.dev/problems/write-lost, "... past the end of the WAL ...".
    expect({ status: missing.status, detail: missing.body?.detail as unknown }).toEqual({ status: 404, detail: expect.stringMatching(/^no user /) as unknown });
  }, 120_000);

  it('does not serve a miss from green\'s replica that replayed past the token\'s position without the write (was a stale 404)', async () => {
    const onBlue = (await oneShardApi(primaryUrl(blue), closers)).api;
    const written = await onBlue('POST', '/api/v1/users', { email: 'behind@example.org', display_name: 'behind' });
    const token = written.headers.get('x-read-token') ?? '';
    const id = String(written.body?.id);
    // Green's WAL well ahead of the token; its replica replays all that, then no more.
    const replica = green?.shards[0]?.replicas[0];
    if (!replica) throw new Error('green has no replica');
    await padWal(primaryUrl(green), 8);
    await replica.waitForCatchUp();
    await replica.pauseReplay();
    closers.push(() => replica.resumeReplay());
    await copyUser(id);

    const pools = ShardPools.fromConfig({ shards: [{ shard_id: ONE_SHARD, database_url: primaryUrl(green), read_replicas: [replica.url] }] }, { max: 2, connectionTimeoutMillis: 2000 });
    const reader = new ReplicaReader(pools, { bounds: { maxLagSeconds: 60, maxLagBytes: 256 * 1024 * 1024, maxStateAgeMs: 60_000 }, intervalMs: 60_000, probeTimeoutMs: 2000 });
    closers.push(async () => {
      reader.stop();
      await pools.end();
    });
    await reader.refresh();
    const onGreen: Api = (await oneShardApi(primaryUrl(green), closers, { given: { pools, reader } })).api;
    const read = await onGreen('GET', `/api/v1/users/${id}`, undefined, { 'x-read-after': token });
    const untokened = await onGreen('GET', `/api/v1/users/${id}`);
    // The reader asked with the token's options as they come before its heartbeat tells the
    // shard's cluster (a switchover since its last probe): the replica itself is asked which
    // cluster it is in, and the read goes on to the primary.
    const parsed = parseReadToken(token);
    const direct = await reader.query(ONE_SHARD, 'select email from users where id = $1', [id], { token: parsed.lsn, tokenTimeline: parsed.timeline, ...(parsed.clusterId === undefined ? {} : { tokenClusterId: parsed.clusterId }) });

    // The premise: the replica is past the token's position, does not hold the write, and serves reads.
    const replayed = await withClient(replica.url, async (c) => parseLsn((await c.query<{ lsn: string }>('select pg_last_wal_replay_lsn()::text as lsn')).rows[0]?.lsn ?? '0/0'));
    expect(replayed > parseLsn(parseReadToken(token).lsn)).toBe(true);
    expect(reader.plan(ONE_SHARD)[0]?.kind).toBe('replica');
    expect(untokened.status).toBe(404);
    // Before: 404 "no user ..." from the replica.
    expect({ status: read.status, email: read.body?.email as unknown }).toEqual({ status: 200, email: 'behind@example.org' });
    // Before: no rows, from the replica.
    expect({ rows: direct.rows, servedBy: direct.servedBy }).toEqual({ rows: [{ email: 'behind@example.org' }], servedBy: `${ONE_SHARD}/primary` });
  }, 120_000);

  it('keeps serving one API across the switchover of its address: tokens issued after it name green, a blue one is read on green\'s primary', async () => {
    const bluePort = Number(new URL(primaryUrl(blue)).port);
    const proxy = await startTcpProxy(bluePort);
    closers.push(() => proxy.close());
    const address = new URL(primaryUrl(blue));
    address.port = String(proxy.port);
    const { api } = await oneShardApi(address.toString(), closers);
    // Blue's WAL ahead of green's (the tests before moved both on).
    while ((await position(primaryUrl(blue))) <= (await position(primaryUrl(green))) + 2n ** 24n) await padWal(primaryUrl(blue), 1);
    const onBlue = await api('POST', '/api/v1/users', { email: 'across@example.org', display_name: 'across' });
    const blueToken = onBlue.headers.get('x-read-token') ?? '';
    await copyUser(String(onBlue.body?.id));

    // The switchover: the address names green, the connections open to blue are dropped.
    proxy.retarget(Number(new URL(primaryUrl(green)).port));
    await proxy.cut();
    await proxy.restore();
    let onGreen: Answer = await api('POST', '/api/v1/users', { email: 'after@example.org', display_name: 'after' });
    for (let i = 0; i < 3 && onGreen.status === 503; i += 1) onGreen = await api('POST', '/api/v1/users', { email: 'after@example.org', display_name: 'after' });
    const greenToken = onGreen.headers.get('x-read-token') ?? '';
    const missing = await readAfterRetried(api, `/api/v1/users/${randomUUID()}`, blueToken);
    const blueRead = await readAfterRetried(api, `/api/v1/users/${String(onBlue.body?.id)}`, blueToken);
    const greenRead = await readAfterRetried(api, `/api/v1/users/${String(onGreen.body?.id)}`, greenToken);

    // Each token names the cluster its write committed in: nothing was kept from before the switchover.
    expect([parseReadToken(blueToken).clusterId, parseReadToken(greenToken).clusterId]).toEqual([
      clusterIdFromSystemIdentifier((await clusterId(primaryUrl(blue))) ?? ''),
      clusterIdFromSystemIdentifier((await clusterId(primaryUrl(green))) ?? ''),
    ]);
    expect(parseLsn(parseReadToken(blueToken).lsn) > (await position(primaryUrl(green)))).toBe(true);
    // Before: 410 "write lost" for the miss.
    expect([missing.status, blueRead.status, greenRead.status]).toEqual([404, 200, 200]);
  }, 120_000);

  // Last: it revokes the control file's function on green.
  it('issues tokens without the cluster id, and reads them as before, for a login refused pg_control_system()', async () => {
    const admin = new pg.Pool({ connectionString: primaryUrl(green), max: 1 });
    admin.on('error', () => undefined);
    try {
      await ensureLogin(admin, { username: 'bg_app', password: 'app' }, { role: APPLICATION_ROLE });
      await admin.query('revoke execute on function pg_control_system() from public');
    } finally {
      await admin.end();
    }
    const login = new URL(primaryUrl(green));
    login.username = 'bg_app';
    login.password = 'app';
    const { api } = await oneShardApi(login.toString(), closers);
    const written = await api('POST', '/api/v1/users', { email: 'refused@example.org', display_name: 'refused' });
    const token = written.headers.get('x-read-token') ?? '';
    const read = await api('GET', `/api/v1/users/${String(written.body?.id)}`, undefined, { 'x-read-after': token });

    expect(written.status).toBe(201);
    expect(token).toMatch(/;v=\d+$/);
    expect(read.status).toBe(200);
  }, 120_000);
});
