/**
 * The local-mode lock: one `npm start` per data directory. The lock file holds the owner's pid
 * and URL; a second start finds it, sees the owner is alive and says where it runs. A lock left
 * by a process that died is taken over.
 *
 * @example
 * ```ts
 * const lock = await acquireLocalLock('.local/local.lock'); // throws AlreadyRunningError
 * await lock.update({ url: 'http://127.0.0.1:3000' });
 * await lock.release();
 * ```
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { z } from 'zod';

/** Another live process holds the lock. */
export class AlreadyRunningError extends Error {
  override readonly name = 'AlreadyRunningError';
  constructor(
    readonly pid: number,
    readonly url: string | undefined,
    readonly path: string,
  ) {
    super(`local mode is already running (pid ${pid}${url ? `, ${url}` : ''}); stop it first (Ctrl-C in its terminal, or kill ${pid}), or give this one another --data-dir (lock: ${path})`);
  }
}

const lockSchema = z.object({ pid: z.number().int().positive(), url: z.string().optional(), startedAt: z.string() });
type LockContent = z.infer<typeof lockSchema>;

export interface LocalLock {
  update(fields: { url: string }): Promise<void>;
  release(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock at `path` for this process. Throws {@link AlreadyRunningError}. */
export async function acquireLocalLock(path: string): Promise<LocalLock> {
  let content: LockContent = { pid: process.pid, startedAt: new Date().toISOString() };
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(path, JSON.stringify(content), { flag: 'wx' });
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw error;
      const text = await readFile(path, 'utf8').catch(() => '');
      let held: LockContent | undefined;
      try {
        held = lockSchema.parse(JSON.parse(text));
      } catch {
        held = undefined;
      }
      if (held && held.pid !== process.pid && alive(held.pid)) throw new AlreadyRunningError(held.pid, held.url, path);
      // A stale lock (its owner died) or an unreadable one: take it over.
      await rm(path, { force: true });
    }
  }
  let released = false;
  return {
    async update(fields) {
      content = { ...content, ...fields };
      await writeFile(path, JSON.stringify(content));
    },
    async release() {
      if (released) return;
      released = true;
      await rm(path, { force: true });
    },
  };
}
