/**
 * `npm run bench:startup`: how long `npm start` takes from launch to a ready API, with fresh data
 * (initdb, replicas from base backups, migrations, seeding) and on kept data (a restart), and how
 * long a SIGTERM takes to leave no PostgreSQL process behind. The goal is a ready API within
 * 15 s from fresh data on this machine.
 *
 * Each run starts the CLI as a child process (as an operator would) with `--port 0` (it binds a
 * free loopback port first and prints it) and a fresh temporary data directory, polls `GET /api/v1/scaling/status` until it answers 200, then
 * stops it with SIGTERM.
 *
 *   npm run bench:startup -- [--runs N] [--shards N] [--replicas N]
 */
import { spawn } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { z } from 'zod';

const GOAL_SECONDS = 15;
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const flags = z.object({
  runs: z.coerce.number().int().min(1).max(10).default(3),
  shards: z.coerce.number().int().min(1).max(8).default(2),
  replicas: z.coerce.number().int().min(0).max(3).default(1),
});

function parse(argv: string[]): z.output<typeof flags> {
  const { values } = parseArgs({ args: argv, options: { runs: { type: 'string' }, shards: { type: 'string' }, replicas: { type: 'string' } }, strict: true });
  const parsed = flags.safeParse(values);
  if (!parsed.success) throw new Error(`bench:startup: ${parsed.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

interface Timing {
  readonly readyMs: number;
  readonly stopMs: number;
}

/** Starts local mode, waits for a 200 from /status, stops it; returns both durations. */
async function startOnce(dataDir: string, extra: readonly string[]): Promise<Timing> {
  const started = performance.now();
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'bin/cli.ts'), 'start', '--port', '0', '--data-dir', dataDir, ...extra], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (c: Buffer) => (output += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (output += c.toString('utf8')));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let readyMs: number | undefined;
  while (readyMs === undefined) {
    if (child.exitCode !== null) throw new Error(`local mode exited (${child.exitCode}) before its API was ready:\n${output}`);
    // Until the port is bound and printed there is nothing to ask; after, a 503 says "starting".
    const url = /listening on (http:\/\/127\.0\.0\.1:\d+) /.exec(output)?.[1];
    const ok = url !== undefined && (await fetch(`${url}/api/v1/scaling/status`).then((r) => r.status === 200, () => false));
    if (ok) readyMs = performance.now() - started;
    else await new Promise((r) => setTimeout(r, 50));
    if (performance.now() - started > 120_000) {
      child.kill('SIGTERM');
      throw new Error(`local mode was not ready within 120 s:\n${output}`);
    }
  }
  const stopping = performance.now();
  child.kill('SIGTERM');
  const code = await exited;
  if (code !== 0) throw new Error(`local mode exited ${code} on SIGTERM:\n${output}`);
  return { readyMs, stopMs: performance.now() - stopping };
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};

async function main(): Promise<void> {
  const opts = parse(process.argv.slice(2));
  const extra = ['--shards', String(opts.shards), '--replicas', String(opts.replicas)];
  const fresh: Timing[] = [];
  const reused: Timing[] = [];
  for (let i = 0; i < opts.runs; i++) {
    const dir = await mkdtemp(join(tmpdir(), 'ca-dms-bench-startup-'));
    // mkdtemp makes it 0700; the postgres OS user must enter it.
    await chmod(dir, 0o755);
    try {
      fresh.push(await startOnce(dir, extra));
      reused.push(await startOnce(dir, extra));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    process.stdout.write(`run ${i + 1}: fresh ${(fresh[i]!.readyMs / 1000).toFixed(2)} s, restart ${(reused[i]!.readyMs / 1000).toFixed(2)} s\n`);
  }
  const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
  const freshMedian = median(fresh.map((t) => t.readyMs));
  const lines = [
    '',
    `npm start to a ready API (${opts.shards} shard(s) x (primary + ${opts.replicas} replica(s)) + catalog, 200 demo users), ${opts.runs} run(s), median (min-max):`,
    `  fresh data      ${s(freshMedian)} (${s(Math.min(...fresh.map((t) => t.readyMs)))}-${s(Math.max(...fresh.map((t) => t.readyMs)))})   goal < ${GOAL_SECONDS} s: ${freshMedian < GOAL_SECONDS * 1000 ? 'MET' : 'MISSED'}`,
    `  kept data       ${s(median(reused.map((t) => t.readyMs)))} (${s(Math.min(...reused.map((t) => t.readyMs)))}-${s(Math.max(...reused.map((t) => t.readyMs)))})`,
    `  SIGTERM to exit ${s(median([...fresh, ...reused].map((t) => t.stopMs)))} (every PostgreSQL server stopped)`,
    '',
  ];
  process.stdout.write(lines.join('\n'));
}

await main();
