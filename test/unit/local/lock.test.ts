/**
 * The local-mode lock: one running instance per data directory, stale locks taken over.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyRunningError, acquireLocalLock } from '../../../functions/local/lock.js';

const CONTENDER = join(dirname(fileURLToPath(import.meta.url)), 'fixtures/lock-contender.ts');

/**
 * Runs `count` processes that try the lock at `path` at the same moment; their answers. Each is
 * told to go once all are loaded, and to release what it took once all have answered.
 */
async function race(path: string, count: number): Promise<string[]> {
  const children = Array.from({ length: count }, () => {
    const child = spawn(process.execPath, ['--import', 'tsx', CONTENDER, path], { stdio: ['pipe', 'pipe', 'inherit'] });
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    const nextLine = async (): Promise<string> => {
      const next = await lines.next();
      return next.done ? '(exited without answering)' : next.value;
    };
    const closed = new Promise<void>((r) => child.once('close', () => r()));
    return { child, nextLine, closed };
  });
  try {
    expect(await Promise.all(children.map((c) => c.nextLine()))).toEqual(children.map(() => 'ready'));
    for (const { child } of children) child.stdin.write('go\n');
    return await Promise.all(children.map((c) => c.nextLine()));
  } finally {
    for (const { child } of children) child.stdin.end('release\n');
    await Promise.all(children.map((c) => c.closed));
  }
}

describe('acquireLocalLock', () => {
  let dir: string;
  let path: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ca-dms-lock-'));
    path = join(dir, 'local.lock');
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes this process\'s pid, adds the URL once known, and removes the file on release', async () => {
    const lock = await acquireLocalLock(path);
    await lock.update({ url: 'http://127.0.0.1:3000' });

    expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ pid: process.pid, url: 'http://127.0.0.1:3000' });
    await lock.release();
    await expect(readFile(path, 'utf8')).rejects.toThrow('ENOENT');
  });

  it('refuses while another live process holds the lock, naming its pid and URL', async () => {
    const holder = spawn('sleep', ['30']);
    try {
      await writeFile(path, JSON.stringify({ pid: holder.pid, url: 'http://127.0.0.1:3001', startedAt: new Date().toISOString() }));

      const attempt = acquireLocalLock(path);

      await expect(attempt).rejects.toBeInstanceOf(AlreadyRunningError);
      await expect(acquireLocalLock(path)).rejects.toThrow(`local mode is already running (pid ${holder.pid}, http://127.0.0.1:3001)`);
    } finally {
      holder.kill();
    }
  });

  it('takes over a lock whose process is gone', async () => {
    const gone = spawn('true');
    await new Promise((r) => gone.once('exit', r));
    await writeFile(path, JSON.stringify({ pid: gone.pid, startedAt: new Date().toISOString() }));

    const lock = await acquireLocalLock(path);

    expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ pid: process.pid });
    expect(lock.replaced).toContain(`cleared the lock of an earlier run that did not stop cleanly (pid ${gone.pid}`);
    await lock.release();
  });

  it('takes over a lock whose pid now belongs to another process (started after the lock was written)', async () => {
    const other = spawn('sleep', ['30']);
    try {
      await writeFile(path, JSON.stringify({ pid: other.pid, procStart: '1', startedAt: new Date().toISOString() }));

      const lock = await acquireLocalLock(path);

      expect(lock.replaced).toContain(`pid ${other.pid}`);
      await lock.release();
    } finally {
      other.kill();
    }
  });

  it('takes over a lock whose process has exited but not been reaped yet (a zombie)', async () => {
    // A parent that never reaps (a shell that exec'ed `sleep`): its exited child stays a zombie, and kill(pid, 0) still succeeds on it.
    const parent = spawn('bash', ['-c', 'sleep 0.3 & echo $!; exec sleep 30'], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      const pid = Number(await new Promise<string>((r) => parent.stdout.once('data', (c: Buffer) => r(c.toString('utf8')))));
      const stat = (): string => readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '');
      await expect.poll(() => stat().charAt(0)).toBe('Z');
      await writeFile(path, JSON.stringify({ pid, procStart: stat().split(' ')[19], startedAt: new Date().toISOString() }));

      const lock = await acquireLocalLock(path);

      expect(lock.replaced).toContain(`cleared the lock of an earlier run that did not stop cleanly (pid ${pid}`);
      await lock.release();
    } finally {
      parent.kill('SIGKILL');
    }
  });

  it('lets exactly one of several starts that find the same stale lock at once take it over', async () => {
    const gone = spawn('true');
    await new Promise((r) => gone.once('exit', r));
    const rounds: string[][] = [];
    for (let round = 0; round < 2; round++) {
      await writeFile(path, JSON.stringify({ pid: gone.pid, startedAt: new Date().toISOString() }));
      rounds.push((await race(path, 4)).sort());
    }

    expect(rounds).toEqual(Array.from({ length: 2 }, () => ['acquired', 'refused AlreadyRunningError', 'refused AlreadyRunningError', 'refused AlreadyRunningError']));
  }, 60_000);

  it('says nothing was replaced when there was no lock', async () => {
    const lock = await acquireLocalLock(path);

    expect(lock.replaced).toBeUndefined();
    await lock.release();
  });
});
