/**
 * The write fence must judge a write before PostgreSQL does anything with the row (a BEFORE ROW
 * trigger): docs/sharding-spec.md section 9 promises its SQLSTATE for a write to a unit this shard
 * does not own, and shard migration 018's 23505 for an insert that meets a row of an `incoming`
 * or `moved` unit, in every form of insert. Issue #15 asked whether the fence could be an AFTER
 * ROW trigger instead (COPY FROM takes its multi-insert path only when the table has no BEFORE or
 * INSTEAD OF row insert trigger, enabled or not; that would save the mover's copy about 7% of the
 * target's CPU, `npm run bench:copy-target-cpu -- --variants mover,after-fence`). It cannot: an
 * AFTER trigger runs after the primary key's and the foreign keys' checks and after ON CONFLICT
 * has been resolved, and not at all for a row that ON CONFLICT DO NOTHING skipped. Each case here
 * answers differently with the fence AFTER the write (measured with a shard migration that
 * recreated the three `*_write_fence` triggers AFTER ROW; the answer it gave is in each case).
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAppShard, type AppShard } from './fixtures/app-shard.js';

// Slot 301 is owned here (open); slot 302 moved away (its rows wait for the clean-up); slot 303 is
// being copied here (incoming); slot 304 moved away and its clean-up has run (no rows here).
const OWNED = 301;
const MOVED = 302;
const INCOMING = 303;
const MOVED_CLEANED = 304;

let shard: AppShard;
let admin: pg.Pool;

beforeAll(async () => {
  shard = await startAppShard({
    login: 'before_app',
    password: 'before pass',
    fences: `('slot', '${OWNED}', 'open', null, 0), ('slot', '${MOVED}', 'moved', 'shard_b', 3), ('slot', '${INCOMING}', 'incoming', null, 3), ('slot', '${MOVED_CLEANED}', 'moved', 'shard_b', 3)`,
  });
  ({ admin } = shard);
}, 120_000);
afterAll(() => shard?.stop());

/** Writes as the mover does (the fence lets it through): a user and, optionally, one document of theirs. */
async function seed(slot: number, docId?: string): Promise<string> {
  const id = randomUUID();
  const c = await admin.connect();
  try {
    await c.query("begin; set local ca_dms.move_writer = 'on'");
    await c.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [id, slot, `${id}@x`, 'u']);
    if (docId) await c.query('insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4)', [docId, id, slot, 'old']);
    await c.query('commit');
  } finally {
    c.release();
  }
  return id;
}

/** Runs one statement as the application login: 'ok:<rows>' or the SQLSTATE. */
async function outcome(sql: string, params: unknown[]): Promise<string> {
  return shard.asApp((c) =>
    c.query(sql, params).then(
      (r) => `ok:${r.rowCount ?? 0}`,
      (err: { code?: string }) => err.code ?? 'error',
    ),
  );
}

describe('the write fence judges a write before the row is written', () => {
  it('a retried insert on the old owner of a moved unit is refused CAF02 (re-route), not 23505 (with the fence AFTER: 23505)', async () => {
    const doc = randomUUID();
    const owner = await seed(MOVED, doc);
    // The writer's own earlier insert, copied to the new owner and not yet cleaned up here: 23505
    // would read as a real duplicate (the owning shard holds the id) and never re-route.
    expect(await outcome('insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4)', [doc, owner, MOVED, 'retry'])).toBe('CAF02');
  });

  it('an insert for an owner whose unit moved away and was cleaned up is refused CAF02, not 23503 (with the fence AFTER: 23503)', async () => {
    const owner = randomUUID();
    expect(await outcome('insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4)', [randomUUID(), owner, MOVED_CLEANED, 'new'])).toBe('CAF02');
  });

  it("a user's idempotent insert (on conflict do nothing) on the old owner is refused CAF02, not acknowledged (with the fence AFTER: ok, 0 rows)", async () => {
    const owner = await seed(MOVED);
    expect(await outcome('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4) on conflict (id) do nothing', [owner, MOVED, `${owner}@x`, 'u'])).toBe('CAF02');
  });

  it('a hand-over insert (on conflict do nothing) meeting a copied row of an incoming unit answers 23505, not an acknowledged nothing (with the fence AFTER: ok, 0 rows)', async () => {
    const doc = randomUUID();
    await seed(INCOMING, doc);
    const newOwner = await seed(OWNED);
    expect(await outcome('insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4) on conflict (id) do nothing', [doc, newOwner, OWNED, 'handed over'])).toBe('23505');
  });

  it('a hand-over insert (on conflict do update set id = excluded.id) meeting a moved unit\'s row answers 23505, not CAF02 (with the fence AFTER: CAF02)', async () => {
    const doc = randomUUID();
    await seed(MOVED, doc);
    const newOwner = await seed(OWNED);
    expect(await outcome('insert into documents (id, owner_id, slot, title) values ($1, $2, $3, $4) on conflict (id) do update set id = excluded.id', [doc, newOwner, OWNED, 'handed over'])).toBe('23505');
  });
});
