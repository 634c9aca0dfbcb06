import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { readOptionsFor } from '../../../functions/adapters/postgres/read-transaction.js';
import { formatLsn, normalizeWalPosition } from '../../../functions/core/sharding/lsn.js';
import { historyFileName, lostInFailover, lostWriteMessage, parseTimelineHistory, TimelineHistoryError, type TimelineSwitch } from '../../../functions/core/sharding/timeline-history.js';

/** Increasing ancestor timelines below `current`, each with a switchpoint and a reason (no newline). */
const history = fc
  .tuple(
    fc.uniqueArray(fc.integer({ min: 1, max: 5000 }), { maxLength: 8 }),
    fc.array(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), { minLength: 8, maxLength: 8 }),
    fc.array(fc.string({ maxLength: 30, unit: 'binary' }).map((r) => r.replace(/[\r\n]/g, ' ')), { minLength: 8, maxLength: 8 }),
    fc.integer({ min: 1, max: 100 }),
  )
  .map(([tlis, points, reasons, above]) => {
    const sorted = [...tlis].sort((a, b) => a - b);
    const entries: TimelineSwitch[] = sorted.map((timeline, i) => ({ timeline, switchpoint: points[i] ?? 0n, reason: (reasons[i] ?? '').trim() }));
    return { entries, current: (sorted.at(-1) ?? 0) + above };
  });

/** A line as PostgreSQL writes it (writeTimeLineHistory: "%u\t%X/%X\t%s\n"). */
const lineOf = (s: TimelineSwitch): string => `${s.timeline}\t${formatLsn(s.switchpoint)}\t${s.reason}`;

/** Lines the parser must skip: blank, whitespace only, comments (with leading whitespace too). */
const noise = fc.constantFrom('', ' ', '\t', '  \t ', '# a comment', '#', '   # indented comment', '\t#1\t0/0\tnot a line');

describe('timeline history files', () => {
  it("reads every line PostgreSQL writes, whatever blank lines and comments lie between them, and nothing else", () => {
    fc.assert(
      fc.property(history, fc.array(fc.tuple(fc.nat(), noise), { maxLength: 10 }), fc.boolean(), fc.boolean(), ({ entries, current }, inserts, crlf, trailingNewline) => {
        const lines = entries.map(lineOf);
        for (const [at, line] of inserts) lines.splice(at % (lines.length + 1), 0, line);
        const text = lines.join(crlf ? '\r\n' : '\n') + (trailingNewline ? '\n' : '');
        expect(parseTimelineHistory(text, current)).toEqual(entries);
      }),
      { verbose: true },
    );
  });

  it('calls a token lost exactly when its timeline is a listed ancestor and its position is past that ancestor\'s switchpoint', () => {
    fc.assert(
      fc.property(history, fc.integer({ min: 1, max: 6000 }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), ({ entries, current }, timeline, lsn) => {
        const ancestor = entries.find((e) => e.timeline === timeline);
        const expected = timeline < current && ancestor !== undefined && normalizeWalPosition(lsn) > ancestor.switchpoint ? { forkLsn: ancestor.switchpoint } : undefined;
        expect(lostInFailover(entries, current, { lsn, timeline })).toEqual(expected);
      }),
      { verbose: true },
    );
  });

  it('keeps a token at the switchpoint, loses one a byte past it, and knows nothing of the current, a later or an unlisted timeline', () => {
    const h = parseTimelineHistory('1\t0/3000158\tno recovery target specified\n\n3\t0/5000000\tno recovery target specified\n', 4);
    expect(lostInFailover(h, 4, { lsn: 0x3000158n, timeline: 1 })).toBeUndefined();
    expect(lostInFailover(h, 4, { lsn: 0x3000159n, timeline: 1 })).toEqual({ forkLsn: 0x3000158n });
    expect(lostInFailover(h, 4, { lsn: 0x4000000n, timeline: 2 })).toBeUndefined();
    expect(lostInFailover(h, 4, { lsn: 0x6000000n, timeline: 4 })).toBeUndefined();
    expect(lostInFailover(h, 4, { lsn: 0x6000000n, timeline: 5 })).toBeUndefined();
  });

  it('keeps a token that points past the page header after a switchpoint at a WAL page boundary (the insert position after a commit that ended there)', () => {
    const h = parseTimelineHistory('1\t0/3002000\tno recovery target specified\n2\t0/4000000\tno recovery target specified\n', 3);
    // A short page header (24 bytes) after 0/3002000, a long one (40 bytes) at a segment's start.
    expect(lostInFailover(h, 3, { lsn: 0x3002018n, timeline: 1 })).toBeUndefined();
    expect(lostInFailover(h, 3, { lsn: 0x4000028n, timeline: 2 })).toBeUndefined();
    // Past the header, a record did end after the boundary: lost.
    expect(lostInFailover(h, 3, { lsn: 0x3002020n, timeline: 1 })).toEqual({ forkLsn: 0x3002000n });
    expect(lostInFailover(h, 3, { lsn: 0x4000030n, timeline: 2 })).toEqual({ forkLsn: 0x4000000n });
  });

  it.each([
    ['x\t0/1\treason', /line 1 .*not "<timeline>/],
    ['1\t0/1\treason\n2\t0-3000000', /line 2 .*not "<timeline>/],
    ['1 reason', /line 1 .*not "<timeline>/],
    ['1\t0/123456789\tr', /line 1 .*not "<timeline>/],
    ['-1\t0/1\tr', /line 1 .*not "<timeline>/],
    ['0\t0/1\tr', /line 1 of the history file names timeline 0,/],
    ['4294967296\t0/1\tr', /names timeline 4294967296/],
    ['2\t0/1\tr\n1\t0/2\tr', /line 2 .*timeline 1 after 2: timelines must increase/],
    ['2\t0/1\tr\n2\t0/2\tr', /line 2 .*timeline 2 after 2/],
    ['1\t0/1\tr\n3\t0/2\tr', /line 2 of the history file of timeline 3 names timeline 3: ancestors must be below it/],
  ])('refuses %j, naming the line', (text, message) => {
    expect(() => parseTimelineHistory(text, 3)).toThrow(TimelineHistoryError);
    expect(() => parseTimelineHistory(text, 3)).toThrow(message);
  });

  it('reads a line without a reason, and whitespace as sscanf does between the fields', () => {
    expect(parseTimelineHistory('  1   0/3000158\n2\t1F/ABCDEF01\tat restore point "x\ty"', 3)).toEqual([
      { timeline: 1, switchpoint: 0x3000158n, reason: '' },
      { timeline: 2, switchpoint: 0x1fabcdef01n, reason: 'at restore point "x\ty"' },
    ]);
  });

  it('names history files with upper-case hex, as PostgreSQL does', () => {
    expect([historyFileName(2), historyFileName(10), historyFileName(0xffffffff)]).toEqual(['00000002.history', '0000000A.history', 'FFFFFFFF.history']);
    expect(() => historyFileName(0)).toThrow(TimelineHistoryError);
  });

  it('says which shard, token and fork point, and that the write was lost in a failover', () => {
    expect(lostWriteMessage({ shardId: 'shard_001', lsn: '0/3000200', timeline: 1, forkLsn: '0/3000158', currentTimeline: 2 })).toBe(
      "shard shard_001: the write of the read token at 0/3000200 on timeline 1 is not on the shard's primary, whose timeline 2 took over from timeline 1 at 0/3000158 (a failover to a replica that had not received the write): this write was lost in a failover; send it again if it is still wanted",
    );
  });
});

describe('where a token sends a read (readOptionsFor)', () => {
  const token = { shardId: 'shard_001', lsn: '0/3000200', timeline: 1, mapVersion: 1 };
  it('takes the token along to the primary after a failover, so the primary can check it against its history', () => {
    expect(readOptionsFor('shard_001', token, () => 2)).toEqual({ primary: true, token: '0/3000200', tokenTimeline: 1 });
    expect(readOptionsFor('shard_001', token, () => 1)).toEqual({ token: '0/3000200', tokenTimeline: 1 });
    expect(readOptionsFor('shard_001', token, () => undefined)).toEqual({ token: '0/3000200', tokenTimeline: 1 });
  });
  it("leaves a token of another shard behind: its position and timeline say nothing of this shard's", () => {
    expect(readOptionsFor('shard_002', token, () => 2)).toEqual({ primary: true });
  });
});
