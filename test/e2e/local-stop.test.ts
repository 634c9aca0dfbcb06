/**
 * `npm start` from a bare clone (nothing beside it: the default trace ships in the repository),
 * stopped every way an operator or a supervisor does: each stop ends every PostgreSQL server of
 * the run (found by data directory in /proc) and removes the lock within 10 s, and the next start
 * on the same data works. Runs one small cluster (1 shard, 1 replica) started through the real
 * `npm start`, again and again on the same data directory: each start is a stop's case, the
 * first (fresh data, the bare clone's checks) and the one after a SIGKILL included.
 */
import { existsSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { bareCopy, descendantsOf, eventually, postgresProcessesUnder, startLocalProcess, tempDataDir, type LocalProcess } from './support/local-process.js';

const SMALL = ['--shards', '1', '--replicas', '1', '--seed-users', '0'];
/** The bound: every server the run started is gone within 10 s of the signal. */
const STOP_BOUND_MS = 10_000;

type Target = 'group' | 'npm' | 'node';
/**
 * Every way of stopping it. The first start (fresh data from the bare clone) ends with SIGTERM to
 * the process group, and the start after a SIGKILL with SIGTERM to npm (both exit 0); each of the
 * others has a start of its own.
 */
const CASES: ReadonlyArray<{ how: string; target: Target; signal: NodeJS.Signals }> = [
  { how: 'Ctrl-C (SIGINT to the process group)', target: 'group', signal: 'SIGINT' },
  { how: 'SIGINT to the npm process', target: 'npm', signal: 'SIGINT' },
  { how: 'SIGINT to the node process', target: 'node', signal: 'SIGINT' },
  { how: 'SIGTERM to the node process', target: 'node', signal: 'SIGTERM' },
  { how: 'the terminal closing (SIGHUP to the process group)', target: 'group', signal: 'SIGHUP' },
];
const FIRST_STOP = { how: 'SIGTERM to the process group', target: 'group', signal: 'SIGTERM' } as const;
const AFTER_KILL_STOP = { how: 'SIGTERM to the npm process', target: 'npm', signal: 'SIGTERM' } as const;

async function signalRun(run: LocalProcess, target: Target, signal: NodeJS.Signals): Promise<void> {
  const npmPid = run.child.pid as number;
  if (target === 'group') process.kill(-npmPid, signal);
  else if (target === 'npm') process.kill(npmPid, signal);
  else process.kill(await run.nodePid(), signal);
}

/**
 * The stop case: `signal` to `target` of a run whose 3 servers (catalog, primary, replica) run
 * ends every one of them and removes the lock within the bound, and the run says it stopped.
 * Resolves to the exit code of npm.
 */
async function stopsEverything(run: LocalProcess, dataDir: string, target: Target, signal: NodeJS.Signals): Promise<number | null> {
  expect(await postgresProcessesUnder(dataDir)).toHaveLength(3);

  await signalRun(run, target, signal);

  await eventually(
    async () => ((await postgresProcessesUnder(dataDir)).length === 0 && !existsSync(join(dataDir, 'local.lock')) ? true : undefined),
    STOP_BOUND_MS,
    `no PostgreSQL process and no lock after ${signal} to ${target}`,
  );
  const code = await run.exited;
  // That is npm's exit. The node process it started writes to the same pipe and may print its
  // last line after npm has gone (a SIGHUP to the group ends npm at once; seen once in CI).
  await eventually(async () => (run.output().includes('stopped; data kept in') ? true : undefined), STOP_BOUND_MS, `"stopped; data kept in" after ${signal} to ${target}`).catch(() => undefined);
  expect(run.output()).toContain('stopped; data kept in');
  return code;
}

// The two groups below share nothing (each its own data directory; every process is found by its
// data directory): they run side by side, each of their tests one after the other.
describe('stopping npm start', { concurrent: true }, () => {
  let dataDir: string;
  let repo: string;
  let current: LocalProcess | undefined;

  beforeAll(async () => {
    dataDir = await tempDataDir();
    repo = await bareCopy();
  });

  afterAll(async () => {
    await current?.stop('SIGKILL');
    await rm(dataDir, { recursive: true, force: true });
    await rm(dirname(repo), { recursive: true, force: true });
  });

  const start = async (): Promise<LocalProcess> => {
    current = await startLocalProcess({ via: 'npm', repo, dataDir, args: SMALL });
    return current;
  };

  it.sequential(`starts from a bare clone with nothing beside it, replaying the NASA trace shipped in the repository; ${FIRST_STOP.how} stops every PostgreSQL server of the run and removes the lock`, async () => {
    const run = await start();

    expect(existsSync(join(repo, '..', 'shared'))).toBe(false);
    expect(run.output()).toMatch(/Workload\s+nasa-http-1995-requests-per-minute\.csv at 60x/);
    expect(await stopsEverything(run, dataDir, FIRST_STOP.target, FIRST_STOP.signal)).toBe(0);
  }, 120_000);

  it.sequential.each(CASES)('$how stops every PostgreSQL server of the run and removes the lock', async ({ target, signal }) => {
    const run = await start();
    await stopsEverything(run, dataDir, target, signal);
  }, 120_000);

  it.sequential(`shuts the servers down when node is killed outright, and the next start clears its lock with a message; ${AFTER_KILL_STOP.how} stops every PostgreSQL server of that run and removes the lock`, async () => {
    const killed = await start();
    process.kill(await killed.nodePid(), 'SIGKILL');

    await eventually(async () => ((await postgresProcessesUnder(dataDir)).length === 0 ? true : undefined), STOP_BOUND_MS, 'no PostgreSQL process after SIGKILL');
    await killed.exited;
    expect(existsSync(join(dataDir, 'local.lock'))).toBe(true);

    const next = await start();
    expect(next.output()).toMatch(/cleared the lock of an earlier run that did not stop cleanly \(pid \d+/);
    expect(await stopsEverything(next, dataDir, AFTER_KILL_STOP.target, AFTER_KILL_STOP.signal)).toBe(0);
  }, 120_000);
});

/** The catalog server's postmaster and every process under it (its backends). */
async function catalogProcesses(dataDir: string): Promise<number[]> {
  const pm = Number((await readFile(join(dataDir, 'pg', 'catalog', 'postmaster.pid'), 'utf8')).split('\n')[0]);
  return [pm, ...(await descendantsOf(pm)).map((p) => p.pid)];
}

/** Whatever a test left of a run: stopped servers continued, and every process of its data killed. */
async function killLeftovers(dataDir: string): Promise<void> {
  for (const pid of await postgresProcessesUnder(dataDir)) {
    for (const signal of ['SIGCONT', 'SIGKILL'] as const) {
      try {
        process.kill(pid, signal);
      } catch {
        // already gone
      }
    }
  }
}

const DOCUMENTS_API = '/api/v1/documents';

/**
 * Stops that meet a fault: a write in flight at SIGTERM, a run killed while its catalog server was
 * stopped (SIGSTOP), a catalog server that no longer answers after a move was started. Each runs
 * the CLI itself (`node bin/cli.ts start`, two shards, no replicas), one after the other on one
 * data directory (each ends with a clean stop; the move, started last, is left to no later start).
 */
describe('stopping local mode under faults', { concurrent: true }, () => {
  const runs: LocalProcess[] = [];
  let dataDir: string;

  beforeAll(async () => {
    dataDir = await tempDataDir();
  });

  afterAll(async () => {
    for (const run of runs) await run.stop('SIGKILL');
    await killLeftovers(dataDir);
    await rm(dataDir, { recursive: true, force: true });
  });

  const start = async (env: Readonly<Record<string, string>> = {}): Promise<LocalProcess> => {
    const run = await startLocalProcess({ dataDir, args: ['--replicas', '0', '--shards', '2', '--seed-users', '5'], env });
    runs.push(run);
    return run;
  };

  it.sequential('answers a write that is in flight when SIGTERM comes, once it commits, before closing the port', async () => {
    const run = await start();
    const users = (await (await fetch(`${run.url}/api/v1/users?limit=1`)).json()) as { items?: Array<{ id: string }> } | Array<{ id: string }>;
    const owner = (Array.isArray(users) ? users[0] : users.items?.[0])?.id;
    expect(owner).toBeDefined();
    // The primary of the owner's shard, where the write goes.
    const route = (await (await fetch(`${run.url}/api/v1/scaling/shards/route?key=${owner}`)).json()) as { shard_id: string };
    const port = new RegExp(`${route.shard_id}/primary:(\\d+)`).exec(run.output())?.[1];
    expect(port).toBeDefined();
    const { password } = JSON.parse(await readFile(join(dataDir, 'pg', 'cluster.json'), 'utf8')) as { password: string };
    const holder = new pg.Client({ connectionString: `postgresql://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/ca_dms` });
    holder.on('error', () => undefined);
    await holder.connect();
    try {
      // Inserts into documents wait behind this lock: the write is in flight, not yet committed.
      await holder.query('begin');
      await holder.query('lock table documents in share mode');
      const title = `in flight at SIGTERM ${Date.now()}`;
      const write = fetch(`${run.url}${DOCUMENTS_API}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ owner_id: owner, title }) }).then(
        async (res) => ({ status: res.status, body: await res.text() }),
        (error: unknown) => ({ status: 0, body: String((error as Error).cause ?? error) }),
      );
      await eventually(
        async () => ((await holder.query<{ n: number }>("select count(*)::int as n from pg_locks where relation = 'documents'::regclass and not granted")).rows[0]?.n ? true : undefined),
        10_000,
        'the write waiting on the lock',
      );
      const exited = run.stop('SIGTERM');
      await new Promise((r) => setTimeout(r, 500));
      await holder.query('commit');
      const answer = await write;
      // Answered 201 once committed (not a closed connection that leaves the client guessing).
      expect({ status: answer.status, body: answer.status === 201 ? '' : answer.body }).toEqual({ status: 201, body: '' });
      expect(await exited).toBe(0);
      // And it is there, once, after a restart on the same data.
      const { id } = JSON.parse(answer.body) as { id?: string };
      const next = await start();
      const found = (await (await fetch(`${next.url}/api/v1/users/${owner}/documents?limit=200`)).json()) as { items: Array<{ id: string; title: string }> };
      expect(found.items.filter((d) => d.title === title).map((d) => d.id)).toEqual([id]);
      expect(await next.stop('SIGTERM')).toBe(0);
    } finally {
      await holder.end().catch(() => undefined);
    }
  }, 180_000);

  it.sequential('starts on the data of a run killed outright while its catalog server was stopped (SIGSTOP), stopping the leftover server', async () => {
    const killed = await start();
    for (const pid of await catalogProcesses(dataDir)) process.kill(pid, 'SIGSTOP');
    await killed.stop('SIGKILL');

    const next = await Promise.race([start(), new Promise<'hung'>((r) => setTimeout(() => r('hung'), 60_000))]);
    expect(next === 'hung' ? 'hung' : next.output()).toMatch(/stopped catalog \(pid \d+\), left running by a run that did not stop cleanly/);
    if (next !== 'hung') expect(await next.stop('SIGTERM')).toBe(0);
    expect(await postgresProcessesUnder(dataDir)).toEqual([]);
  }, 180_000);

  it.sequential('stops within its bound when the catalog server stopped answering (SIGSTOP) after a move was started, leaving no PostgreSQL process', async () => {
    // An evaluation round every second, so one is waiting on the catalog when the stop comes.
    const run = await start({ SCALING_CHECK_INTERVAL: '1' });
    const users = (await (await fetch(`${run.url}/api/v1/users?limit=1`)).json()) as { items?: Array<{ id: string }> } | Array<{ id: string }>;
    const first = Array.isArray(users) ? users[0] : users.items?.[0];
    const route = (await (await fetch(`${run.url}/api/v1/scaling/shards/route?key=${first?.id ?? '2f3e4d5c-6b7a-4981-a0b1-c2d3e4f5a6b7'}`)).json()) as { shard_id: string; slot: number };
    const to = route.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';
    const move = await fetch(`${run.url}/api/v1/scaling/shards/moves`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'slot', unit: String(route.slot), to }) });
    expect(move.status).toBe(202);

    for (const pid of await catalogProcesses(dataDir)) process.kill(pid, 'SIGSTOP');
    await new Promise((r) => setTimeout(r, 2000));
    const stopped = Date.now();
    const code = await Promise.race([run.stop('SIGTERM'), new Promise<'hung'>((r) => setTimeout(() => r('hung'), 45_000))]);
    expect({ code, processes: await postgresProcessesUnder(dataDir) }).toEqual({ code: 0, processes: [] });
    expect(Date.now() - stopped).toBeLessThan(45_000);
  }, 180_000);
});
