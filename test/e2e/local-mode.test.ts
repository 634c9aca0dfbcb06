/**
 * `npm start` end to end: local mode as a child process on the free port it picks itself, a fast check interval
 * and a fast trace, talked to over HTTP only.
 */
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_RUN_TIMEOUT_MS, REPO_ROOT, eventually, getJson, postgresProcessesUnder, runCli, startLocalProcess, tempDataDir, type LocalProcess } from './support/local-process.js';

interface HistoryBody {
  items: Array<{ kind: string; service: string | null; outcome: string | null; reasons: unknown[] }>;
}
interface NodeBody {
  nodeId: string;
  role: string;
  status: string;
}
interface HealthBody {
  shards: Array<{ shardId: string; primary: NodeBody; replicas: NodeBody[] }>;
}

/** Runs a bash script to completion: its exit status (1 when a signal or the timeout ended it) and stderr. */
function bash(script: string): Promise<{ status: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile('bash', ['-c', script], { encoding: 'utf8', timeout: 15_000 }, (error, _stdout, stderr) => {
      resolve({ status: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stderr });
    });
  });
}

const FAST = { args: ['--seed-users', '20', '--acceleration', '600'], env: { SCALING_CHECK_INTERVAL: '1' } };

describe('local mode (npm start)', () => {
  let local: LocalProcess | undefined;
  const running = (): LocalProcess => {
    if (!local) throw new Error('local mode did not start');
    return local;
  };

  beforeAll(async () => {
    local = await startLocalProcess(FAST);
  });

  afterAll(async () => {
    if (!local) return;
    await local.stop('SIGKILL');
    await local.remove();
  });

  it('binds its port (--port 0: one it picks) before starting PostgreSQL and prints it, so no other process can take it during start-up', async () => {
    const out = running().output();
    const listening = out.indexOf(`listening on ${running().url} `);

    expect(listening).toBeGreaterThanOrEqual(0);
    expect(listening).toBeLessThan(out.indexOf('  postgres: '));
    expect(out).toContain(`Dashboard      ${running().url}/`);
  });

  it('serves the scaling API with the check interval taken from SCALING_CHECK_INTERVAL', async () => {
    const { status, body } = await getJson<{ check_interval_seconds: number; services: unknown[] }>(`${running().url}/api/v1/scaling/status`);

    expect(status).toBe(200);
    expect(body.check_interval_seconds).toBe(1);
    expect(body.services).toHaveLength(4);
  });

  it('records the controller\'s decisions in the history as it runs against the simulated fleet', async () => {
    const decisions = await eventually(
      async () => {
        const { body } = await getJson<HistoryBody>(`${running().url}/api/v1/scaling/history?kind=decision&limit=50`);
        return body.items.length > 0 ? body.items : undefined;
      },
      15_000,
      'a decision in /history',
    );

    expect(decisions[0]?.kind).toBe('decision');
    expect(['backend-read', 'backend-write', 'frontend', 'worker']).toContain(decisions[0]?.service);
  }, 20_000);

  it('reports every shard primary and streaming replica healthy', async () => {
    const health = await eventually(
      async () => {
        const { body } = await getJson<HealthBody>(`${running().url}/api/v1/scaling/shards/health`);
        const nodes = body.shards.flatMap((s) => [s.primary, ...s.replicas]);
        return nodes.every((n) => n.status === 'healthy') ? body : undefined;
      },
      15_000,
      'every node healthy',
    );

    expect(health.shards.map((s) => s.shardId)).toEqual(['shard_001', 'shard_002']);
    expect(health.shards.map((s) => s.replicas.map((r) => r.role))).toEqual([['replica'], ['replica']]);
  }, 20_000);

  it('runs a slot move planned through the API in the local process, and routes the slot to its new shard', async () => {
    const url = running().url;
    const before = (await getJson<{ slot: number; shard_id: string }>(`${url}/api/v1/scaling/shards/route?key=move-me`)).body;
    const to = before.shard_id === 'shard_001' ? 'shard_002' : 'shard_001';

    const planned = await fetch(`${url}/api/v1/scaling/shards/moves`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'slot', unit: String(before.slot), to }) });
    const { id } = (await planned.json()) as { id: string };
    const done = await eventually(
      async () => {
        const { body } = await getJson<{ state: string }>(`${url}/api/v1/scaling/shards/moves/${id}`);
        return body.state === 'done' ? body : undefined;
      },
      20_000,
      'the move to finish',
    );
    const after = (await getJson<{ shard_id: string }>(`${url}/api/v1/scaling/shards/route?key=move-me`)).body;

    expect(planned.status).toBeLessThan(300);
    expect(done.state).toBe('done');
    expect(after.shard_id).toBe(to);
  }, 30_000);

  it('answers the curl examples of the README as written (its port replaced by this run\'s) with no error', async () => {
    const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
    const blocks = [...readme.matchAll(/```bash\n([\s\S]*?)```/g)].map((m) => m[1] ?? '').filter((b) => /curl [^\n]*(localhost|127\.0\.0\.1):3000\/api\//.test(b));
    const port = new URL(running().url).port;
    // Each block as a reader pastes it, but failing on the first error answer (curl -s alone
    // prints a problem document and carries on); jq only pretty-prints, where it is installed.
    const prelude = 'set -eo pipefail\ncurl() { command curl --fail-with-body "$@"; }\ncommand -v jq >/dev/null || jq() { cat; }\n';
    // One block after another (the second reads the ETag the first left), without blocking this
    // process: a spawnSync held its event loop for seconds under load, so its pooled connection
    // to local mode never heard the server close it after the 5 s keep-alive and the next fetch
    // reused a dead socket ("other side closed", 3 runs of 3 at load 14).
    const runs: { status: number; stderr: string }[] = [];
    for (const block of blocks) runs.push(await bash(prelude + block.replaceAll(/(localhost|127\.0\.0\.1):3000\b/g, `$1:${port}`)));
    const config = (await getJson<{ config: { check_interval: number; cpu_scale_up: number } }>(`${running().url}/api/v1/scaling/config`)).body.config;

    expect(blocks.length).toBeGreaterThanOrEqual(2);
    expect(runs.map((r) => ({ status: r.status, stderr: r.stderr }))).toEqual(blocks.map(() => ({ status: 0, stderr: '' })));
    // The merge patch changed what it named and kept the rest (the interval came from the environment).
    expect(config).toMatchObject({ check_interval: 1, cpu_scale_up: 75 });
  }, 30_000);

  it('refuses a second start on the same data directory while the first runs, naming its pid', async () => {
    const second = await runCli(['start', '--data-dir', running().dataDir, '--port', '0']);

    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(new RegExp(`local mode is already running \\(pid ${running().child.pid}, ${running().url}\\)`));
  }, CLI_RUN_TIMEOUT_MS);

  it('stops on SIGTERM with exit code 0, leaving no PostgreSQL process of its data and no lock', async () => {
    expect(await postgresProcessesUnder(running().dataDir)).toHaveLength(5);

    const code = await running().stop('SIGTERM');

    expect(code).toBe(0);
    expect(await postgresProcessesUnder(running().dataDir)).toEqual([]);
    expect(existsSync(join(running().dataDir, 'local.lock'))).toBe(false);
    expect(running().output()).toContain('stopped; data kept in');
  }, 30_000);

  it('starts again on the kept data without seeding it twice, and stops on SIGINT', async () => {
    const again = await startLocalProcess({ ...FAST, dataDir: running().dataDir });
    try {
      expect(again.output()).toContain('data reused');
      expect(again.output()).toMatch(/kept: users shard_001 \d+, shard_002 \d+; 100 documents/);
      const { body } = await getJson<{ items: unknown[] }>(`${again.url}/api/v1/users?limit=200`);
      expect(body.items).toHaveLength(20);
    } finally {
      expect(await again.stop('SIGINT')).toBe(0);
    }
    expect(await postgresProcessesUnder(running().dataDir)).toEqual([]);
  }, 60_000);
});

describe('local mode start-up refusals', () => {
  let blocker: Server;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = await tempDataDir();
    blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  });

  afterAll(async () => {
    await new Promise<void>((r) => blocker.close(() => r()));
    await rm(dataDir, { recursive: true, force: true });
  });

  it('refuses a port in use with a message naming it, before starting PostgreSQL', async () => {
    const port = (blocker.address() as { port: number }).port;

    const run = await runCli(['start', '--port', String(port), '--data-dir', dataDir]);

    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`port ${port} on 127.0.0.1 is already in use; choose another with --port`);
    expect(existsSync(join(dataDir, 'pg'))).toBe(false);
    expect(existsSync(join(dataDir, 'local.lock'))).toBe(false);
  }, CLI_RUN_TIMEOUT_MS);

  it('refuses a --trace that does not exist before binding a port or creating the data directory', async () => {
    const fresh = join(dataDir, 'never-created');

    const run = await runCli(['start', '--port', '0', '--data-dir', fresh, '--trace', join(dataDir, 'absent.csv')]);

    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`--trace: ${join(dataDir, 'absent.csv')}: no such file`);
    expect(run.stdout).not.toContain('listening on');
    expect(existsSync(fresh)).toBe(false);
  }, CLI_RUN_TIMEOUT_MS);
});
