import '../../support/quiet-powertools.js';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sqlstateOf } from '../../support/postgres.js';
import { keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/**
 * Shard migrations 013-015: writes of an ordinary application login (a member of ca_dms_app only,
 * as a writer in another language would connect) that a move used to lose or misplace.
 *
 * - Temporary tables named like the fence and capture tables no longer shadow them in the
 *   triggers (their search_path is pinned, pg_temp last). PUBLIC may no longer create temporary
 *   tables on a shard; `hardening_temp` is granted TEMP by name, as an operator might, to show
 *   that the pinned search_path holds without the revoke.
 * - A document's slot is its owner's (documents (owner_id, slot) references users (id, slot); 014, 015).
 */
let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
  for (const pool of env.shards.values()) {
    await pool.query(`do $$ begin create role hardening_app login password 'app' in role ca_dms_app; exception when duplicate_object then null; end $$`);
    await pool.query(`do $$ begin create role hardening_temp login password 'app' in role ca_dms_app; exception when duplicate_object then null; end $$`);
    await pool.query(`do $$ begin execute format('grant temporary on database %I to hardening_temp', current_database()); end $$`);
  }
});
afterAll(async () => {
  await env?.stop();
});

/** A connection to a shard as an application login (not a superuser, not a mover). */
async function appClient(shard: string, login: 'hardening_app' | 'hardening_temp' = 'hardening_app'): Promise<pg.Client> {
  const url = new URL(env.urls.shards[shard] as string);
  url.username = login;
  url.password = 'app';
  const c = new pg.Client({ connectionString: url.toString() });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

/** Creates temporary tables named like the fence and capture tables, empty, in the app session. */
async function shadow(app: pg.Client): Promise<void> {
  await app.query('create temp table write_fences (kind text, unit_id text, state text, moved_to text, map_version bigint, excluded_keys text[])');
  await app.query('create temp table move_captures (job_id bigint, kind text, unit_id text, excluded_keys text[], moving_to text)');
  await app.query('create temp table move_changes (seq bigserial, job_id bigint, table_name text, row_id uuid, captured_at timestamptz default clock_timestamp())');
}

async function docRow(pool: pg.Pool, id: string): Promise<{ owner_id: string; slot: number } | null> {
  const { rows } = await pool.query<{ owner_id: string; slot: number }>('select owner_id::text, slot from documents where id = $1', [id]);
  return rows[0] ?? null;
}

/** A slot other than `not` that `shard` owns, above `above`. */
async function otherSlotOn(shard: string, not: number, above: number): Promise<number> {
  const map = await env.slotMaps.current();
  return map.assignments.findIndex((s, i) => s === shard && i !== not && i > above);
}

describe('temporary tables do not shadow the fence and capture tables', () => {
  it('an application login may not create temporary tables on a shard (PUBLIC has no TEMP), nor set session_replication_role', async () => {
    const app = await appClient('shard_a');
    try {
      expect(await sqlstateOf(() => app.query('create temp table write_fences (kind text)'))).toBe('42501');
      // Nor skip the triggers (docs/sharding-spec.md section 9: only the mover writes in replica mode).
      expect(await sqlstateOf(() => app.query('set session_replication_role = replica'))).toBe('42501');
    } finally {
      await app.end();
    }
  });

  it('a login with temporary write_fences, move_captures and move_changes tables is refused in a fenced slot (CAF01) and in a moved one (CAF02)', async () => {
    const slot = 3101;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    const fenced = randomUUID();
    const moved = randomUUID();
    const outcome: Record<string, string> = {};
    const write = async (id: string): Promise<string> => {
      const app = await appClient(from, 'hardening_temp');
      try {
        await shadow(app);
        await app.query('begin isolation level read committed');
        const r = await sqlstateOf(() => app.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'shadowed')`, [id, user, slot]));
        await app.query(r === 'ok' ? 'commit' : 'rollback');
        return r;
      } finally {
        await app.end();
      }
    };
    const mover = env.mover({
      readerGraceMs: 200,
      async hook(point) {
        if (point === 'published') outcome.fenced = await write(fenced);
        if (point === 'cleaning_up') outcome.moved = await write(moved);
      },
    });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    const where = async (id: string): Promise<string> => ((await docRow(target, id)) ? to : (await docRow(source, id)) ? from : 'nowhere');
    expect({ state: job.state, outcome, fencedDoc: await where(fenced), movedDoc: await where(moved) }).toEqual({
      state: 'done',
      outcome: { fenced: 'CAF01', moved: 'CAF02' },
      fencedDoc: 'nowhere',
      movedDoc: 'nowhere',
    });
  });

  it('a write during the catch-up by a login with those temporary tables is captured, and the move carries it', async () => {
    const slot = 3202;
    const { from, to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 2);
    const doc = randomUUID();
    let written = 'not run';
    let captured = -1;
    let inTempTable = -1;
    const mover = env.mover({
      readerGraceMs: 0,
      async hook(point) {
        if (point !== 'catching_up' || written !== 'not run') return;
        const app = await appClient(from, 'hardening_temp');
        try {
          await shadow(app);
          written = await sqlstateOf(() => app.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'during the move')`, [doc, user, slot]));
          inTempTable = (await app.query<{ n: number }>('select count(*)::int as n from pg_temp.move_changes')).rows[0]?.n ?? -1;
        } finally {
          await app.end();
        }
        captured = (await source.query<{ n: number }>('select count(*)::int as n from move_changes where row_id = $1', [doc])).rows[0]?.n ?? -1;
      },
    });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' })).id);
    expect({ state: job.state, written, captured, inTempTable, onTarget: await docRow(target, doc), onSource: await docRow(source, doc) }).toEqual({
      state: 'done',
      written: 'ok',
      captured: 1,
      inTempTable: 0,
      onTarget: { owner_id: user, slot },
      onSource: null,
    });
  });
});

describe("a document's slot is its owner's", () => {
  it('refuses an owner change that leaves the slot stale (23503), accepts owner and slot changed together, and a move of the old slot leaves the document with its owner', async () => {
    const slotS = 3303;
    const { from, to, source, target } = await sides(env, slotS);
    const slotT = await otherSlotOn(from, slotS, 3400);
    const [u] = keysInSlot(slotS, 1) as [string];
    const [w] = keysInSlot(slotT, 1) as [string];
    await seedUsers(source, slotS, [u], 1);
    await seedUsers(source, slotT, [w], 1);
    const doc = randomUUID();
    await source.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'to be transferred')`, [doc, u, slotS]);

    const app = await appClient(from);
    let stale: string;
    let slotOnly: string;
    let together: string;
    try {
      stale = await sqlstateOf(() => app.query('update documents set owner_id = $1, updated_at = now() where id = $2', [w, doc]));
      slotOnly = await sqlstateOf(() => app.query('update documents set slot = $1 where id = $2', [slotT, doc]));
      together = await sqlstateOf(() => app.query('update documents set owner_id = $1, slot = $2, updated_at = now() where id = $3', [w, slotT, doc]));
    } finally {
      await app.end();
    }

    const mover = env.mover({ readerGraceMs: 0 });
    const job = await mover.run((await mover.plan({ kind: 'slot', slot: slotS, to, createdBy: 'test' })).id);
    const wRead = await env.reader.withShardRead(w, async ({ client }) => (await client.query<{ id: string }>('select id::text from documents where owner_id = $1', [w])).rows.map((r) => r.id));
    const orphans = await target.query<{ n: number }>('select count(*)::int as n from documents d where not exists (select 1 from users u where u.id = d.owner_id and u.slot = d.slot)');
    expect({ stale, slotOnly, together, state: job.state, onSource: await docRow(source, doc), onTarget: await docRow(target, doc), wSeesDoc: wRead.value.includes(doc), orphans: orphans.rows[0]?.n }).toEqual({
      stale: '23503',
      slotOnly: '23503',
      together: 'ok',
      state: 'done',
      onSource: { owner_id: w, slot: slotT },
      onTarget: null,
      wSeesDoc: true,
      orphans: 0,
    });
  });

  it("refuses a document inserted with a slot other than its owner's (23503), and still deletes a user's documents with the user", async () => {
    const slotS = 3505;
    const { from, source } = await sides(env, slotS);
    const slotT = await otherSlotOn(from, slotS, 3600);
    const [u] = keysInSlot(slotS, 1) as [string];
    const [w] = keysInSlot(slotT, 1) as [string];
    await seedUsers(source, slotS, [u], 2);
    await seedUsers(source, slotT, [w], 0);
    const app = await appClient(from);
    try {
      const wrongSlot = await sqlstateOf(() => app.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'wrong slot')`, [randomUUID(), u, slotT]));
      const rightSlot = await sqlstateOf(() => app.query(`insert into documents (id, owner_id, slot, title) values ($1, $2, $3, 'right slot')`, [randomUUID(), u, slotS]));
      const userDeleted = await sqlstateOf(() => app.query('delete from users where id = $1', [u]));
      const left = await source.query<{ n: number }>('select count(*)::int as n from documents where owner_id = $1', [u]);
      expect({ wrongSlot, rightSlot, userDeleted, documentsLeft: left.rows[0]?.n }).toEqual({ wrongSlot: '23503', rightSlot: 'ok', userDeleted: 'ok', documentsLeft: 0 });
    } finally {
      await app.end();
    }
  });
});
