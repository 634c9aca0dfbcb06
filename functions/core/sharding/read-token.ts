/**
 * Read-your-writes tokens: what a reader needs to see a write it was told about, across a move
 * and across a failover. Text form (an HTTP header value; `docs/sharding-spec.md` states it):
 *
 *     <shard_id>@<lsn>;tl=<timeline>;v=<map version>[;id=<cluster id>]
 *     shard_001@0/3000060;tl=1;v=12;id=6b1713f378951104
 *
 * - `shard_id` and `lsn`: the shard primary that committed the write and its WAL flush position
 *   after the commit (its insert position when the commit was made with `synchronous_commit =
 *   off`): at or past the commit's record either way. A replica of that shard that has replayed
 *   past it holds the write.
 * - `tl`: the primary's timeline then. After a failover (a new timeline) a position of the old
 *   timeline says nothing about a replica of the new one: the read goes to the primary.
 * - `v`: the slot-map version the write was routed with. A reader holding an older map
 *   refreshes it before routing, so it does not look for the write where the key used to live.
 * - `id` (optional): the cluster of the primary that committed the write, its system identifier
 *   (`pg_control_system()`) as 16 lower-case hexadecimal digits. WAL positions and timelines are
 *   a cluster's own: a physical replica shares its primary's identifier and positions, another
 *   cluster (the green side of an RDS blue/green deployment for a major version upgrade, which
 *   is fed by logical replication) has positions of its own that say nothing about the token's.
 *   A token of another cluster than the one read is never measured by its position: the read
 *   goes to the primary, which holds what the switchover waited for, and no write is judged
 *   lost by it. A token without it (issued before it was, or by a login refused the control
 *   file's functions) is read as before: clients hold tokens across a deploy.
 *
 * Parsing is strict (one canonical spelling, bounded numbers): a token a client mangled is
 * refused with a reason, never half-used.
 *
 * @example
 * ```ts
 * const token = parseReadToken('shard_001@0/3000060;tl=1;v=12'); // { shardId: 'shard_001', lsn: '0/3000060', timeline: 1, mapVersion: 12 }
 * formatReadToken(token); // 'shard_001@0/3000060;tl=1;v=12'
 * parseReadToken('shard_001@0/3000060;tl=1;v=12;id=6b1713f378951104').clusterId; // '6b1713f378951104'
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
  /** The committing cluster's system identifier, 16 lower-case hex digits (see {@link clusterIdFromSystemIdentifier}); absent in older tokens. */
  readonly clusterId?: string;
}

/** A token that is not one this system issued. */
export class ReadTokenError extends Error {
  override readonly name = 'ReadTokenError';
}

const TOKEN = /^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})@([0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8});tl=([1-9][0-9]{0,9});v=(0|[1-9][0-9]{0,14})(?:;id=([0-9a-f]{16}))?$/;

/** A cluster id as tokens carry it: 16 lower-case hexadecimal digits. */
const CLUSTER_ID = /^[0-9a-f]{16}$/;

/**
 * A cluster's id as tokens carry it, from `pg_control_system().system_identifier` as PostgreSQL
 * prints it: a `bigint` in decimal, negative when the unsigned 64-bit identifier's top bit is set
 * (PostgreSQL's `to_hex` prints that one as its 64-bit two's complement, so the two agree).
 * Undefined for anything else.
 *
 * @example
 * ```ts
 * clusterIdFromSystemIdentifier('7716658422943650052'); // '6b1713f378951104'
 * ```
 */
export function clusterIdFromSystemIdentifier(text: string): string | undefined {
  if (!/^-?[0-9]{1,20}$/.test(text)) return undefined;
  const value = BigInt(text);
  if (value < -(2n ** 63n) || value >= 2n ** 63n) return undefined;
  return BigInt.asUintN(64, value).toString(16).padStart(16, '0');
}

/** An example, for error messages and API documents. */
export const READ_TOKEN_EXAMPLE = 'shard_001@0/3000060;tl=1;v=12';

/** A part of a token shown in an error: quoted, and cut short (a header may be kilobytes long). */
const shown = (part: string): string => JSON.stringify(part.length > 40 ? `${part.slice(0, 40)}…` : part);

/**
 * Why `text`, which the token pattern refused, is not a token: the first part that is wrong,
 * named, so that a client (or the operator reading its 400) sees which of the four parts it
 * mangled rather than the whole form again.
 */
function whatIsWrong(text: string): string {
  const at = text.indexOf('@');
  if (at < 0) return 'has no shard (shard_id@...)';
  const shard = text.slice(0, at);
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(shard)) return `names the shard ${shown(shard)}, which is not a shard id (a letter or digit, then up to 62 letters, digits, _ . or -)`;
  const [lsn = '', ...fields] = text.slice(at + 1).split(';');
  if (!/^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/.test(lsn)) return `has the WAL position ${shown(lsn)}, which is not two hexadecimal numbers of 1 to 8 digits (like 0/3000060)`;
  const names = fields.map((f) => f.split('=', 1)[0] ?? '');
  if (!names.includes('tl') || !names.includes('v')) {
    const lowerCase = names.some((n) => n === 'TL' || n === 'V');
    return `lacks the timeline (;tl=N) or the map version (;v=N) that tokens carry${lowerCase ? ' (their names are lower-case)' : ''}`;
  }
  if (fields.length === 3 && names[2] === 'id' && names[0] === 'tl' && names[1] === 'v') {
    const id = fields[2]?.slice('id='.length) ?? '';
    if (!CLUSTER_ID.test(id)) return `has the cluster id ${shown(id)}, which is not 16 lower-case hexadecimal digits`;
  } else if (fields.length !== 2 || names[0] !== 'tl' || names[1] !== 'v') {
    return `has ${shown(fields.join(';'))} after its WAL position; a token has exactly ;tl=N;v=N there, in that order, and may end in ;id=<16 hex digits>`;
  }
  const timeline = fields[0]?.slice('tl='.length) ?? '';
  if (!/^[1-9][0-9]{0,9}$/.test(timeline)) return `has the timeline ${shown(timeline)}, which is not a whole number from 1 to 4294967295 (no sign, no leading zero)`;
  const version = fields[1]?.slice('v='.length) ?? '';
  return `has the map version ${shown(version)}, which is not a whole number from 0 to 999999999999999 (no sign, no leading zero)`;
}

/** Parses a token; throws {@link ReadTokenError} naming the part that is wrong. */
export function parseReadToken(text: string): ReadToken {
  const m = TOKEN.exec(text);
  if (!m) throw new ReadTokenError(`the read token ${whatIsWrong(text)}, e.g. ${READ_TOKEN_EXAMPLE}`);
  const timeline = Number(m[3]);
  if (timeline > 0xffffffff) throw new ReadTokenError(`the read token's timeline ${m[3]} is beyond PostgreSQL's 32-bit timelines`);
  return { shardId: m[1] as string, lsn: formatLsn(parseLsn(m[2] as string)), timeline, mapVersion: Number(m[4]), ...(m[5] === undefined ? {} : { clusterId: m[5] }) };
}

export function formatReadToken(token: ReadToken): string {
  const id = token.clusterId === undefined ? '' : `;id=${token.clusterId}`;
  return `${token.shardId}@${token.lsn};tl=${token.timeline};v=${token.mapVersion}${id}`;
}
