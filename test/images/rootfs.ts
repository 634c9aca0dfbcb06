/**
 * Runs a built container image without a container runtime: `podman run` needs cgroups these
 * machines do not give it, so the image is exported to a directory and its entry point started
 * with `unshare` (a private mount namespace) and `chroot`, as the image's own user, on the host's
 * network. What ECS does to a task is reproduced where the tests depend on it: the root
 * filesystem is read-only (the task definitions set `readonlyRootFilesystem`), each writable
 * path is a fresh volume that, like Fargate's bind mounts, carries the image's contents and
 * owner only where the image declares that path a `VOLUME` (otherwise an empty directory owned
 * by root), and the process's stdout/stderr belong to its user (as runc arranges), so
 * `/dev/stdout` can be reopened. Needs root and util-linux; used by `npm run test:images` only.
 *
 * @example
 * ```ts
 * const image = exportImage('localhost/ca-dms-nginx:ci', '/tmp/images');
 * const run = startImage(image, { env: { NGINX_LISTEN_PORT: '18080' }, writablePaths: ['/etc/nginx', '/run'] });
 * // ... send requests to 127.0.0.1:18080 ...
 * await run.stop();
 * ```
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { freeLoopbackPort } from '../../functions/adapters/net/free-port.js';

/** What the tests need to know of an exported image. */
export interface ExportedImage {
  readonly name: string;
  /** The image's filesystem, extracted. */
  readonly rootfs: string;
  readonly uid: number;
  readonly gid: number;
  readonly entrypoint: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  /** Paths the image declares with `VOLUME`. */
  readonly volumes: readonly string[];
  readonly stopSignal: string | undefined;
  readonly exposedPorts: readonly string[];
}

const inspectSchema = z.array(
  z.object({
    Config: z.object({
      User: z.string().default(''),
      Entrypoint: z.array(z.string()).nullish(),
      Cmd: z.array(z.string()).nullish(),
      Env: z.array(z.string()).nullish(),
      Volumes: z.record(z.string(), z.unknown()).nullish(),
      ExposedPorts: z.record(z.string(), z.unknown()).nullish(),
      StopSignal: z.string().nullish(),
    }),
  }),
).length(1);

function podman(args: readonly string[]): string {
  const res = spawnSync('podman', ['--cgroup-manager=cgroupfs', ...args], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (res.error) throw new Error(`podman ${args[0] ?? ''} could not start: ${res.error.message}`);
  if (res.status !== 0) throw new Error(`podman ${args.join(' ')} exited with ${res.status}: ${res.stderr}`);
  return res.stdout.trim();
}

/** Resolves a `USER` of the form `uid[:gid]` or `name[:group]` against the image's own files. */
function resolveUser(user: string, rootfs: string): { uid: number; gid: number } {
  if (user === '') return { uid: 0, gid: 0 };
  const [u = '', g] = user.split(':');
  const lookup = (file: string, name: string, field: number): number | undefined => {
    const line = readFileSync(join(rootfs, 'etc', file), 'utf8')
      .split('\n')
      .find((l) => l.split(':')[0] === name);
    const value = line?.split(':')[field];
    return value === undefined ? undefined : Number(value);
  };
  const uid = /^\d+$/.test(u) ? Number(u) : lookup('passwd', u, 2);
  if (uid === undefined) throw new Error(`the image's USER "${user}" names no account in its /etc/passwd`);
  const gid = g === undefined ? (lookup('passwd', u, 3) ?? uid) : /^\d+$/.test(g) ? Number(g) : lookup('group', g, 2);
  if (gid === undefined) throw new Error(`the image's USER "${user}" names no group in its /etc/group`);
  return { uid, gid };
}

/**
 * Exports `name` (an image podman has) into a new directory under `parent`: its filesystem and
 * its configuration.
 */
export function exportImage(name: string, parent: string): ExportedImage {
  const [inspected] = inspectSchema.parse(JSON.parse(podman(['image', 'inspect', name])));
  const config = inspected!.Config;
  const dir = mkdtempSync(join(parent, 'image-'));
  const rootfs = join(dir, 'rootfs');
  mkdirSync(rootfs);
  const container = podman(['create', name]);
  try {
    const tar = join(dir, 'rootfs.tar');
    podman(['export', '--output', tar, container]);
    const untar = spawnSync('tar', ['-xf', tar, '-C', rootfs, '--numeric-owner'], { encoding: 'utf8' });
    if (untar.status !== 0) throw new Error(`tar could not extract ${name}: ${untar.stderr}`);
    rmSync(tar);
  } finally {
    podman(['rm', container]);
  }
  return {
    name,
    rootfs,
    ...resolveUser(config.User, rootfs),
    entrypoint: [...(config.Entrypoint ?? []), ...(config.Cmd ?? [])],
    env: Object.fromEntries((config.Env ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])),
    volumes: Object.keys(config.Volumes ?? {}).sort(),
    stopSignal: config.StopSignal ?? undefined,
    exposedPorts: Object.keys(config.ExposedPorts ?? {}).sort(),
  };
}

/** One started entry point. */
export interface RunningImage {
  readonly child: ChildProcess;
  /** Settles with the exit code (null when a signal ended it). */
  readonly exited: Promise<number | null>;
  /** Where the process's stdout and stderr go. */
  readonly stdoutPath: string;
  readonly stderrPath: string;
  /** The host directory behind each writable path, by container path. */
  readonly volumes: Readonly<Record<string, string>>;
  /** Sends `signal` (SIGTERM by default), waits for the exit, and removes the volumes. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export interface StartImageOptions {
  /** Added to the image's own environment. */
  readonly env?: Readonly<Record<string, string>>;
  /** The task's writable paths (the ECS volumes). */
  readonly writablePaths: readonly string[];
  /** Runs this instead of the image's entry point (as ECS runs a health check command). */
  readonly command?: readonly string[];
  /** Files written into the writable volumes before the start, by their path in the container. */
  readonly files?: Readonly<Record<string, string>>;
}

const shellQuote = (s: string): string => `'${s.replaceAll("'", "'\\''")}'`;

/**
 * Starts the image's entry point as its user, with a read-only root filesystem and a fresh
 * volume at each of `writablePaths`.
 */
export function startImage(image: ExportedImage, options: StartImageOptions): RunningImage {
  const dir = mkdtempSync(join(image.rootfs, '..', 'run-'));
  const root = join(dir, 'root');
  mkdirSync(root);
  const volumes: Record<string, string> = {};
  options.writablePaths.forEach((path, i) => {
    const volume = join(dir, `volume-${i}`);
    const inImage = join(image.rootfs, path);
    if (image.volumes.includes(path) && existsSync(inImage)) {
      // cp -a: owners and modes of the contents too, which node's cpSync does not keep.
      const copy = spawnSync('cp', ['-a', inImage, volume], { encoding: 'utf8' });
      if (copy.status !== 0) throw new Error(`cp -a ${inImage} failed: ${copy.stderr}`);
    } else {
      mkdirSync(volume, { mode: 0o755 });
      chownSync(volume, 0, 0);
    }
    if (!existsSync(inImage)) throw new Error(`${path} does not exist in ${image.name}: ECS could not mount a volume there`);
    volumes[path] = volume;
  });
  for (const [path, content] of Object.entries(options.files ?? {})) {
    const mount = options.writablePaths.find((p) => path.startsWith(`${p}/`));
    if (mount === undefined) throw new Error(`${path} is under none of the writable paths (${options.writablePaths.join(', ')})`);
    const file = join(volumes[mount] ?? '', path.slice(mount.length));
    writeFileSync(file, content);
    chownSync(file, image.uid, image.gid);
  }
  const stdoutPath = join(dir, 'stdout.log');
  const stderrPath = join(dir, 'stderr.log');
  const fds = [stdoutPath, stderrPath].map((p) => {
    const fd = openSync(p, 'w');
    chownSync(p, image.uid, image.gid);
    return fd;
  });
  const mounts = [
    `mount --bind ${shellQuote(image.rootfs)} ${shellQuote(root)}`,
    `mount -o remount,bind,ro ${shellQuote(root)}`,
    ...Object.entries(volumes).map(([path, volume]) => `mount --bind ${shellQuote(volume)} ${shellQuote(join(root, path))}`),
    `mount --rbind /dev ${shellQuote(join(root, 'dev'))}`,
    `mount -t proc proc ${shellQuote(join(root, 'proc'))}`,
  ];
  const env = { ...image.env, ...options.env };
  const script = [
    'set -e',
    ...mounts,
    // exec all the way down: the child's pid becomes the entry point's, as PID 1 of a container.
    `exec env -i ${Object.entries(env)
      .map(([k, v]) => shellQuote(`${k}=${v}`))
      .join(' ')} chroot --userspec=${image.uid}:${image.gid} ${shellQuote(root)} ${(options.command ?? image.entrypoint).map(shellQuote).join(' ')}`,
  ].join('\n');
  // unshare --mount makes the mounts private to this process tree: they vanish with it.
  const child = spawn('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', script], {
    stdio: ['ignore', fds[0]!, fds[1]!],
  });
  for (const fd of fds) closeSync(fd);
  const exited = new Promise<number | null>((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once('exit', (code) => resolve(code));
  });
  return {
    child,
    exited,
    stdoutPath,
    stderrPath,
    volumes,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
      return child.exitCode;
    },
  };
}

/** The real and effective uids of a process, from /proc. */
export function uidsOf(pid: number): number[] {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Uid:'));
  return (line ?? '').split(/\s+/).slice(1, 3).map(Number);
}

/**
 * Waits until `probe` resolves true, failing with the process's stderr if it exits first or
 * 60 s pass (starting a node process on a loaded CI machine has taken over 10 s).
 */
export async function waitUntil(run: RunningImage, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (await probe()) return;
    if (run.child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`the image did not come up: ${readFileSync(run.stderrPath, 'utf8')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The inodes of the TCP sockets listening on `port` at any local address (host network). */
function listeningInodes(port: number): Set<string> {
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!existsSync(table)) continue;
    // Columns: sl local_address rem_address st ... inode; addresses are HEX_IP:HEX_PORT, 0A is LISTEN.
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      const local = fields[1] ?? '';
      if (fields[3] === '0A' && Number.parseInt(local.slice(local.lastIndexOf(':') + 1), 16) === port && fields[9] !== undefined) inodes.add(fields[9]);
    }
  }
  return inodes;
}

/**
 * Whether process `pid` itself holds a socket listening on `port`: a connection to the port only
 * proves that some process listens there, possibly another one that was handed the same port.
 */
export function holdsListener(pid: number, port: number): boolean {
  const inodes = listeningInodes(port);
  if (inodes.size === 0) return false;
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false; // the process has exited
  }
  return fds.some((fd) => {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      return target.startsWith('socket:[') && inodes.has(target.slice('socket:['.length, -1));
    } catch {
      return false; // closed meanwhile
    }
  });
}

/** What a server in an image says when its port is taken: nginx's failed bind(), Node.js's EADDRINUSE. */
const PORT_TAKEN = /address already in use|EADDRINUSE/i;

/** An image started by {@link startImageOnPorts}, and the ports it listens on, by name. */
export interface ImageOnPorts<K extends string> {
  readonly run: RunningImage;
  readonly ports: Readonly<Record<K, number>>;
}

/** How many times an image is started on fresh ports when a chosen one was taken meanwhile. */
const PORT_ATTEMPTS = 5;

/**
 * Starts `image` with `options(ports)` on free loopback ports, one for each of `names`, and waits
 * until its own process listens on every one of them. A free port is only free when chosen: an
 * image takes seconds to bind, meanwhile another test process (the other vitest worker, its
 * PostgreSQL or nginx) may be handed the same port and bind it, and a request to the port would
 * reach that process instead. So the listening socket must be the image's own (from /proc), and
 * when the image reports its port in use, it is stopped and started again on fresh ports.
 * `choosePort` replaces the chooser (for the test of that).
 *
 * @example
 * ```ts
 * const { run, ports } = await startImageOnPorts(image, ['port'], ({ port }) => ({ env: { PORT: String(port) }, writablePaths: ['/tmp'] }));
 * ```
 */
export async function startImageOnPorts<K extends string>(
  image: ExportedImage,
  names: readonly K[],
  options: (ports: Readonly<Record<K, number>>) => StartImageOptions,
  { choosePort = freeLoopbackPort }: { choosePort?: () => Promise<number> } = {},
): Promise<ImageOnPorts<K>> {
  for (let attempt = 1; ; attempt += 1) {
    const ports = {} as Record<K, number>;
    for (const name of names) ports[name] = await choosePort();
    const run = startImage(image, options(ports));
    const pid = run.child.pid ?? -1;
    const taken = (): boolean => PORT_TAKEN.test(readFileSync(run.stderrPath, 'utf8'));
    let up: boolean;
    try {
      await waitUntil(run, async () => taken() || names.every((name) => holdsListener(pid, ports[name])));
      up = !taken();
    } catch (error) {
      // It exited or never bound; exiting because a port was taken is the case retried.
      if (!taken()) {
        await run.stop('SIGKILL');
        throw error;
      }
      up = false;
    }
    if (up) return { run, ports };
    const stderr = readFileSync(run.stderrPath, 'utf8');
    await run.stop('SIGKILL');
    if (attempt >= PORT_ATTEMPTS) throw new Error(`${image.name} found a chosen port taken on each of ${PORT_ATTEMPTS} starts: ${stderr}`);
  }
}
