import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CatalogStore, ConfigVersionConflictError } from '../../../functions/adapters/postgres/catalog-store.js';
import { LeaseStore } from '../../../functions/adapters/postgres/lease-store.js';
import { SERIALIZATION_ATTEMPTS } from '../../../functions/adapters/postgres/sqlstate.js';
import { parseScalingConfig, ScalingConfigError } from '../../../functions/core/scaling/config.js';
import type { DecisionRecord } from '../../../functions/core/scaling/ports.js';
import { migrateAll } from '../../../functions/handlers/shared/migrations.js';
import { startTestPostgres, type TestPostgres } from '../../support/postgres.js';

let server: TestPostgres;
let pool: pg.Pool;
let store: CatalogStore;

beforeAll(async () => {
  server = await startTestPostgres();
  pool = new pg.Pool({ connectionString: server.url, max: 4 });
  await migrateAll({ catalog: pool, shards: [] });
  store = new CatalogStore(pool, { defaults: parseScalingConfig({}) });
});
afterAll(async () => {
  await pool.end();
  await server.stop();
});

function decision(service: string, at: number, overrides: Partial<DecisionRecord> = {}): DecisionRecord {
  return {
    at,
    service,
    trigger: 'schedule',
    policy: 'threshold',
    from: 2,
    to: 3,
    direction: 'out',
    reasons: [{ metric: 'cpu', value: 91, threshold: 80, rule: 'cpu_scale_up_exceeded', message: 'cpu 91 is above cpu_scale_up 80' }],
    blocked: [],
    metrics: { at, cpu: 91 },
    dryRun: false,
    outcome: 'applied',
    degraded: false,
    ...overrides,
  };
}

describe('catalog store: configuration', () => {
  it('numbers configuration versions and records who changed them', async () => {
    const first = await store.putConfig({ cpu_scale_up: 75 }, { actor: 'alice', comment: 'busier mornings', ifVersion: 0 });
    const second = await store.putConfig({ cpu_scale_up: 70 }, { actor: 'bob', ifVersion: 1 });

    const current = await store.getConfig();
    expect([first.version, second.version]).toEqual([1, 2]);
    expect(current).toMatchObject({ version: 2, changedBy: 'bob', document: { cpu_scale_up: 70 } });
    expect(current?.config.cpu_scale_up).toBe(70);
    expect((await store.listConfigVersions()).map((v) => [v.version, v.changedBy])).toEqual([
      [2, 'bob'],
      [1, 'alice'],
    ]);
  });

  it('refuses a write based on a version that is no longer current', async () => {
    const current = (await store.getConfig())?.version ?? 0;

    const error = await store.putConfig({ cpu_scale_up: 60 }, { actor: 'carol', ifVersion: current - 1 }).catch((e: unknown) => e);

    expect(error).toBeInstanceOf(ConfigVersionConflictError);
    expect((await store.getConfig())?.version).toBe(current);
  });

  it('rejects an invalid configuration without writing anything', async () => {
    const before = (await store.getConfig())?.version;

    const error = await store.putConfig({ cpu_scale_up: 20, cpu_scale_down: 30 }, { actor: 'dave' }).catch((e: unknown) => e);

    expect(error).toBeInstanceOf(ScalingConfigError);
    expect((await store.getConfig())?.version).toBe(before);
  });

  it('rejects an invalid configuration from updateConfig as putConfig does (ScalingConfigError, not an unreachable catalog), without writing anything', async () => {
    const before = (await store.getConfig())?.version;

    const error = await store.updateConfig(() => ({ cpu_scale_up: 20, cpu_scale_down: 30 }), { actor: 'dave' }).catch((e: unknown) => e);

    expect(error).toBeInstanceOf(ScalingConfigError);
    expect((error as ScalingConfigError).issues.map((i) => i.path)).toEqual(['cpu_scale_down']);
    expect((await store.getConfig())?.version).toBe(before);
  });

  it('loads the configuration in force with the switches', async () => {
    await store.setSwitch({ scope: 'worker', enabled: false, actor: 'alice', reason: 'incident 42' });

    const control = await store.loadControl();

    expect(control.globalEnabled).toBe(true);
    expect(control.serviceEnabled).toEqual({ worker: false });
    expect(control.version).toBe((await store.getConfig())?.version);
  });

  it('turns the global switch off and on again, keeping who did it and why', async () => {
    await store.setSwitch({ scope: '*', enabled: false, actor: 'alice', reason: 'maintenance' });
    expect((await store.loadControl()).globalEnabled).toBe(false);

    await store.setSwitch({ scope: '*', enabled: true, actor: 'bob' });

    expect((await store.loadControl()).globalEnabled).toBe(true);
    expect((await store.getSwitches()).find((s) => s.scope === '*')).toMatchObject({ enabled: true, changedBy: 'bob', reason: '' });
  });
});

describe('catalog store: history', () => {
  it('stores decisions with everything needed to explain them, newest first', async () => {
    await store.recordDecision(decision('hist-a', 1_000_000));
    await store.recordDecision(decision('hist-a', 2_000_000, { outcome: 'failed', error: 'ECS said no', trigger: 'api', actor: 'alice' }));

    const page = await store.listDecisions({ service: 'hist-a' });

    expect(page.map((d) => d.at)).toEqual([2_000_000, 1_000_000]);
    expect(page[0]).toMatchObject({ outcome: 'failed', error: 'ECS said no', trigger: 'api', actor: 'alice', metrics: { cpu: 91 } });
    expect(page[1]?.reasons[0]?.rule).toBe('cpu_scale_up_exceeded');
  });

  it('finds each service\'s newest applied decision in one query, skipping the unchanged ones', async () => {
    await store.recordDecision(decision('last-a', 5_000_000, { from: 2, to: 3 }));
    await store.recordDecision(decision('last-a', 5_000_100, { from: 3, to: 4 }));
    await store.recordDecision(decision('last-a', 5_000_200, { from: 4, to: 4, direction: 'none', outcome: 'unchanged' }));
    await store.recordDecision(decision('last-b', 5_000_000, { from: 5, to: 4, direction: 'in' }));
    await store.recordDecision(decision('last-b', 5_000_300, { from: 4, to: 3, direction: 'in', outcome: 'failed', error: 'ECS said no' }));
    await store.recordDecision(decision('last-c', 5_000_000, { outcome: 'unchanged', to: 2, direction: 'none' }));

    const last = await store.lastAppliedDecisions(['last-a', 'last-b', 'last-c', 'nobody']);

    expect([...last.keys()].sort()).toEqual(['last-a', 'last-b']);
    expect(last.get('last-a')).toMatchObject({ at: 5_000_100, from: 3, to: 4, outcome: 'applied' });
    expect(last.get('last-b')).toMatchObject({ at: 5_000_000, from: 5, to: 4 });
    expect(await store.lastAppliedDecisions([])).toEqual(new Map());
  });

  it('reads the last applied decision from the partial index, not by walking the unchanged history', async () => {
    await store.recordDecision(decision('quiet', 6_000_000));
    await pool.query(
      `insert into catalog.scaling_decisions (decided_at, service, trigger, policy, from_count, to_count, direction, reasons, blocked, metrics, dry_run, outcome, degraded)
       select to_timestamp(6001 + g), 'quiet', 'schedule', 'threshold', 3, 3, 'none', '[]', '[]', '{}', false, 'unchanged', false from generate_series(1, 20000) g`,
    );
    await pool.query('analyze catalog.scaling_decisions');

    const plan = await pool.query<{ 'QUERY PLAN': unknown }>(
      `explain (format json) select * from catalog.scaling_decisions where service = 'quiet' and outcome = 'applied' order by decided_at desc, id desc limit 1`,
    );

    expect(JSON.stringify(plan.rows[0]?.['QUERY PLAN'])).toContain('scaling_decisions_applied_idx');
    expect((await store.lastAppliedDecisions(['quiet'])).get('quiet')?.at).toBe(6_000_000);
  });

  it('pages through the history by id', async () => {
    for (let i = 0; i < 5; i++) await store.recordDecision(decision('hist-b', 3_000_000 + i));

    const first = await store.listDecisions({ service: 'hist-b', limit: 2 });
    const second = await store.listDecisions({ service: 'hist-b', limit: 2, beforeId: first[1]?.id ?? 0 });

    expect(first.map((d) => d.at)).toEqual([3_000_004, 3_000_003]);
    expect(second.map((d) => d.at)).toEqual([3_000_002, 3_000_001]);
  });

  it('writes a backlog with an explicit gap for the decisions only the logs hold', async () => {
    await store.appendBacklog({ records: [decision('hist-c', 5_000_000, { degraded: true })], dropped: 7, droppedFrom: 4_000_000, droppedTo: 4_900_000 });

    const gaps = await store.listGaps();
    expect((await store.listDecisions({ service: 'hist-c' }))[0]?.degraded).toBe(true);
    expect(gaps[0]).toMatchObject({ decisions: 7, fromAt: new Date(4_000_000), toAt: new Date(4_900_000) });
    expect(gaps[0]?.note).toContain('7 decision(s) were logged elsewhere');
  });
});

describe('catalog store: alarms and locks', () => {
  it('recognises a redelivered SNS message', async () => {
    const alarm = { messageId: 'msg-1', alarmName: 'cpu-high', newState: 'ALARM', service: 'worker', reason: 'Threshold Crossed' };

    const first = await store.recordAlarm(alarm);
    const again = await store.recordAlarm(alarm);

    expect([first, again]).toEqual([true, false]);
  });

  it('lets only one evaluation hold a service; the other stands aside at once', async () => {
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    let entered: () => void = () => undefined;
    const inside = new Promise<void>((r) => (entered = r));
    const holder = store.withServiceLock('locked-svc', async () => {
      entered();
      await held;
    });
    // The second caller comes once the first holds the lock, not after a guessed delay.
    await inside;

    const second = await store.withServiceLock('locked-svc', async () => 'ran');
    const other = await store.withServiceLock('other-svc', async () => 'ran');
    release();
    await holder;
    const after = await store.withServiceLock('locked-svc', async () => 'ran');

    expect(second).toEqual({ acquired: false });
    expect(other).toEqual({ acquired: true, value: 'ran' });
    expect(after).toEqual({ acquired: true, value: 'ran' });
  });

  it('lets one of several first evaluations of a new service hold it; a waiting one gets it when the holder ends', async () => {
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    let ran = 0;
    const calls = [1, 2, 3].map(() =>
      store.withServiceLock('brand-new-svc', async () => {
        ran++;
        await held;
        return 'ran';
      }),
    );
    // Two stand aside at once (settle while the holder still holds); then the holder is released.
    const settled: unknown[] = [];
    calls.forEach((c) => void c.then((r) => settled.push(r)));
    for (let i = 0; i < 500 && settled.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    const waiting = store.withServiceLock('brand-new-svc', async () => 'waited', { wait: true });
    await new Promise((r) => setTimeout(r, 100));
    release();
    const results = await Promise.all(calls);

    expect(results.filter((r) => r.acquired).length).toBe(1);
    expect(await waiting).toEqual({ acquired: true, value: 'waited' });
    expect(ran).toBe(1);
  });

  it('serialises switch writers of every scope, with configuration writes and evaluations under way, without a deadlock', async () => {
    const calls: Promise<unknown>[] = [];
    for (const scope of ['sw-a', 'sw-b', '*']) {
      for (let i = 0; i < 3; i++) calls.push(store.setSwitch({ scope, enabled: scope === '*', actor: `t${i}` }));
    }
    calls.push(store.withServiceLock('sw-a', async (session) => session.recordDecision(decision('sw-a', 7_000_000))));
    calls.push(store.putConfig({}, { actor: 'test' }));
    const results = await Promise.all(calls);
    const changed = results.slice(0, 9).map((r) => (r as { changed: boolean }).changed);

    expect(changed.filter(Boolean).length).toBe(2);
  });

  it('hands a waiting evaluation whose login defaults to REPEATABLE READ the state the holder committed, and saves its own over it', async () => {
    // An RDS parameter group or an ALTER ROLE ... SET can make the control login's default
    // REPEATABLE READ. The wait for the lock is the transaction's first statement: its snapshot
    // was taken before the holder committed.
    const repeatable = new pg.Pool({ connectionString: server.url, max: 2, options: '-c default_transaction_isolation=repeatable\\ read' });
    try {
      const waiter = new CatalogStore(repeatable, { defaults: parseScalingConfig({}) });
      const state = (n: number) => ({ service: 'rr-svc', events: [], metricsHistory: [], recommendations: [], memory: { n } });
      await store.withServiceLock('rr-svc', (session) => session.saveState(state(1)));
      let release: () => void = () => undefined;
      const held = new Promise<void>((r) => (release = r));
      let entered: () => void = () => undefined;
      const inside = new Promise<void>((r) => (entered = r));
      const holder = store.withServiceLock('rr-svc', async (session) => {
        entered();
        await held;
        await session.saveState(state(2));
      });
      await inside;
      const waiting = waiter
        .withServiceLock(
          'rr-svc',
          async (session) => {
            const seen = (await session.loadState())?.memory;
            await session.saveState(state(3));
            return seen;
          },
          { wait: true },
        )
        .catch((e: unknown) => e);
      for (let i = 0; i < 500; i++) {
        const { rows } = await pool.query(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%service_locks%'`);
        if (rows.length > 0) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      release();
      await holder;

      // Before: the waiter read the state of its snapshot ({ n: 1 }), older than the holder's
      // commit, and its save then failed on the row the holder had updated (40001).
      expect(await waiting).toEqual({ acquired: true, value: { n: 2 } });
      expect((await store.getServiceState('rr-svc'))?.memory).toEqual({ n: 3 });
    } finally {
      await repeatable.end();
    }
  });

  it('tells an evaluation whose login defaults to REPEATABLE READ that the lease another took while it asked is held, rather than fail it', async () => {
    // The other acquire's statement, in flight: its row inserted and not yet committed.
    const repeatable = new pg.Pool({ connectionString: server.url, max: 2, options: '-c default_transaction_isolation=repeatable\\ read' });
    const other = await pool.connect();
    try {
      const waiter = new CatalogStore(repeatable, { defaults: parseScalingConfig({}) });
      await other.query('begin');
      const taken = await new LeaseStore(other as unknown as pg.Pool).acquire('rr-lease', { owner: 'scaling-evaluate (schedule)', ttlMs: 60_000 });
      const asking = waiter.acquireLease('rr-lease', { owner: 'scaling-alarm (alarm)', ttlMs: 60_000 }).catch((e: unknown) => e);
      for (let i = 0; i < 500; i++) {
        const { rows } = await pool.query(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%catalog.leases%'`);
        if (rows.length > 0) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      await other.query('commit');

      // Before: the acquire's snapshot, older than that commit, failed it with "could not
      // serialize access due to concurrent update" (40001), and the controller, taking the
      // catalog for unreachable, evaluated without the lease beside the holder.
      expect(taken.acquired).toBe(true);
      expect(await asking).toMatchObject({ acquired: false, holder: 'scaling-evaluate (schedule)' });
    } finally {
      other.release();
      await repeatable.end();
    }
  });

  /**
   * A chain of other sessions each changing the lease row `name` (taken by 'contender 0') while an
   * acquire through `pool` (login defaulting to REPEATABLE READ, `applicationName`) waits for the
   * one before: every try waits for them and fails with 40001 once one commits (a try that waited
   * in the unique index's check, holding no lock of the row, may see two of them commit first).
   * `tries()` counts the acquire's inserts; a contender with `release` gives the lease back.
   */
  async function leaseChain(name: string, applicationName: string) {
    await pool.query(`insert into catalog.leases (name, holder, acquired_at, expires_at) values ($1, 'contender 0', now(), now() + interval '1 minute')`, [name]);
    const repeatable = new pg.Pool({ connectionString: server.url, max: 2, application_name: applicationName, options: '-c default_transaction_isolation=repeatable\\ read' });
    let tries = 0;
    const counted = new Proxy(repeatable, {
      get(target, prop): unknown {
        if (prop === 'query') {
          return (text: string, values?: unknown[]) => {
            if (text.includes('insert into catalog.leases')) tries += 1;
            return target.query(text, values);
          };
        }
        const value = Reflect.get(target, prop) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const waitingFor = async (where: string, params: unknown[], stop: () => boolean): Promise<void> => {
      for (let i = 0; i < 1000 && !stop(); i++) {
        const { rows } = await pool.query(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and ${where}`, params);
        if (rows.length > 0) return;
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    const contender = async (k: number, release: boolean): Promise<{ client: pg.PoolClient; pid: number; updated: Promise<unknown> }> => {
      const client = await pool.connect();
      const { rows } = await client.query<{ pid: number }>('select pg_backend_pid() as pid');
      await client.query('begin');
      const updated = release
        ? client.query('delete from catalog.leases where name = $1', [name])
        : client.query(`update catalog.leases set holder = $2, acquired_at = now() where name = $1`, [name, `contender ${k}`]);
      return { client, pid: rows[0]?.pid as number, updated };
    };
    // At most two contenders at a time: the test's pool has four connections.
    const clients = new Set<pg.PoolClient>();
    const commit = async (client: pg.PoolClient): Promise<void> => {
      await client.query('commit');
      clients.delete(client);
      client.release();
    };
    const end = async (): Promise<void> => {
      for (const c of clients) {
        await c.query('rollback').catch(() => undefined);
        c.release();
      }
      await repeatable.end();
    };
    /**
     * Asks `ask` through the counting pool while contenders 1, 2, ... change the row one after
     * another (each waited on by the acquire, then committed), at most `max` of them, until the
     * acquire answers; once `releaseWhen()` holds, the next contender gives the lease back instead.
     */
    const run = async <T>(ask: (p: pg.Pool) => Promise<T>, max: number, releaseWhen: () => boolean = () => false): Promise<T> => {
      let current = await contender(1, false);
      clients.add(current.client);
      await current.updated;
      let settled = false;
      const asking = ask(counted).finally(() => {
        settled = true;
      });
      let released = false;
      for (let k = 2; k <= max && !settled && !released; k++) {
        await waitingFor(`application_name = '${applicationName}'`, [], () => settled);
        released = releaseWhen();
        const next = await contender(k, released);
        clients.add(next.client);
        await waitingFor('pid = $1', [next.pid], () => false);
        await commit(current.client);
        await next.updated;
        current = next;
      }
      await commit(current.client);
      return asking;
    };
    return { tries: () => tries, run, end };
  }

  it('answers an acquire whose lease row kept changing while it asked (its login defaulting to REPEATABLE READ) as held by the holder it finds, after five tries, rather than ask for ever or fail as if the catalog were unreachable', async () => {
    // A chain of other sessions each changing the lease row while the acquire waits for the one
    // before: every try waits for them and fails with 40001 once one commits (a try that waited
    // in the unique index's check, holding no lock of the row, may see two of them commit first).
    const name = 'rr-contended';
    const chain = await leaseChain(name, 'rr-acquirer');
    try {
      const answer = await chain.run((p) => new LeaseStore(p).acquire(name, { owner: 'scaling-evaluate (schedule)', ttlMs: 60_000 }), 16);

      // Before: asked again at every conflict, without end while the row kept changing (here,
      // 8 to 16 tries for 16 changes).
      expect(answer).toMatchObject({ acquired: false, holder: expect.stringMatching(/^contender \d+$/) as unknown });
      expect(chain.tries()).toBe(5);
    } finally {
      await chain.end();
    }
  });

  it('keeps asking for a lease whose row kept changing under five tries while its wait (waitMs) lasts, and takes it once its holder gives it back, rather than answer it held by a holder that has let it go', async () => {
    // An alarm's evaluation waits up to 10 s for the lease (ALARM_LEASE_WAIT_MS). A chain of other
    // sessions changes the lease row while it asks, as in the test above (each try fails with
    // 40001 once the one it waited for commits), and the last of them gives the lease back.
    const name = 'rr-contended-wait';
    const chain = await leaseChain(name, 'rr-waiter');
    try {
      const started = Date.now();
      // Changed until the acquire has been sent more than five times (its first ask's cap), then given back.
      const got = await chain.run((p) => new LeaseStore(p).acquire(name, { owner: 'scaling-alarm (alarm)', ttlMs: 60_000, waitMs: 10_000 }), 40, () => chain.tries() > SERIALIZATION_ATTEMPTS);

      // Before: answered after its fifth try, a moment into its 10 s wait, as held by "contender
      // 5" or so, whose row the chain then changed again and gave back: the alarm's evaluation
      // stood aside ("another evaluation was still running after 10 s") with the lease free.
      expect(got).toMatchObject({ acquired: true });
      expect(Date.now() - started).toBeLessThan(10_000);
      const { rows } = await pool.query<{ holder: string }>('select holder from catalog.leases where name = $1', [name]);
      expect(rows[0]?.holder).toMatch(/^scaling-alarm \(alarm\) /);
    } finally {
      await chain.end();
    }
  });

  it('gives back a lease whose login defaults to REPEATABLE READ though another took it over, as it lapsed, while the release waited for it', async () => {
    const repeatable = new pg.Pool({ connectionString: server.url, max: 2, options: '-c default_transaction_isolation=repeatable\\ read' });
    const other = await pool.connect();
    try {
      const mine = await new LeaseStore(repeatable).acquire('rr-release', { owner: 'scaling-evaluate (schedule)', ttlMs: 1 });
      await new Promise((r) => setTimeout(r, 20));
      await other.query('begin');
      const next = await new LeaseStore(other as unknown as pg.Pool).acquire('rr-release', { owner: 'scaling-alarm (alarm)', ttlMs: 60_000 });
      const releasing = mine.acquired ? mine.release().then(() => 'released', (e: Error) => `threw: ${e.message}`) : Promise.resolve('never held');
      for (let i = 0; i < 500; i++) {
        const { rows } = await pool.query(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%catalog.leases%'`);
        if (rows.length > 0) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      await other.query('commit');

      // Before: the release's snapshot, older than the takeover's commit, failed it with 40001: the
      // controller reported the lease not released and tried again at its next evaluation.
      expect(next.acquired).toBe(true);
      expect(await releasing).toBe('released');
      const { rows } = await pool.query<{ holder: string }>('select holder from catalog.leases where name = $1', ['rr-release']);
      expect(rows[0]?.holder).toMatch(/^scaling-alarm \(alarm\) /);
    } finally {
      other.release();
      await repeatable.end();
    }
  });

  it("evaluates a new service whose lock row another first evaluation inserted while this one asked, its login defaulting to REPEATABLE READ, rather than fail it", async () => {
    const repeatable = new pg.Pool({ connectionString: server.url, max: 2, options: '-c default_transaction_isolation=repeatable\\ read' });
    const other = await pool.connect();
    try {
      const waiter = new CatalogStore(repeatable, { defaults: parseScalingConfig({}) });
      await other.query('begin');
      await other.query('insert into catalog.service_locks (service) values ($1)', ['rr-new-svc']);
      const asking = waiter.withServiceLock('rr-new-svc', async () => 'evaluated').catch((e: unknown) => e);
      for (let i = 0; i < 500; i++) {
        const { rows } = await pool.query(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%service_locks%'`);
        if (rows.length > 0) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      await other.query('commit');

      // Before: the insert's snapshot did not hold the row it conflicted with: 40001, a
      // CatalogError, the service's evaluation failed as if the catalog were unreachable.
      expect(await asking).toEqual({ acquired: true, value: 'evaluated' });
    } finally {
      other.release();
      await repeatable.end();
    }
  });

  it('recognises a redelivered SNS message recorded by another delivery while this one was recorded, its login defaulting to REPEATABLE READ', async () => {
    const repeatable = new pg.Pool({ connectionString: server.url, max: 2, options: '-c default_transaction_isolation=repeatable\\ read' });
    const other = await pool.connect();
    try {
      const waiter = new CatalogStore(repeatable, { defaults: parseScalingConfig({}) });
      const alarm = { messageId: 'rr-msg', alarmName: 'cpu-high', newState: 'ALARM', service: 'worker', reason: 'Threshold Crossed' };
      await other.query('begin');
      expect(await new CatalogStore(other as unknown as pg.Pool, { defaults: parseScalingConfig({}) }).recordAlarm(alarm)).toBe(true);
      const again = waiter.recordAlarm(alarm).catch((e: unknown) => e);
      for (let i = 0; i < 500; i++) {
        const { rows } = await pool.query(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%scaling_alarms%'`);
        if (rows.length > 0) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      await other.query('commit');

      // Before: 40001, a CatalogError: the alarm function logged the catalog unreachable and
      // evaluated the redelivery as a new alarm.
      expect(await again).toBe(false);
    } finally {
      other.release();
      await repeatable.end();
    }
  });

  it('commits state and decision together, and neither when the work fails', async () => {
    const failing = store.withServiceLock('atomic-svc', async (session) => {
      await session.saveState({ service: 'atomic-svc', events: [], metricsHistory: [], recommendations: [], memory: { n: 1 } });
      await session.recordDecision(decision('atomic-svc', 6_000_000));
      throw new Error('boom');
    });

    await expect(failing).rejects.toThrow('boom');
    expect(await store.getServiceState('atomic-svc')).toBeUndefined();
    expect(await store.listDecisions({ service: 'atomic-svc' })).toEqual([]);
  });
});
