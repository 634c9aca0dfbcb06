/**
 * Read-your-writes tokens: what a reader needs to see a write it was told about, across a move
 * and across a failover. Text form (an HTTP header value; `docs/sharding-spec.md` states it):
 *
 *     <shard_id>@<lsn>;tl=<timeline>;v=<map version>
 *     shard_001@0/3000060;tl=1;v=12
 *
 * - `shard_id` and `lsn`: the shard primary that committed the write and its WAL insert
 *   position after the commit. A replica of that shard that has replayed past it holds the write.
 * - `tl`: the primary's timeline then. After a failover (a new timeline) a position of the old
 *   timeline says nothing about a replica of the new one: the read goes to the primary.
 * - `v`: the slot-map version the write was routed with. A reader holding an older map
 *   refreshes it before routing, so it does not look for the write where the key used to live.
 *
 * Parsing is strict (one canonical spelling, bounded numbers): a token a client mangled is
 * refused with a reason, never half-used.
 *
 * @example
 * ```ts
 * const token = parseReadToken('shard_001@0/3000060;tl=1;v=12'); // { shardId: 'shard_001', lsn: '0/3000060', timeline: 1, mapVersion: 12 }
 * formatReadToken(token); // 'shard_001@0/3000060;tl=1;v=12'
 * ```
 */
import { formatLsn, parseLsn } from './lsn.js';

export interface ReadToken {
  readonly shardId: string;
  /** WAL position, canonical form (`0/3000060`). */
  readonly lsn: string;
  /** The primary's timeline when the write committed (1 or more). */
  readonly timeline: number;
  /** The slot-map version the write was routed with. */
  readonly mapVersion: number;
}

/** A token that is not one this system issued. */
export class ReadTokenError extends Error {
  override readonly name = 'ReadTokenError';
}

const TOKEN = /^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})@([0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8});tl=([1-9][0-9]{0,9});v=(0|[1-9][0-9]{0,14})$/;

/** An example, for error messages and API documents. */
export const READ_TOKEN_EXAMPLE = 'shard_001@0/3000060;tl=1;v=12';

/** Parses a token; throws {@link ReadTokenError} naming what is wrong. */
export function parseReadToken(text: string): ReadToken {
  const m = TOKEN.exec(text);
  if (!m) {
    const reason = !text.includes('@')
      ? 'has no shard (shard_id@...)'
      : !/;tl=/.test(text) || !/;v=/.test(text)
        ? 'lacks the timeline (;tl=N) or the map version (;v=N) that tokens carry'
        : 'is not of the form shard_id@LSN;tl=N;v=N';
    throw new ReadTokenError(`the read token ${reason}, e.g. ${READ_TOKEN_EXAMPLE}`);
  }
  const timeline = Number(m[3]);
  if (timeline > 0xffffffff) throw new ReadTokenError(`the read token's timeline ${m[3]} is beyond PostgreSQL's 32-bit timelines`);
  return { shardId: m[1] as string, lsn: formatLsn(parseLsn(m[2] as string)), timeline, mapVersion: Number(m[4]) };
}

export function formatReadToken(token: ReadToken): string {
  return `${token.shardId}@${token.lsn};tl=${token.timeline};v=${token.mapVersion}`;
}
