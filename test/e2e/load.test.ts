/**
 * `npm run load` and the documents API it loads, against local mode running as a child process.
 * Loopback only, a few seconds per run.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { refusedLoopbackPort } from '../support/refused-port.js';
import { CLI_RUN_TIMEOUT_MS, eventually, getJson, runCli, startLocalProcess, type LocalProcess } from './support/local-process.js';

interface Report {
  requests: number;
  requestsPerSecond: number;
  errorRate: number;
  statusCodes: Record<string, number>;
  latencyMs: { p50: number; p99: number };
  passed: boolean;
}

/**
 * Forwards every request to `target`, except that it answers 503 to every document write: one
 * request in ten of the load-test mix fails, whatever the system does.
 */
async function failingWritesProxy(target: string): Promise<Server> {
  const upstream = new URL(target);
  const server = createServer((req, res) => {
    if (req.method === 'POST' && req.url?.startsWith('/api/v1/documents')) {
      req.resume();
      res.writeHead(503, { 'content-type': 'application/problem+json' }).end('{"status":503,"title":"Service Unavailable"}');
      return;
    }
    const forward = httpRequest({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    forward.on('error', () => res.writeHead(502).end());
    req.pipe(forward);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return server;
}

describe('the documents API and npm run load', () => {
  let local: LocalProcess | undefined;
  let proxy: Server | undefined;
  const url = (): string => {
    if (!local) throw new Error('local mode did not start');
    return local.url;
  };

  let traceDir: string;

  beforeAll(async () => {
    // A quiet trace: 1 request/min for days, a burst at the very end that sets its 99th
    // percentile, so the replayed demand stays near zero and any scale-out is the load test's.
    traceDir = await mkdtemp(join(tmpdir(), 'ca-dms-quiet-'));
    const rows = Array.from({ length: 3000 }, (_, i) => `${new Date(Date.UTC(2026, 0, 5) + i * 60_000).toISOString()},${i >= 2950 ? 100 : 1}`);
    await writeFile(join(traceDir, 'quiet.csv'), `timestamp,value\n${rows.join('\n')}\n`);
    local = await startLocalProcess({ args: ['--seed-users', '20', '--trace', join(traceDir, 'quiet.csv'), '--acceleration', '1'], env: { SCALING_CHECK_INTERVAL: '1' } });
    proxy = await failingWritesProxy(local.url);
  });

  afterAll(async () => {
    await new Promise<void>((r) => (proxy ? proxy.close(() => r()) : r()));
    await local?.stop('SIGTERM');
    await local?.remove();
    await rm(traceDir, { recursive: true, force: true });
  });

  it('writes a document on its owner\'s shard and reads it back at once with the read token', async () => {
    const users = await getJson<{ items: Array<{ id: string; shard_id: string }> }>(`${url()}/api/v1/users?limit=1`);
    const owner = users.body.items[0];

    const created = await fetch(`${url()}/api/v1/documents`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ owner_id: owner?.id, title: 'Minutes' }) });
    const doc = (await created.json()) as { id: string; shard_id: string };
    const token = created.headers.get('x-read-token') ?? '';
    const read = await fetch(`${url()}/api/v1/documents/${doc.id}`, { headers: { 'x-read-after': token } });

    expect(created.status).toBe(201);
    expect(doc.shard_id).toBe(owner?.shard_id);
    expect(token).toMatch(new RegExp(`^${owner?.shard_id}@[0-9A-F]+/[0-9A-F]+;tl=[0-9]+;v=[0-9]+;id=[0-9a-f]{16}$`));
    expect(read.status).toBe(200);
    expect(((await read.json()) as { title: string }).title).toBe('Minutes');
  });

  it('rejects a document without a valid owner with a problem naming the field, writing nothing', async () => {
    const res = await fetch(`${url()}/api/v1/documents`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ owner_id: 'nobody', title: '' }) });
    const problem = (await res.json()) as { invalid_params: Array<{ name: string }> };

    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect(problem.invalid_params.map((p) => p.name).sort()).toEqual(['body.owner_id', 'body.title']);
  });

  it('answers 405 with the allowed methods for a known path and a wrong method', async () => {
    const res = await fetch(`${url()}/api/v1/documents`, { method: 'GET' });

    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('POST');
  });

  it('becomes demand of the simulated fleet: the controller scales the read pool out under the load, citing its CPU, and back in after it', async () => {
    type Item = { at: string; service: string; direction: string; outcome: string; from: number; to: number; reasons: Array<{ message: string }> };
    type Series = { services: Array<{ points: Array<{ at: string; demand: number | null }> }> };
    const applied = async (direction: 'out' | 'in', since: string) =>
      (await getJson<{ items: Item[] }>(`${url()}/api/v1/scaling/history?service=backend-read&kind=decision&direction=${direction}&outcome=applied&since=${since}`)).body.items;
    const scaleOuts = (since: string) => applied('out', since);
    const quietSince = new Date(Date.now() - 10_000).toISOString();
    const quiet = await scaleOuts(quietSince);
    const loadStart = new Date().toISOString();

    const run = await runCli(['load', '--url', url(), '--duration', '8', '--connections', '4', '--format', 'json']);
    const out = await eventually(async () => {
      const items = await scaleOuts(loadStart);
      return items.length > 0 ? items : undefined;
    }, 20_000, 'a scale-out of backend-read after the load');
    const series = (await getJson<Series>(`${url()}/api/v1/scaling/timeseries?service=backend-read&since=${quietSince}&step=1`)).body.services[0]?.points ?? [];
    // The load is over: with short scale-in waits (the local defaults are 60 s) the pool comes back in.
    const loadEnd = new Date().toISOString();
    const patched = await fetch(`${url()}/api/v1/scaling/config`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/merge-patch+json' },
      body: JSON.stringify({ scale_in_cooldown: 2, stabilization_window: 2 }),
    });
    const back = await eventually(async () => {
      const items = await applied('in', loadEnd);
      return items.length > 0 ? items : undefined;
    }, 60_000, 'a scale-in of backend-read after the load ended');

    expect(patched.status).toBe(200);
    expect(run.code).toBe(0);
    expect(quiet).toEqual([]);
    expect(out[0]?.to).toBeGreaterThan(out[0]?.from ?? Infinity);
    expect(out[0]?.reasons.map((r) => r.message).join('; ')).toMatch(/CPU/);
    // The demand recorded while the load ran is far above the quiet trace's.
    const before = series.filter((p) => p.at < loadStart).map((p) => p.demand ?? 0);
    const during = series.filter((p) => p.at >= loadStart).map((p) => p.demand ?? 0);
    expect(Math.max(...during)).toBeGreaterThan(10 * Math.max(1, ...before));
    const last = back.at(-1);
    expect(last?.to).toBeLessThan(last?.from ?? -Infinity);
    expect(last?.reasons.map((r) => r.message).join('; ')).toMatch(/CPU/);
  }, 150_000);

  it('runs the mix of document reads, writes and scaling API reads and passes without errors', async () => {
    const run = await runCli(['load', '--url', url(), '--duration', '2', '--connections', '4', '--format', 'json']);
    const report = JSON.parse(run.stdout) as Report;

    expect(run.code).toBe(0);
    expect(report.requests).toBeGreaterThan(20);
    expect(report.errorRate).toBe(0);
    expect(Object.keys(report.statusCodes).sort()).toEqual(['200', '201']);
    expect(report.latencyMs.p99).toBeGreaterThanOrEqual(report.latencyMs.p50);
  }, CLI_RUN_TIMEOUT_MS);

  it('exits 1 and says FAIL when failed requests pass the threshold', async () => {
    const proxyUrl = `http://127.0.0.1:${(proxy?.address() as AddressInfo).port}`;

    const run = await runCli(['load', '--url', proxyUrl, '--duration', '2', '--connections', '4', '--max-error-rate', '2']);
    const rate = Number(/non-2xx = ([\d.]+) % \(threshold 2 %\)/.exec(run.stdout)?.[1]);

    expect(run.code).toBe(1);
    // One write in ten fails; partial rounds at the end move the share a little either way.
    expect(rate).toBeGreaterThan(5);
    expect(rate).toBeLessThan(15);
    expect(run.stdout).toContain('FAIL: the error rate is above the threshold');
  }, CLI_RUN_TIMEOUT_MS);

  it('exits 1 naming a target it cannot reach, before loading anything', async () => {
    const run = await runCli(['load', '--url', `http://127.0.0.1:${await refusedLoopbackPort()}`, '--duration', '1']);

    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/discovering users: http:\/\/127\.0\.0\.1:\d+\/api\/v1\/users\?limit=100 is unreachable/);
  }, CLI_RUN_TIMEOUT_MS);
});
