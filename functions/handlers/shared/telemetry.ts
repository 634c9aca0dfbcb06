/**
 * The controller's CloudWatch metrics (EMF through Powertools): decisions by direction and by
 * outcome, the desired count per service, the evaluation duration, and degraded evaluations.
 * Dimension names avoid Powertools' own `service` dimension (the function's service name).
 */
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import type { EvaluationResult } from '../../core/scaling/controller.js';
import { metrics } from './powertools.js';

/** Emits the metrics of one evaluation. */
export function emitEvaluationMetrics(result: EvaluationResult, durationMs: number): void {
  metrics.addMetric('EvaluationDuration', MetricUnit.Milliseconds, durationMs);
  if (result.degraded) metrics.addMetric('DegradedEvaluations', MetricUnit.Count, 1);
  if (result.stopped) metrics.addMetric('StoppedEvaluations', MetricUnit.Count, 1);
  if (result.busy) metrics.addMetric('SkippedEvaluations', MetricUnit.Count, 1);
  const byDirection = new Map<string, number>();
  const byOutcome = new Map<string, number>();
  for (const d of result.decisions) {
    byDirection.set(d.direction, (byDirection.get(d.direction) ?? 0) + 1);
    byOutcome.set(d.outcome, (byOutcome.get(d.outcome) ?? 0) + 1);
    const desired = metrics.singleMetric();
    desired.addDimension('ScaledService', d.service);
    desired.addMetric('DesiredCount', MetricUnit.Count, d.outcome === 'applied' ? d.to : d.from);
  }
  for (const [direction, n] of byDirection) {
    const m = metrics.singleMetric();
    m.addDimension('Direction', direction);
    m.addMetric('Decisions', MetricUnit.Count, n);
  }
  for (const [outcome, n] of byOutcome) {
    const m = metrics.singleMetric();
    m.addDimension('Outcome', outcome);
    m.addMetric('DecisionOutcomes', MetricUnit.Count, n);
  }
}

/** A short summary of an evaluation for the function's response and its log line. */
export function summarise(result: EvaluationResult): {
  stopped: boolean;
  degraded: boolean;
  decisions: Array<{ service: string; from: number; to: number; outcome: string }>;
  warnings: readonly string[];
  /** Set when another evaluation was running: this one changed nothing. */
  skipped?: { holder: string; since: string; until: string };
} {
  return {
    ...(result.busy
      ? { skipped: { holder: result.busy.holder, since: new Date(result.busy.since).toISOString(), until: new Date(result.busy.until).toISOString() } }
      : {}),
    stopped: result.stopped,
    degraded: result.degraded,
    decisions: result.decisions.map((d) => ({ service: d.service, from: d.from, to: d.to, outcome: d.outcome })),
    warnings: result.warnings,
  };
}

/** The time budget for an evaluation: what Lambda has left minus a safety margin, at least 1 s. */
export function budgetSignal(remainingMs: number, marginMs: number): AbortSignal {
  return AbortSignal.timeout(Math.max(remainingMs - marginMs, 1000));
}

/**
 * The evaluation lease's lifetime for an invocation: exactly what Lambda has left, since the
 * invocation cannot outlive it (a container killed at its timeout frees the lease then).
 */
export function leaseTtl(remainingMs: number): number {
  return Math.max(1000, Math.floor(remainingMs));
}
