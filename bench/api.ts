/**
 * Benchmark: every read endpoint of the scaling API in live local mode (`bin/cli.ts start`, as an
 * operator runs it: embedded PostgreSQL shards with replicas, the controller replaying the
 * shipped trace) against a bare node:http server returning the very same bytes, in one run on
 * one machine, with autocannon at 50 connections. Three processes: local mode, the bare server,
 * and autocannon, each in its own, so that neither server shares its CPU with the load
 * generator or with the other. Loopback only; each run is bounded in time.
 *
 * Goal (issue #16, point 8): every read endpoint at least 0.5x the bare server's requests per
 * second, p99 under 50 ms, no error.
 *
 * On a shared machine the load of other work drifts over seconds, which would favour whichever
 * server happened to run in a quiet moment: each endpoint's time is cut into `--rounds` slices
 * that alternate between the two servers, requests per second are summed over the slices, and
 * the p99 shown is the worst slice's. The load average is printed before and after.
 *
 *   npm run bench:api [-- --duration 10 --connections 50 --rounds 4]
 */
import { execFile, spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
import { parseArgs, promisify } from 'node:util';
import { z } from 'zod';
import { startLocalProcess } from '../test/e2e/support/local-process.js';

function readFlags(): Record<string, string | boolean | undefined> {
  try {
    return parseArgs({ options: { duration: { type: 'string' }, connections: { type: 'string' }, rounds: { type: 'string' } }, strict: true }).values;
  } catch (error) {
    // parseArgs names the unknown or malformed option; its stack would say nothing more.
    console.error(`bench:api: ${(error as Error).message}`);
    process.exit(2);
  }
}

const flags = z
  .object({
    duration: z.coerce.number().int().min(1).max(120).default(10),
    connections: z.coerce.number().int().min(1).max(1000).default(50),
    rounds: z.coerce.number().int().min(1).max(20).default(4),
  })
  .refine((a) => a.duration % a.rounds === 0, { message: 'must divide --duration (whole seconds per slice)', path: ['rounds'] })
  .safeParse(readFlags());
if (!flags.success) {
  console.error(`bench:api: ${flags.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
  process.exit(2);
}
const args = flags.data;

interface Figures {
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly errors: number;
  readonly non2xx: number;
}

const AUTOCANNON = createRequire(import.meta.url).resolve('autocannon/autocannon.js');

/** One autocannon run of `seconds` in a child process, its JSON summary read back. */
async function load(url: string, seconds: number): Promise<Figures> {
  const { stdout } = await promisify(execFile)(process.execPath, [AUTOCANNON, '--json', '-c', String(args.connections), '-d', String(seconds), url], { maxBuffer: 16 * 1024 * 1024 });
  const r = JSON.parse(stdout) as { requests: { total: number }; duration: number; latency: { p50: number; p99: number }; errors: number; non2xx: number };
  return { rps: r.requests.total / r.duration, p50: r.latency.p50, p99: r.latency.p99, errors: r.errors, non2xx: r.non2xx };
}

/** Slices of both servers, alternating (which goes first alternates too); the figures of each over all its slices. */
async function alternate(apiUrl: string, bareUrl: string): Promise<[Figures, Figures]> {
  const seconds = args.duration / args.rounds;
  const slices: [Figures[], Figures[]] = [[], []];
  for (let round = 0; round < args.rounds; round++) {
    const order = round % 2 === 0 ? ([0, 1] as const) : ([1, 0] as const);
    for (const which of order) slices[which].push(await load(which === 0 ? apiUrl : bareUrl, seconds));
  }
  const combine = (fs: Figures[]): Figures => ({
    rps: fs.reduce((n, f) => n + f.rps, 0) / fs.length,
    p50: Math.max(...fs.map((f) => f.p50)),
    p99: Math.max(...fs.map((f) => f.p99)),
    errors: fs.reduce((n, f) => n + f.errors, 0),
    non2xx: fs.reduce((n, f) => n + f.non2xx, 0),
  });
  return [combine(slices[0]), combine(slices[1])];
}

const loadAverage = (): string => loadavg().map((l) => l.toFixed(2)).join(' ');

const READ_PATHS = [
  '/status',
  '/metrics',
  '/history?limit=20',
  '/timeseries',
  '/config',
  '/recommendations',
  '/shards/statistics',
  '/shards/health',
  '/shards/rebalance-check',
  '/shards/route?key=user-1',
  '/shards/directory?limit=20',
  '/openapi.json',
].map((p) => `/api/v1/scaling${p}`);

/**
 * The bare server: its own process, answering every request with `body` (read from stdin), with
 * a Content-Length as local mode sends one (chunked framing would cost it a write and a parse
 * that local mode does not pay, and flatter the ratio).
 */
const BARE_SERVER = `
const chunks = [];
process.stdin.on('data', (c) => chunks.push(c));
process.stdin.on('end', () => {
  const body = Buffer.concat(chunks);
  const server = require('node:http').createServer((_req, res) => {
    res.writeHead(200, { 'content-type': process.argv[1], 'cache-control': 'no-store', 'content-length': String(body.length) });
    res.end(body);
  });
  server.listen(0, '127.0.0.1', () => console.log(server.address().port));
});`;

async function bare(body: string, contentType: string): Promise<{ url: string; close: () => void }> {
  const child = spawn(process.execPath, ['-e', BARE_SERVER, contentType], { stdio: ['pipe', 'pipe', 'inherit'] });
  child.stdin.end(body);
  const port = await new Promise<string>((resolve, reject) => {
    child.stdout.once('data', (c: Buffer) => resolve(c.toString('utf8').trim()));
    child.once('exit', (code) => reject(new Error(`the bare server exited (${code}) before listening`)));
  });
  return { url: `http://127.0.0.1:${port}`, close: () => child.kill('SIGTERM') };
}

const local = await startLocalProcess();
try {
  const rows: string[][] = [['endpoint', 'server', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx']];
  const ratios: string[] = [];
  let met = 0;
  const loadBefore = loadAverage();
  for (const path of READ_PATHS) {
    const sample = await fetch(`${local.url}${path}`);
    const bytes = await sample.text();
    if (sample.status !== 200) throw new Error(`GET ${path} answered ${sample.status}: ${bytes}`);
    const plain = await bare(bytes, sample.headers.get('content-type') ?? 'application/json');
    const [api, base] = await alternate(`${local.url}${path}`, plain.url);
    plain.close();
    rows.push([path, 'scaling API (local mode)', api.rps.toFixed(0), String(api.p50), String(api.p99), String(api.errors), String(api.non2xx)]);
    rows.push([path, 'bare node:http, same bytes', base.rps.toFixed(0), String(base.p50), String(base.p99), String(base.errors), String(base.non2xx)]);
    const ratio = api.rps / base.rps;
    const ok = ratio >= 0.5 && api.p99 < 50 && api.errors === 0 && api.non2xx === 0;
    if (ok) met++;
    ratios.push(`${ok ? 'meets ' : 'MISSES'}  ${path}: ${ratio.toFixed(2)}x the bare server's requests per second, p99 ${api.p99} ms (bare ${base.p99} ms)`);
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  console.log(`autocannon in its own process, ${args.connections} connections, ${args.duration} s per server and endpoint in ${args.rounds} alternating slices (p50/p99: the worst slice's), loopback; local mode and the bare server in processes of their own`);
  console.log(`load average (1, 5, 15 min) before: ${loadBefore}; after: ${loadAverage()}; ${cpus().length} cores\n`);
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  '));
  console.log('');
  console.log('Goal: at least 0.5x the bare server and p99 under 50 ms, with no error.');
  for (const line of ratios) console.log(line);
  console.log(`${met} of ${READ_PATHS.length} read endpoints meet the goal.`);
  console.log('\nThe bare server does no work; the ratio is the price of parsing, routing, validation and serving from snapshots while local mode runs its controller and fleet.');
} finally {
  await local.stop('SIGTERM');
  await local.remove();
}
