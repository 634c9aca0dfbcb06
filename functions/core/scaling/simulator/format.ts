/** Plain-text rendering of simulation results, shared by the CLI and the benchmark. */
import type { SimulationModel } from './model.js';
import type { PolicyResult, SimulationResult } from './simulate.js';

/**
 * One line stating every model parameter, printed with every result.
 *
 * @example
 * ```ts
 * describeModel(DEFAULT_MODEL); // 'tick 60 s, startup 120 s, tasks 2..10, ...'
 * ```
 */
export function describeModel(m: SimulationModel): string {
  return [
    `tick ${m.tickSeconds} s`,
    `startup ${m.startupSeconds} s`,
    `tasks ${m.minTasks}..${m.maxTasks}`,
    `p99 demand ${m.p99TaskUnits} task-units`,
    `SLO utilisation ${m.sloUtilization}`,
    `reversal window ${m.reversalWindowSeconds} s`,
    `missing metrics ${m.missingFraction} (seed ${m.seed})`,
    `initial tasks ${m.initialTasks ?? 'auto'}`,
    `${m.requestsPerTaskUnitMinute} requests/task-unit/min`,
  ].join(', ');
}

const HEAD = ['policy', 'slo-viol-min', 'task-min', 'actions', 'reversals', 'acc_U%', 'acc_O%', 'time_U%', 'time_O%', 'max'];

function row(r: PolicyResult): string[] {
  return [
    r.policy,
    String(r.sloViolationMinutes),
    String(r.taskMinutes),
    String(r.actions),
    String(r.reversals),
    r.accuracyU.toFixed(2),
    r.accuracyO.toFixed(1),
    r.timeshareU.toFixed(2),
    r.timeshareO.toFixed(2),
    String(r.maxTasks),
  ];
}

/**
 * Aligns rows into columns (first column left, the rest right).
 *
 * @example
 * ```ts
 * alignColumns([['policy', 'min'], ['hpa', '12']]); // 'policy  min\nhpa      12'
 * ```
 */
export function alignColumns(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length))) ?? [];
  return rows
    .map((r) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0))).join('  ').trimEnd())
    .join('\n');
}

/**
 * The results as a text table, with the trace and the model above it.
 *
 * @example
 * ```ts
 * console.log(formatResultTable(run.result));
 * ```
 */
export function formatResultTable(result: SimulationResult): string {
  const table = alignColumns([HEAD, ...result.results.map(row), row(result.oracle)]);
  return `trace ${result.trace} (${result.ticks} ticks)\nmodel: ${describeModel(result.model)}\n${table}\n`;
}
