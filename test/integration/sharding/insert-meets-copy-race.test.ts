/**
 * Shard migration 018 under concurrency: the fence trigger looks an inserted id up with its own
 * statement snapshot, before the insertion. A row of an incoming unit that a move's copy or
 * catch-up is inserting at that moment is invisible to the lookup, so the insert waits on the
 * primary key until the copy commits. A plain insert then fails with 23505 and the spec's
 * idempotent form with 23505 or CAF01: both retryable by section 9. (`on conflict (id) do
 * nothing` would do nothing and be acknowledged, and the catch-up's removal of the copy would
 * leave the document on no shard; no trigger can see it, which is why section 9 forbids that form
 * for a hand-over.)
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAppShard, type AppShard } from './fixtures/app-shard.js';

let shard: AppShard;
let admin: pg.Pool;
let appUrl: string;

beforeAll(async () => {
  // Slot 201 is owned here (open); slot 204 is being copied here (incoming).
  shard = await startAppShard({ login: 'race_app', password: 'race pass', adminPoolMax: 4, fences: "('slot', '201', 'open', null, 0), ('slot', '204', 'incoming', null, 0)" });
  ({ admin, appUrl } = shard);
}, 120_000);
afterAll(() => shard?.stop());

async function seedUser(slot: number): Promise<string> {
  const id = randomUUID();
  const c = await admin.connect();
  try {
    await c.query("begin; set local ca_dms.move_writer = 'on'");
    await c.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [id, slot, `${id}@x`, 'u']);
    await c.query('commit');
  } finally {
    c.release();
  }
  return id;
}

interface Outcome {
  code: string;
  rowCount: number | null;
}

async function handoverInsertRacingCopy(form: string): Promise<Outcome> {
  const oldOwner = await seedUser(204);
  const newOwner = await seedUser(201);
  const doc = randomUUID();
  // The move's copy (or catch-up) inserts the document's old row, of the incoming unit; not yet committed.
  const mover = await admin.connect();
  const app = new pg.Client({ connectionString: appUrl });
  await app.connect();
  try {
    await mover.query("begin; set local ca_dms.move_writer = 'on'");
    await mover.query("insert into documents (id, owner_id, slot, title) values ($1, $2, 204, 'old')", [doc, oldOwner]);
    // The hand-over: deleted on the old owner's shard (acknowledged), now inserted here.
    const pending = app
      .query(`insert into documents (id, owner_id, slot, title) values ($1, $2, 201, 'new') ${form}`, [doc, newOwner])
      .then(
        (r): Outcome => ({ code: 'ok', rowCount: r.rowCount }),
        (e: unknown): Outcome => ({ code: String((e as { code?: string }).code ?? e), rowCount: null }),
      );
    await new Promise((r) => setTimeout(r, 300));
    await mover.query('commit');
    const outcome = await pending;
    return outcome;
  } finally {
    mover.release();
    await app.end();
  }
}

describe('018: an insert racing a move copy of the same id', () => {
  it('on conflict do update set id = excluded.id is refused retryably, never a CAF02', async () => {
    const outcome = await handoverInsertRacingCopy('on conflict (id) do update set id = excluded.id');
    expect(['23505', 'CAF01']).toContain(outcome.code);
  }, 30_000);

  it('a plain insert gets 23505', async () => {
    const outcome = await handoverInsertRacingCopy('');
    expect(outcome.code).toBe('23505');
  }, 30_000);
});
