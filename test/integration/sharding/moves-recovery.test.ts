import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { laneBounds, PgMovePort } from '../../../functions/adapters/postgres/move-port.js';
import { MoverCatalog } from '../../../functions/adapters/postgres/mover-catalog.js';
import { MoveBusyError, MoveLeaseLostError, type MoveHookPoint } from '../../../functions/adapters/postgres/mover.js';
import { MOVE_CRASH_POINTS } from '../../../functions/core/sharding/move-machine.js';
import { countSlot, documentsOf, keysInSlot, seedUsers, sides, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';
import { moverKilledAt, runAndKill, runAndKillKeepingLease, waitForLeaseLapsed } from './fixtures/kill.js';
import { startWorkload } from './fixtures/workload.js';
import { inTransaction } from '../../../functions/adapters/postgres/transaction.js';

/** Every crash point of the protocol (MOVE_CRASH_POINTS), with the state the job is left in. */
const POINTS: readonly { point: MoveHookPoint; stateAfterKill: string }[] = [
  { point: 'copying', stateAfterKill: 'copying' },
  { point: 'copied', stateAfterKill: 'copying' },
  { point: 'catching_up', stateAfterKill: 'catching_up' },
  { point: 'cutover', stateAfterKill: 'cutover' },
  { point: 'fenced', stateAfterKill: 'cutover' },
  { point: 'verifying', stateAfterKill: 'verifying' },
  { point: 'published', stateAfterKill: 'verifying' },
  { point: 'cleaning_up', stateAfterKill: 'cleaning_up' },
  { point: 'cleaned', stateAfterKill: 'cleaning_up' },
];

describe('a move killed at any step', () => {
  let env: MoveEnv;
  beforeAll(async () => {
    env = await startMoveEnv();
  });
  afterAll(async () => {
    await env?.stop();
  });

  it.each(POINTS.map((p, i) => ({ ...p, slot: 300 + i })))(
    'resumes after a kill right after $point, and every acknowledged write is on the new owner exactly once',
    async ({ point, stateAfterKill, slot }) => {
      const { to, source, target } = await sides(env, slot);
      const owners = keysInSlot(slot, 60);
      await seedUsers(source, slot, owners, 10);
      const seeded = await documentsOf(source, owners);
      const { rows } = await source.query<{ id: string; owner: string }>('select id::text, owner_id::text as owner from documents where slot = $1', [slot]);
      const mover = env.mover({ readerGraceMs: 0 });
      const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });

      const killed = await runAndKill(env, planned.id, point);
      const afterKill = await mover.get(planned.id);
      const load = startWorkload(env.writer, { owners, documents: seeded, ownerOf: new Map(rows.map((r) => [r.id, r.owner])), writers: 2 });
      // What a restarted mover does: resume every unfinished job.
      const [resumed] = await Promise.allSettled([delay(100).then(async () => (await mover.resumeAll()).find((j) => j.id === planned.id))]);
      await delay(100);
      const result = await load.stop();
      if (resumed.status === 'rejected') throw resumed.reason;
      const job = resumed.value;

      expect(killed.stderr).toBe('');
      expect(killed.signal).toBe('SIGKILL');
      expect(afterKill.state).toBe(stateAfterKill);
      expect(job?.state).toBe('done');
      expect(await env.ownerOf(slot)).toBe(to);
      expect(result.errors).toEqual([]);
      expect(result.anomalies).toEqual([]);
      expect(result.acknowledged).toBeGreaterThan(0);
      const onTarget = await documentsOf(target, owners);
      expect(await countSlot(source, slot)).toEqual({ users: 0, documents: 0 });
      expect([...onTarget].sort()).toEqual([...result.live].sort());
      expect([...result.deleted].filter((id) => onTarget.has(id))).toEqual([]);
    },
    // Each case starts a mover process (tsx) and kills it: 10-18 s each in a CI run at load 16,
    // where one took over the 30 s default. A timed-out case also leaves its resumeAll() running,
    // which then resumes the next case's job under it.
    60_000,
  );

  it('covers every crash point the protocol names', () => {
    expect(POINTS.map((p) => p.point)).toEqual([...MOVE_CRASH_POINTS]);
  });

  it('keeps a unit fenced while its mover is dead in the cutover, so writes wait; the next run reopens it first, and the write ends up on the new owner once', async () => {
    const slot = 320;
    const { to, source, target } = await sides(env, slot);
    const [user] = keysInSlot(slot, 1) as [string];
    await seedUsers(source, slot, [user], 5);
    const mover = env.mover({ readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await runAndKill(env, planned.id, 'fenced');

    const write = env.writer.withShardWrite(user, async ({ client, slot: s }) => {
      await client.query(`insert into documents (id, owner_id, slot, title) values (gen_random_uuid(), $1, $2, 'written during the outage')`, [user, s]);
    });
    await delay(300);
    const onSourceDuringOutage = (await documentsOf(source, [user])).size;
    await mover.run(planned.id);

    expect(onSourceDuringOutage).toBe(5);
    // The resumed run reopens the dead run's fence before its comparison (a fence held through it
    // would hold writes for as long as the unit takes to compare): the waiting write may land on
    // the old owner then, captured, and the move carries it.
    await write;
    expect((await documentsOf(target, [user])).size).toBe(6);
    expect((await documentsOf(source, [user])).size).toBe(0);
    // About 15 s on a loaded 2-core machine (a resumed cutover under a waiting writer), so more
    // than the suite's 30 s default leaves room.
  }, 60_000);

  it('cancels a move whose mover died in the cutover: the source reopens and the target copy goes', async () => {
    const slot = 321;
    const { from, to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 10), 10);
    const mover = env.mover({ readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    await runAndKill(env, planned.id, 'fenced');

    const job = await mover.cancel(planned.id);

    expect(job.state).toBe('cancelled');
    expect(await env.ownerOf(slot)).toBe(from);
    expect(await countSlot(target, slot)).toEqual({ users: 0, documents: 0 });
    expect(await countSlot(source, slot)).toEqual({ users: 10, documents: 100 });
  });

  it("refuses to run a job while a SIGKILLed mover's lease on it is current, and resumes it once the lease has expired", async () => {
    const slot = 340;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 10), 5);
    const mover = env.mover({ readerGraceMs: 0 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // Renewed every 2 s, so the dead process's claim stays current for at least 4 s after the kill.
    const killed = await runAndKillKeepingLease(env, planned.id, 'catching_up', 6000);

    const refused = await mover.run(planned.id).then(
      () => null,
      (err: unknown) => err,
    );
    const during = await mover.get(planned.id);
    await waitForLeaseLapsed(env.catalog, planned.id);
    const resumed = await mover.run(planned.id);

    expect(killed.signal).toBe('SIGKILL');
    expect(refused).toBeInstanceOf(MoveBusyError);
    expect((refused as Error).message).toMatch(/run-move pid \d+/);
    expect(during.state).toBe('catching_up');
    expect(resumed.state).toBe('done');
    expect(await env.ownerOf(slot)).toBe(to);
    expect(await countSlot(target, slot)).toEqual({ users: 10, documents: 50 });
  }, 60_000);

  it('stops a stalled run whose expired lease another mover took over: the old run writes nothing more to the job', async () => {
    const slot = 341;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 10), 5);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    let stalled = (): void => undefined;
    const resume = new Promise<void>((r) => (stalled = r));
    let reached = (): void => undefined;
    const reachedStall = new Promise<void>((r) => (reached = r));
    // A run that stops making progress (a long GC pause, a partition) while it holds the job;
    // its lease (renewed every 20 s) would outlive the test unless it expires.
    const staleRun = env
      .mover({
        readerGraceMs: 0,
        leaseTtlMs: 60_000,
        async hook(point) {
          if (point !== 'catching_up') return;
          reached();
          await resume;
        },
      })
      .run(planned.id)
      .then(
        () => null,
        (err: unknown) => err,
      );

    await reachedStall;
    // Its renewals stopped long enough for the claim to expire (by the database clock).
    await env.catalog.query('update catalog.move_jobs set lease_expires_at = clock_timestamp() where id = $1', [planned.id]);
    const taken = await env.mover({ readerGraceMs: 0 }).run(planned.id);
    const job = 'select state, updated_at, lease_epoch, error, rows_copied from catalog.move_jobs where id = $1';
    const afterTakeover = (await env.catalog.query(job, [planned.id])).rows[0] as unknown;
    stalled();
    const staleOutcome = await staleRun;
    const afterStale = (await env.catalog.query(job, [planned.id])).rows[0] as unknown;

    expect(taken.state).toBe('done');
    expect(staleOutcome).toBeInstanceOf(MoveLeaseLostError);
    expect(afterStale).toEqual(afterTakeover);
    expect(await env.ownerOf(slot)).toBe(to);
    expect(await countSlot(target, slot)).toEqual({ users: 10, documents: 50 });
  });

  it('refuses, on the shards themselves, a stalled run whose lease was taken over: it can neither reopen the fence nor write the target', async () => {
    const slot = 342;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 10), 5);
    const planned = await env.mover().plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // Each run stops dead at a step with its lease expired, as if it stalled there.
    const runUntil = (point: MoveHookPoint): Promise<unknown> => moverKilledAt(env, point).run(planned.id).catch((err: unknown) => err);
    await runUntil('fenced');
    const { rows: first } = await env.catalog.query<{ epoch: string; holder: string }>('select lease_epoch as epoch, lease_holder as holder from catalog.move_jobs where id = $1', [planned.id]);
    // A second run takes the job over, fences the unit again and catches up, then holds the fence.
    await runUntil('verifying');
    const job = await env.mover().get(planned.id);
    const fence = async (): Promise<unknown> => (await source.query('select state, job_id::int as job from write_fences where kind = $1 and unit_id = $2', ['slot', String(slot)])).rows[0];
    const fenced = await fence();
    // The stalled first run wakes up with a change to apply, past any check of its lease.
    const { rows: doc } = await source.query<{ id: string }>('select id::text from documents where slot = $1 limit 1', [slot]);
    await source.query(`insert into move_changes (job_id, table_name, row_id) values ($1, 'documents', $2)`, [planned.id, doc[0]?.id]);
    const catalog = await env.catalog.connect();
    try {
      const stale = new PgMovePort({
        catalog: new MoverCatalog(catalog),
        leaseEpoch: Number(first[0]?.epoch),
        leaseHolder: String(first[0]?.holder),
        shards: env.shards,
        slotMaps: env.slotMaps,
        directory: env.directory,
        settings: { batchRows: 50, copyBatchRows: 50, copyLanes: 1, catchUpThreshold: 5, fenceBudgetMs: 2000, drainTimeoutMs: 5000, readerGraceMs: 0, actor: 'stale' },
      });

      const reopen = stale.unfence(job).catch((err: unknown) => err);
      const write = stale.catchUp(job, 'all').catch((err: unknown) => err);

      for (const refused of [await reopen, await write]) {
        expect(refused).toBeInstanceOf(MoveLeaseLostError);
        expect((refused as Error).message).toMatch(/refused this run's write \(lease epoch 1\)/);
      }
    } finally {
      catalog.release();
    }
    expect(fenced).toEqual({ state: 'fenced', job: planned.id });
    expect(await fence()).toEqual(fenced);
    expect((await env.catalog.query('select count(*)::int as n from catalog.move_jobs where id = $1 and changes_applied = $2', [planned.id, job.changesApplied])).rows[0]).toEqual({ n: 1 });
    const done = await env.mover({ readerGraceMs: 0 }).run(planned.id);
    expect(done.state).toBe('done');
    expect(await countSlot(target, slot)).toEqual({ users: 10, documents: 50 });
  });

  it('copies a page again when a run died after the target committed it but before its position was saved', async () => {
    const slot = 330;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 6), 4);
    const mover = env.mover({ readerGraceMs: 0, copyBatchRows: 4 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // What such a run leaves behind: the first page of users on the target, no saved position.
    const { rows: page } = await source.query<{ id: string; email: string }>('select id::text, email from users where slot = $1 order by id limit 4', [slot]);
    await target.query(
      `begin; set local ca_dms.move_writer = 'on';
       insert into users (id, slot, email, display_name) select u.id::uuid, ${slot}, u.email, 'stale copy' from json_to_recordset('${JSON.stringify(page)}') u(id text, email text);
       commit`,
    );

    const job = await mover.run(planned.id);

    expect(job.state).toBe('done');
    expect(await countSlot(target, slot)).toEqual({ users: 6, documents: 24 });
    const { rows } = await target.query<{ n: number }>(`select count(*)::int as n from users where slot = $1 and display_name = 'stale copy'`, [slot]);
    expect(rows[0]?.n).toBe(0);
  });

  it("resumes a copy split in id ranges from each range's saved position, copying again only what came after it", async () => {
    const slot = 331;
    const { to, source, target } = await sides(env, slot);
    await seedUsers(source, slot, keysInSlot(slot, 8), 5);
    const mover = env.mover({ readerGraceMs: 0, copyBatchRows: 3, copyLanes: 2 });
    const planned = await mover.plan({ kind: 'slot', slot, to, createdBy: 'test' });
    // What a run killed mid-copy leaves behind: every user, each lane's documents up to its saved
    // position, and one document past each position committed on the target but not saved.
    const [low, high] = laneBounds(2);
    const docs = (await source.query<{ id: string }>('select id::text from documents where slot = $1 order by id', [slot])).rows.map((r) => r.id);
    const lane0 = docs.filter((id) => id < (low?.to as string));
    const lane1 = docs.filter((id) => id >= (high?.from as string));
    const saved = [lane0[1] as string, lane1[2] as string];
    const unsaved = [lane0[2] as string, lane1[3] as string];
    const asJson = async (sql: string, params: unknown[]): Promise<string> => (await source.query<{ j: string }>(`select coalesce(jsonb_agg(to_jsonb(t)), '[]')::text as j from (${sql}) t`, params)).rows[0]?.j ?? '[]';
    await inTransaction(target, "begin; set local ca_dms.move_writer = 'on'", async (c) => {
      await c.query('insert into users select * from jsonb_populate_recordset(null::users, $1::jsonb)', [await asJson('select * from users where slot = $1', [slot])]);
      await c.query('insert into documents select * from jsonb_populate_recordset(null::documents, $1::jsonb)', [
        await asJson('select * from documents where id = any($1::uuid[])', [[...lane0.slice(0, 3), ...lane1.slice(0, 4)]]),
      ]);
      await c.query(`update documents set title = 'stale copy' where id = any($1::uuid[])`, [unsaved]);
    });
    await env.catalog.query(`update catalog.move_jobs set state = 'copying', copying_at = now(), copy_cursor = $2 where id = $1`, [
      planned.id,
      JSON.stringify({ table: 'documents', after: null, lanes: saved }),
    ]);

    const job = await mover.run(planned.id);

    expect(job.state).toBe('done');
    expect(await countSlot(target, slot)).toEqual({ users: 8, documents: 40 });
    // The rows up to each saved position (2 and 3) were not copied again; the rest were, once.
    expect(job.rowsCopied).toBe(40 - 2 - 3);
    const { rows } = await target.query<{ n: number }>(`select count(*)::int as n from documents where slot = $1 and title = 'stale copy'`, [slot]);
    expect(rows[0]?.n).toBe(0);
  });
});
