import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseTopology } from '../../functions/adapters/aws/topology.js';
import { alarmMessageSchema, serviceForAlarm } from '../../functions/handlers/shared/alarms.js';

const topology = parseTopology({ services: { web: { cluster: 'ca-dms', ecsService: 'ca-dms-web' }, worker: { cluster: 'ca-dms', ecsService: 'ca-dms-worker' } } });
// As ALARM_SERVICE_MAP_JSON arrives: parsed JSON, an ordinary object.
const nameMap = JSON.parse('{"ca-dms-web-cpu-high": "web"}') as Record<string, string>;

/** Alarm names, among them every property name an ordinary object inherits. */
const alarmName = fc.oneof(fc.constantFrom(...Object.getOwnPropertyNames(Object.prototype)), fc.string({ minLength: 1, maxLength: 40 }), fc.constant('ca-dms-web-cpu-high'));

describe('the service an alarm (an SNS message) concerns', () => {
  it('is a configured service or none, whatever the alarm is named', () => {
    fc.assert(
      fc.property(alarmName, (name) => {
        const alarm = alarmMessageSchema.parse({ AlarmName: name, NewStateValue: 'ALARM' });
        const service = serviceForAlarm(alarm, topology, nameMap);
        expect(service).toBe(name === 'ca-dms-web-cpu-high' ? 'web' : undefined);
      }),
    );
  });
});
