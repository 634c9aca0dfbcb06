/**
 * `alarm`: CloudWatch alarm state changes delivered through SNS. Each record is validated; a
 * malformed or foreign message is logged and dropped (never crashes the function). The alarm is
 * recorded with its SNS MessageId, so a redelivery is recognised and does not act twice (in
 * this container's memory too, for when the catalog is unreachable). An alarm entering ALARM
 * runs an immediate evaluation of its service; cooldowns still apply. The topic also carries
 * alarms that are not about a scaled service (shard, function, load-balancer alarms share it):
 * those are kept in the history and evaluate nothing; they are not dropped messages.
 */
import type { Context } from 'aws-lambda';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { parseAlarmMessage, serviceForAlarm, snsEventSchema } from './shared/alarms.js';
import { withPowertools } from './shared/middleware.js';
import { logger, metrics } from './shared/powertools.js';
import { controllerRuntime, type ControllerRuntime } from './shared/runtime.js';
import { budgetSignal, emitEvaluationMetrics, leaseTtl, summarise } from './shared/telemetry.js';
import { loadParameterEnv } from './shared/parameter-env.js';

// The deployment's growing configuration (SSM Parameter Store), read once in the init phase.
await loadParameterEnv();

export type AlarmRecordOutcome = 'evaluated' | 'skipped' | 'recorded' | 'duplicate' | 'dropped';

/**
 * An alarm waits this long for a running evaluation to finish (one usually takes about a
 * second), so an alarm storm queues up behind it instead of standing aside.
 */
export const ALARM_LEASE_WAIT_MS = 10_000;

export interface AlarmResponse {
  readonly records: ReadonlyArray<{ messageId?: string; outcome: AlarmRecordOutcome; service?: string; detail?: string }>;
}

function dropped(detail: string, messageId?: string): { messageId?: string; outcome: 'dropped'; detail: string } {
  logger.warn('dropped SNS message', { messageId, detail });
  metrics.addMetric('DroppedAlarmMessages', MetricUnit.Count, 1);
  return { ...(messageId === undefined ? {} : { messageId }), outcome: 'dropped', detail };
}

/** Builds the handler around a runtime provider (tests pass their own runtime). */
export function createAlarmHandler(runtime: () => ControllerRuntime) {
  return withPowertools(async (event: unknown, context: Context): Promise<AlarmResponse> => {
    const parsed = snsEventSchema.safeParse(event);
    if (!parsed.success) {
      return { records: [dropped(`not an SNS event: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`)] };
    }
    const rt = runtime();
    const out: Array<AlarmResponse['records'][number]> = [];
    for (const record of parsed.data.Records) {
      const messageId = record.Sns.MessageId;
      const message = parseAlarmMessage(record.Sns.Message);
      if (!message.ok) {
        out.push(dropped(message.problem, messageId));
        continue;
      }
      const alarm = message.alarm;
      const service = serviceForAlarm(alarm, rt.env.topology, rt.env.alarmServiceMap);
      if (!rt.seenMessages.add(messageId)) {
        logger.info('duplicate alarm delivery ignored', { messageId, alarm: alarm.AlarmName });
        out.push({ messageId, outcome: 'duplicate' });
        continue;
      }
      let fresh = true;
      try {
        const changedAt = alarm.StateChangeTime === undefined ? undefined : new Date(alarm.StateChangeTime);
        fresh = await rt.catalog.recordAlarm({
          messageId,
          alarmName: alarm.AlarmName,
          newState: alarm.NewStateValue,
          ...(service === undefined ? {} : { service }),
          reason: alarm.NewStateReason,
          ...(changedAt === undefined || Number.isNaN(changedAt.getTime()) ? {} : { stateChangedAt: changedAt }),
        });
      } catch (err) {
        logger.warn('catalog unreachable: alarm not recorded, de-duplicated by this container only', { messageId, error: err as Error });
      }
      if (!fresh) {
        logger.info('duplicate alarm delivery ignored', { messageId, alarm: alarm.AlarmName });
        out.push({ messageId, outcome: 'duplicate' });
        continue;
      }
      if (service === undefined) {
        const detail = `alarm ${alarm.AlarmName} maps to no scaled service: kept in the history, nothing evaluated (map it in ALARM_SERVICE_MAP_JSON if it should trigger scaling)`;
        logger.info('alarm recorded; not a scaling alarm', { messageId, alarm: alarm.AlarmName, state: alarm.NewStateValue });
        out.push({ messageId, outcome: 'recorded', detail });
        continue;
      }
      if (alarm.NewStateValue !== 'ALARM') {
        logger.info('alarm left the ALARM state; recorded, no evaluation', { messageId, alarm: alarm.AlarmName, state: alarm.NewStateValue, scaledService: service });
        out.push({ messageId, outcome: 'recorded', service });
        continue;
      }
      const started = performance.now();
      const remaining = context.getRemainingTimeInMillis();
      const result = await rt.controller.evaluate({
        trigger: 'alarm',
        services: [service],
        actor: `alarm:${alarm.AlarmName}`,
        signal: budgetSignal(remaining, rt.env.safetyMarginMs),
        leaseTtlMs: leaseTtl(remaining),
        leaseWaitMs: Math.min(ALARM_LEASE_WAIT_MS, Math.max(0, (remaining - rt.env.safetyMarginMs) / 2)),
      });
      emitEvaluationMetrics(result, performance.now() - started);
      const summary = summarise(result);
      if (summary.skipped) {
        const detail = `another evaluation was still running after ${ALARM_LEASE_WAIT_MS / 1000} s (${summary.skipped.holder}); nothing evaluated for this alarm, the next scheduled evaluation covers ${service}`;
        logger.warn('alarm evaluation skipped: another evaluation is running', { messageId, alarm: alarm.AlarmName, ...summary });
        out.push({ messageId, outcome: 'skipped', service, detail });
        continue;
      }
      logger.info('alarm evaluation finished', { messageId, alarm: alarm.AlarmName, ...summary });
      out.push({ messageId, outcome: 'evaluated', service });
    }
    return { records: out };
  });
}

export const handler = createAlarmHandler(controllerRuntime);
