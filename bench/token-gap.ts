/**
 * How far a write's read-your-writes token lies past the write's own commit record (issue #15,
 * "a write lost in a failover"). The writer reads the token (`TOKEN_POSITION_SQL`: the flush
 * position, or the insert position under `synchronous_commit = off`, which the test servers run
 * with; `PGOPTIONS='-c synchronous_commit=on'` measures the flush position) in a round trip after
 * the COMMIT's answer, so WAL that other sessions insert (or flush) in between puts it past the
 * commit record's end. A failover whose fork point falls in that gap keeps the write yet calls
 * it lost: a list read with its token answers 410 (docs/sharding-spec.md, "A write lost in a
 * failover", Imprecision). This measures the gap on one embedded PostgreSQL 17 shard:
 * `--writers` concurrent writers (`withShardWrite`, one user insert each) for `--n` writes in all;
 * each write's commit record is found by its transaction id with pg_walinspect
 * (`pg_get_wal_records_info`), and the token is compared with the record's end (both as
 * `normalizeWalPosition` leaves them). Printed per concurrency: the share of tokens past their
 * commit's end, and the gap in bytes (p50, p99, max).
 *
 * `--mode pipelined` measures the alternative: the COMMIT and the position query in one simple
 * query (plain pg, not the writer), no round trip in between.
 *
 * Run: `npm run bench:token-gap --` or `npx tsx bench/token-gap.ts` (options: `--n N`, default 2000; `--writers A,B,...`, default
 * 1,4,16; `--mode writer|pipelined`, default writer).
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import { createShardWriter, type WriteRouter } from '../functions/adapters/postgres/write-transaction.js';
import { normalizeWalPosition, parseLsn } from '../functions/core/sharding/lsn.js';
import { startShardCluster } from '../test/support/replica.js';

const { values } = parseArgs({ options: { n: { type: 'string', default: '2000' }, writers: { type: 'string', default: '1,4,16' }, mode: { type: 'string', default: 'writer' } } });
const options = z
  .object({ n: z.coerce.number().int().min(1), writers: z.array(z.coerce.number().int().min(1).max(64)).min(1), mode: z.enum(['writer', 'pipelined']) })
  .parse({ n: values.n, writers: (values.writers ?? '').split(','), mode: values.mode });

const SHARD = 'shard_001';
const router: WriteRouter = { routeForWrite: () => Promise.resolve({ shardId: SHARD, slot: 7, version: 1, viaDirectory: false }) };

const cluster = await startShardCluster({ shards: 1, replicasPerShard: 0, schema: true });
try {
  const url = cluster.shards[0]?.primary.url ?? '';
  const admin = new pg.Client({ connectionString: url });
  admin.on('error', () => undefined);
  await admin.connect();
  await admin.query('create extension if not exists pg_walinspect');
  for (const writers of options.writers) {
    const pool = new pg.Pool({ connectionString: url, max: writers });
    pool.on('error', () => undefined);
    const writer = createShardWriter({ router, primaries: new Map([[SHARD, pool]]) });
    const start = (await admin.query<{ l: string }>('select pg_current_wal_insert_lsn()::text as l')).rows[0]?.l ?? '0/0';
    const done: { xid: string; token: bigint }[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: writers }, async () => {
        while (next < options.n) {
          next += 1;
          const id = randomUUID();
          if (options.mode === 'writer') {
            const r = await writer.withShardWrite(id, async ({ client }) => {
              await client.query('insert into users (id, slot, email, display_name) values ($1, 7, $2, $3)', [id, `${id}@example.org`, 'gap']);
              return (await client.query<{ xid: string }>('select pg_current_xact_id()::text as xid')).rows[0]?.xid ?? '';
            });
            done.push({ xid: r.value, token: normalizeWalPosition(parseLsn(r.readToken.lsn)) });
          } else {
            // The same insert, its COMMIT and the position query sent in one simple query: no
            // round trip between the commit and the position (what the writer could do instead).
            const client = await pool.connect();
            try {
              await client.query('begin isolation level read committed');
              await client.query('insert into users (id, slot, email, display_name) values ($1, 7, $2, $3)', [id, `${id}@example.org`, 'gap']);
              const xid = (await client.query<{ xid: string }>('select pg_current_xact_id()::text as xid')).rows[0]?.xid ?? '';
              const answer = (await client.query('commit; select pg_current_wal_insert_lsn()::text as lsn')) as unknown as pg.QueryResult<{ lsn: string }>[];
              done.push({ xid, token: normalizeWalPosition(parseLsn(answer[1]?.rows[0]?.lsn ?? '0/0')) });
            } finally {
              client.release();
            }
          }
        }
      }),
    );
    const end = (await admin.query<{ l: string }>('select pg_current_wal_insert_lsn()::text as l')).rows[0]?.l ?? '0/0';
    const commits = await admin.query<{ xid: string; end_lsn: string }>(
      "select xid::text as xid, end_lsn::text as end_lsn from pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn) where resource_manager = 'Transaction' and record_type = 'COMMIT'",
      [start, end],
    );
    const commitEnd = new Map(commits.rows.map((c) => [c.xid, normalizeWalPosition(parseLsn(c.end_lsn))]));
    const gaps: number[] = [];
    let missing = 0;
    for (const w of done) {
      // pg_current_xact_id() is an xid8 (epoch and xid): the WAL record names the 32-bit xid.
      const e = commitEnd.get(String(BigInt(w.xid) & 0xffffffffn));
      if (e === undefined) {
        missing += 1;
        continue;
      }
      gaps.push(Number(w.token - e));
    }
    gaps.sort((a, b) => a - b);
    const at = (q: number): number => gaps[Math.min(gaps.length - 1, Math.floor(q * gaps.length))] ?? 0;
    const past = gaps.filter((g) => g > 0).length;
    console.log(
      `${options.mode}, writers ${writers}: ${gaps.length} writes (${missing} commit records not found); token past its commit's end: ${past} (${((100 * past) / Math.max(1, gaps.length)).toFixed(1)}%); gap bytes p50 ${at(0.5)}, p99 ${at(0.99)}, max ${gaps.at(-1) ?? 0}; negative: ${gaps.filter((g) => g < 0).length}`,
    );
    await pool.end();
  }
  await admin.end();
} finally {
  await cluster.stop();
}
