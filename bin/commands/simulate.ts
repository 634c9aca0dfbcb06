/**
 * `ca-dms-scaling simulate`: replays a workload trace through scaling policies and the oracle
 * and prints the scores (table or JSON), optionally writing an HTML report.
 */
import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { z } from 'zod';
import { TraceFileError, readTraceFile } from '../../functions/adapters/sim/trace-file.js';
import { POLICY_NAMES, type PolicyName } from '../../functions/core/scaling/config.js';
import { POLICIES } from '../../functions/core/scaling/policies/index.js';
import { contestantsFor } from '../../functions/core/scaling/simulator/anchors.js';
import { formatResultTable } from '../../functions/core/scaling/simulator/format.js';
import { DEFAULT_MODEL, type SimulationModel } from '../../functions/core/scaling/simulator/model.js';
import { renderReport } from '../../functions/core/scaling/simulator/report.js';
import { prepareTrace, simulate } from '../../functions/core/scaling/simulator/simulate.js';
import { TraceError } from '../../functions/core/scaling/simulator/trace.js';
import type { CliCommand, CliIo, FlagTable } from './kit.js';
import { choiceFlag, numberFlag, parseFlags, UsageError } from './kit.js';

const d = DEFAULT_MODEL;

const usage = `Usage: ca-dms-scaling simulate --trace FILE [--policy NAME ...] [--all]
                                [--format table|json] [--report out.html] [model flags]

Replays a timestamp,value CSV trace through scaling policies and the clairvoyant oracle.

  --trace FILE              the trace (ISO-8601 or epoch timestamps, any step)
  --policy NAME             a policy to replay; repeat or comma-separate (default ca-dms)
                            one of: ${POLICY_NAMES.join(', ')}
  --all                     replay every policy
  --format table|json       output format (default table); json prints one object
  --report FILE             also write a self-contained HTML report with a chart per policy

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
    if (f.trace === undefined) ctx.addIssue({ code: 'custom', path: ['trace'], message: 'is required: the CSV trace to replay' });
    const min = f['min-tasks'] ?? d.minTasks;
    const max = f['max-tasks'] ?? d.maxTasks;
    if (min > max) ctx.addIssue({ code: 'custom', path: ['min-tasks'], message: `${min} must not exceed --max-tasks (${max})` });
    if (f.all === true && f.policy !== undefined) ctx.addIssue({ code: 'custom', path: ['all'], message: 'replays every policy; do not combine it with --policy' });
  });

function modelFrom(f: z.infer<typeof flagsSchema>): SimulationModel {
  const initial = f['initial-tasks'];
  return {
    tickSeconds: f.tick ?? d.tickSeconds,
    startupSeconds: f.startup ?? d.startupSeconds,
    minTasks: f['min-tasks'] ?? d.minTasks,
    maxTasks: f['max-tasks'] ?? d.maxTasks,
    p99TaskUnits: f['p99-units'] ?? d.p99TaskUnits,
    sloUtilization: f['slo-utilization'] ?? d.sloUtilization,
    reversalWindowSeconds: f['reversal-window'] ?? d.reversalWindowSeconds,
    missingFraction: f['missing-fraction'] ?? d.missingFraction,
    seed: f.seed ?? d.seed,
    initialTasks: initial === undefined || initial === 'auto' ? null : initial,
    requestsPerTaskUnitMinute: f['requests-per-unit'] ?? d.requestsPerTaskUnitMinute,
  };
}

async function run(args: readonly string[], io: CliIo): Promise<number> {
  const flags = parseFlags(args, table, flagsSchema);
  if (flags.help === true) {
    io.stdout(usage);
    return 0;
  }
  const model = modelFrom(flags);
  const names: PolicyName[] = flags.all === true ? POLICY_NAMES.filter((n) => POLICIES[n] !== undefined) : (flags.policy ?? ['ca-dms']);
  const unavailable = names.filter((n) => POLICIES[n] === undefined);
  if (unavailable.length > 0) throw new UsageError(`--policy: ${unavailable.join(', ')} is not available in this build`);
  const tracePath = resolve(io.cwd, flags.trace as string);
  let trace;
  try {
    const file = await readTraceFile(tracePath);
    trace = prepareTrace(file.name, file.points, model);
  } catch (error) {
    if (error instanceof TraceFileError || error instanceof TraceError) throw new UsageError(error.message, { cause: error });
    throw error;
  }
  const runResult = simulate(trace, contestantsFor(names, model), model);
  if (flags.report !== undefined) await writeFile(resolve(io.cwd, flags.report), renderReport(runResult));
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
