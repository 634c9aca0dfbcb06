/**
 * GET /shards/fences over real HTTP against real PostgreSQL shards: the write_fences rows a hand
 * change of the slot map left (made through the stores, the old owner's process dying after its
 * fence, as test/integration/sharding/owner-change-review.test.ts makes them) are listed as
 * `ca-dms-scaling shards fences` lists them without --settle, and nothing is settled; the listing
 * is read as the API's logins read it (the shards' monitor login, a catalog login with no right
 * on catalog.owner_change_review); a bad query parameter is a 400 naming it; a shard that does
 * not answer within health_check_timeout_seconds is listed unreachable, the others' rows still.
 */
// Powertools reads its settings when the handler modules load: this import must stay first.
import '../../support/quiet-powertools.js';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listFences, reviewFences, type FenceReview, type ReviewedFence } from '../../../functions/adapters/postgres/fence-review.js';
import { createShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { SlotMapRowsLeftError, SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { parseShardingConfig } from '../../../functions/core/sharding/config.js';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { dyingAfterFence as dyingAfterFenceOf, keysInSlot, refusalOf, seedUsers } from '../sharding/fixtures/move-env.js';
import { startApiHarness, type ApiHarness } from './harness.js';

const API = '/api/v1/scaling';
type Problem = { status: number; invalid_params?: Array<{ name: string; reason: string }> };

describe('GET /shards/fences', () => {
  let h: ApiHarness;
  /** Slot 1901: a change killed before its commit (the map still names its old owner, left fenced); 1902: after it (the map names the new owner); 1903: a hand change that finished. */
  const sides: Record<number, { from: string; to: string }> = {};

  beforeAll(async () => {
    h = await startApiHarness();
    const current = await h.sharding.slotMaps.current();
    for (const slot of [1901, 1902, 1903]) {
      const from = current.assignments[slot] as string;
      sides[slot] = { from, to: [...h.sharding.primaries.keys()].find((s) => s !== from) as string };
    }
  }, 180_000);
  afterAll(async () => {
    await h?.stop();
  });

  const side = (slot: number): { from: string; to: string } => {
    const found = sides[slot];
    if (found === undefined) throw new Error(`no sides for slot ${slot}`);
    return found;
  };
  const primary = (shard: string): pg.Pool => h.sharding.primaries.get(shard) as pg.Pool;

  const dyingAfterFence = (shard: string): { pools: Map<string, pg.Pool>; dying: pg.Pool } =>
    dyingAfterFenceOf(h.sharding.primaries, shard, h.cluster.shards.find((s) => s.shardId === shard)?.primary.url as string);

  async function fenceRow(shard: string, slot: number): Promise<{ state: string; job_id: string | null } | undefined> {
    return (await primary(shard).query<{ state: string; job_id: string | null }>(`select state, job_id::text from write_fences where kind = 'slot' and unit_id = $1`, [String(slot)])).rows[0];
  }

  /** GET /shards/fences`query` until `done` holds (an answer comes from a snapshot up to 1 s old), or the last answer after 15 s. */
  async function listingUntil(query: string, done: (listing: FenceReview) => boolean): Promise<{ status: number; body: FenceReview }> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const res = await h.fetchJson(`${API}/shards/fences${query}`);
      if ((res.status === 200 && done(res.body as FenceReview)) || Date.now() > deadline) return { status: res.status, body: res.body as FenceReview };
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  const rowOf = (rows: readonly ReviewedFence[], shard: string, slot: number): ReviewedFence | undefined => rows.find((r) => r.shard === shard && r.kind === 'slot' && r.unitId === String(slot));
  // The age, and the withheld text that names it in whole seconds: the API's snapshot may be read up
  // to a second before the CLI's, and a row then reads "41 s ago" there and "42 s ago" here.
  const withoutAge = (rows: readonly ReviewedFence[]): Omit<ReviewedFence, 'ageMs'>[] =>
    rows.map(({ ageMs: _ageMs, ...rest }) => (rest.withheld === undefined ? rest : { ...rest, withheld: rest.withheld.replace(/last written \d+ s ago/, 'last written N s ago') }));

  it('lists the rows hand changes left, each with its diagnosis and what --settle would do, as the CLI lists them, and settles nothing', async () => {
    // 1901: a slot with rows; the change is refused for the row its lost put-back left on the old owner.
    {
      const { from, to } = side(1901);
      await seedUsers(primary(from), 1901, keysInSlot(1901, 1), 1);
      const { pools, dying } = dyingAfterFence(from);
      try {
        const store = new SlotMapStore(h.catalogPool, { shardPools: pools });
        expect(await refusalOf(store.publish(moveSlots(await store.current(), [1901], to), 'ops', 'hand change'))).toBeInstanceOf(SlotMapRowsLeftError);
      } finally {
        await dying.end();
      }
    }
    // 1902: an empty slot; the map is published, the old owner's fence not settled.
    {
      const { from, to } = side(1902);
      const { pools, dying } = dyingAfterFence(from);
      try {
        const store = new SlotMapStore(h.catalogPool, { shardPools: pools });
        expect(String(await refusalOf(store.publish(moveSlots(await store.current(), [1902], to), 'ops', 'hand change of an empty slot')))).toMatch(/could not all be settled/);
      } finally {
        await dying.end();
      }
    }
    // 1903: a hand change that finished: its old owner's moved row is explained by the map.
    {
      const { to } = side(1903);
      const store = new SlotMapStore(h.catalogPool, { shardPools: h.sharding.primaries });
      await store.publish(moveSlots(await store.current(), [1903], to), 'ops', 'hand change that finished');
    }
    const [a, b, c] = [side(1901), side(1902), side(1903)];

    const res = await listingUntil('', (l) => rowOf(l.rows, b.from, 1902) !== undefined);
    const cli = await reviewFences({ catalog: h.catalogPool, shards: h.sharding.primaries });

    expect(res.status).toBe(200);
    expect(res.body.unreachable).toEqual([]);
    expect(rowOf(res.body.rows, a.from, 1901)).toMatchObject({ kind: 'slot', state: 'fenced', jobId: null, movedTo: null, owner: a.from, action: 'reopen' });
    expect(rowOf(res.body.rows, a.from, 1901)?.diagnosis).toMatch(/left fenced by a hand change that did not finish/);
    expect(rowOf(res.body.rows, a.from, 1901)?.withheld).toMatch(/^last written \d+ s ago, under --older-than 900 s/);
    expect(rowOf(res.body.rows, b.from, 1902)).toMatchObject({ state: 'fenced', jobId: null, owner: b.to, action: 'set moved', mapVersion: expect.stringMatching(/^\d+$/) });
    expect(rowOf(res.body.rows, b.from, 1902)?.diagnosis).toMatch(/left fenced by a hand change whose map was published/);
    expect(rowOf(res.body.rows, b.from, 1902)?.withheld).toBeUndefined();
    expect(rowOf(res.body.rows, c.from, 1903)).toBeUndefined();
    expect(res.body.explained).toBeGreaterThanOrEqual(1);
    expect({ mapVersion: res.body.mapVersion, rows: withoutAge(res.body.rows), explained: res.body.explained }).toEqual({ mapVersion: cli.mapVersion, rows: withoutAge(cli.rows), explained: cli.explained });
    expect([await fenceRow(a.from, 1901), await fenceRow(b.from, 1902)]).toEqual([
      { state: 'fenced', job_id: null },
      { state: 'fenced', job_id: null },
    ]);
  }, 120_000);

  it("judges a key's directory row by the shard the key routes to, under the configuration's routing (pins route: hash_based, override_hash on)", async () => {
    const slot = 1904;
    const owner = (await h.sharding.slotMaps.current()).assignments[slot] as string;
    const [key] = keysInSlot(slot, 1) as [string];
    // What a pin change killed between its fence and its put-back leaves where the key still routes (by hash).
    await primary(owner).query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, 'fenced')`, [key]);
    try {
      const res = await listingUntil('', (l) => l.rows.some((r) => r.kind === 'directory' && r.unitId === key));
      const row = res.body.rows.find((r) => r.kind === 'directory' && r.unitId === key);
      expect(row).toMatchObject({ shard: owner, state: 'fenced', owner, route: owner, action: 'reopen' });
      expect(row?.diagnosis).toMatch(new RegExp(`left fenced by a hand change of the key's pin that did not finish.*the key still routes to ${owner} \\(by hash: slot ${slot}`));
    } finally {
      await primary(owner).query(`delete from write_fences where kind = 'directory' and unit_id = $1`, [key]);
    }
  }, 60_000);

  it("says where a runtime recorded another routing than this API's recently (catalog.runtime_routings): a route and action judged by its own routing alone could be ones --settle will not take", async () => {
    // The harness's runtime recorded its own (hash_based, override_hash on) as it was built; the
    // moves worker's recorded a hash-only one an hour ago (a change of the routing rolling out).
    const other = JSON.stringify({ strategy: 'hash_based', override_hash: false, fallback: 'hash', enabled: true });
    await h.catalogPool.query(`insert into catalog.runtime_routings (actor, routing, seen_at) values ('scaling-moves', $1::jsonb, now() - interval '1 hour')`, [other]);
    try {
      const res = await listingUntil('', (l) => (l as { otherRoutings?: string }).otherRoutings !== undefined);
      expect(res.status).toBe(200);
      const said = (res.body as { otherRoutings?: string }).otherRoutings;
      expect(said).toContain('hash_based (override_hash off, fallback hash), recorded by scaling-moves');
      expect(said).toContain('judged by this API\'s routing, hash_based (override_hash on, fallback hash)');
      expect(said).toContain('shards fences');
    } finally {
      await h.catalogPool.query(`delete from catalog.runtime_routings where actor = 'scaling-moves'`);
    }
    // Once every runtime records the API's own routing, nothing is said.
    const agreed = await listingUntil('', (l) => (l as { otherRoutings?: string }).otherRoutings === undefined);
    expect((agreed.body as { otherRoutings?: string }).otherRoutings).toBeUndefined();
  });

  it('with all=true lists the explained rows too', async () => {
    const c = side(1903);
    const res = await listingUntil('?all=true', (l) => rowOf(l.rows, c.from, 1903) !== undefined);

    expect(res.status).toBe(200);
    expect(rowOf(res.body.rows, c.from, 1903)).toMatchObject({ state: 'moved', movedTo: c.to, owner: c.to, diagnosis: 'explained: nothing to settle', action: 'none' });
    expect(rowOf(res.body.rows, side(1902).from, 1902)).toMatchObject({ action: 'set moved' });
  });

  it("reads as the API's logins may: the shards' monitor login, and a catalog login that may not lock catalog.owner_change_review (which --settle's review needs)", async () => {
    const password = 'fence reader';
    await h.catalogPool.query(`create role fence_reader login password '${password}'`);
    await h.catalogPool.query('grant usage on schema catalog to fence_reader; grant select on catalog.slot_maps, catalog.move_jobs to fence_reader');
    for (const shard of h.cluster.shards) {
      const admin = primary(shard.shardId);
      await admin.query(`create role fence_monitor login password '${password}' in role ca_dms_monitor`);
      await admin.query(`create role fence_nobody login password '${password}'`);
    }
    const as = (raw: string, login = 'fence_monitor'): string => {
      const url = new URL(raw);
      url.username = login;
      url.password = password;
      return url.toString();
    };
    const catalogUrl = new URL(h.catalogUrl);
    catalogUrl.username = 'fence_reader';
    catalogUrl.password = password;
    const catalog = new pg.Pool({ connectionString: catalogUrl.toString(), max: 2 });
    const config = parseShardingConfig({
      ...h.cluster.config,
      shards: h.cluster.config.shards.map((s) => ({ ...s, database_url: as(s.database_url), read_replicas: [] })),
      health_check_timeout_seconds: 2,
    });
    const runtime = await createShardingRuntime({ config, catalog, actor: 'fence-reader-test' });
    // A shard login without the monitor's grant (shard migration 013) reads nothing, and is told what to grant.
    const nobody = new Map(h.cluster.config.shards.map((s) => [s.shard_id, new pg.Pool({ connectionString: as(s.database_url, 'fence_nobody'), max: 1 })]));
    try {
      const listed = await runtime.fences.list();
      const refused = await refusalOf(reviewFences({ catalog, shards: runtime.primaries }));
      const denied = await listFences({ catalog, shards: nobody, timeoutMs: 2000 });

      expect(listed.unreachable).toEqual([]);
      expect(rowOf(listed.rows, side(1902).from, 1902)).toMatchObject({ state: 'fenced', action: 'set moved' });
      expect(String(refused)).toMatch(/may not lock catalog\.owner_change_review/);
      expect(denied.unreachable).toEqual([...nobody.keys()].map((id) => `${id} (this login may not read write_fences: grant it SELECT (shard migration 013 grants it to ca_dms_monitor))`));
      expect(denied.rows).toEqual([]);
    } finally {
      await runtime.close();
      await catalog.end();
      await Promise.all([...nobody.values()].map((p) => p.end()));
    }
  }, 60_000);

  it('refuses a bad or unknown query parameter with 400 naming it (settling is not offered; a page holds at most 1000 rows; a cursor is one the API returned)', async () => {
    const bad = await h.fetchJson(`${API}/shards/fences?all=yes`);
    const settle = await h.fetchJson(`${API}/shards/fences?settle=true`);
    const limit = await h.fetchJson(`${API}/shards/fences?limit=1001`);
    const cursor = await h.fetchJson(`${API}/shards/fences?cursor=${Buffer.from('k:tenant-42').toString('base64url')}`);

    expect([bad.status, settle.status, limit.status, cursor.status]).toEqual([400, 400, 400, 400]);
    expect((bad.body as Problem).invalid_params?.map((p) => p.name)).toEqual(['query.all']);
    expect((settle.body as Problem).invalid_params?.map((p) => p.name)).toEqual(['query.settle']);
    expect((limit.body as Problem).invalid_params?.map((p) => p.name)).toEqual(['query.limit']);
    expect((cursor.body as Problem).invalid_params).toEqual([{ name: 'query.cursor', reason: 'is not a cursor this API returned' }]);
  });

  it('lists a shard that does not answer within health_check_timeout_seconds as unreachable, and the other shards\' rows still', async () => {
    const b = side(1902);
    const stuck = [...h.sharding.primaries.keys()].find((s) => s !== b.from) as string;
    const holder = await primary(stuck).connect();
    try {
      await holder.query('begin');
      await holder.query('lock table write_fences in access exclusive mode');
      const res = await listingUntil('', (l) => l.unreachable.length > 0);

      expect(res.status).toBe(200);
      expect(res.body.unreachable).toEqual([expect.stringMatching(new RegExp(`^${stuck} \\((no answer within 2000 ms|the read ran past its time limit \\(statement_timeout\\))\\)$`))]);
      expect(rowOf(res.body.rows, b.from, 1902)).toMatchObject({ state: 'fenced', action: 'set moved' });
      expect(res.body.rows.filter((r) => r.shard === stuck)).toEqual([]);
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
    }
  }, 60_000);
});
