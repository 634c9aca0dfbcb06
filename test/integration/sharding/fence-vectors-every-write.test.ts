import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rowFenceStateSql } from '../../../functions/adapters/postgres/read-transaction.js';
import { startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { insertFenceRows, readFenceVectors, type FenceVectors } from './fixtures/fence-rows.js';

/**
 * docs/fence-test-vectors.json is the contract another language's writer is built against. The
 * vectors name one written row; moves-safety.test.ts runs each as an INSERT into `documents`. The
 * spec (section 9) promises the same outcome for every write of a sharded table (`users`,
 * `documents`, `document_keys`; INSERT, UPDATE, DELETE: the old and the new version of the row),
 * and the readers that scan many owners (`rowFenceStateSql`) apply the same rule per row. This
 * runs every vector against each of those.
 */
const vectors = readFenceVectors();

const DOC_ID = '0b6c4a52-3c1e-4f7a-9d2b-5e8f1a2b3c4d';
const KEY_ID = '5d0f6c1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f';
const OTHER_DOC_ID = '9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d';
const OTHER_KEY_ID = 'c1d2e3f4-a5b6-4c7d-8e9f-a0b1c2d3e4f5';

type Table = 'users' | 'documents' | 'document_keys';
type Op = 'insert' | 'update' | 'delete';

/** The statement of one write of the vector's row; `$1` the key, `$2` its slot. */
const WRITES: Readonly<Record<Table, Readonly<Record<Op, string>>>> = {
  users: {
    // The seeded user is the key: the insert's row is the key itself, so the setup leaves it out.
    insert: `insert into users (id, slot, email, display_name) values ($1, $2, 'n@example.com', 'new')`,
    update: `update users set display_name = 'renamed' where id = $1 and slot = $2`,
    delete: `delete from users where id = $1 and slot = $2`,
  },
  documents: {
    insert: `insert into documents (id, owner_id, slot, title) values ('${OTHER_DOC_ID}', $1, $2, 'new')`,
    update: `update documents set title = 'renamed' where owner_id = $1 and slot = $2`,
    delete: `delete from documents where owner_id = $1 and slot = $2`,
  },
  document_keys: {
    insert: `insert into document_keys (id, owner_id, slot, document_id, request_digest) values ('${OTHER_KEY_ID}', $1, $2, '${OTHER_DOC_ID}', sha256('new'))`,
    update: `update document_keys set created_at = now() where owner_id = $1 and slot = $2`,
    delete: `delete from document_keys where owner_id = $1 and slot = $2`,
  },
};

let env: MoveEnv;
beforeAll(async () => {
  // Every write runs on shard_a alone: `moved_to` names shard_b only as text.
  env = await startMoveEnv({ shards: 1 });
});
afterAll(async () => {
  await env?.stop();
});

/** Runs one write of `table` under the case's fence rows, in a transaction rolled back after: 'ok' or the SQLSTATE. */
async function outcomeOf(table: Table, op: Op, c: FenceVectors['cases'][number]): Promise<{ outcome: string; rows: number }> {
  const client = await (env.shards.get('shard_a') as pg.Pool).connect();
  try {
    await client.query(`begin isolation level ${c.isolation ?? 'read committed'}`);
    // The setup writes as the mover (the test login is a superuser), the case's write as anyone else.
    await client.query("set local ca_dms.move_writer = 'on'");
    if (!(table === 'users' && op === 'insert')) {
      await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'v@example.com', 'vector')`, [vectors.key, vectors.slot]);
      await client.query(`insert into documents (id, owner_id, slot, title) values ('${DOC_ID}', $1, $2, 'vector')`, [vectors.key, vectors.slot]);
      await client.query(`insert into document_keys (id, owner_id, slot, document_id, request_digest) values ('${KEY_ID}', $1, $2, '${DOC_ID}', sha256('vector'))`, [vectors.key, vectors.slot]);
    }
    await insertFenceRows(client, c.fences);
    await client.query("set local ca_dms.move_writer = 'off'");
    await client.query('savepoint w');
    return await client.query(WRITES[table][op], [vectors.key, vectors.slot]).then(
      (r) => ({ outcome: 'ok', rows: r.rowCount ?? 0 }),
      (err: { code?: string }) => ({ outcome: err.code ?? 'error', rows: 0 }),
    );
  } finally {
    await client.query('rollback');
    client.release();
  }
}

describe('the write-fence vectors hold for every write of every sharded table', () => {
  const grid = vectors.cases.flatMap((c) =>
    (['users', 'documents', 'document_keys'] as const).flatMap((table) => (['insert', 'update', 'delete'] as const).map((op) => ({ ...c, table, op }))),
  );
  it.each(grid)('$table $op, $name: $outcome', async ({ table, op, ...c }) => {
    const got = await outcomeOf(table, op, c);
    expect(got.outcome).toBe(c.outcome);
    // A write that goes ahead wrote the vector's row (not a statement that matched nothing).
    if (got.outcome === 'ok') expect(got.rows).toBe(1);
  });
});

describe("the readers' per-row rule (rowFenceStateSql) agrees with the vectors", () => {
  const STATES_OF: Readonly<Record<string, readonly string[]>> = { ok: ['open'], CAF01: ['fenced', 'incoming'], CAF02: ['moved'] };
  it.each(vectors.cases.filter((c) => c.isolation === undefined))('$name: $outcome', async ({ fences, outcome }) => {
    const client = await (env.shards.get('shard_a') as pg.Pool).connect();
    try {
      await client.query('begin');
      await insertFenceRows(client, fences);
      const { rows } = await client.query<{ state: string }>(`select ${rowFenceStateSql('$1::uuid', '$2::int')} as state`, [vectors.key, vectors.slot]);
      expect(STATES_OF[outcome]).toContain(rows[0]?.state);
    } finally {
      await client.query('rollback');
      client.release();
    }
  });
});

describe('the trigger and the readers agree with the rule of section 9 on any set of fence rows', () => {
  type State = 'open' | 'fenced' | 'incoming' | 'moved';
  const state = fc.constantFrom<State>('open', 'fenced', 'incoming', 'moved');
  const OTHER_KEY = '16fd2706-8baf-433b-82eb-8c7fada847da';
  const fences = fc.record({
    slotRow: fc.option(fc.record({ state, excluded: fc.constantFrom<string[]>([], [vectors.key], [OTHER_KEY], [OTHER_KEY, vectors.key]) }), { nil: undefined }),
    directoryRow: fc.option(state, { nil: undefined }),
    // Rows of other units, which must change nothing.
    otherSlot: fc.option(state, { nil: undefined }),
    otherKey: fc.option(state, { nil: undefined }),
  });
  type Fences = typeof fences extends fc.Arbitrary<infer T> ? T : never;
  /** Section 9: the key's directory row decides; else its slot's row, unless it leaves the key out; else open. */
  const expected = (f: Fences): State => f.directoryRow ?? (f.slotRow && !f.slotRow.excluded.includes(vectors.key) ? f.slotRow.state : 'open');
  const OUTCOME: Readonly<Record<State, string>> = { open: 'ok', fenced: 'CAF01', incoming: 'CAF01', moved: 'CAF02' };

  it('a document insert answers the state the rule gives, and rowFenceStateSql reads that state', async () => {
    const client = await (env.shards.get('shard_a') as pg.Pool).connect();
    try {
      await fc.assert(
        fc.asyncProperty(fences, async (f) => {
          await client.query('begin isolation level read committed');
          try {
            await client.query("set local ca_dms.move_writer = 'on'");
            await client.query(`insert into users (id, slot, email, display_name) values ($1, $2, 'p@example.com', 'property')`, [vectors.key, vectors.slot]);
            const rows: Array<[string, string, State, string[]]> = [];
            if (f.slotRow) rows.push(['slot', String(vectors.slot), f.slotRow.state, f.slotRow.excluded]);
            if (f.directoryRow) rows.push(['directory', vectors.key, f.directoryRow, []]);
            if (f.otherSlot) rows.push(['slot', String((vectors.slot + 1) % 4096), f.otherSlot, []]);
            if (f.otherKey) rows.push(['directory', OTHER_KEY, f.otherKey, []]);
            for (const [kind, unit, st, excluded] of rows) {
              await client.query(`insert into write_fences (kind, unit_id, state, moved_to, map_version, excluded_keys) values ($1, $2, $3, $4, 2, $5)`, [kind, unit, st, st === 'moved' ? 'shard_b' : null, excluded]);
            }
            await client.query("set local ca_dms.move_writer = 'off'");
            const read = await client.query<{ state: string }>(`select ${rowFenceStateSql('$1::uuid', '$2::int')} as state`, [vectors.key, vectors.slot]);
            await client.query('savepoint w');
            const written = await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'property')`, [vectors.key, vectors.slot]).then(
              () => 'ok',
              (err: { code?: string }) => err.code ?? 'error',
            );
            expect(read.rows[0]?.state).toBe(expected(f));
            expect(written).toBe(OUTCOME[expected(f)]);
          } finally {
            await client.query('rollback');
          }
        }),
        { numRuns: 200 },
      );
    } finally {
      client.release();
    }
  });
});
