/**
 * The last finished move of a key's unit off a shard, with the timeline the shard was on when the
 * move fenced it and that timeline's history (sharding migration 014's catalog.last_move_off): what
 * a read with a token of that shard needs on the unit's new shard to tell a write a failover of
 * the old shard lost before the move (410) from one that never existed (docs/sharding-spec.md, "A
 * write lost in a failover"; core/sharding/lost-before-move.ts).
 */

import type pg from 'pg';
import { slotOf } from '../../core/sharding/hash.js';
import type { MoveOff, MovesLookup } from '../../core/sharding/lost-before-move.js';
import { formatLsn, normalizeWalPosition, parseLsn } from '../../core/sharding/lsn.js';
import type { ReadToken } from '../../core/sharding/read-token.js';
import { withNodeDeadline } from './deadline.js';
import { hasSqlState, INSUFFICIENT_PRIVILEGE, UNDEFINED_COLUMN, UNDEFINED_FUNCTION } from './sqlstate.js';

const WRITE_COPIED_OFF_SQL = 'select catalog.write_copied_off($1, $2, $3, $4, $5::pg_lsn) as copied';
/** For a token that names its cluster (sharding migration 032): moves of that cluster only. */
const WRITE_COPIED_OFF_OF_CLUSTER_SQL = 'select catalog.write_copied_off($1, $2, $3, $4, $5::pg_lsn, $6) as copied';
const LAST_MOVE_OFF_SQL = 'select source_timeline::text as timeline, source_history as history, source_cluster_id as cluster_id from catalog.last_move_off($1, $2, $3)';
/** Before sharding migration 032 (the code deployed first): no cluster recorded. */
const LAST_MOVE_OFF_BEFORE_CLUSTER_SQL = 'select source_timeline::text as timeline, source_history as history, null::text as cluster_id from catalog.last_move_off($1, $2, $3)';

/**
 * A {@link MovesLookup} over the catalog `pool` (the application's login: it needs EXECUTE on
 * catalog.last_move_off only). The function absent (42883: the code deployed before the
 * migration) or refused (42501) is "no move known": the read answers as before.
 */
export function createMovesLookup(pool: pg.Pool): Required<MovesLookup> {
  return {
    async lastMoveOff(shardId: string, key: string, options: { readonly deadlineMs?: number } = {}): Promise<MoveOff | undefined> {
      const values = [shardId, slotOf(key), key];
      type Row = { timeline: string | null; history: string | null; cluster_id: string | null };
      const lookUp = async (sql: string): Promise<Row | undefined> => {
        // With a deadline, the server cancels the lookup at it (statement_timeout) and a silent
        // catalog costs no more than it (the connection is dropped): deadline.ts.
        const { rows } =
          options.deadlineMs === undefined
            ? await pool.query<Row>(sql, values)
            : await withNodeDeadline(pool, Math.max(1, options.deadlineMs), 'catalog', (client) => client.query<Row>(sql, values));
        return rows[0];
      };
      try {
        let row: Row | undefined;
        try {
          row = await lookUp(LAST_MOVE_OFF_SQL);
        } catch (error) {
          // The catalog before sharding migration 032 (42703: no source_cluster_id column): the
          // move as recorded without its cluster (a token that names one is then not judged).
          if (!hasSqlState(error, UNDEFINED_COLUMN)) throw error;
          row = await lookUp(LAST_MOVE_OFF_BEFORE_CLUSTER_SQL);
        }
        if (row === undefined) return undefined;
        return { timeline: row.timeline === null ? null : Number(row.timeline), history: row.history, clusterId: row.cluster_id };
      } catch (error) {
        if (hasSqlState(error, UNDEFINED_FUNCTION, INSUFFICIENT_PRIVILEGE)) return undefined;
        throw error;
      }
    },
    // sharding migration 015's catalog.write_copied_off, or for a token that names its cluster
    // migration 032's (moves of that cluster only: another cluster's positions say nothing of the
    // token's); absent (42883: code deployed before the migration) or refused (42501): not known
    // to be copied, the read answers as before (410). Before 032 no move recorded a cluster, so a
    // token that names one is never judged lost (lastMoveOff) and this is not asked for it.
    async writeCopiedOff(token: ReadToken, key: string, options: { readonly deadlineMs?: number } = {}): Promise<boolean> {
      // The token moved back to a page boundary it points past (lsn.ts): no record ends in between,
      // and the fence position compared with it is a raw insert position (move-port.ts's fence).
      const values = [token.shardId, slotOf(key), key, token.timeline, formatLsn(normalizeWalPosition(parseLsn(token.lsn))), ...(token.clusterId === undefined ? [] : [token.clusterId])];
      const sql = token.clusterId === undefined ? WRITE_COPIED_OFF_SQL : WRITE_COPIED_OFF_OF_CLUSTER_SQL;
      type Row = { copied: boolean | null };
      try {
        const { rows } =
          options.deadlineMs === undefined
            ? await pool.query<Row>(sql, values)
            : await withNodeDeadline(pool, Math.max(1, options.deadlineMs), 'catalog', (client) => client.query<Row>(sql, values));
        return rows[0]?.copied === true;
      } catch (error) {
        if (hasSqlState(error, UNDEFINED_FUNCTION, INSUFFICIENT_PRIVILEGE)) return false;
        throw error;
      }
    },
  };
}
