/**
 * The load-test scenario (`npm run load`): the CA-DMS mix of document reads and writes and
 * scaling API reads, run with autocannon against local mode or a deployed load balancer.
 *
 * Each connection loops over ten requests: four document reads, two "a user's documents" reads,
 * one document write, and three scaling API reads (status, metrics, history). Users and
 * documents are discovered from the target first (`GET /api/v1/users`, then each user's
 * documents), and every request picks one at random, so reads spread over all shards.
 *
 * @example
 * ```ts
 * const report = await runLoadTest({ url: 'http://127.0.0.1:3000', durationSeconds: 10, connections: 10, rate: 200, maxErrorRate: 1 });
 * console.log(formatLoadReport(report));
 * process.exitCode = report.passed ? 0 : 1;
 * ```
 */
import { createRequire } from 'node:module';
import { z } from 'zod';

/** The target could not be prepared for the test (unreachable, no documents API, no data). */
export class LoadTestError extends Error {
  override readonly name = 'LoadTestError';
}

export interface LoadTestOptions {
  /** Base URL of the target, e.g. `http://127.0.0.1:3000`. */
  readonly url: string;
  readonly durationSeconds: number;
  readonly connections: number;
  /** Requests per second over all connections; undefined = as fast as the target answers. */
  readonly rate?: number;
  /** Percent of failed requests (connection errors, timeouts, non-2xx) above which the test fails. */
  readonly maxErrorRate: number;
  /** Per-request timeout in seconds. Default 10. */
  readonly timeoutSeconds?: number;
}

export interface LoadReport {
  readonly url: string;
  readonly durationSeconds: number;
  readonly requests: number;
  readonly requestsPerSecond: number;
  readonly latencyMs: { readonly p50: number; readonly p90: number; readonly p99: number; readonly max: number; readonly average: number };
  readonly errors: number;
  readonly timeouts: number;
  readonly non2xx: number;
  readonly statusCodes: Readonly<Record<string, number>>;
  /** Failed requests over all requests, percent. */
  readonly errorRate: number;
  readonly maxErrorRate: number;
  readonly passed: boolean;
  readonly users: number;
  readonly documents: number;
}

// autocannon ships no type declarations; this is the part of its API the scenario uses.
interface AutocannonRequest {
  method: 'GET' | 'POST';
  path: string;
  headers?: Record<string, string>;
  body?: string;
  setupRequest?: (req: AutocannonRequest) => AutocannonRequest;
}
interface Histogram {
  average: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}
interface AutocannonResult {
  requests: { total: number; average: number };
  latency: Histogram;
  errors: number;
  timeouts: number;
  non2xx: number;
  statusCodeStats?: Record<string, { count: number }>;
  duration: number;
}
interface AutocannonOptions {
  url: string;
  connections: number;
  duration: number;
  timeout: number;
  overallRate?: number;
  requests: AutocannonRequest[];
}
type Autocannon = (options: AutocannonOptions) => Promise<AutocannonResult>;
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

const usersSchema = z.object({ items: z.array(z.object({ id: z.string() })) });
const docsSchema = z.object({ items: z.array(z.object({ id: z.string(), owner_id: z.string() })) });

async function getJson<T>(url: string, schema: z.ZodType<T>, what: string): Promise<T> {
  let res: Response;
  try {
    res = await fetch(url, { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(10_000) });
  } catch (error) {
    throw new LoadTestError(`${what}: ${url} is unreachable (${(error as Error).message}); is the system running?`, { cause: error });
  }
  if (!res.ok) throw new LoadTestError(`${what}: GET ${url} answered ${res.status}; the target needs the documents API (local mode serves it)`);
  const parsed = schema.safeParse(await res.json());
  if (!parsed.success) throw new LoadTestError(`${what}: GET ${url} answered an unexpected shape`, { cause: parsed.error });
  return parsed.data;
}

const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)] as T;

/** Discovers users and documents, then runs the mix. Throws {@link LoadTestError} when the target cannot be prepared. */
export async function runLoadTest(options: LoadTestOptions): Promise<LoadReport> {
  const base = options.url.replace(/\/+$/, '');
  const users = (await getJson(`${base}/api/v1/users?limit=100`, usersSchema, 'discovering users')).items.map((u) => u.id);
  if (users.length === 0) throw new LoadTestError(`the target at ${base} has no users; seed it (local mode seeds demo data) before a load test`);
  const docs: Array<{ id: string; owner: string }> = [];
  for (const user of users.slice(0, 20)) {
    const page = await getJson(`${base}/api/v1/users/${user}/documents?limit=20`, docsSchema, 'discovering documents');
    docs.push(...page.items.map((d) => ({ id: d.id, owner: d.owner_id })));
  }
  if (docs.length === 0) throw new LoadTestError(`the target at ${base} has users but no documents to read`);

  const readDocument: AutocannonRequest = {
    method: 'GET',
    path: '/',
    setupRequest: (req) => {
      const d = pick(docs);
      return { ...req, path: `/api/v1/documents/${d.id}?owner=${d.owner}` };
    },
  };
  const userDocuments: AutocannonRequest = { method: 'GET', path: '/', setupRequest: (req) => ({ ...req, path: `/api/v1/users/${pick(users)}/documents?limit=20` }) };
  const writeDocument: AutocannonRequest = {
    method: 'POST',
    path: '/api/v1/documents',
    headers: { 'content-type': 'application/json' },
    setupRequest: (req) => ({ ...req, body: JSON.stringify({ owner_id: pick(users), title: 'Load test document', content: { body: 'written by npm run load' } }) }),
  };
  const requests: AutocannonRequest[] = [
    readDocument,
    userDocuments,
    readDocument,
    { method: 'GET', path: '/api/v1/scaling/status' },
    readDocument,
    writeDocument,
    userDocuments,
    { method: 'GET', path: '/api/v1/scaling/metrics' },
    readDocument,
    { method: 'GET', path: '/api/v1/scaling/history?limit=20' },
  ];
  const result = await autocannon({
    url: base,
    connections: options.connections,
    duration: options.durationSeconds,
    timeout: options.timeoutSeconds ?? 10,
    ...(options.rate === undefined ? {} : { overallRate: options.rate }),
    requests,
  });
  const statusCodes = Object.fromEntries(Object.entries(result.statusCodeStats ?? {}).map(([code, s]) => [code, Number(s.count)]));
  const failed = result.errors + result.timeouts + result.non2xx;
  const attempted = result.requests.total + result.errors + result.timeouts;
  const errorRate = attempted === 0 ? 100 : (100 * failed) / attempted;
  return {
    url: base,
    durationSeconds: result.duration,
    requests: result.requests.total,
    requestsPerSecond: result.requests.average,
    latencyMs: { p50: result.latency.p50, p90: result.latency.p90, p99: result.latency.p99, max: result.latency.max, average: result.latency.average },
    errors: result.errors,
    timeouts: result.timeouts,
    non2xx: result.non2xx,
    statusCodes,
    errorRate,
    maxErrorRate: options.maxErrorRate,
    passed: attempted > 0 && errorRate <= options.maxErrorRate,
    users: users.length,
    documents: docs.length,
  };
}

/** The report as the command prints it. */
export function formatLoadReport(r: LoadReport): string {
  const codes = Object.entries(r.statusCodes).map(([c, n]) => `${c}: ${n}`).join(', ') || 'none';
  return [
    `load test against ${r.url} (${r.users} users, ${r.documents} documents discovered)`,
    `  requests     ${r.requests} in ${r.durationSeconds.toFixed(1)} s = ${r.requestsPerSecond.toFixed(1)} req/s`,
    `  latency      p50 ${r.latencyMs.p50} ms, p90 ${r.latencyMs.p90} ms, p99 ${r.latencyMs.p99} ms, max ${r.latencyMs.max} ms (mean ${r.latencyMs.average.toFixed(1)} ms)`,
    `  status       ${codes}`,
    `  errors       ${r.errors} connection errors, ${r.timeouts} timeouts, ${r.non2xx} non-2xx = ${r.errorRate.toFixed(2)} % (threshold ${r.maxErrorRate} %)`,
    `  verdict      ${r.passed ? 'PASS' : 'FAIL: the error rate is above the threshold'}`,
  ].join('\n');
}
