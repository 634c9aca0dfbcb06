/**
 * The local-mode lock: one `npm start` per data directory. The lock file holds the owner's pid,
 * its process start time and URL; a second start finds it, sees the owner is alive and says where
 * it runs. A lock left by a process that died (or whose pid now belongs to another process) is
 * taken over, and the new lock says so (`replaced`) so the operator is told.
 *
 * @example
 * ```ts
 * const lock = await acquireLocalLock('.local/local.lock'); // throws AlreadyRunningError
 * await lock.update({ url: 'http://127.0.0.1:3000' });
 * await lock.release();
 * ```
 */
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { link, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { resolve } from 'node:path';
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

const lockSchema = z.object({ pid: z.number().int().positive(), procStart: z.string().optional(), url: z.string().optional(), startedAt: z.string() });
type LockContent = z.infer<typeof lockSchema>;

export interface LocalLock {
  /** When this lock replaced a stale one: a sentence saying whose (for the operator). */
  readonly replaced: string | undefined;
  update(fields: { url: string }): Promise<void>;
  release(): Promise<void>;
  /** For the last moments of a process that exits without its event loop. */
  releaseSync(): void;
}

/** A process's start time in clock ticks since boot (Linux), to tell a recycled pid from its first owner. */
function processStart(pid: number | 'self'): string | undefined {
  try {
    // Field 22 of /proc/PID/stat; the command name (field 2) may hold spaces, so count after its ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Whether `pid` has exited and waits only to be reaped (Linux): kill(pid, 0) still succeeds on it. */
function zombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.charAt(stat.lastIndexOf(')') + 2) === 'Z';
  } catch {
    return false;
  }
}

function alive(owner: LockContent): boolean {
  try {
    process.kill(owner.pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // An owner that died under a parent that has not reaped it yet (or never will) holds nothing.
  if (zombie(owner.pid)) return false;
  const start = owner.procStart === undefined ? undefined : processStart(owner.pid);
  return start === undefined || start === owner.procStart;
}

/** How often, and how long apart, a start tries again while another process is taking over a stale lock. */
const TAKEOVER_ATTEMPTS = 100;
const TAKEOVER_PAUSE_MS = 20;

/**
 * Holds a Linux abstract-namespace socket named after the lock file while a stale lock is taken
 * over, so two starts that both found it stale do not both take it (each removing the other's new
 * lock). Resolves to undefined when another process holds it. The kernel releases it when its
 * process dies, however it dies: it can never be left stale itself.
 */
async function takeoverMutex(path: string): Promise<{ close(done: () => void): unknown } | undefined> {
  // Abstract sockets are Linux's: elsewhere a takeover goes unguarded, as it did before.
  if (process.platform !== 'linux') return { close: (done: () => void) => done() };
  const name = `\0ca-dms-scaling-lock-takeover:${createHash('sha256').update(resolve(path)).digest('hex')}`;
  const server = createServer();
  server.unref();
  return new Promise((resolveMutex, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => (error.code === 'EADDRINUSE' ? resolveMutex(undefined) : reject(error)));
    server.listen({ path: name }, () => resolveMutex(server));
  });
}

/**
 * Creates `path` holding `text`, failing with EEXIST when it exists: through a file of our own
 * linked into place, so a reader never finds the lock empty or half-written (and takes such a
 * lock for an unreadable one, to be taken over).
 */
async function createWhole(path: string, text: string): Promise<void> {
  const own = `${path}.${process.pid}.tmp`;
  await writeFile(own, text);
  try {
    await link(own, path);
  } finally {
    await rm(own, { force: true });
  }
}

/** Replaces `path` with `text` at once (a rename), for the same reason as {@link createWhole}. */
async function replaceWhole(path: string, text: string): Promise<void> {
  const own = `${path}.${process.pid}.tmp`;
  await writeFile(own, text);
  await rename(own, path);
}

/** Takes the lock at `path` for this process. Throws {@link AlreadyRunningError}. */
export async function acquireLocalLock(path: string): Promise<LocalLock> {
  const procStart = processStart('self');
  let content: LockContent = { pid: process.pid, ...(procStart === undefined ? {} : { procStart }), startedAt: new Date().toISOString() };
  let replaced: string | undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      await createWhole(path, JSON.stringify(content));
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= TAKEOVER_ATTEMPTS) throw error;
    }
    const mutex = await takeoverMutex(path);
    if (!mutex) {
      // Another start is taking the stale lock over: once it has, its lock is live.
      await new Promise((r) => setTimeout(r, TAKEOVER_PAUSE_MS));
      continue;
    }
    try {
      // Read under the mutex: a lock another start took over a moment ago is live, not stale.
      const text = await readFile(path, 'utf8').catch(() => undefined);
      if (text === undefined) continue;
      let held: LockContent | undefined;
      try {
        held = lockSchema.parse(JSON.parse(text));
      } catch {
        held = undefined;
      }
      if (held && held.pid !== process.pid && alive(held)) throw new AlreadyRunningError(held.pid, held.url, path);
      // A stale lock (its owner died) or an unreadable one: take it over.
      replaced = held
        ? `cleared the lock of an earlier run that did not stop cleanly (pid ${held.pid}, started ${held.startedAt}; that process is gone): ${path}`
        : `cleared an unreadable lock file: ${path}`;
      await rm(path, { force: true });
      try {
        await createWhole(path, JSON.stringify(content));
        break;
      } catch (error) {
        // Another start created it meanwhile (it found no lock at all): asked again, it is live.
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
    } finally {
      await new Promise<void>((r) => mutex.close(() => r()));
    }
  }
  let released = false;
  return {
    replaced,
    async update(fields) {
      content = { ...content, ...fields };
      await replaceWhole(path, JSON.stringify(content));
    },
    async release() {
      if (released) return;
      released = true;
      await rm(path, { force: true });
    },
    releaseSync() {
      if (released) return;
      released = true;
      rmSync(path, { force: true });
    },
  };
}
