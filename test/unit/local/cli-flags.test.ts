/**
 * Flags of `start` and `load`: every bad value is named with what is accepted, and exits 2.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadCommand } from '../../../bin/commands/load.js';
import { DEFAULT_TRACE, parseStartOptions } from '../../../bin/commands/start.js';
import { UsageError, type CliIo } from '../../../bin/commands/kit.js';
import { CLI, CLI_RUN_TIMEOUT_MS, REPO_ROOT, runCli, tempDataDir } from '../../e2e/support/local-process.js';

const io: CliIo = { stdout: () => undefined, stderr: () => undefined, cwd: '/srv/app' };

describe('start flags', () => {
  it('defaults to port 3000, .local, two shards with one replica each, the NASA trace at 60x', () => {
    expect(parseStartOptions([], '/srv/app', {})).toEqual({
      port: 3000,
      dataDir: '/srv/app/.local',
      shards: 2,
      replicasPerShard: 1,
      tracePath: DEFAULT_TRACE,
      acceleration: 60,
      seedUsers: 200,
      requestDeadlineMs: 5000,
      wipe: false,
    });
  });

  it('takes the documents API request deadline in seconds', () => {
    expect(parseStartOptions(['--request-deadline', '2.5'], '/srv/app', {})).toMatchObject({ requestDeadlineMs: 2500 });
  });

  it('resolves the data directory and the trace against the working directory', () => {
    const options = parseStartOptions(['--data-dir', 'tmp/local', '--trace', 'traces/t.csv', '--wipe'], '/srv/app', {});

    expect(options).toMatchObject({ dataDir: '/srv/app/tmp/local', tracePath: '/srv/app/traces/t.csv', wipe: true });
  });

  it.each([
    [['--port', '70000'], '--port: expected a whole number from 0 to 65535, got "70000"'],
    [['--shards', '0'], '--shards: expected a whole number from 1 to 8, got "0"'],
    [['--replicas', 'two'], '--replicas: expected a whole number from 0 to 3, got "two"'],
    [['--acceleration', '0.5'], '--acceleration: expected a number of trace seconds per second from 1 to 3600, got "0.5"'],
    [['--seed-users=-3'], '--seed-users: expected a whole number from 0 to 100000, got "-3"'],
    [['--request-deadline', '0'], '--request-deadline: expected a number of seconds from 0.1 to 60, got "0"'],
    [['--color'], "Unknown option '--color'"],
  ])('rejects %j naming the flag', (args, message) => {
    expect(() => parseStartOptions(args, '/srv/app', {})).toThrow(UsageError);
    expect(() => parseStartOptions(args, '/srv/app', {})).toThrow(message);
  });

  it('rejects a malformed SCALING_CHECK_INTERVAL naming the variable', () => {
    expect(() => parseStartOptions([], '/srv/app', { SCALING_CHECK_INTERVAL: 'soon' })).toThrow('SCALING_CHECK_INTERVAL: must be a whole number');
  });

  it.each([
    [{ MIN_INSTANCES: '15' }],
    [{ MAX_INSTANCES: '1' }],
  ])('leaves %j alone against the guide\'s default for the other bound: the stored configuration\'s applies, checked at start', (env) => {
    expect(parseStartOptions([], '/srv/app', env)).toMatchObject({ shards: 2 });
  });

  it('still rejects MIN_INSTANCES above MAX_INSTANCES, and malformed ones, before anything starts', () => {
    expect(() => parseStartOptions([], '/srv/app', { MIN_INSTANCES: '15', MAX_INSTANCES: '12' })).toThrow('min_instances (15) must not exceed max_instances (12)');
    expect(() => parseStartOptions([], '/srv/app', { MIN_INSTANCES: 'lots' })).toThrow('MIN_INSTANCES: must be a whole number');
    expect(() => parseStartOptions([], '/srv/app', { MAX_INSTANCES: '0' })).toThrow(UsageError);
  });

  it.each([
    [{ MIN_INSTANCES: '99999999999999999999' }, 'MIN_INSTANCES: must be a whole number from 0 to 9007199254740991, got "99999999999999999999"'],
    [{ MAX_INSTANCES: '99999999999999999999' }, 'MAX_INSTANCES: must be a whole number from 1 to 9007199254740991, got "99999999999999999999"'],
    [{ MIN_INSTANCES: '9007199254740993', MAX_INSTANCES: '12' }, 'MIN_INSTANCES: must be a whole number from 0 to 9007199254740991, got "9007199254740993"'],
    [{ MAX_INSTANCES: '0' }, 'MAX_INSTANCES: must be a whole number from 1 to 9007199254740991, got "0"'],
    [{ SCALING_CHECK_INTERVAL: '86401' }, 'SCALING_CHECK_INTERVAL: must be a whole number from 1 to 86400, got "86401"'],
  ])('rejects %j naming the variable, the value as given and the allowed range, and nothing else', (env, message) => {
    let thrown: unknown;
    try {
      parseStartOptions([], '/srv/app', env);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(UsageError);
    // Only the variable's own line: no stand-in for the bound not given, no rounded value.
    expect((thrown as UsageError).message).toBe(message);
  });

  it.each([
    [{ SHARDING_STRATEGY: 'consistent' }, 'SHARDING_STRATEGY: must be one of hash_based, range_based, directory_based, got "consistent"'],
    [{ SHARDING_ENABLED: 'maybe' }, 'SHARDING_ENABLED: must be true or false, got "maybe"'],
    [{ SHARDING_STRATEGY: 'range_based' }, 'SHARDING_STRATEGY=range_based: local mode configures no key ranges'],
  ])('rejects the sharding variables %j before anything starts, naming the variable', (env, message) => {
    expect(() => parseStartOptions([], '/srv/app', env)).toThrow(UsageError);
    expect(() => parseStartOptions([], '/srv/app', env)).toThrow(message);
  });

  it.each([
    [['--shards', '1'], 'postgresql://app@127.0.0.1:5432/ca_dms'],
    [['--shards', '2'], 'shard_001=postgresql://app@127.0.0.1:5433/ca_dms'],
  ])('accepts DATABASE_REPLICA_URLS on a port the check used to stand in for a primary (%j, %s): the embedded primaries take free ports', (args, urls) => {
    expect(parseStartOptions(args, '/srv/app', { DATABASE_REPLICA_URLS: urls })).toMatchObject({ shards: Number(args[1]) });
  });

  it('still refuses DATABASE_REPLICA_URLS that names an unknown shard or one endpoint twice, before anything starts', () => {
    expect(() => parseStartOptions(['--shards', '2'], '/srv/app', { DATABASE_REPLICA_URLS: 'shard_003=postgresql://127.0.0.1:5433/ca_dms' })).toThrow('DATABASE_REPLICA_URLS: entry 1 names shard "shard_003", which is not configured');
    expect(() => parseStartOptions(['--shards', '2'], '/srv/app', { DATABASE_REPLICA_URLS: 'shard_001=postgresql://r:5432/ca_dms,shard_002=postgresql://r:5432/ca_dms' })).toThrow(/shards\[1\]\.read_replicas\[0\]: same database as shards\[0\]\.read_replicas\[0\]/);
  });

  it('accepts the sharding strategies local mode can run', () => {
    expect(parseStartOptions([], '/srv/app', { SHARDING_STRATEGY: 'directory_based', SHARDING_ENABLED: 'true' })).toMatchObject({ shards: 2 });
  });

  it('exits 2 on a bad SHARDING_STRATEGY leaving the data directory uncreated (no PostgreSQL initialised)', async () => {
    const parent = await tempDataDir();
    try {
      const dataDir = join(parent, 'data');
      const run = await runCli(['start', '--port', '0', '--data-dir', dataDir, '--shards', '1', '--replicas', '0'], { SHARDING_STRATEGY: 'consistent' });

      expect(run.code).toBe(2);
      expect(run.stderr).toContain('ca-dms-scaling start: SHARDING_STRATEGY: must be one of hash_based, range_based, directory_based, got "consistent"');
      expect(existsSync(dataDir)).toBe(false);
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  }, CLI_RUN_TIMEOUT_MS);

  it('exits 2 on a --data-dir that is a file, naming the flag', async () => {
    const parent = await tempDataDir();
    try {
      const file = join(parent, 'not-a-dir');
      await writeFile(file, 'x');
      const run = await runCli(['start', '--port', '0', '--data-dir', file]);

      expect(run.code).toBe(2);
      expect(run.stderr).toContain(`ca-dms-scaling start: --data-dir: ${file} is not a directory`);
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  }, CLI_RUN_TIMEOUT_MS);

  it('refuses a --port it may not listen on (privileged, as an ordinary user) with a message naming the port and the flag', async () => {
    // The lowest port an ordinary user may bind; the one below it needs privileges.
    const unprivileged = Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim());
    const port = String(unprivileged - 1);
    const dataDir = await tempDataDir();
    try {
      await chmod(dataDir, 0o777);
      // As an ordinary user: root may listen anywhere (it runs as nobody then).
      const cli = ['--import', 'tsx', CLI, 'start', '--port', port, '--data-dir', join(dataDir, 'd')];
      const [command, args] = process.getuid?.() === 0 ? ['setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...cli]] : [process.execPath, cli];
      const child = spawn(command, args, { cwd: REPO_ROOT, env: { ...process.env, HOME: dataDir }, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
      const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));

      expect(unprivileged).toBeGreaterThan(1);
      expect(code).toBe(1);
      expect(stderr).toContain(`ca-dms-scaling start: port ${port} on 127.0.0.1 needs privileges this user lacks (ports below ${unprivileged} do); choose another with --port`);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  }, CLI_RUN_TIMEOUT_MS);

  it('exits 2 from the command line, with the flag in the message and nothing started', async () => {
    const run = await runCli(['start', '--shards', '9']);

    expect(run.code).toBe(2);
    expect(run.stderr).toContain('ca-dms-scaling start: --shards: expected a whole number from 1 to 8, got "9"');
  }, CLI_RUN_TIMEOUT_MS);
});

describe('load flags', () => {
  it.each([
    [[], '--url: is required, e.g. --url http://127.0.0.1:3000'],
    [['--url', 'ftp://127.0.0.1/'], '--url: expected an http:// or https:// URL such as http://127.0.0.1:3000'],
    [['--url', 'http://127.0.0.1:3000', '--duration', '0'], '--duration: expected a number of seconds from 1 to 3600, got "0"'],
    [['--url', 'http://127.0.0.1:3000', '--max-error-rate', '101'], '--max-error-rate: expected a number of percent from 0 to 100, got "101"'],
    [['--url', 'http://127.0.0.1:3000', '--format', 'xml'], '--format: expected one of text, json'],
  ])('rejects %j naming the flag', async (args, message) => {
    await expect(loadCommand.run(args, io)).rejects.toThrow(UsageError);
    await expect(loadCommand.run(args, io)).rejects.toThrow(message);
  });
});
