/**
 * The cost of a slot move's read of the keys it sets aside (move-port.ts keysFencedByOwnRow, issue
 * #15, h165): the keys with a `directory` row of their own on a shard owning rows under the slot.
 * Three forms, on one migrated shard, for a slot of 12k and of 240k rows (users and documents, half
 * each) and 100k, 10k and 10 `moved` directory rows (the leftovers of directory moves away, each of a
 * key with no row left here; 5 of them own rows under each slot): `fence-driven` (the form before:
 * three owner-index probes per fence row), `owner-driven` (the slot's rows read by the (slot, id)
 * indexes, each owner looked up in the fences' primary key), and `chosen` (the form kept: both, one
 * of them run, by the fences counted against the slot's rows counted up to 32 per fence, see
 * SET_ASIDE_KEYS_SQL). Prints the median of `--repeat` runs (ms) of each, on the source (`not open`)
 * and the target (`any`) reading.
 *
 *   npx tsx bench/set-aside-keys.ts [--repeat 5] [--explain]
 */
import { parseArgs } from 'node:util';
import type pg from 'pg';
import { setAsideKeysSql } from '../functions/adapters/postgres/move-port.js';
import { startMoveEnv } from '../test/integration/sharding/fixtures/move-env.js';

const { values } = parseArgs({ options: { repeat: { type: 'string', default: '5' }, explain: { type: 'boolean', default: false } } });
const repeat = Number(values.repeat);
const UUID = `'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'`;

function fenceDriven(states: 'not open' | 'any'): string {
  return `with f as materialized (select unit_id as key from write_fences
                              where kind = 'directory'${states === 'not open' ? " and state <> 'open'" : ''} and unit_id ~ ${UUID} and not (unit_id = any($2::text[]))),
          k as materialized (select key, key::uuid as id from f)
     select k.key from k
      where exists (select 1 from users u where u.id = k.id and u.slot = $1::int)
         or exists (select 1 from documents d where d.owner_id = k.id and d.slot = $1::int)
         or exists (select 1 from document_keys r where r.owner_id = k.id and r.slot = $1::int)
      order by 1`;
}

function ownerDriven(states: 'not open' | 'any'): string {
  return `select distinct w.unit_id as key
     from (select id as owner from users where slot = $1::int
           union all select owner_id from documents where slot = $1::int
           union all select owner_id from document_keys where slot = $1::int) o
     join write_fences w on w.kind = 'directory' and w.unit_id = o.owner::text
    where ${states === 'not open' ? "w.state <> 'open' and " : ''}not (w.unit_id = any($2::text[]))
    order by 1`;
}

async function median(pool: pg.Pool, sql: string, params: unknown[]): Promise<{ ms: number; keys: number }> {
  const times: number[] = [];
  let keys = 0;
  await pool.query(sql, params);
  for (let i = 0; i < repeat; i++) {
    const t = performance.now();
    const { rows } = await pool.query(sql, params);
    times.push(performance.now() - t);
    keys = rows.length;
  }
  times.sort((a, b) => a - b);
  return { ms: Math.round((times[Math.floor(times.length / 2)] as number) * 10) / 10, keys };
}

const env = await startMoveEnv();
try {
  const shard = env.shards.get('shard_a') as pg.Pool;
  const seed = async (sql: string, params: unknown[]): Promise<void> => {
    const c = await shard.connect();
    try {
      await c.query('set session_replication_role = replica');
      await c.query(sql, params);
    } finally {
      await c.query('reset session_replication_role');
      c.release();
    }
  };
  const slots = [
    { slot: 3000, rows: 12_000 },
    { slot: 3001, rows: 240_000 },
  ];
  for (const { slot, rows } of slots) {
    await seed(`insert into users (id, slot, email, display_name) select g, $1, g::text || '@example.com', 'u' from (select gen_random_uuid() g from generate_series(1, $2)) s`, [slot, rows / 2]);
    await seed(`insert into documents (id, owner_id, slot, title, content) select gen_random_uuid(), id, slot, 't', '{}'::jsonb from users where slot = $1`, [slot]);
  }
  await seed(
    `insert into write_fences (kind, unit_id, state, moved_to, map_version) select 'directory', gen_random_uuid()::text, 'moved', 'shard_b', 1 from generate_series(1, 100000 - 10)`,
    [],
  );
  // 5 keys a slot with rows under it and a `moved` row of their own.
  await seed(`insert into write_fences (kind, unit_id, state, moved_to, map_version) select 'directory', id::text, 'moved', 'shard_b', 1 from (select id, slot, row_number() over (partition by slot order by id) n from users where slot in (3000, 3001)) u where n <= 5`, []);
  await shard.query('vacuum analyze users');
  await shard.query('vacuum analyze documents');
  await shard.query('vacuum analyze document_keys');
  await shard.query('vacuum analyze write_fences');
  for (const fences of [100_000, 10_000, 10]) {
    if (fences === 10_000) {
      await shard.query(`delete from write_fences where kind = 'directory' and ctid in (select ctid from write_fences where kind = 'directory' and unit_id not in (select id::text from users where slot in (3000, 3001)) limit 90000)`);
      await shard.query('vacuum analyze write_fences');
    }
    if (fences === 10) {
      await shard.query(`delete from write_fences where kind = 'directory' and unit_id not in (select id::text from users where slot in (3000, 3001))`);
      await shard.query('vacuum analyze write_fences');
    }
    for (const { slot, rows } of slots) {
      for (const states of ['not open', 'any'] as const) {
        const params = [slot, []];
        const a = await median(shard, fenceDriven(states), params);
        const b = await median(shard, ownerDriven(states), params);
        const c = await median(shard, setAsideKeysSql(states), params);
        if (values.explain && states === 'not open') {
          const { rows: plan } = await shard.query<{ 'QUERY PLAN': string }>(`explain (analyze, costs off, timing off, summary on) ${setAsideKeysSql(states)}`, params);
          console.log(plan.map((r) => r['QUERY PLAN']).join('\n'));
        }
        console.log(`moved rows ${fences}, slot rows ${rows}, ${states === 'not open' ? 'source (not open)' : 'target (any)    '}: fence-driven ${a.ms} ms, owner-driven ${b.ms} ms, chosen ${c.ms} ms (keys ${a.keys}/${b.keys}/${c.keys})`);
      }
    }
  }
} finally {
  await env.stop();
}
