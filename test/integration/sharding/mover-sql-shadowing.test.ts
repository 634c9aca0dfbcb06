/**
 * The mover's own SQL where the application login may create in the shard's schema (PostgreSQL
 * 14 grants CREATE on `public` to PUBLIC; shard migration 019 revokes it only where its login
 * may, so here it is granted back). The mover's sessions search `"$user", public` after
 * pg_catalog, and a function, aggregate or operator of `public` whose argument types match a
 * call exactly is preferred over pg_catalog's polymorphic one (`to_jsonb(anyelement)`,
 * `hash_record_extended(record, bigint)`, `anyarray = anyarray`), over one that needs a cast
 * (`oid = regclass`), and an overload of the shard's own functions over theirs when the call's
 * arguments are not of their types (`move_permit_hold(integer, integer)`): CVE-2018-1058's
 * pattern. Such a function runs with the mover's rights (a superuser, or a member of
 * ca_dms_mover with the fence's pass), and one that answers hashes answers the verification.
 *
 * The application login here creates a shadow of every such name the mover calls, each noting
 * who called it and then doing what pg_catalog's would; a whole move (copy, catch-up under
 * writes, comparisons, fence, verification, clean-up, excluded keys) and a rolled back one
 * must call none of them. A call added later without `pg_catalog.` (or its own function with
 * arguments not of its types) fails here once its name is in {@link SHADOWS}.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureApplicationLogin, ensureLogin } from '../../../functions/adapters/postgres/app-role.js';
import type { MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { commitHeartbeat, probeReplicaLag } from '../../../functions/adapters/postgres/replica-lag.js';
import { ShardInspector } from '../../../functions/adapters/postgres/shard-inspector.js';
import { ShardPools } from '../../../functions/adapters/postgres/shard-pools.js';
import { countSlot, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
const appPools = new Map<string, pg.Pool>();

/** One shadow: its name and SQL, as the application login creates it in `public`. */
interface Shadow {
  readonly name: string;
  readonly sql: string;
}

const hit = (name: string): string => `perform public.shadow_hit('${name}');`;
const fn = (name: string, args: string, returns: string, body: string): Shadow => ({
  name,
  sql: `create function public.${name.replace(/\(.*$/, '')}(${args}) returns ${returns} language plpgsql called on null input as $$ begin ${hit(name)} ${body} end $$`,
});

/**
 * Every function, aggregate and operator of pg_catalog (or of the shard) the mover calls that an
 * exact-type match in `public` would take over, in each type the mover calls it with.
 */
const SHADOWS: readonly Shadow[] = [
  ...['users', 'documents'].flatMap((t) => [
    fn(`to_jsonb(${t})`, `r ${t}`, 'jsonb', 'return pg_catalog.to_jsonb(r);'),
    fn(`hash_record_extended(${t}, integer)`, `r ${t}, s integer`, 'bigint', 'return pg_catalog.hash_record_extended(r, s::bigint);'),
    fn(`hash_record_extended(${t}, bigint)`, `r ${t}, s bigint`, 'bigint', 'return pg_catalog.hash_record_extended(r, s);'),
    fn(`jsonb_populate_recordset(${t}, jsonb)`, `b ${t}, j jsonb`, `setof ${t}`, 'return query select * from pg_catalog.jsonb_populate_recordset(b, j);'),
  ]),
  ...['text[]', 'tid[]', 'uuid[]', 'bigint[]'].map((t) => fn(`cardinality(${t})`, `a ${t}`, 'integer', 'return pg_catalog.cardinality(a);')),
  ...['text', 'bigint', 'integer', 'uuid'].map((t) => fn(`unnest(${t}[])`, `a ${t}[]`, `setof ${t}`, 'return query select * from pg_catalog.unnest(a);')),
  // The partitions of a table by its pg_class oid (pg_catalog's takes a regclass), for the statistics' sizes.
  fn('pg_partition_tree(oid)', 'r oid', 'table (relid regclass, parentrelid regclass, isleaf boolean, level integer)', 'return query select * from pg_catalog.pg_partition_tree(r::regclass);'),
  fn('move_permit_hold(integer, integer)', 'j integer, e integer', 'void', 'perform public.move_permit_hold(j::bigint, e::bigint);'),
  fn('move_permit_claim(text, text)', 'j text, e text', 'void', 'perform public.move_permit_claim(j::bigint, e::bigint);'),
  ...['uuid', 'text'].map((t) => ({
    name: `array_agg(${t})`,
    sql: `create function public.shadow_array_append_${t}(s ${t}[], v ${t}) returns ${t}[] language plpgsql called on null input as $$ begin ${hit(`array_agg(${t})`)} return pg_catalog.array_append(s, v); end $$;
          create aggregate public.array_agg(${t}) (sfunc = public.shadow_array_append_${t}, stype = ${t}[])`,
  })),
  {
    name: 'jsonb_agg(jsonb)',
    sql: `create function public.shadow_jsonb_append(s jsonb, v jsonb) returns jsonb language plpgsql called on null input as $$ begin ${hit('jsonb_agg(jsonb)')}
            return coalesce(s, '[]'::jsonb) operator(pg_catalog.||) pg_catalog.jsonb_build_array(v); end $$;
          create aggregate public.jsonb_agg(jsonb) (sfunc = public.shadow_jsonb_append, stype = jsonb)`,
  },
  {
    name: 'text[] = text[]',
    sql: `create function public.shadow_eq_text_array(a text[], b text[]) returns boolean language plpgsql as $$ begin ${hit('text[] = text[]')} return a operator(pg_catalog.=) b; end $$;
          create operator public.= (function = public.shadow_eq_text_array, leftarg = text[], rightarg = text[])`,
  },
  // The monitor's (shard-inspector.ts): exact matches where pg_catalog's needs a cast or is polymorphic.
  fn('json_build_object(text, name, text, smallint)', 'a text, b name, c text, d smallint', 'json', 'return pg_catalog.json_build_object(a, b, c, d);'),
  fn('pg_relation_size(oid)', 'r oid', 'bigint', 'return pg_catalog.pg_relation_size(r::regclass);'),
  fn('pg_total_relation_size(oid)', 'r oid', 'bigint', 'return pg_catalog.pg_total_relation_size(r::regclass);'),
  {
    name: 'json_agg(json)',
    sql: `create function public.shadow_json_append(s json, v json) returns json language plpgsql called on null input as $$ begin ${hit('json_agg(json)')}
            return (coalesce(s::jsonb, '[]'::jsonb) operator(pg_catalog.||) pg_catalog.jsonb_build_array(v))::json; end $$;
          create aggregate public.json_agg(json) (sfunc = public.shadow_json_append, stype = json)`,
  },
  ...(
    [
      ['-', 'integer', 'real', 'real'],
      ['*', 'integer', 'real', 'real'],
      ['*', 'real', 'integer', 'real'],
      ['*', 'numeric', 'integer', 'numeric'],
    ] as const
  ).map(([op, left, right, result], i) => ({
    name: `${left} ${op} ${right}`,
    sql: `create function public.shadow_op_${i}(a ${left}, b ${right}) returns ${result} language plpgsql as $$ begin ${hit(`${left} ${op} ${right}`)} return a::${result} operator(pg_catalog.${op}) b::${result}; end $$;
          create operator public.${op} (function = public.shadow_op_${i}, leftarg = ${left}, rightarg = ${right})`,
  })),
  {
    name: 'oid = regclass',
    sql: `create function public.shadow_eq_oid_regclass(a oid, b regclass) returns boolean language plpgsql as $$ begin ${hit('oid = regclass')} return a operator(pg_catalog.=) b::oid; end $$;
          create operator public.= (function = public.shadow_eq_oid_regclass, leftarg = oid, rightarg = regclass)`,
  },
];

beforeAll(async () => {
  env = await startMoveEnv();
  for (const [id, pool] of env.shards) {
    await ensureApplicationLogin(pool, { username: 'shadow_app', password: 'shadow pass' });
    // As on PostgreSQL 14, where migration 019's login could not revoke it.
    await pool.query('grant create on schema public to public');
    const url = new URL(env.urls.shards[id] as string);
    url.username = 'shadow_app';
    url.password = 'shadow pass';
    const app = new pg.Pool({ connectionString: url.toString(), max: 2 });
    app.on('error', () => undefined);
    appPools.set(id, app);
    // The application login's own doing from here on.
    await app.query(`create table public.shadow_calls (fn text, called_by name, session name, primary key (fn, called_by));
      grant insert on public.shadow_calls to public;
      create function public.shadow_hit(f text) returns void language plpgsql as $$ begin
        insert into public.shadow_calls values (f, current_user, session_user) on conflict do nothing;
      exception when read_only_sql_transaction then
        -- Called in a read-only transaction (a snapshot of the mover's): nothing to note it in.
        raise exception 'shadow % called by % in a read-only transaction', f, current_user;
      end $$`);
    for (const s of SHADOWS) await app.query(s.sql);
  }
}, 180_000);
afterAll(async () => {
  await Promise.all([...appPools.values()].map((p) => p.end()));
  await env?.stop();
});

/** The shadows called on each shard so far, as `fn by caller`, as the application login reads them. */
async function shadowCalls(): Promise<string[]> {
  const out: string[] = [];
  for (const [id, app] of appPools) {
    const { rows } = await app.query<{ fn: string; called_by: string }>('select fn, called_by from public.shadow_calls order by fn, called_by');
    out.push(...rows.map((r) => `${id}: ${r.fn} by ${r.called_by}`));
  }
  return out;
}

describe("the mover's SQL on a shard whose schema the application login may create in (PostgreSQL 14)", () => {
  it('the shadows are what the application login may create, and each is taken over pg_catalog by a call of the types it names', async () => {
    const app = appPools.get('shard_a') as pg.Pool;
    const { rows } = await app.query<{ n: number }>("select count(*)::int as n from pg_proc where pronamespace = 'public'::regnamespace and proowner = (select oid from pg_roles where rolname = 'shadow_app')");
    expect(rows[0]?.n).toBeGreaterThanOrEqual(SHADOWS.length);
    // The shadow is what an unqualified call of the mover's kind resolves to (the app's own session).
    await app.query("select to_jsonb(u) from users u limit 1; select cardinality('{}'::text[]); select '{}'::text[] is distinct from '{a}'::text[]");
    await app.query("select pg_relation_size(c.oid), pg_total_relation_size(c.oid), (select count(*) from pg_partition_tree(c.oid)) from pg_class c where c.relname = 'users'");
    expect(await shadowCalls()).toEqual([
      'shard_a: cardinality(text[]) by shadow_app',
      'shard_a: pg_partition_tree(oid) by shadow_app',
      'shard_a: pg_relation_size(oid) by shadow_app',
      'shard_a: pg_total_relation_size(oid) by shadow_app',
      'shard_a: text[] = text[] by shadow_app',
    ]);
    await app.query('truncate public.shadow_calls');
  });

  it('a whole move and a rolled back one call no function, aggregate or operator the application login created', async () => {
    const slot = 2301;
    const { from, to, source } = await sides(env, slot);
    const owners = keysInSlot(slot, 4);
    await seedUsers(source, slot, owners.slice(0, 3), 5);
    // A key of the slot the directory keeps on the target: the move excludes it (and marks it on both shards).
    const pinned = owners[3] as string;
    await env.directory.set(pinned, to, 'test');
    const owner = owners[0] as string;
    const docs = (await source.query<{ id: string }>('select id::text from documents where owner_id = $1 order by id', [owner])).rows.map((r) => r.id);
    // The seeding above is the test's, not the mover's.
    for (const app of appPools.values()) await app.query('truncate public.shadow_calls');
    // Writes of the unit after the copy, for the catch-up: a new user and document, an update, a delete.
    const writesOn = (shard: string, victim: number) => async (point: MoveHookPoint): Promise<void> => {
      if (point !== 'copied') return;
      const app = appPools.get(shard) as pg.Pool;
      const [fresh] = keysInSlot(slot, 1);
      await app.query("insert into users (id, slot, email, display_name) values ($1, $2, $3, 'late')", [fresh, slot, `${fresh}@x`]);
      await app.query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'late')", [randomUUID(), fresh, slot]);
      await app.query("update documents set title = 'changed' where id = $1", [docs[victim]]);
      const gone = await app.query('delete from documents where id = $1', [docs[victim + 1]]);
      if (gone.rowCount !== 1) throw new Error('the test deleted no document');
    };
    const mover = env.mover({ readerGraceMs: 0, hook: writesOn(from, 0) });
    // A shadow taken over a call, or two that make it ambiguous (42725), stop the move: the
    // shadows called are the finding either way.
    const moved = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id).then(
      (job) => `${job.state} ${job.error ?? ''}`.trim(),
      (err: unknown) => (err instanceof Error ? err.message : String(err)),
    );
    expect({ moved, calls: await shadowCalls() }).toEqual({ moved: 'done', calls: [] });
    expect({ onSource: await countSlot(source, slot), onTarget: await countSlot(env.shards.get(to) as pg.Pool, slot) }).toEqual({
      onSource: { users: 0, documents: 0 },
      onTarget: { users: 4, documents: 15 },
    });

    // A rollback: the move back, cancelled once it has compared both sides, deletes its copy.
    const back = env.mover({
      readerGraceMs: 0,
      hook: async (point, j) => {
        if (point === 'cutover') await env.catalog.query('update catalog.move_jobs set cancel_requested = true where id = $1', [j.id]);
      },
    });
    const cancelled = await back.run((await back.plan({ kind: 'slot', slot, to: from, createdBy: 'test' })).id).then(
      (job) => job.state,
      (err: unknown) => (err instanceof Error ? err.message : String(err)),
    );
    expect({ cancelled, calls: await shadowCalls(), onFormerSource: await countSlot(source, slot) }).toEqual({ cancelled: 'cancelled', calls: [], onFormerSource: { users: 0, documents: 0 } });

    // The move back by a login of the mover's that is no superuser and may not skip the row
    // triggers (its copy writes each page's owners first), claiming the job's permit from a run
    // whose transaction still holds it there (the claim ends that session).
    const moverPools = new Map<string, pg.Pool>();
    for (const [id, pool] of env.shards) {
      await ensureLogin(pool, { username: 'shadow_mover', password: 'mover pass' }, { role: 'ca_dms_mover' });
      await pool.query('revoke set on parameter session_replication_role from ca_dms_mover; revoke execute on function mover_replica_role() from ca_dms_mover');
      const url = new URL(env.urls.shards[id] as string);
      url.username = 'shadow_mover';
      url.password = 'mover pass';
      const moverPool = new pg.Pool({ connectionString: url.toString(), max: 6 });
      moverPool.on('error', () => undefined);
      moverPools.set(id, moverPool);
    }
    const stale = new pg.Client({ connectionString: (() => {
      const url = new URL(env.urls.shards[to] as string);
      url.username = 'shadow_mover';
      url.password = 'mover pass';
      return url.toString();
    })() });
    stale.on('error', () => undefined);
    try {
      const unprivileged = env.mover({ readerGraceMs: 0, shards: moverPools, hook: writesOn(to, 2) });
      const planned = await unprivileged.plan({ kind: 'slot', slot, to: from, createdBy: 'test' });
      await stale.connect();
      // A stale run of epoch 1 (its lease lapsed: the next run claims epoch 2).
      await env.catalog.query('update catalog.move_jobs set lease_epoch = 1 where id = $1', [planned.id]);
      await stale.query('select move_permit_claim($1::bigint, 1::bigint)', [planned.id]);
      await stale.query('begin');
      await stale.query('select move_permit_hold($1::bigint, 1::bigint)', [planned.id]);
      const back2 = await unprivileged.run(planned.id).then(
        (job) => `${job.state} ${job.error ?? ''}`.trim(),
        (err: unknown) => (err instanceof Error ? err.message : String(err)),
      );
      const staleEnded = await stale.query('select 1').then(() => false, () => true);
      expect({ back2, staleEnded, calls: await shadowCalls(), onTarget: await countSlot(env.shards.get(to) as pg.Pool, slot) }).toEqual({
        back2: 'done',
        staleEnded: true,
        calls: [],
        onTarget: { users: 0, documents: 0 },
      });
      expect(await countSlot(source, slot)).toEqual({ users: 5, documents: 15 });
    } finally {
      await stale.end().catch(() => undefined);
      await Promise.all([...moverPools.values()].map((p) => p.end()));
    }
  }, 120_000);

  it("the monitor's health, statistics and movable units call none of them either", async () => {
    const monitorUrls: Record<string, string> = {};
    for (const [id, pool] of env.shards) {
      await ensureLogin(pool, { username: 'shadow_monitor', password: 'monitor pass' }, { role: 'ca_dms_monitor' });
      // Estimates from pg_class and pg_stats (statistics without exact counts).
      await pool.query('analyze users; analyze documents');
      const url = new URL(env.urls.shards[id] as string);
      url.username = 'shadow_monitor';
      url.password = 'monitor pass';
      monitorUrls[id] = url.toString();
    }
    for (const app of appPools.values()) await app.query('truncate public.shadow_calls');
    const pools = ShardPools.fromConfig({ shards: Object.entries(monitorUrls).map(([shard_id, database_url]) => ({ shard_id, database_url, read_replicas: [] })) }, { max: 2 });
    try {
      const inspector = new ShardInspector(pools, { timeoutMs: 5000 });
      const slotMap = await env.slotMaps.current();
      const directory = (await env.directory.all()).map((e) => ({ key: e.key, shardId: e.shardId }));
      const outcome = async (run: () => Promise<unknown>): Promise<string> =>
        run().then(
          () => 'ok',
          (err: unknown) => (err instanceof Error ? err.message : String(err)),
        );
      const health = await inspector.health();
      // The replica lag's heartbeat and measure (here of a primary: no replica to measure).
      const node = pools.primary('shard_a');
      const heartbeat = await commitHeartbeat(node, { timeoutMs: 5000 });
      const lag = await probeReplicaLag(node, heartbeat, { timeoutMs: 5000, waitMs: 0 });
      expect({
        heartbeat: heartbeat !== null,
        lag: lag?.inRecovery,
        // Every reason but the one this test's PostgreSQL 14 emulation (CREATE on public) is flagged with.
        health: health.shards.flatMap((sh) => sh.primary.reasons.filter((r) => r.code !== 'schema_open_to_create').map((r) => r.message)),
        estimates: await outcome(() => inspector.statistics({ slotMap })),
        // The TOAST tables' estimates too, once vacuumed (their size until then).
        vacuumed: await outcome(async () => {
          for (const pool of env.shards.values()) for (const t of ['users', 'documents']) await pool.query(`vacuum ${t}`);
          await inspector.statistics({ slotMap });
        }),
        exact: await outcome(() => inspector.statistics({ slotMap, exact: true })),
        units: await outcome(() => inspector.movableUnits(slotMap, directory)),
        calls: await shadowCalls(),
      }).toEqual({ heartbeat: true, lag: false, health: [], estimates: 'ok', vacuumed: 'ok', exact: 'ok', units: 'ok', calls: [] });
    } finally {
      await pools.end();
    }
  }, 60_000);
});
