import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CATALOG_CONNECTIONS_PER_TASK, connectionBudget, defaultMaxConnections, DEFAULT_POOL_SIZE, RESERVED_CONNECTIONS } from '../../../lib/services/connection-budget.js';

describe('the tasks\' connection budget', () => {
  it("estimates RDS's default max_connections, LEAST(DBInstanceClassMemory / 9531392, 5000), by instance class", () => {
    expect(defaultMaxConnections('t4g.medium')).toBe(394);
    expect(defaultMaxConnections('t4g.micro')).toBe(98);
    expect(defaultMaxConnections('r7g.large')).toBe(1577);
    expect(defaultMaxConnections('m6i.xlarge')).toBe(1577);
    expect(defaultMaxConnections('r6g.16xlarge')).toBe(5000);
    expect(defaultMaxConnections('z1d.large')).toBeUndefined();
    expect(defaultMaxConnections('t4g.huge')).toBeUndefined();
  });

  it('never estimates more than the defaults measured on RDS (DBInstanceClassMemory is less than the class memory)', () => {
    // `SHOW max_connections` on instances of 2, 4 and 8 GiB (t2.small, t2.medium, t2.large / m4.large).
    // The whole memory would give 225, 450 and 901: the budget counted 37 slots on t4g.medium that do not exist.
    expect(defaultMaxConnections('t4g.small')).toBeLessThanOrEqual(198);
    expect(defaultMaxConnections('t4g.medium')).toBeLessThanOrEqual(413);
    expect(defaultMaxConnections('t4g.large')).toBeLessThanOrEqual(856);
    expect(defaultMaxConnections('m7g.large')).toBeLessThanOrEqual(856);
  });

  it('sizes the pools of the dev and prod configurations for every service at its maximum during a deployment', () => {
    // dev: 30 tasks with database access at their maximum, 60 during a deployment, on t4g.medium
    // (413 measured): 300 for the tasks leaves 113, more than the 50 kept, whatever RDS keeps itself.
    expect(connectionBudget({ instanceClasses: ['t4g.medium', 't4g.medium'], maxTasks: 30, surgePercent: 200 })).toEqual({ poolSize: 3, maxConnections: 394, peakTasks: 60, peak: 300 });
    // prod: 52 tasks, 104, on r7g.large: the default pool fits.
    expect(connectionBudget({ instanceClasses: ['r7g.large'], maxTasks: 52, surgePercent: 200 })).toEqual({ poolSize: 10, maxConnections: 1577, peakTasks: 104, peak: 1248 });
  });

  it('says when not even one connection a task fits, and keeps the default for a class it does not know', () => {
    expect(connectionBudget({ instanceClasses: ['t4g.micro'], maxTasks: 30, surgePercent: 200 }).poolSize).toBe(0);
    expect(connectionBudget({ instanceClasses: ['t4g.medium', 'z1d.large'], maxTasks: 30, surgePercent: 200 })).toMatchObject({ poolSize: DEFAULT_POOL_SIZE, maxConnections: undefined });
  });

  it('never lets the tasks at their peak, with the reserve, exceed the smallest instance', () => {
    const classes = ['t4g.small', 't4g.medium', 't4g.large', 'm7g.large', 'r7g.large', 'r7g.xlarge', 'r7g.4xlarge'];
    fc.assert(
      fc.property(fc.subarray(classes, { minLength: 1 }), fc.integer({ min: 1, max: 400 }), (instanceClasses, maxTasks) => {
        const b = connectionBudget({ instanceClasses, maxTasks, surgePercent: 200 });
        const limit = Math.min(...instanceClasses.map((c) => defaultMaxConnections(c) as number));
        expect(b.poolSize).toBeLessThanOrEqual(DEFAULT_POOL_SIZE);
        if (b.poolSize > 0) expect(b.peakTasks * (b.poolSize + CATALOG_CONNECTIONS_PER_TASK) + RESERVED_CONNECTIONS).toBeLessThanOrEqual(limit);
        // One more connection a task would not fit, unless the default caps it.
        if (b.poolSize < DEFAULT_POOL_SIZE) expect(b.peakTasks * (b.poolSize + 1 + CATALOG_CONNECTIONS_PER_TASK) + RESERVED_CONNECTIONS).toBeGreaterThan(limit);
      }),
    );
  });
});
