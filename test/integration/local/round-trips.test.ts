/**
 * How many round trips a write (`withShardWrite`) and a read (`withShardRead`) make, counted on
 * the wire (pg-wire-recorder: every simple query and every extended-protocol parse the client
 * sends; pg sends one of them per round trip and never pipelines), so that the count cannot grow
 * again unnoticed. A write with one statement of its own: BEGIN with its SET LOCALs, the
 * timeline and the fence rows in one simple query; the statement; COMMIT; the read token. A read
 * with one statement: BEGIN with its SET LOCALs and the fence rows; the statement; COMMIT.
 * Also: keys that need quoting in that simple query find their own fence rows, and a key that
 * cannot be quoted (a NUL) fails as it always did.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { clusterIdReadable } from '../../../functions/adapters/postgres/cluster-identity.js';
import { createShardReader } from '../../../functions/adapters/postgres/read-transaction.js';
import { ReplicaReader } from '../../../functions/adapters/postgres/replica-reader.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { createShardWriter, ShardWriteError, type WriteRoute } from '../../../functions/adapters/postgres/write-transaction.js';
import { RolledBackAtCommitError } from '../../../functions/adapters/postgres/transaction.js';
import { startPgWireRecorder, type PgWireRecorder } from '../../support/pg-wire-recorder.js';
import { startDocumentsApi, type DocumentsApi } from './documents-harness.js';

describe('round trips of a write and a read on a shard', () => {
  let api: DocumentsApi;
  let recorder: PgWireRecorder;
  let pools: ShardPools;
  let reader: ReplicaReader;
  let shardId: string;
  let direct: pg.Pool;
  beforeAll(async () => {
    api = await startDocumentsApi();
    shardId = 'shard_001';
    recorder = await startPgWireRecorder(Number(new URL(api.server.urlFor(shardId)).port));
    const url = `postgresql://postgres:postgres@127.0.0.1:${recorder.port}/${shardId}`;
    pools = ShardPools.fromConfig(parseShardingConfig({ shards: [{ shard_id: shardId, database_url: url }], default_shard: shardId }), { max: 1 });
    reader = new ReplicaReader(pools, { bounds: { maxLagSeconds: 60, maxLagBytes: 1 << 24, maxStateAgeMs: 120_000 }, intervalMs: 60_000 });
    direct = api.primary(shardId);
  });
  afterAll(async () => {
    reader?.stop();
    await pools?.end();
    await recorder?.close();
    await api?.stop();
  });

  /** A writer and a reader whose every key routes to `shardId`, slot `slot` (a directory-placed key when `viaDirectory`). */
  const onShard = (slot: number, viaDirectory = false, maxFenceWaitMs?: number) => {
    const route: WriteRoute = { shardId, slot, version: 1, viaDirectory };
    const router = { routeForWrite: () => Promise.resolve(route) };
    return {
      writer: createShardWriter({ router, primaries: new Map([[shardId, pools.primary(shardId).pool]]), ...(maxFenceWaitMs === undefined ? {} : { maxFenceWaitMs }) }),
      reads: createShardReader({ router, reader }),
    };
  };
  /**
   * What the client sent for `work`, once its pooled connection is open (the connection's own
   * set-up is no part of it, nor is the reader's check, once per connection, that the primary's
   * address reached a server out of recovery, nor the question, once per pool, whether its login
   * may read the server's cluster id: cluster-identity.ts).
   */
  const sentFor = async (work: () => Promise<unknown>): Promise<{ outcome: string; sent: string[] }> => {
    await reader.query(shardId, 'select 1', [], { primary: true });
    const pool = pools.primary(shardId).pool;
    const client = await pool.connect();
    try {
      await clusterIdReadable(pool, client);
    } finally {
      client.release();
    }
    recorder.clear();
    const outcome = await work().then(
      () => 'done',
      (e: unknown) => (e instanceof ShardWriteError ? `${e.name}:${e.reason}` : `${(e as { code?: string }).code ?? ''} ${String(e)}`),
    );
    return { outcome, sent: recorder.statements().map((s) => `${s.kind}: ${s.sql.replace(/\s+/g, ' ').slice(0, 60)}`) };
  };
  const insertUser = (key: string) => async ({ client, slot }: { client: pg.PoolClient; slot: number }) =>
    client.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [key, slot, `${key}@example.org`, 'round trips']);

  it.each([
    { deadline: 'a deadline', options: { deadlineMs: 5000 } },
    { deadline: 'no deadline', options: {} },
  ])('a write of one statement takes 4 round trips with $deadline: BEGIN (with its timeouts, the timeline and the fence rows), the statement, COMMIT, the read token', async ({ options }) => {
    const key = randomUUID();
    const { writer } = onShard(3001);
    const { outcome, sent } = await sentFor(() => writer.withShardWrite(key, insertUser(key), options));

    expect({ outcome, sent }).toEqual({
      outcome: 'done',
      sent: [
        expect.stringMatching(/^simple: begin isolation level read committed; /) as unknown as string,
        'parse: insert into users (id, slot, email, display_name) values ($1',
        // The COMMIT, with the transaction's own synchronous_commit read before it in its round
        // trip (COMMIT_SETTING_SQL, token-position.ts: a body's SET LOCAL off; h133).
        "simple: select current_setting('synchronous_commit') as synchronous_",
        // The read token (TOKEN_POSITION_SQL: the flush position, the insert position under
        // synchronous_commit off, as the test servers run); recorded cut short.
        expect.stringMatching(/^simple: select (case when current_setting\('synchronous_commit'\) = 'of|pg_current_wal_insert_lsn\(\)::text as lsn)/) as unknown as string,
      ],
    });
    expect(recorder.statements()[2]?.sql).toBe("select current_setting('synchronous_commit') as synchronous_commit; commit");
    const begin = recorder.statements()[0]?.sql ?? '';
    // The timeouts come with the BEGIN, before any statement that could wait: never a transaction open without them.
    expect({
      // statement_timeout, lock_timeout and idle_in_transaction_session_timeout: the deadline's, or the session's own where shorter (one select, deadline.ts timeoutsAtMostSql).
      timeouts: /^begin isolation level read committed; select set_config\('statement_timeout', [^;]*set_config\('lock_timeout', [^;]*set_config\('idle_in_transaction_session_timeout', [^;]*; select case/.test(begin),
      fenceRows: begin.includes(`w.unit_id = '${key}'`) && begin.trimEnd().endsWith('for share of w'),
    }).toEqual({ timeouts: 'deadlineMs' in options, fenceRows: true });
  });

  // The COMMIT carries a statement before it (the transaction's synchronous_commit): in a
  // transaction a statement of which failed (the body handled its error), that statement fails
  // (25P02) and the COMMIT is not run. The writer answers as when the COMMIT answered ROLLBACK:
  // RolledBackAtCommitError, nothing committed, the connection rolled back and lent again.
  it('a body that handled a failed statement: rolled back at the COMMIT as before, nothing committed, the connection reused', async () => {
    const key = randomUUID();
    const { writer } = onShard(3003);
    const { outcome, sent } = await sentFor(() =>
      writer.withShardWrite(key, async (ctx) => {
        await insertUser(key)(ctx);
        await ctx.client.query('select 1/0').catch(() => undefined);
      }),
    );
    expect({ outcome, sent: sent.slice(1) }).toEqual({
      outcome: `25P02 ${new RolledBackAtCommitError().toString()}`,
      sent: ['parse: insert into users (id, slot, email, display_name) values ($1', 'simple: select 1/0', "simple: select current_setting('synchronous_commit') as synchronous_", 'simple: rollback'],
    });
    const again = randomUUID();
    await writer.withShardWrite(again, insertUser(again));
    const held = await direct.query<{ id: string }>('select id::text from users where id = any($1::uuid[]) order by id', [[key, again]]);
    expect(held.rows.map((r) => r.id)).toEqual([again]);
  });

  it.each([
    { deadline: 'a deadline', options: { deadlineMs: 5000, primary: true } },
    { deadline: 'no deadline', options: { primary: true } },
  ])('a read of one statement takes 3 round trips with $deadline: BEGIN (with its timeouts and the fence rows), the statement, COMMIT', async ({ options }) => {
    const key = randomUUID();
    const { reads } = onShard(3002);
    const { outcome, sent } = await sentFor(() => reads.withShardRead(key, async ({ client }) => (await client.query('select 1 from users where id = $1', [key])).rowCount, options));

    expect({ outcome, sent }).toEqual({
      outcome: 'done',
      sent: [expect.stringMatching(/^simple: begin isolation level repeatable read read only/) as unknown as string, 'parse: select 1 from users where id = $1', 'simple: commit'],
    });
    const begin = recorder.statements()[0]?.sql ?? '';
    expect({
      timeouts: /^begin isolation level repeatable read read only; select set_config\('statement_timeout', [^;]*set_config\('idle_in_transaction_session_timeout', [^;]*; select kind/.test(begin) && !begin.includes("'lock_timeout'"),
      fenceRows: begin.includes(`unit_id = '${key}'`),
    }).toEqual({ timeouts: 'deadlineMs' in options, fenceRows: true });
  });

  it("a read with a read token on the primary takes no round trip more: the primary check (in recovery, timeline, server start, WAL position) of the server the connection reaches now, each time, in the read's BEGIN", async () => {
    const key = randomUUID();
    const { writer, reads } = onShard(3005);
    const { readToken } = await writer.withShardWrite(key, insertUser(key));
    const read = () => reads.withShardRead(key, async ({ client }) => (await client.query('select 1 from users where id = $1', [key])).rowCount, { token: readToken, deadlineMs: 5000 });
    // The same read twice on the same connection: the second is checked again, in its own
    // transaction (a proxy may have lent the connection another server in between, or lend the
    // read's transaction another server than a check of its own: timeline-lost-write-writer-proxy.test.ts).
    const first = await sentFor(read);
    const firstBegin = recorder.statements()[0]?.sql ?? '';
    const second = await sentFor(read);
    const secondBegin = recorder.statements()[0]?.sql ?? '';

    const expected = {
      outcome: 'done',
      sent: [expect.stringMatching(/^simple: begin isolation level repeatable read read only/) as unknown as string, 'parse: select 1 from users where id = $1', 'simple: commit'],
    };
    expect({ first, second }).toEqual({ first: expected, second: expected });
    const checked = /; select kind[\s\S]*; select pg_is_in_recovery\(\) as in_recovery,\s+case when/;
    expect({ first: checked.test(firstBegin), second: checked.test(secondBegin) }).toEqual({ first: true, second: true });
  });

  it('finds the fence row of a key that needs quoting in the BEGIN\'s simple query (quotes, backslashes): a fenced key waits, a moved one is re-routed', async () => {
    const keys = { fenced: `o'k\\'; select 1; --${randomUUID()}`, moved: `it\\'s ''moved'' ${randomUUID()}` };
    await direct.query("insert into write_fences (kind, unit_id, state) values ('directory', $1, 'fenced'), ('directory', $2, 'moved')", [keys.fenced, keys.moved]);
    try {
      const { writer, reads } = onShard(3003, true, 30);
      const reason = (e: unknown): string => (e instanceof Error ? `${e.name}:${(e as { reason?: string }).reason ?? String(e)}` : String(e));
      const fenced = await writer.withShardWrite(keys.fenced, async () => 'written', { deadlineMs: 5000 }).then(() => 'written', reason);
      const moved = await writer.withShardWrite(keys.moved, async () => 'written', { deadlineMs: 5000 }).then(() => 'written', reason);
      const movedRead = await reads.withShardRead(keys.moved, async () => 'read', { deadlineMs: 5000, primary: true }).then(() => 'read', reason);
      const open = await writer.withShardWrite(`o'k\\${randomUUID()}`, async () => 'written', { deadlineMs: 5000 }).then((r) => r.value, reason);

      expect({ fenced, moved, movedRead, open }).toEqual({
        fenced: 'ShardWriteError:fence-timeout',
        moved: 'ShardWriteError:too-many-reroutes',
        movedRead: 'ShardReadError:too-many-reroutes',
        open: 'written',
      });
    } finally {
      await direct.query("delete from write_fences where kind = 'directory' and unit_id = any ($1)", [Object.values(keys)]);
    }
  });

  it('fails a write and a read of a key holding a NUL as before (22021 from the fence rows, sent with their parameters), and nothing is left open', async () => {
    const key = `nul\u0000${randomUUID()}`;
    const { writer, reads } = onShard(3004);
    const write = await sentFor(() => writer.withShardWrite(key, async () => 'written', { deadlineMs: 5000 }));
    const read = await sentFor(() => reads.withShardRead(key, async () => 'read', { deadlineMs: 5000, primary: true }));
    const { rows } = await direct.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where state like 'idle in transaction%' and pid <> pg_backend_pid()");

    expect({ write: write.outcome.split(' ')[0], writeSent: write.sent.length, read: read.outcome.split(' ')[0], readSent: read.sent.length, open: rows[0]?.n }).toEqual({
      write: '22021',
      writeSent: 3, // BEGIN (timeouts, timeline), the fence rows, ROLLBACK
      read: '22021',
      readSent: 3,
      open: 0,
    });
  });
});
