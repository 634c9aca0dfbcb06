/**
 * The one configured Logger, Metrics and Tracer of the control-plane functions. Service name
 * and namespace come from the Powertools environment variables the CDK app sets
 * (`POWERTOOLS_SERVICE_NAME`, `POWERTOOLS_METRICS_NAMESPACE`), with these defaults.
 *
 * @example
 * ```ts
 * import { logger, metrics } from './shared/powertools.js';
 * logger.info('evaluation finished', { decisions: 4 });
 * metrics.addMetric('EvaluationDuration', MetricUnit.Milliseconds, 120);
 * ```
 */
import { Logger } from '@aws-lambda-powertools/logger';
import { Metrics } from '@aws-lambda-powertools/metrics';
import { Tracer } from '@aws-lambda-powertools/tracer';

/**
 * The `service` dimension of every control-plane metric. One value for all functions, so the
 * desired count the evaluator and the alarm function publish is one series per scaled service;
 * the dashboard (`lib/observability/scaling-dashboard.ts`) names the same value.
 */
export const METRICS_SERVICE = 'ca-dms-scaling-controller';

// Logs and traces carry each function's own name (the CDK app sets POWERTOOLS_SERVICE_NAME);
// a constructor option would override it, so it is passed only as the fallback.
const serviceName = process.env['POWERTOOLS_SERVICE_NAME'] ?? METRICS_SERVICE;

export const logger = new Logger({ serviceName });
export const metrics = new Metrics({ serviceName: METRICS_SERVICE, namespace: 'CaDmsScaling' });
export const tracer = new Tracer({ serviceName });
