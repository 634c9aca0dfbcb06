/**
 * A read-your-writes token of shard A read on shard B, the shard the key's unit moved to (issue
 * #15, docs/sharding-spec.md "A write lost in a failover"). B's own history says nothing of A's
 * timelines; the move off A recorded the timeline F A was on when it fenced the unit, and F's
 * history. Then, for a token (A, lsn, T):
 *
 *   - no move off A known, or none recorded F (a move before sharding migration 014, a mover
 *     without EXECUTE on timeline_history()): nothing is known;
 *   - the token names its cluster (`;id=`) and the move recorded another one, or none (sharding
 *     migration 032; a move before it, a mover refused pg_control_system()): F and its history
 *     are numbers of another cluster, or of one not known, which say nothing of the token's (an
 *     RDS blue/green switchover feeds green, another cluster, by logical replication): nothing
 *     is known. A token without the id is judged as before (tokens issued before they carried
 *     it, or by a login refused the control file: read-token.ts);
 *   - F <= T: the move copied T (or a timeline the token's write could not be missing from as far
 *     as this record tells): nothing is known (the read answers as usual);
 *   - F > T: A failed over before the move; when F's history lists T ending before the token's
 *     LSN, the write was lost before the move copied the unit (410), unless an earlier move off A
 *     fenced on T at or past the token's LSN had copied it off and the unit did not come back onto
 *     A on T since ({@link MovesLookup.writeCopiedOff}, asked by the caller only then).
 */

import { formatLsn, parseLsn } from './lsn.js';
import type { ReadToken } from './read-token.js';
import { lostInFailover, parseTimelineHistory, TimelineHistoryError, type LostWrite } from './timeline-history.js';

/** What a move off a shard recorded of the shard at its fence (nulls: not recorded). */
export interface MoveOff {
  readonly timeline: number | null;
  readonly history: string | null;
  /** The source's cluster id at the fence (`ReadToken.clusterId`'s form); null or absent: not recorded. */
  readonly clusterId?: string | null;
}

/** The last finished move of `key`'s unit off `shardId` (undefined: none known). */
export interface MovesLookup {
  /** `deadlineMs`: the time the caller has left (the request's deadline); the lookup fails once it has passed. */
  lastMoveOff(shardId: string, key: string, options?: { readonly deadlineMs?: number }): Promise<MoveOff | undefined>;
  /**
   * Whether the write `token` names was copied off its shard by a finished move of `key`'s unit
   * fenced on the token's timeline at or past its LSN, the unit not brought back onto that shard
   * on that timeline since (sharding migration 015): then a failover of the shard afterwards lost
   * nothing of it, whatever the newest move off the shard recorded. A token that names its cluster
   * is compared only with moves that recorded that cluster (sharding migration 032). False when not known (nothing
   * recorded, the catalog function absent or refused); absent: never known.
   */
  writeCopiedOff?(token: ReadToken, key: string, options?: { readonly deadlineMs?: number }): Promise<boolean>;
}

/** The write `token` names, lost in a failover of its shard before the unit moved off it (see the module's rule); undefined when not known to be lost. */
export function lostBeforeMove(token: ReadToken, move: MoveOff | undefined): LostWrite | undefined {
  if (move === undefined || move.timeline === null || move.history === null || move.timeline <= token.timeline) return undefined;
  if (token.clusterId !== undefined && move.clusterId !== token.clusterId) return undefined;
  let history;
  try {
    history = parseTimelineHistory(move.history, move.timeline);
  } catch (error) {
    if (error instanceof TimelineHistoryError) return undefined;
    throw error;
  }
  const lost = lostInFailover(history, move.timeline, { lsn: parseLsn(token.lsn), timeline: token.timeline });
  return lost === undefined ? undefined : { shardId: token.shardId, lsn: token.lsn, timeline: token.timeline, forkLsn: formatLsn(lost.forkLsn), currentTimeline: move.timeline };
}
