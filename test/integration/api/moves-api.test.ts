/**
 * The shard-move endpoints (POST /shards/moves, GET and DELETE /shards/moves/{id}) and the moves
 * worker, over real HTTP against real PostgreSQL shards: the bodies are what the OpenAPI document
 * promises, a move can be cancelled, and a run that fails says why on the job.
 */
// Powertools reads its settings when the handler modules load: this import must stay first.
import '../../support/quiet-powertools.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { moveSlots } from '../../../functions/core/sharding/slot-map.js';
import { createMovesHandler } from '../../../functions/handlers/moves.js';
import { publishPastOwnerGuard } from '../sharding/fixtures/move-env.js';
import { lambdaContext, tick } from '../sharding/fixtures/moves-handler.js';
import { startApiHarness, type ApiHarness } from './harness.js';

const API = '/api/v1/scaling';
const JSON_HEADERS = { 'content-type': 'application/json' };

describe('shard moves over HTTP', () => {
  let h: ApiHarness;
  type Schema = { properties?: Record<string, unknown>; required?: string[]; additionalProperties?: boolean };
  let openapi: { paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: Schema }> }> }>> };
  beforeAll(async () => {
    h = await startApiHarness();
    openapi = (await h.fetchJson(`${API}/openapi.json`)).body as typeof openapi;
  }, 120_000);
  afterAll(async () => {
    await h?.stop();
  });

  function responseSchema(path: string, method: string, status: string): Schema {
    const schema = openapi.paths[path]?.[method]?.responses[status]?.content?.['application/json']?.schema;
    if (!schema) throw new Error(`no schema for ${method} ${path} ${status}`);
    return schema;
  }

  /** The fields of `body` the schema does not document, and the ones it requires that are missing. */
  function misfit(schema: Schema, body: unknown): { undocumented: string[]; missing: string[] } {
    const keys = Object.keys(body as Record<string, unknown>);
    const documented = Object.keys(schema.properties ?? {});
    return { undocumented: keys.filter((k) => !documented.includes(k)), missing: (schema.required ?? []).filter((k) => !keys.includes(k)) };
  }

  async function waitDone(location: string): Promise<Record<string, unknown>> {
    let body: Record<string, unknown> = {};
    for (let i = 0; i < 150; i++) {
      body = (await h.fetchJson(location)).body as Record<string, unknown>;
      if (body['state'] === 'done' || body['state'] === 'failed' || body['state'] === 'cancelled') return body;
      await new Promise((r) => setTimeout(r, 100));
    }
    return body;
  }

  it('GET /shards/rebalance-check by bytes, its moves followed to done, then needs none: the source keeps its files, not its share', async () => {
    const map = await h.sharding.slotMaps.current();
    const slots = map.assignments.flatMap((owner, slot) => (owner === 'shard_001' ? [slot] : [])).slice(500, 510);
    const shard1 = h.sharding.primaries.get('shard_001');
    const shard2 = h.sharding.primaries.get('shard_002');
    if (!shard1 || !shard2) throw new Error('no shard_001 or shard_002');
    // 5,000 users over ten slots of shard_001, interleaved in its heap as rows arrive in real life.
    await shard1.query(
      `insert into users (id, slot, email, display_name)
       select gen_random_uuid(), ($1::int[])[1 + i % 10], 'settle@example.com', repeat('s', 200) from generate_series(0, 4999) i`,
      [slots],
    );
    await shard1.query('analyze users');
    type Check = { needed: boolean; imbalance: number; moves: Array<{ unit: { kind: string; id: string }; from: string; to: string }> };
    try {
      const first = (await h.fetchJson(`${API}/shards/rebalance-check`)).body as Check;
      expect(first.needed).toBe(true);
      expect(first.moves.length).toBeGreaterThan(0);
      for (const m of first.moves) {
        const started = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: m.unit.kind, unit: m.unit.id, to: m.to }) });
        expect(started.status, JSON.stringify(started.body)).toBe(202);
        expect((await waitDone(started.headers.get('location') ?? ''))['state']).toBe('done');
      }
      const rows = async (pool: typeof shard1): Promise<number> => Number((await pool.query<{ n: string }>(`select count(*)::text as n from users where email = 'settle@example.com'`)).rows[0]?.n);
      expect([await rows(shard1), await rows(shard2)]).toEqual([2500, 2500]);

      // The clean-up deleted the moved rows from shard_001; its files kept their size.
      const after = (await h.fetchJson(`${API}/shards/rebalance-check`)).body as Check;
      expect({ needed: after.needed, movesOffTheSource: after.moves.filter((m) => m.from === 'shard_001') }).toEqual({ needed: false, movesOffTheSource: [] });
    } finally {
      await shard1.query(`delete from users where email = 'settle@example.com'`);
      await shard2.query(`delete from users where email = 'settle@example.com'`);
    }
  }, 60_000);

  it('answers GET /shards/moves/{id} and the 202 of POST with exactly the fields the OpenAPI document gives', async () => {
    const key = '7a1e2b3c-4d5e-4f60-8a71-92b3c4d5e6f7';
    const route = (await h.fetchJson(`${API}/shards/route?key=${key}`)).body as { shard_id: string; slot: number };
    const to = route.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';
    const started = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
    expect(started.status).toBe(202);
    const done = await waitDone(started.headers.get('location') ?? '');
    expect(done['state']).toBe('done');
    const schema = responseSchema(`${API}/shards/moves/{id}`, 'get', '200');
    expect(schema.additionalProperties).toBe(false);
    expect(misfit(schema, done)).toEqual({ undocumented: [], missing: [] });
    expect(misfit(responseSchema(`${API}/shards/moves`, 'post', '202'), started.body)).toEqual({ undocumented: [], missing: [] });
    for (const field of ['progressedAt', 'fenceMs', 'fenceTimeouts', 'rollbackTo', 'error']) expect(done).toHaveProperty(field);
  });

  it('answers POST /shards/moves with a 503 without the server\'s words when recording the move fails for want of the catalog (a statement cancelled, a connection dropped), and records nothing', async () => {
    const key = '7d6c5b4a-3928-4716-a5b4-c3d2e1f0a9b8';
    const route = (await h.fetchJson(`${API}/shards/route?key=${key}`)).body as { shard_id: string; slot: number };
    const to = route.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';
    const post = () => h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
    const waiting = `select pid from pg_stat_activity where pid <> pg_backend_pid() and wait_event_type = 'Lock' and query like '%insert into catalog.move_jobs%'`;
    const answers: Array<{ status: number; detail: unknown }> = [];
    // The insert waits behind this lock until its statement is cancelled (as the catalog role's
    // statement_timeout does, SQLSTATE 57014) or its connection is ended (a failover, a proxy).
    const locker = await h.catalogPool.connect();
    try {
      await locker.query('begin');
      await locker.query('lock table catalog.move_jobs in access exclusive mode');
      for (const end of ['pg_cancel_backend', 'pg_terminate_backend']) {
        const answer = post();
        await expect.poll(async () => (await h.catalogPool.query(waiting)).rowCount, { timeout: 10_000 }).toBe(1);
        await h.catalogPool.query(`select ${end}(pid) from (${waiting}) w`);
        const res = await answer;
        answers.push({ status: res.status, detail: (res.body as { detail?: unknown }).detail });
      }
    } finally {
      await locker.query('rollback').catch(() => undefined);
      locker.release();
    }

    expect(answers).toEqual([
      { status: 503, detail: 'starting the move: the catalog or a shard did not answer (a statement ran past its time limit); try again shortly' },
      // The connection ended mid-transaction: the catalog named, and the cause (h166), where the
      // answer was "the catalog or a shard did not answer (SQLSTATE 57P01); try again shortly".
      {
        status: 503,
        detail: `starting the move: cannot plan the move of slot ${route.slot} from ${route.shard_id} to ${to}: the catalog lost the connection of the job's transaction (SQLSTATE 57P01), before its commit was sent: it is stopped, restarting or failing over, or unreachable from here. Nothing was recorded: plan it again once the catalog answers`,
      },
    ]);
    // Nothing was recorded: the same request is served once the catalog answers.
    const again = await post();
    expect(again.status).toBe(202);
    expect((await waitDone(again.headers.get('location') ?? ''))['state']).toBe('done');
  });

  it('cancels a planned move: 202 with the cancellation recorded, then the worker rolls it back; 404 and 409 where it cannot', async () => {
    const key = '1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f';
    const route = (await h.fetchJson(`${API}/shards/route?key=${key}`)).body as { shard_id: string; slot: number };
    const to = route.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';
    // Planned but not run (as on AWS between the POST and the worker's next tick).
    const job = await h.sharding.mover.plan({ kind: 'slot', slot: route.slot, to, createdBy: 'test', reason: 'test' });
    const again = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
    expect(again.status).toBe(409);
    expect((again.body as { detail: string }).detail).toMatch(/finish or cancel it first/);

    const cancel = await h.fetchJson(`${API}/shards/moves/${job.id}`, { method: 'DELETE' });
    expect(cancel.status).toBe(202);
    expect(cancel.body).toMatchObject({ id: String(job.id), cancelRequested: true });
    expect(cancel.headers.get('location')).toBe(`${API}/shards/moves/${job.id}`);
    const done = await waitDone(`${API}/shards/moves/${job.id}`);
    if (done['state'] !== 'cancelled') await createMovesHandler(async () => h.sharding)(tick, lambdaContext);
    expect(((await h.fetchJson(`${API}/shards/moves/${job.id}`)).body as { state: string }).state).toBe('cancelled');
    // The slot is free for another move.
    const next = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
    expect(next.status).toBe(202);
    const finished = await waitDone(next.headers.get('location') ?? '');
    if (finished['state'] !== 'done') await createMovesHandler(async () => h.sharding)(tick, lambdaContext);

    // Finished (or cancelled) moves cannot be cancelled; unknown ones are not found.
    const late = await h.fetchJson(`${API}/shards/moves/${job.id}`, { method: 'DELETE' });
    expect(late.status).toBe(409);
    expect((late.body as { detail: string }).detail).toMatch(/already cancelled/);
    expect((await h.fetchJson(`${API}/shards/moves/999999`, { method: 'DELETE' })).status).toBe(404);
    expect((await h.fetchJson(`${API}/shards/moves/not-a-number`, { method: 'DELETE' })).status).toBe(404);
  });

  it('refuses (409, saying why) to cancel a move whose unit the catalog already routes to its target, records nothing, and the worker finishes it there', async () => {
    const key = '2d3e4f5a-6b7c-4d8e-9fa0-1b2c3d4e5f60';
    const route = (await h.fetchJson(`${API}/shards/route?key=${key}`)).body as { shard_id: string; slot: number };
    const to = route.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';
    const job = await h.sharding.mover.plan({ kind: 'slot', slot: route.slot, to, createdBy: 'test', reason: 'test' });
    // Someone else publishes a map that gives the slot to the move's target: past the catalog's
    // guard (CAF08, sharding migration 013: refused while the move is unfinished), as a superuser
    // may. This is the cancel's own defence against such a map.
    await publishPastOwnerGuard(h.catalogPool, h.sharding.slotMaps, moveSlots(await h.sharding.slotMaps.current(), [route.slot], to), 'ops@example.com', 'by hand');

    const cancel = await h.fetchJson(`${API}/shards/moves/${job.id}`, { method: 'DELETE' });

    // Before: 202, then every run of the worker was refused the rollback and the job never ended.
    expect(cancel.status).toBe(409);
    expect((cancel.body as { detail: string }).detail).toBe(
      `move job #${job.id} cannot be cancelled: the catalog names the target ${to} as the owner of slot ${route.slot} (version ${(await h.sharding.slotMaps.current()).version}); the move has copied nothing there yet, and a cancel would leave the unit's rows, all on ${route.shard_id}, out of its readers' sight; the move finishes on ${to}, where the catalog routes the unit`,
    );
    expect(((await h.fetchJson(`${API}/shards/moves/${job.id}`)).body as { cancelRequested: boolean }).cancelRequested).toBe(false);
    // Nothing was recorded for the worker to act on: its next tick runs the move on.
    await createMovesHandler(async () => h.sharding)(tick, lambdaContext);
    expect(((await h.fetchJson(`${API}/shards/moves/${job.id}`)).body as { state: string }).state).toBe('done');
  });

  it('shows on GET /shards/moves/{id} that a cancel recorded was refused by the rollback, once the move is done on its target', async () => {
    const key = '3e4f5a6b-7c8d-4e9f-a0b1-2c3d4e5f6a71';
    const route = (await h.fetchJson(`${API}/shards/route?key=${key}`)).body as { shard_id: string; slot: number };
    const to = route.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';
    const job = await h.sharding.mover.plan({ kind: 'slot', slot: route.slot, to, createdBy: 'test', reason: 'test' });
    // The cancel DELETE records for the worker (without running the rollback in this process),
    // then someone else publishes a map that gives the slot to the move's target (past the
    // catalog's guard, as above).
    await h.sharding.mover.requestCancel(job.id);
    await publishPastOwnerGuard(h.catalogPool, h.sharding.slotMaps, moveSlots(await h.sharding.slotMaps.current(), [route.slot], to), 'ops@example.com', 'by hand');

    await createMovesHandler(async () => h.sharding)(tick, lambdaContext);
    const done = (await h.fetchJson(`${API}/shards/moves/${job.id}`)).body as { state: string; cancelRequested: boolean; cancelRefused: string | null };

    expect({ state: done.state, cancelRequested: done.cancelRequested }).toEqual({ state: 'done', cancelRequested: false });
    // Before: no such field; only `error` said it, until a later step of the move cleared it.
    expect(done.cancelRefused).toMatch(new RegExp(`^cancel refused: the catalog names the target ${to} as the owner of slot ${route.slot} \\(version \\d+\\); the move has copied nothing there yet, and a cancel would leave the unit's rows, all on ${route.shard_id}, out of its readers' sight\\. The move goes on to finish on ${to}`));
  });

  it('GET /shards/rebalance-check does not propose a unit that already has an unfinished move (its POST can only be a 409)', async () => {
    const map = await h.sharding.slotMaps.current();
    const { rows: busy } = await h.catalogPool.query<{ slot: number }>(`select slot from catalog.move_jobs where state not in ('done', 'failed', 'cancelled')`);
    const owned = map.assignments.flatMap((owner, slot) => (owner === 'shard_001' && !busy.some((b) => b.slot === slot) ? [slot] : [])).slice(100, 103);
    const [a, b, c] = owned as [number, number, number];
    const shard1 = h.sharding.primaries.get('shard_001');
    if (!shard1) throw new Error('no shard_001');
    // shard_001 four times heavier than needed, slot a exactly the surplus: the plan is to move slot a.
    for (const [slot, n] of [[a, 2000], [b, 1000], [c, 1000]] as const) {
      await shard1.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), $1, 'rebalance@example.com', 'rebalance' from generate_series(1, $2::int)`, [slot, n]);
    }
    const before = (await h.fetchJson(`${API}/shards/rebalance-check?threshold=0.05&by=rows`)).body as { moves: Array<{ unit: { kind: string; id: string }; to: string }> };
    const proposed = before.moves.find((m) => m.unit.kind === 'slot' && m.unit.id === String(a));
    expect(proposed, JSON.stringify(before.moves)).toBeDefined();
    // An operator starts that move; it is planned (the worker has not run it yet).
    const job = await h.sharding.mover.plan({ kind: 'slot', slot: a, to: 'shard_002', createdBy: 'test', reason: 'test' });
    try {
      const after = (await h.fetchJson(`${API}/shards/rebalance-check?threshold=0.06&by=rows`)).body as { moves: Array<{ unit: { kind: string; id: string }; from: string; to: string }> };
      const again = after.moves.find((m) => m.unit.kind === 'slot' && m.unit.id === String(a));
      const posted = again ? await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: again.unit.id, to: again.to }) }) : undefined;
      // Slot a is not proposed again while its move is unfinished (following it could only be a 409).
      expect({ proposedAgain: again !== undefined, status: posted?.status }).toEqual({ proposedAgain: false, status: undefined });
    } finally {
      await h.sharding.mover.cancel(job.id).catch(() => undefined);
    }
  });
  it('GET /recommendations counts only moves that can be started: none for units whose move is unfinished, and says moves are under way', async () => {
    const map = await h.sharding.slotMaps.current();
    const { rows: busy } = await h.catalogPool.query<{ slot: number }>(`select slot from catalog.move_jobs where state not in ('done', 'failed', 'cancelled')`);
    const heavy = map.assignments.flatMap((owner, slot) => (owner === 'shard_001' && !busy.some((b) => b.slot === slot) ? [slot] : [])).slice(400, 410);
    const shard1 = h.sharding.primaries.get('shard_001');
    if (!shard1) throw new Error('no shard_001');
    // shard_001 far heavier than shard_002 by bytes (what the recommendations check by), in ten slots.
    for (const slot of heavy) {
      await shard1.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), $1, 'recommend@example.com', repeat('r', 400) from generate_series(1, 500)`, [slot]);
    }
    await shard1.query('analyze users');
    // An operator starts every move the check proposes, until it proposes none (the worker has not run them yet).
    const planned: number[] = [];
    try {
      for (let round = 0; round < 5; round++) {
        const check = await h.port.rebalanceCheck({});
        expect(check.needed).toBe(true);
        if (check.moves.length === 0) break;
        for (const m of check.moves) {
          const job = m.unit.kind === 'slot'
            ? await h.sharding.mover.plan({ kind: 'slot', slot: Number(m.unit.id), to: m.to, createdBy: 'test', reason: 'test' })
            : await h.sharding.mover.plan({ kind: 'directory', key: m.unit.id, to: m.to, createdBy: 'test', reason: 'test' });
          planned.push(job.id);
        }
      }
      expect((await h.port.rebalanceCheck({})).moves).toEqual([]);
      const advice = (await h.port.recommendations()).items.find((i) => i.category === 'shard_imbalance');
      expect(advice, 'the shards are still out of balance until the moves are done').toBeDefined();
      // Nothing is left to start: every move the check would propose is already under way.
      expect(advice?.evidence).toMatchObject({ moves: 0, movesInFlight: planned.length });
      expect(advice?.advice).not.toMatch(/start them with POST/);
      expect(advice?.advice).toMatch(/under way/);
    } finally {
      for (const id of planned) await h.sharding.mover.cancel(id).catch(() => undefined);
      await shard1.query('delete from users where email = $1', ['recommend@example.com']);
    }
  }, 60_000);

  it('GET /shards/rebalance-check asked again right after POST /shards/moves of a unit it proposed does not propose that unit again', async () => {
    const map = await h.sharding.slotMaps.current();
    const { rows: busy } = await h.catalogPool.query<{ slot: number }>(`select slot from catalog.move_jobs where state not in ('done', 'failed', 'cancelled')`);
    const owned = map.assignments.flatMap((owner, slot) => (owner === 'shard_001' && !busy.some((b) => b.slot === slot) ? [slot] : [])).slice(300, 303);
    const shard1 = h.sharding.primaries.get('shard_001');
    if (!shard1) throw new Error('no shard_001');
    for (const [slot, n] of owned.map((s, i) => [s, i === 0 ? 3000 : 1000] as const)) {
      await shard1.query(`insert into users (id, slot, email, display_name) select gen_random_uuid(), $1, 'again@example.com', 'again' from generate_series(1, $2::int)`, [slot, n]);
    }
    const query = `${API}/shards/rebalance-check?threshold=0.04&by=rows`;
    type Check = { moves: Array<{ unit: { kind: string; id: string }; from: string; to: string }> };
    const first = ((await h.fetchJson(query)).body as Check).moves[0];
    if (!first) throw new Error('no move proposed');
    const started = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: first.unit.kind, unit: first.unit.id, to: first.to }) });
    expect(started.status, JSON.stringify(started.body)).toBe(202);
    // The same question again, at once (well within health_check_interval): the unit is moving
    // (or has moved), so proposing it again from its old shard could only get a 409 or a 422.
    const again = ((await h.fetchJson(query)).body as Check).moves.find((m) => m.unit.kind === first.unit.kind && m.unit.id === first.unit.id && m.from === first.from);
    expect(again).toBeUndefined();
    await waitDone(started.headers.get('location') ?? '');
  }, 60_000);

  it('GET /shards/statistics read right after following a move to done counts the moved slot on its new shard', async () => {
    const key = '9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a';
    const route = (await h.fetchJson(`${API}/shards/route?key=${key}`)).body as { shard_id: string; slot: number };
    const to = route.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';
    type Stats = { shards: Array<{ shardId: string; slotsOwned: number }> };
    const owned = (stats: Stats): Record<string, number> => Object.fromEntries(stats.shards.map((s) => [s.shardId, s.slotsOwned]));
    const before = owned((await h.fetchJson(`${API}/shards/statistics`)).body as Stats);
    const started = await h.fetchJson(`${API}/shards/moves`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
    expect(started.status).toBe(202);
    expect((await waitDone(started.headers.get('location') ?? ''))['state']).toBe('done');
    // Whoever saw the move done reads the new placement next, as the route lookup does.
    const after = owned((await h.fetchJson(`${API}/shards/statistics`)).body as Stats);
    expect(after).toEqual({ ...before, [route.shard_id]: (before[route.shard_id] ?? 0) - 1, [to]: (before[to] ?? 0) + 1 });
  }, 60_000);

  it('the moves worker carries the other jobs forward when one of them fails, and the failure shows on the failed job', async () => {
    const map = await h.sharding.slotMaps.current();
    const { rows: busy } = await h.catalogPool.query<{ slot: number }>(`select slot from catalog.move_jobs where state not in ('done', 'failed', 'cancelled')`);
    const free = (shard: string): number[] => map.assignments.flatMap((owner, slot) => (owner === shard && !busy.some((b) => b.slot === slot) ? [slot] : []));
    const x = free('shard_001')[200] as number;
    const y = free('shard_002')[200] as number;
    const broken = await h.sharding.mover.plan({ kind: 'slot', slot: x, to: 'shard_002', createdBy: 'test', reason: 'test' });
    // From the other shard: a transaction left open on a source holds up every move's drain there.
    const good = await h.sharding.mover.plan({ kind: 'slot', slot: y, to: 'shard_001', createdBy: 'test', reason: 'test' });
    // The first job's permit on the source names a later epoch than any run of it will claim (a
    // run elsewhere took it over, as far as that shard knows): every run of it is refused there.
    const source = h.sharding.primaries.get('shard_001');
    if (!source) throw new Error('no shard_001');
    await source.query('insert into move_permits (job_id, lease_epoch) values ($1, 1000000) on conflict (job_id) do update set lease_epoch = excluded.lease_epoch', [broken.id]);
    try {
      const result = await createMovesHandler(async () => h.sharding)(tick, lambdaContext);
      // The worker goes on with the next job.
      expect(result.failed.map((f) => f.id), JSON.stringify(result.failed)).toEqual([broken.id]);
      expect(result.failed[0]?.error).toMatch(/refused this run's write/);
      expect(result.ran).toEqual(expect.arrayContaining([{ id: good.id, state: 'done' }]));
      // The failure is on the job, for whoever follows GET /shards/moves/{id}.
      const view = (await h.fetchJson(`${API}/shards/moves/${broken.id}`)).body as { error: string | null; state: string };
      expect(String(view.error)).toMatch(/a later run of the job holds its permit/);
    } finally {
      await source.query('delete from move_permits where job_id = $1', [broken.id]);
      await h.sharding.mover.cancel(broken.id).catch(() => undefined);
    }
  }, 60_000);
});
