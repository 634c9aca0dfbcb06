/**
 * How local mode runs shard moves. It has no moves worker: POST /shards/moves runs the job in the
 * background, and unfinished jobs are resumed every LOCAL_MOVES_RESUME_MS, as the moves
 * function's schedule does on AWS. A run that stops with a resumable error (here a writer older
 * than the change capture outlives the drain's wait) is run again once the writer is gone, instead
 * of leaving the slot blocked. The drain's wait (30 s by default) and the resume interval (15 s)
 * are shortened to 3 s and 2 s here: what is proven is that the run stops resumable and is
 * resumed, not how long the defaults are.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalMode, type LocalMode } from '../../../functions/local/runtime.js';
import { quietLocalMode } from './local-options.js';
import { tempDataDir } from '../../e2e/support/local-process.js';

const API = '/api/v1/scaling';

describe('local mode moves', () => {
  let local: LocalMode;
  let dataDir: string;
  const lines: string[] = [];

  beforeAll(async () => {
    dataDir = await tempDataDir();
    local = await startLocalMode(
      quietLocalMode(dataDir, { replicasPerShard: 1, seedUsers: 5, documentsPerUser: 1, moveDrainTimeoutMs: 3000, movesResumeMs: 2000, onLine: (line) => lines.push(line) }),
    );
  }, 180_000);

  afterAll(async () => {
    await local?.stop();
    const { rm } = await import('node:fs/promises');
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  }, 60_000);

  async function json(path: string, init?: RequestInit): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await fetch(`${local.url}${path}`, init);
    const text = await res.text();
    return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
  }

  it("records the routing it was started with beside its cluster, for `shards fences --local`", async () => {
    const { readLocalRouting } = await import('../../../functions/local/routing-file.js');
    expect(await readLocalRouting(dataDir)).toEqual({ strategy: 'hash_based', overrideHash: true, fallback: 'hash', enabled: true });
  });

  it('records the routing it runs with in its catalog too, as every sharding runtime does, for `shards fences` without --local', async () => {
    const catalog = new pg.Client({ connectionString: local.cluster.catalogUrl });
    await catalog.connect();
    try {
      const { rows } = await catalog.query<{ actor: string; routing: unknown }>('select actor, routing from catalog.runtime_routings');
      expect(rows).toEqual([{ actor: 'local-mode', routing: { strategy: 'hash_based', override_hash: true, fallback: 'hash', enabled: true } }]);
    } finally {
      await catalog.end();
    }
  });

  it('finishes a move whose first run stopped on a long writer, once the writer is gone', async () => {
    const key = '2f3e4d5c-6b7a-4981-a0b1-c2d3e4f5a6b7';
    const route = (await json(`${API}/shards/route?key=${key}`)).body as { shard_id: string; slot: number };
    const from = route.shard_id;
    const to = from === local.cluster.shards[0]?.shardId ? local.cluster.shards[1]?.shardId : local.cluster.shards[0]?.shardId;
    const source = new pg.Client({ connectionString: local.cluster.shards.find((s) => s.shardId === from)?.primaryUrl });
    await source.connect();
    try {
      // A writer of the slot that keeps its transaction open (it holds the fence row FOR SHARE, as
      // every writer does) for longer than the fence's three attempts.
      await source.query(`insert into write_fences (kind, unit_id) values ('slot', $1) on conflict do nothing`, [String(route.slot)]);
      await source.query('begin');
      await source.query(`select 1 from write_fences where kind = 'slot' and unit_id = $1 for share`, [String(route.slot)]);
      const started = await json(`${API}/shards/moves`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
      expect(started.status).toBe(202);
      const id = String(started.body['id']);
      let job: Record<string, unknown> = {};
      for (let i = 0; i < 450 && !job['error']; i++) {
        job = (await json(`${API}/shards/moves/${id}`)).body;
        if (!job['error']) await new Promise((r) => setTimeout(r, 100));
      }
      // The run stops with a resumable error (here the drain: "the copy starts once they have ended").
      expect(String(job['error'])).toMatch(/once they have ended|resumes at its next run/);
      // The long writer ends.
      await source.query('commit');
      for (let i = 0; i < 250 && job['state'] !== 'done'; i++) {
        await new Promise((r) => setTimeout(r, 100));
        job = (await json(`${API}/shards/moves/${id}`)).body;
      }
      // Resumed: done, and the slot is on its new shard (a move there again is the same shard).
      const again = await json(`${API}/shards/moves`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
      expect({ state: job['state'], again: again.status }).toEqual({ state: 'done', again: 422 });
    } finally {
      await source.query('rollback').catch(() => undefined);
      await source.end();
    }
  }, 150_000);
});
