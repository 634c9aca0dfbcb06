import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { commitHeartbeat, probeReplicaLag } from '../../../functions/adapters/postgres/replica-lag.js';
import { lagProbeShard, type LagProbeNodes } from './fixtures/lag-probe-shard.js';

/**
 * The replay lag of a replica that has not replayed the heartbeat is the primary's clock now minus
 * the commit time of the last transaction the replica replayed: both read on the primary's clock,
 * so no skew between hosts enters. Its clock may still step back (an NTP step, a VM restored or
 * migrated, a host whose clock was set by hand): commits stamped before the step then read as
 * made in the future. The difference came out negative, was taken as 0 ("current"), and a
 * replica whose replay had stopped well behind was vouched for as fresh as of the probe (the
 * reader's freshAsOfMs, the health report's lag), for as long as the clock stayed behind, within
 * the byte bound. A primary's clock behind a commit it made says nothing of how far behind the
 * replica is: its lag is unknown (no reads; the health report says so), not 0.
 *
 * The step is the heartbeat's reading of the primary's clock set an hour back: what
 * `commitHeartbeat` answers from a primary whose clock was stepped back an hour after the
 * replica's last replayed commit (PostgreSQL's own clock cannot be stepped from a test).
 */
describe('replay lag when the primary clock stepped back', () => {
  const cluster = lagProbeShard();
  beforeAll(() => cluster.start(), 120_000);
  afterAll(() => cluster.stop());
  /**
   * The shard's nodes, the replica caught up past a commit of the primary's: a replica that has
   * replayed no commit since it started has no commit time to measure by (unknown, as before the
   * rule these tests are about).
   */
  const caughtUp = async (): Promise<LagProbeNodes> => {
    const nodes = cluster.nodes();
    await nodes.primary.pool.query('create table if not exists clock_probe (id serial primary key, at timestamptz default clock_timestamp())');
    await nodes.primary.pool.query('insert into clock_probe default values');
    await nodes.replica.waitForCatchUp();
    return nodes;
  };

  it('leaves the lag of a replica behind the heartbeat unknown, not 0, when the primary clock reads earlier than its last replayed commit', async () => {
    const { replica, primary, standby } = await caughtUp();
    // Replay stops; the primary goes on committing: the replica falls behind, and stays behind.
    await replica.pauseReplay();
    try {
      for (let i = 0; i < 5; i += 1) await primary.pool.query('insert into clock_probe default values');
      const options = { timeoutMs: 3000, waitMs: 100 };
      const heartbeat = await commitHeartbeat(primary, options);
      if (heartbeat === null) throw new Error('the primary committed no heartbeat');
      const onTime = await probeReplicaLag(standby, heartbeat, options);
      const steppedBack = await probeReplicaLag(standby, { ...heartbeat, primaryMs: heartbeat.primaryMs - 3_600_000 }, options);

      // The same replica, the same replay position, behind the heartbeat in bytes either way.
      expect(onTime).toMatchObject({ inRecovery: true, lagSeconds: expect.any(Number) });
      expect(steppedBack?.replayLsn).toBe(onTime?.replayLsn);
      expect(steppedBack?.lagBytes).toBeGreaterThan(0n);
      // Before: 0, a replica that had stopped replaying measured as current.
      expect(steppedBack?.lagSeconds).toBeNull();
    } finally {
      await replica.resumeReplay();
    }
  }, 60_000);

  /**
   * The other side of the rule: with a sane clock the lag is never unknown for a replica that is
   * merely behind. Every commit the replica replayed without the heartbeat's position is in the
   * WAL before that position, which is read on the primary (with its clock, after it) once the
   * heartbeat committed: its commit time was stamped before the record was placed, so before the
   * clock reading, and the primary's clock at the measure is later still. A busy primary is where
   * it would go wrong if it could: commits of other sessions land between the heartbeat's commit
   * and the position's reading, with commit times close to the clock reading, and a replica a
   * few records behind is measured by the clock at once (no wait).
   */
  it('never leaves the lag of a healthy replica of a busy primary unknown (no clock step)', async () => {
    const { shard, primary, standby } = await caughtUp();
    let writing = true;
    const writers = Array.from({ length: 3 }, async () => {
      const client = new pg.Client({ connectionString: shard.primary.url });
      client.on('error', () => undefined);
      await client.connect();
      try {
        while (writing) await client.query('insert into clock_probe default values');
      } finally {
        await client.end();
      }
    });
    const seen = { current: 0, behind: 0, unknown: 0 };
    try {
      for (let i = 0; i < 150; i += 1) {
        const options = { timeoutMs: 3000, waitMs: 0, pollMs: 1 };
        const heartbeat = await commitHeartbeat(primary, options);
        if (heartbeat === null) throw new Error('the primary committed no heartbeat');
        const lag = await probeReplicaLag(standby, heartbeat, options);
        if (lag?.lagSeconds === null || lag === undefined) seen.unknown += 1;
        else if (lag.lagSeconds === 0) seen.current += 1;
        else seen.behind += 1;
      }
    } finally {
      writing = false;
      await Promise.all(writers);
    }
    // The measure by the clock was taken (the replica a few records behind), and never unknown.
    expect(seen.behind).toBeGreaterThan(0);
    expect(seen.unknown).toBe(0);
  }, 60_000);
});
