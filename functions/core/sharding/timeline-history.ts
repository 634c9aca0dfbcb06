/**
 * PostgreSQL timeline history files, and what they say about a read-your-writes token after a
 * failover. A promoted replica starts a new timeline N and writes `pg_wal/<N as 8 hex digits>.history`:
 * one line per ancestor timeline, oldest first,
 *
 *     <parent timeline>\t<switchpoint LSN>\t<reason>
 *     1	0/3000158	no recovery target specified
 *
 * where the switchpoint is where that ancestor ends in N's past: WAL of the ancestor before it is
 * part of N, WAL after it (written by the old primary once the replica had stopped receiving) is
 * not. With asynchronous replication a write acknowledged on the old primary past that point is
 * gone, and a token naming it (`tl=` the ancestor, an LSN past the switchpoint) proves it was
 * acknowledged: the read answers that the write was lost, not that it never existed
 * (docs/sharding-spec.md, read-your-writes tokens).
 *
 * The parser follows PostgreSQL's own (`readTimeLineHistory`, src/backend/access/transam/timeline.c):
 * blank lines and lines whose first non-blank character is `#` are skipped, the reason is
 * ignored, timelines must increase. It is stricter where PostgreSQL's `sscanf` is lax (a sign, a
 * `0x`): such a file is not one PostgreSQL writes, and is refused with the line that is wrong.
 *
 * @example
 * ```ts
 * const history = parseTimelineHistory('1\t0/3000158\tno recovery target specified\n', 2);
 * lostInFailover(history, 2, { lsn: parseLsn('0/3000200'), timeline: 1 }); // { forkLsn: 50331992n }
 * lostInFailover(history, 2, { lsn: parseLsn('0/3000100'), timeline: 1 }); // undefined (kept)
 * ```
 */

import { normalizeWalPosition } from './lsn.js';

/** A history file that is not one PostgreSQL writes. */
export class TimelineHistoryError extends Error {
  override readonly name = 'TimelineHistoryError';
}

/** One line of a history file: `timeline` ended at `switchpoint` in the current timeline's past. */
export interface TimelineSwitch {
  readonly timeline: number;
  /** The first byte position that is not the ancestor's any more (the end of its last kept record). */
  readonly switchpoint: bigint;
  readonly reason: string;
}

const MAX_TIMELINE = 0xffffffff;
/** `<timeline><blanks><hi>/<lo>`, then nothing or a blank and the reason (any text: a restore point's name is the user's). */
const LINE = /^\s*([0-9]{1,10})\s*([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})(?:\s([\s\S]*))?$/;

/** The history file name of `timeline` (`00000002.history`), as PostgreSQL names it. */
export function historyFileName(timeline: number): string {
  checkTimeline(timeline, 'timeline');
  return `${timeline.toString(16).toUpperCase().padStart(8, '0')}.history`;
}

function checkTimeline(timeline: number, what: string): void {
  if (!Number.isSafeInteger(timeline) || timeline < 1 || timeline > MAX_TIMELINE) throw new TimelineHistoryError(`${what} ${timeline} is not a PostgreSQL timeline (1 to ${MAX_TIMELINE})`);
}

/**
 * Parses a history file's text. With `currentTimeline` (the timeline whose file it is), every
 * listed timeline must be below it, as PostgreSQL requires. Throws {@link TimelineHistoryError}
 * naming the line.
 */
export function parseTimelineHistory(text: string, currentTimeline?: number): TimelineSwitch[] {
  if (currentTimeline !== undefined) checkTimeline(currentTimeline, 'the current timeline');
  const out: TimelineSwitch[] = [];
  const lines = text.split('\n');
  for (const [i, raw] of lines.entries()) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    const trimmed = line.trimStart();
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const m = LINE.exec(line);
    if (!m) throw new TimelineHistoryError(`line ${i + 1} of the history file is not "<timeline>\\t<switchpoint LSN>\\t<reason>": ${JSON.stringify(line.slice(0, 80))}`);
    const timeline = Number(m[1]);
    if (timeline < 1 || timeline > MAX_TIMELINE) throw new TimelineHistoryError(`line ${i + 1} of the history file names timeline ${m[1]}, not a PostgreSQL timeline (1 to ${MAX_TIMELINE})`);
    const last = out.at(-1);
    if (last !== undefined && timeline <= last.timeline) throw new TimelineHistoryError(`line ${i + 1} of the history file names timeline ${timeline} after ${last.timeline}: timelines must increase`);
    if (currentTimeline !== undefined && timeline >= currentTimeline) {
      throw new TimelineHistoryError(`line ${i + 1} of the history file of timeline ${currentTimeline} names timeline ${timeline}: ancestors must be below it`);
    }
    const switchpoint = (BigInt(`0x${m[2] as string}`) << 32n) | BigInt(`0x${m[3] as string}`);
    out.push({ timeline, switchpoint, reason: (m[4] ?? '').trim() });
  }
  return out;
}

/**
 * Whether a write that committed on `token.timeline` at or before `token.lsn` may be gone from the
 * current timeline: the token's timeline is an ancestor (listed in `history`, the current
 * timeline's) and its LSN is past where that ancestor ends. Undefined when the token is at or
 * before the switchpoint (the write is in the current timeline's past), of the current timeline,
 * or of a timeline the history does not list (a later one, another server's): then nothing is
 * known, and the read answers as it would without this check.
 *
 * The token's LSN is compared as {@link normalizeWalPosition} leaves it: a token read right after
 * a commit record that ended exactly at a WAL page boundary points past the next page's header,
 * while the switchpoint of a timeline that ends with that record is the boundary itself (the
 * end of the last record the promoted replica replayed); no record ends between the two, so the
 * write is kept.
 */
export function lostInFailover(history: readonly TimelineSwitch[], currentTimeline: number, token: { readonly lsn: bigint; readonly timeline: number }): { readonly forkLsn: bigint } | undefined {
  if (token.timeline >= currentTimeline) return undefined;
  const ancestor = history.find((s) => s.timeline === token.timeline);
  if (ancestor === undefined || normalizeWalPosition(token.lsn) <= ancestor.switchpoint) return undefined;
  return { forkLsn: ancestor.switchpoint };
}

/**
 * A write a read-your-writes token names that the shard's current timeline does not hold: the
 * token's timeline ends, in the current timeline's past, before the token's position
 * ({@link lostInFailover}). LSNs in PostgreSQL's spelling.
 */
export interface LostWrite {
  readonly shardId: string;
  /** The token's position and timeline. */
  readonly lsn: string;
  readonly timeline: number;
  /**
   * Where the token's timeline ends in the current timeline's past (its switchpoint); for a token
   * of the current timeline number that another server issued, where the primary's WAL on it ends.
   */
  readonly forkLsn: string;
  /** The shard primary's timeline at the read. */
  readonly currentTimeline: number;
  /**
   * Set when the write was told lost only because the token is past the primary's WAL end on the
   * token's own timeline (no history says so): another server's token, or one this very server
   * issued before a crash. A token is the insert position read after the commit, other sessions'
   * WAL not yet written out included; a crash loses that WAL, not the acknowledged commit, and
   * the restarted server (same timeline) may then be behind a token of a write it holds. A
   * caller answers it only for a miss (the write is not there either), never for a list, which
   * may hold the write (`test/integration/sharding/timeline-token-crash-restart.test.ts`).
   */
  readonly pastWalEnd?: true;
}

/** What a read answers about a {@link LostWrite} (the documents API's 410 `detail`). */
export function lostWriteMessage(lost: LostWrite): string {
  if (lost.timeline === lost.currentTimeline) {
    return `shard ${lost.shardId}: the write of the read token at ${lost.lsn} on timeline ${lost.timeline} is not on the shard's primary, whose WAL on timeline ${lost.timeline} ends at ${lost.forkLsn} (the write was acknowledged by another server that took the same timeline number: a second failover, without a shared WAL archive): this write was lost in a failover; send it again if it is still wanted`;
  }
  return `shard ${lost.shardId}: the write of the read token at ${lost.lsn} on timeline ${lost.timeline} is not on the shard's primary, whose timeline ${lost.currentTimeline} took over from timeline ${lost.timeline} at ${lost.forkLsn} (a failover to a replica that had not received the write): this write was lost in a failover; send it again if it is still wanted`;
}
