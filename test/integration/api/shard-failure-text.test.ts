/**
 * README ("No response carries a stack trace, a connection string or a database's error text"):
 * a shard the API cannot reach, or whose login is refused, is reported by the kind of failure and
 * what to do, never by the driver's or the server's own text (which names addresses, ports, logins
 * and relations); that text goes to the log.
 */
// Powertools reads its settings when the handler modules load: this import must stay first.
import '../../support/quiet-powertools.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../support/postgres.js';
import { startApiHarness, type ApiHarness } from './harness.js';

const API = '/api/v1/scaling';

describe('shard failures in API responses', () => {
  let h: ApiHarness;
  let closedPort: number;
  /** Driver and server text that must not reach a body: the refused address, the login, the server's words. */
  let leaks: RegExp[];

  beforeAll(async () => {
    // A loopback port nobody listens on: shard_001's replica is refused (ECONNREFUSED 127.0.0.1:port).
    closedPort = await freePort();
    h = await startApiHarness({
      shardingConfig: (config) => ({
        ...config,
        shards: config.shards.map((s) => {
          if (s.shard_id === 'shard_001') return { ...s, read_replicas: [`postgresql://postgres:postgres@127.0.0.1:${closedPort}/postgres`] };
          // shard_002's primary refuses the login (SQLSTATE 28P01, "password authentication failed for user "postgres"").
          const url = new URL(s.database_url);
          url.password = 'not-the-password';
          return { ...s, database_url: url.toString() };
        }),
      }),
    });
    // The endpoint (host:port, no credentials) is the configuration's, which health reports by design.
    leaks = [/connect ECONNREFUSED/, new RegExp(`ECONNREFUSED 127\\.0\\.0\\.1:${closedPort}`), /password authentication failed/i, /for user/i, /not-the-password/];
  }, 120_000);
  afterAll(async () => {
    await h?.stop();
  });

  function expectNoDriverText(body: unknown): void {
    const text = JSON.stringify(body);
    for (const leak of leaks) expect(text, `${leak} in ${text}`).not.toMatch(leak);
  }

  it('GET /shards/health names the failure of a refused node and a refused login by kind, without the address or the server text', async () => {
    const res = await h.fetchJson(`${API}/shards/health`);
    expect(res.status).toBe(200);
    expectNoDriverText(res.body);
    const shards = (res.body as { shards: { shardId: string; primary: NodeBody; replicas: NodeBody[] }[] }).shards;
    type NodeBody = { nodeId: string; status: string; facts: { reachable: boolean; error?: string } };
    const replica = shards.find((s) => s.shardId === 'shard_001')?.replicas[0];
    const primary = shards.find((s) => s.shardId === 'shard_002')?.primary;
    expect(replica?.facts).toMatchObject({ reachable: false, error: expect.stringMatching(/^connection error ECONNREFUSED/) as unknown });
    expect(primary?.facts).toMatchObject({ reachable: false, error: expect.stringMatching(/SQLSTATE 28P01/) as unknown });
    expect(primary?.facts.error).toMatch(/credentials/);
    // The driver's text goes to the log instead, with the node it is about.
    const logged = (nodeId: string): string[] => h.inspectionFailures.filter((f) => f.what === 'health' && f.nodeId === nodeId).map((f) => (f.error as Error).message);
    expect(logged('shard_002/primary')).toContainEqual(expect.stringMatching(/password authentication failed for user "postgres"/));
    expect(logged('shard_001/replica-1')).toContainEqual(expect.stringContaining(`ECONNREFUSED 127.0.0.1:${closedPort}`));
  }, 60_000);

  it('GET /shards/statistics lists the shard whose login is refused as unreachable by kind', async () => {
    const res = await h.fetchJson(`${API}/shards/statistics`);
    expect(res.status).toBe(200);
    expectNoDriverText(res.body);
    const unreachable = (res.body as { unreachable: { shardId: string; error: string }[] }).unreachable;
    expect(unreachable).toEqual([{ shardId: 'shard_002', error: expect.stringMatching(/SQLSTATE 28P01/) as unknown }]);
    expect(h.inspectionFailures.filter((f) => f.what === 'statistics').map((f) => [f.shardId, (f.error as Error).message])).toContainEqual(['shard_002', 'password authentication failed for user "postgres"']);
  }, 60_000);

  it('GET /shards/rebalance-check answers 503 naming the shard and the kind of failure, not the server text', async () => {
    const res = await h.fetchJson(`${API}/shards/rebalance-check`);
    expect(res.status).toBe(503);
    expectNoDriverText(res.body);
    expect((res.body as { detail: string }).detail).toMatch(/shard_002 \(.*SQLSTATE 28P01/);
  }, 60_000);

  it('GET /recommendations says why the rebalance figures are missing without the server text', async () => {
    const res = await h.fetchJson(`${API}/recommendations`);
    expect(res.status).toBe(200);
    expectNoDriverText(res.body);
    const items = (res.body as { items: { category: string; evidence: Record<string, unknown> }[] }).items;
    const item = items.find((i) => i.category === 'shard_rebalance_unavailable');
    expect(item?.evidence).toMatchObject({ status: 503, reason: expect.stringMatching(/shard_002 \(.*SQLSTATE 28P01/) as unknown });
  }, 60_000);

  /**
   * Runs `request` while `table` (catalog.move_jobs by default) is locked, and cancels its
   * statement once it waits on the lock (as the catalog role's statement_timeout would, SQLSTATE
   * 57014): what it answers.
   */
  async function withMoveJobsCancelled<T>(request: () => Promise<T>, table = 'catalog.move_jobs'): Promise<T> {
    const waiting = `select pid from pg_stat_activity where pid <> pg_backend_pid() and wait_event_type = 'Lock' and query like '%${table}%'`;
    const locker = await h.catalogPool.connect();
    try {
      await locker.query('begin');
      await locker.query(`lock table ${table} in access exclusive mode`);
      const answer = request();
      await expect.poll(async () => (await h.catalogPool.query(waiting)).rowCount, { timeout: 10_000 }).toBeGreaterThan(0);
      await h.catalogPool.query(`select pg_cancel_backend(pid) from (${waiting}) w`);
      return await answer;
    } finally {
      await locker.query('rollback').catch(() => undefined);
      locker.release();
    }
  }

  it("GET /shards/moves/{id} answers the catalog's cancelled statement with a 503 by kind, the server's text logged", async () => {
    const before = h.inspectionFailures.length;

    const res = await withMoveJobsCancelled(() => h.fetchJson(`${API}/shards/moves/424242`));

    expect(res.status).toBe(503);
    expect((res.body as { detail: string }).detail).toBe('reading move 424242: the catalog or a shard did not answer (a statement ran past its time limit); try again shortly');
    expect(JSON.stringify(res.body)).not.toMatch(/canceling statement/);
    expect(h.inspectionFailures.slice(before).map((f) => [f.what, (f.error as Error).message])).toEqual([['reading move 424242', 'canceling statement due to user request']]);
  }, 60_000);

  it("GET /recommendations says the rebalance check failed by kind when the catalog's statement is cancelled, the server's text logged", async () => {
    const before = h.inspectionFailures.length;

    // The port itself: GET /recommendations serves a snapshot up to 10 s old (the test before took one).
    const body = await withMoveJobsCancelled(() => h.port.recommendations());

    expect(JSON.stringify(body)).not.toMatch(/canceling statement/);
    const items = body.items as unknown as { category: string; evidence: Record<string, unknown> }[];
    expect(items.find((i) => i.category === 'shard_rebalance_unavailable')?.evidence).toMatchObject({ status: 500, reason: 'the check failed: a statement ran past its time limit' });
    expect(h.inspectionFailures.slice(before).filter((f) => f.what === 'rebalance check (GET /recommendations)').map((f) => (f.error as Error).message)).toEqual(['canceling statement due to user request']);
  }, 60_000);

  it("a configuration read answers the catalog's cancelled statement with a 503 without its text, the text logged", async () => {
    const before = h.inspectionFailures.length;

    // The port itself: GET /config serves a snapshot a few seconds old.
    const failed = await withMoveJobsCancelled(() => h.port.getConfig().then(() => undefined, (err: unknown) => err), 'catalog.scaling_config');

    expect(failed).toMatchObject({ name: 'UnavailableError', message: 'reading the configuration: the catalog is unreachable right now' });
    expect(h.inspectionFailures.slice(before).map((f) => [f.what, (f.error as Error).message])).toEqual([['reading the configuration', 'canceling statement due to user request']]);
  }, 60_000);

  it('GET /shards/fences names the shard whose login is refused by kind', async () => {
    const res = await h.fetchJson(`${API}/shards/fences`);
    expectNoDriverText(res.body);
    expect((res.body as { unreachable: string[] }).unreachable).toEqual([expect.stringMatching(/^shard_002 \(the login was refused \(SQLSTATE 28P01/)]);
    expect(h.inspectionFailures.some((f) => f.what === 'reading write_fences' && f.shardId === 'shard_002')).toBe(true);
  }, 60_000);
});
