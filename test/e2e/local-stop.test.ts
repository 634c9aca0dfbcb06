/**
 * `npm start` from a bare clone (nothing beside it: the default trace ships in the repository),
 * stopped every way an operator or a supervisor does: each stop ends every PostgreSQL server of
 * the run (found by data directory in /proc) and removes the lock within 10 s, and the next start
 * on the same data works. Runs one small cluster (1 shard, 1 replica) started through the real
 * `npm start`, again and again on the same data directory.
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { bareCopy, eventually, postgresProcessesUnder, startLocalProcess, tempDataDir, type LocalProcess } from './support/local-process.js';

const SMALL = ['--shards', '1', '--replicas', '1', '--seed-users', '0'];
/** The bound: every server the run started is gone within 10 s of the signal. */
const STOP_BOUND_MS = 10_000;

type Target = 'group' | 'npm' | 'node';
const CASES: ReadonlyArray<{ how: string; target: Target; signal: NodeJS.Signals }> = [
  { how: 'Ctrl-C (SIGINT to the process group)', target: 'group', signal: 'SIGINT' },
  { how: 'SIGINT to the npm process', target: 'npm', signal: 'SIGINT' },
  { how: 'SIGTERM to the npm process', target: 'npm', signal: 'SIGTERM' },
  { how: 'SIGINT to the node process', target: 'node', signal: 'SIGINT' },
  { how: 'SIGTERM to the node process', target: 'node', signal: 'SIGTERM' },
  { how: 'SIGTERM to the process group', target: 'group', signal: 'SIGTERM' },
  { how: 'the terminal closing (SIGHUP to the process group)', target: 'group', signal: 'SIGHUP' },
];

async function signalRun(run: LocalProcess, target: Target, signal: NodeJS.Signals): Promise<void> {
  const npmPid = run.child.pid as number;
  if (target === 'group') process.kill(-npmPid, signal);
  else if (target === 'npm') process.kill(npmPid, signal);
  else process.kill(await run.nodePid(), signal);
}

describe('stopping npm start', () => {
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

  it('starts from a bare clone with nothing beside it, replaying the NASA trace shipped in the repository', async () => {
    const run = await start();

    expect(existsSync(join(repo, '..', 'shared'))).toBe(false);
    expect(run.output()).toMatch(/Workload\s+nasa-http-1995-requests-per-minute\.csv at 60x/);
    expect(await run.stop('SIGTERM')).toBe(0);
  }, 120_000);

  it.each(CASES)('$how stops every PostgreSQL server of the run and removes the lock', async ({ target, signal }) => {
    const run = await start();
    expect(await postgresProcessesUnder(dataDir)).toHaveLength(3);

    await signalRun(run, target, signal);

    await eventually(
      async () => ((await postgresProcessesUnder(dataDir)).length === 0 && !existsSync(join(dataDir, 'local.lock')) ? true : undefined),
      STOP_BOUND_MS,
      `no PostgreSQL process and no lock after ${signal} to ${target}`,
    );
    await run.exited;
    expect(run.output()).toContain('stopped; data kept in');
  }, 120_000);

  it('shuts the servers down when node is killed outright, and the next start clears its lock with a message', async () => {
    const killed = await start();
    process.kill(await killed.nodePid(), 'SIGKILL');

    await eventually(async () => ((await postgresProcessesUnder(dataDir)).length === 0 ? true : undefined), STOP_BOUND_MS, 'no PostgreSQL process after SIGKILL');
    await killed.exited;
    expect(existsSync(join(dataDir, 'local.lock'))).toBe(true);

    const next = await start();
    expect(next.output()).toMatch(/cleared the lock of an earlier run that did not stop cleanly \(pid \d+/);
    expect(await next.stop('SIGTERM')).toBe(0);
  }, 120_000);
});
