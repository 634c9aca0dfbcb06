/**
 * GET /api/v1/users reads, on each shard's replica, the fence rows that can still matter to the
 * page (units in transit, and who owns them), not every row of write_fences: `moved` and `open`
 * rows accumulate, one per unit ever moved. Counted by the rows the listing's statement returns,
 * through the replica reader it is given.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDocumentsRoute, type DocumentsApiDeps } from '../../../functions/local/documents-api.js';
import { keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { laggingReplicaReader } from './fixtures/lagging-replica.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});

type Reader = DocumentsApiDeps['reader'];

/** The env's primaries as replicas whose lag bound is `maxLagSeconds`. */
function primariesAsReplicas(maxLagSeconds: number | undefined): Reader {
  return {
    ...(maxLagSeconds === undefined ? {} : { maxLagSeconds }),
    async query<R extends pg.QueryResultRow>(shardId: string, text: string, values: unknown[] = []) {
      const r = await (env.shards.get(shardId) as pg.Pool).query<R>(text, values);
      return { rows: r.rows, rowCount: r.rowCount, servedBy: `${shardId}/primary` };
    },
  };
}

/** `reader`, recording the fence rows each replica read of the listing returned, by shard. */
function counting(reader: Reader): { reader: Reader; fences: Map<string, unknown[][]> } {
  const fences = new Map<string, unknown[][]>();
  return {
    fences,
    reader: {
      ...(reader.maxLagSeconds === undefined ? {} : { maxLagSeconds: reader.maxLagSeconds }),
      async query<R extends pg.QueryResultRow>(shardId: string, text: string, values: unknown[] = [], options?: { readonly primary?: boolean; readonly deadlineAt?: number }) {
        const r = await reader.query<R>(shardId, text, values, options);
        const row = r.rows[0] as { fences?: unknown[][] } | undefined;
        if (options?.primary !== true && row?.fences !== undefined) fences.set(shardId, row.fences);
        return r;
      },
    },
  };
}

/** `reader`, recording the slots whose users it was asked to read on the primaries (units in transit that no replica said it owns). */
function recordingPrimarySlots(reader: Reader): { reader: Reader; slots: Set<number> } {
  const slots = new Set<number>();
  return {
    slots,
    reader: {
      ...(reader.maxLagSeconds === undefined ? {} : { maxLagSeconds: reader.maxLagSeconds }),
      async query<R extends pg.QueryResultRow>(shardId: string, text: string, values: unknown[] = [], options?: { readonly primary?: boolean; readonly deadlineAt?: number }) {
        if (options?.primary === true) for (const slot of values[3] as number[]) slots.add(slot);
        return reader.query<R>(shardId, text, values, options);
      },
    },
  };
}

async function listedShards(reader: Reader, user: string): Promise<string[]> {
  const route = createDocumentsRoute({ writer: env.writer, reader, reads: env.reader, shardIds: [...env.shards.keys()] });
  const http = createServer((req, res) => void Promise.resolve(route(req, res)).then((handled) => (handled ? undefined : res.writeHead(404).end())));
  await new Promise<void>((ok) => http.listen(0, '127.0.0.1', ok));
  try {
    const res = await fetch(`http://127.0.0.1:${(http.address() as AddressInfo).port}/api/v1/users?limit=200`);
    expect(res.status).toBe(200);
    const body = (await res.json()) as { items: { id: string; shard_id: string }[] };
    return body.items.filter((u) => u.id === user).map((u) => u.shard_id);
  } finally {
    await new Promise<void>((ok) => http.close(() => ok()));
  }
}

describe('GET /users reads the fence rows a page can need', () => {
  it('not the 10,000 open and 2,000 moved rows of units moved a day ago, yet every row of a move under way or just made', async () => {
    const slot = 720;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 0);
    // A day of moves ago: directory keys that arrived on the source, and left the target.
    await source.query(`insert into write_fences (kind, unit_id, state, map_version, updated_at)
      select 'directory', gen_random_uuid()::text, 'open', 1, now() - interval '1 day' from generate_series(1, 10000)`);
    await target.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version, updated_at)
      select 'directory', gen_random_uuid()::text, 'moved', 'elsewhere', 1, now() - interval '1 day' from generate_series(1, 2000)`);
    // A move its mover left a day ago between copy and release: incoming however old.
    await target.query(`insert into write_fences (kind, unit_id, state, job_id, updated_at) values ('slot', '721', 'incoming', 99, now() - interval '1 day')`);
    // And a move just made.
    const mover = env.mover({ readerGraceMs: 0 });
    expect((await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id)).state).toBe('done');

    const bounded = counting(primariesAsReplicas(5));
    const shards = await listedShards(bounded.reader, user);

    expect(shards).toEqual([to]);
    const read = (shardId: string): string[] => (bounded.fences.get(shardId) ?? []).map((f) => f.join(' ')).sort();
    expect(read(to)).toEqual([`slot ${slot} open`, 'slot 721 incoming']);
    expect(read(from)).toEqual([`slot ${slot} moved`]);

    // A reader that does not say its lag bound gets every row, as before.
    const unbounded = counting(primariesAsReplicas(undefined));
    expect(await listedShards(unbounded.reader, user)).toEqual([to]);
    expect([...unbounded.fences.values()].reduce((n, f) => n + f.length, 0)).toBe(10_000 + 2000 + 3);
  });

  it("reads the source's open row of a move under way however old: the unit is listed from the replicas, not every primary", async () => {
    // A move under way for longer than the bound (a large copy, a run paused in its catch-up, a
    // mover that died): the target's row says `incoming` (read whatever its age), the source's
    // `open` row was last changed before the bound. Left out, no replica said who owns the unit,
    // and every page read every shard's primary for as long as the move lasted (a primary down
    // or failing over then failed the page); the source, which captures the unit's changes for
    // the move, says it owns it.
    const slot = 724;
    const { from, to, source } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 1);
    const stop = new Error('the run stops in its catch-up');
    const paused = env.mover({
      readerGraceMs: 0,
      hook: (point) => {
        if (point === 'catching_up') throw stop;
      },
    });
    const job = await paused.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await expect(paused.run(job.id)).rejects.toThrow('the run stops in its catch-up');
    await source.query(`update write_fences set updated_at = now() - interval '1 day' where kind = 'slot' and unit_id = $1`, [String(slot)]);
    expect((await source.query<{ n: number }>('select count(*)::int as n from move_captures where job_id = $1', [job.id])).rows[0]?.n).toBe(1);

    const recorded = recordingPrimarySlots(primariesAsReplicas(5));
    expect(await listedShards(recorded.reader, user)).toEqual([from]);
    expect([...recorded.slots]).not.toContain(slot);

    // The move finishes; the source's row says `moved` (newly), the target's `open`.
    expect((await env.mover({ readerGraceMs: 0 }).run(job.id)).state).toBe('done');
    expect(await listedShards(primariesAsReplicas(5), user)).toEqual([to]);
  });

  it("reads a target's incoming row however old: a replica that has not replayed a late opening lists the unit only through it", async () => {
    // A move whose mover died between the release's two commits a day ago and was resumed just
    // now: the source says `moved` since a day, the target `incoming` since a day on its replica
    // (which has not replayed the opening) and `open` on its primary.
    const slot = 722;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(target, slot, [user], 0);
    await target.query(`insert into write_fences (kind, unit_id, state, job_id, updated_at) values ('slot', $1, 'incoming', 98, now() - interval '1 day')`, [String(slot)]);
    await source.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version, updated_at) values ('slot', $1, 'moved', $2, 2, now() - interval '1 day')
      on conflict (kind, unit_id) do update set state = 'moved', moved_to = $2, updated_at = now() - interval '1 day'`, [String(slot), to]);
    const holder = await target.connect();
    try {
      await holder.query('begin isolation level repeatable read read only');
      const snapshot = (await holder.query<{ s: string }>('select pg_export_snapshot() as s')).rows[0]?.s as string;
      await target.query(`update write_fences set state = 'open', job_id = null, updated_at = clock_timestamp() where kind = 'slot' and unit_id = $1`, [String(slot)]);
      const lagging: Reader = { ...laggingReplicaReader(env.shards, to, () => snapshot), maxLagSeconds: 5 };

      expect(await listedShards(lagging, user)).toEqual([to]);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
    }
  });
});
