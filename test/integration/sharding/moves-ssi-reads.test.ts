/**
 * A run's plain reads of its job row at a SERIALIZABLE catalog (the database's
 * `default_transaction_isolation`, as an RDS parameter group or an `ALTER ROLE ... SET` makes it):
 * a statement outside a transaction runs at that level, and serializable snapshot isolation may
 * end even a read with 40001 ("could not serialize access due to read/write dependencies among
 * transactions", canceled on conflict out to a pivot) when a transaction that changed the row
 * committed after the read's snapshot and had itself read what a third one changed. Seen before
 * only with a slowed read; here made certain by a lock gate: at SERIALIZABLE a statement takes the
 * transaction's snapshot before its table's lock (parse analysis runs under it), so a read queued
 * behind a transaction holding catalog.move_jobs reads the row that transaction then commits from
 * a snapshot older than it. Before the fix the run's lease check (`assertLease`), its check for a
 * cancellation between copy pages (`checkCancel`) and `reload` answered the 40001 to the mover,
 * which failed the step; each is one statement, sent again on 40001 (a new snapshot, which holds
 * the commit) since. So are the routing stores' plain reads on their own pool (`readRetried`,
 * sqlstate.ts): the slot map store's latest map, read by every router's refresh, answered 40001.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MoveLeaseLostError } from '../../../functions/core/sharding/move-machine.js';
import { MoverCatalog } from '../../../functions/adapters/postgres/mover-catalog.js';
import { PgMovePort } from '../../../functions/adapters/postgres/move-port.js';
import { SlotMapStore } from '../../../functions/adapters/postgres/slot-map-store.js';
import { listFences } from '../../../functions/adapters/postgres/fence-review.js';
import type { MoveJob } from '../../../functions/adapters/postgres/move-jobs.js';
import { firstSlotOwnedBy, lockWaitOn, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv({ shards: 2, isolation: 'serializable' });
  await env.catalog.query('create table ssi_gate (y int not null); insert into ssi_gate values (0)');
});
afterAll(async () => {
  await env?.stop();
});

/**
 * A catalog client whose first statement containing `text` is sent behind a SERIALIZABLE
 * transaction (the pivot) that read ssi_gate, saw it changed by a transaction committed before the
 * statement began, and then updated the job's row (`change`) under catalog.move_jobs's ACCESS
 * EXCLUSIVE lock; the pivot commits once the statement waits for that lock.
 */
async function gatedClient(job: MoveJob, text: string, change: string): Promise<pg.PoolClient> {
  return gated(text, 'catalog.move_jobs', `update catalog.move_jobs set ${change} where id = ${Number(job.id)}`);
}

/** {@link gatedClient}'s gate for any table: `lock` held ACCESS EXCLUSIVE by the pivot, which runs `change` under it. */
async function gated(text: string, lock: string, change: string): Promise<pg.PoolClient> {
  const client = await env.catalog.connect();
  let armed = true;
  const query = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>;
  const gated = async (...args: unknown[]): Promise<unknown> => {
    if (!armed || typeof args[0] !== 'string' || !args[0].includes(text)) return query(...args);
    armed = false;
    const pivot = await env.catalog.connect();
    try {
      await pivot.query('begin isolation level serializable');
      await pivot.query('select y from ssi_gate');
      await env.catalog.query('update ssi_gate set y = y + 1');
      await pivot.query(`lock table ${lock} in access exclusive mode`);
      await pivot.query(change);
      const sent = query(...args);
      sent.catch(() => undefined);
      await lockWaitOn(env.catalog, 'catalog');
      await pivot.query('commit');
      return await sent;
    } finally {
      pivot.release();
    }
  };
  return new Proxy(client, { get: (target, prop, receiver) => (prop === 'query' ? gated : (Reflect.get(target, prop, receiver) as unknown)) });
}

async function withPort<T>(client: pg.PoolClient, fn: (port: PgMovePort) => Promise<T>): Promise<T> {
  try {
    const port = new PgMovePort({
      catalog: new MoverCatalog(client),
      leaseEpoch: 7,
      leaseHolder: 'ssi test run',
      shards: env.shards,
      slotMaps: env.slotMaps,
      directory: env.directory,
      settings: { batchRows: 50, copyBatchRows: 50, copyLanes: 1, catchUpThreshold: 5, fenceBudgetMs: 2000, drainTimeoutMs: 5000, readerGraceMs: 0, actor: 'ssi' },
    });
    return await fn(port);
  } finally {
    client.release();
  }
}

const codeOf = (err: unknown): string => `SQLSTATE ${(err as { code?: string }).code ?? '?'}: ${String(err)}`;

describe("a run's reads of its job at a SERIALIZABLE catalog", () => {
  it('reload reads the row the other transaction committed rather than answering 40001', async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 10);
    const job = await env.mover().plan({ kind: 'slot', slot, to: 'shard_b', createdBy: 'test' });
    const client = await gatedClient(job, 'select * from catalog.move_jobs where id', `reason = 'changed meanwhile'`);
    const read = await withPort(client, (port) => port.reload(job).then((j) => j.reason, codeOf));
    expect(read).toBe('changed meanwhile');
  });

  it("the lease check after a write the run's lease no longer allowed names the holder rather than answering 40001", async () => {
    const slot = await firstSlotOwnedBy(env, 'shard_a', 20);
    const job = await env.mover().plan({ kind: 'slot', slot, to: 'shard_b', createdBy: 'test' });
    // Another run holds the job: the port's compare-and-set finds no row, and the lease is checked.
    await env.catalog.query(`update catalog.move_jobs set lease_holder = 'another run', lease_epoch = 8, lease_expires_at = now() + interval '1 minute' where id = $1`, [job.id]);
    const client = await gatedClient(job, 'lease_holder as holder', `lease_holder = 'a third run', lease_epoch = 9`);
    const outcome = await withPort(client, (port) =>
      port.transition(job, 'start').then(
        () => 'transitioned',
        (err: unknown) => (err instanceof MoveLeaseLostError ? `lease lost: ${err.message}` : codeOf(err)),
      ),
    );
    expect(outcome).toMatch(/^lease lost: .*taken over by a third run/);
  });
});

describe('the routing stores\' plain reads at a SERIALIZABLE catalog', () => {
  it("the slot map store's latest map reads what the other transaction committed rather than answering 40001", async () => {
    const { version } = await env.slotMaps.current();
    const client = await gated('from catalog.slot_maps order by version desc limit 1', 'catalog.slot_maps', `update catalog.slot_maps set reason = 'changed meanwhile' where version = ${version}`);
    try {
      const read = await new SlotMapStore(client).latest().then((r) => r?.reason, codeOf);
      expect(read).toBe('changed meanwhile');
    } finally {
      client.release();
    }
  });

  it("a store on a client in the caller's SERIALIZABLE transaction answers its read's 40001 as it is: the read is not sent again in the transaction the failure aborted", async () => {
    const { version } = await env.slotMaps.current();
    const client = await gated('from catalog.slot_maps order by version desc limit 1', 'catalog.slot_maps', `update catalog.slot_maps set reason = 'changed in a transaction' where version = ${version}`);
    try {
      await client.query('begin isolation level serializable');
      // Before: 25P02 ("current transaction is aborted"), the read sent again inside it; the
      // caller's own retry of its transaction looks for 40001.
      const read = await new SlotMapStore(client).latest().then(
        (r) => r?.reason,
        (err: unknown) => (err as { code?: string }).code,
      );
      await client.query('rollback');
      expect(read).toBe('40001');
    } finally {
      client.release();
    }
  });

  it("initialise on a client in the caller's SERIALIZABLE transaction answers its insert's 40001 as it is: not sent again in the transaction the failure aborted (h132)", async () => {
    const current = await env.slotMaps.current();
    const client = await gated('insert into catalog.slot_maps', 'catalog.slot_maps', `update catalog.slot_maps set reason = 'changed in a transaction' where version = ${current.version}`);
    try {
      await client.query('begin isolation level serializable');
      // Before: 25P02 ("current transaction is aborted"): the store built on the caller's client
      // took it for its own pool and sent the insert again inside the aborted transaction.
      const first = { ...current, version: 1 };
      const outcome = await new SlotMapStore(client).initialise(first).then(
        () => 'initialised',
        (err: unknown) => (err as { code?: string }).code,
      );
      await client.query('rollback');
      expect(outcome).toBe('40001');
    } finally {
      client.release();
    }
  });

  it("the fence listing (GET /shards/fences) reads the latest map the other transaction committed rather than answering 40001 (h132)", async () => {
    // listFences judges the rows by the map, the jobs and the pins, each a plain read of its own
    // on the catalog it is given (the API's pool), at the default level: not sent again before.
    const { version } = await env.slotMaps.current();
    const client = await gated('from catalog.slot_maps order by version desc limit 1', 'catalog.slot_maps', `update catalog.slot_maps set reason = 'changed for the listing' where version = ${version}`);
    try {
      const listing = await listFences({ catalog: client, shards: env.shards, timeoutMs: 5000 }).then((l) => `map version ${l.mapVersion}`, codeOf);
      expect(listing).toBe(`map version ${version}`);
    } finally {
      client.release();
    }
  });
});
