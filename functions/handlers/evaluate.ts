/**
 * `evaluate`: invoked by the EventBridge schedule. Validates the event, evaluates every enabled
 * service, and emits the evaluation's metrics; decisions are logged one line each by the runtime.
 * A malformed event is logged and rejected without evaluating anything.
 */
import type { Context } from 'aws-lambda';
import { z } from 'zod';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { withPowertools } from './shared/middleware.js';
import { logger, metrics } from './shared/powertools.js';
import { controllerRuntime, type ControllerRuntime } from './shared/runtime.js';
import { budgetSignal, emitEvaluationMetrics, leaseTtl, summarise } from './shared/telemetry.js';
import { loadParameterEnv } from './shared/parameter-env.js';

// The deployment's growing configuration (SSM Parameter Store), read once in the init phase.
await loadParameterEnv();

/** An EventBridge scheduled event (a rule with a schedule expression). */
export const scheduledEventSchema = z.object({
  version: z.string(),
  id: z.string().min(1),
  'detail-type': z.literal('Scheduled Event'),
  source: z.literal('aws.events'),
  account: z.string().regex(/^\d{12}$/),
  time: z.iso.datetime(),
  region: z.string().min(1),
  resources: z.array(z.string()),
  detail: z.record(z.string(), z.unknown()),
});

export type EvaluateResponse =
  | ({ accepted: true } & ReturnType<typeof summarise>)
  | { accepted: false; issues: Array<{ path: string; message: string }> };

/** Builds the handler around a runtime provider (tests pass their own runtime). */
export function createEvaluateHandler(runtime: () => ControllerRuntime) {
  return withPowertools(async (event: unknown, context: Context): Promise<EvaluateResponse> => {
    const parsed = scheduledEventSchema.safeParse(event);
    if (!parsed.success) {
      const issues = parsed.error.issues.map((i) => ({ path: i.path.map(String).join('.') || '(root)', message: i.message }));
      logger.error('rejected event: not an EventBridge scheduled event; nothing evaluated', { issues });
      metrics.addMetric('RejectedEvents', MetricUnit.Count, 1);
      return { accepted: false, issues };
    }
    const rt = runtime();
    const started = performance.now();
    const remaining = context.getRemainingTimeInMillis();
    // Another evaluation running means this tick stands aside at once: the next one follows.
    const result = await rt.controller.evaluate({ trigger: 'schedule', signal: budgetSignal(remaining, rt.env.safetyMarginMs), leaseTtlMs: leaseTtl(remaining) });
    emitEvaluationMetrics(result, performance.now() - started);
    const summary = summarise(result);
    if (summary.skipped) logger.warn('evaluation skipped: another evaluation is running', { eventId: parsed.data.id, ...summary });
    else logger.info('evaluation finished', { eventId: parsed.data.id, ...summary });
    return { accepted: true, ...summary };
  });
}

export const handler = createEvaluateHandler(controllerRuntime);
