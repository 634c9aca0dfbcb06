import { describe, expect, it } from 'vitest';
import { withClient } from '../../../functions/adapters/postgres/embedded-cluster.js';
import { parseLsn } from '../../../functions/core/sharding/lsn.js';
import { parseReadToken, type ReadToken } from '../../../functions/core/sharding/read-token.js';
import { cutWalReceiver } from '../../support/replica.js';
import { ONE_SHARD, oneShardApi, type Answer, type Api } from './fixtures/one-shard-api.js';
import { replicatedShard } from './fixtures/replicated-shard.js';

/** One shard, every key in slot 7: the unit under test is the token's timeline, not routing. */
const SHARD = ONE_SHARD;
/** The problem type of a 410 (functions/local/documents-api.ts, WRITE_LOST_TYPE), spelled out: the test runs against code without it too. */
const WRITE_LOST_TYPE = 'https://ca-dms-scaling.dev/problems/write-lost';


/**
 * Issue #15: with asynchronous replication, a write the old primary acknowledged after the replica
 * it failed over to had stopped receiving is not on the new timeline. A client holding its read
 * token (`tl=1`, an LSN past where timeline 1 ends in timeline 2's history) must be told the write
 * was lost (410), not that it never existed (404, an empty list): docs/sharding-spec.md,
 * read-your-writes tokens.
 */
describe('a read token of a write lost in a failover', () => {
  const { cluster, closers } = replicatedShard(1);
  /** Set by the first test: the promoted replica, and the tokens and ids it was written with. */
  let promotedUrl = '';
  let lostUser = '';
  let lostUserToken = '';

  /** The documents API of one shard whose primary is `primaryUrl` (no replicas), on a loopback port. */
  const apiOn = async (primaryUrl: string): Promise<Api> => (await oneShardApi(primaryUrl, closers)).api;
  const tokenOf = (answer: Answer): string => {
    const token = answer.headers.get('x-read-token');
    if (answer.status !== 201 || token === null) throw new Error(`the write answered ${answer.status} without a token: ${JSON.stringify(answer.body)}`);
    return token;
  };
  /** Where timeline 1 ends in timeline 2's past, read by the superuser from the history file itself. */
  const forkOf = async (url: string): Promise<string> =>
    withClient(url, async (c) => {
      const { rows } = await c.query<{ text: string }>("select pg_read_file('pg_wal/00000002.history') as text");
      const m = /^1\t([0-9A-F]+\/[0-9A-F]+)\t/m.exec(rows[0]?.text ?? '');
      if (!m?.[1]) throw new Error(`no line for timeline 1 in the history: ${JSON.stringify(rows[0]?.text)}`);
      return m[1];
    });

  it('answers 410 naming the shard, the token and the fork point on every read that takes X-Read-After, and a token before the fork reads as before', async () => {
    const shard = cluster().shards[0];
    const replica = shard?.replicas[0];
    if (!shard || !replica) throw new Error('the cluster has no replica');
    const before = await apiOn(shard.primary.url);
    const kept = await before('POST', '/api/v1/users', { email: 'kept@example.org', display_name: 'kept' });
    const keptToken = tokenOf(kept);
    const keptId = String(kept.body.id);
    await replica.waitForCatchUp();
    // The replica stops receiving (its network path to the primary broke); the primary goes on
    // acknowledging writes, asynchronously replicated: none of them reaches the replica.
    closers.push(await cutWalReceiver(replica.url));
    const lostDoc = await before('POST', '/api/v1/documents', { owner_id: keptId, title: 'lost in the failover' });
    const lostDocToken = tokenOf(lostDoc);
    const lostDocId = String(lostDoc.body.id);
    const lostOwner = await before('POST', '/api/v1/users', { email: 'lost@example.org', display_name: 'lost' });
    lostUserToken = tokenOf(lostOwner);
    lostUser = String(lostOwner.body.id);
    // The primary fails; the replica is promoted (timeline 2) and the shard's primary names it.
    await withClient(replica.url, (c) => c.query('select pg_promote(true, 60)'));
    promotedUrl = replica.url;
    const fork = await forkOf(promotedUrl);
    const after = await apiOn(promotedUrl);
    const read = (path: string, token: string) => after('GET', path, undefined, { 'x-read-after': token });

    const user = await read(`/api/v1/users/${lostUser}`, lostUserToken);
    const docByOwner = await read(`/api/v1/documents/${lostDocId}?owner=${keptId}`, lostDocToken);
    const docAnyOwner = await read(`/api/v1/documents/${lostDocId}`, lostDocToken);
    const list = await read(`/api/v1/users/${keptId}/documents`, lostDocToken);
    const keptRead = await read(`/api/v1/users/${keptId}`, keptToken);
    // A lost write's token on a read whose row is there: what is there is answered.
    const keptWithLostToken = await read(`/api/v1/users/${keptId}`, lostDocToken);
    const withoutToken = await after('GET', `/api/v1/users/${lostUser}`);

    // The premise: the two lost writes are past the fork point, the kept one at or before it.
    const tokens = { kept: parseReadToken(keptToken), lostDoc: parseReadToken(lostDocToken), lostUser: parseReadToken(lostUserToken) };
    const past = (t: ReadToken): boolean => parseLsn(t.lsn) > parseLsn(fork);
    expect({ kept: past(tokens.kept), lostDoc: past(tokens.lostDoc), lostUser: past(tokens.lostUser) }).toEqual({ kept: false, lostDoc: true, lostUser: true });
    expect(tokens.lostDoc.timeline).toBe(1);

    const gone = (token: ReadToken) => ({
      status: 410,
      contentType: 'application/problem+json',
      body: {
        type: WRITE_LOST_TYPE,
        title: 'Write Lost',
        status: 410,
        detail: expect.stringMatching(new RegExp(`shard ${SHARD}.*${token.lsn.replace('/', '\\/')} on timeline 1.*${fork.replace('/', '\\/')}.*this write was lost in a failover`)) as unknown,
        shard_id: SHARD,
        lsn: token.lsn,
        timeline: 1,
        fork_lsn: fork,
        current_timeline: 2,
      },
    });
    const seen = (a: Answer) => ({ status: a.status, contentType: a.headers.get('content-type'), body: a.body as unknown });
    expect(seen(user)).toEqual(gone(tokens.lostUser));
    expect(seen(docByOwner)).toEqual(gone(tokens.lostDoc));
    expect(seen(docAnyOwner)).toEqual(gone(tokens.lostDoc));
    expect(seen(list)).toEqual(gone(tokens.lostDoc));
    expect({ status: keptRead.status, id: keptRead.body.id, servedBy: keptRead.body.served_by }).toEqual({ status: 200, id: keptId, servedBy: `${SHARD}/primary` });
    expect({ status: keptWithLostToken.status, id: keptWithLostToken.body.id }).toEqual({ status: 200, id: keptId });
    expect(withoutToken.status).toBe(404);

    // The history was read once for this shard and timeline, and is kept: with the function gone
    // now, the same process still tells the lost write apart.
    await withClient(promotedUrl, (c) => c.query('alter function timeline_history() rename to timeline_history_later'));
    const cached = await read(`/api/v1/users/${lostUser}`, lostUserToken).finally(() =>
      withClient(promotedUrl, (c) => c.query('alter function timeline_history_later() rename to timeline_history')),
    );
    expect(seen(cached)).toEqual(gone(tokens.lostUser));
  }, 120_000);

  it('keeps the answer it gave before (404) on a shard without the history function (migration 027 not applied)', async () => {
    if (promotedUrl === '') throw new Error('the first test did not promote the replica');
    await withClient(promotedUrl, (c) => c.query('alter function timeline_history() rename to timeline_history_later'));
    try {
      // A process that has not asked this shard for its history yet.
      const after = await apiOn(promotedUrl);
      const user = await after('GET', `/api/v1/users/${lostUser}`, undefined, { 'x-read-after': lostUserToken });
      expect({ status: user.status, detail: user.body?.detail as unknown }).toEqual({ status: 404, detail: `no user ${lostUser}` });
    } finally {
      await withClient(promotedUrl, (c) => c.query('alter function timeline_history_later() rename to timeline_history'));
    }
  }, 60_000);
});
