import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { createShardReader, ShardReadError } from '../../../functions/adapters/postgres/read-transaction.js';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createShardWriter, routerForWrites, ShardWriteError, type WriteRouter } from '../../../functions/adapters/postgres/write-transaction.js';
import { startPgWireRecorder } from '../../support/pg-wire-recorder.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { createShardingRuntime, type ShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { createDocumentsRoute } from '../../../functions/local/documents-api.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { SilentRelay } from '../sharding/fixtures/silent-relay.js';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

describe('write deadlines stop the database too', () => {
  let api: DocumentsApi;
  beforeAll(async () => {
    api = await startDocumentsApi();
  });
  afterAll(async () => {
    await api?.stop();
  });

  it('cancels a statement past its deadline in PostgreSQL, leaving nothing running', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const write = api.sharding.writer.withShardWrite(key, ({ client }) => client.query('select pg_sleep(30) as slow_write_under_test'), { deadlineMs: 300 });
    await expect(write).rejects.toSatisfy((e: unknown) => e instanceof ShardWriteError && e.reason === 'deadline-exceeded');
    const { rows } = await api
      .primary(shardId)
      .query<{ n: number }>("select count(*)::int as n from pg_stat_activity where state = 'active' and query like '%slow_write_under_test%' and pid <> pg_backend_pid()");
    expect(rows[0]?.n).toBe(0);
  });

  it('does not report a write committed when its body swallowed the cancellation (PostgreSQL rolled it back)', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    // A body that handles a failed statement itself: the transaction is aborted, and PostgreSQL
    // answers its COMMIT with ROLLBACK, not an error.
    const outcome = await api.sharding.writer
      .withShardWrite(
        key,
        async ({ client, slot }) => {
          await client.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [key, slot, `${key}@example.org`, 'swallowed']);
          try {
            await client.query('select pg_sleep(5)');
          } catch {
            // e.g. an optional refinement of the write, given up
          }
          return 'written';
        },
        { deadlineMs: 300 },
      )
      .then(
        (r) => `committed: ${String(r.value)}`,
        (e: unknown) => `failed: ${e instanceof ShardWriteError ? e.reason : String(e)}`,
      );
    const { rows } = await api.primary(shardId).query<{ n: number }>('select count(*)::int as n from users where id = $1', [key]);
    expect({ outcome: outcome.split(':')[0], rows: rows[0]?.n, detail: outcome }).toMatchObject({ outcome: 'failed', rows: 0 });
  });

  /**
   * The pool's one connection is held by another request until just past the deadline (within
   * the client's 250 ms grace): the request that gets it then must not start at all.
   */
  it('does not start a write or a read whose connection came only after its deadline: deadline-exceeded, nothing sent', async () => {
    const key = randomUUID();
    const { shardId, slot } = await api.sharding.router.resolve(key);
    const recorder = await startPgWireRecorder(Number(new URL(api.server.urlFor(shardId)).port));
    const url = `postgresql://postgres:postgres@127.0.0.1:${recorder.port}/${shardId}`;
    const pools = ShardPools.fromConfig(parseShardingConfig({ shards: [{ shard_id: shardId, database_url: url }], default_shard: shardId }), { max: 1 });
    const pool = pools.primary(shardId).pool;
    const router: WriteRouter = { routeForWrite: () => Promise.resolve({ shardId, slot, version: 1, viaDirectory: false }) };
    const writer = createShardWriter({ router, primaries: new Map([[shardId, pool]]) });
    const reader = new ReplicaReader(pools, { bounds: { maxLagSeconds: 60, maxLagBytes: 1 << 24, maxStateAgeMs: 120_000 }, intervalMs: 60_000 });
    const reads = createShardReader({ router, reader });
    try {
      const late = async (work: () => Promise<unknown>): Promise<{ outcome: string; sent: string[] }> => {
        const holder = await pool.connect();
        await holder.query('select 1');
        recorder.clear();
        const outcome = work().then(
          () => 'done',
          (e: unknown) => (e instanceof ShardWriteError || e instanceof ShardReadError ? e.reason : String(e)),
        );
        await delay(300); // the deadline (200 ms) has passed; the grace (250 ms) has not
        holder.release();
        return { outcome: await outcome, sent: recorder.statements().map((s) => s.sql) };
      };
      const write = await late(() =>
        writer.withShardWrite(
          key,
          async ({ client, slot: s }) => {
            await client.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [key, s, `${key}@example.org`, 'late']);
            return 'written';
          },
          { deadlineMs: 200 },
        ),
      );
      const { rows } = await api.primary(shardId).query<{ n: number }>('select count(*)::int as n from users where id = $1', [key]);
      const read = await late(() => reads.withShardRead(key, async ({ client }) => (await client.query('select 1 from users where id = $1', [key])).rowCount, { deadlineMs: 200 }));

      expect({ write, written: rows[0]?.n, read }).toEqual({ write: { outcome: 'deadline-exceeded', sent: [] }, written: 0, read: { outcome: 'deadline-exceeded', sent: [] } });
    } finally {
      reader.stop();
      await pools.end();
      await recorder.close();
    }
  });

  it("reports a write whose statement someone else cancelled before its deadline as cancelled, not as its deadline's (nothing committed)", async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const started = Date.now();
    const write = api.sharding.writer
      .withShardWrite(
        key,
        async ({ client, slot }) => {
          await client.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [key, slot, `${key}@example.org`, 'cancelled']);
          await client.query('select pg_sleep(5) as dba_cancels_this');
          return 'written';
        },
        { deadlineMs: 4000 },
      )
      .then(
        () => ({ reason: 'committed', ms: Date.now() - started }),
        (e: unknown) => ({ reason: e instanceof ShardWriteError ? e.reason : String(e), ms: Date.now() - started }),
      );
    // An operator cancels the statement (pg_cancel_backend), well before the write's deadline.
    let cancelled = false;
    for (let i = 0; i < 50 && !cancelled; i++) {
      await delay(50);
      const { rows } = await api
        .primary(shardId)
        .query<{ ok: boolean }>("select pg_cancel_backend(pid) as ok from pg_stat_activity where query like '%dba_cancels_this%' and state = 'active' and pid <> pg_backend_pid()");
      cancelled = rows.some((r) => r.ok);
    }
    const outcome = await write;
    const { rows } = await api.primary(shardId).query<{ n: number }>('select count(*)::int as n from users where id = $1', [key]);

    expect({ cancelled, reason: outcome.reason, written: rows[0]?.n, beforeDeadline: outcome.ms < 4000 }).toEqual({ cancelled: true, reason: 'cancelled', written: 0, beforeDeadline: true });
  });

  it('cancels a lock wait past its deadline', async () => {
    const key = randomUUID();
    const shardId = (await api.sharding.router.resolve(key)).shardId;
    const holder = await api.primary(shardId).connect();
    try {
      await holder.query('begin');
      await holder.query('lock table documents in access exclusive mode');
      const write = api.sharding.writer.withShardWrite(key, ({ client }) => client.query('select count(*) from documents'), { deadlineMs: 300 });
      await expect(write).rejects.toSatisfy((e: unknown) => e instanceof ShardWriteError && e.reason === 'deadline-exceeded');
    } finally {
      await holder.query('rollback');
      holder.release();
    }
  });
});

/**
 * The documents API over shard primaries that go silent (a black-holed path: no answer, no
 * reset). Every request carries the API's deadline: it must end within it (and the client side's
 * grace) with an answer that says whether the client may retry, never hang.
 */
describe('the documents API with a silent shard primary', () => {
  const DEADLINE_MS = 1000;
  /** The client's grace (250 ms) past the deadline, and room for a busy machine. */
  const WITHIN_MS = DEADLINE_MS + 600;
  let api: DocumentsApi;
  beforeAll(async () => {
    api = await startDocumentsApi(() => undefined, { relays: true, deadlineMs: DEADLINE_MS });
  });
  afterEach(() => {
    for (const relay of api.relays.values()) relay.heal();
  });
  afterAll(async () => {
    await api?.stop();
  });

  const relayOf = (shardId: string): SilentRelay => api.relayOf(shardId);
  const newUser = (): Promise<{ id: string; shardId: string }> => api.newUser('Silent');
  type Answer = { readonly status: number; readonly type: string; readonly retryAfter: string | null; readonly check: unknown; readonly detail: string; readonly ms: number };
  const timed = async (method: string, path: string, body?: unknown): Promise<Answer | 'still waiting after 8 s'> => {
    const started = Date.now();
    const answer = api.request(method, path, body).then((r): Answer => ({ status: r.status, type: String(r.body?.type), retryAfter: r.headers.get('retry-after'), check: r.body?.check, detail: String(r.body?.detail), ms: Date.now() - started }));
    return Promise.race([answer, delay(8000).then(() => 'still waiting after 8 s' as const)]);
  };
  /**
   * Transactions left idle on the shard whose last statement is like `queryLike`, read on the shard
   * itself, once none are left or after 4 s (the deadline, the client's grace and room for a busy machine).
   */
  const strandedAfterWait = async (shardId: string, queryLike: string): Promise<number> => {
    const direct = new pg.Pool({ connectionString: api.server.urlFor(shardId), max: 1 });
    const stranded = async (): Promise<number> =>
      (
        await direct.query<{ n: number }>(
          "select count(*)::int as n from pg_stat_activity where state = 'idle in transaction' and query like $1 and pid <> pg_backend_pid()",
          [queryLike],
        )
      ).rows[0]?.n ?? -1;
    try {
      let open = await stranded();
      for (let i = 0; i < 40 && open !== 0; i++) {
        await delay(100);
        open = await stranded();
      }
      return open;
    } finally {
      await direct.end();
    }
  };
  const documentsOf = (owner: { id: string; shardId: string }): Promise<number> => api.documentsOf(owner);

  it('answers a write that reached no answer by its deadline with a retryable 503, and nothing is written', async () => {
    const owner = await newUser();
    relayOf(owner.shardId).blackhole();
    const answer = await timed('POST', '/api/v1/documents', { owner_id: owner.id, title: 'never written' });
    relayOf(owner.shardId).heal();

    expect({ answer, written: await documentsOf(owner) }).toMatchObject({
      answer: { status: 503, type: 'about:blank', retryAfter: expect.any(String) as unknown as string, detail: expect.stringMatching(/nothing was written/) as unknown as string },
      written: 0,
    });
    expect(answer !== 'still waiting after 8 s' && answer.ms).toBeLessThan(WITHIN_MS);
  }, 30_000);

  it("leaves no transaction open on the shard when the write's path goes silent mid-transaction (its close never arrives)", async () => {
    const owner = await newUser();
    // The insert reaches the shard and runs; its answer, and everything after (the close too), is lost.
    relayOf(owner.shardId).blackholeAfter('insert into documents');
    const answer = await timed('POST', '/api/v1/documents', { owner_id: owner.id, title: 'stranded' });
    relayOf(owner.shardId).heal();
    const open = await strandedAfterWait(owner.shardId, 'insert into documents%');

    expect({ status: answer !== 'still waiting after 8 s' && answer.status, open, written: await documentsOf(owner) }).toEqual({ status: 503, open: 0, written: 0 });
  }, 30_000);

  it("lets a keyed retry of a write whose path went silent mid-transaction create its one document (the stranded attempt's row does not hold it)", async () => {
    const owner = await newUser();
    const body = { owner_id: owner.id, title: 'retried after silence' };
    const keyed = { 'content-type': 'application/json', 'idempotency-key': `"silent-${randomUUID()}"` };
    relayOf(owner.shardId).blackholeAfter('insert into documents');
    const lost = await fetch(`${api.url}/api/v1/documents`, { method: 'POST', headers: keyed, body: JSON.stringify(body) });
    relayOf(owner.shardId).heal();
    // At once, as a client told "nothing was written; retry" may: the first attempt's uncommitted
    // row (same id) is still on the shard until the server ends its session.
    const retried = await fetch(`${api.url}/api/v1/documents`, { method: 'POST', headers: keyed, body: JSON.stringify(body) });
    const again = await fetch(`${api.url}/api/v1/documents`, { method: 'POST', headers: keyed, body: JSON.stringify(body) });

    expect({
      lost: lost.status,
      retried: { status: retried.status, replayed: retried.headers.get('idempotent-replayed') },
      again: { status: again.status, replayed: again.headers.get('idempotent-replayed') },
      written: await documentsOf(owner),
    }).toEqual({ lost: 503, retried: { status: 201, replayed: null }, again: { status: 201, replayed: 'true' }, written: 1 });
  }, 30_000);

  it("leaves no transaction open on the shard when a read's path goes silent mid-transaction (its snapshot and locks are not held for ever)", async () => {
    const owner = await newUser();
    // The read's query reaches the shard and runs in the read's repeatable-read transaction; its
    // answer, and everything after (the rollback, the close), is lost.
    relayOf(owner.shardId).blackholeAfter('from documents where owner_id = $1 order by');
    const answer = await timed('GET', `/api/v1/users/${owner.id}/documents`);
    relayOf(owner.shardId).heal();
    const open = await strandedAfterWait(owner.shardId, '%from documents where owner_id = $1 order by%');

    expect({ status: answer !== 'still waiting after 8 s' && answer.status, open }).toEqual({ status: 503, open: 0 });
  }, 30_000);

  it.each([
    { request: 'write', method: 'POST', begin: 'begin isolation level read committed' },
    { request: 'read', method: 'GET', begin: 'begin isolation level repeatable read read only' },
  ])("leaves no transaction open on the shard when the path of a $request goes silent right after its BEGIN (the timeouts are not left for a later round trip)", async ({ method, begin }) => {
    const owner = await newUser();
    // The BEGIN reaches the shard and runs; its answer, and everything after (the close too), is lost.
    relayOf(owner.shardId).blackholeAfter(begin);
    const answer = method === 'POST' ? await timed('POST', '/api/v1/documents', { owner_id: owner.id, title: 'stranded at begin' }) : await timed('GET', `/api/v1/users/${owner.id}/documents`);
    relayOf(owner.shardId).heal();
    const open = await strandedAfterWait(owner.shardId, `${begin}%`);

    expect({ status: answer !== 'still waiting after 8 s' && answer.status, open, written: await documentsOf(owner) }).toEqual({ status: 503, open: 0, written: 0 });
  }, 30_000);

  it('answers a write an operator cancelled before its deadline with a retryable 503 that says so (not a 504, not the deadline)', async () => {
    const owner = await newUser();
    const pool = api.primary(owner.shardId);
    // The shard holds the write's insert on a lock; an operator cancels it (pg_cancel_backend).
    const holder = await pool.connect();
    try {
      await holder.query('begin');
      await holder.query('lock table documents in access exclusive mode');
      const answer = timed('POST', '/api/v1/documents', { owner_id: owner.id, title: 'cancelled by an operator' });
      let cancelled = false;
      for (let i = 0; i < 40 && !cancelled; i++) {
        await delay(25);
        // Not on the holder: its transaction would see one snapshot of pg_stat_activity.
        const { rows } = await pool.query<{ ok: boolean }>(
          "select pg_cancel_backend(pid) as ok from pg_stat_activity where wait_event_type = 'Lock' and query like 'insert into documents%' and pid <> pg_backend_pid()",
        );
        cancelled = rows.some((r) => r.ok);
      }
      const got = await answer;
      expect({ cancelled, got }).toMatchObject({
        cancelled: true,
        got: { status: 503, type: 'about:blank', retryAfter: '1', detail: expect.stringMatching(/^the shard cancelled the write before its deadline; nothing was written; retry$/) as unknown as string },
      });
    } finally {
      await holder.query('rollback');
      holder.release();
    }
    expect(await documentsOf(owner)).toBe(0);
  }, 30_000);

  it('answers a write whose commit went unanswered with a 504 saying the outcome is unknown, not a retry', async () => {
    const owner = await newUser();
    // The commit reaches the server; its answer, and everything after it, does not come back.
    relayOf(owner.shardId).blackholeAfter('commit\u0000');
    const answer = await timed('POST', '/api/v1/documents', { owner_id: owner.id, title: 'committed, unconfirmed' });
    relayOf(owner.shardId).heal();
    // Where the answer says to look, once the shard answers again.
    const checked = answer !== 'still waiting after 8 s' && typeof answer.check === 'string' ? (await api.request('GET', answer.check)).status : 'nowhere to look';

    expect({ answer, written: await documentsOf(owner), checked }).toMatchObject({
      answer: { status: 504, type: 'https://ca-dms-scaling.dev/problems/outcome-unknown', retryAfter: null },
      written: 1,
      checked: 200,
    });
    expect(answer !== 'still waiting after 8 s' && answer.ms).toBeLessThan(WITHIN_MS);
  }, 30_000);

  it.each([
    { read: "a user (the owner's shard)", path: (u: { id: string }) => `/api/v1/users/${u.id}` },
    { read: "a user's documents", path: (u: { id: string }) => `/api/v1/users/${u.id}/documents` },
    { read: 'a document by id on every shard', path: () => `/api/v1/documents/${randomUUID()}` },
  ])('answers a read of $read by its deadline with a retryable 503 that says nothing of writing', async ({ path }) => {
    const owner = await newUser();
    relayOf(owner.shardId).blackhole();
    const answer = await timed('GET', path(owner));

    expect(answer).toMatchObject({ status: 503, retryAfter: expect.any(String) as unknown as string });
    expect(answer !== 'still waiting after 8 s' && answer.detail).toMatch(/^the shard did not answer the read within the request's 1000 ms deadline; retry$/);
    expect(answer !== 'still waiting after 8 s' && answer.ms).toBeLessThan(WITHIN_MS);
  }, 30_000);
});

/**
 * A write whose commit's answer was lost (504), on a shard whose replica is held behind (its
 * replay paused, still within max_replica_lag_seconds, so the reader serves reads from it). The
 * `check` the 504 names must answer from the primary: a 404 from the lagging replica would have
 * the client write the document a second time. The API's writes reach the primary through one
 * path (relay `writes`, which loses the commit's answer), its reads through another (`reads`).
 */
describe("the 504's check with a replica held behind", () => {
  const DEADLINE_MS = 1000;
  let cluster: TestShardCluster;
  let catalog: pg.Pool;
  let sharding: ShardingRuntime;
  let writes: SilentRelay;
  let readsRelay: SilentRelay;
  let writePool: pg.Pool;
  let http: Server;
  let url: string;
  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    const primary = cluster.shards[0]?.primary;
    if (primary === undefined) throw new Error('no primary');
    const admin = new pg.Client({ connectionString: primary.url });
    await admin.connect();
    await admin.query('create database catalog');
    await admin.end();
    catalog = new pg.Pool({ connectionString: primary.urlFor('catalog'), max: 4 });
    await runMigrations(catalog, 'sharding', resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations/sharding'));
    writes = await SilentRelay.start(primary.port);
    readsRelay = await SilentRelay.start(primary.port);
    const shards = cluster.config.shards.map((s) => ({ ...s, database_url: readsRelay.url(s.database_url) }));
    sharding = await createShardingRuntime({
      config: parseShardingConfig({ ...cluster.config, shards, max_replica_lag_seconds: 60, health_check_interval_seconds: 1 }),
      catalog,
      actor: 'test',
      readReplicas: true,
    });
    const { reader, reads } = sharding;
    if (reader === undefined || reads === undefined) throw new Error('the runtime built no replica reader');
    writePool = new pg.Pool({ connectionString: writes.url(primary.url), max: 2 });
    writePool.on('error', () => undefined);
    const writer = createShardWriter({ router: routerForWrites(sharding.router, sharding.slotMaps, sharding.directory), primaries: new Map([['shard_001', writePool]]) });
    const route = createDocumentsRoute({ writer, reader, reads, shardIds: ['shard_001'], deadlineMs: DEADLINE_MS, onError: () => undefined });
    http = createServer((req, res) => void Promise.resolve(route(req, res)).then((handled) => (handled ? undefined : res.writeHead(404).end())));
    await new Promise<void>((ok) => http.listen(0, '127.0.0.1', ok));
    url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  }, 120_000);
  afterAll(async () => {
    await writes?.stop();
    await readsRelay?.stop();
    await new Promise<void>((ok) => (http ? http.close(() => ok()) : ok()));
    await sharding?.close();
    await writePool?.end();
    await catalog?.end();
    await cluster?.stop();
  });

  async function call(method: string, path: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await fetch(`${url}${path}`, { method, headers: body === undefined ? {} : { 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  }

  /** A new user, once the reader serves its shard's reads from the replica. */
  async function userServedByReplica(displayName: string): Promise<string> {
    const user = await call('POST', '/api/v1/users', { email: `${randomUUID()}@example.org`, display_name: displayName });
    expect(user.status).toBe(201);
    const userId = String(user.body['id']);
    let servedBy = '';
    for (let i = 0; i < 100 && !servedBy.includes('replica'); i++) {
      servedBy = String((await call('GET', `/api/v1/users/${userId}`)).body['served_by']);
      if (!servedBy.includes('replica')) await delay(100);
    }
    expect(servedBy).toMatch(/replica/);
    return userId;
  }

  it('looks on the primary, so a committed write is found (200, never a lagging replica\'s 404), and answers 503 when the primary cannot be reached', async () => {
    const replica = cluster.shards[0]?.replicas[0];
    const primary = cluster.shards[0]?.primary;
    if (replica === undefined || primary === undefined) throw new Error('no replica');
    const userId = await userServedByReplica('Lagged');
    await replica.pauseReplay();
    try {
      writes.blackholeAfter('commit\u0000');
      const answer = await call('POST', '/api/v1/documents', { owner_id: userId, title: 'committed, answer lost' });
      writes.heal();
      const direct = new pg.Client({ connectionString: primary.url });
      await direct.connect();
      const { rows } = await direct.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [userId]);
      await direct.end();
      const check = String(answer.body['check']);
      // The replica still serves reads, and has not replayed the write.
      const plain = await call('GET', check.replace(/[?&]consistency=primary/, ''));
      const checked = await call('GET', check);
      readsRelay.blackhole();
      const unreachable = await call('GET', check);
      readsRelay.heal();

      expect({
        answer: { status: answer.status, type: answer.body['type'] },
        written: rows[0]?.n,
        plain: { status: plain.status, served_by: plain.body['served_by'] },
        checked: { status: checked.status, served_by: checked.body['served_by'] },
        unreachable: { status: unreachable.status, retry: /retry/.test(String(unreachable.body['detail'])) },
      }).toEqual({
        answer: { status: 504, type: 'https://ca-dms-scaling.dev/problems/outcome-unknown' },
        written: 1,
        plain: { status: 404, served_by: undefined },
        checked: { status: 200, served_by: 'shard_001/primary' },
        unreachable: { status: 503, retry: true },
      });
    } finally {
      writes.heal();
      readsRelay.heal();
      await replica.resumeReplay();
    }
  }, 60_000);

  it("gives a keyed retry's replay a read token that sees the first attempt's document, though the replica has not replayed it", async () => {
    const replica = cluster.shards[0]?.replicas[0];
    if (replica === undefined) throw new Error('no replica');
    const userId = await userServedByReplica('Replayed');
    await replica.pauseReplay();
    try {
      const body = { owner_id: userId, title: 'replayed behind a replica' };
      const keyed = { 'content-type': 'application/json', 'idempotency-key': '"behind-1"' };
      writes.blackholeAfter('commit\u0000');
      const lost = await fetch(`${url}/api/v1/documents`, { method: 'POST', headers: keyed, body: JSON.stringify(body) });
      writes.heal();
      const retried = await fetch(`${url}/api/v1/documents`, { method: 'POST', headers: keyed, body: JSON.stringify(body) });
      const doc = (await retried.json()) as Record<string, unknown>;
      const token = retried.headers.get('x-read-token') ?? '';
      const plain = await call('GET', `/api/v1/documents/${String(doc['id'])}?owner=${userId}`);
      const read = await fetch(`${url}/api/v1/documents/${String(doc['id'])}?owner=${userId}`, { headers: { 'x-read-after': token } });
      const readOwnerless = await fetch(`${url}/api/v1/documents/${String(doc['id'])}`, { headers: { 'x-read-after': token } });

      expect({
        lost: lost.status,
        retried: { status: retried.status, replayed: retried.headers.get('idempotent-replayed') },
        plain: plain.status,
        read: read.status,
        readOwnerless: readOwnerless.status,
      }).toEqual({ lost: 504, retried: { status: 201, replayed: 'true' }, plain: 404, read: 200, readOwnerless: 200 });
    } finally {
      writes.heal();
      await replica.resumeReplay();
    }
  }, 60_000);
});
