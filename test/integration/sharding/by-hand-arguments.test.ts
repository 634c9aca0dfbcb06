/**
 * Issue #15 (review): the recoveries by hand in SQL check their arguments as the TypeScript stores
 * do (sharding migration 013). An operator who calls `catalog.repin_by_hand` or
 * `catalog.publish_slot_map_by_hand` in psql does not go through DirectoryStore.repinByHand or
 * SlotMapStore.publishByHand. Reproduced here before 013:
 * - repin_by_hand pinned a key to a shard of blanks, to `shard 002` or to `shard_009`, a shard
 *   nobody knows (the key then routed to a shard no router has);
 * - publish_slot_map_by_hand published a map with a NULL or blank owner, an owner nobody knows, a
 *   two-dimensional array or one subscripted from 0: SlotMapStore.current() then refused the
 *   current map ("invalid slot map"), and with it every route by hash;
 * - repin_by_hand read `urn:uuid:` followed by a brace or a form without hyphens as a UUID, which
 *   docs/sharding-spec.md section 1 and canonicalKey do not: the key was pinned under another key
 *   than the one the routers look up.
 */
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DirectoryError, DirectoryStore } from '../../../functions/adapters/postgres/directory-store.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { SlotMapError } from '../../../functions/core/sharding/errors.js';
import { canonicalKey } from '../../../functions/core/sharding/keys.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';

const SHARDING_MIGRATIONS = fileURLToPath(new URL('../../../functions/adapters/postgres/migrations/sharding', import.meta.url));
const vectors = JSON.parse(readFileSync(fileURLToPath(new URL('../../../docs/routing-test-vectors.json', import.meta.url)), 'utf8')) as {
  keyForms: { forms: { key: string; canonical: string }[] };
};
const MAP = ['shard_001', 'shard_001', 'shard_002', 'shard_002', 'shard_003', 'shard_003', 'shard_003', 'shard_001'];
const KEY = '3f2c1d9e-8a7b-4c6d-9e0f-112233445566';

let server: TestPostgres;
let admin: pg.Pool;
let control: pg.Pool;
beforeAll(async () => {
  server = await startTestPostgres();
  admin = new pg.Pool({ connectionString: server.url, max: 2 });
  await runMigrations(admin, 'sharding', SHARDING_MIGRATIONS);
  await admin.query(`create role by_hand_operator login password 'by hand' in role ca_dms_control`);
  const url = new URL(server.url);
  url.username = 'by_hand_operator';
  url.password = 'by hand';
  control = new pg.Pool({ connectionString: url.toString(), max: 1 });
}, 60_000);
afterAll(async () => {
  await control?.end();
  await admin?.end();
  await server?.stop();
});
beforeEach(async () => {
  await admin.query('truncate catalog.slot_maps, catalog.shard_directory, catalog.move_jobs');
  await admin.query(`insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason) values (1, $1, $2, 'test', 'initial')`, [MAP.length, MAP]);
});

/** What a call ends with: `ok` and the rows, or the SQLSTATE and the message. */
const outcome = (run: Promise<pg.QueryResult>): Promise<string> =>
  run.then(
    (r) => `ok ${JSON.stringify(r.rows)}`,
    (e: Error & { code?: string }) => `${e.code}: ${e.message}`,
  );
const entries = () => admin.query<{ key: string; shard_id: string }>('select key, shard_id from catalog.shard_directory order by key').then((r) => r.rows);
const versions = () => admin.query<{ version: number }>('select version from catalog.slot_maps order by version').then((r) => r.rows.map((m) => m.version));

describe('catalog.repin_by_hand, called in SQL', () => {
  const repin = (shard: string | null, reason: string | null = 'ticket OPS-7') =>
    outcome(control.query('select key, shard_id from catalog.repin_by_hand($1, $2, $3)', [KEY, shard, reason]));

  it('refuses a blank shard, one that is not a shard id, and one no slot map, directory entry or move job names (22023), nothing written', async () => {
    // Before 013: '  ', 'shard 002' and 'shard_009' were written (the key then routed to a shard no router has).
    for (const shard of ['  ', null, '']) expect(await repin(shard)).toMatch(/^22023: catalog\.repin_by_hand\(key, shard, reason\): the shard must not be empty(; nothing was changed)?$/);
    expect(await repin('shard 002')).toBe(
      `22023: catalog.repin_by_hand(key, shard, reason): the shard 'shard 002' is not a shard id (1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit); nothing was changed`,
    );
    expect(await repin('shard_009')).toBe(
      "22023: catalog.repin_by_hand(key, shard, reason): the shard 'shard_009' is named by no slot map, directory entry or move job of this catalog (known: shard_001, shard_002, shard_003): a typo? A shard new to the catalog is known once a move to it is planned or a key is pinned to it; a configured shard the catalog lost the record of (restored from before it was added) is accepted when the transaction names it first: set local ca_dms.new_shards = 'shard_009'; nothing was changed",
    );
    expect(await entries()).toEqual([]);
  });

  it('names every wrong argument at once (blank reason included), and writes to a shard the catalog knows from a slot map, a directory entry or a move job', async () => {
    // shard_004 owns no slot: known once a key is pinned there (DirectoryStore.set) or a move to it is planned.
    expect(await repin('shard_004')).toMatch(/^22023: .*'shard_004' is named by no slot map/);
    expect(await repin(' ', ' ')).toBe(
      '22023: catalog.repin_by_hand(key, shard, reason): the shard must not be empty; the reason must not be empty (it is recorded in updated_by); nothing was changed',
    );
    expect(await repin('shard_002')).toBe(`ok [{"key":"${KEY}","shard_id":"shard_002"}]`);
    await new DirectoryStore(control, { ttlMs: 0 }).set('tenant-42', 'shard_004', 'ops@example.com');
    expect(await repin('shard_004')).toBe(`ok [{"key":"${KEY}","shard_id":"shard_004"}]`);
    await admin.query(`insert into catalog.move_jobs (kind, slot, unit_id, from_shard, to_shard, created_by) values ('slot', 3, '3', 'shard_002', 'shard_005', 'test')`);
    expect(await repin('shard_005')).toBe(`ok [{"key":"${KEY}","shard_id":"shard_005"}]`);
  });

  it('writes to a configured shard the catalog has no record of when the transaction names it in ca_dms.new_shards (a catalog restored from before the shard was added)', async () => {
    // Review of 013: refused, the only ways through were to pin some other key there or to plan a
    // move to it. Named, it is still checked for a shard id's form.
    const client = await control.connect();
    try {
      const inTransaction = async (named: string, shard: string) => {
        await client.query('begin');
        try {
          await client.query(`select pg_catalog.set_config('ca_dms.new_shards', $1, true)`, [named]);
          return await outcome(client.query('select key, shard_id from catalog.repin_by_hand($1, $2, $3)', [KEY, shard, 'restored catalog (OPS-9)']));
        } finally {
          await client.query('commit');
        }
      };
      expect(await inTransaction('shard_004', 'shard_005')).toMatch(/^22023: .*'shard_005' is named by no slot map.*set local ca_dms.new_shards = 'shard_005'; nothing was changed$/);
      expect(await inTransaction('shard_004 , shard_005', 'shard_005')).toBe(`ok [{"key":"${KEY}","shard_id":"shard_005"}]`);
      expect(await inTransaction('shard 006', 'shard 006')).toMatch(/^22023: .*the shard 'shard 006' is not a shard id/);
      // set local: the next transaction names nothing.
      expect(await outcome(client.query(`select key, shard_id from catalog.repin_by_hand($1, 'shard_006', 'OPS-9')`, [KEY]))).toMatch(/^22023: .*'shard_006' is named by no slot map/);
      expect(await entries()).toEqual([{ key: KEY, shard_id: 'shard_005' }]);
      // The same for a map published by hand.
      await client.query('begin');
      await client.query(`set local ca_dms.new_shards = 'shard_007'`);
      const published = await outcome(
        client.query('select version, assignments from catalog.publish_slot_map_by_hand(2, $1::text[], $2)', [MAP.map((o, i) => (i === 3 ? 'shard_007' : o)), 'restored catalog (OPS-9)']),
      );
      await client.query('commit');
      expect(published).toBe(`ok [{"version":2,"assignments":${JSON.stringify(MAP.map((o, i) => (i === 3 ? 'shard_007' : o)))}}]`);
    } finally {
      client.release();
    }
  });

  it('quotes at most 64 characters of a refused argument, and its length', async () => {
    // Review of 013: the message quoted it whole (a megabyte of error for a megabyte of argument).
    const long = `${'x'.repeat(100_000)} `;
    const refused = await repin(long);
    expect(refused).toBe(
      `22023: catalog.repin_by_hand(key, shard, reason): the shard '${'x'.repeat(64)}'... (100001 characters) is not a shard id (1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit); nothing was changed`,
    );
  });

  it('is refused through DirectoryStore.repinByHand as a DirectoryError with the catalog message (a store without a list of shards)', async () => {
    const refused = await new DirectoryStore(control, { ttlMs: 0 }).repinByHand(KEY, 'shard_009', 'ticket OPS-7').then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(DirectoryError);
    expect((refused as Error).message).toMatch(/^catalog\.repin_by_hand\(key, shard, reason\): the shard 'shard_009' is named by no slot map/);
  });
});

describe('catalog.publish_slot_map_by_hand, called in SQL', () => {
  const publish = (assignments: unknown, reason: string | null = 'restored from backup (OPS-7)', version: number | null = 2) =>
    outcome(control.query('select version, slot_count from catalog.publish_slot_map_by_hand($1, $2::text[], $3)', [version, assignments, reason]));
  const withOwner = (slot: number, owner: string | null) => MAP.map((s, i) => (i === slot ? owner : s));
  const head = '22023: catalog.publish_slot_map_by_hand(version, assignments, reason): ';

  it('refuses a map with a NULL, blank, malformed or unknown owner (22023), nothing published: the current map is still read', async () => {
    // Before 013 each was published as version 2, and SlotMapStore.current() then refused the
    // current map (a NULL or blank owner: "invalid slot map"), which failed every route by hash.
    expect(await publish(withOwner(5, null))).toBe(`${head}every slot needs an owner: 1 of the 8 assignments are NULL (the first is slot 5); nothing was published`);
    expect(await publish(withOwner(2, ''))).toBe(`${head}every owner must be a shard the catalog knows (the first slot of each owner refused): slot 2: the shard must not be empty; nothing was published`);
    expect(await publish(withOwner(2, ' '))).toBe(`${head}every owner must be a shard the catalog knows (the first slot of each owner refused): slot 2: the shard must not be empty; nothing was published`);
    expect(await publish(withOwner(6, 'shard_03'))).toBe(
      `${head}every owner must be a shard the catalog knows (the first slot of each owner refused): slot 6: the shard 'shard_03' is named by no slot map, directory entry or move job of this catalog (known: shard_001, shard_002, shard_003): a typo? A shard new to the catalog is known once a move to it is planned or a key is pinned to it; a configured shard the catalog lost the record of (restored from before it was added) is accepted when the transaction names it first: set local ca_dms.new_shards = 'shard_03'; nothing was published`,
    );
    expect(await publish(withOwner(0, 'shard 001'))).toMatch(/^22023: .*slot 0: the shard 'shard 001' is not a shard id/);
    expect(await versions()).toEqual([1]);
    expect((await new SlotMapStore(admin).current()).assignments).toEqual(MAP);
  });

  it('names each refused owner once, at its first slot, in slot order, after the NULLs; the first map needs shard ids only', async () => {
    // Pins the message that sharding migration 018 builds owner by owner (013 built it per slot).
    const unknown = (shard: string) =>
      `the shard '${shard}' is named by no slot map, directory entry or move job of this catalog (known: shard_001, shard_002, shard_003): a typo? A shard new to the catalog is known once a move to it is planned or a key is pinned to it; a configured shard the catalog lost the record of (restored from before it was added) is accepted when the transaction names it first: set local ca_dms.new_shards = '${shard}'`;
    const notAnId = `the shard 'shard 001' is not a shard id (1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit)`;
    expect(await publish(['shard_001', 'shard_009', 'shard 001', null, 'shard_009', 'shard_004', 'shard 001', 'shard_003'])).toBe(
      `${head}every slot needs an owner: 1 of the 8 assignments are NULL (the first is slot 3); every owner must be a shard the catalog knows (the first slot of each owner refused): slot 1: ${unknown('shard_009')}; slot 2: ${notAnId}; slot 5: ${unknown('shard_004')}; nothing was published`,
    );
    await admin.query('truncate catalog.slot_maps');
    expect(await publish(['shard_100', 'shard 001', 'shard_100', ' ', 'shard_101', 'shard_101', 'shard_101', 'shard_100'], 'first map', 1)).toBe(
      `${head}every owner must be a shard the catalog knows (the first slot of each owner refused): slot 1: ${notAnId}; slot 3: the shard must not be empty; nothing was published`,
    );
    expect(await versions()).toEqual([]);
    expect(await publish(['shard_100', 'shard_100', 'shard_101', 'shard_101', 'shard_102', 'shard_102', 'shard_102', 'shard_100'], 'first map', 1)).toBe('ok [{"version":1,"slot_count":8}]');
  });

  it('refuses assignments that are not one owner per slot from subscript 1 (none, two-dimensional, subscripted from 0), a version below 1 and a blank reason, naming each', async () => {
    // Before 013: a two-dimensional array or one subscripted from 0 was published (read back as
    // a nested array, or with every slot's owner shifted by one in SQL's assignments[s + 1]).
    expect(await publish(null)).toBe(`${head}the assignments must name an owner for every slot (none given); nothing was published`);
    expect(await publish('{}')).toBe(`${head}the assignments must name an owner for every slot (none given); nothing was published`);
    expect(await publish('{{shard_001,shard_001,shard_002,shard_002},{shard_003,shard_003,shard_003,shard_001}}')).toBe(
      `${head}the assignments must be a one-dimensional array subscripted from 1 (slot s is assignments[s + 1]), not one of bounds [1:2][1:4]; nothing was published`,
    );
    expect(await publish(`[0:7]={${MAP.join(',')}}`)).toBe(
      `${head}the assignments must be a one-dimensional array subscripted from 1 (slot s is assignments[s + 1]), not one of bounds [0:7]; nothing was published`,
    );
    expect(await publish(MAP, '  ', 0)).toBe(`${head}the reason must not be empty (it is recorded with the map); the version must be 1 or more, not 0; nothing was published`);
    expect(await versions()).toEqual([1]);
    // A good one still goes through, and the compare-and-set is as before (another version: no row).
    expect(await publish(withOwner(0, 'shard_002'), 'OPS-7', 3)).toBe('ok []');
    expect(await publish(withOwner(0, 'shard_002'))).toBe('ok [{"version":2,"slot_count":8}]');
  });

  it('is refused through SlotMapStore.publishByHand as a SlotMapError with the catalog message', async () => {
    const store = new SlotMapStore(control);
    const refused = await store.publishByHand({ version: 2, slotCount: MAP.length, assignments: withOwner(1, 'shard_009') as string[] }, 'OPS-7').then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(SlotMapError);
    expect((refused as Error).message).toMatch(/^catalog\.publish_slot_map_by_hand\(version, assignments, reason\): .*slot 1: the shard 'shard_009' is named by no slot map/);
  });
});

/** A spelling of a UUID, or of something close to one, with the variations section 1 speaks of (and a few it refuses). */
const nearUuid = fc
  .record({
    id: fc.uuid(),
    upper: fc.array(fc.boolean(), { minLength: 1, maxLength: 45 }),
    // Hyphens: 8-4-4-4-12, none, after any of the seven groups of four, or one after a digit that ends no group of four.
    hyphens: fc.oneof(
      fc.constant<'standard' | 'none'>('standard'),
      fc.constant<'standard' | 'none'>('none'),
      fc.array(fc.boolean(), { minLength: 7, maxLength: 7 }),
      fc.integer({ min: 1, max: 31 }),
    ),
    braces: fc.constantFrom('', '{}', '{', '}'),
    prefix: fc.constantFrom('', '', 'urn:uuid:', 'URN:UUID:', 'Urn:Uuid:', 'urn:uuid: ', 'uuid:', 'urn:'),
    blank: fc.constantFrom('', '', ' ', '\t', '\n'),
    blankAt: fc.constantFrom('start', 'end', 'inside'),
  })
  .map(({ id, upper, hyphens, braces, prefix, blank, blankAt }) => {
    const hex = id.replaceAll('-', '');
    let body: string;
    if (hyphens === 'standard') body = id;
    else if (hyphens === 'none') body = hex;
    else if (typeof hyphens === 'number') body = `${hex.slice(0, hyphens)}-${hex.slice(hyphens)}`;
    else body = [...hex].map((c, i) => (i % 4 === 3 && i < 31 && hyphens[(i - 3) / 4] ? `${c}-` : c)).join('');
    body = [...body].map((c, i) => (upper[i % upper.length] ? c.toUpperCase() : c)).join('');
    body = braces === '{}' ? `{${body}}` : braces === '{' ? `{${body}` : braces === '}' ? `${body}}` : body;
    const text = `${prefix}${body}`;
    return blankAt === 'start' ? `${blank}${text}` : blankAt === 'end' ? `${text}${blank}` : `${text.slice(0, 12)}${blank}${text.slice(12)}`;
  });

describe('a key spelt in any form: the SQL recovery and canonicalKey agree (docs/sharding-spec.md section 1)', () => {
  /** The key catalog.repin_by_hand pins `spelled` under (in a transaction rolled back). */
  const pinnedUnder = async (client: pg.PoolClient, spelled: string): Promise<string> => {
    await client.query('begin');
    try {
      return (await client.query<{ key: string }>(`select key from catalog.repin_by_hand($1, 'shard_001', 'spelling parity')`, [spelled])).rows[0]?.key ?? '(none)';
    } finally {
      await client.query('rollback');
    }
  };

  it("pins each of the spec's key forms under its canonical text", async () => {
    const client = await control.connect();
    try {
      for (const f of vectors.keyForms.forms) expect({ key: f.key, pinned: await pinnedUnder(client, f.key) }).toEqual({ key: f.key, pinned: f.canonical });
    } finally {
      client.release();
    }
  });

  it('pins every generated spelling under the key canonicalKey gives it (case, braces, urn:uuid:, hyphens, blanks)', async () => {
    // Before 013: `urn:uuid:{...}`, `urn:uuid:` and 32 digits, or hyphens after groups of four
    // were read as the UUID in SQL, as the spelling itself by canonicalKey.
    const client = await control.connect();
    try {
      await fc.assert(
        fc.asyncProperty(nearUuid, async (spelled) => {
          expect({ spelled, pinned: await pinnedUnder(client, spelled) }).toEqual({ spelled, pinned: canonicalKey(spelled) });
        }),
        {
          numRuns: 400,
          examples: [['urn:uuid:{3f2c1d9e-8a7b-4c6d-9e0f-112233445566}'], ['urn:uuid:3F2C1D9E8A7B4C6D9E0F112233445566'], ['URN:UUID:3f2c-1d9e-8a7b-4c6d-9e0f-1122-3344-5566']],
        },
      );
    } finally {
      client.release();
    }
  });
});
