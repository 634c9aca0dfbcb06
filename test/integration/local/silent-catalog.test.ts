/**
 * Local mode with a catalog server that stopped answering (SIGSTOP of its postmaster and of every
 * backend: connections stay open, nothing comes back). The scaling API must answer a request
 * that needs the catalog with a 5xx problem instead of holding it for ever, and serve again once
 * the catalog resumes: local mode bounds catalog statements as the AWS functions do (the role's
 * server-side `statement_timeout`, and a client `query_timeout` a little longer).
 */
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalMode, type LocalMode } from '../../../functions/local/runtime.js';
import { quietLocalMode } from './local-options.js';
import { descendantsOf, tempDataDir } from '../../e2e/support/local-process.js';

const API = '/api/v1/scaling';
/** Far longer than the bound under test (the catalog's client query timeout); a request still unanswered then hangs. */
const HANG_MS = 40_000;

function signalAll(pids: readonly number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // gone meanwhile
    }
  }
}

describe('local mode with a silent catalog', () => {
  let local: LocalMode;
  let dataDir: string;
  let stopped: number[] = [];

  beforeAll(async () => {
    dataDir = await tempDataDir();
    local = await startLocalMode(quietLocalMode(dataDir));
  }, 180_000);

  afterAll(async () => {
    signalAll(stopped, 'SIGCONT');
    await local?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  }, 60_000);

  async function request(path: string, init?: RequestInit): Promise<{ status: number | 'no answer'; body: Record<string, unknown> }> {
    try {
      const res = await fetch(`${local.url}${path}`, { ...init, signal: AbortSignal.timeout(HANG_MS) });
      const text = await res.text();
      return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
    } catch (error) {
      if ((error as Error).name === 'TimeoutError') return { status: 'no answer', body: {} };
      throw error;
    }
  }

  const startMove = (slot: number, to: string) =>
    request(`${API}/shards/moves`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'slot', unit: String(slot), to }) });

  it('answers move requests with a 503 naming the catalog while it is stopped, instead of holding them, and serves them once it resumes', async () => {
    const route = (await request(`${API}/shards/route?key=silent-catalog`)).body as { shard_id: string; slot: number };
    const to = route.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';
    // Warm catalog connections in the pool: the statement goes to a server that accepted it and never answers.
    expect((await request(`${API}/shards/moves/999999`)).status).toBe(404);
    const catalog = local.cluster.nodes().find((n) => n.id === 'catalog')?.pid as number;
    stopped = [catalog, ...(await descendantsOf(catalog)).map((p) => p.pid)];
    signalAll(stopped, 'SIGSTOP');

    const [move, job] = await Promise.all([startMove(route.slot, to), request(`${API}/shards/moves/999998`)]);

    signalAll(stopped, 'SIGCONT');
    stopped = [];
    // Unavailable (retry later), saying what did not answer: not an internal error, not a hang.
    expect({ move: move.status, job: job.status }).toEqual({ move: 503, job: 503 });
    expect(String(move.body['detail'])).toMatch(/^starting the move: the catalog or a shard did not answer/);
    expect(String(job.body['detail'])).toMatch(/^reading move 999998: the catalog or a shard did not answer/);
    // Recovered: the same request is served once the catalog answers again.
    const again = await startMove(route.slot, to);
    expect(again.status).toBe(202);
  }, 120_000);

  // Last: the catalog does not come back.
  it('names what did not answer in the 503 without the driver\'s words (addresses, ports) once the catalog is down', async () => {
    const node = local.cluster.nodes().find((n) => n.id === 'catalog');
    process.kill(node?.pid as number, 'SIGINT');
    const gone = (): boolean => {
      try {
        process.kill(node?.pid as number, 0);
        return false;
      } catch {
        return true;
      }
    };
    await expect.poll(gone, { timeout: 20_000 }).toBe(true);

    const job = await request(`${API}/shards/moves/999997`);

    expect(job.status).toBe(503);
    expect(String(job.body['detail'])).toBe('reading move 999997: the catalog or a shard did not answer (connection error ECONNREFUSED); try again shortly');
    expect(String(job.body['detail'])).not.toContain(String(node?.port));
    expect(String(job.body['detail'])).not.toContain('127.0.0.1');
  }, 60_000);
});
