/**
 * Stopping local mode while a move runs: the stop asks the move to stop at its next safe point
 * (here the wait for writers older than the change capture, which lasts up to 30 s), and the run
 * ends there by itself, its lease given back, instead of being cut off when the servers stop
 * under it. The next start resumes the move at once (nothing to take over) and finishes it.
 */
import { rm } from 'node:fs/promises';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { startLocalMode, type LocalMode } from '../../../functions/local/runtime.js';
import { quietLocalMode } from './local-options.js';
import { tempDataDir } from '../../e2e/support/local-process.js';

const API = '/api/v1/scaling';

describe('stopping local mode during a move', () => {
  let dataDir = '';
  const running: LocalMode[] = [];

  afterAll(async () => {
    for (const local of running) await local.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  }, 60_000);

  const start = async (lines: string[]): Promise<LocalMode> => {
    const local = await startLocalMode(quietLocalMode(dataDir, { onLine: (line) => lines.push(line) }));
    running.push(local);
    return local;
  };

  const json = async (local: LocalMode, path: string, init?: RequestInit): Promise<Record<string, unknown>> => (await (await fetch(`${local.url}${path}`, init)).json()) as Record<string, unknown>;

  it('pauses the move at its next safe point and gives its lease back; the next start resumes it without a takeover', async () => {
    dataDir = await tempDataDir();
    const first: string[] = [];
    let local = await start(first);
    const key = '2f3e4d5c-6b7a-4981-a0b1-c2d3e4f5a6b7';
    const route = (await json(local, `${API}/shards/route?key=${key}`)) as { shard_id: string; slot: number };
    const to = local.cluster.shards.map((s) => s.shardId).find((s) => s !== route.shard_id);
    const source = new pg.Client({ connectionString: local.cluster.shards.find((s) => s.shardId === route.shard_id)?.primaryUrl });
    source.on('error', () => undefined);
    await source.connect();
    let id = '';
    try {
      // A writer of the slot older than the move's change capture: the move waits for it (up to 30 s) before it copies.
      await source.query(`insert into write_fences (kind, unit_id) values ('slot', $1) on conflict do nothing`, [String(route.slot)]);
      await source.query('begin');
      await source.query(`select 1 from write_fences where kind = 'slot' and unit_id = $1 for share`, [String(route.slot)]);
      const planned = await fetch(`${local.url}${API}/shards/moves`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
      expect(planned.status).toBe(202);
      id = String(((await planned.json()) as { id: unknown }).id);
      // The run is waiting for the writer: the job is copying, with its change capture on the source.
      for (let i = 0; i < 200; i++) {
        const { rows } = await source.query<{ n: number }>('select count(*)::int as n from move_captures where job_id = $1', [id]);
        if (rows[0]?.n === 1) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      expect((await json(local, `${API}/shards/moves/${id}`))['state']).toBe('copying');

      await local.stop();
    } finally {
      await source.end().catch(() => undefined);
    }

    // The run stopped by itself, where the next one resumes: said so, nothing recorded as an error.
    expect(first.filter((l) => l.startsWith(`move ${id} `))).toEqual([expect.stringMatching(new RegExp(`^move ${id} \\(slot ${route.slot} .*\\) paused in copying`))]);

    const second: string[] = [];
    local = await start(second);
    // Its lease was given back: the next start has no dead run's lease to end.
    expect(second.filter((l) => l.includes('left running by a run that did not stop cleanly'))).toEqual([]);
    let job: Record<string, unknown> = {};
    for (let i = 0; i < 300 && job['state'] !== 'done'; i++) {
      job = await json(local, `${API}/shards/moves/${id}`);
      if (job['state'] !== 'done') await new Promise((r) => setTimeout(r, 100));
    }
    expect({ state: job['state'], error: job['error'] ?? null }).toEqual({ state: 'done', error: null });
  }, 120_000);
});
