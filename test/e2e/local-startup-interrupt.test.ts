/**
 * A stop signal during a first start's initdb: the start-up gets its grace, then the CLI exits;
 * initdb (and the PostgreSQL processes it runs) must not outlive it, writing on into the data
 * directory of a run that is over. Held with SIGSTOP to stand for an initdb slower than the grace
 * (a loaded machine, a slow disk).
 */
import { readdirSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { descendantsOf, eventually, procFile, startLocalProcess, type LocalProcess } from './support/local-process.js';

/** Processes (not zombies) whose command line names a path under `dir`. */
function processesNaming(dir: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = procFile(`/proc/${entry}/cmdline`).split('\0');
    if (!argv.some((a) => a.startsWith(dir) || a.startsWith(`--pgdata=${dir}`))) continue;
    const stat = procFile(`/proc/${entry}/stat`);
    const state = stat.slice(stat.lastIndexOf(')') + 2).charAt(0);
    if (state !== '' && state !== 'Z') pids.push(Number(entry));
  }
  return pids;
}

describe('a stop signal during the initdb of a first start', () => {
  const runs: LocalProcess[] = [];
  const held: number[] = [];

  afterAll(async () => {
    for (const pid of held) {
      try {
        process.kill(pid, 'SIGCONT');
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone already: what the test expects.
      }
    }
    for (const run of runs) await run.stop('SIGKILL');
    for (const run of runs) await run.remove();
  });

  it('leaves no initdb nor any process of it running once the CLI has exited past the grace', async () => {
    const run = await startLocalProcess({ args: ['--shards', '1', '--replicas', '0', '--seed-users', '0'], waitForBanner: false });
    runs.push(run);
    const initdb = await eventually(
      async () => (await descendantsOf(run.child.pid as number)).find((p) => p.cmdline.includes('/initdb ') && p.cmdline.includes(run.dataDir)),
      60_000,
      'initdb under the CLI',
    );
    process.kill(initdb.pid, 'SIGSTOP');
    held.push(initdb.pid);

    run.child.kill('SIGINT');
    const code = await run.exited;
    const left = await eventually(async () => {
      const pids = processesNaming(run.dataDir);
      return pids.length === 0 ? pids : undefined;
    }, 5_000, 'no process naming the data directory').catch((e: unknown) => e);

    expect(code).toBe(1);
    expect(run.output()).toContain('interrupted during start-up');
    expect(left).toEqual([]);
  }, 90_000);
});
