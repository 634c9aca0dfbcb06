/**
 * The guide's scaling variables at a start on kept data: they are written on top of the stored
 * scaling configuration, so each is judged against it, not against the guide's defaults. One that
 * does not fit it is refused naming the variable, its value and the stored version (exit 2, as
 * any bad input), and nothing is written.
 */
import { rm } from 'node:fs/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startCommand } from '../../../bin/commands/start.js';
import { startLocalMode, type LocalMode } from '../../../functions/local/runtime.js';
import { quietLocalMode } from './local-options.js';
import { tempDataDir } from '../../e2e/support/local-process.js';

const CONFIG = '/api/v1/scaling/config';

describe('scaling variables against the stored configuration', () => {
  let dataDir = '';
  const running: LocalMode[] = [];
  const saved = { MIN_INSTANCES: process.env.MIN_INSTANCES, SCALING_CHECK_INTERVAL: process.env.SCALING_CHECK_INTERVAL };

  beforeAll(async () => {
    dataDir = await tempDataDir();
  });
  afterEach(() => {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });
  afterAll(async () => {
    for (const local of running) await local.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  }, 60_000);

  const start = async (env: Record<string, string>): Promise<LocalMode> => {
    const local = await startLocalMode(quietLocalMode(dataDir, { shards: 1, env: { SCALING_CHECK_INTERVAL: '86400', ...env } }));
    running.push(local);
    return local;
  };
  const patch = async (local: LocalMode, body: Record<string, unknown>): Promise<number> =>
    (await fetch(`${local.url}${CONFIG}`, { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: JSON.stringify(body) })).status;
  const stored = async (local: LocalMode): Promise<{ version: number; config: Record<string, unknown> }> =>
    (await (await fetch(`${local.url}${CONFIG}`)).json()) as { version: number; config: Record<string, unknown> };
  const stopAll = async (): Promise<void> => {
    for (const local of running.splice(0)) await local.stop();
  };

  it('refuses MIN_INSTANCES above the stored max_instances through the CLI, naming the variable and the version, exit 2, and writes nothing', async () => {
    const first = await start({});
    expect(await patch(first, { max_instances: 5 })).toBe(200);
    const before = await stored(first);
    await stopAll();

    process.env.MIN_INSTANCES = '8';
    process.env.SCALING_CHECK_INTERVAL = '86400';
    const err: string[] = [];
    const code = await startCommand.run(['--port', '0', '--data-dir', dataDir, '--shards', '1', '--replicas', '0', '--seed-users', '0'], {
      stdout: () => undefined,
      stderr: (t) => err.push(t),
      cwd: dataDir,
    });
    delete process.env.MIN_INSTANCES;
    const after = await stored(await start({}));

    expect(code).toBe(2);
    expect(err.join('')).toContain(`MIN_INSTANCES=8 does not fit the stored scaling configuration (version ${before.version}): min_instances: min_instances (8) must not exceed max_instances (5)`);
    expect(after.version).toBe(before.version);
    expect(after.config).toMatchObject({ min_instances: 2, max_instances: 5 });
  }, 120_000);

  it('refuses MIN_INSTANCES above the default max_instances on fresh data through the CLI, naming the variable, exit 2', async () => {
    await stopAll();
    const fresh = await tempDataDir();
    process.env.MIN_INSTANCES = '15';
    process.env.SCALING_CHECK_INTERVAL = '86400';
    const err: string[] = [];
    try {
      const code = await startCommand.run(['--port', '0', '--data-dir', fresh, '--shards', '1', '--replicas', '0', '--seed-users', '0'], {
        stdout: () => undefined,
        stderr: (t) => err.push(t),
        cwd: fresh,
      });

      expect(code).toBe(2);
      expect(err.join('')).toContain('MIN_INSTANCES=15 does not fit the default scaling configuration of fresh data: min_instances: min_instances (15) must not exceed max_instances (10)');
    } finally {
      await rm(fresh, { recursive: true, force: true });
    }
  }, 120_000);

  it('takes MIN_INSTANCES above the guide\'s max_instances when the stored max_instances allows it', async () => {
    await stopAll();
    const first = await start({});
    expect(await patch(first, { max_instances: 30 })).toBe(200);
    await stopAll();

    const local = await start({ MIN_INSTANCES: '15' });

    expect(local.config).toMatchObject({ min_instances: 15, max_instances: 30 });
    expect((await stored(local)).config).toMatchObject({ min_instances: 15, max_instances: 30 });
  }, 120_000);
});
