import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { captureWriteToken } from '../../../functions/adapters/postgres/replica-reader.js';
import { parseLsn } from '../../../functions/core/sharding/lsn.js';
import { formatReadToken, parseReadToken } from '../../../functions/core/sharding/read-token.js';
import { migrateDatabase } from '../../support/postgres.js';
import { oneShardApi, readAfterRetried, type Answer } from './fixtures/one-shard-api.js';
import { startRestartable, type RestartablePostgres } from './fixtures/restartable.js';

/**
 * A read token is the primary's WAL insert position read after the commit
 * (`captureWriteToken`): everything inserted by then, other sessions' WAL too, some of it not yet
 * written out. A primary that crashes and restarts (the same server, the same timeline: crash
 * recovery takes no new one) keeps what was flushed, the acknowledged commit among it, and loses
 * the rest of its WAL buffers: its insert position after the restart may be behind a token it
 * issued for a write it holds. The same-timeline check (a token past the primary's WAL end is
 * another server's, h104's 5259872) read such a token as a lost write: a list, which answers 410
 * whenever the reader says so, refused the owner's documents with the document among them, and
 * told the client to send the write again.
 *
 * The interleaving: another session's uncommitted insert falls between the write's commit and
 * the token's read. The API's write reads its token right after its commit, so the token is taken
 * here as it does (`captureWriteToken` on the primary, in the API's token form) with that insert
 * in the gap. The WAL writer is slowed (10 s) so that the insert stays in the WAL buffers until
 * the crash (an immediate shutdown).
 */
describe('a read token past the WAL end of its own primary restarted after a crash', () => {
  let server: RestartablePostgres;
  const closers: (() => Promise<void>)[] = [];
  beforeAll(async () => {
    server = await startRestartable({ wal_writer_delay: '10s', wal_writer_flush_after: 0, bgwriter_lru_maxpages: 0 });
    await migrateDatabase(server.url, 'shard');
  }, 180_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => undefined);
    await server?.stop();
  });

  it('answers the write it holds (200, list, document and user), not 410 "lost in a failover"', async () => {
    const { api } = await oneShardApi(server.url, closers);
    const user = await api('POST', '/api/v1/users', { email: 'crash@example.org', display_name: 'crash' });
    const doc = await api('POST', '/api/v1/documents', { owner_id: user.body?.id, title: 'kept through the crash' });
    if (user.status !== 201 || doc.status !== 201) throw new Error(`the writes answered ${user.status}, ${doc.status}`);
    const issued = parseReadToken(doc.headers.get('x-read-token') ?? '');

    const admin = new pg.Client({ connectionString: server.url });
    admin.on('error', () => undefined);
    await admin.connect();
    await admin.query('create table filler (n int, pad text)');
    const other = new pg.Client({ connectionString: server.url });
    other.on('error', () => undefined);
    await other.connect();
    await other.query('begin');
    await other.query("insert into filler select g, repeat('x', 100) from generate_series(1, 2000) g");
    const token = formatReadToken({ ...issued, lsn: await captureWriteToken(admin) });
    await admin.end();

    await server.restart('immediate');
    const after = await withClient(server.url, async (c) => (await c.query<{ lsn: string; tli: string }>("select pg_current_wal_insert_lsn()::text as lsn, substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) as tli")).rows[0]);
    // The pool's connections died with the server: the first reads after may meet one (503).
    const read = (path: string): Promise<Answer> => readAfterRetried(api, path, token);
    const list = await read(`/api/v1/users/${String(user.body?.id)}/documents`);
    const one = await read(`/api/v1/documents/${String(doc.body?.id)}?owner=${String(user.body?.id)}`);
    const owner = await read(`/api/v1/users/${String(user.body?.id)}`);

    // The premise: the same timeline, and the token past the restarted primary's WAL end.
    expect({ timeline: Number.parseInt(after?.tli ?? '', 16), tokenTimeline: issued.timeline, pastEnd: parseLsn(token.split('@')[1]?.split(';')[0] ?? '0/0') > parseLsn(after?.lsn ?? '0/0') }).toEqual({
      timeline: 1,
      tokenTimeline: 1,
      pastEnd: true,
    });
    // Before: 410 write-lost for the list ("another server that took the same timeline number").
    expect({ status: list.status, items: (list.body?.items as { id: string }[] | undefined)?.map((d) => d.id) }).toEqual({ status: 200, items: [doc.body?.id] });
    expect([one.status, owner.status]).toEqual([200, 200]);
  }, 120_000);
});
