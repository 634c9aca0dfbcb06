import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardWriteError } from '../../../functions/adapters/postgres/write-transaction.js';
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
