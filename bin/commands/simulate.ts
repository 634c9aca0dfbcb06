/**
 * `ca-dms-scaling simulate`: replays a workload trace through scaling policies and the oracle
 * and prints the scores (table or JSON), optionally writing an HTML report.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { z } from 'zod';
import { readReportAssets } from '../../functions/adapters/charts/assets.js';
import { SHIPPED_TRACE, TraceFileError, readTraceFile } from '../../functions/adapters/sim/trace-file.js';
import { parseScalingConfig, POLICY_NAMES, ScalingConfigError, type PolicyName, type ScalingConfig } from '../../functions/core/scaling/config.js';
import { getPolicy, POLICIES } from '../../functions/core/scaling/policies/index.js';
import { ANCHOR_DOCUMENT, contestantsFor, simulationConfig } from '../../functions/core/scaling/simulator/anchors.js';
import { formatResultTable } from '../../functions/core/scaling/simulator/format.js';
import { DEFAULT_MODEL, type SimulationModel } from '../../functions/core/scaling/simulator/model.js';
import { renderReport, tradeoffOf } from '../../functions/core/scaling/simulator/report.js';
import { contestant, prepareTrace, simulate, type Contestant } from '../../functions/core/scaling/simulator/simulate.js';
import { TraceError } from '../../functions/core/scaling/simulator/trace.js';
import { applyVariant, parseVariant, VariantError, type VariantSpec } from '../../functions/core/scaling/simulator/variant.js';
import type { CliCommand, CliIo, FlagTable } from './kit.js';
import { choiceFlag, numberFlag, parseFlags, UsageError } from './kit.js';
import { parseJsonText } from '../../functions/core/json-text.js';

const d = DEFAULT_MODEL;

const usage = `Usage: ca-dms-scaling simulate [--trace FILE] [--policy NAME ...] [--all] [--variant SPEC ...]
                                [--config FILE] [--format table|json] [--report FILE] [model flags]

Replays a timestamp,value CSV trace through scaling policies and the clairvoyant oracle.

  --trace FILE              the trace (ISO-8601 or epoch timestamps, any step; plain or
                            gzip; default the NASA 1995 trace shipped in data/traces/)
  --policy NAME             a policy to replay; repeat or comma-separate (default ca-dms)
                            one of: ${POLICY_NAMES.join(', ')}
  --all                     replay every policy
  --variant SPEC            one more row, named SPEC: POLICY or POLICY:path=value[,path=value...]
                            with dotted paths into that policy's resolved configuration, e.g.
                            step:step.scale_out_threshold=60,step.scale_in_threshold=30
                            (repeatable; values are JSON or bare text)
  --config FILE             a scaling configuration (the guide's JSON shape) replacing the
                            simulator's base settings; its min/max_instances bound the fleet
                            unless --min-tasks/--max-tasks are given
  --format table|json       output format (default table); json prints one object
  --report FILE             also write a self-contained HTML report: zoomable charts per row and
                            a trade-off chart (this replays every anchor setting of the sweep too)

Model flags (defaults in brackets):
  --tick SECONDS            evaluation period and resampling step [${d.tickSeconds}]
  --startup SECONDS         from a scale-out decision until the task serves [${d.startupSeconds}]
  --min-tasks N             lower bound on tasks [${d.minTasks}]
  --max-tasks N             upper bound on tasks [${d.maxTasks}]
  --p99-units UNITS         demand is rescaled so its 99th percentile is this [${d.p99TaskUnits}]
  --slo-utilization U       a minute violates the SLO above this demand/running [${d.sloUtilization}]
  --reversal-window SECONDS opposite actions closer than this are a reversal [${d.reversalWindowSeconds}]
  --missing-fraction F      fraction (0..1) of minutes whose metrics are dropped [${d.missingFraction}]
  --seed N                  seed of the PRNG choosing dropped minutes [${d.seed}]
  --initial-tasks N|auto    tasks at the start; auto = enough for the first minute [auto]
  --requests-per-unit N     requests per minute one task-unit represents [${d.requestsPerTaskUnitMinute}]
`;

const table: FlagTable = {
  trace: { type: 'string' },
  policy: { type: 'string', multiple: true },
  all: { type: 'boolean' },
  variant: { type: 'string', multiple: true },
  config: { type: 'string' },
  format: { type: 'string' },
  report: { type: 'string' },
  tick: { type: 'string' },
  startup: { type: 'string' },
  'min-tasks': { type: 'string' },
  'max-tasks': { type: 'string' },
  'p99-units': { type: 'string' },
  'slo-utilization': { type: 'string' },
  'reversal-window': { type: 'string' },
  'missing-fraction': { type: 'string' },
  seed: { type: 'string' },
  'initial-tasks': { type: 'string' },
  'requests-per-unit': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

const policyList = z.array(z.string()).transform((raw, ctx) => {
  const names = raw.flatMap((r) => r.split(',')).map((s) => s.trim()).filter((s) => s !== '');
  const unknown = names.filter((n) => !(POLICY_NAMES as readonly string[]).includes(n));
  if (unknown.length > 0) {
    ctx.addIssue({ code: 'custom', message: `unknown policy ${unknown.map((u) => `"${u}"`).join(', ')}; valid policies: ${POLICY_NAMES.join(', ')}` });
    return z.NEVER;
  }
  return [...new Set(names)] as PolicyName[];
});

const flagsSchema = z
  .object({
    help: z.boolean().optional(),
    trace: z.string().min(1, 'expected a file name').optional(),
    policy: policyList.optional(),
    all: z.boolean().optional(),
    variant: z.array(z.string()).optional(),
    config: z.string().min(1, 'expected a file name').optional(),
    format: choiceFlag(['table', 'json'] as const).optional(),
    report: z.string().min(1, 'expected a file name').optional(),
    tick: numberFlag({ min: 1, max: 86_400, int: true, unit: 'seconds' }).optional(),
    startup: numberFlag({ min: 0, max: 86_400, int: true, unit: 'seconds' }).optional(),
    'min-tasks': numberFlag({ min: 0, max: 10_000, int: true }).optional(),
    'max-tasks': numberFlag({ min: 1, max: 10_000, int: true }).optional(),
    'p99-units': numberFlag({ min: 0.001, max: 10_000 }).optional(),
    'slo-utilization': numberFlag({ min: 0.01, max: 1 }).optional(),
    'reversal-window': numberFlag({ min: 0, max: 86_400, int: true, unit: 'seconds' }).optional(),
    'missing-fraction': numberFlag({ min: 0, max: 1 }).optional(),
    seed: numberFlag({ min: 0, max: 2 ** 32 - 1, int: true }).optional(),
    'initial-tasks': z
      .union([z.literal('auto'), numberFlag({ min: 0, max: 10_000, int: true })], {
        error: (issue) => `expected "auto" or a whole number from 0 to 10000, got "${String(issue.input)}"`,
      })
      .optional(),
    'requests-per-unit': numberFlag({ min: 0, max: 1e9 }).optional(),
  })
  .superRefine((f, ctx) => {
    if (f.help === true) return;
    const min = f['min-tasks'];
    const max = f['max-tasks'];
    if (min !== undefined && max !== undefined && min > max) ctx.addIssue({ code: 'custom', path: ['min-tasks'], message: `${min} must not exceed --max-tasks (${max})` });
    if (f.all === true && f.policy !== undefined) ctx.addIssue({ code: 'custom', path: ['all'], message: 'replays every policy; do not combine it with --policy' });
  });

type Flags = z.infer<typeof flagsSchema>;

/** The fleet's bounds: the flags, else the configuration's instances (whose defaults are the model's). */
function modelFrom(f: Flags, config: ScalingConfig): SimulationModel {
  const initial = f['initial-tasks'];
  const minTasks = f['min-tasks'] ?? config.min_instances;
  const maxTasks = f['max-tasks'] ?? config.max_instances;
  if (minTasks > maxTasks) {
    const flag = f['min-tasks'] !== undefined ? '--min-tasks' : '--max-tasks';
    throw new UsageError(`${flag}: the fleet would have min ${minTasks} above max ${maxTasks} (with --config's min_instances/max_instances)`);
  }
  return {
    tickSeconds: f.tick ?? d.tickSeconds,
    startupSeconds: f.startup ?? d.startupSeconds,
    minTasks,
    maxTasks,
    p99TaskUnits: f['p99-units'] ?? d.p99TaskUnits,
    sloUtilization: f['slo-utilization'] ?? d.sloUtilization,
    reversalWindowSeconds: f['reversal-window'] ?? d.reversalWindowSeconds,
    missingFraction: f['missing-fraction'] ?? d.missingFraction,
    seed: f.seed ?? d.seed,
    initialTasks: initial === undefined || initial === 'auto' ? null : initial,
    requestsPerTaskUnitMinute: f['requests-per-unit'] ?? d.requestsPerTaskUnitMinute,
  };
}

/** Reads and validates `--config FILE`: JSON, then the scaling configuration schema. */
async function readConfigDocument(path: string, shown: string): Promise<{ document: Record<string, unknown>; config: ScalingConfig }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new UsageError(`--config ${shown}: ${code === 'ENOENT' ? 'no such file' : `cannot be read (${code ?? String(error)})`}`, { cause: error });
  }
  let document: unknown;
  try {
    document = parseJsonText(text);
  } catch (error) {
    throw new UsageError(`--config ${shown}: not valid JSON (${error instanceof Error ? error.message : String(error)})`, { cause: error });
  }
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw new UsageError(`--config ${shown}: expected a JSON object (the scaling configuration), got ${Array.isArray(document) ? 'an array' : String(document === null ? 'null' : typeof document)}`);
  }
  try {
    return { document: document as Record<string, unknown>, config: parseScalingConfig(document) };
  } catch (error) {
    if (!(error instanceof ScalingConfigError)) throw error;
    throw new UsageError(`--config ${shown}: ${error.issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`, { cause: error });
  }
}

/** The rows: the policies chosen, then each variant under its spec. Names must be unique. */
function contestantsOf(flags: Flags, model: SimulationModel, document: Readonly<Record<string, unknown>>): Contestant[] {
  const names: PolicyName[] = flags.all === true ? POLICY_NAMES.filter((n) => POLICIES[n] !== undefined) : (flags.policy ?? ['ca-dms']);
  const unavailable = names.filter((n) => POLICIES[n] === undefined);
  if (unavailable.length > 0) throw new UsageError(`--policy: ${unavailable.join(', ')} is not available in this build`);
  let variants: VariantSpec[];
  try {
    variants = (flags.variant ?? []).map(parseVariant);
  } catch (error) {
    if (error instanceof VariantError) throw new UsageError(`--variant ${error.message}`, { cause: error });
    throw error;
  }
  const rows = [...contestantsFor(names, model, document)];
  for (const v of variants) {
    if (rows.some((r) => r.name === v.spec)) throw new UsageError(`--variant "${v.spec}": a row of that name is already replayed; give each variant once`);
    try {
      rows.push(contestant(v.spec, getPolicy(v.policy), applyVariant(simulationConfig(v.policy, model, document), v)));
    } catch (error) {
      if (error instanceof VariantError) throw new UsageError(`--variant ${error.message}`, { cause: error });
      throw error;
    }
  }
  return rows;
}

async function run(args: readonly string[], io: CliIo): Promise<number> {
  const flags = parseFlags(args, table, flagsSchema);
  if (flags.help === true) {
    io.stdout(usage);
    return 0;
  }
  const base =
    flags.config === undefined
      ? { document: ANCHOR_DOCUMENT, config: parseScalingConfig(ANCHOR_DOCUMENT) }
      : await readConfigDocument(resolve(io.cwd, flags.config), flags.config);
  const model = modelFrom(flags, base.config);
  const contestants = contestantsOf(flags, model, base.document);
  const tracePath = flags.trace === undefined ? SHIPPED_TRACE : resolve(io.cwd, flags.trace);
  let trace;
  try {
    const file = await readTraceFile(tracePath);
    trace = prepareTrace(file.name, file.points, model);
  } catch (error) {
    if (error instanceof TraceFileError || error instanceof TraceError) throw new UsageError(error.message, { cause: error });
    throw error;
  }
  const runResult = simulate(trace, contestants, model);
  if (flags.report !== undefined) {
    const html = renderReport(runResult, { assets: await readReportAssets(), tradeoff: tradeoffOf(runResult.result, trace, model) });
    await writeFile(resolve(io.cwd, flags.report), html);
  }
  if (flags.format === 'json') io.stdout(`${JSON.stringify(runResult.result)}\n`);
  else io.stdout(formatResultTable(runResult.result));
  return 0;
}

/** The `simulate` command. */
export const simulateCommand: CliCommand = {
  name: 'simulate',
  summary: 'replay a workload trace through scaling policies and score them against the oracle',
  usage,
  run,
};
