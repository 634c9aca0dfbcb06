import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { APPLICATION_ROLE, ensureLogin } from '../../../functions/adapters/postgres/app-role.js';
import { clusterIdReadableKnown, recheckClusterIdRefusal } from '../../../functions/adapters/postgres/cluster-identity.js';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { commitHeartbeat } from '../../../functions/adapters/postgres/replica-lag.js';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createShardWriter, type ShardWriter, type WriteRouter } from '../../../functions/adapters/postgres/write-transaction.js';
import { clusterIdFromSystemIdentifier, formatReadToken } from '../../../functions/core/sharding/read-token.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';
import { interceptCheckouts } from './fixtures/pool-checkouts.js';

const LOGIN = 'revoked_app';
const PASSWORD = 'app pass';

/**
 * Whether a pool's login may read the cluster id (`clusterIdReadable`, cluster-identity.ts) is
 * learned once per pool. When the grant goes later (`REVOKE EXECUTE ON FUNCTION
 * pg_control_system() FROM ...`, or a switchover that puts a cluster behind the address where the
 * login lacks it), every statement that embedded the id failed with 42501 until the process
 * restarted: each write (its BEGIN), each read with a token of a cluster (the primary check, a
 * replica's token check) and the reader's heartbeat (so no replica was vouched for). Now such a
 * refusal forgets the answer, asks again, and the statement is sent again without the id: the
 * write's BEGIN (nothing of the write ran), a read's check and the heartbeat's position (they
 * change nothing). (h149)
 */
describe('the cluster id, its grant revoked after the pool learned it may read it', () => {
  let cluster: TestShardCluster;
  let shardId = '';
  let primaryUrl = '';
  const closers: (() => Promise<void>)[] = [];
  const asLogin = (url: string): string => {
    const u = new URL(url);
    u.username = LOGIN;
    u.password = PASSWORD;
    return u.toString();
  };
  const revoke = (): Promise<unknown> => withClient(primaryUrl, (c) => c.query('revoke execute on function pg_control_system() from public'));
  const clusterId = (): Promise<string | undefined> =>
    withClient(primaryUrl, async (c) => clusterIdFromSystemIdentifier((await c.query<{ id: string }>('select system_identifier::text as id from pg_control_system()')).rows[0]?.id ?? ''));
  /** Waits until the replica has replayed the primary's WAL as of now (the grant's change with it). */
  const replayed = async (): Promise<void> => {
    await cluster.shards[0]?.replicas[0]?.waitForCatchUp();
  };
  /** The application login's pools over the shard's primary and replica, a writer and a reader over them (each test its own: a fresh cache). */
  const stack = (): { pools: ShardPools; reader: ReplicaReader; writer: ShardWriter; primary: pg.Pool } => {
    const replica = cluster.shards[0]?.replicas[0];
    const pools = ShardPools.fromConfig({ shards: [{ shard_id: shardId, database_url: asLogin(primaryUrl), read_replicas: replica === undefined ? [] : [asLogin(replica.url)] }] }, { max: 2, connectionTimeoutMillis: 5000 });
    const reader = new ReplicaReader(pools, { bounds: { maxLagSeconds: 60, maxLagBytes: 1 << 24, maxStateAgeMs: 120_000 }, intervalMs: 60_000, probeTimeoutMs: 5000 });
    closers.push(async () => {
      reader.stop();
      await pools.end();
    });
    const primary = pools.primary(shardId).pool;
    const router: WriteRouter = { routeForWrite: () => Promise.resolve({ shardId, slot: 7, version: 1, viaDirectory: false }) };
    return { pools, reader, writer: createShardWriter({ router, primaries: new Map([[shardId, primary]]) }), primary };
  };
  const insertUser = (writer: ShardWriter) => {
    const id = randomUUID();
    return writer.withShardWrite(id, ({ client, slot }) => client.query("insert into users (id, slot, email, display_name) values ($1, $2, 'revoked@example.org', 'revoked')", [id, slot]));
  };
  const grant = (): Promise<unknown> => withClient(primaryUrl, (c) => c.query('grant execute on function pg_control_system() to public'));
  /** Counts the cluster id questions (`clusterIdReadable`'s own statement) sent on `pool`'s connections from now on. */
  const countQuestions = (pool: pg.Pool): { readonly count: number } => {
    const counted = { count: 0 };
    interceptCheckouts(pool, (text, send) => {
      if (text?.startsWith('select (select lpad') === true) counted.count += 1;
      return send();
    });
    return counted;
  };
  const outcome = <T>(p: Promise<T>): Promise<T | string> => p.catch((e: unknown) => `failed ${(e as { code?: string }).code ?? ''}: ${e instanceof Error ? e.message : String(e)}`);

  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
    const shard = cluster.shards[0];
    if (shard === undefined) throw new Error('the cluster has no shard');
    shardId = shard.shardId;
    primaryUrl = shard.primary.url;
    const admin = new pg.Pool({ connectionString: primaryUrl, max: 1 });
    admin.on('error', () => undefined);
    try {
      await ensureLogin(admin, { username: LOGIN, password: PASSWORD }, { role: APPLICATION_ROLE });
    } finally {
      await admin.end();
    }
  }, 180_000);
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await withClient(primaryUrl, (c) => c.query('grant execute on function pg_control_system() to public'));
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('commits the next write, once, with a token without the id, where its BEGIN was refused the id', async () => {
    const { writer, primary } = stack();
    const first = await insertUser(writer);
    await revoke();
    const second = await outcome(insertUser(writer));
    const third = await outcome(insertUser(writer));

    // The premise: the pool had learned its login may read the id, and the first token carries it.
    expect(first.readToken.clusterId).toBe(await clusterId());
    expect(typeof second === 'string' ? second : { clusterId: second.readToken.clusterId }).toEqual({ clusterId: undefined });
    expect(typeof third === 'string' ? third : { clusterId: third.readToken.clusterId }).toEqual({ clusterId: undefined });
    expect(clusterIdReadableKnown(primary)).toBe(false);
    // Each write committed once.
    const held = await withClient(primaryUrl, async (c) => (await c.query<{ n: number }>("select count(*)::int as n from users where email = 'revoked@example.org'")).rows[0]?.n);
    expect(held).toBe(3);
  }, 60_000);

  // A refusal in the BEGIN's round trip that is not the cluster id's (here the fence rows' read of
  // move_captures, the login's SELECT on it revoked) is sent again once (the id asked again, and
  // answered yes), then thrown as before: not retried for ever, not masked, nothing committed,
  // and the pool's answer (may read the id) is the same after (h152).
  it.each([{ deadlineMs: undefined }, { deadlineMs: 10_000 }])('throws a refusal of the BEGIN that is not the cluster id\'s (deadline $deadlineMs), and commits nothing', async ({ deadlineMs }) => {
    const { writer, primary } = stack();
    await insertUser(writer);
    const count = (): Promise<number | undefined> => withClient(primaryUrl, async (c) => (await c.query<{ n: number }>("select count(*)::int as n from users where email = 'revoked@example.org'")).rows[0]?.n);
    const before = await count();
    await withClient(primaryUrl, (c) => c.query(`revoke select on move_captures from ${APPLICATION_ROLE}`));
    let refused: string;
    try {
      const id = randomUUID();
      refused = await outcome(
        writer.withShardWrite(id, ({ client, slot }) => client.query("insert into users (id, slot, email, display_name) values ($1, $2, 'revoked@example.org', 'revoked')", [id, slot]), deadlineMs === undefined ? {} : { deadlineMs }).then(() => 'written'),
      );
    } finally {
      await withClient(primaryUrl, (c) => c.query(`grant select on move_captures to ${APPLICATION_ROLE}`));
    }
    expect(refused).toMatch(/^failed 42501: permission denied for table move_captures/);
    expect(await count()).toBe(before);
    expect(clusterIdReadableKnown(primary)).toBe(true);
    const after = await insertUser(writer);
    expect(after.readToken.clusterId).toBe(await clusterId());
  }, 60_000);

  // Many writers of one pool in flight when the grant goes: each refused BEGIN forgets the answer
  // and is sent again; every write commits once, none fails (h152).
  it('commits every one of many concurrent writes, once each, and serves every concurrent read, when the grant goes while they run', async () => {
    const { writer, primary, reader } = stack();
    const { readToken } = await insertUser(writer);
    const options = { primary: true, token: readToken.lsn, tokenTimeline: readToken.timeline, ...(readToken.clusterId === undefined ? {} : { tokenClusterId: readToken.clusterId }) };
    const count = (): Promise<number | undefined> => withClient(primaryUrl, async (c) => (await c.query<{ n: number }>("select count(*)::int as n from users where email = 'revoked@example.org'")).rows[0]?.n);
    const before = (await count()) ?? 0;
    const writes = Array.from({ length: 24 }, (_, i) => new Promise((r) => setTimeout(r, i * 2)).then(() => outcome(insertUser(writer))));
    const reads = Array.from({ length: 24 }, (_, i) =>
      new Promise((r) => setTimeout(r, i * 2)).then(() =>
        // The check in the read's BEGIN (query), or as a statement of its own (withReadClient without one).
        outcome(i % 2 === 0 ? reader.query(shardId, 'select 1 as one', [], options).then((r) => r.rowCount) : reader.withReadClient(shardId, async (client) => (await client.query('select 1 as one')).rowCount, options)),
      ),
    );
    await new Promise((r) => setTimeout(r, 10));
    await revoke();
    const results = await Promise.all(writes);
    expect(results.filter((r) => typeof r === 'string')).toEqual([]);
    expect(new Set(await Promise.all(reads))).toEqual(new Set([1]));
    expect(await count()).toBe(before + 24);
    expect(clusterIdReadableKnown(primary)).toBe(false);
  }, 60_000);

  // An answer "may" read before the grant went, delivered only after a write refused the id had
  // forgotten the answer (a slow connection, a busy event loop: the statement ran before the
  // REVOKE, its answer came later), was kept: the refused write asked again, was told "may" from
  // that stale answer, was refused again and failed with 42501 (h152).
  it('does not let a question answered before the revoke, delivered after a refused write forgot the answer, fail that write', async () => {
    const { writer, primary } = stack();
    let held: (() => void) | undefined;
    let delivered: Promise<void> | undefined;
    let armed = false;
    let revoked = false;
    const connect = primary.connect.bind(primary) as () => Promise<pg.PoolClient>;
    (primary as unknown as { connect: (...args: unknown[]) => unknown }).connect = async (...args: unknown[]) => {
      if (args.length > 0) return (connect as (...a: unknown[]) => unknown)(...args);
      // The refused write's next attempt: the stale answer arrives first.
      if (armed && held !== undefined) {
        const release = held;
        held = undefined;
        release();
        await delivered;
        await new Promise((r) => setImmediate(r));
      }
      const client = await connect();
      const query = client.query.bind(client) as (...a: unknown[]) => unknown;
      (client as unknown as { query: (...a: unknown[]) => unknown }).query = (...a: unknown[]) => {
        if (typeof a[0] === 'string' && revoked && a[0] === 'rollback') armed = true;
        // The pool's first question: answered by the server at once, delivered when released.
        if (delivered !== undefined || typeof a[0] !== 'string' || !a[0].startsWith('select (select lpad')) return query(...a);
        let answered: () => void = () => undefined;
        delivered = new Promise<void>((r) => {
          answered = r;
        });
        return (async () => {
          const answer = await (query(...a) as Promise<unknown>);
          await new Promise<void>((r) => {
            held = r;
          });
          answered();
          return answer;
        })();
      };
      return client;
    };
    // The first write's question is held; a second, concurrent, asks on its own and commits with the id.
    const first = outcome(insertUser(writer));
    while (delivered === undefined) await new Promise((r) => setTimeout(r, 5));
    const second = await insertUser(writer);
    await revoke();
    revoked = true;
    const third = await outcome(insertUser(writer));
    held?.();
    const firstDone = await first;

    expect(second.readToken.clusterId).toBe(await clusterId());
    expect(typeof third === 'string' ? third : { clusterId: third.readToken.clusterId }).toEqual({ clusterId: undefined });
    expect(typeof firstDone === 'string' ? firstDone : { clusterId: firstDone.readToken.clusterId }).toEqual({ clusterId: undefined });
  }, 60_000);

  // The savepoint the heartbeat's position read sets (for a refusal to roll back to) goes in the
  // same simple query: the common path (the answer known, the grant kept) sends as many round
  // trips as before the savepoint, and after a revoke the heartbeats that follow as many as a
  // login refused from the start (h152).
  it('sends the heartbeat in as many round trips as before, with the grant and after its revoke', async () => {
    const { pools, primary } = stack();
    const sent: string[] = [];
    interceptCheckouts(primary, (text, send) => {
      if (text !== undefined) sent.push(text.slice(0, 30));
      return send();
    });
    const roundTrips = async (): Promise<number> => {
      sent.length = 0;
      const heartbeat = await commitHeartbeat(pools.primary(shardId), { timeoutMs: 5000 });
      expect(heartbeat).not.toBeNull();
      return sent.length;
    };
    const asking = await roundTrips();
    const known = await roundTrips();
    await revoke();
    const refused = await roundTrips();
    const after = await roundTrips();

    // The heartbeat's transaction (begin, set local, txid_current, commit) and the position's (begin, the read, commit).
    expect({ asking, known, after }).toEqual({ asking: 8, known: 7, after: 7 });
    // Once, after the revoke: the refused read, rolled back to its savepoint, the question asked
    // again behind one of its own and rolled back to it, the read sent again without the id.
    expect(refused).toBe(7 + 4);
  }, 60_000);

  // `query` sends the check in its transaction's BEGIN; `withReadClient` without a BEGIN (its
  // callers that give none) as a statement of its own.
  it.each([{ check: 'in the BEGIN of its transaction' }, { check: 'as a statement of its own' }])(
    'serves a read with a token of the cluster on the primary, whose check ($check) was refused the id',
    async ({ check }) => {
      const { writer, reader } = stack();
      const { readToken } = await insertUser(writer);
      const options = { primary: true, token: readToken.lsn, tokenTimeline: readToken.timeline, ...(readToken.clusterId === undefined ? {} : { tokenClusterId: readToken.clusterId }) };
      await revoke();
      const read = await outcome(
        check === 'as a statement of its own'
          ? reader.withReadClient(shardId, async (client, servedBy, node) => ({ servedBy, begun: node.begun !== undefined, rows: (await client.query('select 1 as one')).rowCount }), options)
          : reader.query(shardId, 'select 1 as one', [], options).then((r) => ({ servedBy: r.servedBy, begun: true, rows: r.rowCount })),
      );

      expect(readToken.clusterId).toBe(await clusterId());
      expect(read).toEqual({ servedBy: `${shardId}/primary`, begun: check !== 'as a statement of its own', rows: 1 });
    },
    60_000,
  );

  // A refusal was kept for the pool's life: a login granted pg_control_system() later (a provider's
  // grant given back, a switchover back to a cluster where the login has it) issued tokens without
  // `;id=` until the process restarted. Now a refusal holds for its interval, then the next caller
  // asks again, once (h154). The pool's clock is the test's: no wall-clock wait.
  it('puts the id back in tokens once the refusal\'s interval has passed after the grant was given again, asking once per interval', async () => {
    const { writer, primary } = stack();
    let clock = 0;
    recheckClusterIdRefusal(primary, { intervalMs: 60_000, now: () => clock });
    const questions = countQuestions(primary);
    await revoke();
    const tokenOf = async (): Promise<string> => formatReadToken((await insertUser(writer)).readToken);
    const refused = await tokenOf();
    await grant();
    const granted = await tokenOf();
    clock += 59_999;
    const justBefore = await tokenOf();
    const asked = questions.count;
    clock += 1;
    const after = await tokenOf();
    const next = await tokenOf();
    const id = await clusterId();

    expect({ refused, granted, justBefore }).toEqual({ refused: expect.not.stringContaining(';id='), granted: expect.not.stringContaining(';id='), justBefore: expect.not.stringContaining(';id=') });
    // Before: no `;id=` in any of them, the refusal kept.
    expect({ after, next }).toEqual({ after: expect.stringMatching(new RegExp(`;id=${id}$`)), next: expect.stringMatching(new RegExp(`;id=${id}$`)) });
    // One question refused (the first write's), none until the interval passed, then one.
    expect({ asked, total: questions.count }).toEqual({ asked: 1, total: 2 });
  }, 60_000);

  it('asks a refusal past its interval again once, not once per concurrent write, and keeps it while still refused', async () => {
    // Eight connections, all open before the interval passes: each write on its own.
    const primary = new pg.Pool({ connectionString: asLogin(primaryUrl), max: 8 });
    primary.on('error', () => undefined);
    closers.push(() => primary.end());
    const writer = createShardWriter({ router: { routeForWrite: () => Promise.resolve({ shardId, slot: 7, version: 1, viaDirectory: false }) }, primaries: new Map([[shardId, primary]]) });
    let clock = 0;
    recheckClusterIdRefusal(primary, { intervalMs: 1000, now: () => clock });
    const open = await Promise.all(Array.from({ length: 8 }, () => primary.connect()));
    for (const client of open) client.release();
    await revoke();
    await insertUser(writer);
    const questions = countQuestions(primary);
    clock += 1000;
    const writes = await Promise.all(Array.from({ length: 8 }, () => insertUser(writer)));

    expect(writes.map((w) => w.readToken.clusterId)).toEqual(Array.from({ length: 8 }, () => undefined));
    expect({ questions: questions.count, known: clusterIdReadableKnown(primary) }).toEqual({ questions: 1, known: false });
  }, 60_000);

  // A write's BEGIN refused the id was sent again once per request: rerouted meanwhile (a move
  // flipped its unit's owner) to a second shard whose login was refused too (its pool had learned
  // "may" before), the second shard's refusal failed the write with 42501 (h154).
  it('commits a write refused the id on its shard, then rerouted to a second shard that refuses it too', async () => {
    const { writer: warm, primary } = stack();
    // The "second shard": another pool (a cache of its own) of the login over the same database,
    // the write sent there to another slot; the first shard's slot is 'moved' once both learned "may".
    const second = new pg.Pool({ connectionString: asLogin(primaryUrl), max: 2 });
    second.on('error', () => undefined);
    closers.push(() => second.end());
    const routes: string[] = [];
    const router: WriteRouter = {
      routeForWrite: (_key, options) => {
        const shard = options?.fresh === true ? 'second' : 'first';
        routes.push(shard);
        return Promise.resolve({ shardId: shard, slot: shard === 'first' ? 7 : 8, version: 1, viaDirectory: false });
      },
    };
    const writer = createShardWriter({ router, primaries: new Map([['first', primary], ['second', second]]) });
    await insertUser(warm);
    await createShardWriter({ router: { routeForWrite: () => Promise.resolve({ shardId: 'second', slot: 8, version: 1, viaDirectory: false }) }, primaries: new Map([['second', second]]) }).withShardWrite(randomUUID(), () => Promise.resolve());
    const learned = { first: clusterIdReadableKnown(primary), second: clusterIdReadableKnown(second) };
    await withClient(primaryUrl, (c) => c.query("insert into write_fences (kind, unit_id, state, moved_to, map_version) values ('slot', '7', 'moved', 'second', 2)"));
    let written: Awaited<ReturnType<typeof insertUser>> | string;
    try {
      await revoke();
      written = await outcome(insertUser(writer));
    } finally {
      await withClient(primaryUrl, (c) => c.query("delete from write_fences where kind = 'slot' and unit_id = '7'"));
    }

    expect(learned).toEqual({ first: true, second: true });
    // Before: "failed 42501: permission denied for function pg_control_system", from the second shard.
    expect(typeof written === 'string' ? written : { shardId: written.shardId, clusterId: written.readToken.clusterId }).toEqual({ shardId: 'second', clusterId: undefined });
    expect(routes).toEqual(['first', 'first', 'second', 'second']);
    expect({ first: clusterIdReadableKnown(primary), second: clusterIdReadableKnown(second) }).toEqual({ first: false, second: false });
  }, 60_000);

  // A refusal past its interval is asked again where the answer is needed: also inside the
  // heartbeat's transaction (behind a savepoint) and before a read's check in its BEGIN, places a
  // known refusal never asked before h154 (h157's review).
  it.each([{ regranted: false }, { regranted: true }])('asks a refusal past its interval again inside the heartbeat and before a read\'s check (granted again: $regranted)', async ({ regranted }) => {
    const { writer, reader, pools, primary } = stack();
    let clock = 0;
    recheckClusterIdRefusal(primary, { intervalMs: 1000, now: () => clock });
    const { readToken } = await insertUser(writer);
    const options = { primary: true, token: readToken.lsn, tokenTimeline: readToken.timeline, ...(readToken.clusterId === undefined ? {} : { tokenClusterId: readToken.clusterId }) };
    await revoke();
    const refused = await commitHeartbeat(pools.primary(shardId), { timeoutMs: 5000 });
    if (regranted) await grant();
    clock += 1000;
    const heartbeat = await commitHeartbeat(pools.primary(shardId), { timeoutMs: 5000 });
    const knownAfterHeartbeat = clusterIdReadableKnown(primary);
    clock += 1000;
    const read = await outcome(reader.query(shardId, 'select 1 as one', [], options).then((r) => ({ servedBy: r.servedBy, rows: r.rowCount })));
    clock += 1000;
    const written = await insertUser(writer);
    const id = await clusterId();

    expect(readToken.clusterId).toBe(id);
    expect(refused === null ? null : { clusterId: refused.clusterId }).toEqual({ clusterId: undefined });
    expect(heartbeat === null ? null : { clusterId: heartbeat.clusterId }).toEqual({ clusterId: regranted ? id : undefined });
    expect(knownAfterHeartbeat).toBe(regranted);
    expect(read).toEqual({ servedBy: `${shardId}/primary`, rows: 1 });
    expect(written.readToken.clusterId).toBe(regranted ? id : undefined);
  }, 60_000);

  it("serves a read with a token of the cluster on the replica, whose token check was refused the id, and the heartbeat still measures it", async () => {
    const { writer, reader, pools } = stack();
    // Measured before the write: its token is past what the reader vouches for, so the replica is
    // asked (its token check), and its pool learns its login may read the id.
    await reader.refresh();
    const { readToken } = await insertUser(writer);
    const tokenOptions = { token: readToken.lsn, tokenTimeline: readToken.timeline, ...(readToken.clusterId === undefined ? {} : { tokenClusterId: readToken.clusterId }) };
    await replayed();
    const before = await reader.query(shardId, 'select 1 as one', [], tokenOptions);
    await revoke();
    await replayed();
    const heartbeat = await commitHeartbeat(pools.primary(shardId), { timeoutMs: 5000 });
    const read = await outcome(reader.query(shardId, 'select 1 as one', [], tokenOptions));

    expect(before.servedBy).toBe(`${shardId}/replica-1`);
    expect(heartbeat === null ? null : { clusterId: heartbeat.clusterId }).toEqual({ clusterId: undefined });
    expect(typeof read === 'string' ? read : { servedBy: read.servedBy, rows: read.rowCount }).toEqual({ servedBy: `${shardId}/replica-1`, rows: 1 });
  }, 60_000);
});
