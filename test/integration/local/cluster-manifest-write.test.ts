/**
 * Writing `cluster.json`, the manifest a first start writes last (with the servers' generated
 * password): a process that dies while writing it must not leave it cut short, which the next
 * start could only refuse (the password lost with it), but leave the first start to be redone.
 * The death is simulated: the write of any file named `cluster.json...` puts half its bytes on
 * disk and then fails, as a write the process did not live to finish.
 */
import { chmod, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type * as FsPromises from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';

const tear = vi.hoisted(() => ({ on: false, refuseDirectorySync: false }));

vi.mock('node:fs/promises', async (importOriginal) => {
  const fs = await importOriginal<typeof FsPromises>();
  const writeFile: typeof FsPromises.writeFile = async (file, data, options) => {
    if (tear.on && typeof file === 'string' && basename(file).startsWith('cluster.json') && typeof data === 'string') {
      await fs.writeFile(file, data.slice(0, Math.floor(data.length / 2)));
      throw new Error(`simulated death while writing ${file}`);
    }
    return fs.writeFile(file, data, options);
  };
  // A filesystem that refuses to flush a directory (EINVAL, as some network and FUSE ones do).
  const open: typeof FsPromises.open = async (file, flags, mode) => {
    const handle = await fs.open(file, flags, mode);
    if (!tear.refuseDirectorySync || !(await handle.stat()).isDirectory()) return handle;
    const refusedSync = (): Promise<void> => Promise.reject(Object.assign(new Error(`EINVAL: invalid argument, fsync '${String(file)}'`), { code: 'EINVAL', errno: -22, syscall: 'fsync' }));
    return new Proxy(handle, {
      get(target, key) {
        if (key === 'sync') return refusedSync;
        const value: unknown = Reflect.get(target, key);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
  };
  return { ...fs, default: { ...fs, writeFile, open }, writeFile, open };
});

const { startEmbeddedCluster } = await import('../../../functions/adapters/postgres/embedded-cluster.js');

describe('the manifest of a first start', () => {
  let base: string;

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'ca-dms-manifest-'));
    await chmod(base, 0o755);
  });
  afterAll(async () => {
    await rm(base, { recursive: true, force: true });
  });

  it('is never left cut short by a death mid-write: the next start redoes the first start and writes a whole one', async () => {
    const root = join(base, 'pg');
    tear.on = true;
    const died = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 0 }).catch((e: unknown) => e);
    tear.on = false;

    const next = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 0 });
    await next.stop();
    const manifest = JSON.parse(await readFile(join(root, 'cluster.json'), 'utf8')) as Record<string, unknown>;

    expect((died as Error).message).toMatch(/simulated death while writing/);
    expect(next.fresh).toBe(true);
    expect((await readdir(root)).filter((f) => f.startsWith('cluster.json'))).toEqual(['cluster.json']);
    expect(manifest).toMatchObject({ format: 1, shards: 1, replicasPerShard: 0 });
    expect(typeof manifest.password).toBe('string');
  }, 90_000);

  it('completes a first start on a filesystem that refuses to flush a directory, with a whole manifest', async () => {
    const root = join(base, 'no-dir-sync');
    tear.refuseDirectorySync = true;
    const started = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 0 }).catch((e: unknown) => e);
    tear.refuseDirectorySync = false;
    if (!(started instanceof Error)) await (started as Awaited<ReturnType<typeof startEmbeddedCluster>>).stop();
    const manifest = JSON.parse(await readFile(join(root, 'cluster.json'), 'utf8')) as Record<string, unknown>;

    expect(started).not.toBeInstanceOf(Error);
    expect((started as { fresh: boolean }).fresh).toBe(true);
    expect(manifest).toMatchObject({ format: 1, shards: 1, replicasPerShard: 0 });
  }, 90_000);
});
