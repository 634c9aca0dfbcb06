/**
 * Benchmark: the scaling API through the local adapter (node:http -> API Gateway event ->
 * Lambda handler -> route -> real PostgreSQL) against a bare node:http server that returns the
 * very same bytes, for GET /status and GET /shards/health, in one run on one machine, with
 * autocannon at 50 connections. Loopback only; each run is bounded in time.
 *
 *   npm run bench:api [-- --duration 10]
 */
import '../test/support/quiet-powertools.js';
import autocannon from 'autocannon';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
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

async function load(url: string): Promise<Figures> {
  const r = await autocannon({ url, connections: args.connections, duration: args.duration });
  return { rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, errors: r.errors, non2xx: r.non2xx };
}

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
  for (const path of ['/api/v1/scaling/status', '/api/v1/scaling/shards/health']) {
    const sample = await fetch(`${harness.url}${path}`);
    const bytes = await sample.text();
    const api = await load(`${harness.url}${path}`);
    const plain = await bare(bytes, sample.headers.get('content-type') ?? 'application/json');
    const base = await load(plain.url);
    await plain.close();
    rows.push([path, 'scaling API (local adapter)', api.rps.toFixed(0), String(api.p50), String(api.p99), String(api.errors), String(api.non2xx)]);
    rows.push([path, 'bare node:http, same bytes', base.rps.toFixed(0), String(base.p50), String(base.p99), String(base.errors), String(base.non2xx)]);
    ratios.push(`${path}: the API serves ${(api.rps / base.rps).toFixed(3)}x the bare server's requests per second (p99 ${api.p99} ms vs ${base.p99} ms)`);
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  console.log(`autocannon, ${args.connections} connections, ${args.duration} s per run, loopback\n`);
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  '));
  console.log('');
  for (const line of ratios) console.log(line);
  console.log('\nThe bare server does no work; the ratio is the price of validation, routing, the catalog queries and the shard checks.');
} finally {
  await harness.stop();
}
