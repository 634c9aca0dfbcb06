/**
 * Physical names of the service alarms, decided at synthesis so the control plane can ship
 * the alarm-to-service map in its environment before the observability stack creates them.
 *
 * @example
 * ```ts
 * serviceAlarmNames('ca-dms-dev', 'worker').cpu; // 'ca-dms-dev-worker-cpu-high'
 * ```
 */
export function serviceAlarmNames(prefix: string, service: string): { cpu: string; memory: string; responseTime: string } {
  return {
    cpu: `${prefix}-${service}-cpu-high`,
    memory: `${prefix}-${service}-memory-high`,
    responseTime: `${prefix}-${service}-response-time-high`,
  };
}

/** Every service alarm name mapped to its service (the alarm function's `ALARM_SERVICE_MAP_JSON`). */
export function alarmServiceMap(prefix: string, services: readonly string[], withResponseTime: readonly string[]): Record<string, string> {
  return Object.fromEntries(
    services.flatMap((service) => {
      const names = serviceAlarmNames(prefix, service);
      return [
        [names.cpu, service],
        [names.memory, service],
        ...(withResponseTime.includes(service) ? [[names.responseTime, service]] : []),
      ];
    }),
  );
}
