/**
 * Issue #15: `ca-dms-scaling shards fences` judges a key's `directory` fence rows by the shard the
 * key routes to, which depends on the routing (strategy, directory.override_hash, fallback,
 * enabled). It read that from the operator's SHARDING_CONFIG_JSON alone, and a shell whose
 * document differed from the deployed routers' had the rows settled by a route no router takes.
 * Now every sharding runtime records the routing it runs with in the catalog
 * (`catalog.runtime_routings`, sharding migration 022; runtime-routings.ts) as it is built, and the
 * review uses the recorded routing where it is given none, and refuses `--settle` where the one it
 * is given differs from one a runtime recorded recently (listing still works, saying so).
 *
 * The record must never stop a runtime from starting: a catalog without the table (a deploy that
 * runs the code before the migration) or a login without the grant is told and the runtime starts.
 */
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { captureIo, deployedDocument, fencesCliUrls } from './fixtures/fences-cli.js';
import { createShardsCommand } from '../../../bin/commands/shards.js';
import { otherRoutingsRemark, RECORD_LOCK_WAIT_MS, recordedRoutings, recordRuntimeRouting } from '../../../functions/adapters/postgres/runtime-routings.js';
import { createShardingRuntime } from '../../../functions/adapters/postgres/sharding-runtime.js';
import { parseShardingConfig, type ShardingConfig } from '../../../functions/core/sharding/config.js';
import { sqlstateOf } from '../../support/postgres.js';
import { controlLogin, keysInSlot, sides, startMoveEnv, unitFenceState, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
}, 120_000);
afterAll(async () => {
  await env?.stop();
});
// Each test starts from no record (the env's catalog is a superuser's: it may delete them).
beforeEach(async () => {
  await env.catalog.query('delete from catalog.runtime_routings');
});

/** The env's shards under `directory` (override_hash on unless given) and `strategy` (hash_based). */
function configWith(directory: Record<string, unknown> = {}, strategy = 'hash_based'): ShardingConfig {
  return parseShardingConfig({
    strategy,
    shards: Object.entries(env.urls.shards).map(([shard_id, database_url]) => ({ shard_id, database_url })),
    default_shard: 'shard_a',
    directory,
  });
}

/** A runtime built and closed, as a function's cold start builds it: what it leaves in the catalog. */
async function coldStart(actor: string, config: ShardingConfig, catalog: pg.Pool = env.catalog, onRoutingNotRecorded?: (error: unknown) => void): Promise<void> {
  const runtime = await createShardingRuntime({ config, catalog, actor, pools: { max: 1 }, ...(onRoutingNotRecorded ? { onRoutingNotRecorded } : {}) });
  await runtime.close();
}

async function records(): Promise<Array<{ actor: string; routing: unknown; seen_at: Date; first_seen_at: Date }>> {
  return (await env.catalog.query<{ actor: string; routing: unknown; seen_at: Date; first_seen_at: Date }>('select actor, routing, seen_at, first_seen_at from catalog.runtime_routings order by actor, seen_at')).rows;
}

const PINS_ROUTE = { strategy: 'hash_based', override_hash: true, fallback: 'hash', enabled: true };
const HASH_ONLY = { strategy: 'hash_based', override_hash: false, fallback: 'hash', enabled: true };

describe('a sharding runtime records the routing it runs with (catalog.runtime_routings)', () => {
  it('once per runtime built: the same actor and routing again moves its seen_at, another routing adds a row of its own', async () => {
    await coldStart('scaling-api', configWith());
    const [first] = await records();
    expect(first).toMatchObject({ actor: 'scaling-api', routing: PINS_ROUTE });
    await coldStart('scaling-api', configWith());
    await coldStart('scaling-api', configWith({ override_hash: false }));
    await coldStart('scaling-moves', configWith());

    const rows = await records();
    expect(rows.map((r) => [r.actor, r.routing])).toEqual([
      ['scaling-api', PINS_ROUTE],
      ['scaling-api', HASH_ONLY],
      ['scaling-moves', PINS_ROUTE],
    ]);
    const again = rows[0];
    expect(again?.first_seen_at).toEqual(first?.first_seen_at);
    expect(again?.seen_at.getTime()).toBeGreaterThan(first?.seen_at.getTime() ?? Infinity);
  });

  it('as the control login (ca_dms_control), as on AWS: it records and reads, and may not delete a record', async () => {
    const control = await controlLogin(env, 'routing_recorder');
    try {
      const failures: unknown[] = [];
      await coldStart('scaling-moves', configWith({}, 'directory_based'), control, (e) => failures.push(e));
      expect(failures).toEqual([]);
      expect((await control.query('select actor, routing from catalog.runtime_routings')).rows).toEqual([
        { actor: 'scaling-moves', routing: { strategy: 'directory_based', override_hash: true, fallback: 'hash', enabled: true } },
      ]);
      expect(await sqlstateOf(() => control.query('delete from catalog.runtime_routings'))).toBe('42501');
    } finally {
      await control.end();
    }
  });

  it('starts all the same where the catalog has no table yet (a deploy running the code before sharding migration 022), telling why; a throwing logger changes nothing', async () => {
    await env.catalog.query('alter table catalog.runtime_routings rename to runtime_routings_away');
    try {
      const failures: unknown[] = [];
      const runtime = await createShardingRuntime({ config: configWith(), catalog: env.catalog, actor: 'scaling-api', pools: { max: 1 }, onRoutingNotRecorded: (e) => failures.push(e) });
      try {
        expect((await runtime.router.resolve(keysInSlot(5, 1)[0] as string)).shardId).toBe(await env.ownerOf(5));
      } finally {
        await runtime.close();
      }
      expect(failures.map((e) => (e as { code?: string }).code)).toEqual(['42P01']);
      await coldStart('scaling-api', configWith(), env.catalog, () => {
        throw new Error('the logger failed');
      });
    } finally {
      await env.catalog.query('alter table catalog.runtime_routings_away rename to runtime_routings');
    }
  });
  it("does not hold a cold start past a short bound where another session holds the record's row (a locked or slow catalog): told, the runtime starts", async () => {
    // The record sits in the cold start's path: the API's first answer waits on it (its request
    // deadline is taken before the runtime is built). A session holding the row (an operator's
    // open transaction, a migration's lock) held every cold start for the role's statement
    // timeout on AWS (10 s), and without one, for good.
    await coldStart('scaling-api', configWith());
    const holder = await env.catalog.connect();
    try {
      await holder.query('begin');
      await holder.query(`select 1 from catalog.runtime_routings where actor = 'scaling-api' for update`);
      const control = await controlLogin(env, 'routing_waiter');
      try {
        const failures: unknown[] = [];
        const started = performance.now();
        const built = coldStart('scaling-api', configWith(), control, (e) => failures.push(e));
        const inTime = await Promise.race([built.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 5_000))]);
        const ms = performance.now() - started;
        await holder.query('rollback');
        await built;
        expect(inTime, `the cold start waited ${Math.round(ms)} ms on the held row`).toBe(true);
        expect(ms).toBeLessThan(RECORD_LOCK_WAIT_MS + 1_500);
        expect(failures.map((e) => (e as { code?: string }).code)).toEqual(['55P03']);
        // Its bound was its own implicit transaction's: the pooled connection (one) keeps none.
        expect((await control.query<{ lock_timeout: string }>('show lock_timeout')).rows[0]?.lock_timeout).toBe('0');
        await coldStart('scaling-api', configWith(), control, (e) => failures.push(e));
        expect(failures).toHaveLength(1);
        expect((await control.query<{ lock_timeout: string }>('show lock_timeout')).rows[0]?.lock_timeout).toBe('0');
      } finally {
        await control.end();
      }
    } finally {
      await holder.query('rollback').catch(() => undefined);
      holder.release();
    }
  });
  it("on a catalog before sharding migration 030 (one row per actor and routing), a runtime's record under an application login's name and routing writes nothing, leaves that row as it was, and says so", async () => {
    // The code is deployed before the migration is applied: the runtimes' statement names no
    // conflict target, so it runs there, and must not move the application's row it cannot key apart.
    await env.catalog.query(`alter table catalog.runtime_routings drop constraint runtime_routings_pkey, add constraint runtime_routings_pkey primary key (actor, routing)`);
    try {
      await env.catalog.query(`insert into catalog.runtime_routings (actor, routing, by_application, seen_at, first_seen_at) values ('ca-dms-backend', $1::jsonb, true, now() - interval '2 hours', now() - interval '2 hours')`, [JSON.stringify(HASH_ONLY)]);
      const [before] = await records();
      const failures: unknown[] = [];
      await coldStart('ca-dms-backend', configWith({ override_hash: false }), env.catalog, (e) => failures.push(e));

      expect(failures.map((e) => (e as Error).message)).toEqual([
        "the routing of ca-dms-backend was not recorded: an application login's record of the same name and routing holds its row, on a catalog whose runtime_routings still has one row per actor and routing (sharding migration 030 not applied: ca-dms-scaling migrate); that record was left as it was",
      ]);
      expect(await records()).toEqual([before]);
      // Another routing of the name is a row of its own there too: recorded.
      await coldStart('ca-dms-backend', configWith(), env.catalog, (e) => failures.push(e));
      expect(failures).toHaveLength(1);
      expect((await records()).map((r) => r.routing)).toEqual([HASH_ONLY, PINS_ROUTE]);
    } finally {
      await env.catalog.query('delete from catalog.runtime_routings');
      await env.catalog.query(`alter table catalog.runtime_routings drop constraint runtime_routings_pkey, add constraint runtime_routings_pkey primary key (actor, routing, by_application)`);
    }
  });

  it("two cold starts of one actor and routing at once both record: the one whose insert met the other's row, committed meanwhile, moves its seen_at and is told no failure", async () => {
    // The runtimes' statement (update its own side's row, else insert, no conflict target) ran
    // both parts on one snapshot: the second cold start's update found no row (the first's was not
    // committed), its insert waited on the first's and did nothing once it committed, and the
    // statement, having written nothing, threw that an application login's record held the row on
    // a catalog without sharding migration 030 (neither was so), its seen_at not moved.
    const routing = { strategy: 'hash_based' as const, overrideHash: true, fallback: 'hash' as const, enabled: true };
    // The second waits on the first's row at most RECORD_LOCK_WAIT_MS: on a loaded machine the
    // first's commit can come later (55P03, the bound doing its work), and the race is run again.
    for (let attempt = 1; ; attempt++) {
      await env.catalog.query('delete from catalog.runtime_routings');
      const first = await env.catalog.connect();
      try {
        await first.query('begin');
        await recordRuntimeRouting(first, 'scaling-api', routing);
        const [committed] = (await first.query<{ seen_at: Date }>('select seen_at from catalog.runtime_routings')).rows;
        const second = recordRuntimeRouting(env.catalog, 'scaling-api', routing).then(
          () => undefined,
          (err: unknown) => err,
        );
        // The second's insert waits on the first's row.
        for (let i = 0; i < 200; i++) {
          const { rows } = await env.catalog.query(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%runtime_routings%' and pid <> pg_backend_pid()`);
          if (rows.length > 0) break;
          await new Promise((r) => setTimeout(r, 5));
        }
        await first.query('commit');
        const outcome = await second;
        if ((outcome as { code?: string } | undefined)?.code === '55P03' && attempt < 5) continue;
        expect(outcome).toBeUndefined();
        const rows = await records();
        expect(rows.map((r) => [r.actor, r.routing])).toEqual([['scaling-api', PINS_ROUTE]]);
        expect(rows[0]?.seen_at.getTime()).toBeGreaterThan(committed?.seen_at.getTime() ?? Infinity);
        return;
      } finally {
        await first.query('rollback').catch(() => undefined);
        first.release();
      }
    }
  });
});

describe('a router not built by createShardingRuntime records its routing as docs/sharding-spec.md says', () => {
  /** The SQL the spec gives such a router ("Recording a router's routing"), read from the spec itself. */
  function documentedSql(): string {
    const spec = readFileSync(new URL('../../../docs/sharding-spec.md', import.meta.url), 'utf8');
    const section = spec.slice(spec.indexOf("**Recording a router's routing"));
    const sql = /```sql\n([\s\S]*?)```/.exec(section)?.[1];
    if (sql === undefined) throw new Error("docs/sharding-spec.md gives no ```sql block under \"Recording a router's routing\"");
    return sql.trim();
  }

  it('as the application login (ca_dms_app, the CA-DMS backend\'s): the documented call records it, the review counts it; the table stays closed to the login; a routing of another shape is refused, nothing recorded', async () => {
    await env.catalog.query(`create role routing_app_router login password 'routing app router' in role ca_dms_app`);
    const url = new URL(env.urls.catalog);
    url.username = 'routing_app_router';
    url.password = 'routing app router';
    const app = new pg.Pool({ connectionString: url.toString(), max: 1 });
    app.on('error', () => undefined);
    try {
      const routing = { strategy: 'directory_based', override_hash: true, fallback: 'reject', enabled: true };
      await app.query(documentedSql(), ['ca-dms-backend', JSON.stringify(routing)]);
      await app.query(documentedSql(), ['ca-dms-backend', JSON.stringify(routing)]);
      expect((await records()).map((r) => [r.actor, r.routing])).toEqual([['ca-dms-backend', routing]]);
      const [read] = (await recordedRoutings(env.catalog, 60_000)) ?? [];
      expect(read).toMatchObject({ actor: 'ca-dms-backend', routing: { strategy: 'directory_based', overrideHash: true, fallback: 'reject', enabled: true }, superseded: false });

      expect(await sqlstateOf(() => app.query(`insert into catalog.runtime_routings (actor, routing) values ('x', '{"strategy": "hash_based", "override_hash": true, "fallback": "hash", "enabled": true}')`))).toBe('42501');
      expect(await sqlstateOf(() => app.query('select * from catalog.runtime_routings'))).toBe('42501');
      for (const wrong of [{ ...routing, strategy: 'consistent' }, { strategy: 'hash_based', override_hash: true, fallback: 'hash' }, { ...routing, enabled: 'yes' }, { ...routing, extra: 1 }]) {
        expect(await sqlstateOf(() => app.query(documentedSql(), ['ca-dms-backend', JSON.stringify(wrong)]))).toBe('22023');
      }
      expect(await sqlstateOf(() => app.query(documentedSql(), [' ', JSON.stringify(routing)]))).toBe('22023');
      expect((await records()).length).toBe(1);
    } finally {
      await app.end();
      await env.catalog.query('drop role routing_app_router');
    }
  });

  it("a disabled routing a runtime recorded names its record, not SHARDING_ENABLED, as what disabled it", async () => {
    await recordRuntimeRouting(env.catalog, 'ca-dms-backend', { strategy: 'hash_based', overrideHash: true, fallback: 'hash', enabled: false });
    const [read] = (await recordedRoutings(env.catalog, 60_000)) ?? [];
    expect(read?.routing?.disabledBy).toMatch(/^"enabled": false in the routing ca-dms-backend recorded in catalog.runtime_routings, last built with it \d{4}-/);
  });
});

describe('shards fences judges by the routing the runtimes recorded', () => {
  const capture = captureIo;
  const urls = (): Record<string, string> => fencesCliUrls(env);
  const document = (directory: Record<string, unknown> = {}): string => deployedDocument(env, directory);

  /**
   * A key of `slot` pinned (past the stores) to the shard that does not own its slot, and the
   * `fenced` row a pin change killed between its fence and its settle left on its slot's owner:
   * where the key routes depends on whether pins override the hash.
   */
  async function pinnedAwayWithDeadFence(slot: number): Promise<{ key: string; from: string; to: string; source: pg.Pool }> {
    const { from, to, source } = await sides(env, slot);
    const [key] = keysInSlot(slot, 1) as [string];
    await env.catalog.query(`insert into catalog.shard_directory (key, shard_id, updated_by) values ($1, $2, 'test')`, [key, to]);
    await source.query(`insert into write_fences (kind, unit_id, state) values ('directory', $1, 'fenced')`, [key]);
    return { key, from, to, source };
  }

  it("refuses --settle where SHARDING_CONFIG_JSON's routing differs from the one a runtime recorded, naming both and the actor; lists all the same, saying so", async () => {
    // The deployed routers route by hash alone (override_hash off): the key goes to its slot's
    // owner, whatever its pin. The operator's shell has a document with pins routing.
    await coldStart('scaling-api', configWith({ override_hash: false }));
    const { key, from, source } = await pinnedAwayWithDeadFence(2411);
    const shell = { ...urls(), SHARDING_CONFIG_JSON: document() };

    // Settled by the shell's routing, the key's row on its slot's owner, where every router sends
    // its writes, was set moved to its pin's shard, where none does (CAF01 became CAF02): a row
    // settled by a route no router takes.
    const refused = createShardsCommand(shell).run(['fences', '--settle', '--older-than', '0'], capture().io);
    await expect(refused).rejects.toThrow(
      /^--settle refused: SHARDING_CONFIG_JSON gives hash_based \(override_hash on, fallback hash\), but runtimes recorded another routing within the last 24 h, the one their routers run with: hash_based \(override_hash off, fallback hash\), recorded by scaling-api \(last built with it .*\)\. .*Nothing was read from the shards or settled\. Unset SHARDING_CONFIG_JSON/,
    );
    expect(await unitFenceState(source, 'directory', key)).toBe('fenced');

    const listed = capture();
    await createShardsCommand(shell).run(['fences'], listed.io);
    const text = listed.out.join('');
    expect(text).toMatch(/\nrouting: SHARDING_CONFIG_JSON gives hash_based \(override_hash on, fallback hash\), but runtimes recorded another routing .*scaling-api.*--settle is refused until the two agree\n/);
    expect(text).toContain(`${from}  directory ${key}  fenced`);
  });

  it('with no SHARDING_CONFIG_JSON, settles a key\'s rows by the routing the runtimes recorded (before, left to the operator)', async () => {
    await coldStart('scaling-api', configWith());
    await coldStart('scaling-moves', configWith());
    const { key, from, to, source } = await pinnedAwayWithDeadFence(2412);

    const settled = capture();
    await createShardsCommand(urls()).run(['fences', '--settle', '--older-than', '0'], settled.io);
    const text = settled.out.join('');
    expect(text).toMatch(/\nrouting: judged by the routing the runtimes recorded within the last 24 h, hash_based \(override_hash on, fallback hash\): scaling-(api|moves) .*, scaling-(api|moves) /);
    expect(text).toContain(`settled: moved to ${to}`);
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
    expect(from).not.toBe(to);
  });

  it('with no SHARDING_CONFIG_JSON and the runtimes disagreeing, leaves a key\'s rows to the operator naming both routings; --recorded-within leaves a gone runtime\'s record out', async () => {
    await coldStart('scaling-moves', configWith({ override_hash: false }));
    await coldStart('scaling-api', configWith());
    const { key, source, to } = await pinnedAwayWithDeadFence(2413);

    const left = capture();
    await createShardsCommand(urls()).run(['fences', '--settle', '--older-than', '0'], left.io);
    expect(left.out.join('')).toMatch(/not settled: the runtimes recorded different routings within the last 24 h \(hash_based \(override_hash on, fallback hash\); hash_based \(override_hash off, fallback hash\)\)/);
    expect(await unitFenceState(source, 'directory', key)).toBe('fenced');

    // The hash-only runtime was built two hours ago and has stopped since (a deploy): out of a one-hour window.
    await env.catalog.query(`update catalog.runtime_routings set seen_at = now() - interval '2 hours' where actor = 'scaling-moves'`);
    const settled = capture();
    await createShardsCommand(urls()).run(['fences', '--settle', '--older-than', '0', '--recorded-within', '3600'], settled.io);
    expect(settled.out.join('')).toContain(`settled: moved to ${to}`);
  });

  it("after a change of the routing, --ignore-superseded leaves out the records their actor has since superseded (built with another routing later), not another actor's; without it --settle is refused, saying so", async () => {
    // scaling-api ran with hash-only routing until a deploy two hours ago changed its document;
    // every runtime built since runs with pins routing. Within the day the old record counts.
    await coldStart('scaling-api', configWith({ override_hash: false }));
    await env.catalog.query(`update catalog.runtime_routings set seen_at = now() - interval '2 hours', first_seen_at = now() - interval '30 days'`);
    await coldStart('scaling-api', configWith());
    const { key, source, to } = await pinnedAwayWithDeadFence(2415);
    const shell = { ...urls(), SHARDING_CONFIG_JSON: document() };

    await expect(createShardsCommand(shell).run(['fences', '--settle', '--older-than', '0'], capture().io)).rejects.toThrow(
      /recorded by scaling-api \(last built with it [^)]*, 2 h ago, superseded: scaling-api was built with another routing since\)\..*Every runtime of each actor built since runs with another routing: once every runtime built before has stopped \(a deploy replaced them\), --ignore-superseded leaves those records out\./,
    );
    expect(await unitFenceState(source, 'directory', key)).toBe('fenced');

    const settled = capture();
    await createShardsCommand(shell).run(['fences', '--settle', '--older-than', '0', '--ignore-superseded'], settled.io);
    expect(settled.out.join('')).toMatch(/\nrouting: judged by SHARDING_CONFIG_JSON's routing, hash_based \(override_hash on, fallback hash\), the one the runtimes recorded within the last 24 h: scaling-api .*; left out \(--ignore-superseded\): hash_based \(override_hash off, fallback hash\), recorded by scaling-api /);
    expect(settled.out.join('')).toContain(`settled: moved to ${to}`);
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');

    // The moves worker was not rebuilt since: its old routing's record is no actor's superseded one.
    await coldStart('scaling-moves', configWith({ override_hash: false }));
    const other = await pinnedAwayWithDeadFence(2416);
    await expect(createShardsCommand(shell).run(['fences', '--settle', '--older-than', '0', '--ignore-superseded'], capture().io)).rejects.toThrow(/^--settle refused: .*recorded by scaling-moves \(last built with it [^)]*\)\./);
    expect(await unitFenceState(other.source, 'directory', other.key)).toBe('fenced');
  });

  it("where a superseded record is what differs, GET /shards/fences's otherRoutings and the listing's routing line say that --ignore-superseded leaves it out; another actor's record that still counts is not called superseded", async () => {
    // scaling-api ran with hash-only routing until a deploy two hours ago; every runtime built since
    // runs with pins routing, the API's own. Before, neither text named the way out the refusal of
    // --settle names (--ignore-superseded), and the operator reading the listing had no hint of it.
    await coldStart('scaling-api', configWith({ override_hash: false }));
    await env.catalog.query(`update catalog.runtime_routings set seen_at = now() - interval '2 hours', first_seen_at = now() - interval '30 days'`);
    await coldStart('scaling-api', configWith());
    const own = { strategy: 'hash_based' as const, overrideHash: true, fallback: 'hash' as const, enabled: true };

    const remark = (await otherRoutingsRemark(env.catalog, own)) ?? '';
    expect(remark).toMatch(/^runtimes recorded another routing than this API's .*superseded: scaling-api was built with another routing since\)\./);
    expect(remark).toContain('Every record of another routing is superseded (its actor was built with another routing since): once every runtime built before has stopped (a deploy replaced them), ca-dms-scaling shards fences --ignore-superseded leaves those records out.');
    const listed = capture();
    await createShardsCommand({ ...urls(), SHARDING_CONFIG_JSON: document() }).run(['fences'], listed.io);
    expect(listed.out.join('')).toMatch(
      /\nrouting: SHARDING_CONFIG_JSON gives hash_based \(override_hash on, fallback hash\), but runtimes recorded another routing .*--settle is refused until the two agree; every record of another routing is superseded \(its actor was built with another routing since\): once every runtime built before has stopped \(a deploy replaced them\), --ignore-superseded leaves those records out\n/,
    );

    // The moves worker still runs with hash-only routing: its record is no actor's superseded one.
    await coldStart('scaling-moves', configWith({ override_hash: false }));
    const mixed = (await otherRoutingsRemark(env.catalog, own)) ?? '';
    expect(mixed).toContain('1 of those 2 records is superseded (its actor was built with another routing since): --ignore-superseded leaves it out once every runtime built before has stopped; the other still counts.');
    expect(mixed).not.toContain('Every record of another routing is superseded');
  });

  describe("an application login's records (catalog.record_runtime_routing) cannot hide a runtime's", () => {
    /** A login of ca_dms_app, as the CA-DMS backend's (or a compromised one's) on AWS. */
    async function appLogin(name: string): Promise<pg.Pool> {
      await env.catalog.query(`create role ${name} login password 'app login' in role ca_dms_app`);
      const url = new URL(env.urls.catalog);
      url.username = name;
      url.password = 'app login';
      const app = new pg.Pool({ connectionString: url.toString(), max: 1 });
      app.on('error', () => undefined);
      return app;
    }
    const record = (app: pg.Pool, actor: string, routing: Record<string, unknown>): Promise<unknown> =>
      app.query('select catalog.record_runtime_routing($1, $2::jsonb)', [actor, JSON.stringify(routing)]);

    it("may not record under a control runtime's name: the real scaling-api record is not marked superseded, and --settle --ignore-superseded judges by it", async () => {
      // The deployed runtimes route by hash alone (override_hash off): the pinned key's writes go
      // to its slot's owner, where its row is fenced. An application login (a compromised or
      // misconfigured backend) records pins routing under their names: before, that made their
      // true records "superseded", --ignore-superseded left them out, and the forged routing
      // alone judged the key: its row on the slot's owner, where every router sends its writes,
      // was set moved to the pin's shard, where none does (CAF01 became CAF02).
      await coldStart('scaling-api', configWith({ override_hash: false }));
      await coldStart('scaling-moves', configWith({ override_hash: false }));
      const { key, source } = await pinnedAwayWithDeadFence(2417);
      const app = await appLogin('routing_forger');
      try {
        for (const actor of ['scaling-api', 'scaling-moves']) {
          // Nor may it keep a control runtime's record of a routing fresh (its seen_at), which
          // would mark the routing the runtimes were built with since as superseded.
          expect(await sqlstateOf(() => record(app, actor, HASH_ONLY)), actor).toBe('42501');
          expect(await sqlstateOf(() => record(app, actor, PINS_ROUTE)), actor).toBe('42501');
        }
        expect((await records()).map((r) => [r.actor, r.routing])).toEqual([
          ['scaling-api', HASH_ONLY],
          ['scaling-moves', HASH_ONLY],
        ]);
        const settled = capture();
        await createShardsCommand(urls()).run(['fences', '--settle', '--older-than', '0', '--ignore-superseded'], settled.io);
        expect(settled.out.join('')).toMatch(/\nrouting: judged by the routing the runtimes recorded within the last 24 h, hash_based \(override_hash off, fallback hash\): /);
        expect(await unitFenceState(source, 'directory', key)).toBe('fenced');
      } finally {
        await app.end();
        await env.catalog.query('drop role routing_forger');
      }
    });

    it("a name the application login recorded first (before any runtime of it) supersedes no runtime's record, and the listing says whose record it is", async () => {
      const app = await appLogin('routing_squatter');
      try {
        await record(app, 'scaling-api', HASH_ONLY);
        await coldStart('scaling-api', configWith());
        expect(await sqlstateOf(() => record(app, 'scaling-api', HASH_ONLY))).toBe('42501');
        // Each side's records supersede their own side's only: neither is superseded here.
        const read = (await recordedRoutings(env.catalog, 60_000)) ?? [];
        expect(read.map((r) => [r.actor, r.routing?.overrideHash, r.superseded, r.byApplication])).toEqual([
          ['scaling-api', true, false, false],
          ['scaling-api', false, false, true],
        ]);
        const { key, source } = await pinnedAwayWithDeadFence(2418);
        const left = capture();
        await createShardsCommand(urls()).run(['fences', '--settle', '--older-than', '0', '--ignore-superseded'], left.io);
        expect(left.out.join('')).toMatch(/recorded by scaling-api \(recorded by an application login through catalog\.record_runtime_routing, last built with it /);
        expect(await unitFenceState(source, 'directory', key)).toBe('fenced');
      } finally {
        await app.end();
        await env.catalog.query('drop role routing_squatter');
      }
    });

    it("a control runtime's record under a name and routing an application login recorded first moves no application row: each side keeps its own row and seen_at", async () => {
      // Before, both sides shared the row of an actor and routing (sharding migration 022's key):
      // the runtime's upsert moved the application login's row's seen_at, and recorded no row of
      // its own, the application's row (its seen_at now the runtime's) standing for both.
      const app = await appLogin('routing_first');
      try {
        await record(app, 'ca-dms-backend', HASH_ONLY);
        await env.catalog.query(`update catalog.runtime_routings set seen_at = now() - interval '2 hours', first_seen_at = now() - interval '2 hours'`);
        const [before] = (await env.catalog.query<{ seen_at: Date }>('select seen_at from catalog.runtime_routings')).rows;
        await coldStart('ca-dms-backend', configWith({ override_hash: false }));

        const rows = (
          await env.catalog.query<{ actor: string; by_application: boolean; seen_at: Date }>('select actor, by_application, seen_at from catalog.runtime_routings order by by_application')
        ).rows;
        expect(rows.map((r) => [r.actor, r.by_application])).toEqual([
          ['ca-dms-backend', false],
          ['ca-dms-backend', true],
        ]);
        expect(rows[1]?.seen_at).toEqual(before?.seen_at);
        expect((rows[0]?.seen_at.getTime() ?? 0) - (before?.seen_at.getTime() ?? 0)).toBeGreaterThan(3_600_000);
        // And the runtime's record stays the runtime's: the application login may not record under its name now.
        expect(await sqlstateOf(() => record(app, 'ca-dms-backend', HASH_ONLY))).toBe('42501');
        expect((await env.catalog.query<{ seen_at: Date }>('select seen_at from catalog.runtime_routings where by_application')).rows[0]?.seen_at).toEqual(before?.seen_at);
      } finally {
        await app.end();
        await env.catalog.query('drop role routing_first');
      }
    });

    it("a flood of an application login's records (a name per call) does not flood the review: each routing names its runtimes' records and a few more, counting the rest", async () => {
      // Each call under a new name adds a row (the table keeps one per actor and routing). 20,000
      // of them made GET /shards/fences's otherRoutings (and the CLI's routing line) list every
      // one, about 3 MB: past a Lambda's 6 MB response with a few more, the listing failed for a day.
      await coldStart('scaling-api', configWith({ override_hash: false }));
      await env.catalog.query(
        `insert into catalog.runtime_routings (actor, routing, by_application)
         select 'svc-' || g, $1::jsonb, true from generate_series(1, 20000) g`,
        [JSON.stringify(HASH_ONLY)],
      );
      const remark = (await otherRoutingsRemark(env.catalog, { strategy: 'hash_based', overrideHash: true, fallback: 'hash', enabled: true })) ?? '';
      expect(remark).toMatch(/^runtimes recorded another routing than this API's .*: hash_based \(override_hash off, fallback hash\), recorded by scaling-api \(last built with it [^)]*\), svc-\d+ \(recorded by an application login/);
      expect(remark).toContain(', and 19,991 more records of it (19,991 by application logins; catalog.runtime_routings holds them all).');
      expect(remark.length).toBeLessThan(5_000);
    });

    it('refuses an actor with control characters, spaces or quotes (it is printed in the review and its refusals), nothing recorded', async () => {
      const app = await appLogin('routing_odd');
      try {
        for (const actor of ['ca-dms-backend\nrouting: judged by SHARDING_CONFIG_JSON', 'ca-dms-backend\u001b[8m', 'ca dms backend', "x'y", 'x'.repeat(201)]) {
          expect(await sqlstateOf(() => record(app, actor, PINS_ROUTE)), JSON.stringify(actor)).toBe('22023');
        }
        await record(app, 'ca-dms-backend.worker_2', PINS_ROUTE);
        expect((await records()).map((r) => r.actor)).toEqual(['ca-dms-backend.worker_2']);
      } finally {
        await app.end();
        await env.catalog.query('drop role routing_odd');
      }
    });
  });

  it('ages a record out after a day by default: a runtime not built with a routing for a day runs no router with it', async () => {
    await coldStart('scaling-api', configWith({ override_hash: false }));
    await env.catalog.query(`update catalog.runtime_routings set seen_at = now() - interval '25 hours'`);
    const { key, source, to } = await pinnedAwayWithDeadFence(2414);
    const settled = capture();
    await createShardsCommand({ ...urls(), SHARDING_CONFIG_JSON: document() }).run(['fences', '--settle', '--older-than', '0'], settled.io);
    expect(settled.out.join('')).toMatch(/\nrouting: judged by SHARDING_CONFIG_JSON's routing, hash_based \(override_hash on, fallback hash\), unchecked: no runtime recorded its routing in catalog.runtime_routings within the last 24 h\n/);
    expect(settled.out.join('')).toContain(`settled: moved to ${to}`);
    expect(await unitFenceState(source, 'directory', key)).toBe('moved');
  });
});
