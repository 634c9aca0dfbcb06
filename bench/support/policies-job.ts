/**
 * One unit of `bench:policies` work, run in a worker process: one trace (a file or a
 * synthetic week) under one model (all metrics, or 5 % of the metric minutes missing), every
 * anchor setting swept and every ca-dms candidate replayed.
 */
import { join } from 'node:path';
import { readTraceFile } from '../../functions/adapters/sim/trace-file.js';
import type { CaDmsSettings } from '../../functions/core/scaling/policies/ca-dms.js';
import { getPolicy } from '../../functions/core/scaling/policies/index.js';
import { simulationConfig } from '../../functions/core/scaling/simulator/anchors.js';
import { DEFAULT_MODEL } from '../../functions/core/scaling/simulator/model.js';
import type { PolicyResult, PreparedTrace } from '../../functions/core/scaling/simulator/simulate.js';
import { contestant, prepareTrace, simulate } from '../../functions/core/scaling/simulator/simulate.js';
import type { AnchorFrontier } from '../../functions/core/scaling/simulator/sweep.js';
import { runAnchors, withMissing } from '../../functions/core/scaling/simulator/sweep.js';
import { syntheticWeek } from './weeks.js';

export interface PolicyJob {
  /** A trace file in `dir`, or a synthetic week's name. */
  readonly source: { readonly file: string; readonly dir: string } | { readonly week: string };
  readonly missing: boolean;
  /** The ca-dms settings replayed, each over the configuration's defaults. */
  readonly candidates: ReadonlyArray<Partial<CaDmsSettings>>;
}

export interface PolicyJobResult {
  readonly trace: string;
  readonly minutes: number;
  readonly missing: boolean;
  readonly anchors: AnchorFrontier;
  /** One row per candidate, in order. */
  readonly candidates: readonly PolicyResult[];
  readonly ms: number;
  /** CPU time the job used (user + system), which a loaded machine does not inflate. */
  readonly cpuMs: number;
}

async function load(job: PolicyJob): Promise<PreparedTrace> {
  if ('week' in job.source) return syntheticWeek(job.source.week, DEFAULT_MODEL);
  const trace = await readTraceFile(join(job.source.dir, job.source.file));
  return prepareTrace(job.source.file, trace.points, DEFAULT_MODEL);
}

/**
 * Runs one job.
 *
 * @example
 * ```ts
 * const result = await runPolicyJob({ source: { week: SYNTHETIC_WEEKS[0] }, missing: false, candidates: [{}] });
 * ```
 */
export async function runPolicyJob(job: PolicyJob): Promise<PolicyJobResult> {
  const started = performance.now();
  const cpu = process.cpuUsage();
  const trace = await load(job);
  const model = job.missing ? withMissing(DEFAULT_MODEL) : DEFAULT_MODEL;
  const anchors = runAnchors(trace, model);
  const base = simulationConfig('ca-dms', model);
  const policy = getPolicy('ca-dms');
  const contestants = job.candidates.map((c, i) => contestant(`ca-dms #${i}`, policy, { ...base, ca_dms: { ...base.ca_dms, ...c } }));
  const candidates = simulate(trace, contestants, model).result.results;
  return { trace: trace.name, minutes: trace.demand.length, missing: job.missing, anchors, candidates, ms: performance.now() - started, cpuMs: cpuMs(process.cpuUsage(cpu)) };
}

function cpuMs(usage: NodeJS.CpuUsage): number {
  return (usage.user + usage.system) / 1000;
}
