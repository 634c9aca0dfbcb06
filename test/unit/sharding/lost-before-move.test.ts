import { describe, expect, it } from 'vitest';
import { createMovesLookup } from '../../../functions/adapters/postgres/move-lookup.js';
import { slotOf } from '../../../functions/core/sharding/hash.js';
import { lostBeforeMove } from '../../../functions/core/sharding/lost-before-move.js';
import { parseReadToken } from '../../../functions/core/sharding/read-token.js';

/** Shard A's timeline 2 took over from timeline 1 at 0/3000158. */
const HISTORY_2 = '1\t0/3000158\tno recovery target specified\n';
const past = parseReadToken('shard_a@0/3000200;tl=1;v=1');
const before = parseReadToken('shard_a@0/3000100;tl=1;v=1');

describe('lostBeforeMove (a token of the shard a unit moved off, issue #15)', () => {
  it('is lost when the move fenced a later timeline whose history ends the token\'s before its LSN', () => {
    expect(lostBeforeMove(past, { timeline: 2, history: HISTORY_2 })).toEqual({ shardId: 'shard_a', lsn: '0/3000200', timeline: 1, forkLsn: '0/3000158', currentTimeline: 2 });
  });

  it('knows nothing without a move, a recorded timeline or history, on the token\'s own or an earlier timeline, before the fork, or of a history PostgreSQL would not write', () => {
    expect({
      noMove: lostBeforeMove(past, undefined),
      noTimeline: lostBeforeMove(past, { timeline: null, history: null }),
      noHistory: lostBeforeMove(past, { timeline: 2, history: null }),
      sameTimeline: lostBeforeMove(past, { timeline: 1, history: '' }),
      earlierTimeline: lostBeforeMove(parseReadToken('shard_a@0/3000200;tl=3;v=1'), { timeline: 2, history: HISTORY_2 }),
      beforeFork: lostBeforeMove(before, { timeline: 2, history: HISTORY_2 }),
      notListed: lostBeforeMove(past, { timeline: 3, history: '2\t0/4000000\tx\n' }),
      garbage: lostBeforeMove(past, { timeline: 2, history: 'not a history' }),
    }).toEqual({
      noMove: undefined,
      noTimeline: undefined,
      noHistory: undefined,
      sameTimeline: undefined,
      earlierTimeline: undefined,
      beforeFork: undefined,
      notListed: undefined,
      garbage: undefined,
    });
  });

  it('judges a token that names its cluster only by a move that recorded that cluster; one that names none as before (sharding migration 032)', () => {
    const blue = parseReadToken('shard_a@0/3000200;tl=1;v=1;id=00000000000000b1');
    const green = parseReadToken('shard_a@0/3000200;tl=1;v=1;id=00000000000000a2');
    const onGreen = { timeline: 2, history: HISTORY_2, clusterId: '00000000000000a2' };
    expect({
      sameCluster: lostBeforeMove(green, onGreen)?.forkLsn,
      otherCluster: lostBeforeMove(blue, onGreen),
      notRecorded: lostBeforeMove(green, { timeline: 2, history: HISTORY_2, clusterId: null }),
      notRecordedAbsent: lostBeforeMove(green, { timeline: 2, history: HISTORY_2 }),
      tokenWithout: lostBeforeMove(past, onGreen)?.forkLsn,
    }).toEqual({ sameCluster: '0/3000158', otherCluster: undefined, notRecorded: undefined, notRecordedAbsent: undefined, tokenWithout: '0/3000158' });
  });
});

describe('createMovesLookup', () => {
  const failing = (code: string) => ({
    query: () => Promise.reject(Object.assign(new Error(`failed ${code}`), { code })),
  });

  it('asks catalog.last_move_off with the shard, the key\'s slot and the key, and reads its record', async () => {
    const asked: unknown[] = [];
    const pool = {
      query: (text: string, values: unknown[]) => {
        asked.push({ text, values });
        return Promise.resolve({ rows: [{ timeline: '2', history: HISTORY_2 }] });
      },
    };
    const key = '0b6f1a2e-3c4d-4e5f-8a9b-0c1d2e3f4a5b';
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a fake pool
    const found = await createMovesLookup(pool as any).lastMoveOff('shard_a', key);
    expect({ found, asked }).toEqual({
      found: { timeline: 2, history: HISTORY_2 },
      asked: [{ text: expect.stringContaining('catalog.last_move_off($1, $2, $3)'), values: ['shard_a', slotOf(key), key] }],
    });
  });

  it('reads the recorded cluster, and before sharding migration 032 (42703: no such column) the move without one', async () => {
    const asked: string[] = [];
    const pool = {
      query: (text: string) => {
        asked.push(text);
        if (text.includes('source_cluster_id')) return Promise.reject(Object.assign(new Error('column "source_cluster_id" does not exist'), { code: '42703' }));
        return Promise.resolve({ rows: [{ timeline: '2', history: HISTORY_2, cluster_id: null }] });
      },
    };
    const recorded = { query: () => Promise.resolve({ rows: [{ timeline: '2', history: HISTORY_2, cluster_id: '00000000000000a2' }] }) };
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a fake pool
    const lookup = (p: unknown) => createMovesLookup(p as any).lastMoveOff('shard_a', 'k');
    expect({ recorded: await lookup(recorded), before: await lookup(pool), asked: asked.length }).toEqual({
      recorded: { timeline: 2, history: HISTORY_2, clusterId: '00000000000000a2' },
      before: { timeline: 2, history: HISTORY_2, clusterId: null },
      asked: 2,
    });
  });

  it('knows no move when the function is absent (42883) or refused (42501), and throws other errors', async () => {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a fake pool
    const lookup = (code: string) => createMovesLookup(failing(code) as any).lastMoveOff('shard_a', 'k');
    expect({ absent: await lookup('42883'), refused: await lookup('42501') }).toEqual({ absent: undefined, refused: undefined });
    await expect(lookup('08006')).rejects.toThrow('failed 08006');
  });

  it('asks catalog.write_copied_off with the token\'s timeline and its LSN moved back to the page boundary it points past (sharding migration 015)', async () => {
    const asked: unknown[] = [];
    const pool = {
      query: (text: string, values: unknown[]) => {
        asked.push({ text, values });
        return Promise.resolve({ rows: [{ copied: true }] });
      },
    };
    const key = '0b6f1a2e-3c4d-4e5f-8a9b-0c1d2e3f4a5b';
    // 0/3002018: 24 bytes (a page header) past the page boundary 0/3002000.
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a fake pool
    const copied = await createMovesLookup(pool as any).writeCopiedOff(parseReadToken('shard_a@0/3002018;tl=3;v=1'), key);
    expect({ copied, asked }).toEqual({
      copied: true,
      asked: [{ text: expect.stringContaining('catalog.write_copied_off($1, $2, $3, $4, $5::pg_lsn)'), values: ['shard_a', slotOf(key), key, 3, '0/3002000'] }],
    });
  });

  it('asks migration 032\'s catalog.write_copied_off with the cluster a token names', async () => {
    const asked: unknown[] = [];
    const pool = {
      query: (text: string, values: unknown[]) => {
        asked.push({ text, values });
        return Promise.resolve({ rows: [{ copied: false }] });
      },
    };
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a fake pool
    const copied = await createMovesLookup(pool as any).writeCopiedOff(parseReadToken('shard_a@0/3002000;tl=3;v=1;id=00000000000000a2'), 'k');
    expect({ copied, asked }).toEqual({
      copied: false,
      asked: [{ text: expect.stringContaining('catalog.write_copied_off($1, $2, $3, $4, $5::pg_lsn, $6)'), values: ['shard_a', slotOf('k'), 'k', 3, '0/3002000', '00000000000000a2'] }],
    });
  });

  it('does not know a write copied when catalog.write_copied_off is absent (42883) or refused (42501), and throws other errors', async () => {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a fake pool
    const lookup = (code: string) => createMovesLookup(failing(code) as any).writeCopiedOff(past, 'k');
    expect({ absent: await lookup('42883'), refused: await lookup('42501') }).toEqual({ absent: false, refused: false });
    await expect(lookup('08006')).rejects.toThrow('failed 08006');
  });
});
