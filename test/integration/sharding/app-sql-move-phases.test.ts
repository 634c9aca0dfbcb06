/**
 * The database-enforced write fence against a real move: a login that is a member of
 * `ca_dms_app` only writes plain SQL straight to both shards at every step boundary of the move
 * (as a Python or Go service that never heard of withShardWrite would), with every row-writing
 * statement form. Whatever a shard accepted must end on the owner the map names, once; whatever
 * it refused must be nowhere; nothing of the unit may stay on the old owner.
 */
import { randomUUID } from 'node:crypto';
import { copyFile, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureApplicationLogin } from '../../../functions/adapters/postgres/app-role.js';
import { runMigrations } from '../../../functions/adapters/postgres/migrate.js';
import type { MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { countSlot, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
const appPools = new Map<string, pg.Pool>();

beforeAll(async () => {
  env = await startMoveEnv();
  for (const [id, pool] of env.shards) {
    await ensureApplicationLogin(pool, { username: 'plain_sql_app', password: 'plain sql pass' });
    const url = new URL(env.urls.shards[id] as string);
    url.username = 'plain_sql_app';
    url.password = 'plain sql pass';
    const app = new pg.Pool({ connectionString: url.toString(), max: 4 });
    app.on('error', () => undefined);
    appPools.set(id, app);
  }
}, 180_000);
afterAll(async () => {
  await Promise.all([...appPools.values()].map((p) => p.end()));
  await env?.stop();
});

type Outcome = 'ok' | string;

async function outcome(run: () => Promise<unknown>): Promise<Outcome> {
  try {
    await run();
    return 'ok';
  } catch (err) {
    return String((err as { code?: unknown }).code ?? (err as Error).message);
  }
}

describe('plain SQL of the application login at every step of a move', () => {
  it('accepts writes only on the owner, and every accepted write ends on the owner once', async () => {
    const slot = 1201;
    const { from, to, source } = await sides(env, slot);
    const owners = keysInSlot(slot, 2);
    await seedUsers(source, slot, owners, 6);
    const owner = owners[0] as string;
    const seeded = (await source.query<{ id: string }>('select id::text from documents where owner_id = $1 order by id', [owner])).rows.map((r) => r.id);
    /** What the unit's documents must be at the end: title by id, or null for deleted. */
    const expected = new Map<string, string | null>(seeded.map((id) => [id, 'seeded']));
    for (const id of seeded) expected.set(id, (await source.query<{ title: string }>('select title from documents where id = $1', [id])).rows[0]?.title ?? null);
    const log: string[] = [];
    let victim = 0;

    const writeAll = async (point: MoveHookPoint): Promise<void> => {
      for (const shard of [from, to]) {
        const app = appPools.get(shard) as pg.Pool;
        const tag = `${point}@${shard === from ? 'source' : 'target'}`;
        const fresh = randomUUID();
        const ins = await outcome(() => app.query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'ins')", [fresh, owner, slot]));
        if (ins === 'ok') expected.set(fresh, 'ins');
        const target = seeded[victim % seeded.length] as string;
        const upd = await outcome(async () => {
          const r = await app.query('update documents set title = $1 where id = $2', [`upd ${tag}`, target]);
          if (r.rowCount !== 1) throw new Error(`update matched ${r.rowCount}`);
        });
        if (upd === 'ok') expected.set(target, `upd ${tag}`);
        const merged = randomUUID();
        const mrg = await outcome(() =>
          app.query(
            `merge into documents d using (values ($1::uuid, $2::uuid, $3::int, 'mrg')) v(id, owner_id, slot, title) on d.id = v.id
              when matched then update set title = v.title when not matched then insert (id, owner_id, slot, title) values (v.id, v.owner_id, v.slot, v.title)`,
            [merged, owner, slot],
          ),
        );
        if (mrg === 'ok') expected.set(merged, 'mrg');
        const upserted = randomUUID();
        const ups = await outcome(() => app.query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'ups') on conflict (id) do update set title = excluded.title", [upserted, owner, slot]));
        if (ups === 'ok') expected.set(upserted, 'ups');
        const copied = randomUUID();
        const cpy = await outcome(async () => {
          const c = await app.connect();
          try {
            await pipeline(Readable.from([`${copied}\t${owner}\t${slot}\tcpy\n`]), c.query(copyFrom('copy documents (id, owner_id, slot, title) from stdin')));
          } finally {
            c.release();
          }
        });
        if (cpy === 'ok') expected.set(copied, 'cpy');
        const gone = seeded[(victim + 3) % seeded.length] as string;
        const del = await outcome(async () => {
          const r = await app.query('delete from documents where id = $1', [gone]);
          if (r.rowCount !== 1) throw new Error(`delete matched ${r.rowCount}`);
        });
        if (del === 'ok') expected.set(gone, null);
        log.push(`${tag}: ins ${ins} upd ${upd} mrg ${mrg} ups ${ups} cpy ${cpy} del ${del}`);
        victim++;
      }
    };

    // The hook's writes at the fenced steps run on the fence's clock: seven statements per step, which
    // a loaded machine (load average 15) took past the default 2 s budget three times over. What is
    // asserted is where writes are accepted, which no budget changes, so the budget is generous.
    const mover = env.mover({ readerGraceMs: 0, hook: writeAll, fenceBudgetMs: 10_000 });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect(job.state).toBe('done');
    await writeAll('cleaned');

    const onSource = await countSlot(source, slot);
    const target = env.shards.get(to) as pg.Pool;
    const { rows } = await target.query<{ id: string; title: string }>('select id::text, title from documents where owner_id = $1', [owner]);
    const actual = new Map(rows.map((r) => [r.id, r.title]));
    const want = new Map([...expected].filter((e): e is [string, string] => e[1] !== null));
    expect({ onSource, log }).toEqual({ onSource: { users: 0, documents: 0 }, log });
    expect(Object.fromEntries(actual)).toEqual(Object.fromEntries(want));
    // Writes were accepted only where the unit was owned: the source before the fence, the target after it opened.
    for (const line of log) {
      const owned = /^(copying|copied|catching_up|cutover)@source|^(cleaning_up|cleaned)@target/.test(line);
      if (owned) expect(line).not.toMatch(/CAF0/);
      else expect(line).not.toMatch(/ ok/);
    }
  }, 120_000);

  it('after a cancelled move, the target refuses the unit (CAF02 to the owner) and the source takes it', async () => {
    const slot = 1203;
    const { from, to, source, target } = await sides(env, slot);
    const owners = keysInSlot(slot, 1);
    await seedUsers(source, slot, owners, 3);
    const owner = owners[0] as string;
    const mover = env.mover({
      readerGraceMs: 0,
      hook: async (point, job) => {
        if (point === 'cutover') await env.catalog.query('update catalog.move_jobs set cancel_requested = true where id = $1', [job.id]);
      },
    });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect(job.state).toBe('cancelled');
    const write = (shard: string) => outcome(() => (appPools.get(shard) as pg.Pool).query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'after')", [randomUUID(), owner, slot]));
    const states = async (p: pg.Pool) => (await p.query<{ state: string; moved_to: string | null }>("select state, moved_to from write_fences where kind = 'slot' and unit_id = $1", [String(slot)])).rows;
    expect({ source: await write(from), target: await write(to), sourceFence: await states(source), targetFence: await states(target), onTarget: await countSlot(target, slot), onSource: await countSlot(source, slot) }).toEqual({
      source: 'ok',
      target: 'CAF02',
      sourceFence: [{ state: 'open', moved_to: null }],
      targetFence: [{ state: 'moved', moved_to: from }],
      onTarget: { users: 0, documents: 0 },
      onSource: { users: 1, documents: 4 },
    });
  }, 120_000);

  it('a transaction that wrote the unit before the cutover holds the fence off until it ends, and its write moves with the unit', async () => {
    const slot = 1205;
    const { from, to, source } = await sides(env, slot);
    const owners = keysInSlot(slot, 1);
    await seedUsers(source, slot, owners, 2);
    const owner = owners[0] as string;
    const long = await (appPools.get(from) as pg.Pool).connect();
    const early = randomUUID();
    let held = false;
    const mover = env.mover({
      readerGraceMs: 0,
      fenceBudgetMs: 150,
      fenceAttempts: 2,
      fenceRetryPauseMs: 20,
      hook: async (point) => {
        if (point !== 'cutover' || held) return;
        held = true;
        await long.query('begin');
        await long.query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'long')", [early, owner, slot]);
      },
    });
    try {
      const job = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
      await expect(mover.run(job.id)).rejects.toThrow(/fence/);
      await long.query('commit');
      expect((await env.mover({ readerGraceMs: 0 }).run(job.id)).state).toBe('done');
    } finally {
      long.release();
    }
    const where = await Promise.all([from, to].map(async (s) => (await (env.shards.get(s) as pg.Pool).query('select 1 from documents where id = $1', [early])).rowCount));
    expect(where).toEqual([0, 1]);
  }, 120_000);

  it('a transaction older than the move holds its drain off, so its later write of the unit on the old owner moves with the unit', async () => {
    const slot = 1207;
    const { from, to, source } = await sides(env, slot);
    const [a, b] = [keysInSlot(slot, 1)[0] as string, keysInSlot(slot + 2, 1)[0] as string];
    await seedUsers(source, slot, [a], 1);
    expect(await env.ownerOf(slot + 2)).toBe(from);
    await seedUsers(source, slot + 2, [b], 0);
    const long = await (appPools.get(from) as pg.Pool).connect();
    const other = randomUUID();
    try {
      await long.query('begin');
      // Another unit first (open, owned): the transaction is older than the move's fence.
      await long.query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'other unit')", [other, b, slot + 2]);
      const mover = env.mover({ readerGraceMs: 0, drainTimeoutMs: 60_000 });
      const run = mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
      // The drain waits for this writer (it has an id older than the capture): nothing can flip before it ends.
      await new Promise((r) => setTimeout(r, 500));
      expect(await env.ownerOf(slot)).toBe(from);
      const late = await outcome(() => long.query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'late')", [randomUUID(), a, slot]));
      await long.query(late === 'ok' ? 'commit' : 'rollback');
      expect((await run).state).toBe('done');
      const rows = await Promise.all([from, to].map(async (s) => (await (env.shards.get(s) as pg.Pool).query<{ n: number }>('select count(*)::int as n from documents where slot = $1', [slot])).rows[0]?.n));
      // Whatever the late write met, the unit's rows are on the owner only: 1 seeded (+1 if the late write was accepted before the fence).
      expect({ late, rows }).toEqual({ late: 'ok', rows: [0, 2] });
    } finally {
      long.release();
    }
  }, 120_000);

  it('a move in progress across shard migration 019 (source migrated with its capture running, target with the fence held): every acknowledged write ends on the owner', async () => {
    const shardDir = resolve(dirname(fileURLToPath(import.meta.url)), '../../../functions/adapters/postgres/migrations/shard');
    const before019 = await mkdtemp(join(tmpdir(), 'shard-before-019-'));
    for (const f of await readdir(shardDir)) if (Number(f.slice(0, 3)) < 19) await copyFile(join(shardDir, f), join(before019, f));
    const old = await startMoveEnv({ shardMigrations: before019 });
    await rm(before019, { recursive: true, force: true });
    // This release's mover also moves 021's document_keys and reads it from the plan on, before
    // any hook could migrate, and writes 026's write_fences.check_undo with every target fence
    // row: the shards, at 018, get those columns here (empty, the parts of 021 and 026 the move
    // reads and writes), and the hooks apply 019 alone, the migration under test.
    const upTo019 = await mkdtemp(join(tmpdir(), 'shard-up-to-019-'));
    for (const f of await readdir(shardDir)) if (Number(f.slice(0, 3)) <= 19) await copyFile(join(shardDir, f), join(upTo019, f));
    const apps = new Map<string, pg.Pool>();
    try {
      for (const [id, pool] of old.shards) {
        await pool.query('create table document_keys (id uuid primary key, owner_id uuid not null, slot integer not null, document_id uuid not null, request_digest bytea not null, created_at timestamptz not null default now())');
        await pool.query('alter table write_fences add column check_undo jsonb');
        await ensureApplicationLogin(pool, { username: 'plain_sql_app', password: 'plain sql pass' });
        const url = new URL(old.urls.shards[id] as string);
        url.username = 'plain_sql_app';
        url.password = 'plain sql pass';
        const app = new pg.Pool({ connectionString: url.toString(), max: 2 });
        app.on('error', () => undefined);
        apps.set(id, app);
      }
      const slot = 1209;
      const { from, to, source, target } = await sides(old, slot);
      const [owner] = keysInSlot(slot, 1) as [string];
      await seedUsers(source, slot, [owner], 4);
      const seeded = (await source.query<{ id: string; title: string }>('select id::text, title from documents where owner_id = $1 order by id', [owner])).rows;
      const expected = new Map<string, string | null>(seeded.map((r) => [r.id, r.title]));
      const log: string[] = [];
      let n = 0;
      const writeOwner = async (tag: string): Promise<void> => {
        const app = apps.get(from) as pg.Pool;
        const fresh = randomUUID();
        const ins = await outcome(() => app.query("insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'ins')", [fresh, owner, slot]));
        if (ins === 'ok') expected.set(fresh, 'ins');
        const victim = seeded[n++ % seeded.length]?.id as string;
        const upd = await outcome(() => app.query('update documents set title = $1 where id = $2', [`upd ${tag}`, victim]));
        if (upd === 'ok') expected.set(victim, `upd ${tag}`);
        log.push(`${tag}: ins ${ins} upd ${upd}`);
      };
      const migrated: string[] = [];
      const mover = old.mover({
        readerGraceMs: 0,
        hook: async (point) => {
          if (point === 'copied') {
            await writeOwner('copied, before 019');
            migrated.push(...(await runMigrations(source, 'shard', upTo019)).applied);
            await writeOwner('copied, after 019');
          }
          if (point === 'catching_up') await writeOwner('catching_up');
          if (point === 'fenced') {
            migrated.push(...(await runMigrations(target, 'shard', upTo019)).applied);
            await writeOwner('fenced');
          }
        },
      });
      const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
      expect({ state: job.state, migrated, log }).toEqual({
        state: 'done',
        migrated: ['019_fence_and_capture_privileges.sql', '019_fence_and_capture_privileges.sql'],
        log: ['copied, before 019: ins ok upd ok', 'copied, after 019: ins ok upd ok', 'catching_up: ins ok upd ok', 'fenced: ins CAF01 upd CAF01'],
      });
      const { rows } = await target.query<{ id: string; title: string }>('select id::text, title from documents where owner_id = $1', [owner]);
      expect(Object.fromEntries(rows.map((r) => [r.id, r.title]))).toEqual(Object.fromEntries([...expected].filter((e): e is [string, string] => e[1] !== null)));
      expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
    } finally {
      await Promise.all([...apps.values()].map((p) => p.end()));
      await old.stop();
      await rm(upTo019, { recursive: true, force: true });
    }
  }, 120_000);
});
