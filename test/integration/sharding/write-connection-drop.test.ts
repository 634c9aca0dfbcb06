import { spawn } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keysInSlot, startMoveEnv, type MoveEnv } from './fixtures/move-env.js';

/**
 * A shard connection dropped under a process (a restart, a failover, pg_terminate_backend) fails
 * that process's query; it must not end the process (an `error` event nobody listens to does).
 */
const script = resolve(dirname(fileURLToPath(import.meta.url)), 'fixtures/connection-drop.ts');
let env: MoveEnv;
beforeAll(async () => {
  env = await startMoveEnv();
});
afterAll(async () => {
  await env?.stop();
});

function runDropped(mode: 'write' | 'read' | 'checked-out'): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const [key] = keysInSlot(42, 1) as [string];
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, ['--import', 'tsx', script], {
      env: { ...process.env, CA_DMS_DROP: mode, CA_DMS_MOVE_ENV: JSON.stringify(env.urls), CA_DMS_KEY: key, CA_DMS_SHARD_URL: env.urls.shards.shard_a },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', fail);
    child.on('exit', (code) => done({ code, stdout, stderr }));
  });
}

describe('a process whose shard connection drops', () => {
  it.each([
    { mode: 'write' as const, who: 'a writer (withShardWrite) gets a failed write' },
    { mode: 'read' as const, who: 'a reader (ReplicaReader.withReadClient) gets a failed read' },
    { mode: 'checked-out' as const, who: 'a client checked out of a production pool, not querying, is dropped' },
  ])('$who, and the process lives on', async ({ mode }) => {
    const { code, stdout, stderr } = await runDropped(mode);

    expect({ code, error: stderr.split('\n').find((l) => /Error/.test(l)) ?? '' }).toEqual({ code: 0, error: '' });
    expect(stdout).toMatch(/^survived: /);
  }, 60_000);
});
