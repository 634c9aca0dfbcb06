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

const serviceName = 'ca-dms-scaling-controller';

export const logger = new Logger({ serviceName });
export const metrics = new Metrics({ serviceName, namespace: 'CaDmsScaling' });
export const tracer = new Tracer({ serviceName });
