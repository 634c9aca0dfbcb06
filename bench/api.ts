/**
 * Benchmark: the scaling API through the local adapter (node:http -> API Gateway event ->
 * Lambda handler -> route -> real PostgreSQL) against a bare node:http server that returns the
 * very same bytes, for every read endpoint, in one run on one machine, with autocannon at 50
 * connections. autocannon runs in its own process: inside the measured one it would take half
 * of its CPU and flatter the ratio. Loopback only; each run is bounded in time.
 *
 * Goal (issue #16): every read endpoint at least 0.5x the bare server's requests per second,
 * p99 under 50 ms.
 *
 *   npm run bench:api [-- --duration 10 --connections 50]
 */
import '../test/support/quiet-powertools.js';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs, promisify } from 'node:util';
import { z } from 'zod';
import { startApiHarness } from '../test/integration/api/harness.js';

const args = z
  .object({ duration: z.coerce.number().int().min(1).max(120).default(10), connections: z.coerce.number().int().min(1).max(1000).default(50) })
  .parse(parseArgs({ options: { duration: { type: 'string' }, connections: { type: 'string' } } }).values);

interface Figures {
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly errors: number;
  readonly non2xx: number;
}

const AUTOCANNON = createRequire(import.meta.url).resolve('autocannon/autocannon.js');

/** One autocannon run in a child process, its JSON summary read back. */
async function load(url: string): Promise<Figures> {
  const { stdout } = await promisify(execFile)(process.execPath, [AUTOCANNON, '--json', '-c', String(args.connections), '-d', String(args.duration), url], { maxBuffer: 16 * 1024 * 1024 });
  const r = JSON.parse(stdout) as { requests: { average: number }; latency: { p50: number; p99: number }; errors: number; non2xx: number };
  return { rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, errors: r.errors, non2xx: r.non2xx };
}

const READ_PATHS = [
  '/status',
  '/metrics',
  '/history?limit=20',
  '/config',
  '/recommendations',
  '/shards/statistics',
  '/shards/health',
  '/shards/rebalance-check',
  '/shards/route?key=user-1',
  '/openapi.json',
].map((p) => `/api/v1/scaling${p}`);

async function bare(body: string, contentType: string): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-store' });
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

const harness = await startApiHarness();
try {
  await harness.controller.evaluate({ trigger: 'schedule' });
  const rows: string[][] = [['endpoint', 'server', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx']];
  const ratios: string[] = [];
  let met = 0;
  for (const path of READ_PATHS) {
    const sample = await fetch(`${harness.url}${path}`);
    const bytes = await sample.text();
    const api = await load(`${harness.url}${path}`);
    const plain = await bare(bytes, sample.headers.get('content-type') ?? 'application/json');
    const base = await load(plain.url);
    await plain.close();
    rows.push([path, 'scaling API (local adapter)', api.rps.toFixed(0), String(api.p50), String(api.p99), String(api.errors), String(api.non2xx)]);
    rows.push([path, 'bare node:http, same bytes', base.rps.toFixed(0), String(base.p50), String(base.p99), String(base.errors), String(base.non2xx)]);
    const ratio = api.rps / base.rps;
    const ok = ratio >= 0.5 && api.p99 < 50 && api.errors === 0 && api.non2xx === 0;
    if (ok) met++;
    ratios.push(`${ok ? 'meets' : 'MISSES'}  ${path}: ${ratio.toFixed(2)}x the bare server's requests per second, p99 ${api.p99} ms (bare ${base.p99} ms)`);
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  console.log(`autocannon in its own process, ${args.connections} connections, ${args.duration} s per run, loopback\n`);
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  '));
  console.log('');
  console.log('Goal: at least 0.5x the bare server and p99 under 50 ms, with no error.');
  for (const line of ratios) console.log(line);
  console.log(`${met} of ${READ_PATHS.length} read endpoints meet the goal.`);
  console.log('\nThe bare server does no work; the ratio is the price of validation, routing, the catalog queries and the shard checks.');
} finally {
  await harness.stop();
}
