import { describe, expect, it } from 'vitest';
import { toSnapshot } from '../../../functions/core/scaling/controller.js';

const AT = 1_700_000_000_000;

describe('toSnapshot', () => {
  it('divides whole-service figures by the running tasks', () => {
    const snapshot = toSnapshot({ cpu: 50, activeConnections: 300, requestCountPerTarget: 200, errorCount: 30, queueDepth: 90 }, 3, AT);

    expect(snapshot).toEqual({ at: AT, cpu: 50, connectionsPerTask: 100, requestCount: 600, errorRate: 5, queueDepthPerTask: 30 });
  });

  it('leaves out what was not reported instead of using zero', () => {
    const snapshot = toSnapshot({ memory: 41 }, 4, AT);

    expect(snapshot).toEqual({ at: AT, memory: 41 });
  });

  it('leaves per-task figures out when no task is running', () => {
    const snapshot = toSnapshot({ cpu: 10, activeConnections: 12, requestCountPerTarget: 5, errorCount: 1, queueDepth: 7 }, 0, AT);

    expect(snapshot).toEqual({ at: AT, cpu: 10 });
  });

  it('gives no error rate without requests', () => {
    const snapshot = toSnapshot({ requestCountPerTarget: 0, errorCount: 0 }, 2, AT);

    expect(snapshot).toEqual({ at: AT, requestCount: 0 });
  });
});
