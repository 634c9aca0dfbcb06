/**
 * Which PostgreSQL cluster a server belongs to, for read-your-writes tokens (`ReadToken.clusterId`,
 * docs/sharding-spec.md): the system identifier in its control file, which initdb chooses and a
 * physical replica copies with the base backup. WAL positions and timelines are a cluster's own.
 * An RDS blue/green deployment for a major version upgrade feeds green, another cluster, by
 * logical replication ("Amazon RDS uses logical replication instead",
 * https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/blue-green-deployments-replication-type.html),
 * and after the switchover the shard's addresses (and RDS Proxy) reach green: a token of blue's
 * position, measured against green's WAL, answered 410 "write lost" for a write green holds, or
 * was served a stale miss by a green replica already past that number
 * (test/integration/sharding/read-token-blue-green.test.ts).
 *
 * The identifier is read in a statement the write or the read sends anyway (the write's BEGIN,
 * the primary check, a replica's token check, the reader's heartbeat): no round trip of its own.
 * It is not cached per pool or connection: through a proxy, or a DNS name that a switchover moves,
 * the same pool and even the same open connection reach another cluster afterwards. Reading it
 * (`pg_control_system()` reads the control file, a few kilobytes) costs no more than the
 * statement's other functions. What is cached, per pool, is whether the login may call it: a
 * provider may revoke the control-file functions (see replica-lag.ts, `withTimelineSql`), and a
 * statement naming one would then fail. That is learned once, by one statement on a connection
 * that needs it (each of a new pool's first concurrent callers asks on its own); a login refused
 * gets tokens without the id, read as before.
 */
import type pg from 'pg';
import { hasSqlState, INSUFFICIENT_PRIVILEGE, UNDEFINED_FUNCTION } from './sqlstate.js';

/**
 * The server's cluster id as tokens carry it (16 lower-case hex digits; PostgreSQL's `to_hex` of
 * a negative `bigint` is its 64-bit two's complement, as `clusterIdFromSystemIdentifier`'s), as
 * a SQL expression.
 */
export const CLUSTER_ID_SQL = `(select lpad(to_hex(system_identifier), 16, '0') from pg_catalog.pg_control_system())`;

/** Per pool, whether its login may read {@link CLUSTER_ID_SQL}, once a connection of it answered. */
const readable = new WeakMap<pg.Pool, boolean>();

/**
 * Whether `pool`'s login may read {@link CLUSTER_ID_SQL}: asked on `client` (one of its
 * connections, not in a transaction: a refusal would abort it) until one of the pool's
 * connections has answered, then known for the pool's life. A refusal (42501, or 42883 where a
 * provider removed the function) is kept as false; another failure (the connection broke, the
 * caller's deadline cancelled it) is the caller's own, thrown, and asked again next time. Callers
 * that find no answer yet each ask on their own connection, never wait on another's question: a
 * shared question made every write and read of a new pool wait for the first connection's answer
 * (past their own deadlines, which watch their own connections) and fail with its failure, a
 * write on a healthy connection reported cancelled by another session, nothing committed
 * (test/integration/sharding/cluster-id-probe.test.ts). So a pool's first concurrent callers
 * each send it once: a short statement, on connections that are opening anyway.
 */
export async function clusterIdReadable(pool: pg.Pool, client: pg.ClientBase): Promise<boolean> {
  const known = readable.get(pool);
  if (known !== undefined) return known;
  try {
    await client.query(`select ${CLUSTER_ID_SQL} as cluster_id`);
  } catch (error) {
    if (!hasSqlState(error, INSUFFICIENT_PRIVILEGE, UNDEFINED_FUNCTION)) throw error;
    readable.set(pool, false);
    return false;
  }
  readable.set(pool, true);
  return true;
}

/** What {@link clusterIdReadable} learned for `pool` (undefined: not asked yet), without asking. */
export function clusterIdReadableKnown(pool: pg.Pool): boolean | undefined {
  return readable.get(pool);
}

/** The cluster id in a row's `cluster_id` column, when it is one. */
export function clusterIdOfRow(row: unknown): string | undefined {
  const id = (row as { cluster_id?: unknown } | undefined)?.cluster_id;
  return typeof id === 'string' && /^[0-9a-f]{16}$/.test(id) ? id : undefined;
}
