import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeWithToken } from '../../../functions/adapters/postgres/replica-reader.js';
import { createShardWriter, type WriteRouter } from '../../../functions/adapters/postgres/write-transaction.js';
import { parseLsn } from '../../../functions/core/sharding/lsn.js';
import { startShardCluster, type TestShardCluster } from '../../support/replica.js';

/**
 * Read-your-writes under load, now that a token is the primary's WAL flush position where the
 * commit was flushed (`synchronous_commit` not off) and its insert position where it was not
 * (`TOKEN_POSITION_SQL`, token-position.ts; h130). The promise a token makes to a replica is
 * unchanged: a replica that has replayed to it holds the write. The flush position is at or past
 * the commit's record only because that record was flushed before the COMMIT was answered; other
 * writers keep the insert position ahead of the flush position (their WAL inserted, not yet
 * flushed: synchronous_commit off, big inserts), so the two differ while the writes are made, and
 * a token short of its commit would show as a replica past the token without the row.
 */
describe('read-your-writes tokens under load of other writers', () => {
  let cluster: TestShardCluster;
  const pools: pg.Pool[] = [];
  const pool = (url: string, settings: string, max: number): pg.Pool => {
    const p = new pg.Pool({ connectionString: url, max, options: settings });
    p.on('error', () => undefined);
    pools.push(p);
    return p;
  };
  beforeAll(async () => {
    cluster = await startShardCluster({ shards: 1, replicasPerShard: 1, schema: true });
  }, 180_000);
  afterAll(async () => {
    await Promise.all(pools.splice(0).map((p) => p.end().catch(() => undefined)));
    await cluster?.stop();
  });

  // `setLocal`: the session's setting is on, and the body lowers it for its transaction alone
  // (SET LOCAL synchronous_commit = off). The setting is read in the COMMIT's round trip, so the
  // token is the insert position then (before, the session's setting read after the commit, on,
  // gave the flush position, which could fall short of the unflushed commit record; h133).
  it.each([
    { synchronousCommit: 'on', position: 'flush', setLocal: false, via: 'withShardWrite' },
    { synchronousCommit: 'off', position: 'insert', setLocal: false, via: 'withShardWrite' },
    { synchronousCommit: 'on', position: 'insert', setLocal: true, via: 'withShardWrite' },
    { synchronousCommit: 'on', position: 'insert', setLocal: true, via: 'writeWithToken' },
  ])('a replica replayed to the token of a write committed with synchronous_commit $synchronousCommit (SET LOCAL off: $setLocal, $via) holds it (the $position position)', async ({ synchronousCommit, setLocal, via }) => {
    const shard = cluster.shards[0];
    const replicaUrl = shard?.replicas[0]?.url;
    if (shard === undefined || replicaUrl === undefined) throw new Error('the cluster has no replica');
    const router: WriteRouter = { routeForWrite: () => Promise.resolve({ shardId: shard.shardId, slot: 7, version: 1, viaDirectory: false }) };
    const primary = pool(shard.primary.url, `-c synchronous_commit=${synchronousCommit}`, 4);
    const writer = createShardWriter({ router, primaries: new Map([[shard.shardId, primary]]) });
    const others = pool(shard.primary.url, '-c synchronous_commit=off', 3);
    const replica = pool(replicaUrl, '', 4);
    const admin = pool(shard.primary.url, '', 1);
    await admin.query('create table if not exists token_load (n int, pad text)');

    let loading = true;
    const load = [0, 1, 2].map(async () => {
      while (loading) await others.query("insert into token_load select g, repeat('y', 200) from generate_series(1, 300) g");
    });
    // The premise: while the writes are made, WAL is inserted that is not flushed yet.
    let flushBehindInsert = 0;
    const sampling = (async () => {
      while (loading) {
        const { rows } = await admin.query<{ behind: boolean }>('select pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn() as behind');
        if (rows[0]?.behind === true) flushBehindInsert += 1;
      }
    })();

    const missing: string[] = [];
    let replayedTo = 0;
    const writers = [0, 1, 2, 3].map(async () => {
      for (let i = 0; i < 25; i += 1) {
        const id = randomUUID();
        const insert = async (client: pg.ClientBase, slot: number): Promise<void> => {
          if (setLocal) await client.query('set local synchronous_commit = off');
          await client.query("insert into users (id, slot, email, display_name) values ($1, $2, 'load@example.org', 'load')", [id, slot]);
        };
        const written =
          via === 'withShardWrite'
            ? await writer.withShardWrite(id, ({ client, slot }) => insert(client, slot))
            : await writeWithToken(primary, (client) => insert(client, 7));
        const token = parseLsn(written.token);
        // Once the replica has replayed to the token (as a reader's routing checks), the row is there.
        for (let waited = 0; ; waited += 1) {
          // The position first, the row in a statement after it: a snapshot taken after the replay.
          const replay = (await replica.query<{ replay: string }>('select pg_last_wal_replay_lsn()::text as replay')).rows[0]?.replay ?? '0/0';
          if (parseLsn(replay) >= token) {
            replayedTo += 1;
            if ((await replica.query('select 1 from users where id = $1', [id])).rowCount !== 1) missing.push(`${id} at ${written.token} (replica at ${replay})`);
            break;
          }
          if (waited > 2000) throw new Error(`the replica did not replay to ${written.token} in time`);
          await new Promise((r) => setTimeout(r, 2));
        }
      }
    });
    try {
      await Promise.all(writers);
    } finally {
      loading = false;
      await Promise.all([...load, sampling]);
    }

    expect({ replayedTo, missing, loadedAhead: flushBehindInsert > 0 }).toEqual({ replayedTo: 100, missing: [], loadedAhead: true });
  }, 120_000);
});
