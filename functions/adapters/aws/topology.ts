/**
 * Where each scaled service lives in AWS: its ECS cluster and service, its ALB target group and
 * load balancer, and the metric that measures its queue. The CDK app writes this document into
 * the controller's environment (`SCALING_TARGETS_JSON`); it is validated here with zod.
 *
 * @example
 * ```ts
 * const topology = parseTopology({
 *   services: {
 *     'backend-read': { cluster: 'ca-dms', ecsService: 'ca-dms-backend-read',
 *       targetGroup: 'targetgroup/read/0123456789abcdef', loadBalancer: 'app/ca-dms/0123456789abcdef' },
 *     worker: { cluster: 'ca-dms', ecsService: 'ca-dms-worker',
 *       queue: { namespace: 'AWS/SQS', metricName: 'ApproximateNumberOfMessagesVisible',
 *                dimensions: [{ name: 'QueueName', value: 'ca-dms-jobs' }], statistic: 'Maximum' } },
 *   },
 * });
 * ```
 */
import { z } from 'zod';
import { issuesOf } from '../../core/scaling/config.js';

/**
 * The tag a per-service stop (POST /stop {"service"}) leaves on that ECS service, and the one the
 * global stop leaves on every scaled service (value: who and when). An evaluation without the
 * catalog reads them from DescribeServices; the API's role may set only these (the CDK app).
 */
export const STOPPED_TAG = 'ca-dms-scaling:stopped';
export const STOPPED_ALL_TAG = 'ca-dms-scaling:stopped-all';

/**
 * The statistic of `TargetResponseTime` for the controller AND the response-time alarms (the
 * CDK app imports this): the 95th percentile. The guide's 1000 ms threshold is about what users
 * wait, and an average hides a slow tail behind many fast requests. Above all both sides must
 * read the same number: an alarm on p95 that triggers an evaluation reading the average would
 * find nothing to act on.
 */
export const RESPONSE_TIME_STATISTIC = 'p95';

/** The queue-depth metric of a service: an SQS queue's metric or one the application publishes. */
export const queueMetricSchema = z.strictObject({
  namespace: z.string().min(1),
  metricName: z.string().min(1),
  dimensions: z.array(z.strictObject({ name: z.string().min(1), value: z.string().min(1) })).max(30).default([]),
  statistic: z.enum(['Average', 'Sum', 'Maximum', 'Minimum', 'SampleCount']).default('Maximum'),
});
export type QueueMetric = z.infer<typeof queueMetricSchema>;

export const serviceTopologySchema = z.strictObject({
  cluster: z.string().min(1),
  ecsService: z.string().min(1),
  /** The target group's ARN suffix, `targetgroup/NAME/ID` (the CloudWatch dimension value). */
  targetGroup: z.string().regex(/^targetgroup\/[^/]+\/[0-9a-f]+$/, 'expected the ARN suffix targetgroup/NAME/ID').optional(),
  /** The load balancer's ARN suffix, `app/NAME/ID`. */
  loadBalancer: z.string().regex(/^app\/[^/]+\/[0-9a-f]+$/, 'expected the ARN suffix app/NAME/ID').optional(),
  queue: queueMetricSchema.optional(),
}).refine((s) => (s.targetGroup === undefined) === (s.loadBalancer === undefined), {
  message: 'targetGroup and loadBalancer go together (target-group metrics carry both dimensions)',
});
export type ServiceTopology = z.infer<typeof serviceTopologySchema>;

export const topologySchema = z.strictObject({
  services: z.record(z.string().regex(/^[a-z][a-z0-9-]{0,62}$/), serviceTopologySchema),
  /** The metrics period in seconds (CloudWatch's standard resolution is 60). */
  periodSeconds: z.number().int().min(60).multipleOf(60).default(60),
});
export type Topology = z.infer<typeof topologySchema>;

/** A topology document that failed validation; `issues` names each bad path. */
export class TopologyError extends Error {
  override readonly name = 'TopologyError';
  constructor(
    readonly issues: ReadonlyArray<{ path: string; message: string }>,
    options?: { cause?: unknown },
  ) {
    super(`invalid scaling topology: ${issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`, options);
  }
}

/** Validates a topology document. Throws {@link TopologyError}. */
export function parseTopology(input: unknown): Topology {
  const result = topologySchema.safeParse(input);
  if (!result.success) throw new TopologyError(issuesOf(result.error), { cause: result.error });
  return result.data;
}

/** Looks a service up, failing with a clear message when the topology does not know it. */
export function topologyOf(topology: Topology, service: string): ServiceTopology {
  const t = topology.services[service];
  if (!t) throw new TopologyError([{ path: `services.${service}`, message: 'service is configured for scaling but missing from the topology' }]);
  return t;
}
