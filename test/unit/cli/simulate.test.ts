import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POLICY_NAMES } from '../../../functions/core/scaling/config.js';

const CLI = resolve(import.meta.dirname, '../../../bin/cli.ts');
const REPO = resolve(import.meta.dirname, '../../..');

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the CLI as an operator would: the executable file itself, through its shebang. */
function cli(...args: string[]): Promise<Run> {
  return new Promise((done) => {
    execFile(CLI, args, { cwd: REPO, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      done({ code, stdout, stderr });
    });
  });
}

let dir: string;
const file = (name: string): string => join(dir, name);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ca-dms-cli-'));
  const rows = Array.from({ length: 240 }, (_, i) => `${new Date(Date.UTC(2026, 0, 5) + i * 60_000).toISOString()},${i < 120 ? 20 : 80}`);
  await writeFile(file('good.csv'), `timestamp,value\n${rows.join('\n')}\n`);
  await writeFile(file('empty.csv'), '');
  await writeFile(file('nan.csv'), 'timestamp,value\n2026-01-05T00:00:00Z,1\n2026-01-05T00:01:00Z,lots\n');
  await writeFile(file('badtime.csv'), 'timestamp,value\n2026-01-05T00:00:00Z,1\n2026-01-05T00:01:00Z,2\n5th of January,3\n');
  await writeFile(file('order.csv'), 'timestamp,value\n2026-01-05T00:05:00Z,1\n2026-01-05T00:01:00Z,2\n');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe.concurrent('ca-dms-scaling simulate', { timeout: 120_000 }, () => {
  it('prints the score table with every model parameter and the oracle row', async () => {
    const run = await cli('simulate', '--trace', file('good.csv'), '--policy', 'ca-dms,threshold', '--startup', '180');
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/model: tick 60 s, startup 180 s, tasks 2\.\.10, p99 demand 8 task-units, SLO utilisation 0\.9/);
    expect(run.stdout).toMatch(/^ca-dms\s+\d+/m);
    expect(run.stdout).toMatch(/^threshold\s+\d+/m);
    expect(run.stdout).toMatch(/^oracle\s+\d+/m);
  });

  it('prints exactly one JSON object with --format json, every policy with --all', async () => {
    const run = await cli('simulate', '--trace', file('good.csv'), '--all', '--format', 'json', '--missing-fraction', '0.1', '--seed', '5');
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as { trace: string; ticks: number; model: { missingFraction: number }; results: Array<{ policy: string }>; oracle: { policy: string } };
    expect(result.trace).toBe('good.csv');
    expect(result.ticks).toBe(240);
    expect(result.model.missingFraction).toBe(0.1);
    expect(result.results.map((r) => r.policy)).toEqual([...POLICY_NAMES]);
    expect(result.oracle.policy).toBe('oracle');
  });

  it('writes a self-contained HTML report', async () => {
    const out = file('report.html');
    const run = await cli('simulate', '--trace', file('good.csv'), '--report', out);
    expect(run.code).toBe(0);
    const html = await readFile(out, 'utf8');
    expect(html).toMatch(/^<!doctype html>/);
    // The chart library is inlined and nothing is loaded from elsewhere.
    expect(html).toContain('uPlot');
    expect(html).not.toMatch(/<script[^>]* src=|<link /);
    expect(html.match(/<svg /g)).toHaveLength(1);
  });

  it('exits 2 naming a missing file', async () => {
    const run = await cli('simulate', '--trace', file('absent.csv'));
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/absent\.csv: no such file/);
  });

  it('exits 2 on an empty file', async () => {
    const run = await cli('simulate', '--trace', file('empty.csv'));
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/empty\.csv: the file is empty/);
  });

  it('exits 2 naming the line of a non-numeric value', async () => {
    const run = await cli('simulate', '--trace', file('nan.csv'));
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/line 3: value "lots" is not a number/);
  });

  it('exits 2 naming the line of an unparsable timestamp', async () => {
    const run = await cli('simulate', '--trace', file('badtime.csv'));
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/line 4: unparsable timestamp "5th of January"/);
  });

  it('exits 2 on timestamps out of order', async () => {
    const run = await cli('simulate', '--trace', file('order.csv'));
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/line 3: .*timestamps must strictly increase/);
  });

  it('exits 2 on an unknown policy, listing the valid names', async () => {
    const run = await cli('simulate', '--trace', file('good.csv'), '--policy', 'kubernetes');
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`--policy: unknown policy "kubernetes"; valid policies: ${POLICY_NAMES.join(', ')}`);
  });

  it('exits 2 on an invalid flag value, naming the flag and what it accepts', async () => {
    const run = await cli('simulate', '--trace', file('good.csv'), '--tick', 'soon', '--format', 'xml');
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/--tick: expected a whole number of seconds from 1 to 86400, got "soon"/);
    expect(run.stderr).toMatch(/--format: expected one of table, json, got "xml"/);
  });

  it('exits 2 when --min-tasks exceeds --max-tasks', async () => {
    const bounds = await cli('simulate', '--trace', file('good.csv'), '--min-tasks', '5', '--max-tasks', '3');
    expect(bounds.code).toBe(2);
    expect(bounds.stderr).toMatch(/--min-tasks: 5 must not exceed --max-tasks \(3\)/);
  });

  it('replays the NASA trace shipped in the repository when --trace is left out', async () => {
    const run = await cli('simulate', '--format', 'json');
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({ trace: 'nasa-http-1995-requests-per-minute.csv', ticks: 84_332 });
  });

  it('exits 2 on an unknown flag, listing the accepted ones', async () => {
    const run = await cli('simulate', '--trace', file('good.csv'), '--speed', 'fast');
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/Unknown option '--speed'.*accepted flags: --trace, --policy/);
  });

  it('exits 2 on an unknown command, listing the commands', async () => {
    const run = await cli('simulat');
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/unknown command "simulat"; valid commands: .*simulate/);
  });
});
