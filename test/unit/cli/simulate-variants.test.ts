/**
 * `simulate --variant` and `--config`, run in-process through the command (the spawned-CLI
 * tests in simulate.test.ts already prove a UsageError exits 2 with its message on stderr).
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { simulateCommand } from '../../../bin/commands/simulate.js';
import { UsageError } from '../../../bin/commands/kit.js';

let dir: string;
const file = (name: string): string => join(dir, name);

/** Runs `simulate` with `args`; resolves to what it printed, rejects with what it threw. */
async function simulate(...args: string[]): Promise<string> {
  let out = '';
  await simulateCommand.run(args, { stdout: (t) => (out += t), stderr: () => undefined, cwd: dir });
  return out;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ca-dms-variants-'));
  // Demand doubles halfway through, so settings that keep more headroom spend more.
  const rows = Array.from({ length: 240 }, (_, i) => `${new Date(Date.UTC(2026, 0, 5) + i * 60_000).toISOString()},${i < 120 ? 20 : 80}`);
  await writeFile(file('good.csv'), `timestamp,value\n${rows.join('\n')}\n`);
  await writeFile(file('dup.csv'), 'timestamp,value\n2026-01-05T00:00:00Z,1\n2026-01-05T00:01:00Z,2\n2026-01-05T00:01:00Z,3\n');
  await writeFile(file('one.csv'), 'timestamp,value\n2026-01-05T00:00:00Z,1\n');
  await writeFile(file('cpu40.json'), JSON.stringify({ targets: { cpu: 40 }, min_instances: 3, max_instances: 12 }));
  await writeFile(file('badconfig.json'), JSON.stringify({ cpu_scale_up: 20, cpu_scale_down: 30, foo: 1 }));
  await writeFile(file('notjson.json'), '{ "targets": ');
  await writeFile(file('array.json'), '[]');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Json = { model: { minTasks: number; maxTasks: number }; results: Array<{ policy: string; taskMinutes: number }> };

describe('simulate --variant', () => {
  const spec = 'step:step.scale_out_threshold=60,step.scale_in_threshold=30';

  it('adds a row per variant, named by its spec verbatim, to the JSON and the report', async () => {
    const out = file('variants.html');
    const json = JSON.parse(await simulate('--trace', 'good.csv', '--policy', 'step', '--variant', spec, '--variant', 'hpa:targets.cpu=50', '--format', 'json', '--report', out)) as Json;

    expect(json.results.map((r) => r.policy)).toEqual(['step', spec, 'hpa:targets.cpu=50']);
    // A lower scale-out threshold keeps more tasks than the default 70.
    expect(json.results[1]?.taskMinutes).toBeGreaterThan(json.results[0]?.taskMinutes ?? Infinity);
    expect(await readFile(out, 'utf8')).toContain(`<td>${spec}</td>`);
  });

  it('adds the row to the table, beside the default ca-dms row', async () => {
    const table = await simulate('--trace', 'good.csv', '--variant', spec);

    expect(table).toMatch(/^ca-dms\s+\d+/m);
    expect(table).toContain(`\n${spec} `);
  });

  it.each([
    ['hpa:targets.cpux=50', '--variant "hpa:targets.cpux=50": unknown setting "targets.cpux"'],
    ['step:step.scale_out_threshold=20', '--variant "step:step.scale_out_threshold=20": step.scale_in_threshold: step.scale_in_threshold (40) must be below step.scale_out_threshold (20)'],
    ['hpa:targets.cpu=hot', '--variant "hpa:targets.cpu=hot": targets.cpu:'],
    ['hpa:', '--variant "hpa:": nothing after the colon'],
    ['kubernetes:targets.cpu=50', '--variant "kubernetes:targets.cpu=50": unknown policy "kubernetes"'],
  ])('rejects %s as a usage error naming it', async (variant, message) => {
    const run = simulate('--trace', 'good.csv', '--variant', variant);

    await expect(run).rejects.toThrow(UsageError);
    await expect(run).rejects.toThrow(message);
  });

  it('rejects a variant that repeats a row', async () => {
    await expect(simulate('--trace', 'good.csv', '--policy', 'hpa', '--variant', 'hpa')).rejects.toThrow('--variant "hpa": a row of that name is already replayed');
  });
});

describe('simulate --config', () => {
  it('replaces the base configuration, its instances bounding the fleet', async () => {
    const base = JSON.parse(await simulate('--trace', 'good.csv', '--policy', 'hpa', '--format', 'json')) as Json;
    const replaced = JSON.parse(await simulate('--trace', 'good.csv', '--policy', 'hpa', '--format', 'json', '--config', 'cpu40.json')) as Json;

    expect(replaced.model).toMatchObject({ minTasks: 3, maxTasks: 12 });
    expect(replaced.results[0]?.taskMinutes).toBeGreaterThan(base.results[0]?.taskMinutes ?? Infinity);
  });

  it('lets --max-tasks override the configuration, and refuses bounds that cross', async () => {
    const json = JSON.parse(await simulate('--trace', 'good.csv', '--format', 'json', '--config', 'cpu40.json', '--max-tasks', '8')) as Json;

    expect(json.model).toMatchObject({ minTasks: 3, maxTasks: 8 });
    await expect(simulate('--trace', 'good.csv', '--config', 'cpu40.json', '--max-tasks', '2')).rejects.toThrow('--max-tasks: the fleet would have min 3 above max 2');
  });

  it.each([
    ['badconfig.json', /--config badconfig\.json: .*foo: unknown key.*cpu_scale_down: cpu_scale_down \(30\) must be below cpu_scale_up \(20\)/],
    ['notjson.json', /--config notjson\.json: not valid JSON/],
    ['array.json', /--config array\.json: expected a JSON object \(the scaling configuration\), got an array/],
    ['nothere.json', /--config nothere\.json: no such file/],
  ])('rejects %s as a usage error naming what is wrong', async (name, message) => {
    const run = simulate('--trace', 'good.csv', '--config', name);

    await expect(run).rejects.toThrow(UsageError);
    await expect(run).rejects.toThrow(message);
  });
});

describe('simulate trace errors', () => {
  it.each([
    ['dup.csv', /line 4: timestamp 2026-01-05T00:01:00Z is not after the previous row's \(line 3\)/],
    ['one.csv', /line 2: the only data row; a trace needs at least two rows/],
  ])('rejects %s naming the line', async (name, message) => {
    await expect(simulate('--trace', name)).rejects.toThrow(message);
  });
});
