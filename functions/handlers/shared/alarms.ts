/**
 * CloudWatch alarm notifications as delivered through SNS: the zod schemas of the SNS event
 * and of the alarm message, and the mapping from an alarm to the service it concerns (the
 * configured name mapping first, then the alarm's metric dimensions).
 *
 * @example
 * ```ts
 * const alarm = parseAlarmMessage(record.Sns.Message);
 * const service = alarm.ok ? serviceForAlarm(alarm.alarm, topology, nameMap) : undefined;
 * ```
 */
import { z } from 'zod';
import type { Topology } from '../../adapters/aws/topology.js';

const dimension = z.object({ name: z.string(), value: z.string() });

export const snsEventSchema = z.object({
  Records: z
    .array(
      z.object({
        EventSource: z.literal('aws:sns'),
        Sns: z.object({
          MessageId: z.string().min(1),
          TopicArn: z.string().min(1),
          Message: z.string(),
          Timestamp: z.string().optional(),
        }),
      }),
    )
    .min(1),
});
export type SnsEvent = z.infer<typeof snsEventSchema>;

export const alarmMessageSchema = z.object({
  AlarmName: z.string().min(1),
  NewStateValue: z.enum(['ALARM', 'OK', 'INSUFFICIENT_DATA']),
  NewStateReason: z.string().default(''),
  StateChangeTime: z.string().optional(),
  Trigger: z
    .object({
      MetricName: z.string().optional(),
      Namespace: z.string().optional(),
      Dimensions: z.array(dimension).default([]),
      Metrics: z
        .array(z.object({ MetricStat: z.object({ Metric: z.object({ Namespace: z.string().optional(), Dimensions: z.array(dimension).default([]) }) }).optional() }))
        .optional(),
    })
    .optional(),
});
export type AlarmMessage = z.infer<typeof alarmMessageSchema>;

/** Parses an SNS message body as a CloudWatch alarm notification. */
export function parseAlarmMessage(body: string): { ok: true; alarm: AlarmMessage } | { ok: false; problem: string } {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    return { ok: false, problem: 'the message is not JSON' };
  }
  const parsed = alarmMessageSchema.safeParse(json);
  if (!parsed.success) {
    return { ok: false, problem: `not a CloudWatch alarm notification: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}` };
  }
  return { ok: true, alarm: parsed.data };
}

/** Every dimension the alarm's metric (or metric-math metrics) carries. */
function dimensionsOf(alarm: AlarmMessage): Map<string, string> {
  const dims = new Map<string, string>();
  for (const d of alarm.Trigger?.Dimensions ?? []) dims.set(d.name, d.value);
  for (const m of alarm.Trigger?.Metrics ?? []) for (const d of m.MetricStat?.Metric.Dimensions ?? []) dims.set(d.name, d.value);
  return dims;
}

/**
 * The service an alarm concerns: the configured mapping by alarm name, else the ECS service
 * (ServiceName, ClusterName), the target group, the queue metric's dimensions, or a load
 * balancer that fronts exactly one service. `undefined` when nothing matches unambiguously.
 */
export function serviceForAlarm(alarm: AlarmMessage, topology: Topology, nameMap: Readonly<Record<string, string>>): string | undefined {
  // Own members only: an alarm named `constructor` or `toString` must not find Object's.
  if (Object.hasOwn(nameMap, alarm.AlarmName)) return nameMap[alarm.AlarmName];
  const dims = dimensionsOf(alarm);
  const entries = Object.entries(topology.services);
  const unique = (matches: Array<[string, unknown]>): string | undefined => (matches.length === 1 ? matches[0]?.[0] : undefined);
  const ecsService = dims.get('ServiceName');
  if (ecsService !== undefined) {
    const cluster = dims.get('ClusterName');
    return unique(entries.filter(([, t]) => t.ecsService === ecsService && (cluster === undefined || t.cluster === cluster)));
  }
  const targetGroup = dims.get('TargetGroup');
  if (targetGroup !== undefined) return unique(entries.filter(([, t]) => t.targetGroup === targetGroup));
  const byQueue = entries.filter(([, t]) => t.queue !== undefined && t.queue.dimensions.length > 0 && t.queue.dimensions.every((d) => dims.get(d.name) === d.value));
  if (byQueue.length > 0) return unique(byQueue);
  const loadBalancer = dims.get('LoadBalancer');
  if (loadBalancer !== undefined) return unique(entries.filter(([, t]) => t.loadBalancer === loadBalancer));
  return undefined;
}
