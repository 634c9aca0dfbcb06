/**
 * Named leases in the catalog (`catalog.leases`, catalog migration 004): at most one holder of a
 * piece of work at a time (the scaling evaluation, the shard moves worker) across Lambda
 * containers, local mode and API calls. This replaces Lambda reserved concurrency 1, which a
 * new account cannot grant.
 *
 * A lease is one row, taken by one `insert ... on conflict do update ... where expired` and
 * given back by one `delete`: no transaction or session lock stays open, so it pins no RDS
 * Proxy connection and survives a pool of one connection. Each grant gets a fresh token, so
 * only its own grant can release it; a holder that dies lets the lease lapse at `ttlMs`.
 * Expiry is judged by the database clock alone (`now()`), never by a caller's clock.
 *
 * @example
 * ```ts
 * const leases = new LeaseStore(pool);
 * const lease = await leases.acquire('scaling-evaluation', { owner: 'scaling-evaluate/req-1', ttlMs: 50_000 });
 * if (lease.acquired) try { ... } finally { await lease.release(); }
 * else console.log(`busy: ${lease.holder} since ${new Date(lease.since).toISOString()}`);
 * ```
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { EVALUATION_LEASE, type LeaseOutcome, type LeaseRequest } from '../../core/scaling/ports.js';
import { hasSqlState, retryingSerializationFailures, SERIALIZATION_ATTEMPTS, SERIALIZATION_FAILURE } from './sqlstate.js';

/** The lease names in use, so no two kinds of work share one by accident. */
export const LEASES = {
  /** Every scaling evaluation: scheduled, alarm-triggered, API-triggered, local mode. */
  evaluation: EVALUATION_LEASE,
  /** The shard moves worker (jobs run in order, one worker at a time). */
  movesWorker: 'shard-moves-worker',
} as const;

/** A bad lease request (programming error); nothing was written. */
export class LeaseError extends Error {
  override readonly name = 'LeaseError';
}

const POLL_MS = 250;
/** Longer than any Lambda invocation (15 min): a bigger TTL is a caller's mistake. */
const MAX_TTL_MS = 16 * 60 * 1000;

// `$3::double precision`: pg_catalog has no `integer * interval` (it casts to double precision),
// so an application login's own operator in the public schema (PostgreSQL 14) would be an exact
// match and run as the control login (test/integration/controller/least-privilege.test.ts).
const ACQUIRE = `
  insert into catalog.leases as l (name, holder, acquired_at, expires_at)
  values ($1, $2, now(), now() + $3::double precision * interval '1 millisecond')
  on conflict (name) do update
    set holder = excluded.holder, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
    where l.expires_at <= now()
  returning holder`;

const CURRENT = 'select holder, acquired_at, expires_at from catalog.leases where name = $1';

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

export class LeaseStore {
  constructor(private readonly source: pg.Pool | (() => Promise<pg.Pool>)) {}

  private async db(): Promise<pg.Pool> {
    return typeof this.source === 'function' ? this.source() : this.source;
  }

  /** Takes `name` for `request.ttlMs`, or reports its holder (after waiting up to `waitMs`). */
  async acquire(name: string, request: LeaseRequest): Promise<LeaseOutcome> {
    if (!Number.isInteger(request.ttlMs) || request.ttlMs < 1 || request.ttlMs > MAX_TTL_MS) {
      throw new LeaseError(`lease ${name}: ttlMs must be a whole number of milliseconds in 1..${MAX_TTL_MS} (got ${request.ttlMs})`);
    }
    const token = `${request.owner} ${randomUUID()}`;
    const deadline = Date.now() + (request.waitMs ?? 0);
    for (;;) {
      const db = await this.db();
      // One statement outside a transaction runs at the login's or the database's
      // default_transaction_isolation. At REPEATABLE READ (an RDS parameter group, an ALTER ROLE
      // ... SET) one that waited for another acquire of the lease in flight failed once that one
      // committed (40001, its snapshot older than the row), where READ COMMITTED judges the row
      // committed (held: not taken); the controller then took the catalog for unreachable and
      // evaluated without the lease, beside its holder (catalog-store.test.ts; issue #15). Nothing
      // was written: run again, the statement takes a new snapshot and judges that row. At most
      // SERIALIZATION_ATTEMPTS times: a row that changed under every one of them (other sessions
      // taking, giving back or taking over the lease one after another) was asked for without end
      // before, the evaluation waiting on it for as long as that lasted.
      const taken = await retryingSerializationFailures(() => db.query(ACQUIRE, [name, token, request.ttlMs])).catch((err: unknown) => {
        if (hasSqlState(err, SERIALIZATION_FAILURE)) return null;
        throw err;
      });
      if (taken === null) {
        // Within the caller's wait (`waitMs`: an alarm's evaluation waits up to 10 s for the one
        // running), asked again after a poll, with five tries of its own: answered at once, an
        // alarm stood aside a moment into its wait, told the lease was held by a holder that then
        // gave it back (catalog-store.test.ts). The cap bounds each ask, the wait the whole.
        if (Date.now() + POLL_MS <= deadline && request.signal?.aborted !== true) {
          await sleep(POLL_MS, request.signal);
          continue;
        }
        // Answered as held, not thrown: the callers take an error for an unreachable catalog, and
        // the controller then evaluates without the lease (degraded, allowed to scale out), which
        // here would be beside a holder that can scale in. Standing aside costs one evaluation;
        // the next one asks again.
        const { rows } = await db.query<{ holder: string; acquired_at: Date; expires_at: Date }>(CURRENT, [name]);
        const row = rows[0];
        const now = Date.now();
        return {
          acquired: false,
          holder: row === undefined ? `unknown: the lease changed hands under each of ${SERIALIZATION_ATTEMPTS} tries to take it` : row.holder.replace(/ [0-9a-f-]{36}$/, ''),
          since: row?.acquired_at.getTime() ?? now,
          until: row?.expires_at.getTime() ?? now,
        };
      }
      if (taken.rowCount === 1) {
        let released = false;
        return {
          acquired: true,
          release: async () => {
            if (released) return;
            // A statement of its own, sent again on 40001 as the acquire is: at REPEATABLE READ one
            // that waited for another acquire taking the lease over once it lapsed failed once that
            // committed, and the controller reported the lease not released (catalog-store.test.ts).
            const db = await this.db();
            await retryingSerializationFailures(() => db.query('delete from catalog.leases where name = $1 and holder = $2', [name, token]));
            // Only once the row is gone: a release that failed can be tried again.
            released = true;
          },
        };
      }
      const { rows } = await db.query<{ holder: string; acquired_at: Date; expires_at: Date }>(CURRENT, [name]);
      const row = rows[0];
      // Released between the two statements: try again at once.
      if (row === undefined) continue;
      if (Date.now() + POLL_MS > deadline || request.signal?.aborted === true) {
        // The token's random part identifies a grant, not a holder: show the owner only.
        return { acquired: false, holder: row.holder.replace(/ [0-9a-f-]{36}$/, ''), since: row.acquired_at.getTime(), until: row.expires_at.getTime() };
      }
      await sleep(POLL_MS, request.signal);
    }
  }
}
