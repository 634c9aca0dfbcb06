/**
 * Issue #15 (h124): a directory-key move asks every shard of the deployment whether it holds rows
 * of the key (Mover.checkOtherShardsHoldNoKeyRows), so a shard that is neither the key's source nor
 * its target and does not answer holds every key move up. POST /shards/moves answers it with a 503
 * naming that shard and why it was asked; before, "the catalog or a shard did not answer", which
 * sent the operator to the key's source and target, both answering.
 */
// Powertools reads its settings when the handler modules load: this import must stay first.
import '../../support/quiet-powertools.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../support/postgres.js';
import { startApiHarness, type ApiHarness } from './harness.js';

const API = '/api/v1/scaling';
const JSON_HEADERS = { 'content-type': 'application/json' };

describe('POST /shards/moves of a directory key while a third shard does not answer', () => {
  let h: ApiHarness;
  let closedPort: number;

  beforeAll(async () => {
    // shard_003, configured and owning no slot, on a loopback port nobody listens on.
    closedPort = await freePort();
    h = await startApiHarness({
      shardingConfig: (config) => ({
        ...config,
        shards: [...config.shards, { ...(config.shards[0] as (typeof config.shards)[number]), shard_id: 'shard_003', database_url: `postgresql://postgres:postgres@127.0.0.1:${closedPort}/postgres`, read_replicas: [] }],
      }),
    });
  }, 120_000);
  afterAll(async () => {
    await h?.stop();
  });

  it('answers 503 naming that shard and why a key move asks it, without the driver\'s text; nothing recorded', async () => {
    const key = '7d6c5b4a-3928-4716-a5b4-c3d2e1f0a9b8';
    const route = (await h.fetchJson(`${API}/shards/route?key=${key}`)).body as { shard_id: string };
    const to = route.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';
    const res = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'directory', unit: key, to }) });
    const detail = String((res.body as { detail?: unknown }).detail);
    expect({ status: res.status, detail }).toEqual({
      status: 503,
      detail: expect.stringMatching(new RegExp(`^starting the move: cannot plan the move of key ${key} from ${route.shard_id} to ${to}: shard_003 did not answer \\(connection error ECONNREFUSED\\), and a directory-key move asks every shard`)) as unknown,
    });
    expect(detail).toContain('Nothing was recorded or pinned');
    expect(detail).not.toMatch(new RegExp(`127\\.0\\.0\\.1:${closedPort}`));
    expect(Number((await h.catalogPool.query<{ n: string }>('select count(*) as n from catalog.move_jobs')).rows[0]?.n)).toBe(0);
  });
});
