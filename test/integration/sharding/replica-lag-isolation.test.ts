import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { commitHeartbeat, probeReplicaLag } from '../../../functions/adapters/postgres/replica-lag.js';
import { lagProbeShard } from './fixtures/lag-probe-shard.js';

/**
 * A node's statements under a deadline (deadline.ts, `withNodeDeadline`: the replica lag probe,
 * the owner-change counts and fences, the shard inspector) run in a transaction of their own,
 * begun READ COMMITTED whatever the login's or the database's `default_transaction_isolation`
 * (an RDS parameter group shared by the primary and its replicas, an `ALTER ROLE ... SET`;
 * issue #15). A hot standby refuses every SERIALIZABLE transaction ("cannot use serializable mode
 * in a hot standby"): begun with a SERIALIZABLE default, the probe failed at every poll, and the
 * replica, taken for one that does not answer, served no read.
 */
describe('the replica lag probe over a login defaulting to SERIALIZABLE', () => {
  const cluster = lagProbeShard('-c default_transaction_isolation=serializable');
  beforeAll(() => cluster.start(), 120_000);
  afterAll(() => cluster.stop());

  it('measures the replica against a heartbeat of its primary', async () => {
    const { replica, primary, standby } = cluster.nodes();
    await replica.waitForCatchUp();
    const options = { timeoutMs: 3000, waitMs: 3000 };

    const heartbeat = await commitHeartbeat(primary, options);
    const lag = await probeReplicaLag(standby, heartbeat, options);

    // Before: undefined (the replica "did not answer"), the probe refused at its BEGIN's first statement.
    expect(heartbeat).not.toBeNull();
    expect(lag).toMatchObject({ inRecovery: true, lagSeconds: expect.any(Number) });
  }, 60_000);
});
