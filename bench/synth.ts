/**
 * `npm run bench:synth [-- --runs 3 --env dev]`: how long `cdk synth` of the default
 * configuration takes on this machine, from a cold process each time (tsx start-up, the
 * five stacks, local esbuild bundling of the four functions, cdk-nag), compared with the
 * 30 s goal. It also times runs with CDK's built-in CloudFormation schema validation
 * (`CDK_VALIDATION=true`, off by default in `bin/app.ts`, always on in the infra tests) to
 * show what that check costs.
 *
 * Wall time depends on what else the machine runs, so the 1-minute load average and the CPU
 * time of the synth's own process tree are printed beside it.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { z } from 'zod';

const GOAL_MS = 30_000;
const root = join(dirname(fileURLToPath(import.meta.url)), '..');

const flagsSchema = z.strictObject({
  runs: z.string().regex(/^[1-9]\d*$/, '--runs must be a whole number of at least 1').transform(Number).default(3),
  env: z.string().regex(/^[a-z][a-z0-9]{0,9}$/, '--env must name a config/<env>.json environment').default('dev'),
});

function parseFlags(argv: readonly string[]): z.output<typeof flagsSchema> {
  const { values } = parseArgs({ args: [...argv], options: { runs: { type: 'string' }, env: { type: 'string' } }, strict: true });
  const parsed = flagsSchema.safeParse(values);
  if (!parsed.success) {
    console.error(parsed.error.issues.map((i) => i.message).join('\n'));
    console.error('usage: npm run bench:synth -- [--runs N] [--env dev|prod]');
    process.exit(64);
  }
  return parsed.data;
}

/** Linux's clock tick (USER_HZ), the unit of the CPU times in /proc. */
const CLOCK_TICKS_PER_SECOND = 100;

/**
 * CPU time (user + system, ms) of this process's finished children, from /proc/self/stat
 * (cutime, cstime): it measures the synth's own work whatever else loads the machine.
 */
function childrenCpuMs(): number {
  // The command name (field 2) may contain spaces; the fields after its ')' are fixed.
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]?.split(' ') ?? [];
  const cutime = Number(fields[13]);
  const cstime = Number(fields[14]);
  return ((cutime + cstime) * 1000) / CLOCK_TICKS_PER_SECOND;
}

interface Run {
  readonly wallMs: number;
  readonly cpuMs: number;
}

/** One cold `cdk synth`: its wall time and the CPU time of its process tree. */
function synthOnce(env: string, validation: boolean): Run {
  const outdir = mkdtempSync(join(tmpdir(), 'ca-dms-bench-synth-'));
  const cpuBefore = childrenCpuMs();
  const started = performance.now();
  const result = spawnSync(join(root, 'node_modules', '.bin', 'cdk'), ['synth', '--quiet', '--output', outdir, '-c', `ca-dms:environment=${env}`], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, CDK_VALIDATION: validation ? 'true' : 'false' },
  });
  const elapsed = performance.now() - started;
  const cpuMs = childrenCpuMs() - cpuBefore;
  rmSync(outdir, { recursive: true, force: true });
  if (result.status !== 0) {
    console.error(result.stdout, result.stderr);
    throw new Error(`cdk synth failed with status ${result.status}`);
  }
  return { wallMs: elapsed, cpuMs };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

const flags = parseFlags(process.argv.slice(2));
console.log(`cdk synth of config/${flags.env}.json, ${flags.runs} cold run(s) each, ${cpus().length} CPUs, load average ${loadavg()[0]?.toFixed(1)} at start`);
const standard = Array.from({ length: flags.runs }, () => synthOnce(flags.env, false));
const withValidation = Array.from({ length: flags.runs }, () => synthOnce(flags.env, true));
const report = (label: string, runs: readonly Run[]): void => {
  const wall = runs.map((r) => r.wallMs);
  const cpu = runs.map((r) => r.cpuMs);
  console.log(`  ${label.padEnd(46)}: wall ${wall.map(seconds).join(', ')} (median ${seconds(median(wall))}); CPU ${cpu.map(seconds).join(', ')} (median ${seconds(median(cpu))})`);
};
const m = median(standard.map((r) => r.wallMs));
report('npm run synth (cdk-nag)', standard);
report('CDK_VALIDATION=true (cdk-nag + CFN validation)', withValidation);
console.log(`  load average at end: ${loadavg()[0]?.toFixed(1)}`);
console.log(`goal: median wall time of the default synth under ${seconds(GOAL_MS)} -> ${m < GOAL_MS ? 'met' : 'NOT met'} (${seconds(m)})`);
