/**
 * nginx sidecar benchmark: the same GET against the application directly, through nginx
 * without the cache (Authorization makes it BYPASS) and through nginx from the API cache.
 * Prints requests/s and latency for each, the proxy overhead ratio and the cache-hit
 * throughput. Loopback only, bounded duration.
 *
 * @example
 * ```sh
 * npm run bench:nginx -- --duration 5 --connections 50
 * ```
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { send, startNginx } from '../test/integration/nginx/harness.js';

interface AutocannonResult {
  requests: { average: number; total: number };
  latency: { p50: number; p99: number; average: number };
  errors: number;
  timeouts: number;
  non2xx: number;
}
interface AutocannonOptions {
  url: string;
  connections: number;
  duration: number;
  headers?: Record<string, string>;
}
type Autocannon = (options: AutocannonOptions) => Promise<AutocannonResult>;
// autocannon ships no type declarations; this is the part of its API the benchmark uses.
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

const flags = z.object({
  duration: z.coerce.number().int().min(1).max(60).default(5),
  connections: z.coerce.number().int().min(1).max(500).default(50),
});

function parseFlags(argv: string[]): z.output<typeof flags> {
  const { values } = parseArgs({ args: argv, options: { duration: { type: 'string' }, connections: { type: 'string' } }, strict: true });
  const parsed = flags.safeParse(values);
  if (!parsed.success) {
    throw new Error(`bench:nginx: ${parsed.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return parsed.data;
}

/**
 * The application runs in its own process: sharing autocannon's event loop would make the
 * direct run slower than the proxied one and the comparison meaningless. It answers a ~1 KB
 * JSON document and counts the requests it served (readable at /__served).
 */
const APP_SOURCE = `
const http = require('node:http');
const payload = JSON.stringify({ items: Array.from({ length: 20 }, (_, i) => ({ id: i, title: 'Document ' + i, status: 'published' })) });
let served = 0;
const server = http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  if (req.url === '/__served') { res.end(String(served)); return; }
  served += 1;
  res.end(payload);
});
server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\\n'));
`;

async function startApp(): Promise<{ address: string; served(): Promise<number>; stop(): Promise<void> }> {
  const child: ChildProcess = spawn(process.execPath, ['-e', APP_SOURCE], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [chunk] = (await once(child.stdout ?? child, 'data')) as [Buffer];
  const address = `127.0.0.1:${Number(chunk.toString().trim())}`;
  const port = Number(address.split(':')[1]);
  return {
    address,
    served: async () => Number((await send(port, '/__served')).text),
    stop: async () => {
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      await exited;
    },
  };
}

async function main(): Promise<void> {
  const { duration, connections } = parseFlags(process.argv.slice(2));
  const app = await startApp();
  const nginx = await startNginx({
    NGINX_READ_UPSTREAMS: app.address,
    NGINX_WRITE_UPSTREAMS: app.address,
    NGINX_API_CACHE_TTL: '600',
    // The benchmark measures proxying, not the limiter.
    NGINX_RATE_LIMIT_API: '1000000r/s',
    NGINX_RATE_LIMIT_API_BURST: '100000',
  });
  try {
    const path = '/api/v1/documents?page=1';
    await send(nginx.port, path);
    const warm = await send(nginx.port, path);
    if (warm.headers['x-cache-status'] !== 'HIT') throw new Error(`cache not warm: X-Cache-Status ${String(warm.headers['x-cache-status'])}`);

    const run = async (label: string, url: string, headers?: Record<string, string>) => {
      const r = await autocannon({ url, connections, duration, headers });
      if (r.errors > 0 || r.non2xx > 0) throw new Error(`${label}: ${r.errors} errors, ${r.non2xx} non-2xx responses`);
      console.log(
        `${label.padEnd(34)} ${r.requests.average.toFixed(0).padStart(8)} req/s   p50 ${String(r.latency.p50).padStart(3)} ms   p99 ${String(r.latency.p99).padStart(3)} ms`,
      );
      return r;
    };

    console.log(`nginx sidecar benchmark: ${connections} connections, ${duration} s per scenario, 1 nginx worker, loopback`);
    const direct = await run('application directly', `http://${app.address}${path}`);
    const proxied = await run('through nginx, uncached (BYPASS)', `http://127.0.0.1:${nginx.port}${path}`, { authorization: 'Bearer bench' });
    const servedBefore = await app.served();
    const cached = await run('through nginx, cache HIT', `http://127.0.0.1:${nginx.port}${path}`);
    const servedDuringHits = (await app.served()) - servedBefore;

    const overhead = direct.requests.average / proxied.requests.average;
    console.log(`proxy overhead: direct/proxied throughput = ${overhead.toFixed(2)}x (p50 ${direct.latency.p50} -> ${proxied.latency.p50} ms)`);
    console.log(
      `cache-hit throughput: ${cached.requests.average.toFixed(0)} req/s = ${(cached.requests.average / direct.requests.average).toFixed(2)}x the application directly (${cached.requests.total} responses, ${servedDuringHits} reached the application)`,
    );
  } finally {
    await nginx.stop();
    await app.stop();
  }
}

await main();
