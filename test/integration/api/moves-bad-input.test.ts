/**
 * Bad input to POST /shards/moves and GET/DELETE /shards/moves/{id} gets a 4xx
 * naming the field or the reason, never a 500, and records no job.
 */
import '../../support/quiet-powertools.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApiHarness, type ApiHarness } from './harness.js';

const API = '/api/v1/scaling';
const JSON_HEADERS = { 'content-type': 'application/json' };

describe('bad input to the moves API', () => {
  let h: ApiHarness;
  let slot: number;
  let own: string;
  let other: string;
  beforeAll(async () => {
    h = await startApiHarness();
    const route = (await h.fetchJson(`${API}/shards/route?key=5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e`)).body as { shard_id: string; slot: number };
    slot = route.slot;
    own = route.shard_id;
    other = own === 'shard_001' ? 'shard_002' : 'shard_001';
  }, 120_000);
  afterAll(async () => {
    await h?.stop();
  });

  async function jobs(): Promise<number> {
    const { rows } = await h.catalogPool.query<{ n: number }>('select count(*)::int as n from catalog.move_jobs');
    return rows[0]?.n ?? -1;
  }

  const bodies: ReadonlyArray<readonly [string, () => unknown]> = [
    ['a slot out of range', () => ({ kind: 'slot', unit: '99999', to: other })],
    ['a slot with a sign', () => ({ kind: 'slot', unit: '-1', to: other })],
    ['a slot with a fraction', () => ({ kind: 'slot', unit: '1.5', to: other })],
    ['a huge slot', () => ({ kind: 'slot', unit: '9'.repeat(400), to: other })],
    ['a slot as a JSON number', () => ({ kind: 'slot', unit: slot, to: other })],
    ['an unknown shard', () => ({ kind: 'slot', unit: String(slot), to: 'shard_999' })],
    ['its own shard', () => ({ kind: 'slot', unit: String(slot), to: own })],
    ['a shard id that is not text', () => ({ kind: 'slot', unit: String(slot), to: 7 })],
    ['an unknown kind', () => ({ kind: 'range', unit: String(slot), to: other })],
    ['a directory key that is not a UUID', () => ({ kind: 'directory', unit: "x'; drop table users; --", to: other })],
    ['a directory key with a NUL', () => ({ kind: 'directory', unit: '5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e\u0000', to: other })],
    ['a directory key to an unknown shard', () => ({ kind: 'directory', unit: '5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e', to: 'nowhere' })],
    ['an extra field', () => ({ kind: 'slot', unit: String(slot), to: other, from: own })],
    ['no body fields', () => ({})],
    ['an array', () => []],
    ['null', () => null],
  ];

  it.each(bodies)('POST with %s answers 4xx with a reason and records nothing', async (_what, body) => {
    const before = await jobs();
    const res = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify(body()) });

    expect(res.status, JSON.stringify(res.body)).toBeGreaterThanOrEqual(400);
    expect(res.status, JSON.stringify(res.body)).toBeLessThan(500);
    expect(typeof (res.body as { detail?: unknown }).detail).toBe('string');
    expect(await jobs()).toBe(before);
  });

  it('five concurrent POSTs of one slot: exactly one 202, the others 409 naming the move, and one job recorded', async () => {
    const before = await jobs();
    const map = await h.sharding.slotMaps.current();
    const free = map.assignments.findIndex((owner, s) => owner === own && s !== slot && s > 1000);
    const posts = await Promise.all(
      Array.from({ length: 5 }, () => h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: String(free), to: other }) })),
    );
    const statuses = posts.map((p) => p.status).sort();
    expect(statuses, JSON.stringify(posts.map((p) => p.body))).toEqual([202, 409, 409, 409, 409]);
    for (const p of posts.filter((r) => r.status === 409)) expect((p.body as { detail: string }).detail).toMatch(/already has an unfinished move/);
    expect(await jobs()).toBe(before + 1);
    const started = posts.find((p) => p.status === 202);
    const id = (started?.body as { id: string }).id;
    for (let i = 0; i < 150; i++) {
      const state = ((await h.fetchJson(`${API}/shards/moves/${id}`)).body as { state: string }).state;
      if (state === 'done' || state === 'failed' || state === 'cancelled') break;
      await new Promise((r) => setTimeout(r, 100));
    }
  }, 60_000);

  it.each([
    ['a 60,000-character member name', () => JSON.stringify({ kind: 'slot', unit: String(slot), to: other, ['k'.repeat(60_000)]: 1 }), /not a field/],
    ['5,000 unknown members', () => JSON.stringify(Object.fromEntries([['kind', 'slot'], ['unit', String(slot)], ['to', other], ...Array.from({ length: 5000 }, (_, i) => [`x${i}`, 1])])), /not a field/],
    ['a 30,000-character member name given twice', () => `{"${'k'.repeat(30_000)}": 1, "${'k'.repeat(30_000)}": 2}`, /more than once/],
  ] as const)('POST with %s answers 400 naming the member(s) briefly, without echoing the body back', async (_what, body, reason) => {
    const before = await jobs();
    const text = body();
    const res = await fetch(`${h.url}${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: text });
    const answer = await res.text();
    expect(res.status).toBe(400);
    const problem = JSON.parse(answer) as { detail: string; invalid_params: Array<{ name: string; reason: string }> };
    // The field is named (its start is enough to recognise it), under the body.
    expect(problem.invalid_params[0]?.name).toMatch(/^body\.(k{10}|x0)/);
    expect(problem.invalid_params[0]?.reason).toMatch(reason);
    // The answer stays small: a hostile body is not reflected at once, twice or twenty times its size.
    expect(answer.length, answer.slice(0, 300)).toBeLessThan(4096);
    expect(await jobs()).toBe(before);
  });

  it('POST with a body that is not JSON answers 400 and records nothing', async () => {
    const before = await jobs();
    const res = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: '{"kind":"slot",' });
    expect(res.status).toBe(400);
    expect(await jobs()).toBe(before);
  });

  it.each(['0', '-1', '1e3', '999999999999999', '9223372036854775808', 'abc', '1.0', '%20'])('GET and DELETE of move %s answer 404, never 500', async (id) => {
    const before = await jobs();
    for (const method of ['GET', 'DELETE']) {
      const res = await h.fetchJson(`${API}/shards/moves/${id}`, { method });
      expect(res.status, `${method} ${id}: ${JSON.stringify(res.body)}`).toBeGreaterThanOrEqual(400);
      expect(res.status, `${method} ${id}: ${JSON.stringify(res.body)}`).toBeLessThan(500);
    }
    expect(await jobs()).toBe(before);
  });
});
