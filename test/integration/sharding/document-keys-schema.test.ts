/**
 * Shard migration 021: `document_keys` (the documents API's Idempotency-Key records) is a sharded
 * table with everything `documents` has: the same grants to the application, mover and monitor
 * roles, the same fence, capture and TRUNCATE triggers, and its slot tied to its owner's.
 */
import { createHash, randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAppShard, type AppShard } from './fixtures/app-shard.js';
import { sqlstateOf } from '../../support/postgres.js';

let shard: AppShard;
let admin: pg.Pool;

beforeAll(async () => {
  // Slots 201 open, 202 fenced, 203 moved, 204 incoming.
  shard = await startAppShard({ login: 'keys_app', password: 'keys app pass', fences: "('slot', '201', 'open', null, 0), ('slot', '202', 'fenced', null, 0), ('slot', '203', 'moved', 'shard_x', 5), ('slot', '204', 'incoming', null, 0)" });
  ({ admin } = shard);
}, 120_000);
afterAll(() => shard?.stop());

const asApp = <T>(fn: (c: pg.Client) => Promise<T>): Promise<T> => shard.asApp(fn);

/** A user of `slot`, written with the mover's pass. */
async function userOf(slot: number): Promise<string> {
  const user = randomUUID();
  const c = await admin.connect();
  try {
    await c.query("begin; set local ca_dms.move_writer = 'on'");
    await c.query('insert into users (id, slot, email, display_name) values ($1, $2, $3, $4)', [user, slot, `${user}@x`, 'u']);
    await c.query('commit');
  } finally {
    c.release();
  }
  return user;
}

const insertKey = (c: pg.ClientBase, owner: string, slot: number, id: string = randomUUID()) =>
  c.query("insert into document_keys (id, owner_id, slot, document_id, request_digest) values ($1, $2, $3, $4, sha256('r'::bytea))", [id, owner, slot, randomUUID()]);

describe('document_keys (shard migration 021)', () => {
  it('grants the application, mover and monitor roles on document_keys exactly what they hold on documents', async () => {
    const { rows } = await admin.query<{ role: string; privilege: string; documents: boolean; keys: boolean }>(
      `select r as role, p as privilege, has_table_privilege(r, 'documents', p) as documents, has_table_privilege(r, 'document_keys', p) as keys
         from unnest(array['ca_dms_app', 'ca_dms_mover', 'ca_dms_monitor']) r, unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p`,
    );

    expect(rows.filter((r) => r.documents !== r.keys)).toEqual([]);
    expect(rows.filter((r) => r.keys).map((r) => `${r.role} ${r.privilege}`)).toEqual(expect.arrayContaining(['ca_dms_app INSERT', 'ca_dms_mover DELETE', 'ca_dms_monitor SELECT']));
  });

  it('has the fence, change-capture and TRUNCATE triggers of documents, with the same functions, timing and arguments', async () => {
    const triggers = async (table: string) =>
      (
        await admin.query<{ name: string; fn: string; type: number; args: string }>(
          `select substr(tgname, length($1) + 2) as name, tgfoid::regproc::text as fn, tgtype::int as type, encode(tgargs, 'escape') as args
             from pg_trigger where tgrelid = $1::regclass and not tgisinternal order by 1`,
          [table],
        )
      ).rows;

    expect(await triggers('document_keys')).toEqual(await triggers('documents'));
    expect((await triggers('document_keys')).map((t) => t.name)).toEqual(['move_capture', 'truncate_guard', 'write_fence']);
  });

  it("refuses the application's key records in fenced, incoming and moved units, as for documents, and passes them in an open unit", async () => {
    const owners = { open: await userOf(201), fenced: await userOf(202), moved: await userOf(203), incoming: await userOf(204) };
    const outcome = async (owner: string, slot: number) => sqlstateOf(() => asApp((c) => insertKey(c, owner, slot)));

    expect({
      open: await outcome(owners.open, 201),
      fenced: await outcome(owners.fenced, 202),
      moved: await outcome(owners.moved, 203),
      incoming: await outcome(owners.incoming, 204),
      otherSlot: await outcome(owners.open, 202),
    }).toEqual({ open: 'ok', fenced: 'CAF01', moved: 'CAF02', incoming: 'CAF01', otherSlot: 'CAF01' });
  });

  it("ties a key record's slot to its owner's and goes with the owner", async () => {
    const owner = await userOf(205);
    const wrongSlot = await sqlstateOf(() => asApp((c) => insertKey(c, owner, 206)));
    await asApp((c) => insertKey(c, owner, 205));
    await admin.query('delete from users where id = $1', [owner]);

    expect(wrongSlot).toBe('23503');
    expect((await admin.query<{ n: number }>('select count(*)::int as n from document_keys where owner_id = $1', [owner])).rows[0]?.n).toBe(0);
  });

  it("logs the application's key writes for a move capturing their unit, and refuses TRUNCATE meanwhile", async () => {
    const owner = await userOf(207);
    const id = randomUUID();
    await admin.query("insert into move_captures (job_id, kind, unit_id) values (9207, 'slot', '207')");
    try {
      await asApp(async (c) => {
        await insertKey(c, owner, 207, id);
        await c.query('delete from document_keys where id = $1', [id]);
      });
      const truncate = await sqlstateOf(() => admin.query('truncate document_keys'));
      const logged = await admin.query<{ t: string; id: string }>('select table_name as t, row_id::text as id from move_changes where job_id = 9207 order by seq');

      expect(truncate).toBe('CAF03');
      expect(logged.rows).toEqual([
        { t: 'document_keys', id },
        { t: 'document_keys', id },
      ]);
    } finally {
      await admin.query('delete from move_captures where job_id = 9207; delete from move_changes where job_id = 9207');
    }
  });
});

describe('shard migration 022: idempotency_request_digest', () => {
  const digest = (title: string, content: string) =>
    asApp(async (c) => (await c.query<{ d: string }>('select encode(idempotency_request_digest($1, $2::jsonb), $3) as d', [title, content, 'hex'])).rows[0]?.d);

  it('gives one digest to contents that are equal as JSON values (numbers by value, members in any order), as the application login calls it', async () => {
    const a = await digest('t', '{"a": [1.0, {"b": 2.50, "c": -0.0}], "n": 100, "s": "1.50"}');
    const b = await digest('t', '{"s": "1.50", "n": 1e2, "a": [1, {"c": 0, "b": 2.5}]}');

    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(b).toBe(a);
    // What jsonb itself prints, when no number has a trailing zero: the digest of migration 021.
    expect(await digest('t', '{"n": 1.5}')).toBe(createHash('sha256').update('{"title": "t", "content": {"n": 1.5}}').digest('hex'));
  });

  it('tells apart what differs as a JSON value: a string, a number, an element order, the title', async () => {
    const base = await digest('t', '{"s": "1.50", "n": 1.5, "a": [1, 2]}');
    const others = await Promise.all([
      digest('t', '{"s": "1.5", "n": 1.5, "a": [1, 2]}'),
      digest('t', '{"s": "1.50", "n": 1.05, "a": [1, 2]}'),
      digest('t', '{"s": "1.50", "n": 1.5, "a": [2, 1]}'),
      digest('u', '{"s": "1.50", "n": 1.5, "a": [1, 2]}'),
    ]);

    expect(new Set([base, ...others]).size).toBe(5);
  });
});

describe('shard migration 023: jsonb_canonical_numbers without recursion', () => {
  const digest = (title: string, content: string) =>
    asApp(async (c) => (await c.query<{ d: string }>('select encode(idempotency_request_digest($1, $2::jsonb), $3) as d', [title, content, 'hex'])).rows[0]?.d);
  const nested = (depth: number, leaf: string): string => `{"a": ${'['.repeat(depth)}${leaf}${']'.repeat(depth)}}`;

  it('digests a content nested 10,000 levels deep with a trailing zero (jsonb stores it) instead of failing with 54001', async () => {
    // Migration 022's PL/pgSQL recursion exceeded max_stack_depth (2 MB) from about 600 levels.
    const deep = await digest('t', nested(10_000, '1.0'));

    expect(deep).toMatch(/^[0-9a-f]{64}$/);
    expect(await digest('t', nested(10_000, '1'))).toBe(deep);
    expect(await digest('t', nested(10_000, '1.01'))).not.toBe(deep);
  });

  it('trims numbers outside strings only, and keeps every other value as jsonb prints it', async () => {
    const canonical = async (content: string) => asApp(async (c) => (await c.query<{ t: string }>('select jsonb_canonical_numbers($1::jsonb)::text as t', [content])).rows[0]?.t);

    expect(await canonical('{"a": [1.0, -12.3400, 10.050, 0.000, 1.05, 1.50e1, 100], "s": "q\\"1.50\\\\", "1.0": [true, null, "é\\n0.10"]}')).toBe(
      '{"a": [1, -12.34, 10.05, 0, 1.05, 15, 100], "s": "q\\"1.50\\\\", "1.0": [true, null, "é\\n0.10"]}',
    );
    expect(await Promise.all(['{}', '[]', '"1.0"', '2.50', 'null'].map(canonical))).toEqual(['{}', '[]', '"1.0"', '2.5', 'null']);
  });
});
